"""The training loop: one function, read top to bottom.

Order: seed, model (device, optimiser, schedule), resume, data, steps (micro-batches, clip, step), log,
evaluate, checkpoint. It reports through :class:`Callback` objects (rank 0 only) and never prints: tqdm
and dvclive are attached by ``pipelines/``.

Batch iterator contract. ``batches(start_step)`` returns an iterable of micro-batch dicts
``{"video": uint8 (B, C, T, H, W), "label": int64 (B,) | float32 (B, K), "dataset": str, ...}`` (device-side
augmentation adds ``"aug"``: float32 ``(B, P)`` packed parameters; see :mod:`tubevit.data.augment`) for
optimiser steps ``start_step, start_step + 1, ...``: ``accum_steps`` consecutive micro-batches per step, all
from one dataset (the loop checks it). It must be a pure function of ``start_step`` (and its own seed), so
that a resumed run sees exactly the micro-batches the interrupted one would have seen; under DDP each rank
yields its own part of the global batch. It must not end before ``steps``.

A step's loss is the mean over its micro-batches (and over ranks under DDP) of ``objective.loss``. The
gradient is that of the mean, so ``accum_steps`` micro-batches of B clips give the same update as one
batch of ``accum_steps * B`` clips (up to float summation order).

The data path of a step: the batches come through :class:`~tubevit.train.prefetch.DevicePrefetcher` (on
CUDA the next batch's copy overlaps this step), and
:func:`tubevit.data.augment.to_model_input` turns each uint8 batch into the normalised model input on the
device (running the batched augmentation first when the batch carries ``"aug"``), then MixUp.

Host synchronisation (CUDA). With a fused optimiser (the default on CUDA) a step does not wait for its
own results: its loss and gradient norm are copied to pinned host memory without blocking, and read
during the NEXT step (after that step's backward pass was queued, before its optimiser update). The one
wait per step is on the previous step's end. So ``Callback.on_step`` metrics arrive one step late; they
are read at once (and every earlier one delivered) before an evaluation, a checkpoint, the ETA report
and the end of training. A non-finite loss is still caught: the update of that step is skipped on the
device (the fused optimiser's ``found_inf``), and :class:`NonFiniteLossError` names that step when it is
read, one step later or at the next checkpoint, which is therefore never written from a bad step. On the
CPU nothing is lagged (reading a value costs nothing there): metrics arrive after their own step and a
non-finite loss stops the step before its update.
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
from tubevit.data.augment import to_model_input
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
from tubevit.train.precision import autocast, input_dtype, resolve_precision
from tubevit.train.prefetch import DevicePrefetcher

__all__ = ["Callback", "NonFiniteLossError", "TrainResult", "check_uint8", "seed_everything", "train"]

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
        """Once per optimiser step, in step order. ``metrics``: ``loss`` (float, mean over micro-batches and
        ranks), ``lr`` (float, the LR this step used), ``grad_norm`` (float, before clipping),
        ``clips_per_s`` (float, global: all ranks), ``seconds`` (float, this step's wall time on the host),
        ``dataset`` (str). On CUDA they may arrive one step late (see the module docstring): ``step`` is
        always the step they belong to, and the model may already be one step further."""

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
    for b in out:
        check_uint8(b, f"step {step}")
    return out


def check_uint8(batch: Batch, where: str) -> None:
    """Raise ``TypeError`` naming ``where`` and the dataset unless ``batch["video"]`` is uint8."""
    video = batch["video"]
    if video.dtype != torch.uint8:
        raise TypeError(
            f"{where}: batch 'video' of dataset {batch.get('dataset')!r} is {video.dtype}; the loaders yield "
            "uint8 (B, C, T, H, W) levels, normalised on the device by the loop"
        )


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
    precision: str = "auto",
    grad_checkpointing: bool = False,
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
        device: ``cpu``, ``cuda``, ``auto`` or a ``torch.device``.
        compile: wrap the (DDP) model in ``torch.compile(dynamic=False)``: one graph per input shape (an
            image step and a video step: two graphs, then no recompilation).
        precision: ``bf16``, ``fp16`` (with a ``GradScaler``), ``fp32`` or ``auto`` (bf16 on CUDA, fp32 on
            the CPU); see :mod:`tubevit.train.precision`.
        grad_checkpointing: recompute the encoder blocks in the backward pass (activation checkpointing,
            ``torch.utils.checkpoint`` with ``use_reentrant=False``), through the model's
            ``set_grad_checkpointing``. Saves memory; the result is unchanged.
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
        ValueError: an unknown ``precision``, or ``grad_checkpointing`` on a model without
            ``set_grad_checkpointing``.
    """
    for name, value in (("steps", steps), ("accum_steps", accum_steps), ("eta_steps", eta_steps)):
        if value < 1:
            raise ValueError(f"train: {name} must be >= 1, got {value}")
    rank, world = distributed.rank(), distributed.world_size()
    dev = device if isinstance(device, torch.device) else distributed.resolve_device(device, _local_rank())
    prec = resolve_precision(precision, dev)
    dtype = input_dtype(prec)
    main = rank == 0
    calls = list(callbacks) if main else []

    # seed: training randomness per rank; model initialisation was seeded by the caller
    np_rng = seed_everything(seed + rank)

    # model, optimiser and schedule
    model.to(dev).train()
    if grad_checkpointing:
        enable = getattr(model, "set_grad_checkpointing", None)
        if not callable(enable):
            raise ValueError(f"grad_checkpointing: {type(model).__name__} has no set_grad_checkpointing()")
        enable(True)
    optimizer = build_optimizer(model, optim)
    scheduler = build_schedule(optimizer, optim, steps)
    scaler = torch.amp.GradScaler(dev.type) if prec == "fp16" else None
    lagged = bool(optimizer.defaults.get("fused"))  # the device skips a bad update: read results a step late

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
        if scaler is not None and "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        restore_rng(state["rng"][rank], np_rng)
        start = state["step"]
        log.info("resumed from %s at step %d of %d", last_checkpoint, start, steps)
    ddp = distributed.wrap_ddp(model, dev)
    net = torch.compile(ddp, dynamic=False) if compile else ddp
    no_sync = getattr(ddp, "no_sync", contextlib.nullcontext)
    max_norm = optim.clip_grad if optim.clip_grad > 0 else math.inf
    trainable = [p for p in model.parameters() if p.requires_grad]

    # data: uint8 batches, copied to the device ahead of the step that uses them
    it = iter(DevicePrefetcher(batches(start), dev))

    result = TrainResult(step=start, start_step=start, checkpoint=last_checkpoint)
    pending: list[_StepRecord] = []  # steps whose loss and grad norm the host has not read yet

    def report() -> None:
        """Read every pending step's results (in order), check the loss, call ``on_step``."""
        while pending:
            record = pending.pop(0)
            loss, grad_norm = record.values()
            if not math.isfinite(loss):
                raise NonFiniteLossError(record.step, record.dataset, loss)
            result.metrics = {
                "loss": loss,
                "lr": record.lr,
                "grad_norm": grad_norm,
                "clips_per_s": record.clips * world / record.seconds,
                "seconds": record.seconds,
                "dataset": record.dataset,
            }
            for cb in calls:
                cb.on_step(record.step + 1, result.metrics)

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
            video = to_model_input(batch, dev, dtype)  # uint8 -> (augmented,) normalised (B, C, T, H, W)
            target = batch["label"].to(dev, non_blocking=True)
            video, target = objective.mix(video, target, np_rng)
            sync = contextlib.nullcontext() if i == accum_steps - 1 else no_sync()
            with sync:
                with autocast(dev, prec):
                    logits = net(video, name)
                loss = objective.loss(logits.float(), target)
                scaled = loss / accum_steps
                (scaled if scaler is None else scaler.scale(scaled)).backward()
            loss_sum += loss.detach()
            clips += video.shape[0]
        step_loss = distributed.all_reduce_mean(loss_sum / accum_steps)  # () on the device
        if scaler is not None:
            scaler.unscale_(optimizer)  # clip the true gradients; inf/NaN ones make scaler.step skip
        grad_norm = torch.nn.utils.clip_grad_norm_(trainable, max_norm)
        record = _StepRecord(step, name, optimizer.param_groups[0]["lr"], clips, step_loss, grad_norm)
        if lagged:
            report()  # the previous step's results: this step's one wait, on the previous step's end
            if scaler is None:
                optimizer.found_inf = (~torch.isfinite(step_loss)).float()  # the device skips a bad update
                optimizer.grad_scale = None
        elif not math.isfinite(record.values()[0]):  # free on the CPU: stop before the update
            raise NonFiniteLossError(step, name, record.values()[0])
        if scaler is not None:
            scaler.step(optimizer)  # skips the update when the gradients are not finite
            scaler.update()
        else:
            optimizer.step()
            if lagged:
                del optimizer.found_inf, optimizer.grad_scale
        scheduler.step()
        done = step + 1
        record.seconds = time.perf_counter() - t0
        pending.append(record)

        # log
        result.step = done
        eta_due = timer_start is not None and done == start + 1 + eta_steps
        eval_due = evaluate is not None and _due(done, eval_every, steps)
        checkpoint_due = checkpoint_dir is not None and _due(done, checkpoint_every, steps)
        if not lagged or eta_due or eval_due or checkpoint_due or done == steps:
            report()  # results are read (and checked) before anything acts on them
        if done == start + 1:
            timer_start = time.perf_counter()
        elif eta_due:
            per_step = (time.perf_counter() - timer_start) / eta_steps
            for cb in calls:
                cb.on_eta(done, per_step, per_step * (steps - done))

        # evaluate
        if eval_due:
            model.eval()
            with torch.no_grad(), autocast(dev, prec):
                result.eval_metrics = dict(evaluate(model, done))
            model.train()
            for cb in calls:
                cb.on_eval(done, result.eval_metrics)

        # checkpoint
        if checkpoint_due:
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
                    scaler=scaler.state_dict() if scaler is not None else None,
                )
                for cb in calls:
                    cb.on_checkpoint(done, result.checkpoint)
            distributed.barrier()

    report()
    for cb in calls:
        cb.on_train_end(result.step)
    return result


class _StepRecord:
    """One optimiser step's results on their way to the host: ``loss`` and ``grad_norm`` are copied into a
    pinned buffer without blocking (CUDA) and read with :meth:`values`, which waits for that copy only."""

    def __init__(
        self, step: int, dataset: str, lr: float, clips: int, loss: torch.Tensor, grad_norm: torch.Tensor
    ):
        self.step, self.dataset, self.lr, self.clips = step, dataset, lr, clips
        self.seconds = math.nan  # set when the step's host work is done
        both = torch.stack([loss.detach().float(), grad_norm.detach().float()])  # (2,) on the device
        if both.is_cuda:
            self.host = torch.empty(2, dtype=torch.float32, pin_memory=True)
            self.host.copy_(both, non_blocking=True)
            self.ready: torch.cuda.Event | None = torch.cuda.Event()
            self.ready.record()
        else:
            self.host, self.ready = both, None
        self._values: tuple[float, float] | None = None

    def values(self) -> tuple[float, float]:
        """``(loss, grad_norm)`` as floats (the first call waits for this step's copy on CUDA)."""
        if self._values is None:
            if self.ready is not None:
                self.ready.synchronize()
            loss, grad_norm = self.host.tolist()
            self._values = (loss, grad_norm)
        return self._values


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", "0"))
