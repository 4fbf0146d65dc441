"""Per-sample augmentation parameters, and their application on the CPU (one clip) or on a device (a batch).

One home for the training augmentation of the paper: a clip-consistent ``RandomResizedCrop(size, scale,
ratio)`` followed by ``RandAugment(num_ops, magnitude, num_magnitude_bins=11)`` (magnitude on the paper's
0-10 scale), with the parameters of each clip drawn once and applied identically to all of its T frames.

- :func:`draw_clip_params` (or :class:`ClipAugment` holding its settings) draws a clip's :class:`ClipParams` from a ``torch.Generator`` made from the
  sample's seed (never the global RNG): the crop box as ``v2.RandomResizedCrop`` draws it (10 tries, then the
  centre fallback) and RandAugment's ops and signed magnitudes from torchvision v2's op table. The sequence of
  draws is torchvision's, so a seed gives the same crop and ops as ``v2.Compose`` under ``torch.manual_seed``.
- CPU path, one clip: :func:`augment_clip` applies the params with torchvision v2 functionals on a
  ``tv_tensors.Video`` ``(T, C, H, W)``: uint8 in, uint8 out.
- Device path, a batch: :func:`pack_params` packs the params of B clips into a float32 ``(B, P)`` tensor and
  :func:`augment_batch` applies them to a uint8 batch ``(B, C, T, H, W)`` on its device in a few batched ops.
  On CUDA the crop and resize of every clip is two batched matmuls with the antialiased bilinear weights torch
  uses (exact weights, so the two paths differ only by rounding); on CPU tensors it is torch's uint8 resize per
  clip (measured faster there, and bitwise the CPU path's). RandAugment groups the samples by op and runs each
  op once on its group, with per-sample magnitudes (one ``grid_sample`` for an affine op, broadcast factors for a
  colour op). It works in float32 holding the uint8 levels and truncates to whole levels after each op as
  torchvision's uint8 kernels do; it returns float32 in [0, 255] with integer values.
- :func:`normalize` and :func:`to_model_input`: ImageNet normalisation on the device, in one fused op.

Both paths choose the same crop, ops and magnitudes for a given seed; their pixels differ by interpolation
rounding only (tests pin the tolerance).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as nnf
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F
from torchvision.transforms.v2.functional._geometry import _get_inverse_affine_matrix

__all__ = [
    "AUGMENT_ON",
    "CPU_AUTO_CHOICE",
    "CPU_AUTO_CHOICE_NO_WORKERS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "NUM_MAGNITUDE_BINS",
    "RANDAUGMENT_OPS",
    "ClipAugment",
    "ClipParams",
    "augment_batch",
    "augment_clip",
    "augment_video",
    "draw_clip_params",
    "normalize",
    "pack_params",
    "resolve_augment_on",
    "to_model_input",
    "to_video",
    "unpack_params",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

NUM_MAGNITUDE_BINS = 11
"""RandAugment's bins: magnitude ``m`` in 0..10 takes bin ``m`` (the paper's 0-10 scale, as in TF and timm)."""

_SPACE = v2.RandAugment._AUGMENTATION_SPACE
RANDAUGMENT_OPS: tuple[str, ...] = tuple(_SPACE)
"""torchvision v2 RandAugment's op table, in its order (an op's id in :func:`pack_params` is its index)."""

_RANDAUGMENT = v2.RandAugment(num_ops=1, num_magnitude_bins=NUM_MAGNITUDE_BINS)  # applies one named op
_AFFINE_OPS = frozenset({"ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"})

AUGMENT_ON = ("auto", "cpu", "device")
CPU_AUTO_CHOICE = "cpu"
"""What ``augment_on: auto`` means when training on the CPU with loader workers (``workers > 0``).

``benchmarks/augment.py`` (``benchmarks/results/augment.json``) measures the two paths at about the same cost
per clip on one CPU core: device path / CPU path 0.83-1.09 across its rows (0.73-1.13 over runs, under shared
load). The CPU path runs in the loader's worker processes, concurrently with the training step; the device
path runs in the training process, serially with it. At equal cost the CPU path wins.
"""

CPU_AUTO_CHOICE_NO_WORKERS = "device"
"""What ``augment_on: auto`` means when training on the CPU with ``workers: 0``.

Without workers both paths run in the training process, serially with the step, so only their cost
counts: the device path crops a whole batch in one call and skips the per-sample tensor work of the CPU
path (the per-sample resize, the stack of cropped clips). On the embedded default (16x32^2 crops from
64^2 sources, batch 32, 1 thread) the pretrain stage ran 0.057 s/step with ``device`` against 0.072 with
``cpu`` (300 steps each, shared 2-core machine under load; ``benchmarks/stage_speed.py``), with the
same final loss: on the CPU the batched crop runs the same per-sample kernel.
"""


@dataclass(frozen=True)
class ClipParams:
    """The augmentation of one clip, for an output of ``size`` x ``size`` pixels.

    Attributes:
        size: output side in pixels (translations are resolved for it).
        top, left, height, width: the crop box in source pixels.
        ops: RandAugment's ops in order, each ``(op_name, magnitude)`` with the signed magnitude torchvision
            passes to the op (degrees for Rotate, pixels for Translate*, a factor offset for colour ops, bits
            for Posterize, a fraction of 255 for Solarize, 0.0 for ops without one).
    """

    size: int
    top: int
    left: int
    height: int
    width: int
    ops: tuple[tuple[str, float], ...] = ()


@functools.lru_cache(maxsize=64)
def _log_ratio(ratio: tuple[float, float]) -> tuple[float, float]:
    """``torch.log(torch.tensor(ratio))`` as Python floats (float32 values), as RandomResizedCrop has them."""
    lo, hi = torch.log(torch.tensor(ratio)).tolist()
    return lo, hi


@functools.lru_cache(maxsize=1024)
def _magnitude(name: str, size: int, magnitude: int) -> float | None:
    """RandAugment's unsigned magnitude of op ``name`` in bin ``magnitude`` for ``size`` x ``size`` images
    (None for an op without one)."""
    magnitudes = _SPACE[name][0](NUM_MAGNITUDE_BINS, size, size)
    return None if magnitudes is None else float(magnitudes[magnitude])


def _crop_box(
    g: torch.Generator, height: int, width: int, scale: Sequence[float], ratio: Sequence[float]
) -> tuple[int, int, int, int]:
    """``v2.RandomResizedCrop.make_params`` with ``g``: (top, left, h, w); 10 tries, then the centre crop.

    The same draws from ``g`` as torchvision's (``torch.empty(1).uniform_``, ``torch.randint``), made into
    two reused one-element tensors (``randint(a, b, (1,))`` is ``empty(1, int64).random_(a, b)``).
    """
    area = height * width
    log_lo, log_hi = _log_ratio((float(ratio[0]), float(ratio[1])))
    u = torch.empty(1)
    k = torch.empty(1, dtype=torch.int64)
    for _ in range(10):
        target_area = area * u.uniform_(scale[0], scale[1], generator=g).item()
        aspect = torch.exp(u.uniform_(log_lo, log_hi, generator=g)).item()
        w = round(math.sqrt(target_area * aspect))
        h = round(math.sqrt(target_area / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(k.random_(0, height - h + 1, generator=g).item())
            left = int(k.random_(0, width - w + 1, generator=g).item())
            return top, left, h, w
    in_ratio = float(width) / float(height)
    if in_ratio < min(ratio):
        w, h = width, round(width / min(ratio))
    elif in_ratio > max(ratio):
        h, w = height, round(height * max(ratio))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def draw_clip_params(
    seed: int,
    height: int,
    width: int,
    *,
    size: int,
    scale: Sequence[float] = (0.25, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    randaugment: bool = True,
    num_ops: int = 2,
    magnitude: int = 10,
) -> ClipParams:
    """The crop and RandAugment ops of one clip whose frames are ``height`` x ``width`` pixels.

    Draws from ``torch.Generator().manual_seed(seed)``, in torchvision's order (crop, then per op: the op,
    then its sign), so the result is what ``v2.Compose([RandomResizedCrop, RandAugment])`` draws from the
    global RNG seeded with ``seed``. The global RNG is neither read nor reseeded.

    Args:
        seed: the sample's seed (``sample_seed(seed, epoch, __key__)``), 0 <= seed < 2**64.
        height, width: source frame size in pixels.
        size: output side in pixels.
        scale, ratio: ``RandomResizedCrop``'s area fraction and aspect-ratio ranges.
        randaugment: draw RandAugment's ops (else ``ops == ()``).
        num_ops: ops per clip.
        magnitude: 0..10, the bin of the 11 magnitude bins.
    """
    if height <= 0 or width <= 0:
        raise ValueError(f"draw_clip_params: frame size must be positive, got {height}x{width}")
    if size <= 0:
        raise ValueError(f"draw_clip_params: size must be positive, got {size}")
    if not 0 < scale[0] <= scale[1]:
        raise ValueError(f"draw_clip_params: scale must satisfy 0 < lo <= hi, got {tuple(scale)}")
    if not 0 < ratio[0] <= ratio[1]:
        raise ValueError(f"draw_clip_params: ratio must satisfy 0 < lo <= hi, got {tuple(ratio)}")
    if not 0 <= magnitude < NUM_MAGNITUDE_BINS:
        raise ValueError(f"RandAugment magnitude must be in [0, 10], got {magnitude}")
    if num_ops < 0:
        raise ValueError(f"RandAugment num_ops must be >= 0, got {num_ops}")
    g = torch.Generator().manual_seed(int(seed))
    top, left, h, w = _crop_box(g, height, width, scale, ratio)
    ops: list[tuple[str, float]] = []
    if randaugment and num_ops:
        # torch.randint(n, ()) and torch.rand(()) as draws into reused zero-dim tensors (the same values)
        k, u = torch.empty((), dtype=torch.int64), torch.empty(())
        for _ in range(num_ops):
            name = RANDAUGMENT_OPS[int(k.random_(0, len(RANDAUGMENT_OPS), generator=g).item())]
            value = _magnitude(name, size, magnitude)  # RandAugment runs after the crop: size x size
            if value is None:
                value = 0.0
            elif _SPACE[name][1] and u.uniform_(0.0, 1.0, generator=g).item() <= 0.5:  # signed
                value *= -1
            ops.append((name, value))
    return ClipParams(size, top, left, h, w, tuple(ops))


@dataclass(frozen=True)
class ClipAugment:
    """The training augmentation's settings (a loader's crop and RandAugment keys), drawing per clip.

    ``draw(seed, height, width)`` is :func:`draw_clip_params` with these settings; the settings are checked
    here, once, with the field's name in the message.
    """

    size: int
    scale: tuple[float, float] = (0.25, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    randaugment: bool = True
    num_ops: int = 2
    magnitude: int = 10

    def __post_init__(self) -> None:
        object.__setattr__(self, "scale", tuple(self.scale))
        object.__setattr__(self, "ratio", tuple(self.ratio))
        self.draw(0, 1, 1)  # validates every field

    def draw(self, seed: int, height: int, width: int) -> ClipParams:
        """The params of one clip with ``height`` x ``width`` frames, from the sample's ``seed``."""
        return draw_clip_params(
            seed,
            height,
            width,
            size=self.size,
            scale=self.scale,
            ratio=self.ratio,
            randaugment=self.randaugment,
            num_ops=self.num_ops,
            magnitude=self.magnitude,
        )


# ---------------------------------------------------------------------------------------------------------
# CPU path: one clip, torchvision v2 functionals


def to_video(frames: np.ndarray | torch.Tensor) -> tv_tensors.Video:
    """uint8 ``(T, H, W, C)`` -> ``tv_tensors.Video`` uint8 ``(T, C, H, W)`` (a view)."""
    x = torch.as_tensor(frames)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected frames of shape (T, H, W, 3), got {tuple(x.shape)}")
    if x.dtype != torch.uint8:
        raise ValueError(f"expected uint8 frames, got {x.dtype}")
    return tv_tensors.Video(x.permute(0, 3, 1, 2))  # THWC -> TCHW


def augment_video(frames: np.ndarray | torch.Tensor, params: ClipParams) -> torch.Tensor:
    """uint8 ``(T, H, W, 3)`` -> augmented uint8 ``(T, 3, size, size)`` (frame-major, as torchvision works)."""
    video = to_video(frames)
    _, _, h, w = video.shape
    if params.top + params.height > h or params.left + params.width > w:
        raise ValueError(
            f"crop box {params.top, params.left, params.height, params.width} (top, left, h, w) "
            f"exceeds the {h}x{w} frames"
        )
    out = F.resized_crop(
        video,
        params.top,
        params.left,
        params.height,
        params.width,
        [params.size, params.size],
        antialias=True,
    )
    for name, value in params.ops:
        out = _RANDAUGMENT._apply_image_or_video_transform(
            out, name, value, interpolation=_RANDAUGMENT.interpolation, fill=_RANDAUGMENT._fill
        )
    return out.as_subclass(torch.Tensor)


def augment_clip(
    frames: np.ndarray | torch.Tensor, params: ClipParams, size: int | None = None
) -> torch.Tensor:
    """Augment one clip on the CPU: uint8 ``(T, H, W, 3)`` -> uint8 ``(3, T, size, size)`` (contiguous).

    The crop is ``F.resized_crop`` (bilinear, antialiased) and each op is RandAugment's own, applied to the
    clip as one ``tv_tensors.Video`` so every frame gets the same crop and ops. ``size`` defaults to
    ``params.size`` and must equal it.
    """
    if size is not None and size != params.size:
        raise ValueError(f"augment_clip: size {size} differs from the params' size {params.size}")
    return augment_video(frames, params).permute(1, 0, 2, 3).contiguous()  # TCHW -> CTHW


# ---------------------------------------------------------------------------------------------------------
# Packed params: float32 (B, P), P = 5 + 2 * num_ops: size, top, left, height, width, (op id, magnitude)...

_HEAD = 5


def pack_params(params: Sequence[ClipParams]) -> torch.Tensor:
    """The params of B clips as float32 ``(B, P)``: ``[size, top, left, height, width, (op_id, magnitude)*]``.

    Op ids index :data:`RANDAUGMENT_OPS`. Every clip must have the same size and number of ops. All values
    are exact in float32 (integers below 2**24, and torchvision's float32 magnitudes).
    """
    if not params:
        raise ValueError("pack_params: no params")
    sizes = {p.size for p in params}
    counts = {len(p.ops) for p in params}
    if len(sizes) != 1 or len(counts) != 1:
        raise ValueError(f"pack_params: clips differ in size {sorted(sizes)} or op count {sorted(counts)}")
    rows = []
    for p in params:
        row = [p.size, p.top, p.left, p.height, p.width]
        for name, value in p.ops:
            row += [RANDAUGMENT_OPS.index(name), value]
        rows.append(row)
    return torch.tensor(rows, dtype=torch.float32)


def unpack_params(packed: torch.Tensor) -> list[ClipParams]:
    """The inverse of :func:`pack_params` (float32 ``(B, P)`` on any device; a device tensor is read once)."""
    if packed.ndim != 2 or packed.shape[1] < _HEAD or (packed.shape[1] - _HEAD) % 2:
        raise ValueError(f"packed params must be (B, 5 + 2 * num_ops), got {tuple(packed.shape)}")
    out = []
    for row in packed.detach().to("cpu", torch.float32).tolist():
        size, top, left, height, width = (int(v) for v in row[:_HEAD])
        ops = tuple((RANDAUGMENT_OPS[int(row[i])], float(row[i + 1])) for i in range(_HEAD, len(row), 2))
        out.append(ClipParams(size, top, left, height, width, ops))
    return out


# ---------------------------------------------------------------------------------------------------------
# Device path: a batch


def _to_device(x: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A small host tensor on ``device`` without a host synchronisation (pinned, non-blocking on CUDA)."""
    if device.type == "cuda":
        return x.pin_memory().to(device, non_blocking=True)
    return x.to(device)


def _aa_weights(start: torch.Tensor, length: torch.Tensor, in_size: int, out_size: int) -> torch.Tensor:
    """Antialiased bilinear resampling weights of a crop along one axis, as torch's ``interpolate`` builds them.

    Args:
        start, length: ``(B,)`` float32: each clip's crop ``[start, start + length)`` in source pixels.
        in_size: the (padded) source length; out_size: the output length.

    Returns:
        ``(B, out_size, in_size)`` float32: row i holds the weights of output pixel i over the source pixels
        (zero outside the crop), i.e. ``interpolate(crop, out_size, mode="bilinear", antialias=True)`` as a
        matrix: scale ``s = length / out_size``, support ``max(s, 1)``, tent filter ``1 - |d| / max(s, 1)``
        around centre ``s * (i + 0.5)``, normalised per row.
    """
    device = start.device
    scale = (length / out_size)[:, None, None]  # (B, 1, 1)
    support = scale.clamp(min=1.0)
    centre = scale * (torch.arange(out_size, device=device, dtype=torch.float32)[None, :, None] + 0.5)
    source = torch.arange(in_size, device=device, dtype=torch.float32)[None, None, :]  # (1, 1, in_size)
    k = source - start[:, None, None]  # source pixel index within each crop
    w = (1.0 - ((k - centre + 0.5) / support).abs()).clamp(min=0.0)
    w = w * ((k >= 0) & (k < length[:, None, None]))
    return w / w.sum(-1, keepdim=True)


def _crop_resize_per_sample(video: torch.Tensor, params: Sequence[ClipParams], size: int) -> torch.Tensor:
    """Crop and resize each clip with ``F.resize(antialias=True)`` on its uint8 crop, one clip at a time.

    On CPU tensors this is torch's uint8 kernel, so it is bitwise the CPU path's crop (and the fastest crop
    measured there). Returns float32 ``(B, C, T, size, size)``.
    """
    out = torch.empty(*video.shape[:3], size, size, dtype=torch.float32, device=video.device)
    native = video.dtype == torch.uint8 and not video.is_cuda  # torch's own uint8 antialiased kernel
    for i, p in enumerate(params):
        crop = video[i, :, :, p.top : p.top + p.height, p.left : p.left + p.width]  # (C, T, h, w) view
        # torch's uint8 kernel is 4x faster on interleaved RGB: copy the crop to (T, C, h, w) channels-last
        crop = crop.transpose(0, 1).contiguous(memory_format=torch.channels_last)
        if native and (p.height, p.width) != (size, size):
            # exactly the call F.resize makes for a uint8 CPU tensor (bitwise the same), without its
            # per-call Python dispatch (about 35 us per clip, 1 ms per batch of 32)
            resized = nnf.interpolate(
                crop, size=[size, size], mode="bilinear", align_corners=False, antialias=True
            )
        else:
            resized = F.resize(crop, [size, size], antialias=True)
        out[i] = resized.transpose(0, 1)  # TCHW -> CTHW
    return out


def _crop_resize(
    video: torch.Tensor, boxes: torch.Tensor, size: int, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """Crop and resize every clip of a batch in two batched matmuls (the CUDA path's crop).

    Args:
        video: uint8 ``(B, C, T, H, W)`` (zero padding beyond a clip's own frames is never read).
        boxes: float32 ``(B, 4)`` ``top, left, height, width`` on ``video``'s device.
        size: output side.
        dtype: matmul dtype; default float16 on CUDA (it holds 0..255 exactly and runs on tensor cores; the
            result stays within 1 level of float32), float32 elsewhere (the CPU has no fast fp16 matmul).

    Returns:
        float32 ``(B, C, T, size, size)`` rounded to whole levels in [0, 255].
    """
    b, c, t, h, w = video.shape
    wy = _aa_weights(boxes[:, 0], boxes[:, 2], h, size)  # (B, S, H)
    wx = _aa_weights(boxes[:, 1], boxes[:, 3], w, size)  # (B, S, W)
    cdtype = dtype or (torch.float16 if video.is_cuda else torch.float32)
    # plain bmm throughout: a broadcast matmul would materialise the weights once per plane
    x = video.reshape(b, c * t * h, w).to(cdtype)  # BCTHW -> B(CTH)W
    y = torch.bmm(x, wx.to(cdtype).transpose(1, 2))  # (B, CTH, S): along W
    y = y.view(b, c * t, h, size).transpose(1, 2).reshape(b, h, c * t * size)  # -> (B, H, CT S)
    y = torch.bmm(wy.to(cdtype), y)  # (B, S, CT S): along H
    y = y.view(b, size, c * t, size).transpose(1, 2)  # -> (B, CT, S, S)
    return y.float().round_().clamp_(0, 255).reshape(b, c, t, size, size)


def _column(values: Sequence[float], device: torch.device) -> torch.Tensor:
    """``(G,)`` floats -> float32 ``(G, 1, 1, 1, 1)`` on ``device`` (broadcasts over C, T, H, W)."""
    return _to_device(torch.tensor(values, dtype=torch.float32), device).view(-1, 1, 1, 1, 1)


def _grayscale(x: torch.Tensor) -> torch.Tensor:
    """float ``(G, 3, T, H, W)`` levels -> ``(G, 1, T, H, W)`` floored luma (torchvision's, for uint8)."""
    r, g, b = x.unbind(1)
    return r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114).floor_().unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, ratio: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """``x * ratio + other * alpha`` clamped and truncated to levels (torchvision's ``_blend`` on uint8)."""
    return (x * ratio).addcmul_(other, alpha).clamp_(0, 255).floor_()


def _affine_theta(name: str, value: float, size: int) -> list[float]:
    """The inverse affine matrix (2 x 3, row-major) torchvision builds for an affine RandAugment op."""
    if name == "Rotate":
        return _get_inverse_affine_matrix([0.0, 0.0], -(value % 360), [0.0, 0.0], 1.0, [0.0, 0.0])
    centre = [0.0, 0.0]
    translate, shear = [0.0, 0.0], [0.0, 0.0]
    if name == "ShearX":
        centre, shear = [-size * 0.5, -size * 0.5], [math.degrees(math.atan(value)), 0.0]
    elif name == "ShearY":
        centre, shear = [-size * 0.5, -size * 0.5], [0.0, math.degrees(math.atan(value))]
    elif name == "TranslateX":
        translate = [float(int(value)), 0.0]
    else:  # TranslateY
        translate = [0.0, float(int(value))]
    return _get_inverse_affine_matrix(centre, 0.0, translate, 1.0, shear)


def _affine(x: torch.Tensor, thetas: list[list[float]]) -> torch.Tensor:
    """Nearest-neighbour affine warp of each clip with its own matrix: ``(G, C, T, S, S)`` -> same.

    One ``grid_sample`` over the group; the grid is torchvision's ``_affine_grid`` for each matrix.
    """
    g, c, t, s, _ = x.shape
    device = x.device
    theta = _to_device(torch.tensor(thetas, dtype=torch.float32), device).view(g, 2, 3)
    coords = torch.linspace((1.0 - s) * 0.5, (s - 1.0) * 0.5, steps=s, device=device)
    xs, ys = coords.view(1, 1, s), coords.view(1, s, 1)  # pixel centres relative to the image centre
    scaled = theta.transpose(1, 2) / (0.5 * s)  # (G, 3, 2), normalised as torchvision's _affine_grid does
    # the grid elementwise rather than by bmm: exact float32 whatever the TF32 matmul setting on CUDA
    m = scaled.view(g, 3, 2, 1, 1)
    grid = torch.stack(
        [xs * m[:, 0, j] + ys * m[:, 1, j] + m[:, 2, j] for j in (0, 1)], dim=-1
    )  # (G, S, S, 2)
    out = nnf.grid_sample(
        x.reshape(g, c * t, s, s), grid, mode="nearest", padding_mode="zeros", align_corners=False
    )
    return out.view(g, c, t, s, s)


def _sharpness(x: torch.Tensor, alpha: torch.Tensor) -> torch.Tensor:
    """torchvision's ``adjust_sharpness`` on uint8 levels, per-clip ``alpha = 1 - factor``: ``(G, C, T, S, S)``."""
    g, c, t, s, _ = x.shape
    if s <= 2:
        return x
    a, b = 1.0 / 13.0, 5.0 / 13.0
    kernel = _to_device(torch.tensor([[a, a, a], [a, b, a], [a, a, a]], dtype=torch.float32), x.device)
    with torch.backends.cudnn.flags(
        enabled=torch.backends.cudnn.enabled,
        benchmark=torch.backends.cudnn.benchmark,
        deterministic=torch.backends.cudnn.deterministic,
        allow_tf32=False,  # TF32 would move the blur by up to a level before rounding
    ):
        blurred = nnf.conv2d(x.reshape(-1, 1, s, s), kernel.view(1, 1, 3, 3))
    blurred = blurred.round_().view(g, c, t, s - 2, s - 2)
    out = x.clone()
    view = out[..., 1:-1, 1:-1]
    view.addcmul_(blurred.sub_(view), alpha)
    return out.clamp_(0, 255).floor_()


def _autocontrast(x: torch.Tensor) -> torch.Tensor:
    """torchvision's ``autocontrast`` on uint8 levels: per frame and channel min/max stretch."""
    minimum = x.amin(dim=(-2, -1), keepdim=True)
    maximum = x.amax(dim=(-2, -1), keepdim=True)
    eq = maximum == minimum
    inv_scale = maximum.sub_(minimum).mul_(1.0 / 255)
    minimum = minimum.masked_fill(eq, 0.0)
    inv_scale = inv_scale.masked_fill(eq, 1.0)
    return x.sub(minimum).div_(inv_scale).clamp_(0, 255).floor_()


def _apply_group(x: torch.Tensor, name: str, values: list[float]) -> torch.Tensor:
    """Apply RandAugment op ``name`` to a group ``(G, C, T, S, S)`` of clips, clip g with magnitude ``values[g]``."""
    device, size = x.device, x.shape[-1]
    if name in _AFFINE_OPS:
        return _affine(x, [_affine_theta(name, v, size) for v in values])
    if name == "Brightness":
        return x.mul(_column([1.0 + v for v in values], device)).clamp_(0, 255).floor_()
    if name in ("Color", "Contrast"):
        ratio = _column([1.0 + v for v in values], device)
        alpha = _column([1.0 - (1.0 + v) for v in values], device)
        gray = _grayscale(x)
        other = gray if name == "Color" else gray.mean(dim=(-4, -2, -1), keepdim=True)  # contrast: per frame
        return _blend(x, other, ratio, alpha)
    if name == "Sharpness":
        return _sharpness(x, _column([1.0 - (1.0 + v) for v in values], device))
    if name == "Posterize":
        step = _column([float(2 ** (8 - min(int(v), 8))) for v in values], device)
        return x.div(step).floor_().mul_(step)
    if name == "Solarize":
        threshold = _column([255.0 * v for v in values], device)
        return torch.where(x >= threshold, 255.0 - x, x)
    if name == "AutoContrast":
        return _autocontrast(x)
    if name == "Equalize":
        return F.equalize(x.to(torch.uint8)).to(torch.float32)  # per (clip, channel, frame) plane
    raise ValueError(f"unknown RandAugment op {name!r}")


def augment_batch(
    video: torch.Tensor, packed: torch.Tensor, size: int | None = None, *, crop: str = "auto"
) -> torch.Tensor:
    """Augment a batch on its device: uint8 ``(B, C, T, H, W)`` -> float32 ``(B, C, T, size, size)``.

    Args:
        video: uint8 decoded clips, zero-padded to the batch's largest H and W, on any device.
        packed: float32 ``(B, P)`` from :func:`pack_params`. Read on the host once to group the samples by
            op: keep it on the CPU to avoid a host synchronisation (a device tensor is copied back once).
        size: output side; defaults to the packed size and must equal it.
        crop: how to crop and resize: ``matmul`` (two batched matmuls with torch's antialiased bilinear weights:
            two launches for the whole batch, fp16 tensor cores on CUDA), ``per_sample`` (``F.resized_crop`` per
            clip: torch's uint8 kernel on the CPU, bitwise the CPU path) or ``auto``: ``matmul`` on CUDA,
            ``per_sample`` elsewhere (3x faster than ``matmul`` on CPU tensors, ``benchmarks/augment.py``).

    Returns:
        float32 in [0, 255] holding whole levels (what the CPU path's uint8 holds), on ``video``'s device.
        Every frame of a clip gets the clip's crop and ops.
    """
    if video.ndim != 5 or video.dtype != torch.uint8:
        raise ValueError(
            f"augment_batch: expected uint8 (B, C, T, H, W), got {video.dtype} {tuple(video.shape)}"
        )
    params = unpack_params(packed)
    b, _, _, h, w = video.shape
    if len(params) != b:
        raise ValueError(f"augment_batch: {len(params)} packed params for a batch of {b}")
    out_size = params[0].size
    if size is not None and size != out_size:
        raise ValueError(f"augment_batch: size {size} differs from the packed size {out_size}")
    for i, p in enumerate(params):
        if p.top + p.height > h or p.left + p.width > w or min(p.top, p.left) < 0:
            raise ValueError(
                f"augment_batch: sample {i}: crop box {p.top, p.left, p.height, p.width} (top, left, h, w) "
                f"exceeds the {h}x{w} batch"
            )
    if crop not in ("auto", "matmul", "per_sample"):
        raise ValueError(f"augment_batch: crop must be auto, matmul or per_sample, got {crop!r}")
    if crop == "matmul" or (crop == "auto" and video.is_cuda):
        boxes = torch.tensor([[p.top, p.left, p.height, p.width] for p in params], dtype=torch.float32)
        x = _crop_resize(video, _to_device(boxes, video.device), out_size)
    else:
        x = _crop_resize_per_sample(video, params, out_size)
    for slot in range(len(params[0].ops)):
        groups: dict[str, list[int]] = {}
        for i, p in enumerate(params):
            groups.setdefault(p.ops[slot][0], []).append(i)
        for name, members in groups.items():
            if name == "Identity":
                continue
            values = [params[i].ops[slot][1] for i in members]
            if len(members) == b:
                x = _apply_group(x, name, values)
                continue
            index = _to_device(torch.tensor(members), video.device)
            x.index_copy_(0, index, _apply_group(x.index_select(0, index), name, values))
    return x


# ---------------------------------------------------------------------------------------------------------
# Normalisation and the model input


@functools.lru_cache(maxsize=16)
def _scale_bias(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """ImageNet ``1 / (255 std)`` and ``-mean / std`` as float32 ``(1, 3, 1, 1, 1)`` on ``device`` (cached)."""
    std = torch.tensor(IMAGENET_STD, dtype=torch.float64)
    scale = (1.0 / (255.0 * std)).float().view(1, 3, 1, 1, 1)
    bias = (-torch.tensor(IMAGENET_MEAN, dtype=torch.float64) / std).float().view(1, 3, 1, 1, 1)
    return scale.to(device), bias.to(device)


def normalize(video: torch.Tensor, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """ImageNet normalisation of ``(B, C, T, H, W)`` levels (uint8, or float in [0, 255]) on their device.

    One fused ``bias + video * scale`` in float32, then cast to ``dtype`` if it differs: ``(B, C, T, H, W)``.
    """
    if video.ndim != 5 or video.shape[1] != 3:
        raise ValueError(f"normalize: expected (B, 3, T, H, W), got {tuple(video.shape)}")
    scale, bias = _scale_bias(video.device)
    out = torch.addcmul(bias, video, scale)
    return out if dtype == torch.float32 else out.to(dtype)


def to_model_input(
    batch: dict, device: torch.device | str, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """The model's input from a loader batch: float ``(B, C, T, size, size)`` on ``device``.

    ``batch["video"]`` is uint8 ``(B, C, T, H, W)`` (moved to ``device`` if it is not there). With
    ``batch["aug"]`` (packed params, the device path) it runs :func:`augment_batch` first; either way it then
    runs :func:`normalize` to ``dtype``.
    """
    device = torch.device(device)
    video = batch["video"]
    if video.device != device:
        video = video.to(device, non_blocking=True)
    if batch.get("aug") is not None:
        video = augment_batch(video, batch["aug"])
    return normalize(video, dtype)


def resolve_augment_on(value: str, device: torch.device | str, workers: int = 0) -> str:
    """``augment_on`` for training on ``device`` with ``workers`` loader workers: ``"cpu"`` or ``"device"``.

    ``auto`` is ``device`` on CUDA; on the CPU it is :data:`CPU_AUTO_CHOICE_NO_WORKERS` (``device``) with
    ``workers == 0`` and :data:`CPU_AUTO_CHOICE` (``cpu``) with workers (both measured). ``cpu`` and
    ``device`` are returned as given.
    """
    if value not in AUGMENT_ON:
        raise ValueError(f"augment_on: must be one of {', '.join(AUGMENT_ON)}, got {value!r}")
    if value != "auto":
        return value
    if torch.device(device).type == "cuda":
        return "device"
    return CPU_AUTO_CHOICE if workers > 0 else CPU_AUTO_CHOICE_NO_WORKERS
