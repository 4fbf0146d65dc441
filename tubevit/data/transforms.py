"""Clip-consistent spatial transforms (torchvision transforms v2), normalisation and layout.

Every transform draws its random parameters once per clip and applies them to all T frames: the clip is a
``tv_tensors.Video`` of shape ``(T, C, H, W)``, which v2 transforms treat as one sample. (On a plain
``(C, T, H, W)`` tensor the colour ops raise and the geometric ones run silently on the wrong axes.)

- Training: ``RandomResizedCrop(size, scale, ratio)`` then ``RandAugment(num_ops, magnitude,
  num_magnitude_bins=11)`` (magnitude on the paper's 0-10 scale), then ImageNet normalisation.
- Evaluation: resize the short side to ``size``, then the centre crop (1 view) or 3 crops along the long
  side (start, centre, end), then normalisation.

Inputs are uint8 ``(T, H, W, C)`` RGB (decord's layout; an image is ``(1, H, W, C)``). Outputs are float32
``(C, T, H, W)`` (training) or ``(S, C, T, H, W)`` (evaluation, S spatial views), normalised.

Randomness comes from a per-sample seed (:func:`sample_seed` of the run seed, epoch and the sample's
``__key__``), never from the worker, so a sample is augmented the same way whichever worker reads it.
The global torch RNG is forked around each call and left as it was.
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "EvalTransform", "TrainTransform", "normalize", "sample_seed"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def sample_seed(*parts: object) -> int:
    """A 63-bit seed from ``parts`` (e.g. seed, epoch, ``__key__``), stable across processes and runs.

    Python's ``hash`` of a str changes per process (PYTHONHASHSEED), so this hashes the parts' text.
    """
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "little") & (2**63 - 1)


def to_video(frames: np.ndarray | torch.Tensor) -> tv_tensors.Video:
    """uint8 ``(T, H, W, C)`` -> ``tv_tensors.Video`` uint8 ``(T, C, H, W)``."""
    x = torch.as_tensor(frames)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected frames of shape (T, H, W, 3), got {tuple(x.shape)}")
    return tv_tensors.Video(x.permute(0, 3, 1, 2))  # THWC -> TCHW


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

    ``__call__(frames, seed)``: uint8 ``(T, H, W, 3)`` -> float32 normalised ``(3, T, size, size)``.
    """

    def __init__(
        self,
        size: int,
        scale: tuple[float, float] = (0.25, 1.0),
        ratio: tuple[float, float] = (3 / 4, 4 / 3),
        randaugment: bool = True,
        num_ops: int = 2,
        magnitude: int = 10,
    ):
        if not 0 <= magnitude <= 10:
            raise ValueError(f"RandAugment magnitude must be in [0, 10], got {magnitude}")
        self.size = size
        ops: list[v2.Transform] = [v2.RandomResizedCrop(size, scale=scale, ratio=ratio, antialias=True)]
        if randaugment:
            ops.append(v2.RandAugment(num_ops=num_ops, magnitude=magnitude, num_magnitude_bins=11))
        self.transform = v2.Compose(ops)

    def augment(self, frames: np.ndarray | torch.Tensor, seed: int) -> torch.Tensor:
        """The augmented uint8 clip ``(T, 3, size, size)``, before normalisation."""
        video = to_video(frames)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            out = self.transform(video)
        return out.as_subclass(torch.Tensor)

    def __call__(self, frames: np.ndarray | torch.Tensor, seed: int) -> torch.Tensor:
        return normalize(self.augment(frames, seed))


class EvalTransform:
    """Evaluation views of one clip: short side resized to ``size``, then 1 centre crop or 3 crops.

    The 3 crops lie along the long side at its start, centre and end (for a square frame they coincide).
    ``__call__(frames)``: uint8 ``(T, H, W, 3)`` -> float32 normalised ``(S, 3, T, size, size)``.
    """

    def __init__(self, size: int, spatial_views: int = 1):
        if spatial_views not in (1, 3):
            raise ValueError(f"spatial_views must be 1 or 3, got {spatial_views}")
        self.size = size
        self.spatial_views = spatial_views

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
        return normalize(self.crops(frames))
