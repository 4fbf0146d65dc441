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
- ``pretrain.init_from`` starts the model from image-ViT weights (timm or torchvision layout) or a TubeViT
  (weights file or model folder); with ``scale_from_layer`` s > 0 the model is scaled from the
  ``tubes_from`` model folder (paper §3.6: tubes copied, tokenizer and blocks before ``freeze_before``
  frozen, the gate into block s); see :func:`pipelines.training.pretrain_model`.
- ``pretrain.nproc > 1``: the stage re-executes itself as one ``torchrun`` subprocess (DDP); the ranks
  run :func:`run` without Prefect.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipelines import training
from pipelines.params import Params, load_params_or_exit
from tubevit.train.checkpoint import config_hash
from tubevit.train.loop import Callback
from tubevit.train.losses import build_objective
from tubevit.viz import draw_tubes

__all__ = ["main", "pretrain_flow", "run", "run_config_hash"]

log = logging.getLogger(__name__)

STAGE = "pretrain"


def run_config_hash(params: Params, fingerprints: dict[str, str]) -> str:
    """What a resumable checkpoint must match: model and pretrain params and the training data.

    Execution-only keys (:data:`training.EXECUTION_KEYS`: device, compile, checkpoint_every, eval_every,
    nproc, and each loader's workers and cache_mb) do not change the trained weights on one device and are
    left out, so changing them keeps the checkpoint.
    """
    pcfg = training.hashable_config(params.pretrain)
    classes = {name: params.datasets[name].multilabel for name in params.pretrain.datasets}
    return config_hash(params.model, pcfg, classes, fingerprints)


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
    tubes_plot: Path | None = None,
    weights_dir: Path | None = None,
) -> dict[str, Any]:
    """Pretrain ``params.model`` on ``params.pretrain.datasets`` and write the model bundle to ``out``.

    Args:
        params: the validated params file.
        shards: the folder holding ``<ds>/train/index.json`` for every mixed dataset (``shards/``).
        out: the model folder (``models/pretrain``): ``model.pt`` and ``config.json``.
        checkpoints: the checkpoint folder (resumed from when it holds a checkpoint of the same config).
        live: dvclive folder (rank 0); ``None``: no dvclive logging.
        timing: the timing JSON to write (rank 0); ``None``: none.
        callbacks: extra loop callbacks (rank 0); a :class:`training.ModelCallback` also sees the model
            right before the first step.
        progress: show the tqdm bar.
        tubes_plot: a PNG (rank 0) of where the trained model's tubes sample the first video dataset's
            training clip (:func:`tubevit.viz.draw_tubes`; the active tubes, skipped ones in the legend);
            ``None``: none.
        weights_dir: the folder dvc.yaml declares as the stage's weights dependency; ``init_from`` and
            ``tubes_from`` must lie in it (``None``: not checked).

    Returns the summary (steps, final loss, seconds, clips/s), also what the timing file holds.

    Raises:
        NonFiniteLossError: a step's loss is NaN or infinite (the message names the step).
    """
    # params
    pcfg = params.pretrain
    weights = dict(pcfg.datasets)
    training.check_start_weights(pcfg, weights_dir)
    stage = training.Stage(STAGE, pcfg.device, max(pcfg.loader[name].workers for name in weights), log)

    # data: each mixed dataset's train split (and val, when present, for in-training evaluation)
    metas = {
        name: training.dataset_meta(training.join_url(shards, name), name, "train", params.dataset(name))
        for name in weights
    }
    metas_val = {}
    for name in weights:
        with contextlib.suppress(FileNotFoundError):
            metas_val[name] = training.dataset_meta(
                training.join_url(shards, name), name, "val", params.dataset(name)
            )
    chash = run_config_hash(params, training.data_fingerprint(list(metas.values())))
    batches = stage.batches(pcfg, metas, pcfg.loader, weights)
    evaluate = None
    if pcfg.eval_every > 0 and metas_val:
        evaluate = training.make_validation(metas_val, pcfg.loader, stage.device, params.evaluate.batch_size)

    # model: seeded, the same on every rank (init_from / image-to-video scaling when set)
    heads = {name: meta.num_classes for name, meta in metas.items()}
    model = training.pretrain_model(params.model, pcfg, heads)
    log.info(
        "pretrain: %s with tubes %s, %d parameters (%d trainable), heads %s, %d steps",
        params.model.variant,
        params.model.tubes if isinstance(params.model.tubes, str) else "custom",
        sum(p.numel() for p in model.parameters()),
        sum(p.numel() for p in model.parameters() if p.requires_grad),
        heads,
        pcfg.steps,
    )

    # train
    objectives = {
        name: build_objective(
            meta.num_classes,
            multilabel=meta.multilabel,
            label_smoothing=pcfg.label_smoothing,
            mixup=0.0 if meta.multilabel else pcfg.mixup,
        )
        for name, meta in metas.items()
    }
    inputs = {  # what `tubevit predict` needs to read a new video the way this head was trained
        name: {
            "frames": pcfg.loader[name].frames,
            "size": pcfg.loader[name].size,
            "fps": params.dataset(name).fps,
            "short_side": params.dataset(name).short_side,
        }
        for name in weights
    }
    io = training.RunOutputs(out, checkpoints, live, timing, callbacks, progress)
    result = stage.train(
        pcfg,
        model,
        batches,
        objectives,
        io,
        shapes={
            n: (pcfg.loader[n].batch_size, 3, s["frames"], s["size"], s["size"]) for n, s in inputs.items()
        },
        weights=weights,
        chash=chash,
        evaluate=evaluate,
    )

    # save
    extra = {"stage": STAGE, "steps": pcfg.steps, "datasets": weights}
    summary = stage.save(io, result, model, params.model, metas, inputs, extra)

    # report
    if tubes_plot is not None and stage.is_main:
        video = [n for n in weights if inputs[n]["frames"] > 1] or list(weights)
        shape = inputs[video[0]]
        title = f"{params.model.variant}: {video[0]} clip"
        draw_tubes(model.tubes, shape["frames"], shape["size"], tubes_plot, title)
    return stage.report(timing, summary, f"wrote {out}")


def _run_from_args(params: Params, paths: dict[str, Any], **options: Any) -> dict[str, Any]:
    return run(params, **paths, **options)


pretrain_flow = training.training_flow(STAGE, "pipelines.pretrain", _run_from_args, dataset_param=None)


def build_parser() -> argparse.ArgumentParser:
    parser = training.stage_parser("pipelines.pretrain", __doc__)
    training.add_training_arguments(
        parser, "folder or URL of <ds>/train/index.json (shards/, s3://bucket/shards)", STAGE, STAGE
    )
    parser.add_argument(
        "--tubes-plot", type=Path, default=None, help="PNG of the model's tubes on a clip (plots/tubes.png)"
    )
    parser.add_argument(
        "--weights",
        type=Path,
        default=None,
        help="folder holding pretrain.init_from / tubes_from, a dependency in dvc.yaml (weights)",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    training.setup_logging()
    params = load_params_or_exit(args.params)
    paths = training.training_paths(args)
    options = {"tubes_plot": args.tubes_plot, "weights_dir": args.weights}
    return training.launch(
        "pipelines.pretrain",
        argv,
        params.pretrain.nproc,
        args.no_flow,
        run=lambda: _run_from_args(params, paths, progress=not args.no_progress, **options),
        flow=lambda: pretrain_flow(params.pretrain.nproc, argv, None, (params, paths), options),
    )


if __name__ == "__main__":
    raise SystemExit(main())
