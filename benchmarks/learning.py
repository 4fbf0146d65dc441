"""Learning benchmark: the embedded default end to end, and joint vs video-only pretraining.

    .venv/bin/python benchmarks/learning.py --workspace /tmp/emb --params params.yaml \
        [--variant joint=params.yaml --variant video_only=params-video-only.yaml] \
        [--out benchmarks/results/learning.json]

For each ``--variant NAME=PARAMS`` it runs, in ``<workspace>/<NAME>/``, the stages as DVC would (each a
new process, ``--no-flow``: no Prefect server in the timing):

    download@* -> reencode@* -> shard@*        (once, in <workspace>/data/, with --params of the first variant)
    pretrain -> finetune@ssv2 -> finetune@charades -> evaluate@{kinetics,imagenet,ssv2,charades}

and records each stage's wall time and the metrics JSONs. Data stages are skipped when their outputs
exist (the data is the same for every variant: only training params differ). A table is printed and the
JSON written. Timings depend on what else runs on the machine: the JSON records the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATASETS = ("kinetics", "charades", "ssv2", "imagenet")


def _run(cmd: list[str], log: Path) -> float:
    t0 = time.perf_counter()
    with open(log, "a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        rc = subprocess.run(cmd, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, check=False).returncode
    if rc != 0:
        raise SystemExit(f"failed ({rc}): {' '.join(cmd)}; see {log}")
    return round(time.perf_counter() - t0, 1)


def data_stages(workspace: Path, params: Path, log: Path) -> dict[str, float]:
    py = sys.executable
    times: dict[str, float] = {}
    for ds in DATASETS:
        if (workspace / "shards" / ds / "val" / "index.json").is_file():
            continue
        raw, videos, shards = (workspace / d / ds for d in ("raw", "videos", "shards"))
        times[f"download@{ds}"] = _run(
            [py, "-m", "pipelines.download", ds, "--out", str(raw), "--params", str(params), "--no-prefect"],
            log,
        )
        times[f"reencode@{ds}"] = _run(
            [
                py,
                "-m",
                "pipelines.reencode",
                ds,
                "--raw",
                str(raw),
                "--out",
                str(videos),
                "--params",
                str(params),
                "--no-prefect",
            ],
            log,
        )
        times[f"shard@{ds}"] = _run(
            [
                py,
                "-m",
                "pipelines.shard",
                ds,
                "--videos",
                str(videos),
                "--out",
                str(shards),
                "--params",
                str(params),
                "--no-flow",
            ],
            log,
        )
    return times


def training_stages(data: Path, run: Path, params: Path, log: Path) -> dict[str, float]:
    py = sys.executable
    shards = data / "shards"
    times = {}
    times["pretrain"] = _run(
        [py, "-m", "pipelines.pretrain", "--shards", str(shards), "--out", str(run / "models/pretrain"),
         "--checkpoints", str(run / "checkpoints/pretrain"), "--live", str(run / "dvclive/pretrain"),
         "--timing", str(run / "metrics/timing/pretrain.json"), "--params", str(params), "--no-flow", "--no-progress"],
        log,
    )  # fmt: skip
    for ds in ("ssv2", "charades"):
        times[f"finetune@{ds}"] = _run(
            [py, "-m", "pipelines.finetune", ds, "--pretrained", str(run / "models/pretrain"), "--shards", str(shards / ds),
             "--out", str(run / "models" / ds), "--checkpoints", str(run / "checkpoints" / ds),
             "--live", str(run / f"dvclive/finetune-{ds}"), "--timing", str(run / f"metrics/timing/finetune-{ds}.json"),
             "--params", str(params), "--no-flow", "--no-progress"],
            log,
        )  # fmt: skip
    heads = json.loads((run / "models" / "pretrain" / "config.json").read_text())["heads"]
    for ds in DATASETS:
        if ds not in ("ssv2", "charades") and ds not in heads:
            continue  # e.g. imagenet after video-only pretraining: no head to evaluate
        model = run / "models" / (ds if ds in ("ssv2", "charades") else "pretrain")
        times[f"evaluate@{ds}"] = _run(
            [py, "-m", "pipelines.evaluate", ds, "--model", str(model), "--shards", str(shards / ds),
             "--metrics", str(run / "metrics" / f"{ds}.json"), "--plots", str(run / "plots" / ds),
             "--timing", str(run / f"metrics/timing/evaluate-{ds}.json"), "--params", str(params), "--no-flow"],
            log,
        )  # fmt: skip
    return times


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workspace", type=Path, required=True, help="scratch folder (data and runs)")
    parser.add_argument("--variant", action="append", default=[], help="NAME=PARAMS (repeatable)")
    parser.add_argument(
        "--params", type=Path, default=ROOT / "params.yaml", help="the only variant if none given"
    )
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "learning.json")
    args = parser.parse_args(argv)
    variants = [v.split("=", 1) for v in args.variant] or [["default", str(args.params)]]
    workspace = args.workspace.resolve()
    workspace.mkdir(parents=True, exist_ok=True)
    data = workspace / "data"
    log = workspace / "learning.log"
    load_before = os.getloadavg()
    data_times = data_stages(data, Path(variants[0][1]).resolve(), log)
    results = {}
    for name, params in variants:
        run = workspace / name
        times = training_stages(data, run, Path(params).resolve(), log)
        metrics = {
            ds: json.loads((run / "metrics" / f"{ds}.json").read_text())
            for ds in DATASETS
            if (run / "metrics" / f"{ds}.json").is_file()
        }
        timing = {
            p.stem: json.loads(p.read_text()) for p in sorted((run / "metrics" / "timing").glob("*.json"))
        }
        results[name] = {"params": str(params), "stage_seconds": times, "metrics": metrics, "timing": timing}
    record = {
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
        "data_stage_seconds": data_times,
        "runs": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
    print(f"{'run':<12} {'stage':<20} {'seconds':>8}")
    for name, res in results.items():
        for stage, sec in res["stage_seconds"].items():
            print(f"{name:<12} {stage:<20} {sec:>8.1f}")
    print(f"{'run':<12} {'dataset':<10} metrics")
    for name, res in results.items():
        for ds, m in res["metrics"].items():
            shown = {
                k: round(v, 3)
                for k, v in m.items()
                if k
                in (
                    "top1",
                    "top5",
                    "mAP",
                    "top1_shuffled",
                    "top1_static",
                    "mAP_shuffled",
                    "mAP_static",
                    "chance",
                )
            }
            print(f"{name:<12} {ds:<10} {shown}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
