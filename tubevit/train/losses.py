"""Training objectives: a loss function and a batch mixing function per dataset.

A new objective is a new function (or a new :class:`Objective`), never a branch inside the loop.

- :func:`cross_entropy`: softmax CE with label smoothing on class indices ``(B,)`` or on soft targets
  ``(B, K)`` (MixUp output).
- :func:`binary_cross_entropy`: BCE-with-logits over multi-hot targets ``(B, K)`` (Charades), with optional
  label smoothing ``y * (1 - eps) + eps / 2``.
- :class:`MixUp`: ``torchvision.transforms.v2.MixUp(alpha, num_classes)`` on ``(B, C, T, H, W)`` batches.
- :func:`build_objective`: the objective of a dataset from its flags.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F
from torchvision import tv_tensors
from torchvision.transforms import v2

__all__ = [
    "LossFn",
    "MixFn",
    "MixUp",
    "Objective",
    "binary_cross_entropy",
    "build_objective",
    "cross_entropy",
    "no_mix",
]

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``loss(logits (B, K) float, target) -> scalar``; target is ``(B,)`` int64 or ``(B, K)`` float."""

MixFn = Callable[[torch.Tensor, torch.Tensor, np.random.Generator], tuple[torch.Tensor, torch.Tensor]]
"""``mix(video (B, C, T, H, W), target, rng) -> (video, target)``, applied before the forward pass."""


def cross_entropy(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Softmax cross-entropy, mean over the batch.

    Args:
        logits: ``(B, K)``.
        target: ``(B,)`` int64 class indices, or ``(B, K)`` class probabilities (rows sum to 1).
        label_smoothing: ``eps``: the target becomes ``(1 - eps) * target + eps / K`` (also for soft targets).
    """
    target = target if target.dtype == torch.long else target.float()
    return F.cross_entropy(logits.float(), target, label_smoothing=label_smoothing)


def binary_cross_entropy(
    logits: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0
) -> torch.Tensor:
    """Sigmoid BCE-with-logits for multi-label data, mean over batch and classes.

    Args:
        logits: ``(B, K)``.
        target: ``(B, K)`` multi-hot in {0, 1} (float).
        label_smoothing: ``eps``: targets become ``target * (1 - eps) + eps / 2``.
    """
    target = target.float() * (1.0 - label_smoothing) + label_smoothing / 2
    return F.binary_cross_entropy_with_logits(logits.float(), target)


def no_mix(
    video: torch.Tensor, target: torch.Tensor, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """The identity batch transform: ``(video, target)`` unchanged."""
    return video, target


@dataclass(frozen=True)
class MixUp:
    """MixUp with Beta(``alpha``, ``alpha``) on video batches: ``torchvision.transforms.v2.MixUp``.

    ``v2.MixUp`` refuses a plain 5-D tensor ("Expected a batched input with 4 dims"); wrapped as a
    ``tv_tensors.Video`` it mixes along the batch axis (``x * lam + x.roll(1, 0) * (1 - lam)``), which does
    not depend on the order of the other axes, so ``(B, C, T, H, W)`` is mixed correctly. Labels ``(B,)``
    become mixed one-hot targets ``(B, K)``.

    ``v2.MixUp`` draws ``lam`` from torch's global RNG. To make the draw a function of the loop's
    checkpointed ``np.random.Generator`` (and not of how much randomness dropout consumed), each call
    draws a seed from ``rng`` and runs ``v2.MixUp`` under ``torch.random.fork_rng`` seeded with it.
    """

    alpha: float
    num_classes: int
    _mixup: v2.MixUp = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.alpha <= 0:
            raise ValueError(f"MixUp.alpha: must be > 0, got {self.alpha}")
        object.__setattr__(self, "_mixup", v2.MixUp(alpha=self.alpha, num_classes=self.num_classes))

    def __call__(
        self, video: torch.Tensor, target: torch.Tensor, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``video (B, C, T, H, W)``, ``target (B,)`` int64 -> mixed video, soft target ``(B, K)``."""
        if target.dtype != torch.long or target.ndim != 1:
            raise ValueError(
                f"MixUp needs int64 class indices (B,), got {target.dtype} {tuple(target.shape)}"
            )
        seed = int(rng.integers(0, 2**63 - 1))
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            mixed, soft = self._mixup(tv_tensors.Video(video), target)
        return mixed.as_subclass(torch.Tensor), soft


@dataclass(frozen=True)
class Objective:
    """What one dataset trains with: ``loss(logits, target)`` after ``mix(video, target, rng)``."""

    loss: LossFn
    mix: MixFn = no_mix


def build_objective(
    num_classes: int, *, multilabel: bool = False, label_smoothing: float = 0.0, mixup: float = 0.0
) -> Objective:
    """The objective of one dataset.

    Single-label: :func:`cross_entropy` with ``label_smoothing``, after :class:`MixUp` when ``mixup > 0``.
    Multi-label: :func:`binary_cross_entropy` (MixUp is not defined for it and is refused).
    """
    if multilabel:
        if mixup > 0:
            raise ValueError(f"mixup={mixup}: MixUp is for single-label data, not multi-label")
        return Objective(loss=partial(binary_cross_entropy, label_smoothing=label_smoothing))
    mix: MixFn = MixUp(mixup, num_classes) if mixup > 0 else no_mix
    return Objective(loss=partial(cross_entropy, label_smoothing=label_smoothing), mix=mix)
