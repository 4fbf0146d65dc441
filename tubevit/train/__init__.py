"""Training: the loop, its optimiser and schedule, objectives, checkpoints and DDP helpers.

- :mod:`tubevit.train.loop`: :func:`train` (one readable loop) and :class:`Callback`.
- :mod:`tubevit.train.prefetch`: :class:`DevicePrefetcher` (the next batch's copy overlaps the step on CUDA).
- :mod:`tubevit.train.precision`: ``bf16`` | ``fp16`` | ``fp32`` (``auto``: bf16 on CUDA, fp32 on the CPU).
- :mod:`tubevit.train.optim`: AdamW parameter groups, ``wd_mode`` variants, warmup + cosine schedule.
- :mod:`tubevit.train.losses`: cross-entropy with label smoothing, BCE, MixUp, :class:`Objective`.
- :mod:`tubevit.train.checkpoint`: atomic checkpoints, RNG capture, config hash, resume checks.
- :mod:`tubevit.train.distributed`: torchrun / DDP setup and all-reduce helpers.
"""

from tubevit.train.checkpoint import CheckpointError, config_hash
from tubevit.train.loop import Callback, NonFiniteLossError, TrainResult, seed_everything, train
from tubevit.train.losses import Objective, build_objective
from tubevit.train.optim import build_optimizer, build_schedule
from tubevit.train.prefetch import DevicePrefetcher

__all__ = [
    "Callback",
    "CheckpointError",
    "DevicePrefetcher",
    "NonFiniteLossError",
    "Objective",
    "TrainResult",
    "build_objective",
    "build_optimizer",
    "build_schedule",
    "config_hash",
    "seed_everything",
    "train",
]
