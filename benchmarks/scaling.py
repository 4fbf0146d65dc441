"""Image-to-video scaling step time: ``tube_proj`` frozen, trained through the gate, or trained in full.

    .venv/bin/python benchmarks/scaling.py [--steps 8] [--warmup 2] [--threads 1] \
        [--out benchmarks/results/scaling.json]

Issue 9 item 3. With a linear width map (a non-integer width ratio) and the blocks before ``s`` frozen,
training ``tube_proj`` with the full gradient makes autograd keep and back-propagate through every frozen
block. The cases, on the CPU in fp32, one repeated synthetic batch (no data loading):
- ``all trainable``: the large model without scaling (every block trains), the reference;
- ``frozen`` (the default of ``scale_image_to_video``): ``tube_proj`` frozen at ``[I; 0]``;
- ``gate``: ``tube_proj`` trains through the gate's ``tanh(alpha) * z_0`` only (frozen blocks see ``z_0``
  detached);
- ``full``: ``tube_proj`` trains with the full gradient, through the frozen blocks.
A step is forward, backward and an AdamW step over the trainable parameters; the time is the median over
the measured steps (the first ``--warmup`` dropped). The large model has the paper's H proportions scaled
down: ``s / depth`` = 26/32 (here 13 of 16 blocks frozen). The machine's other users share its cores: the
JSON records the load average.
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
from tubevit.model.convert import scale_image_to_video  # noqa: E402
from tubevit.model.tubevit import create_model  # noqa: E402

SMALL = {"variant": "nano", "embed_dim": 64}  # the trained small TubeViT (width 64)
LARGE = {"embed_dim": 240, "depth": 16, "num_heads": 4}  # width ratio 3.75: linear map
SCALE_FROM = 13  # 13 of 16 frozen (H: 26 of 32)
FRAMES, SIZE, BATCH = 16, 64, 8
HEADS = {"kinetics": 400}


def build(mode: str) -> torch.nn.Module:
    torch.manual_seed(0)
    large = create_model("nano", "embedded", HEADS, **LARGE)
    if mode == "all trainable":
        return large
    small = create_model(SMALL["variant"], "embedded", HEADS)
    return scale_image_to_video(small, large, SCALE_FROM, width_map="linear", tube_proj_grad=mode)


def measure(mode: str, steps: int, warmup: int) -> dict:
    model = build(mode).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    x = torch.randn(BATCH, 3, FRAMES, SIZE, SIZE)
    y = torch.randint(0, HEADS["kinetics"], (BATCH,))
    times = []
    for _ in range(warmup + steps):
        t0 = time.perf_counter()
        loss = torch.nn.functional.cross_entropy(model(x, "kinetics"), y)
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t0)
    measured = times[warmup:]
    return {
        "mode": mode,
        "trainable_params": sum(p.numel() for p in params),
        "seconds_per_step": round(statistics.median(measured), 4),
        "min_seconds_per_step": round(min(measured), 4),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "scaling.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows = [measure(mode, args.steps, args.warmup) for mode in ("all trainable", "frozen", "gate", "full")]
    ref = rows[0]["seconds_per_step"]
    print(f"{'mode':<14} {'trainable':>10} {'s/step':>8} {'vs all':>7}")
    for row in rows:
        row["vs_all_trainable"] = round(row["seconds_per_step"] / ref, 3)
        print(
            f"{row['mode']:<14} {row['trainable_params']:>10} {row['seconds_per_step']:>8.4f} "
            f"{row['vs_all_trainable']:>7.3f}"
        )
    write_json_atomic(
        args.out,
        {
            "benchmark": "image-to-video scaling step time by tube_proj_grad",
            "device": "cpu",
            "dtype": "float32",
            "threads": args.threads,
            "steps": args.steps,
            "warmup": args.warmup,
            "small": SMALL,
            "large": LARGE,
            "scale_from_layer": SCALE_FROM,
            "input": {"batch": BATCH, "frames": FRAMES, "size": SIZE, "tubes": "embedded"},
            "load_average": [round(v, 2) for v in os.getloadavg()],
            "cpu_count": os.cpu_count(),
            "machine": platform.machine(),
            "torch": torch.__version__,
            "rows": rows,
        },
    )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
