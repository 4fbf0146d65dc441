"""Configs of the training stages: ``pretrain``, ``finetune.<ds>``, ``evaluate`` and their optimiser.

Build them only with :func:`tubevit.config.base.build` (unknown keys and bad values fail with the dotted key).
Units: learning rates per optimiser step, steps are optimiser steps (each ``accum_steps`` micro-batches),
batch sizes are per rank and per micro-batch (``LoaderConfig.batch_size``).

The global batch of one optimiser step is ``loader[ds].batch_size * accum_steps * nproc * nodes``.

Execution settings shared by both training sections (passed to :func:`tubevit.train.loop.train`):
``device``, ``compile``, ``precision`` (``auto`` = bf16 on CUDA, fp32 on the CPU; fp16 uses a grad scaler)
and ``grad_checkpointing`` (activation checkpointing of the encoder blocks; needed for L/H at 64 frames).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from tubevit.config.base import check
from tubevit.config.data import DATASET_NAMES, LoaderConfig

__all__ = ["EvaluateConfig", "FinetuneConfig", "OptimConfig", "PretrainConfig"]

WdMode = Literal["adamw", "decoupled_unscaled", "l2"]
Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["auto", "bf16", "fp16", "fp32"]


@dataclass(frozen=True)
class OptimConfig:
    """Adam with weight decay, linear warmup then cosine decay, and gradient-norm clipping.

    ``wd_mode`` (docs/design.md "Training"):
      - ``adamw``: ``torch.optim.AdamW(weight_decay=wd)``; the per-step shrink is ``lr_t * wd``.
      - ``decoupled_unscaled``: decoupled decay that does not scale with the base LR (Loshchilov & Hutter):
        the per-step shrink is ``wd * schedule_t`` (``schedule_t`` in [0, 1]).
      - ``l2``: ``torch.optim.Adam(weight_decay=wd)``: ``wd * p`` is added to the gradient (coupled L2).
    """

    lr: float = 1e-3  # peak learning rate (after warmup)
    weight_decay: float = 0.05
    wd_mode: WdMode = "adamw"
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    warmup_steps: int = 100  # linear warmup from lr/warmup_steps to lr, in optimiser steps
    schedule: Literal["cosine"] = "cosine"  # after warmup: cosine decay to 0 at the last step
    clip_grad: float = 1.0  # max global gradient L2 norm; 0 disables clipping

    def __post_init__(self) -> None:
        check(math.isfinite(self.lr) and self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        check(self.weight_decay >= 0, "weight_decay", f"must be >= 0, got {self.weight_decay}")
        for i, beta in enumerate(self.betas):
            check(0 <= beta < 1, f"betas[{i}]", f"must be in [0, 1), got {beta}")
        check(self.eps > 0, "eps", f"must be > 0, got {self.eps}")
        check(self.warmup_steps >= 0, "warmup_steps", f"must be >= 0, got {self.warmup_steps}")
        check(self.clip_grad >= 0, "clip_grad", f"must be >= 0 (0 = off), got {self.clip_grad}")


def _check_common(cfg: PretrainConfig | FinetuneConfig) -> None:
    check(cfg.steps >= 1, "steps", f"must be >= 1, got {cfg.steps}")
    check(cfg.accum_steps >= 1, "accum_steps", f"must be >= 1, got {cfg.accum_steps}")
    check(0 <= cfg.label_smoothing < 1, "label_smoothing", f"must be in [0, 1), got {cfg.label_smoothing}")
    check(cfg.mixup >= 0, "mixup", f"must be >= 0 (the Beta alpha; 0 = off), got {cfg.mixup}")
    check(cfg.checkpoint_every >= 0, "checkpoint_every", f"must be >= 0, got {cfg.checkpoint_every}")
    check(cfg.eval_every >= 0, "eval_every", f"must be >= 0, got {cfg.eval_every}")
    check(cfg.nproc >= 1, "nproc", f"must be >= 1, got {cfg.nproc}")
    check(
        cfg.optim.warmup_steps <= cfg.steps,
        "optim.warmup_steps",
        f"must be <= steps ({cfg.steps}), got {cfg.optim.warmup_steps}",
    )


@dataclass(frozen=True)
class PretrainConfig:
    """Joint image + video pretraining (``pretrain`` in params.yaml).

    ``datasets`` maps a dataset name to its mixing weight: the dataset of optimiser step k is drawn from
    ``random.Random(seed + k)`` by these weights, the same on every rank. ``loader`` has one entry per
    mixed dataset.

    Image-to-video scaling (paper §3.6; the stage builds it with
    ``tubevit.model.convert.scale_image_to_video(small, large, scale_from_layer, freeze_before=...,
    width_map=..., gated=...)``): ``init_from`` is the checkpoint whose weights start the run (an image
    ViT in timm or torchvision key layout, loaded with ``load_image_vit``, or a TubeViT state dict),
    ``tubes_from`` the smaller trained TubeViT whose tubes are taken, ``scale_from_layer`` the layer ``s``
    that receives the gated skip ``tanh(alpha) * z_0`` (0 = no scaling), ``freeze_before`` the number of
    leading blocks frozen with the tokenizer (``None``: ``s``, the paper's setting; 0 freezes nothing).
    Frozen parameters have ``requires_grad=False``; the loop leaves them out of the optimiser.
    Without scaling, ``init_from`` alone starts the run from those weights.
    """

    datasets: dict[str, float] = field(default_factory=lambda: {"kinetics": 1.0, "imagenet": 1.0})
    loader: dict[str, LoaderConfig] = field(
        default_factory=lambda: {"kinetics": LoaderConfig(), "imagenet": LoaderConfig(frames=1)}
    )
    optim: OptimConfig = field(default_factory=OptimConfig)
    steps: int = 1000  # optimiser steps
    accum_steps: int = 1  # micro-batches per optimiser step (gradient accumulation), all from one dataset
    label_smoothing: float = 0.0
    mixup: float = 0.0  # MixUp Beta alpha for single-label datasets; 0 = off
    checkpoint_every: int = 200  # optimiser steps between checkpoints; 0 = only at the end
    eval_every: int = 0  # optimiser steps between evaluations during training; 0 = none
    device: Device = "auto"  # auto: cuda when available
    compile: bool = False  # torch.compile the model (dynamic=False: one graph per input shape)
    precision: Precision = "auto"  # bf16 | fp16 (with a grad scaler) | fp32; auto: bf16 on CUDA, fp32 on CPU
    grad_checkpointing: bool = False  # recompute the encoder blocks in the backward pass (saves memory)
    nproc: int = 1  # torchrun processes per node
    seed: int = 0
    init_from: str | None = None  # image-to-video scaling: weights to start from (image ViT or TubeViT)
    tubes_from: str | None = None  # image-to-video scaling: smaller TubeViT checkpoint giving the tubes
    scale_from_layer: int = 0  # s: gated skip into encoder layer s; 0 = no image-to-video scaling
    freeze_before: int | None = None  # freeze the tokenizer and blocks [0, freeze_before); None = s
    width_map: Literal["auto", "s2d", "linear"] = (
        "auto"  # small -> large width: S2D (integer ratio) or linear
    )
    gated: bool = True  # the tanh(alpha) * z_0 skip (False: Table 6's "+last N layers" without the gate)
    # linear width map with frozen blocks: tube_proj frozen at [I; 0] (frozen), trained through the gate
    # only (gate), or through the frozen blocks too (full: back-propagates through them; costly)
    tube_proj_grad: Literal["frozen", "gate", "full"] = "frozen"

    def __post_init__(self) -> None:
        _check_common(self)
        check(len(self.datasets) >= 1, "datasets", "must name at least one dataset")
        for name, weight in self.datasets.items():
            check(name in DATASET_NAMES, f"datasets.{name}", f"unknown dataset; known: {DATASET_NAMES}")
            check(weight > 0, f"datasets.{name}", f"weight must be > 0, got {weight}")
            check(name in self.loader, f"loader.{name}", f"missing: dataset {name!r} is mixed in datasets")
        for name in self.loader:
            check(name in self.datasets, f"loader.{name}", f"dataset {name!r} is not in datasets")
        scaling = self.scale_from_layer > 0
        check(self.scale_from_layer >= 0, "scale_from_layer", f"must be >= 0, got {self.scale_from_layer}")
        for name in ("init_from", "tubes_from"):
            check(
                not scaling or getattr(self, name) is not None,
                name,
                f"image-to-video scaling (scale_from_layer={self.scale_from_layer}) needs {name}",
            )
        check(
            scaling or self.tubes_from is None,
            "tubes_from",
            "is only used by image-to-video scaling: set scale_from_layer (s >= 1)",
        )
        check(
            self.freeze_before is None or scaling,
            "freeze_before",
            "is only used by image-to-video scaling: set scale_from_layer (s >= 1)",
        )
        check(
            self.freeze_before is None or 0 <= self.freeze_before <= self.scale_from_layer,
            "freeze_before",
            f"must be in [0, scale_from_layer={self.scale_from_layer}], got {self.freeze_before}",
        )


@dataclass(frozen=True)
class FinetuneConfig:
    """Fine-tuning on one dataset (``finetune.<ds>``), starting from the pretrained model with a new head.

    ``tubes`` overrides the pretrained tube set by name (Charades: ``charades_interpolated`` or
    ``embedded_interpolated``, made by interpolating the pretrained kernels); ``None`` keeps it.
    ``init`` is ``pretrain`` (the stage's pretrained-weights input; the path comes from dvc.yaml) or
    ``scratch``. ``dropout`` is the head dropout (Table 1: Charades 0.2, SSv2 0.3).
    """

    loader: LoaderConfig = field(default_factory=LoaderConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    steps: int = 1000
    accum_steps: int = 1
    label_smoothing: float = 0.0
    mixup: float = 0.0
    checkpoint_every: int = 200
    eval_every: int = 0
    device: Device = "auto"
    compile: bool = False
    precision: Precision = "auto"
    grad_checkpointing: bool = False
    nproc: int = 1
    seed: int = 0
    tubes: str | None = None  # tube-set name override, e.g. "charades_interpolated"
    multilabel: bool = False  # Charades: BCE over multi-hot labels
    dropout: float = 0.0  # head dropout
    init: Literal["pretrain", "scratch"] = "pretrain"

    def __post_init__(self) -> None:
        _check_common(self)
        check(0 <= self.dropout < 1, "dropout", f"must be in [0, 1), got {self.dropout}")
        check(
            not (self.multilabel and self.mixup > 0),
            "mixup",
            f"MixUp is for single-label data; got mixup={self.mixup} with multilabel=true",
        )


@dataclass(frozen=True)
class EvaluateConfig:
    """Multi-view evaluation (``evaluate``): 4 x 3 views at paper scale.

    Single-label scores are the mean over views of the softmax. Multi-label (Charades) scores are the
    max (default, as in the Charades reference evaluation of multi-crop testing) or the mean over views
    of the sigmoid.
    """

    temporal_views: int = 4  # clips starting evenly over the video
    spatial_views: int = 3  # 1 (centre crop) or 3 crops along the long side
    charades_aggregate: Literal["max", "mean"] = "max"
    batch_size: int = 16  # clips per forward pass (per rank)

    def __post_init__(self) -> None:
        check(self.temporal_views >= 1, "temporal_views", f"must be >= 1, got {self.temporal_views}")
        check(self.spatial_views in (1, 3), "spatial_views", f"must be 1 or 3, got {self.spatial_views}")
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
