"""Glue shared by the training stages (pretrain, finetune, evaluate): no training logic lives here.

- Callbacks attached to :func:`tubevit.train.loop.train` on rank 0: :class:`ProgressBar` (tqdm: steps,
  loss, clips/s), :class:`LiveLogger` (dvclive: per-step ``train/loss``, ``train/lr``,
  ``train/clips_per_s``, evaluation metrics and a summary), :class:`EtaLogger` (the loop's time estimate)
  and :class:`Timer` (wall time and throughput for the stage's timing file).
- :func:`open_live`: ``Live(dir, dvcyaml=None, save_dvc_exp=False, resume=...)``. dvclive's defaults
  rewrite the root ``dvc.yaml``, create a git experiment outside ``dvc exp run`` and delete earlier logs
  (DESIGN "Training"); these arguments switch all three off.
- :func:`estimate_seconds`: the time of the configured steps, measured on one stand-in micro-batch per
  dataset before training starts (logged as "estimated time").
- Model bundles: :class:`ModelBundle`, :func:`save_model` / :func:`load_model` live in
  :mod:`tubevit.bundle` and are re-exported here under the same names.
- Launch: :func:`under_torchrun` and :func:`torchrun_command`. A stage with ``nproc > 1`` re-executes
  itself as ONE ``torchrun --standalone --nproc_per_node N -m pipelines.<stage> ... --no-flow``
  subprocess; the ranks run the plain ``run()`` and never call Prefect.
- :func:`dataset_meta`: class names, class count and sample count of a shard split (``index.json``).
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import subprocess
import sys
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipelines.common import write_json_atomic
from tubevit.bundle import BUNDLE_FORMAT, CONFIG_FILE, MODEL_FILE, ModelBundle, load_model, save_model
from tubevit.config.base import to_dict
from tubevit.config.data import DatasetConfig
from tubevit.data.shards import read_index, shard_urls
from tubevit.train.checkpoint import (
    CHECKPOINT_NAME,
    CheckpointError,
    latest_checkpoint,
)
from tubevit.train.loop import Callback, TrainResult, train

__all__ = [
    "BUNDLE_FORMAT",
    "CONFIG_FILE",
    "MODEL_FILE",
    "DatasetMeta",
    "EtaLogger",
    "LiveLogger",
    "ModelBundle",
    "ProgressBar",
    "Timer",
    "configure_threads",
    "data_fingerprint",
    "dataset_meta",
    "estimate_seconds",
    "load_model",
    "open_live",
    "save_model",
    "set_aside_mismatched_checkpoint",
    "setup_logging",
    "torchrun_command",
    "under_torchrun",
    "write_timing",
]

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------- datasets
@dataclass(frozen=True)
class DatasetMeta:
    """A shard split as the training stages see it."""

    name: str
    split: str
    urls: list[str]  # shard URLs beside the index
    index: str  # path of index.json
    total: int  # samples in the split
    classes: list[str]  # class names, index = label
    multilabel: bool

    @property
    def num_classes(self) -> int:
        return len(self.classes)


def dataset_meta(shards: str | Path, name: str, split: str, cfg: DatasetConfig) -> DatasetMeta:
    """Read ``<shards>/<split>/index.json`` of dataset ``name`` (``shards`` is ``shards/<name>``).

    Raises:
        FileNotFoundError: the index is missing (the shard stage has not run).
        ValueError: the class count differs from ``datasets.<name>.num_classes`` (when that is > 0).
    """
    index = f"{str(shards).rstrip('/')}/{split}/index.json"
    if "://" not in index and not Path(index).is_file():
        raise FileNotFoundError(f"{index}: missing (run the shard stage for {name!r} first)")
    data = read_index(index)
    classes = [str(c) for c in data["classes"]]
    if cfg.num_classes and cfg.num_classes != len(classes):
        raise ValueError(
            f"{index}: {len(classes)} classes, but datasets.{name}.num_classes is {cfg.num_classes}"
        )
    return DatasetMeta(
        name=name,
        split=split,
        urls=shard_urls(index),
        index=index,
        total=int(data["total"]),
        classes=classes,
        multilabel=cfg.multilabel,
    )


EXECUTION_KEYS = ("device", "compile", "checkpoint_every", "eval_every", "nproc")
"""Top-level keys of a pretrain/finetune config that say how a run executes, not what it learns."""
LOADER_EXECUTION_KEYS = ("workers", "cache_mb")
"""Loader keys left out of the checkpoint hash. ``cache_mb`` never changes a batch. ``workers`` changes the
sample order (each worker draws its own shards), so a resume with another worker count continues training
with a different order: still a valid run, but not bitwise the uninterrupted one."""


def hashable_config(cfg: Any) -> dict[str, Any]:
    """``to_dict(cfg)`` of a pretrain or finetune config without the execution-only keys
    (:data:`EXECUTION_KEYS`, and :data:`LOADER_EXECUTION_KEYS` in each loader), for the checkpoint hash:
    changing them keeps a checkpoint."""
    out = {k: v for k, v in to_dict(cfg).items() if k not in EXECUTION_KEYS}
    loader = out.get("loader")
    if isinstance(loader, Mapping) and "frames" in loader:  # finetune: one loader
        out["loader"] = {k: v for k, v in loader.items() if k not in LOADER_EXECUTION_KEYS}
    elif isinstance(loader, Mapping):  # pretrain: one loader per dataset
        out["loader"] = {
            name: {k: v for k, v in lc.items() if k not in LOADER_EXECUTION_KEYS}
            for name, lc in loader.items()
        }
    return out


def data_fingerprint(metas: Sequence[DatasetMeta]) -> dict[str, str]:
    """Per dataset, the SHA-256 of its split's ``index.json`` (shard names, sha256s, classes, total)."""
    out = {}
    for meta in metas:
        if "://" in meta.index and not meta.index.startswith("file://"):
            import fsspec

            with fsspec.open(meta.index, "rb") as f:
                data = f.read()
        else:
            data = Path(meta.index.removeprefix("file://")).read_bytes()
        out[meta.name] = hashlib.sha256(data).hexdigest()
    return out


# ------------------------------------------------------------------------------------------- resume
def set_aside_mismatched_checkpoint(directory: str | Path, config_hash: str) -> Path | None:
    """Move a checkpoint written under other params out of the way, so that training starts over.

    The loop refuses to resume a checkpoint whose config hash differs (DESIGN "DVC outs"). Checkpoints
    are ``persist: true``, so after ``dvc exp run -S pretrain.optim.lr=...`` the old run's checkpoint is
    still there: it is renamed to ``checkpoint.stale.pt`` (replacing an older one) with a warning, never
    resumed and never silently deleted. Returns the new path, or ``None`` when nothing was moved.
    """
    path = latest_checkpoint(Path(directory))
    if path is None:
        return None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        stored = state.get("config_hash") if isinstance(state, dict) else None
    except Exception as exc:  # a torn or foreign file: never resumable
        raise CheckpointError(f"{path}: cannot be read ({exc}); delete it to start over") from None
    if stored == config_hash:
        return None
    stale = path.with_name("checkpoint.stale.pt")
    os.replace(path, stale)
    log.warning(
        "%s was written under other params (config hash %s, now %s): moved to %s; training starts at step 0",
        path,
        str(stored)[:12],
        config_hash[:12],
        stale.name,
    )
    return stale


# ------------------------------------------------------------------------------------------- estimate
def estimate_seconds(
    model: nn.Module,
    shapes: Mapping[str, tuple[int, ...]],
    weights: Mapping[str, float],
    steps: int,
    accum_steps: int,
    device: torch.device,
) -> float:
    """Seconds for ``steps`` optimiser steps, from one timed forward + backward per dataset.

    ``shapes``: dataset -> micro-batch shape ``(B, C, T, H, W)``; the datasets are weighted by their
    mixing ``weights``. The model's gradients are cleared afterwards and no RNG it uses is consumed
    (the loop reseeds before training), so the run itself is unchanged. Data loading is not included:
    the loop's own estimate after a few steps (:class:`EtaLogger`) is the better number.
    """
    total = sum(weights.values())
    per_step = 0.0
    was_training = model.training
    model.to(device).train()
    with torch.random.fork_rng(devices=[]):
        for name, shape in shapes.items():
            x = torch.zeros(shape, device=device)
            for _ in range(2):  # the first call warms up kernels and allocations
                t0 = time.perf_counter()
                model(x, name).float().sum().backward()
                seconds = time.perf_counter() - t0
            per_step += weights[name] / total * seconds * accum_steps
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return per_step * steps


def format_seconds(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "unknown"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m{secs:02d}s" if hours else f"{minutes}m{secs:02d}s"


# ------------------------------------------------------------------------------------------- callbacks
class ProgressBar(Callback):
    """A tqdm bar over optimiser steps showing loss and clips/s (stderr)."""

    def __init__(self, desc: str, disable: bool | None = None):
        self.desc = desc
        self.disable = disable
        self.bar = None

    def on_train_start(self, step: int, steps: int) -> None:
        from tqdm import tqdm

        self.bar = tqdm(total=steps, initial=step, desc=self.desc, unit="step", disable=self.disable)

    def on_step(self, step: int, metrics: Mapping[str, Any]) -> None:
        if self.bar is not None:
            self.bar.set_postfix(
                loss=f"{metrics['loss']:.4f}", clips_s=f"{metrics['clips_per_s']:.1f}", refresh=False
            )
            self.bar.update(1)

    def on_train_end(self, step: int) -> None:
        if self.bar is not None:
            self.bar.close()


class EtaLogger(Callback):
    """Logs the loop's estimate of the time left, measured over its first steps."""

    def __init__(self, stage: str):
        self.stage = stage

    def on_eta(self, step: int, seconds_per_step: float, seconds_left: float) -> None:
        log.info(
            "%s: %.2f s/step measured; estimated time left %s (step %d)",
            self.stage,
            seconds_per_step,
            format_seconds(seconds_left),
            step,
        )


def open_live(directory: str | Path, resume: bool):
    """``dvclive.Live`` that touches nothing but ``directory``: no dvc.yaml edits, no git experiment."""
    from dvclive import Live

    return Live(str(directory), dvcyaml=None, save_dvc_exp=False, resume=resume)


class LiveLogger(Callback):
    """dvclive logging: ``train/loss``, ``train/lr``, ``train/clips_per_s``, ``train/grad_norm`` (and
    ``train/loss_<dataset>``) per optimiser step, ``eval/<metric>`` after evaluations, and the summary
    (``<dir>/metrics.json``) every ``summary_every`` steps and at the end.

    Metric TSVs are appended to; declare the folder ``cache: false`` in dvc.yaml (an appended file must
    not be a DVC-cached out).
    """

    def __init__(self, directory: str | Path, resume: bool, summary_every: int = 50):
        self.live = open_live(directory, resume)
        self.summary_every = summary_every

    def on_step(self, step: int, metrics: Mapping[str, Any]) -> None:
        live = self.live
        live.step = step
        live.log_metric("train/loss", float(metrics["loss"]))
        live.log_metric(f"train/loss_{metrics['dataset']}", float(metrics["loss"]))
        live.log_metric("train/lr", float(metrics["lr"]))
        live.log_metric("train/clips_per_s", float(metrics["clips_per_s"]))
        live.log_metric("train/grad_norm", float(metrics["grad_norm"]))
        if self.summary_every and step % self.summary_every == 0:
            live.make_summary()

    def on_eval(self, step: int, metrics: Mapping[str, Any]) -> None:
        self.live.step = step
        for key, value in metrics.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                self.live.log_metric(f"eval/{key}", float(value))

    def on_train_end(self, step: int) -> None:
        self.live.step = step
        self.live.make_summary()
        self.live.end()


class Timer(Callback):
    """Wall time, steps and clips of the run (for the stage's timing file)."""

    def __init__(self):
        self.start = time.perf_counter()
        self.first_step: int | None = None
        self.last_step = 0
        self.clips_per_s: list[float] = []
        self.step_seconds: list[float] = []

    def on_train_start(self, step: int, steps: int) -> None:
        self.start = time.perf_counter()
        self.first_step = step

    def on_step(self, step: int, metrics: Mapping[str, Any]) -> None:
        self.last_step = step
        self.clips_per_s.append(float(metrics["clips_per_s"]))
        self.step_seconds.append(float(metrics["seconds"]))

    def summary(self) -> dict[str, Any]:
        """``train_seconds``, ``steps_run``, ``seconds_per_step`` and ``clips_per_s`` (median over steps)."""
        done = self.last_step - (self.first_step or 0) if self.step_seconds else 0
        median = sorted(self.clips_per_s)[len(self.clips_per_s) // 2] if self.clips_per_s else 0.0
        train_seconds = time.perf_counter() - self.start
        return {
            "train_seconds": round(train_seconds, 3),
            "steps_run": done,
            "seconds_per_step": round(train_seconds / done, 4) if done else None,
            "clips_per_s": round(median, 2),
        }


def write_timing(path: str | Path | None, stage: str, record: Mapping[str, Any]) -> None:
    """Write the stage's timing JSON (``metrics/timing/<stage>.json``), atomically; no-op without a path.

    Timings are not deterministic: no stage depends on them and the determinism test ignores them.
    """
    if path is None:
        return
    write_json_atomic(
        path,
        {
            "stage": stage,
            "torch_threads": torch.get_num_threads(),
            "cpu_count": os.cpu_count(),
            **record,
        },
    )


def configure_threads(device: torch.device, loader_workers: int, ranks_per_node: int = 1) -> int:
    """On the CPU, give the training process the cores its loader workers leave free:
    ``max(1, cpu_count // ranks_per_node - max(loader_workers, 1))`` torch threads; returns the count
    (unchanged on CUDA). With ``workers: 0`` the training process decodes and crops itself, so one core is
    still left to that work. On a shared 2-core machine OpenMP's spinning threads were measured 3-30x
    slower than one thread when a core is busy (benchmarks/train.py), and the per-clip crop and
    normalisation 28x and 75x slower (7.8 ms and 3.0 ms per 16x32^2 clip at 2 threads, 0.27 and 0.04 ms
    at 1, under load), so the embedded default runs one compute thread. The count is a pure function of
    the machine and params, so runs on one machine stay bitwise reproducible."""
    if device.type != "cpu":
        return torch.get_num_threads()
    threads = max(1, (os.cpu_count() or 1) // max(1, ranks_per_node) - max(loader_workers, 1))
    torch.set_num_threads(threads)
    log.info("cpu: %d torch threads (%d loader workers per rank)", threads, loader_workers)
    return threads


def setup_logging() -> None:
    """INFO logs of ``pipelines`` and ``tubevit`` on stderr. Importing Prefect already puts its console
    handler on the root logger (at WARNING), which makes ``logging.basicConfig`` a no-op; the levels of
    our loggers are therefore set explicitly."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for name in ("pipelines", "tubevit"):
        logging.getLogger(name).setLevel(logging.INFO)


# ------------------------------------------------------------------------------------------- launch
def under_torchrun() -> bool:
    """Whether this process is a torchrun rank (torchrun sets ``WORLD_SIZE`` and ``LOCAL_RANK``)."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def torchrun_command(module: str, argv: Sequence[str], nproc: int) -> list[str]:
    """The ONE subprocess of a multi-process stage: ``python -m torch.distributed.run --standalone
    --nproc_per_node <nproc> -m <module> <argv> --no-flow``. Multi-node runs call torchrun themselves
    with ``--nnodes/--rdzv-endpoint`` and the same module arguments."""
    args = list(argv)
    if "--no-flow" not in args:
        args.append("--no-flow")
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        module,
        *args,
    ]


def run_torchrun(module: str, argv: Sequence[str], nproc: int) -> int:
    """Run :func:`torchrun_command` (no shell) and return its exit status."""
    cmd = torchrun_command(module, argv, nproc)
    log.info("launching %d ranks: %s", nproc, " ".join(cmd))
    return subprocess.run(cmd, check=False).returncode


def checkpoint_path(directory: str | Path) -> Path:
    return Path(directory) / CHECKPOINT_NAME


def log_json(prefix: str, obj: Any) -> None:
    log.info("%s %s", prefix, json.dumps(obj, sort_keys=True))


def train_section(
    cfg: Any,
    model: nn.Module,
    batches: Any,
    objectives: Mapping[str, Any],
    *,
    device: torch.device,
    checkpoints: Path,
    chash: str,
    evaluate: Any = None,
    callbacks: Sequence[Callback] = (),
) -> TrainResult:
    """Run :func:`tubevit.train.loop.train` with the settings of one training section.

    ``cfg`` is a :class:`~tubevit.config.train.PretrainConfig` or
    :class:`~tubevit.config.train.FinetuneConfig`: both carry optim, steps, accum_steps, compile, seed,
    checkpoint_every and eval_every, which pretrain and finetune pass on identically.
    """
    return train(
        model,
        batches,
        objectives,
        cfg.optim,
        cfg.steps,
        accum_steps=cfg.accum_steps,
        device=device,
        compile=cfg.compile,
        seed=cfg.seed,
        checkpoint_dir=checkpoints,
        checkpoint_every=cfg.checkpoint_every,
        config_hash=chash,
        evaluate=evaluate,
        eval_every=cfg.eval_every,
        callbacks=callbacks,
    )
