"""The one module the training stages (pretrain, finetune, evaluate) share; no stage imports another.

Each stage's ``run()`` reads top to bottom: params -> data -> model -> train -> save -> report, and takes
every shared piece from here:
- Process: :class:`Stage` joins torchrun (rank, device), sets the CPU threads, times the stage, and ends it
  with :meth:`Stage.report` (the timing file and the log line). :func:`configure_threads`,
  :func:`setup_logging`.
- Data: :func:`join_url`, :func:`dataset_meta` (a shard split's ``index.json``), :func:`data_fingerprint`,
  :func:`make_batches` (the loop's batch factory: joint, resumable) and :func:`make_validation`
  (in-training evaluation).
- Model: :func:`pretrain_model` (seeded; ``init_from`` image-ViT or TubeViT weights, image-to-video
  scaling from ``tubes_from``, paper §3.6). Model bundles: :class:`ModelBundle`, :func:`save_model` /
  :func:`load_model` live in :mod:`tubevit.bundle` and are re-exported here under the same names.
- Train: :meth:`Stage.train` sets a mismatched checkpoint aside, attaches the callbacks on rank 0
  (:class:`ProgressBar` (tqdm), :class:`LiveLogger` (dvclive), :class:`EtaLogger`, :class:`Timer`, the
  stage's own) after logging :func:`estimate_seconds`, and runs :func:`tubevit.train.loop.train` with the
  section's settings (:func:`train_section`). :func:`open_live`: ``Live(dir, dvcyaml=None,
  save_dvc_exp=False, resume=...)``: dvclive's defaults rewrite the root ``dvc.yaml``, create a git
  experiment outside ``dvc exp run`` and delete earlier logs (docs/design.md "Training").
- Launch: :func:`training_flow` (the Prefect flow of a training stage: one task that trains in-process, or
  ONE ``torchrun --standalone --nproc_per_node N -m pipelines.<stage> ... --no-flow`` subprocess when
  ``nproc > 1``; the ranks run the plain ``run()`` and never call Prefect) and :func:`launch` (a stage's
  ``main()`` after parsing). :func:`under_torchrun`, :func:`torchrun_command`.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import logging
import math
import os
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipelines.common import add_no_flow_flag, publish_result, run_name, usage_examples, write_json_atomic
from tubevit.bundle import BUNDLE_FORMAT, CONFIG_FILE, MODEL_FILE, ModelBundle, load_model, save_model
from tubevit.config.base import to_dict
from tubevit.config.data import DatasetConfig, LoaderConfig
from tubevit.config.model import ModelConfig, build_model
from tubevit.config.train import PretrainConfig
from tubevit.data.augment import resolve_augment_on
from tubevit.data.shards import JointBatches, eval_loader, read_index, shard_urls, step_counts, train_loader
from tubevit.evaluate import aggregate, multilabel_metrics, predict, topk_accuracy
from tubevit.model.convert import load_initial_weights, read_state_dict, scale_image_to_video
from tubevit.model.tubevit import TubeViT
from tubevit.train import distributed
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
    "ModelCallback",
    "ProgressBar",
    "RunOutputs",
    "Stage",
    "Timer",
    "add_training_arguments",
    "check_start_weights",
    "configure_threads",
    "data_fingerprint",
    "dataset_meta",
    "estimate_seconds",
    "join_url",
    "launch",
    "load_model",
    "make_batches",
    "make_validation",
    "open_live",
    "pretrain_model",
    "save_model",
    "set_aside_mismatched_checkpoint",
    "setup_logging",
    "stage_parser",
    "torchrun_command",
    "training_flow",
    "training_paths",
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


EXECUTION_KEYS = ("device", "compile", "grad_checkpointing", "checkpoint_every", "eval_every", "nproc")
"""Top-level keys of a pretrain/finetune config that say how a run executes, not what it learns
(``precision`` changes the numbers and stays in the hash)."""
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

    The loop refuses to resume a checkpoint whose config hash differs (docs/design.md "DVC outs"). Checkpoints
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
    ``max(1, cpu_count // ranks_per_node - loader_workers)`` torch threads, or ``OMP_NUM_THREADS`` when the
    environment sets it; returns the count (unchanged on CUDA).

    With ``workers: 0`` (the embedded default) the process decodes each video once into its cache and then
    spends its steps in the model's matmuls, so it takes every core: on an idle 2-core machine the embedded
    ``pretrain`` step measured 34-37 ms at 2 threads against 43-47 ms at 1 (benchmarks/stage_speed.py).
    OpenMP's threads wait for each other at every parallel operation, so when another process keeps a
    core busy, 2 threads ran 3-6x slower than 1 (0.24 against 0.045 s/step; ``OMP_WAIT_POLICY=PASSIVE``
    avoided that but cost the gain on an idle machine): on a busy machine run with ``OMP_NUM_THREADS=1``.
    The count is a pure function of the machine, params and environment, so runs stay bitwise
    reproducible (the thread count changes float reductions, hence the last bits of the metrics).

    Raises:
        ValueError: ``OMP_NUM_THREADS`` is set but not a positive integer (named with its value).
    """
    if device.type != "cpu":
        return torch.get_num_threads()
    explicit = os.environ.get("OMP_NUM_THREADS")
    if explicit is not None:
        if not explicit.strip().isdigit() or int(explicit) < 1:
            raise ValueError(f"OMP_NUM_THREADS: must be a positive integer, got {explicit!r}")
        threads = int(explicit)
    else:
        threads = max(1, (os.cpu_count() or 1) // max(1, ranks_per_node) - max(loader_workers, 0))
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
    :class:`~tubevit.config.train.FinetuneConfig`: both carry optim, steps, accum_steps, compile,
    precision, grad_checkpointing, seed,
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
        precision=cfg.precision,
        grad_checkpointing=cfg.grad_checkpointing,
        seed=cfg.seed,
        checkpoint_dir=checkpoints,
        checkpoint_every=cfg.checkpoint_every,
        config_hash=chash,
        evaluate=evaluate,
        eval_every=cfg.eval_every,
        callbacks=callbacks,
    )


# ------------------------------------------------------------------------------------------- data factory
def join_url(base: str | Path, name: str) -> str:
    """``base/name`` as text: a URL such as ``s3://bucket/shards`` keeps its ``//`` (pathlib folds it)."""
    return f"{str(base).rstrip('/')}/{name}"


def epoch_batches(meta: DatasetMeta, lcfg: LoaderConfig, world_size: int) -> int:
    """Batches per rank in one pass over the split: ``total // (batch_size * world_size)``, at least 1."""
    return max(1, meta.total // (lcfg.batch_size * world_size))


def make_batches(
    metas: Mapping[str, DatasetMeta],
    loaders: Mapping[str, LoaderConfig],
    weights: Mapping[str, float],
    *,
    seed: int,
    accum_steps: int,
    rank: int,
    world_size: int,
    device: torch.device,
):
    """The loop's batch factory: ``batches(start_step)`` -> the joint micro-batches from ``start_step`` on.

    A pure function of ``start_step``: each dataset's loader starts at the batch position that the steps
    before ``start_step`` consumed (``step_counts`` x ``accum_steps``), in the epoch it falls in. Each
    loader's ``augment_on: auto`` is resolved for the training ``device``
    (:func:`tubevit.data.augment.resolve_augment_on`: ``device`` on CUDA and, on the CPU, with
    ``workers: 0``); the batches are uint8 and the
    loop normalises them on the device.
    """
    weights = dict(weights)
    loaders = {
        name: dataclasses.replace(lcfg, augment_on=resolve_augment_on(lcfg.augment_on, device, lcfg.workers))
        for name, lcfg in loaders.items()
    }

    def batches(start_step: int) -> JointBatches:
        counts = step_counts(weights, seed, start_step)
        per_dataset = {}
        for name, meta in metas.items():
            lcfg = loaders[name]
            per_epoch = epoch_batches(meta, lcfg, world_size)
            consumed = counts[name] * accum_steps
            per_dataset[name] = train_loader(
                meta.urls,
                lcfg,
                dataset=name,
                num_classes=meta.num_classes,
                multilabel=meta.multilabel,
                seed=seed,
                epoch_batches=per_epoch,
                rank=rank,
                world_size=world_size,
                epoch=consumed // per_epoch,
                start_batch=consumed % per_epoch,
            )
        return JointBatches(per_dataset, weights, seed, start_step=start_step, batches_per_step=accum_steps)

    return batches


def make_validation(
    metas: Mapping[str, DatasetMeta],
    loaders: Mapping[str, LoaderConfig],
    device: torch.device,
    batch_size: int,
):
    """``evaluate(model, step)`` for in-training evaluation (``eval_every > 0``): one centred view per
    validation clip; ``<ds>/top1`` (single-label) or ``<ds>/mAP`` (multi-label)."""

    def evaluate(model, step: int) -> dict[str, float]:
        out = {}
        for name, meta in metas.items():
            lcfg = LoaderConfig(
                frames=loaders[name].frames, size=loaders[name].size, batch_size=batch_size, randaugment=False
            )
            loader = eval_loader(
                meta.urls,
                lcfg,
                dataset=name,
                num_classes=meta.num_classes,
                multilabel=meta.multilabel,
                rank=distributed.rank(),
                world_size=distributed.world_size(),
            )
            preds = predict(model, loader, name, device=device)
            scores = aggregate(preds.logits, meta.multilabel)
            if meta.multilabel:
                out[f"{name}/mAP"] = multilabel_metrics(scores, preds.labels)["mAP"]
            else:
                out[f"{name}/top1"] = topk_accuracy(scores, preds.labels, (1,))[1]
        return out

    return evaluate


# ------------------------------------------------------------------------------------------- model factory
def read_start_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict ``pretrain.init_from`` names: a model bundle folder (``config.json`` + ``model.pt``)
    or a weights file (timm or torchvision image ViT, or a TubeViT state dict; ``.safetensors`` or a torch
    file read with ``weights_only=True``).

    Raises:
        FileNotFoundError: no such file or folder (the message names ``pretrain.init_from``).
    """
    path = Path(path)
    if path.is_dir():
        return load_model(path).model.state_dict()
    if not path.is_file():
        raise FileNotFoundError(f"pretrain.init_from: {path}: no such weights file or model folder")
    return read_state_dict(path)


def check_start_weights(pcfg: PretrainConfig, weights: Path | None) -> None:
    """Refuse an ``init_from`` / ``tubes_from`` outside ``weights``, the folder dvc.yaml declares as the
    pretrain stage's dependency (so that DVC reruns the stage when those weights change). ``weights``
    ``None`` (a run outside DVC) checks nothing.

    Raises:
        ValueError: names the key, the path and the folder.
    """
    if weights is None:
        return
    root = Path(os.path.normpath(Path(weights).absolute()))
    for key in ("init_from", "tubes_from"):
        value = getattr(pcfg, key)
        if value is None:
            continue
        path = Path(os.path.normpath(Path(value).absolute()))
        if path != root and root not in path.parents:
            raise ValueError(
                f"pretrain.{key}: {value} is outside {weights}/, the folder dvc.yaml declares as this "
                f"stage's weights dependency; put it under {weights}/"
            )


def pretrain_model(model_cfg: ModelConfig, pcfg: PretrainConfig, heads: Mapping[str, int]) -> TubeViT:
    """The model a pretrain run starts from, seeded by ``pcfg.seed`` (the same on every rank).

    - ``init_from``: weights loaded with :func:`tubevit.model.convert.load_initial_weights` (an image ViT
      in timm or torchvision layout: blocks, norm and the patch embedding copied, 3D tubes inflated from
      it; or TubeViT weights).
    - ``scale_from_layer`` s > 0: image-to-video scaling (paper §3.6, Eq. 8) with the tubes of the
      ``tubes_from`` bundle: :func:`tubevit.model.convert.scale_image_to_video` freezes the tubes and the
      blocks before ``freeze_before`` (default s) and adds the gate into block s.
    """
    torch.manual_seed(pcfg.seed)
    model = build_model(model_cfg, heads)
    if pcfg.init_from is not None:
        report = load_initial_weights(model, read_start_weights(pcfg.init_from))
        log.info(
            "pretrain.init_from %s: %d copied, %d inflated, %d kept at init",
            pcfg.init_from,
            len(report.copied),
            len(report.inflated),
            len(report.kept_init),
        )
    if pcfg.scale_from_layer > 0:
        tubes_from = Path(str(pcfg.tubes_from))
        if not (tubes_from / CONFIG_FILE).is_file():
            raise FileNotFoundError(
                f"pretrain.tubes_from: {tubes_from}: not a model folder (no {CONFIG_FILE}); it names the "
                "smaller trained TubeViT whose tubes are taken"
            )
        scale_image_to_video(
            load_model(tubes_from).model,
            model,
            pcfg.scale_from_layer,
            freeze_before=pcfg.freeze_before,
            width_map=pcfg.width_map,
            gated=pcfg.gated,
            tube_proj_grad=pcfg.tube_proj_grad,
        )
    return model


# ------------------------------------------------------------------------------------------- the stage
class ModelCallback(Callback):
    """A stage callback that also sees the model right before training (:meth:`Stage.train`)."""

    def on_model(self, model: nn.Module) -> None:
        """The model as training starts (after resume is decided, before the first step)."""


@dataclass(frozen=True)
class RunOutputs:
    """Where a training run writes, and what watches it (the arguments every training ``run()`` takes)."""

    out: Path  # the model folder
    checkpoints: Path | None  # resumable checkpoints; None: none
    live: Path | None = None  # dvclive folder (rank 0); None: no dvclive logging
    timing: Path | None = None  # timing JSON (rank 0); None: none
    callbacks: Sequence[Callback] = ()  # extra loop callbacks (rank 0)
    progress: bool = True  # the tqdm bar


class Stage:
    """One training-stage process: torchrun rank and device, CPU threads, the timer and the report.

    Args:
        name: the stage's name in logs and the timing file (``pretrain``, ``finetune-ssv2``, ...).
        device: ``auto``, ``cpu`` or ``cuda`` (the section's ``device``).
        loader_workers: loader workers per rank, for :func:`configure_threads`; ``None`` leaves torch's
            thread count alone (evaluation).
        logger: the stage module's logger (the estimate and the report are logged there).
    """

    def __init__(
        self, name: str, device: str, loader_workers: int | None, logger: logging.Logger | None = None
    ):
        self.name = name
        self.log = logger or log
        self.started = time.perf_counter()
        self.info = distributed.init_distributed(device)
        self.device = self.info.device
        self.is_main = self.info.is_main
        if loader_workers is not None:
            configure_threads(self.device, loader_workers, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
        self.timer = Timer()
        self.trained = False  # set by train(): the report then includes throughput, device and ranks

    def batches(
        self,
        cfg: Any,
        metas: Mapping[str, DatasetMeta],
        loaders: Mapping[str, LoaderConfig],
        weights: Mapping[str, float],
    ):
        """:func:`make_batches` for this process (rank, world size, device) with the section ``cfg``'s
        seed and ``accum_steps``."""
        return make_batches(
            metas,
            loaders,
            weights,
            seed=cfg.seed,
            accum_steps=cfg.accum_steps,
            rank=self.info.rank,
            world_size=self.info.world_size,
            device=self.device,
        )

    def train(
        self,
        cfg: Any,
        model: nn.Module,
        batches: Any,
        objectives: Mapping[str, Any],
        io: RunOutputs,
        *,
        shapes: Mapping[str, tuple[int, ...]],
        weights: Mapping[str, float],
        chash: str,
        evaluate: Any = None,
    ) -> TrainResult:
        """Resume only from a checkpoint of ``chash`` (another one is set aside), attach the callbacks on
        rank 0 after logging the time estimate (``shapes``: dataset -> micro-batch shape, ``weights``:
        mixing weights), and train with ``cfg``'s settings (:func:`train_section`)."""
        self.trained = True
        checkpoints = io.checkpoints
        resuming = False
        if checkpoints is not None:
            if self.is_main:
                set_aside_mismatched_checkpoint(checkpoints, chash)
            distributed.barrier()
            resuming = latest_checkpoint(checkpoints) is not None
        calls: list[Callback] = []
        if self.is_main:
            estimate = estimate_seconds(model, shapes, weights, cfg.steps, cfg.accum_steps, self.device)
            self.log.info(
                "%s: estimated time for %d steps: %s (compute only, measured on one micro-batch)",
                self.name,
                cfg.steps,
                format_seconds(estimate),
            )
            calls = [self.timer, EtaLogger(self.name)]
            if io.progress:
                calls.append(ProgressBar(self.name))
            if io.live is not None:
                calls.append(LiveLogger(io.live, resume=resuming))
            calls.extend(io.callbacks)
            for cb in calls:
                if isinstance(cb, ModelCallback):
                    cb.on_model(model)
        return train_section(
            cfg,
            model,
            batches,
            objectives,
            device=self.device,
            checkpoints=checkpoints,
            chash=chash,
            evaluate=evaluate,
            callbacks=calls,
        )

    def save(
        self,
        io: RunOutputs,
        result: TrainResult,
        model: TubeViT,
        config: ModelConfig,
        metas: Mapping[str, DatasetMeta],
        inputs: Mapping[str, dict[str, int]],
        extra: Mapping[str, Any],
    ) -> dict[str, Any]:
        """Write the model bundle to ``io.out`` (rank 0): one head per trained dataset of ``metas`` (its
        classes and multilabel flag), ``inputs`` (dataset -> ``{"frames", "size"}``) and ``extra``.
        Returns the run's summary (steps, start step, final loss, parameters, heads)."""
        heads = {name: meta.num_classes for name, meta in metas.items()}
        if self.is_main:
            model.cpu()
            bundle = ModelBundle(
                model=model,
                config=config,
                heads=heads,
                classes={name: meta.classes for name, meta in metas.items()},
                inputs=dict(inputs),
                multilabel={name: meta.multilabel for name, meta in metas.items()},
                extra=dict(extra),
            )
            save_model(io.out, bundle)
        return {
            "steps": result.step,
            "start_step": result.start_step,
            "final_loss": result.metrics.get("loss"),
            "parameters": sum(p.numel() for p in model.parameters()),
            "heads": heads,
        }

    def report(self, timing: Path | None, summary: dict[str, Any], what: str) -> dict[str, Any]:
        """Rank 0: add the stage's wall time (and for a training run the timer's throughput, device and
        ranks) to ``summary``, write the timing file and log ``<stage>: <what>; <summary>``. Every rank
        waits for rank 0. Returns ``summary``."""
        if self.is_main:
            if self.trained:
                summary.update(self.timer.summary())
            summary["stage_seconds"] = round(time.perf_counter() - self.started, 3)
            if self.trained:
                summary.update({"device": str(self.device), "nproc": self.info.world_size})
            write_timing(timing, self.name, summary)
            self.log.info("%s: %s; %s", self.name, what, json.dumps(summary, sort_keys=True))
        distributed.barrier()
        return summary


# ------------------------------------------------------------------------------------------- launch
def training_flow(name: str, module: str, run: Callable[..., Any], dataset_param: str | None = None):
    """The Prefect flow ``name`` of a training stage: with ``nproc == 1`` one task that calls
    ``run(*args, **kwargs)`` in-process and publishes its summary as the stage's result artifact; with
    ``nproc > 1`` one task that launches ONE torchrun subprocess of ``module`` with ``argv`` (the ranks run
    ``run`` without Prefect). Flow runs are named ``<name>[-<dataset>]-<UTC time>`` (``dataset_param``:
    ``"dataset"`` for a stage per dataset, ``None`` otherwise) and retried once."""
    from prefect import flow, task
    from prefect.cache_policies import NO_CACHE

    @task(name=f"{name}-train", cache_policy=NO_CACHE)
    def train_task(args: tuple, kwargs: dict[str, Any]) -> Any:
        return run(*args, **kwargs)

    @task(name=f"{name}-torchrun", cache_policy=NO_CACHE)
    def torchrun_task(argv: list[str], nproc: int) -> int:
        return run_torchrun(module, argv, nproc)

    @flow(name=name, flow_run_name=run_name(name, dataset_param), retries=1, validate_parameters=False)
    def stage_flow(
        nproc: int, argv: list[str], dataset: str | None, args: tuple, kwargs: dict[str, Any]
    ) -> Any:
        if nproc > 1:
            rc = torchrun_task(argv, nproc)
            if rc != 0:
                raise RuntimeError(f"{name}: torchrun exited with status {rc}")
            return rc
        return publish_result(name, dataset, train_task(args, kwargs))

    return stage_flow


def stage_parser(module: str, doc: str, dataset_help: str | None = None) -> argparse.ArgumentParser:
    """The argument parser of ``python -m <module>``: the first line of ``doc`` as description, the
    stage's usage examples as epilog, a positional ``dataset`` when ``dataset_help`` is given, and
    ``--params``; add the stage's paths next."""
    parser = argparse.ArgumentParser(
        prog=f"python -m {module}",
        description=doc.split("\n")[0],
        epilog=usage_examples(module.rsplit(".", 1)[-1]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if dataset_help is not None:
        parser.add_argument("dataset", help=dataset_help)
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="the params file")
    return parser


def add_training_arguments(parser: argparse.ArgumentParser, shards: str, out: str, live: str) -> None:
    """The paths of a training stage (each appears once, in dvc.yaml): ``--shards`` (help ``shards``),
    ``--out models/<out>``, ``--checkpoints checkpoints/<out>``, ``--live dvclive/<live>``, ``--timing
    metrics/timing/<live>.json``; and ``--no-flow``, ``--no-progress``."""
    parser.add_argument("--shards", type=str, required=True, help=shards)
    parser.add_argument("--out", type=Path, required=True, help=f"model folder (models/{out})")
    parser.add_argument(
        "--checkpoints", type=Path, required=True, help=f"checkpoint folder (checkpoints/{out})"
    )
    parser.add_argument("--live", type=Path, default=None, help=f"dvclive folder (dvclive/{live})")
    parser.add_argument("--timing", type=Path, default=None, help=f"timing JSON (metrics/timing/{live}.json)")
    add_no_flow_flag(parser)
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bar")


def training_paths(args: argparse.Namespace) -> dict[str, Any]:
    """``run()``'s path arguments from :func:`add_training_arguments`' options."""
    return {
        "shards": args.shards,
        "out": args.out,
        "checkpoints": args.checkpoints,
        "live": args.live,
        "timing": args.timing,
    }


def launch(
    module: str,
    argv: Sequence[str],
    nproc: int,
    no_flow: bool,
    run: Callable[[], Any],
    flow: Callable[[], Any],
) -> int:
    """A training stage's ``main()`` after parsing: under torchrun or with ``--no-flow`` call ``run()``
    (re-executing as ONE torchrun subprocess when ``nproc > 1`` and not yet under torchrun); else run the
    stage's Prefect ``flow()``. Returns the exit status."""
    if under_torchrun() or no_flow:
        if nproc > 1 and not under_torchrun():
            return run_torchrun(module, argv, nproc)
        run()
        distributed.cleanup()
        return 0
    flow()
    return 0
