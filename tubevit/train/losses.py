"""Training objectives: a loss function and a batch mixing function per dataset.

A new objective is a new function (or a new :class:`Objective`), never a branch inside the loop.

- :func:`cross_entropy`: softmax CE with label smoothing on class indices ``(B,)`` or on soft targets
  ``(B, K)`` (MixUp output).
- :func:`binary_cross_entropy`: BCE-with-logits over multi-hot targets ``(B, K)`` (Charades), with optional
  label smoothing ``y * (1 - eps) + eps / 2``.
- :class:`MixUp`: ``torchvision.transforms.v2.MixUp(alpha, num_classes)``'s mixing on ``(B, C, T, H, W)`` batches,
  with ``lam`` drawn from a per-call ``torch.Generator`` (never the global RNG).
- :func:`build_objective`: the objective of a dataset from its flags.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import numpy as np
import torch
import torch.nn.functional as F

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
    """MixUp with Beta(``alpha``, ``alpha``) on video batches, with ``torchvision.transforms.v2.MixUp``'s semantics.

    ``x * lam + x.roll(1, 0) * (1 - lam)`` along the batch axis (which does not depend on the order of the
    other axes, so ``(B, C, T, H, W)`` is mixed correctly), and labels ``(B,)`` become the same mix of one-hot
    targets ``(B, K)``.

    ``lam`` is a function of the loop's checkpointed ``np.random.Generator`` only (not of how much randomness
    dropout consumed): each call draws a seed from ``rng`` and samples Beta(alpha, alpha) from a CPU
    ``torch.Generator`` seeded with it, as ``v2.MixUp`` samples it (``Dirichlet([alpha, alpha])[0]``), so a seed
    gives the ``lam`` that ``v2.MixUp`` gives under ``torch.manual_seed(seed)``. The global RNG is neither read
    nor reseeded, and ``lam`` is a host float, so mixing a batch on a GPU needs no host synchronisation.
    """

    alpha: float
    num_classes: int

    def __post_init__(self) -> None:
        if self.alpha <= 0:
            raise ValueError(f"MixUp.alpha: must be > 0, got {self.alpha}")
        if self.num_classes <= 0:
            raise ValueError(f"MixUp.num_classes: must be > 0, got {self.num_classes}")

    def draw_lambda(self, rng: np.random.Generator) -> float:
        """The mixing weight ``lam`` in [0, 1], from one draw of ``rng``."""
        generator = torch.Generator().manual_seed(int(rng.integers(0, 2**63 - 1)))
        concentration = torch.tensor([[self.alpha, self.alpha]], dtype=torch.float32)
        return float(torch._sample_dirichlet(concentration, generator=generator)[0, 0])

    def __call__(
        self, video: torch.Tensor, target: torch.Tensor, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``video (B, C, T, H, W)``, ``target (B,)`` int64 -> mixed video, soft target ``(B, K)`` float32."""
        if target.dtype != torch.long or target.ndim != 1:
            raise ValueError(
                f"MixUp needs int64 class indices (B,), got {target.dtype} {tuple(target.shape)}"
            )
        lam = self.draw_lambda(rng)
        mixed = video.roll(1, 0).mul_(1.0 - lam).add_(video.mul(lam))
        one_hot = F.one_hot(target, num_classes=self.num_classes).float()
        soft = one_hot.roll(1, 0).mul_(1.0 - lam).add_(one_hot.mul(lam))
        return mixed, soft


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
