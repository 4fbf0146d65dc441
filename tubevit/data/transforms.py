"""Clip-consistent spatial transforms of one clip (the CPU path), normalisation and layout.

Every transform draws its random parameters once per clip and applies them to all T frames: the clip is a
``tv_tensors.Video`` of shape ``(T, C, H, W)``, which v2 transforms treat as one sample. (On a plain
``(C, T, H, W)`` tensor the colour ops raise and the geometric ones run silently on the wrong axes.)

- Training: ``RandomResizedCrop(size, scale, ratio)`` then ``RandAugment(num_ops, magnitude,
  num_magnitude_bins=11)`` (magnitude on the paper's 0-10 scale), then ImageNet normalisation. The parameters
  come from :func:`tubevit.data.augment.draw_clip_params` and are applied by
  :func:`tubevit.data.augment.augment_clip`; the batched device path applies the same parameters.
- Evaluation: resize the short side to ``size``, then the centre crop (1 view) or 3 crops along the long
  side (start, centre, end), then normalisation.

Inputs are uint8 ``(T, H, W, C)`` RGB (decord's layout; an image is ``(1, H, W, C)``). Outputs are float32
``(C, T, H, W)`` (training) or ``(S, C, T, H, W)`` (evaluation, S spatial views), normalised; with
``normalized=False`` they are the uint8 levels in the same layout (normalisation then runs on the device,
:func:`tubevit.data.augment.normalize`).

Randomness comes from a per-sample seed (:func:`sample_seed` of the run seed, epoch and the sample's
``__key__``), never from the worker, so a sample is augmented the same way whichever worker reads it. It is
drawn from a ``torch.Generator`` made from that seed: the global RNG is neither read nor reseeded.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torchvision.transforms.v2 import functional as F

from tubevit.data.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ClipParams,
    augment_clip,
    augment_video,
    draw_clip_params,
    to_video,
)

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "EvalTransform", "TrainTransform", "normalize", "sample_seed"]


def sample_seed(*parts: object) -> int:
    """A 63-bit seed from ``parts`` (e.g. seed, epoch, ``__key__``), stable across processes and runs.

    Python's ``hash`` of a str changes per process (PYTHONHASHSEED), so this hashes the parts' text.
    """
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little") & (2**63 - 1)


def normalize(video: torch.Tensor) -> torch.Tensor:
    """uint8 ``(..., T, C, H, W)`` -> float32 normalised ``(..., C, T, H, W)`` (ImageNet mean/std)."""
    x = video.as_subclass(torch.Tensor).transpose(-4, -3)  # TCHW -> CTHW (a view)
    # one uint8 -> float32 copy into contiguous CTHW memory, then x * 1/(255 std) - mean/std in place
    out = torch.empty(x.shape, dtype=torch.float32)
    out.copy_(x)
    std = torch.tensor(IMAGENET_STD, dtype=torch.float32)
    scale = (1.0 / (255.0 * std)).view(3, 1, 1, 1)
    bias = (-torch.tensor(IMAGENET_MEAN, dtype=torch.float32) / std).view(3, 1, 1, 1)
    return out.mul_(scale).add_(bias)


class TrainTransform:
    """Training augmentation of one clip: random-resized crop + RandAugment, identical on every frame.

    ``__call__(frames, seed)``: uint8 ``(T, H, W, 3)`` -> float32 normalised ``(3, T, size, size)``, or uint8
    ``(3, T, size, size)`` when ``normalized=False``.
    """

    def __init__(
        self,
        size: int,
        scale: tuple[float, float] = (0.25, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        randaugment: bool = True,
        num_ops: int = 2,
        magnitude: int = 10,
        normalized: bool = True,
    ):
        if not 0 <= magnitude <= 10:
            raise ValueError(f"RandAugment magnitude must be in [0, 10], got {magnitude}")
        self.size = size
        self.scale = tuple(scale)
        self.ratio = tuple(ratio)
        self.randaugment = randaugment
        self.num_ops = num_ops
        self.magnitude = magnitude
        self.normalized = normalized

    def params(self, height: int, width: int, seed: int) -> ClipParams:
        """The clip's crop and ops for ``height`` x ``width`` frames, drawn from ``seed``."""
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

    def augment(self, frames: np.ndarray | torch.Tensor, seed: int) -> torch.Tensor:
        """The augmented uint8 clip ``(T, 3, size, size)``, before normalisation."""
        shape = tuple(frames.shape)
        if len(shape) != 4:
            raise ValueError(f"expected frames of shape (T, H, W, 3), got {shape}")
        return augment_video(frames, self.params(shape[1], shape[2], seed))

    def __call__(self, frames: np.ndarray | torch.Tensor, seed: int) -> torch.Tensor:
        if not self.normalized:
            shape = tuple(frames.shape)
            if len(shape) != 4:
                raise ValueError(f"expected frames of shape (T, H, W, 3), got {shape}")
            return augment_clip(frames, self.params(shape[1], shape[2], seed))
        return normalize(self.augment(frames, seed))


class EvalTransform:
    """Evaluation views of one clip: short side resized to ``size``, then 1 centre crop or 3 crops.

    The 3 crops lie along the long side at its start, centre and end (for a square frame they coincide).
    ``__call__(frames)``: uint8 ``(T, H, W, 3)`` -> float32 normalised ``(S, 3, T, size, size)``, or uint8
    ``(S, 3, T, size, size)`` when ``normalized=False``.
    """

    def __init__(self, size: int, spatial_views: int = 1, normalized: bool = True):
        if spatial_views not in (1, 3):
            raise ValueError(f"spatial_views must be 1 or 3, got {spatial_views}")
        self.size = size
        self.spatial_views = spatial_views
        self.normalized = normalized

    def crops(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        """uint8 views ``(S, T, 3, size, size)`` before normalisation."""
        video = F.resize(to_video(frames), [self.size], antialias=True)  # short side -> size
        _, _, h, w = video.shape
        if self.spatial_views == 1:
            positions = [((h - self.size) // 2, (w - self.size) // 2)]
        elif w >= h:
            positions = [(0, 0), (0, (w - self.size) // 2), (0, w - self.size)]
        else:
            positions = [(0, 0), ((h - self.size) // 2, 0), (h - self.size, 0)]
        views = [F.crop(video, top, left, self.size, self.size) for top, left in positions]
        return torch.stack([v.as_subclass(torch.Tensor) for v in views])

    def __call__(self, frames: np.ndarray | torch.Tensor) -> torch.Tensor:
        if not self.normalized:
            return self.crops(frames).transpose(1, 2).contiguous()  # STCHW -> SCTHW
        return normalize(self.crops(frames))
