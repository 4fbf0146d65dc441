"""The training loop: one function, read top to bottom.

Order: seed, model (device, optimiser, schedule), resume, data, steps (micro-batches, clip, step), log,
evaluate, checkpoint. It reports through :class:`Callback` objects (rank 0 only) and never prints: tqdm
and dvclive are attached by ``pipelines/``.

Batch iterator contract. ``batches(start_step)`` returns an iterable of micro-batch dicts
``{"video": float32 (B, C, T, H, W), "label": int64 (B,) | float32 (B, K), "dataset": str, ...}`` for
optimiser steps ``start_step, start_step + 1, ...``: ``accum_steps`` consecutive micro-batches per step, all
from one dataset (the loop checks it). It must be a pure function of ``start_step`` (and its own seed), so
that a resumed run sees exactly the micro-batches the interrupted one would have seen; under DDP each rank
yields its own part of the global batch. It must not end before ``steps``.

A step's loss is the mean over its micro-batches (and over ranks under DDP) of ``objective.loss``. The
gradient is that of the mean, so ``accum_steps`` micro-batches of B clips give the same update as one
batch of ``accum_steps * B`` clips (up to float summation order).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from tubevit.config.train import OptimConfig
from tubevit.train import distributed
from tubevit.train.checkpoint import (
    capture_rng,
    latest_checkpoint,
    load_checkpoint,
    remove_stale_temporaries,
    restore_rng,
    save_checkpoint,
)
from tubevit.train.losses import Objective
from tubevit.train.optim import build_optimizer, build_schedule

__all__ = ["Callback", "NonFiniteLossError", "TrainResult", "seed_everything", "train"]

log = logging.getLogger(__name__)

Batch = Mapping[str, Any]
BatchFactory = Callable[[int], Iterable[Batch]]
EvaluateFn = Callable[[nn.Module, int], Mapping[str, Any]]


class NonFiniteLossError(FloatingPointError):
    """The loss of an optimiser step is NaN or infinite; the weights were not updated by that step."""

    def __init__(self, step: int, dataset: str, value: float):
        self.step, self.dataset, self.value = step, dataset, value
        super().__init__(
            f"step {step}: loss is {value} on dataset {dataset!r}; training stopped before the optimiser "
            "update (lower optim.lr, raise warmup_steps or check that dataset's inputs)"
        )


class Callback:
    """Hooks of :func:`train`, called on rank 0 only. Override the ones you need; each default does nothing.

    ``step`` is always the number of optimiser steps completed (1 after the first step).
    """

    def on_train_start(self, step: int, steps: int) -> None:
        """Training starts at ``step`` (0, or the resumed step) and runs to ``steps``."""

    def on_eta(self, step: int, seconds_per_step: float, seconds_left: float) -> None:
        """An estimate from the steps measured so far (the first step, with its warm-up, excluded)."""

    def on_step(self, step: int, metrics: Mapping[str, Any]) -> None:
        """After every optimiser step. ``metrics``: ``loss`` (float, mean over micro-batches and ranks),
        ``lr`` (float, the LR this step used), ``grad_norm`` (float, before clipping), ``clips_per_s``
        (float, global: all ranks), ``seconds`` (float, this step's wall time), ``dataset`` (str)."""

    def on_eval(self, step: int, metrics: Mapping[str, Any]) -> None:
        """After ``evaluate(model, step)`` ran, with what it returned."""

    def on_checkpoint(self, step: int, path: Path) -> None:
        """After the checkpoint of ``step`` was written (atomically) to ``path``."""

    def on_train_end(self, step: int) -> None:
        """After the last step, its evaluation and its checkpoint."""


@dataclass
class TrainResult:
    """What :func:`train` ends with (the model itself is trained in place)."""

    step: int  # optimiser steps completed
    start_step: int  # where this call started (> 0 when it resumed)
    metrics: dict[str, Any] = field(default_factory=dict)  # the last on_step metrics
    eval_metrics: dict[str, Any] = field(default_factory=dict)  # the last evaluation's
    checkpoint: Path | None = None  # the last checkpoint written


def seed_everything(seed: int) -> np.random.Generator:
    """Seed torch (CPU and CUDA) and Python ``random``; returns ``np.random.default_rng(seed)``."""
    torch.manual_seed(seed)
    random.seed(seed)
    return np.random.default_rng(seed)


def _due(done: int, every: int, steps: int) -> bool:
    return done == steps or (every > 0 and done % every == 0)


def _take_step_batches(it: Iterator[Batch], accum_steps: int, step: int) -> list[Batch]:
    """The ``accum_steps`` micro-batches of optimiser step ``step`` (0-based), all from one dataset."""
    out = []
    for i in range(accum_steps):
        try:
            out.append(next(it))
        except StopIteration:
            raise RuntimeError(
                f"step {step}: the batch iterator ended after {i} of {accum_steps} micro-batches"
            ) from None
    names = [b["dataset"] for b in out]
    if len(set(names)) != 1:
        raise ValueError(f"step {step}: the micro-batches of one optimiser step mix datasets {names}")
    return out


def train(
    model: nn.Module,
    batches: BatchFactory,
    objectives: Mapping[str, Objective],
    optim: OptimConfig,
    steps: int,
    *,
    accum_steps: int = 1,
    device: str | torch.device = "cpu",
    compile: bool = False,
    seed: int = 0,
    checkpoint_dir: Path | None = None,
    checkpoint_every: int = 0,
    config_hash: str = "",
    evaluate: EvaluateFn | None = None,
    eval_every: int = 0,
    callbacks: Sequence[Callback] = (),
    eta_steps: int = 3,
) -> TrainResult:
    """Train ``model`` for ``steps`` optimiser steps, resuming from ``checkpoint_dir`` when it holds one.

    Args:
        model: called as ``model(video (B, C, T, H, W), dataset: str) -> logits (B, K)``. Moved to the
            device and trained in place; parameters with ``requires_grad=False`` are frozen (not in the
            optimiser). Build it (seeded) before calling; under torchrun every rank builds the same one.
        batches: ``batches(start_step)`` -> micro-batches from optimiser step ``start_step`` on (see the
            module docstring for the contract).
        objectives: dataset name -> :class:`~tubevit.train.losses.Objective` (loss and batch mixing).
        optim: learning rate, weight decay, warmup + cosine schedule over ``steps``, ``clip_grad``.
        steps: total optimiser steps (a resumed run continues to the same total).
        accum_steps: micro-batches per optimiser step (gradient accumulation).
        device: ``cpu``, ``cuda``, ``auto`` or a ``torch.device``. bf16 autocast on CUDA, fp32 on the CPU.
        compile: wrap the (DDP) model in ``torch.compile``.
        seed: training randomness (dropout, drop path, MixUp) of rank r is seeded with ``seed + r``.
        checkpoint_dir: where ``checkpoint.pt`` is written and resumed from; ``None``: no checkpoints.
        checkpoint_every: optimiser steps between checkpoints (0: only after the last step).
        config_hash: :func:`~tubevit.train.checkpoint.config_hash` of the run's configs; resume refuses a
            checkpoint written with another.
        evaluate: ``evaluate(model, step) -> metrics``, called on every rank with the unwrapped model in
            eval mode every ``eval_every`` steps (0: only after the last step) and after the last step.
        callbacks: :class:`Callback` objects, called on rank 0.
        eta_steps: steps measured (after the first) before ``on_eta`` reports the estimated time left.

    Raises:
        NonFiniteLossError: a step's loss is NaN or infinite (names the step and the dataset).
        CheckpointError: the checkpoint in ``checkpoint_dir`` has another config hash or world size.
    """
    for name, value in (("steps", steps), ("accum_steps", accum_steps), ("eta_steps", eta_steps)):
        if value < 1:
            raise ValueError(f"train: {name} must be >= 1, got {value}")
    rank, world = distributed.rank(), distributed.world_size()
    dev = device if isinstance(device, torch.device) else distributed.resolve_device(device, _local_rank())
    main = rank == 0
    calls = list(callbacks) if main else []

    # seed: training randomness per rank; model initialisation was seeded by the caller
    np_rng = seed_everything(seed + rank)

    # model, optimiser and schedule
    model.to(dev).train()
    optimizer = build_optimizer(model, optim)
    scheduler = build_schedule(optimizer, optim, steps)

    # resume
    start = 0
    last_checkpoint = latest_checkpoint(checkpoint_dir) if checkpoint_dir is not None else None
    if checkpoint_dir is not None and main:
        remove_stale_temporaries(Path(checkpoint_dir))
    if last_checkpoint is not None:
        state = load_checkpoint(last_checkpoint, config_hash=config_hash, world_size=world)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        restore_rng(state["rng"][rank], np_rng)
        start = state["step"]
        log.info("resumed from %s at step %d of %d", last_checkpoint, start, steps)
    ddp = distributed.wrap_ddp(model, dev)
    net = torch.compile(ddp) if compile else ddp
    no_sync = getattr(ddp, "no_sync", contextlib.nullcontext)
    autocast = (
        (lambda: torch.autocast("cuda", dtype=torch.bfloat16))
        if dev.type == "cuda"
        else contextlib.nullcontext
    )
    max_norm = optim.clip_grad if optim.clip_grad > 0 else math.inf
    trainable = [p for p in model.parameters() if p.requires_grad]

    # data
    it = iter(batches(start))

    result = TrainResult(step=start, start_step=start, checkpoint=last_checkpoint)
    for cb in calls:
        cb.on_train_start(start, steps)
    timer_start: float | None = None
    for step in range(start, steps):
        t0 = time.perf_counter()
        micro = _take_step_batches(it, accum_steps, step)
        name = micro[0]["dataset"]
        if name not in objectives:
            raise KeyError(f"step {step}: no objective for dataset {name!r}; have {sorted(objectives)}")
        objective = objectives[name]
        optimizer.zero_grad(set_to_none=True)
        loss_sum = torch.zeros((), device=dev)
        clips = 0
        for i, batch in enumerate(micro):
            video = batch["video"].to(dev, non_blocking=True)
            target = batch["label"].to(dev, non_blocking=True)
            video, target = objective.mix(video, target, np_rng)
            sync = contextlib.nullcontext() if i == accum_steps - 1 else no_sync()
            with sync:
                with autocast():
                    logits = net(video, name)
                loss = objective.loss(logits.float(), target)
                (loss / accum_steps).backward()
            loss_sum += loss.detach()
            clips += video.shape[0]
        step_loss = float(distributed.all_reduce_mean(loss_sum / accum_steps))
        if not math.isfinite(step_loss):
            raise NonFiniteLossError(step, name, step_loss)
        grad_norm = float(torch.nn.utils.clip_grad_norm_(trainable, max_norm))
        lr = optimizer.param_groups[0]["lr"]
        optimizer.step()
        scheduler.step()
        done = step + 1

        # log
        seconds = time.perf_counter() - t0
        result.step = done
        result.metrics = {
            "loss": step_loss,
            "lr": lr,
            "grad_norm": grad_norm,
            "clips_per_s": clips * world / seconds,
            "seconds": seconds,
            "dataset": name,
        }
        for cb in calls:
            cb.on_step(done, result.metrics)
        if done == start + 1:
            timer_start = time.perf_counter()
        elif timer_start is not None and done == start + 1 + eta_steps:
            per_step = (time.perf_counter() - timer_start) / eta_steps
            for cb in calls:
                cb.on_eta(done, per_step, per_step * (steps - done))

        # evaluate
        if evaluate is not None and _due(done, eval_every, steps):
            model.eval()
            with torch.no_grad(), autocast():
                result.eval_metrics = dict(evaluate(model, done))
            model.train()
            for cb in calls:
                cb.on_eval(done, result.eval_metrics)

        # checkpoint
        if checkpoint_dir is not None and _due(done, checkpoint_every, steps):
            rngs = distributed.all_gather_objects(capture_rng(np_rng))
            if main:
                result.checkpoint = save_checkpoint(
                    Path(checkpoint_dir),
                    model_state=model.state_dict(),
                    optimizer=optimizer,
                    scheduler=scheduler,
                    step=done,
                    data_position=done * accum_steps,
                    rng=rngs,
                    config_hash=config_hash,
                )
                for cb in calls:
                    cb.on_checkpoint(done, result.checkpoint)
            distributed.barrier()

    for cb in calls:
        cb.on_train_end(result.step)
    return result


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))
