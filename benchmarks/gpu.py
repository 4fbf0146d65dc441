"""GPU benchmark: the bare TubeViT-B step, ``train()`` fed from real shards, and timm's ViT-B, side by side.

    # here (needs ffmpeg, webdataset, decord): synthetic mp4 shards at paper geometry (short side 256)
    .venv/bin/python benchmarks/gpu.py --prepare-shards .whl/gpu-shards
    # on the GPU machine (<= 5 minutes on one H100/H200): every row below
    python benchmarks/gpu.py --shards .whl/gpu-shards [--out benchmarks/results/gpu.json]
    # anywhere, in seconds on the CPU: a tiny model through the same code paths (what the test runs)
    .venv/bin/python benchmarks/gpu.py --smoke --out /tmp/gpu-smoke.json

Rows (bf16 autocast, fused AdamW, ``paper`` tubes, 400 classes; MFU = clips/s x training FLOPs per clip /
989 TFLOP/s, the H100/H200 dense bf16 peak):

- (a) ``bare``: TubeViT-B forward + backward + AdamW step on one normalised bf16 batch held on the device,
  32x224^2 batch 64, eager and ``torch.compile``; and 64x224^2 batch 32, eager (the Kinetics setting).
- (b) ``train``: :func:`tubevit.train.loop.train` (the project's loop: prefetcher, uint8 -> device
  normalisation, clip, lagged logging) fed by :func:`tubevit.data.shards.train_loader` (the real loader:
  webdataset, decord, workers, pinned uint8 batches) from the synthetic shards, 32x224^2 b64 and 64x224^2
  b32, with ``augment_on: device`` (crop + RandAugment batched on the GPU) and ``cpu`` (in the workers).
  ``vs_bare_eager`` is clips/s over the eager bare row of the same geometry (target >= 0.9).
- (c) ``timm``: timm's ``VisionTransformer`` ViT-B/16 at the same 539 tokens (an 11x49 patch grid, no class
  token, average pooling), eager and compiled.

FLOPs are counted once per model and input shape with ``FlopCounterMode`` over one forward + backward pass
of one clip under the MATH attention backend, on the row's device: the same count for every row (flash
attention's FLOPs equal the math path's; the CPU's fused attention would count 0).

The GPU machine has no ffmpeg, webdataset or decord, so prepare what it needs here, in the git-ignored
``.whl/`` folder, and carry that folder (the ``run`` tool carries up to 64 MiB of ignored paths; the default
16 videos of 90 frames make ~21 MB of shards)::

    .venv/bin/python benchmarks/gpu.py --prepare-shards .whl/gpu-shards
    .venv/bin/pip download --no-deps -d .whl webdataset braceexpand decord2
    # on the GPU machine, with carry [".whl"]:
    pip install --no-index --no-deps .whl/*.whl && python benchmarks/gpu.py --shards .whl/gpu-shards

Rows whose inputs are missing (no shards, webdataset/decord/timm not importable) are recorded as "not
measured" with the reason, and a row that raises as "failed: <error>" (the other rows still run). Without CUDA (and without ``--smoke``) every row is recorded as "not measured" and
the script exits 0. When ``$OUT`` is set, a copy of the JSON is written there as well.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from tubevit.config.train import OptimConfig  # noqa: E402
from tubevit.model.tubes import token_counts  # noqa: E402
from tubevit.model.tubevit import create_model  # noqa: E402
from tubevit.train.optim import build_optimizer  # noqa: E402
from tubevit.train.precision import autocast, input_dtype  # noqa: E402

PEAK_FLOPS = 989e12  # H100/H200 SXM dense bf16 tensor-core peak
NUM_CLASSES = 400
SHORT_SIDE = 256  # paper geometry: videos re-encoded to short side 256, crops of 224
FPS = 15  # Kinetics
DEFAULT_OUT = ROOT / "benchmarks" / "results" / "gpu.json"


@dataclass(frozen=True)
class Setup:
    """One benchmark scale: the real one on the GPU, or the tiny CPU smoke run."""

    variant: str
    tubes: str
    size: int  # crop side
    short_side: int  # of the generated videos
    video_frames: int  # frames per generated video
    geometries: tuple[tuple[int, int], ...]  # (frames, batch): the first is the 32-frame setting
    warmup: int
    steps: int
    train_steps: int
    precision: str
    backend: str  # torch.compile backend ("inductor"; "eager" in the smoke run: the same Dynamo tracing)
    timm_dims: tuple[int, int, int]  # embed_dim, depth, num_heads of the timm ViT


GPU = Setup(
    "base", "paper", 224, SHORT_SIDE, 90, ((32, 64), (64, 32)), 3, 10, 12, "bf16", "inductor", (768, 12, 12)
)
SMOKE = Setup("nano", "embedded", 32, 40, 24, ((16, 4), (8, 4)), 1, 2, 4, "fp32", "eager", (64, 2, 4))


# ------------------------------------------------------------------------------------------- shards
def prepare_shards(directory: Path, *, videos: int, frames: int, short_side: int, shards: int) -> Path:
    """Write ``videos`` synthetic h264 mp4s (``frames`` frames at 15 fps, short side ``short_side``,
    keyframes every second as the reencode stage writes them) into ``shards`` webdataset tars
    ``kinetics-train-%06d.tar`` under ``directory``, with the shard stage's json (id, label, fps, frames).
    Needs ffmpeg and webdataset. Returns ``directory``."""
    import webdataset as wds

    directory.mkdir(parents=True, exist_ok=True)
    width = (short_side * 4 // 3) // 2 * 2
    with tempfile.TemporaryDirectory() as tmp:
        clips = []
        for i in range(videos):
            path = Path(tmp) / f"{i:06d}.mp4"
            source = (
                f"testsrc2=size={width}x{short_side}:rate={FPS},hue=h={37 * i % 360},noise=alls=12:allf=t"
            )
            cmd = [
                "ffmpeg", "-nostdin", "-loglevel", "error", "-f", "lavfi", "-i", source, "-frames:v",
                str(frames), "-c:v", "libx264", "-preset", "veryfast", "-crf", "23", "-g", str(FPS),
                "-pix_fmt", "yuv420p", "-movflags", "+faststart", "-threads", "1", str(path),
            ]  # fmt: skip
            subprocess.run(cmd, check=True)
            clips.append(path.read_bytes())
        for s in range(shards):
            name = directory / f"kinetics-train-{s:06d}.tar"
            tmp_name = name.with_name(f".{name.name}.tmp")
            with wds.TarWriter(str(tmp_name)) as sink:
                for i in range(s, videos, shards):
                    meta = {"id": f"clip{i}", "label": i % NUM_CLASSES, "fps": FPS, "frames": frames}
                    sink.write({"__key__": f"{i:06d}", "mp4": clips[i], "json": json.dumps(meta).encode()})
            os.replace(tmp_name, name)
    return directory


def shard_list(directory: Path) -> list[str]:
    return sorted(str(p) for p in Path(directory).glob("kinetics-train-*.tar"))


# ------------------------------------------------------------------------------------------- FLOPs
def training_flops(model: nn.Module, x: torch.Tensor, dataset: str) -> int:
    """FLOPs of one forward + backward pass on ``x`` (one clip), counted with ``FlopCounterMode`` under the
    MATH attention backend on ``x``'s device."""
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:
        model(x, dataset).float().sum().backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


# ------------------------------------------------------------------------------------------- models
class TimmViT(nn.Module):
    """timm's ``VisionTransformer`` with ``N`` tokens (an ``h x w`` patch grid of 16 px, no class token,
    average pooling), called like TubeViT: ``model(x (B, 3, 16h, 16w), dataset) -> (B, K)``."""

    def __init__(self, tokens: int, embed_dim: int, depth: int, num_heads: int):
        super().__init__()
        from timm.models.vision_transformer import VisionTransformer

        h = max(d for d in range(1, math.isqrt(tokens) + 1) if tokens % d == 0)
        self.grid = (h, tokens // h)
        self.vit = VisionTransformer(
            img_size=(16 * h, 16 * (tokens // h)),
            patch_size=16,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            num_classes=NUM_CLASSES,
            class_token=False,
            global_pool="avg",
        )

    def input_shape(self, batch: int) -> tuple[int, ...]:
        return (batch, 3, 16 * self.grid[0], 16 * self.grid[1])

    def forward(self, x: torch.Tensor, dataset: str) -> torch.Tensor:
        return self.vit(x)


def tubevit(setup: Setup, device: torch.device) -> nn.Module:
    torch.manual_seed(0)
    return create_model(setup.variant, setup.tubes, {"kinetics": NUM_CLASSES}).to(device)


# ------------------------------------------------------------------------------------------- rows
def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bare_rate(
    model: nn.Module, shape: tuple[int, ...], setup: Setup, device: torch.device, compiled: bool
) -> float:
    """clips/s of forward + backward + fused AdamW on one normalised batch held on the device."""
    prec = setup.precision
    x = torch.randn(shape, device=device).to(input_dtype(prec))
    target = torch.randint(0, NUM_CLASSES, (shape[0],), device=device)
    optimizer = build_optimizer(model, OptimConfig(lr=1e-5, warmup_steps=0))
    net = torch.compile(model, dynamic=False, backend=setup.backend) if compiled else model

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with autocast(device, prec):
            logits = net(x, "kinetics")
        F.cross_entropy(logits.float(), target).backward()
        optimizer.step()

    for _ in range(setup.warmup + (1 if compiled else 0)):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(setup.steps):
        step()
    sync(device)
    return shape[0] * setup.steps / (time.perf_counter() - t0)


def train_rate(
    model: nn.Module,
    urls: list[str],
    frames: int,
    batch: int,
    augment_on: str,
    setup: Setup,
    device: torch.device,
) -> dict:
    """clips/s of ``train()`` fed by the real loader; the steady rate between the first reported step after
    warm-up and the last."""
    from tubevit.config.data import LoaderConfig
    from tubevit.data.shards import train_loader
    from tubevit.train.loop import Callback, train
    from tubevit.train.losses import build_objective

    workers = max(1, min(len(urls), (os.cpu_count() or 2) - 2))
    lcfg = LoaderConfig(
        frames=frames,
        size=setup.size,
        batch_size=batch,
        workers=workers,
        shuffle_buffer=16,
        augment_on=augment_on,
    )
    steps = setup.warmup + setup.train_steps
    stamps: dict[int, float] = {}

    class Stamp(Callback):
        def on_step(self, step, metrics):
            stamps[step] = time.perf_counter()

    def batches(start: int):
        loader = train_loader(
            urls, lcfg, dataset="kinetics", num_classes=NUM_CLASSES, seed=0, epoch_batches=steps + 2
        )
        return iter(loader)

    t0 = time.perf_counter()
    train(
        model,
        batches,
        {"kinetics": build_objective(NUM_CLASSES)},
        OptimConfig(lr=1e-5, warmup_steps=0, clip_grad=1.0),
        steps,
        device=device,
        precision=setup.precision,
        callbacks=[Stamp()],
    )
    sync(device)
    first, last = setup.warmup, steps
    rate = batch * (last - first) / (stamps[last] - stamps[first])
    return {"clips_per_s": rate, "workers": workers, "wall_s": round(time.perf_counter() - t0, 1)}


# ------------------------------------------------------------------------------------------- main
def not_measured(rows: list[dict], reason: str) -> list[dict]:
    return [{**r, "status": f"not measured: {reason}"} for r in rows]


def planned_rows(setup: Setup) -> list[dict]:
    (f32, b32), (f64, b64) = setup.geometries
    rows = [
        {"row": "a", "name": "bare", "model": f"tubevit-{setup.variant}", "frames": f32, "batch": b32, "mode": "eager"},
        {"row": "a", "name": "bare", "model": f"tubevit-{setup.variant}", "frames": f32, "batch": b32, "mode": "compiled"},
        {"row": "a", "name": "bare", "model": f"tubevit-{setup.variant}", "frames": f64, "batch": b64, "mode": "eager"},
    ]  # fmt: skip
    for frames, batch in setup.geometries:
        for aug in ("device", "cpu"):
            rows.append(
                {"row": "b", "name": "train", "model": f"tubevit-{setup.variant}", "frames": frames,
                 "batch": batch, "mode": "eager", "augment_on": aug}
            )  # fmt: skip
    for mode in ("eager", "compiled"):
        rows.append(
            {"row": "c", "name": "timm", "model": "timm-vit", "frames": f32, "batch": b32, "mode": mode}
        )
    return rows


def run_rows(setup: Setup, device: torch.device, shards: Path | None, budget_s: float) -> list[dict]:
    started = time.perf_counter()
    rows = planned_rows(setup)
    size = setup.size
    flops_cache: dict[tuple, int] = {}
    out = []
    for row in rows:
        left = budget_s - (time.perf_counter() - started)
        if left < 10:
            out.append({**row, "status": f"not measured: time budget of {budget_s:.0f} s spent"})
            continue
        frames, batch = row["frames"], row["batch"]
        try:
            if row["name"] == "timm":
                tokens = sum(token_counts(tubevit(setup, torch.device("meta")).tubes, frames, size, size))
                torch.manual_seed(0)
                model = TimmViT(tokens, *setup.timm_dims).to(device)
                shape = model.input_shape(batch)
                row["tokens"] = tokens
            else:
                model = tubevit(setup, device)
                shape = (batch, 3, frames, size, size)
                row["tokens"] = sum(token_counts(model.tubes, frames, size, size))
            key = (row["model"], shape[1:])
            if key not in flops_cache:
                flops_cache[key] = training_flops(
                    model, torch.randn(1, *shape[1:], device=device), "kinetics"
                )
            t0 = time.perf_counter()
            if row["name"] == "train":
                if shards is None or not shard_list(shards):
                    raise FileNotFoundError("no shards: pass --shards (made by --prepare-shards here)")
                measured = train_rate(
                    model, shard_list(shards), frames, batch, row["augment_on"], setup, device
                )
                rate = measured.pop("clips_per_s")
                row.update(measured)
            else:
                rate = bare_rate(model, shape, setup, device, row["mode"] == "compiled")
            flops = flops_cache[key]
            row.update(
                status="measured",
                clips_per_s=round(rate, 2),
                train_gflops_per_clip=float(f"{flops / 1e9:.4g}"),
                mfu=float(f"{rate * flops / PEAK_FLOPS:.4g}"),
                seconds=round(time.perf_counter() - t0, 1),
            )
        except ImportError as exc:
            row["status"] = f"not measured: {exc.name or exc} is not installed (carry it: see the docstring)"
        except FileNotFoundError as exc:
            row["status"] = f"not measured: {exc}"
        except (
            Exception
        ) as exc:  # one broken row (a compiler missing, out of memory) must not lose the others
            row["status"] = f"failed: {type(exc).__name__}: {str(exc)[:300]}"
        finally:
            model = None
            if device.type == "cuda":
                torch.cuda.empty_cache()
        out.append(row)
    bare = {(r["frames"], r["mode"]): r for r in out if r["name"] == "bare" and r["status"] == "measured"}
    for r in out:
        ref = bare.get((r["frames"], "eager"))
        if r["status"] == "measured" and r["name"] != "bare" and ref is not None:
            r["vs_bare_eager"] = round(r["clips_per_s"] / ref["clips_per_s"], 3)
    return out


def print_table(rows: list[dict]) -> None:
    header = f"{'row':3} {'name':6} {'model':14} {'T':>3} {'B':>3} {'mode':9} {'aug':6} {'clips/s':>8} {'MFU':>6} {'vs bare':>7}"
    print(header)
    print("-" * len(header))
    for r in rows:
        if r["status"] != "measured":
            print(f"{r['row']:3} {r['name']:6} {r['model']:14} {r['frames']:>3} {r['batch']:>3} {r['mode']:9} "
                  f"{r.get('augment_on', '-'):6} {r['status']}")  # fmt: skip
            continue
        print(f"{r['row']:3} {r['name']:6} {r['model']:14} {r['frames']:>3} {r['batch']:>3} {r['mode']:9} "
              f"{r.get('augment_on', '-'):6} {r['clips_per_s']:>8} {r['mfu']:>6.1%} {r.get('vs_bare_eager', '-')!s:>7}")  # fmt: skip


def write_json(path: Path, result: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(result, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument(
        "--shards", type=Path, help="a folder of kinetics-train-*.tar made by --prepare-shards"
    )
    parser.add_argument("--prepare-shards", type=Path, metavar="DIR", help="only write the synthetic shards")
    parser.add_argument("--videos", type=int, default=16, help="videos to generate with --prepare-shards")
    parser.add_argument(
        "--smoke", action="store_true", help="tiny model on the CPU, same code paths, seconds"
    )
    parser.add_argument("--budget-s", type=float, default=285.0, help="stop measuring rows after this long")
    args = parser.parse_args(argv)

    setup = SMOKE if args.smoke else GPU
    if args.prepare_shards is not None:
        n = prepare_shards(
            args.prepare_shards,
            videos=args.videos,
            frames=setup.video_frames,
            short_side=setup.short_side,
            shards=min(16, args.videos),
        )
        print(f"wrote {len(shard_list(n))} shards to {n}")
        return {}

    started = time.time()
    shards = args.shards
    made: Path | None = None
    if args.smoke:
        device = torch.device("cpu")
        torch.set_num_threads(1)
        if shards is None:  # generate tiny shards in a temporary folder (ffmpeg + webdataset are here)
            made = Path(tempfile.mkdtemp(prefix="gpu-smoke-"))
            shards = prepare_shards(
                made, videos=4, frames=setup.video_frames, short_side=setup.short_side, shards=2
            )
    elif torch.cuda.is_available():
        device = torch.device("cuda", 0)
    else:
        device = None
    try:
        if device is None:
            rows = not_measured(planned_rows(setup), "no CUDA device (torch.cuda.is_available() is False)")
        else:
            rows = run_rows(setup, device, shards, args.budget_s if not args.smoke else 600.0)
    finally:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
    print_table(rows)
    result = {
        "rows": rows,
        "setup": {
            "variant": setup.variant,
            "tubes": setup.tubes,
            "size": setup.size,
            "short_side": setup.short_side,
            "precision": setup.precision,
            "compile_backend": setup.backend,
            "warmup_steps": setup.warmup,
            "measured_steps": setup.steps,
            "train_steps": setup.train_steps,
            "smoke": args.smoke,
            "peak_flops": PEAK_FLOPS,
            "flops": "FlopCounterMode, forward + backward of one clip, MATH attention",
        },
        "machine": {
            "device": torch.cuda.get_device_name(0)
            if device is not None and device.type == "cuda"
            else "cpu",
            "cpu_count": os.cpu_count(),
            "load_average_1m": round(os.getloadavg()[0], 2),
            "torch": torch.__version__,
            "python": platform.python_version(),
        },
        "seconds": round(time.time() - started, 1),
    }
    write_json(args.out, result)
    print(f"wrote {args.out}")
    if os.environ.get("OUT"):
        write_json(Path(os.environ["OUT"]) / args.out.name, result)
    return result


if __name__ == "__main__":
    main()
