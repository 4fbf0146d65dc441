"""Training-step benchmark: clips/s of the real loop (forward + backward + clip + AdamW step).

    .venv/bin/python benchmarks/train.py [--steps 6] [--warmup 2] [--out benchmarks/results/train.json]

1. CPU, fp32: ``tubevit.train.loop.train`` on one repeated synthetic uint8 batch (no data loading; the loop
   normalises it on the device, as it does the loaders' batches), for the
   embedded default (nano and tiny, ``embedded`` tubes, 16x64^2, batch 16) and tiny at paper geometry
   (``paper`` tubes, 32x224^2, batch 2). clips/s is the median over the measured steps (the first
   ``--warmup`` steps are dropped); GFLOP/s counts a training step as 3 forward passes (MACs from
   ``count_macs``, FLOPs = 2 MACs).
2. GPU, bf16 autocast (only where CUDA is available): TubeViT-base, ``paper`` tubes, 32x224^2, batch 16,
   and model-FLOPs utilisation = clips/s x 6 x MACs per clip / the device's dense bf16 peak. Without a GPU
   the JSON records "not measured: no GPU lent in this task".

The machine's other users share its cores: CPU numbers are noisy, the JSON records threads and load.
Each CPU case runs with 1 and with 2 torch threads: on a loaded 2-core machine OpenMP's 2 threads were
measured 10-30x slower than 1 thread (threads spin-wait for a descheduled peer).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from pipelines.common import write_json_atomic  # noqa: E402
from tubevit.config.train import OptimConfig  # noqa: E402
from tubevit.model.tubevit import count_macs, create_model  # noqa: E402
from tubevit.train.loop import Callback, train  # noqa: E402
from tubevit.train.losses import build_objective  # noqa: E402

CPU_CASES = (  # variant, tubes, frames, size, batch
    ("nano", "embedded", 16, 64, 16),
    ("tiny", "embedded", 16, 64, 16),
    ("tiny", "paper", 32, 224, 2),
)
GPU_CASE = ("base", "paper", 32, 224, 16)
NUM_CLASSES = 400
# Dense bf16 tensor-core peak (no sparsity), FLOP/s, by a substring of the device name.
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 70e12}


class Timings(Callback):
    def __init__(self):
        self.rows: list[dict] = []

    def on_step(self, step, metrics):
        self.rows.append(dict(metrics))


def measure(
    variant: str, tubes: str, frames: int, size: int, batch: int, steps: int, warmup: int, device: str
) -> dict:
    torch.manual_seed(0)
    model = create_model(variant, tubes, {"kinetics": NUM_CLASSES})
    with torch.device("meta"):
        meta_model = create_model(variant, tubes, {"kinetics": NUM_CLASSES})
    # counted outside the meta context: the memoised position embedding must be computed on the CPU
    macs = count_macs(meta_model, (1, 3, frames, size, size), "kinetics")
    video = torch.randint(0, 256, (batch, 3, frames, size, size), dtype=torch.uint8)  # as the loaders yield
    label = torch.randint(0, NUM_CLASSES, (batch,))
    if device == "cuda":  # the loaders pin their batches when CUDA is available
        video, label = video.pin_memory(), label.pin_memory()

    def batches(start):
        while True:
            yield {"video": video, "label": label, "dataset": "kinetics"}

    timings = Timings()
    train(
        model,
        batches,
        {"kinetics": build_objective(NUM_CLASSES)},
        OptimConfig(lr=1e-4, warmup_steps=0),
        warmup + steps,
        device=device,
        callbacks=[timings],
    )
    if device == "cuda":
        torch.cuda.synchronize()
    measured = timings.rows[warmup:]
    clips_per_s = statistics.median(r["clips_per_s"] for r in measured)
    return {
        "variant": variant,
        "tubes": tubes,
        "frames": frames,
        "size": size,
        "batch": batch,
        "device": device,
        "precision": "bf16 autocast" if device == "cuda" else "fp32",
        "input": "uint8, normalised in the step",
        "gmacs_per_clip": round(macs / 1e9, 3),
        "clips_per_s": round(clips_per_s, 2),
        "step_s_median": round(statistics.median(r["seconds"] for r in measured), 4),
        "train_gflops_per_s": round(clips_per_s * 6 * macs / 1e9, 1),
        "steps_measured": len(measured),
    }


def gpu_row(steps: int, warmup: int) -> dict:
    if not torch.cuda.is_available():
        return {
            "case": dict(zip(("variant", "tubes", "frames", "size", "batch"), GPU_CASE, strict=True)),
            "status": "not measured: no GPU lent in this task",
        }
    row = measure(*GPU_CASE, steps=steps, warmup=warmup, device="cuda")
    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16.items() if k in name), None)
    row["gpu"] = name
    row["peak_bf16_flops"] = peak
    row["mfu"] = round(row["train_gflops_per_s"] * 1e9 / peak, 4) if peak else None
    row["status"] = "measured"
    return row


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=6, help="measured steps per case")
    parser.add_argument("--warmup", type=int, default=2, help="steps dropped before measuring")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "train.json")
    parser.add_argument(
        "--threads", default="1,2", help="comma-separated torch CPU thread counts to measure each case with"
    )
    args = parser.parse_args()

    started = time.time()
    load_start = round(os.getloadavg()[0], 2)
    cpu = []
    for threads in (int(t) for t in args.threads.split(",")):
        torch.set_num_threads(threads)
        for case in CPU_CASES:
            cpu.append(
                {**measure(*case, steps=args.steps, warmup=args.warmup, device="cpu"), "threads": threads}
            )
    torch.set_num_threads(os.cpu_count() or 1)
    gpu = gpu_row(args.steps * 3, args.warmup + 1)
    header = f"{'variant':8} {'tubes':9} {'T x H^2':>10} {'batch':>5} {'device':>6} {'threads':>7} {'GMACs':>7} {'clips/s':>8} {'GFLOP/s':>8}"
    print(header)
    print("-" * len(header))
    for r in cpu + ([gpu] if gpu.get("status") == "measured" else []):
        geom = f"{r['frames']}x{r['size']}^2"
        print(
            f"{r['variant']:8} {r['tubes']:9} {geom:>10} {r['batch']:>5} {r['device']:>6} {r.get('threads', '-')!s:>7} {r['gmacs_per_clip']:>7} {r['clips_per_s']:>8} {r['train_gflops_per_s']:>8}"
        )
    if gpu.get("status") == "measured":
        print(f"GPU {gpu['gpu']}: MFU {gpu['mfu']}")
    else:
        print(f"GPU (base, paper tubes, 32x224^2, bf16): {gpu['status']}")
    result = {
        "cpu": cpu,
        "gpu": gpu,
        "machine": {
            "cpu_count": os.cpu_count(),
            "load_average_1m_start_end": [load_start, round(os.getloadavg()[0], 2)],
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "seconds": round(time.time() - started, 1),
    }
    write_json_atomic(args.out, result)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
