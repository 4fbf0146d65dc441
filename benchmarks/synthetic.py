"""Synthetic-data benchmark: the download stage's generator, serial, on 2 threads and on 2 processes, side by side.

    .venv/bin/python benchmarks/synthetic.py [--datasets kinetics charades ssv2] [--repeats 2]
                                             [--out benchmarks/results/synthetic.json]

Each dataset is generated at its ``params.yaml`` size (the embedded default) by
:func:`pipelines.datasets.synthetic.generate`'s jobs (render in numpy, encode in-process with PyAV). Modes,
one after the other on fresh folders in each repeat:

- ``serial``: ``generate(workers=1)``;
- ``threads_2``: ``generate(workers=2)``, what the download stage runs (``--workers 2``);
- ``processes_2``: the same jobs on a 2-process pool (fork), the alternative that was measured;
- ``cli_threads_2``: the same renderer with each file encoded by one ``ffmpeg`` CLI process (the encoder of
  commit 72ac1c5, same settings but x264's mbtree on), 2 threads: the encoder change alone.

Each run records its wall time and CPU time (user + system of this process and of its finished children):
on a machine shared with other jobs the CPU time is the steadier number. Every mode must write the same bytes
as ``serial`` (``cli_threads_2`` excepted: another encoder build); the JSON records whether they did and the
load average before and after.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from unittest import mock

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
from ruamel.yaml import YAML  # noqa: E402

from pipelines.common import atomic_path, sha256_file, write_text_atomic  # noqa: E402
from pipelines.datasets import synthetic as syn  # noqa: E402
from tubevit.config.data import SyntheticConfig  # noqa: E402

MODES = ("serial", "threads_2", "processes_2", "cli_threads_2")
_JOBS: list = []  # the jobs of the processes_2 mode, inherited by the forked workers


def _run_job(index: int) -> None:
    _JOBS[index].work()


def cpu_seconds() -> float:
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def cli_encode(frames: np.ndarray, path: Path, fps: float) -> None:
    """The previous encoder: one ffmpeg process per file, raw RGB on stdin (72ac1c5's argv)."""
    path = Path(path)
    _T, H, W, _ = frames.shape
    if path.suffix == ".webm":
        codec = ["-c:v", "libvpx-vp9", "-deadline", "realtime", "-cpu-used", "8", "-crf", "32", "-b:v", "0"]
        container = "webm"
    else:
        codec = ["-c:v", "libx264", "-preset", "veryfast", "-crf", "18", "-movflags", "+faststart"]
        container = "mp4"
    with atomic_path(path) as tmp:
        argv = ["ffmpeg", "-nostats", "-loglevel", "error", "-f", "rawvideo", "-pix_fmt", "rgb24"]
        argv += ["-s", f"{W}x{H}", "-framerate", str(fps), "-threads", "1", "-i", "pipe:"]
        argv += ["-f", container, "-g", str(max(1, round(fps))), "-threads", "1", "-fflags", "+bitexact"]
        argv += ["-map_metadata", "-1", "-pix_fmt", "yuv420p", *codec, str(tmp)]
        subprocess.run(argv, input=np.ascontiguousarray(frames).tobytes(), check=True, capture_output=True)


def run_mode(mode: str, fmt: str, root: Path, cfg: SyntheticConfig) -> None:
    if mode == "serial":
        syn.generate(fmt, root, cfg, workers=1)
    elif mode == "threads_2":
        syn.generate(fmt, root, cfg, workers=2)
    elif mode == "cli_threads_2":
        with mock.patch.object(syn, "encode_video", cli_encode):
            syn.generate(fmt, root, cfg, workers=2)
    else:
        jobs, texts = syn._LAYOUTS[fmt](root, cfg)
        _JOBS[:] = jobs
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(max_workers=2, mp_context=context) as pool:
            list(pool.map(_run_job, range(len(jobs)), chunksize=4))
        for name, text in texts.items():
            write_text_atomic(root / name, text)


def digests(root: Path) -> dict[str, str]:
    return {p.relative_to(root).as_posix(): sha256_file(p) for p in sorted(root.rglob("*")) if p.is_file()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=["kinetics", "charades", "ssv2"])
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "synthetic.json")
    args = parser.parse_args(argv)
    params = YAML(typ="safe").load(args.params.read_text())
    load_before = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-synthetic-") as tmp:
        for ds in args.datasets:
            spec = params["datasets"][ds]
            cfg = SyntheticConfig(**spec["synthetic"])
            runs: dict[str, list[tuple[float, float]]] = {m: [] for m in MODES}
            same: dict[str, bool] = {}
            for repeat in range(args.repeats):
                reference = None
                for mode in MODES:
                    root = Path(tmp) / f"{ds}-{mode}-{repeat}"
                    wall0, cpu0 = time.perf_counter(), cpu_seconds()
                    run_mode(mode, spec["format"], root, cfg)
                    runs[mode].append((time.perf_counter() - wall0, cpu_seconds() - cpu0))
                    files = digests(root)
                    if mode == "serial":
                        reference = files
                    elif mode != "cli_threads_2":
                        same[mode] = same.get(mode, True) and files == reference
                    shutil.rmtree(root)
            n_files = sum(1 for _ in syn._LAYOUTS[spec["format"]](Path(tmp) / "count", cfg)[0])
            row = {"dataset": ds, "files": n_files, "config": spec["synthetic"], "same_bytes_as_serial": same}
            for mode in MODES:
                walls, cpus = zip(*runs[mode], strict=True)
                row[mode] = {"wall_s": round(min(walls), 3), "cpu_s": round(min(cpus), 3)}
            rows.append(row)
    result = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "load_average": {"before": load_before, "after": os.getloadavg()},
        "repeats": args.repeats,
        "note": "best of the repeats; wall and CPU (user + system, children included) seconds",
        "rows": rows,
    }
    print(f"{'dataset':10s} {'files':>5s} " + " ".join(f"{m + ' wall/cpu':>26s}" for m in MODES))
    for row in rows:
        cells = [f"{row[m]['wall_s']:>12.2f} / {row[m]['cpu_s']:<11.2f}" for m in MODES]
        print(f"{row['dataset']:10s} {row['files']:5d} " + " ".join(cells))
    print(f"same bytes as serial: { {r['dataset']: r['same_bytes_as_serial'] for r in rows} }")
    print(f"load average before {load_before}, after {result['load_average']['after']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
