"""Augmentation benchmark: the CPU path (one clip at a time) against the batched device path. Prints a table,
writes JSON.

    .venv/bin/python benchmarks/augment.py [--device cpu|cuda] [--out benchmarks/results/augment.json]

Rows, clips/s on ``--device`` (CPU tensors by default, ``torch.set_num_threads(1)``, so per core):
1. Training augmentation, with and without RandAugment(2, 10, 11 bins), at two geometries:
   - small: 16 x 32^2 from 64^2 sources, batches of 16;
   - paper-like: 16 x 224^2 from 256 x 340 sources, batches of 4;
   - ``cpu_path``: per clip ``draw_clip_params`` + ``augment_clip`` (torchvision v2 functionals on uint8),
     then the batch is stacked and normalised: what the loader workers plus ``to_model_input`` do;
   - ``device_path``: ``draw_clip_params`` + ``pack_params``, then ``to_model_input`` on the zero-padded uint8
     batch (``augment_batch`` + ``normalize``).
2. The batched crop + resize alone (paper-like geometry), by implementation, with the error against the CPU
   path's ``F.resized_crop`` on uint8 (max and mean |difference| in levels):
   - ``matmul_aa`` (ours, the CUDA choice): the antialiased bilinear weights torch's ``interpolate`` uses, as two
     batched matmuls per batch (float32 on CPU, float16 on CUDA);
   - ``torchvision_per_sample_uint8`` (the choice on CPU tensors): ``F.resized_crop(antialias=True)`` per clip on
     uint8 (torch's uint8 kernel on the CPU: bitwise the CPU path; CUDA casts to float inside);
   - ``torchvision_per_sample_float32``: the same on float32 (what a GPU runs);
   - ``roi_align``: ``torchvision.ops.roi_align`` with adaptive sampling (box filter, not the tent filter);
   - ``grid_sample``: one bilinear ``affine_grid``/``grid_sample`` (no antialias: aliases when shrinking);
   - kornia is not installed and is not measured: its ``crop_and_resize`` is a bilinear warp through
     ``grid_sample`` without antialias, i.e. the ``grid_sample`` row.
3. Drawing the params of one clip with a ``torch.Generator`` against the former per-sample
   ``fork_rng`` + ``torch.manual_seed`` (whose CUDA-build lazy seed formats a stack trace).

The machine's other users share its cores: the numbers are noisy; the JSON records the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as nnf  # noqa: E402
from torchvision.ops import roi_align  # noqa: E402
from torchvision.transforms.v2 import functional as F  # noqa: E402

from tubevit.data import augment  # noqa: E402
from tubevit.data.augment import augment_clip, draw_clip_params, normalize, pack_params, to_model_input  # noqa: E402

GEOMETRIES = {
    "small_16x32_from_64": {"frames": 16, "size": 32, "src": (64, 64), "batch": 16},
    "paper_16x224_from_256x340": {"frames": 16, "size": 224, "src": (256, 340), "batch": 4},
}


def _clips(n: int, frames: int, src: tuple[int, int], seed: int = 0) -> list[np.ndarray]:
    """``n`` uint8 ``(T, H, W, 3)`` clips: smooth gradients plus noise (so resampling is not trivial)."""
    rng = np.random.default_rng(seed)
    h, w = src
    yy, xx = np.mgrid[0:h, 0:w]
    out = []
    for i in range(n):
        base = np.stack([(yy * 3 + xx + 40 * i) % 256, (xx * 2 + 7 * i) % 256, (yy + xx) % 256], -1)
        noise = rng.integers(-20, 21, (frames, h, w, 3))
        out.append(np.clip(base[None] + noise, 0, 255).astype(np.uint8))
    return out


def _padded(clips: list[np.ndarray]) -> torch.Tensor:
    """uint8 ``(T, H, W, 3)`` clips -> uint8 ``(B, 3, T, Hmax, Wmax)`` zero-padded."""
    t = clips[0].shape[0]
    h, w = max(c.shape[1] for c in clips), max(c.shape[2] for c in clips)
    out = torch.zeros(len(clips), 3, t, h, w, dtype=torch.uint8)
    for i, c in enumerate(clips):
        out[i, :, :, : c.shape[1], : c.shape[2]] = torch.as_tensor(c).permute(3, 0, 1, 2)  # THWC -> CTHW
    return out


def _rate(fn: Callable[[], object], items: int, min_s: float, device: torch.device) -> float:
    """Items per second of ``fn`` (one warm-up call, then repeats for at least ``min_s`` seconds)."""
    fn()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    calls, start = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        sync()
        elapsed = time.perf_counter() - start
        if elapsed >= min_s:
            return calls * items / elapsed


def _paths(clips: list[np.ndarray], size: int, ra: bool, device: torch.device):
    """The two paths on one batch, each a call that draws the params and returns the model input."""
    h, w = clips[0].shape[1:3]
    seeds = list(range(len(clips)))
    padded = _padded(clips).to(device)

    def cpu_path():
        params = [draw_clip_params(s, h, w, size=size, randaugment=ra) for s in seeds]
        video = torch.stack([augment_clip(c, p) for c, p in zip(clips, params, strict=True)])
        return normalize(video.to(device))

    def device_path():
        params = [draw_clip_params(s, h, w, size=size, randaugment=ra) for s in seeds]
        return to_model_input({"video": padded, "aug": pack_params(params)}, device)

    return cpu_path, device_path


def _augmentation_rows(device: torch.device, min_s: float) -> dict:
    rows = {}
    for name, g in GEOMETRIES.items():
        clips = _clips(g["batch"], g["frames"], g["src"])
        for ra in (True, False):
            cpu_path, device_path = _paths(clips, g["size"], ra, device)
            cpu = _rate(cpu_path, g["batch"], min_s, device)
            dev = _rate(device_path, g["batch"], min_s, device)
            rows[f"{name}_{'randaugment' if ra else 'crop_only'}"] = {
                "frames": g["frames"],
                "size": g["size"],
                "source": list(g["src"]),
                "batch": g["batch"],
                "randaugment": ra,
                "cpu_path_clips_per_s": cpu,
                "device_path_clips_per_s": dev,
                "device_over_cpu": dev / cpu,
            }
    return rows


def _crop_rows(device: torch.device, min_s: float) -> dict:
    g = GEOMETRIES["paper_16x224_from_256x340"]
    size, (h, w) = g["size"], g["src"]
    clips = _clips(g["batch"], g["frames"], g["src"], seed=1)
    params = [draw_clip_params(s, h, w, size=size, randaugment=False) for s in range(g["batch"])]
    reference = torch.stack([augment_clip(c, p) for c, p in zip(clips, params, strict=True)]).float()
    video = _padded(clips).to(device)
    boxes_cpu = torch.tensor([[p.top, p.left, p.height, p.width] for p in params], dtype=torch.float32)
    boxes = boxes_cpu.to(device)
    b, c, t = video.shape[:3]

    def matmul_aa():
        return augment._crop_resize(video, boxes, size)

    def torchvision_per_sample_uint8():
        return augment._crop_resize_per_sample(video, params, size)

    def torchvision_per_sample_float32():
        x = video.float()
        out = [
            F.resized_crop(x[i], p.top, p.left, p.height, p.width, [size, size], antialias=True)
            for i, p in enumerate(params)
        ]
        return torch.stack(out).round_().clamp_(0, 255)

    def roi():
        rois = torch.cat(
            [torch.arange(b, dtype=torch.float32)[:, None], boxes_cpu[:, [1, 0]], boxes_cpu[:, [1, 0]]], 1
        )
        rois[:, 3] += boxes_cpu[:, 3]
        rois[:, 4] += boxes_cpu[:, 2]
        x = video.reshape(b, c * t, *video.shape[-2:]).float()  # BCTHW -> B(CT)HW
        out = roi_align(x, rois.to(device), (size, size), spatial_scale=1.0, sampling_ratio=0, aligned=True)
        return out.round_().clamp_(0, 255).view(b, c, t, size, size)

    def grid():
        hh, ww = video.shape[-2:]
        theta = torch.zeros(b, 2, 3)
        theta[:, 0, 0] = boxes_cpu[:, 3] / ww
        theta[:, 1, 1] = boxes_cpu[:, 2] / hh
        theta[:, 0, 2] = (2 * boxes_cpu[:, 1] + boxes_cpu[:, 3]) / ww - 1
        theta[:, 1, 2] = (2 * boxes_cpu[:, 0] + boxes_cpu[:, 2]) / hh - 1
        flow = nnf.affine_grid(theta.to(device), [b, c * t, size, size], align_corners=False)
        x = video.reshape(b, c * t, hh, ww).float()
        out = nnf.grid_sample(x, flow, mode="bilinear", padding_mode="border", align_corners=False)
        return out.round_().clamp_(0, 255).view(b, c, t, size, size)

    rows = {}
    for name, fn in [
        ("matmul_aa", matmul_aa),
        ("torchvision_per_sample_uint8", torchvision_per_sample_uint8),
        ("torchvision_per_sample_float32", torchvision_per_sample_float32),
        ("roi_align", roi),
        ("grid_sample", grid),
    ]:
        d = (fn().cpu() - reference).abs()
        rows[name] = {
            "clips_per_s": _rate(fn, g["batch"], min_s, device),
            "max_abs_diff_levels": float(d.max()),
            "mean_abs_diff_levels": float(d.mean()),
        }
    rows["kornia"] = {"clips_per_s": None, "note": "not installed; crop_and_resize is the grid_sample row"}
    return rows


def _seeding_rows(min_s: float) -> dict:
    def generator():
        return draw_clip_params(12345, 256, 340, size=224)

    def manual_seed():
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(12345)
            torch.rand(())

    cpu = torch.device("cpu")
    return {
        "draw_clip_params_per_s": _rate(generator, 1, min_s, cpu),
        "fork_rng_plus_manual_seed_per_s": _rate(manual_seed, 1, min_s, cpu),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu", help="where the device path and crop rows run")
    parser.add_argument("--min-seconds", type=float, default=2.0, help="timed seconds per row (at least)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "augment.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    device = torch.device(args.device)
    start = time.perf_counter()
    results: dict = {
        "machine": {
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "device": str(device) if device.type == "cpu" else torch.cuda.get_device_name(device),
            "load_average_at_start": os.getloadavg(),  # other jobs on the cores make timings noisy
        },
        "settings": {"device": str(device), "min_seconds": args.min_seconds, "geometries": GEOMETRIES},
    }
    results["augmentation"] = _augmentation_rows(device, args.min_seconds)
    results["crop_resize"] = _crop_rows(device, args.min_seconds)
    results["seeding"] = _seeding_rows(args.min_seconds / 2)
    aug = results["augmentation"]
    cpu_faster = all(r["cpu_path_clips_per_s"] >= r["device_path_clips_per_s"] for r in aug.values())
    results["choice"] = {
        "crop_resize_cpu_tensors": "torchvision_per_sample_uint8",
        "crop_resize_cuda": "matmul_aa (fp16)",
        "cpu_path_faster_on_this_device": cpu_faster,
        "device_over_cpu_range": [
            min(r["device_over_cpu"] for r in aug.values()),
            max(r["device_over_cpu"] for r in aug.values()),
        ],
        "reason": (
            "crop: on CPU tensors torch's uint8 kernel per clip (channels-last) is the fastest and bitwise the "
            "CPU path; on CUDA the batched matmul (two bmm launches for the batch, fp16 tensor cores), which this "
            "run measures only with --device cuda. augment_on auto on CPU: the CPU path, which runs in loader "
            "workers concurrently with the step, while the device path runs serially in the training process"
        ),
        "library_cpu_auto_choice": augment.CPU_AUTO_CHOICE,
    }
    results["machine"]["load_average_at_end"] = os.getloadavg()
    results["wall_s"] = time.perf_counter() - start
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    tmp.replace(args.out)
    _print_table(results)


def _print_table(r: dict) -> None:
    print(
        f"device {r['settings']['device']}, {r['machine']['torch_threads']} thread(s), "
        f"load average at start {r['machine']['load_average_at_start'][0]:.2f}"
    )
    print(f"{'augmentation (clips/s)':<48}{'cpu path':>10}{'device path':>13}{'ratio':>8}")
    for name, row in r["augmentation"].items():
        print(
            f"{name:<48}{row['cpu_path_clips_per_s']:>10.1f}{row['device_path_clips_per_s']:>13.1f}"
            f"{row['device_over_cpu']:>8.2f}"
        )
    print(f"{'crop + resize, 16x224^2 from 256x340':<48}{'clips/s':>10}{'max diff':>13}{'mean diff':>11}")
    for name, row in r["crop_resize"].items():
        if row["clips_per_s"] is None:
            print(f"{name:<48}{'-':>10}  {row['note']}")
            continue
        print(
            f"{name:<48}{row['clips_per_s']:>10.1f}{row['max_abs_diff_levels']:>13.0f}"
            f"{row['mean_abs_diff_levels']:>11.3f}"
        )
    s = r["seeding"]
    print(f"{'draw_clip_params (per s)':<48}{s['draw_clip_params_per_s']:>10.0f}")
    print(f"{'fork_rng + torch.manual_seed (per s)':<48}{s['fork_rng_plus_manual_seed_per_s']:>10.0f}")
    print(f"wall {r['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
