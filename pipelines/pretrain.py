"""Stage ``pretrain``: joint image + video pretraining with one classifier head per dataset.

    python -m pipelines.pretrain --shards shards --out models/pretrain --checkpoints checkpoints/pretrain \
        --live dvclive/pretrain --timing metrics/timing/pretrain.json --params params.yaml

Reads ``params.model`` and ``params.pretrain`` (datasets with mixing weights, a loader per dataset,
optimiser, steps, ...) and ``params.datasets.<ds>.multilabel`` / ``num_classes``; the shards of each mixed
dataset's ``train`` split come from ``<shards>/<ds>/train/``.

- Joint batches: optimiser step k trains on the dataset drawn from ``Random(pretrain.seed + k)`` by the
  mixing weights (:class:`tubevit.data.shards.JointBatches`); its loss uses that dataset's head only.
- Resumable: ``<checkpoints>/checkpoint.pt`` every ``checkpoint_every`` steps (atomic). A rerun resumes
  model, optimiser, schedule, RNG and data position; a checkpoint written under other params (config
  hash) is moved aside to ``checkpoint.stale.pt`` and training starts over.
- Outputs: ``<out>/model.pt`` (bare state dict, ``torch.load(..., weights_only=True)``) and
  ``<out>/config.json`` (model config with the tube specs, heads with class counts, class names, input
  shapes); dvclive logs in ``--live`` (rank 0); throughput and wall time in ``--timing``.
- ``pretrain.nproc > 1``: the stage re-executes itself as one ``torchrun`` subprocess (DDP); the ranks
  run :func:`run` without Prefect.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from pipelines import training
from pipelines.common import add_no_flow_flag, publish_result, run_name, usage_examples
from pipelines.params import Params, load_params_or_exit
from tubevit.config.data import LoaderConfig
from tubevit.config.model import build_model
from tubevit.data.shards import JointBatches, eval_loader, step_counts, train_loader
from tubevit.evaluate import aggregate, multilabel_metrics, predict, topk_accuracy
from tubevit.train import distributed
from tubevit.train.checkpoint import config_hash, latest_checkpoint
from tubevit.train.loop import Callback
from tubevit.train.losses import build_objective

__all__ = ["main", "make_batches", "pretrain_flow", "run", "run_config_hash"]

log = logging.getLogger(__name__)

STAGE = "pretrain"


def _join(base: str | Path, name: str) -> str:
    """``base/name`` as text: a URL such as ``s3://bucket/shards`` keeps its ``//`` (pathlib folds it)."""
    return f"{str(base).rstrip('/')}/{name}"


def run_config_hash(params: Params, fingerprints: dict[str, str]) -> str:
    """What a resumable checkpoint must match: model and pretrain params and the training data.

    Execution-only keys (:data:`training.EXECUTION_KEYS`: device, compile, checkpoint_every, eval_every,
    nproc, and each loader's workers and cache_mb) do not change the trained weights on one device and are
    left out, so changing them keeps the checkpoint.
    """
    pcfg = training.hashable_config(params.pretrain)
    classes = {name: params.datasets[name].multilabel for name in params.pretrain.datasets}
    return config_hash(params.model, pcfg, classes, fingerprints)


def epoch_batches(meta: training.DatasetMeta, lcfg: LoaderConfig, world_size: int) -> int:
    """Batches per rank in one pass over the split: ``total // (batch_size * world_size)``, at least 1."""
    return max(1, meta.total // (lcfg.batch_size * world_size))


def make_batches(
    metas: dict[str, training.DatasetMeta],
    loaders: dict[str, LoaderConfig],
    weights: dict[str, float],
    *,
    seed: int,
    accum_steps: int,
    rank: int,
    world_size: int,
):
    """The loop's batch factory: ``batches(start_step)`` -> the joint micro-batches from ``start_step`` on.

    A pure function of ``start_step``: each dataset's loader starts at the batch position that the steps
    before ``start_step`` consumed (``step_counts`` x ``accum_steps``), in the epoch it falls in.
    """

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
    metas: dict[str, training.DatasetMeta],
    loaders: dict[str, LoaderConfig],
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


def run(
    params: Params,
    shards: str | Path,
    out: Path,
    checkpoints: Path | None,
    live: Path | None = None,
    timing: Path | None = None,
    *,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
) -> dict[str, Any]:
    """Pretrain ``params.model`` on ``params.pretrain.datasets`` and write the model bundle to ``out``.

    Args:
        params: the validated params file.
        shards: the folder holding ``<ds>/train/index.json`` for every mixed dataset (``shards/``).
        out: the model folder (``models/pretrain``): ``model.pt`` and ``config.json``.
        checkpoints: the checkpoint folder (resumed from when it holds a checkpoint of the same config).
        live: dvclive folder (rank 0); ``None``: no dvclive logging.
        timing: the timing JSON to write (rank 0); ``None``: none.
        callbacks: extra loop callbacks (rank 0).
        progress: show the tqdm bar.

    Returns the summary (steps, final loss, seconds, clips/s), also what the timing file holds.

    Raises:
        NonFiniteLossError: a step's loss is NaN or infinite (the message names the step).
    """
    t_start = time.perf_counter()
    pcfg = params.pretrain
    info = distributed.init_distributed(pcfg.device)
    weights = dict(pcfg.datasets)
    training.configure_threads(
        info.device,
        max(pcfg.loader[name].workers for name in weights),
        int(os.environ.get("LOCAL_WORLD_SIZE", "1")),
    )
    metas = {
        name: training.dataset_meta(_join(shards, name), name, "train", params.dataset(name))
        for name in weights
    }
    metas_val = {}
    for name in weights:
        with contextlib.suppress(FileNotFoundError):
            metas_val[name] = training.dataset_meta(_join(shards, name), name, "val", params.dataset(name))
    heads = {name: meta.num_classes for name, meta in metas.items()}
    chash = run_config_hash(params, training.data_fingerprint(list(metas.values())))

    # model: seeded, the same on every rank
    torch.manual_seed(pcfg.seed)
    model = build_model(params.model, heads)
    n_params = sum(p.numel() for p in model.parameters())
    log.info(
        "pretrain: %s with tubes %s, %d parameters, heads %s, %d steps",
        params.model.variant,
        params.model.tubes if isinstance(params.model.tubes, str) else "custom",
        n_params,
        heads,
        pcfg.steps,
    )

    # resume only from a checkpoint of this config
    resuming = False
    if checkpoints is not None:
        if info.is_main:
            training.set_aside_mismatched_checkpoint(checkpoints, chash)
        distributed.barrier()
        resuming = latest_checkpoint(checkpoints) is not None

    calls: list[Callback] = []
    timer = training.Timer()
    if info.is_main:
        shapes = {
            name: (
                pcfg.loader[name].batch_size,
                3,
                pcfg.loader[name].frames,
                pcfg.loader[name].size,
                pcfg.loader[name].size,
            )
            for name in weights
        }
        estimate = training.estimate_seconds(
            model, shapes, weights, pcfg.steps, pcfg.accum_steps, info.device
        )
        log.info(
            "pretrain: estimated time for %d steps: %s (compute only, measured on one micro-batch)",
            pcfg.steps,
            training.format_seconds(estimate),
        )
        calls = [timer, training.EtaLogger(STAGE)]
        if progress:
            calls.append(training.ProgressBar(STAGE))
        if live is not None:
            calls.append(training.LiveLogger(live, resume=resuming))
        calls.extend(callbacks)

    objectives = {
        name: build_objective(
            meta.num_classes,
            multilabel=meta.multilabel,
            label_smoothing=pcfg.label_smoothing,
            mixup=0.0 if meta.multilabel else pcfg.mixup,
        )
        for name, meta in metas.items()
    }
    batches = make_batches(
        metas,
        dict(pcfg.loader),
        weights,
        seed=pcfg.seed,
        accum_steps=pcfg.accum_steps,
        rank=info.rank,
        world_size=info.world_size,
    )
    evaluate = None
    if pcfg.eval_every > 0 and metas_val:
        evaluate = make_validation(metas_val, dict(pcfg.loader), info.device, params.evaluate.batch_size)
    result = training.train_section(
        pcfg,
        model,
        batches,
        objectives,
        device=info.device,
        checkpoints=checkpoints,
        chash=chash,
        evaluate=evaluate,
        callbacks=calls,
    )

    summary: dict[str, Any] = {
        "steps": result.step,
        "start_step": result.start_step,
        "final_loss": result.metrics.get("loss"),
        "parameters": n_params,
        "heads": heads,
    }
    if info.is_main:
        model.cpu()
        training.save_model(
            out,
            training.ModelBundle(
                model=model,
                config=params.model,
                heads=heads,
                classes={name: meta.classes for name, meta in metas.items()},
                inputs={
                    name: {"frames": pcfg.loader[name].frames, "size": pcfg.loader[name].size}
                    for name in weights
                },
                multilabel={name: meta.multilabel for name, meta in metas.items()},
                extra={"stage": STAGE, "steps": pcfg.steps, "datasets": weights},
            ),
        )
        summary.update(timer.summary())
        summary["stage_seconds"] = round(time.perf_counter() - t_start, 3)
        summary.update({"device": str(info.device), "nproc": info.world_size})
        training.write_timing(timing, STAGE, summary)
        log.info("pretrain: wrote %s; %s", out, json.dumps(summary, sort_keys=True))
    distributed.barrier()
    return summary


@task(name="pretrain-train", cache_policy=NO_CACHE)
def _train_task(params: Params, paths: dict[str, Path | None]) -> dict[str, Any]:
    return run(params, **paths)


@task(name="pretrain-torchrun", cache_policy=NO_CACHE)
def _torchrun_task(argv: list[str], nproc: int) -> int:
    return training.run_torchrun("pipelines.pretrain", argv, nproc)


@flow(name="pretrain", flow_run_name=run_name("pretrain", None), retries=1, validate_parameters=False)
def pretrain_flow(params: Params, paths: dict[str, Path | None], argv: list[str]) -> dict[str, Any] | int:
    """The pretrain stage as a Prefect flow: one task that trains in-process (``nproc == 1``) or launches
    ONE torchrun subprocess (``nproc > 1``)."""
    if params.pretrain.nproc > 1:
        rc = _torchrun_task(argv, params.pretrain.nproc)
        if rc != 0:
            raise RuntimeError(f"pretrain: torchrun exited with status {rc}")
        return rc
    return publish_result("pretrain", None, _train_task(params, paths))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.pretrain",
        description=__doc__.split("\n")[0],
        epilog=usage_examples("pretrain"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--shards",
        type=str,
        required=True,
        help="folder or URL of <ds>/train/index.json (shards/, s3://bucket/shards)",
    )
    parser.add_argument("--out", type=Path, required=True, help="model folder (models/pretrain)")
    parser.add_argument(
        "--checkpoints", type=Path, required=True, help="checkpoint folder (checkpoints/pretrain)"
    )
    parser.add_argument("--live", type=Path, default=None, help="dvclive folder (dvclive/pretrain)")
    parser.add_argument(
        "--timing", type=Path, default=None, help="timing JSON (metrics/timing/pretrain.json)"
    )
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="the params file")
    add_no_flow_flag(parser)
    parser.add_argument("--no-progress", action="store_true", help="no tqdm bar")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    training.setup_logging()
    params = load_params_or_exit(args.params)
    paths = {
        "shards": args.shards,
        "out": args.out,
        "checkpoints": args.checkpoints,
        "live": args.live,
        "timing": args.timing,
    }
    if training.under_torchrun() or args.no_flow:
        if params.pretrain.nproc > 1 and not training.under_torchrun():
            return training.run_torchrun("pipelines.pretrain", argv, params.pretrain.nproc)
        run(params, **paths, progress=not args.no_progress)
        distributed.cleanup()
        return 0
    pretrain_flow(params, paths, argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
