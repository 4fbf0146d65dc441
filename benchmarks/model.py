"""Model benchmark: size and cost of TubeViT against dense tubelets; training-step overhead of the tubes.

    .venv/bin/python benchmarks/model.py [--steps 8] [--batch 2] [--out benchmarks/results/model.json]

1. Size and cost (``tubevit.cli.describe``: meta device, ``FlopCounterMode`` under the MATH SDPA backend,
   MACs = FLOPs / 2, one view, batch 1): tokens, parameters and GMACs of tiny, base, large and huge with
   the ``paper`` tubes and with dense ViViT-style 2x16x16 tubelets, at 32 and 64 frames of 224^2, and
   the GMAC ratio (goal for B: <= 1/5). Heads: ImageNet 1000 + Kinetics-600. The paper's Table 7b gives
   72 GFLOPs for TubeViT-B with 4 tubes and does not state its FLOP convention or clip length; we print
   our MACs and 2 x MACs beside it.
2. Training-step overhead on the CPU (fp32): forward + backward + SGD-free ``zero_grad`` of TubeViT-tiny
   (paper tubes, 32x224^2: 539 tokens) against a plain ViT-tiny of the same width and depth fed the same
   number of tokens: the same encoder and MAP head with one 2D 16x16 patch embedding on a 112x1232 image
   (7 x 77 = 539 patches), and timm's ``VisionTransformer`` (no class token, average pool) on the same
   image. Steps alternate between the models after warm-up; median wall and process-CPU times are
   reported, with one torch thread by default (CPU time is the steadier figure on a shared machine).
   Goal: ratio <= 1.05.

The machine's other users share its cores: the step times are noisy, the JSON records the core count.
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
from tubevit.cli import describe  # noqa: E402
from tubevit.model.tubes import TubeSpec, get_tube_set, token_counts  # noqa: E402
from tubevit.model.tubevit import create_model  # noqa: E402

PAPER_GFLOPS_B = 72.0  # Table 7b, TubeViT-B, 4 tubes (convention and clip length unstated)
VARIANTS = ("tiny", "base", "large", "huge")
FRAMES = (32, 64)


def size_and_cost() -> list[dict]:
    rows = []
    for variant in VARIANTS:
        for frames in FRAMES:
            info = describe(variant, "paper", frames, 224)
            rows.append(
                {
                    "variant": variant,
                    "frames": frames,
                    "size": 224,
                    "tubes_tokens": info["tokens"]["total"],
                    "tubes_tokens_per_tube": info["tokens"]["per_tube"],
                    "tubes_params": info["params"],
                    "tubes_gmacs": round(info["gmacs"], 3),
                    "dense_tokens": info["dense"]["tokens"]["total"],
                    "dense_params": info["dense"]["params"],
                    "dense_gmacs": round(info["dense"]["gmacs"], 3),
                    "gmac_ratio": round(info["gmac_ratio"], 4),
                }
            )
    return rows


def _step(fn, x, module) -> tuple[float, float]:
    """One forward + backward; returns (wall seconds, process CPU seconds)."""
    module.zero_grad(set_to_none=True)
    w0, c0 = time.perf_counter(), time.process_time()
    fn(x).sum().backward()
    return time.perf_counter() - w0, time.process_time() - c0


def step_overhead(steps: int, batch: int, threads: int, warmup: int = 2) -> dict:
    torch.manual_seed(0)
    torch.set_num_threads(threads)
    tokens = sum(token_counts(get_tube_set("paper"), 32, 224, 224))  # 539 = 7 x 77 patches of 16x16
    heads = {"kinetics": 400}
    tube = create_model("tiny", "paper", heads)
    plain = create_model("tiny", [TubeSpec((1, 16, 16), (1, 16, 16))], heads)
    import timm

    ref = timm.models.vision_transformer.VisionTransformer(
        img_size=(112, 1232),
        patch_size=16,
        embed_dim=192,
        depth=12,
        num_heads=3,
        num_classes=400,
        class_token=False,
        global_pool="avg",
    )
    video = torch.randn(batch, 3, 32, 224, 224)
    image = torch.randn(batch, 3, 1, 112, 1232)
    image2d = image[:, :, 0].contiguous()
    assert plain.tokenizer(image).shape[1] == tokens == tube.tokenizer(video).shape[1]
    models = {
        "tubevit_tiny": (lambda x: tube(x, "kinetics"), video, tube),
        "plain_vit_tiny_same_code": (lambda x: plain(x, "kinetics"), image, plain),
        "timm_vit_tiny": (ref, image2d, ref),
    }
    wall: dict[str, list[float]] = {name: [] for name in models}
    cpu: dict[str, list[float]] = {name: [] for name in models}
    for i in range(warmup + steps):
        for name, (fn, x, module) in models.items():  # interleaved: load changes hit all models alike
            w, c = _step(fn, x, module)
            if i >= warmup:
                wall[name].append(w)
                cpu[name].append(c)
    med_wall = {k: statistics.median(v) for k, v in wall.items()}
    med_cpu = {k: statistics.median(v) for k, v in cpu.items()}
    return {
        "tokens": tokens,
        "batch": batch,
        "steps": steps,
        "threads": threads,
        "median_wall_s": {k: round(v, 4) for k, v in med_wall.items()},
        "median_cpu_s": {k: round(v, 4) for k, v in med_cpu.items()},
        "wall_s": {k: [round(t, 4) for t in v] for k, v in wall.items()},
        "ratio_vs_same_code": {
            "wall": round(med_wall["tubevit_tiny"] / med_wall["plain_vit_tiny_same_code"], 4),
            "cpu": round(med_cpu["tubevit_tiny"] / med_cpu["plain_vit_tiny_same_code"], 4),
        },
        "ratio_vs_timm": {
            "wall": round(med_wall["tubevit_tiny"] / med_wall["timm_vit_tiny"], 4),
            "cpu": round(med_cpu["tubevit_tiny"] / med_cpu["timm_vit_tiny"], 4),
        },
        "embed_cpu_s": _embed_time(tube, plain, video, image),
    }


def _embed_time(tube, plain, video, image, reps: int = 5) -> dict:
    """CPU seconds of forward + backward of the tokenizer + position embedding alone (the only part that
    differs between TubeViT and the same-code plain ViT), medians."""
    out = {}
    for name, model, x in (("tubes", tube, video), ("patch", plain, image)):
        ts = []
        for _ in range(reps):
            model.zero_grad(set_to_none=True)
            t0 = time.process_time()
            model.embed(x).sum().backward()
            ts.append(time.process_time() - t0)
        out[name] = round(statistics.median(ts), 4)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=8, help="timed steps per model")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="torch threads for the step timing")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "model.json")
    args = parser.parse_args(argv)

    rows = size_and_cost()
    print("Size and cost (224^2, one view, batch 1; heads IN1k + K600)")
    print(
        f"{'variant':8} {'T':>3} | {'tokens':>6} {'params M':>9} {'GMACs':>8} | "
        f"{'dense tok':>9} {'params M':>9} {'GMACs':>9} | {'ratio':>6}"
    )
    for r in rows:
        print(
            f"{r['variant']:8} {r['frames']:>3} | {r['tubes_tokens']:>6} {r['tubes_params']['total'] / 1e6:>9.2f} "
            f"{r['tubes_gmacs']:>8.2f} | {r['dense_tokens']:>9} {r['dense_params']['total'] / 1e6:>9.2f} "
            f"{r['dense_gmacs']:>9.2f} | {r['gmac_ratio']:>6.3f}"
        )
    base32 = next(r for r in rows if r["variant"] == "base" and r["frames"] == 32)
    print(
        f"TubeViT-B at 32x224^2: {base32['tubes_gmacs']:.1f} GMACs = {2 * base32['tubes_gmacs']:.1f} GFLOPs "
        f"(paper Table 7b: {PAPER_GFLOPS_B:.0f} GFLOPs, convention unstated)"
    )

    overhead = step_overhead(args.steps, args.batch, args.threads)
    print(
        f"\nCPU training step (fwd+bwd, fp32, batch {overhead['batch']}, {overhead['tokens']} tokens, "
        f"{overhead['threads']} thread(s), median of {overhead['steps']} interleaved steps)"
    )
    print(f"  {'model':26} {'wall s':>8} {'CPU s':>8}")
    for name in overhead["median_wall_s"]:
        print(f"  {name:26} {overhead['median_wall_s'][name]:>8.3f} {overhead['median_cpu_s'][name]:>8.3f}")
    r1, r2 = overhead["ratio_vs_same_code"], overhead["ratio_vs_timm"]
    print(
        f"  ratio TubeViT / plain ViT (same code): wall {r1['wall']:.3f}, CPU {r1['cpu']:.3f}  (goal <= 1.05)"
    )
    print(f"  ratio TubeViT / timm ViT:              wall {r2['wall']:.3f}, CPU {r2['cpu']:.3f}")
    print(f"  tokenizer + pos-emb alone, CPU s (fwd+bwd): {overhead['embed_cpu_s']}")

    result = {
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
        "size_and_cost": rows,
        "paper_table7b_gflops_base": PAPER_GFLOPS_B,
        "ours_base_32f": {"gmacs": base32["tubes_gmacs"], "gflops": round(2 * base32["tubes_gmacs"], 3)},
        "step_overhead": overhead,
    }
    write_json_atomic(args.out, result)
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
