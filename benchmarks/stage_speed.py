"""Training-stage speed A/B: the embedded default's stages, baseline tree vs this tree, on the same shards.

    .venv/bin/python benchmarks/stage_speed.py --baseline /work/base --shards /work/run1/shards \\
        [--steps 400] [--finetune ssv2 charades] [--finetune-steps 200] [--rounds 2] \\
        [--out benchmarks/results/stage_speed.json]

Each round runs, for the baseline tree and then this tree (alternating, so that both see the same machine
load), ``python -m pipelines.pretrain`` for ``--steps`` steps and then ``python -m pipelines.finetune <ds>``
for ``--finetune-steps`` steps from that tree's own pretrained model, each with the tree's own
``params.yaml`` (its ``.venv``, ``PYTHONPATH`` = the tree) with only the step counts changed and
checkpoints off (``checkpoint_every: 0``: one checkpoint after the last step). The stages'
``seconds_per_step`` (their timing file: training wall time / steps, the first-epoch decode included) is
the measure; speed-up = baseline s/step / new s/step, from the medians over rounds. The JSON records both
trees' commits (and whether they had uncommitted changes), the load average around each run and each
run's final loss.

Timings on the shared 2-core development machine are noisy: compare only runs of one invocation.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipelines.common import write_json_atomic  # noqa: E402


def commit_of(tree: Path) -> dict:
    """``{"commit": sha, "dirty": bool}`` of the git checkout at ``tree``."""
    sha = subprocess.run(
        ["git", "-C", str(tree), "rev-parse", "HEAD"], capture_output=True, text=True, check=True
    ).stdout.strip()
    status = subprocess.run(
        ["git", "-C", str(tree), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return {"commit": sha, "dirty": bool(status.strip())}


def bench_params(tree: Path, out: Path, steps: int, finetune: list[str], finetune_steps: int) -> Path:
    """``tree``'s params.yaml with pretrain/finetune step counts set and periodic checkpoints off."""
    params = yaml.safe_load((tree / "params.yaml").read_text())
    params["pretrain"]["steps"] = steps
    params["pretrain"]["checkpoint_every"] = 0
    params["pretrain"]["eval_every"] = 0
    for name in finetune:
        params["finetune"][name]["steps"] = finetune_steps
        params["finetune"][name]["checkpoint_every"] = 0
    path = out / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def run_stage(tree: Path, args: list[str], work: Path, label: str) -> dict:
    """Run one stage module of ``tree`` with ``args``; its timing file's numbers, wall time and load."""
    timing = work / f"{label}-timing.json"
    env = dict(os.environ, PYTHONPATH=str(tree), PREFECT_SERVER_ANALYTICS_ENABLED="false")
    cmd = [str(tree / ".venv" / "bin" / "python"), "-m", *args, "--timing", str(timing), "--no-flow"]
    load_before = os.getloadavg()[0]
    start = time.perf_counter()
    with open(work / f"{label}.log", "w") as log:
        proc = subprocess.run(cmd, cwd=tree, env=env, stdout=log, stderr=subprocess.STDOUT, check=False)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        tail = (work / f"{label}.log").read_text()[-2000:]
        raise RuntimeError(f"{label}: {' '.join(cmd)} exited {proc.returncode}:\n{tail}")
    data = json.loads(timing.read_text())
    return {
        "seconds_per_step": data["seconds_per_step"],
        "clips_per_s": data.get("clips_per_s"),
        "final_loss": data.get("final_loss"),
        "steps": data.get("steps_run"),
        "torch_threads": data.get("torch_threads"),
        "wall_s": round(wall, 2),
        "load_before": round(load_before, 2),
        "load_after": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--baseline", type=Path, required=True, help="the baseline checkout (e.g. 72ac1c5)")
    parser.add_argument("--new", type=Path, default=ROOT, help="the checkout to compare (default: this one)")
    parser.add_argument("--shards", type=Path, required=True, help="shards/ of an embedded-default run")
    parser.add_argument("--steps", type=int, default=400, help="pretrain steps per run")
    parser.add_argument("--finetune", nargs="*", default=["ssv2", "charades"], help="finetune stages to time")
    parser.add_argument("--finetune-steps", type=int, default=200, help="steps per finetune run")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "stage_speed.json")
    args = parser.parse_args()

    trees = {"baseline": args.baseline.resolve(), "new": args.new.resolve()}
    runs: dict[str, dict[str, list[dict]]] = {name: {} for name in trees}
    with tempfile.TemporaryDirectory(prefix="stage-speed-") as tmp:
        for r in range(args.rounds):
            for name, tree in trees.items():
                work = Path(tmp) / f"{name}-{r}"
                work.mkdir()
                params = bench_params(tree, work, args.steps, args.finetune, args.finetune_steps)
                model = work / "pretrain"
                stage_args = ["pipelines.pretrain", "--shards", str(args.shards), "--out", str(model)]
                stage_args += ["--checkpoints", str(work / "ckpt-pretrain"), "--live", str(work / "live-pre")]
                row = run_stage(tree, [*stage_args, "--params", str(params)], work, "pretrain")
                runs[name].setdefault("pretrain", []).append(row)
                print(
                    f"round {r} {name:8s} pretrain  {row['seconds_per_step']:.4f} s/step (load {row['load_before']})"
                )
                for ds in args.finetune:
                    stage_args = ["pipelines.finetune", ds, "--pretrained", str(model)]
                    stage_args += ["--shards", str(args.shards / ds), "--out", str(work / ds)]
                    stage_args += [
                        "--checkpoints",
                        str(work / f"ckpt-{ds}"),
                        "--live",
                        str(work / f"live-{ds}"),
                    ]
                    row = run_stage(tree, [*stage_args, "--params", str(params)], work, f"finetune-{ds}")
                    runs[name].setdefault(f"finetune-{ds}", []).append(row)
                    print(
                        f"round {r} {name:8s} {ds:9s} {row['seconds_per_step']:.4f} s/step (load {row['load_before']})"
                    )

    summary = {}
    for stage in runs["new"]:
        base = statistics.median(row["seconds_per_step"] for row in runs["baseline"][stage])
        new = statistics.median(row["seconds_per_step"] for row in runs["new"][stage])
        summary[stage] = {
            "baseline_s_per_step": base,
            "new_s_per_step": new,
            "speedup": round(base / new, 3),
            "same_final_loss": len({row["final_loss"] for row in runs["new"][stage]}) == 1,
        }
    print(f"\n{'stage':18s} {'baseline s/step':>16s} {'new s/step':>11s} {'speed-up':>9s}")
    for stage, row in summary.items():
        print(
            f"{stage:18s} {row['baseline_s_per_step']:16.4f} {row['new_s_per_step']:11.4f} {row['speedup']:9.2f}x"
        )
    result = {
        "what": "embedded default training stages, seconds per step, baseline tree vs new tree, same shards",
        "command": " ".join(sys.argv),
        "trees": {name: {"path": str(tree), **commit_of(tree)} for name, tree in trees.items()},
        "shards": str(args.shards),
        "steps": {"pretrain": args.steps, "finetune": args.finetune_steps},
        "rounds": args.rounds,
        "cpu_count": os.cpu_count(),
        "note": "shared 2-core machine under load (see load_before/after per run); noisy",
        "summary": summary,
        "runs": runs,
    }
    write_json_atomic(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
