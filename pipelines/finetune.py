"""Stage ``finetune@<ds>``: fine-tune the pretrained TubeViT on one dataset with a new head.

    python -m pipelines.finetune ssv2 --pretrained models/pretrain --shards shards/ssv2 --out models/ssv2 \
        --checkpoints checkpoints/ssv2 --live dvclive/finetune-ssv2 --timing metrics/timing/finetune-ssv2.json \
        --params params.yaml

Reads ``params.finetune.<ds>`` and ``params.datasets.<ds>`` (``multilabel``, ``num_classes``); the model
architecture comes from the pretrained bundle (``<pretrained>/config.json``), so ``params.model`` is not
read (``finetune.<ds>.init: scratch`` builds the same architecture without loading its weights).

- The pretrained heads are dropped and one new head ``<ds>`` is added (head dropout
  ``finetune.<ds>.dropout``).
- Single-label (SSv2): cross-entropy with ``label_smoothing`` after MixUp (``mixup`` is the Beta alpha).
- Multi-label (Charades): BCE over multi-hot labels. Training labels are the actions overlapping the
  sampled window; evaluation (the evaluate stage) uses video-level labels. ``finetune.<ds>.tubes`` switches
  the tubes to an interpolated set (``embedded_interpolated``, ``charades_interpolated``): the learned
  kernels keep their shape and are resized in the forward, so the parameter count and the token count at
  the training input shape are unchanged (checked; a set that changes either is refused).
- Resumable like pretrain (config hash includes the pretrained weights' sha256).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from pipelines import training
from pipelines.common import sha256_file
from pipelines.params import Params, load_params_or_exit
from tubevit.bundle import ModelBundle, load_model, weights_file
from tubevit.config.base import to_dict
from tubevit.config.model import build_model
from tubevit.config.train import FinetuneConfig
from tubevit.model.convert import apply_scaling_record, scaling_record
from tubevit.model.tubes import parse_tubes, token_counts
from tubevit.model.tubevit import TubeViT
from tubevit.train.checkpoint import config_hash
from tubevit.train.loop import Callback
from tubevit.train.losses import build_objective

__all__ = ["TubeSwitchError", "finetune_flow", "main", "prepare_model", "run", "switch_tubes"]

log = logging.getLogger(__name__)


class TubeSwitchError(ValueError):
    """Switching to another tube set would change the parameter count or the token count."""


def switch_tubes(model: TubeViT, tubes: str, frames: int, size: int) -> dict[str, int]:
    """Switch ``model`` to the tube set ``tubes`` in place, keeping parameters and tokens unchanged.

    The new set must be an interpolation of the current one (same learned kernels, strides, offsets and
    S2D): the learned weights keep their shape and are resized in the forward.

    Args:
        model: the pretrained TubeViT.
        tubes: a tube set name, e.g. ``embedded_interpolated``.
        frames, size: the fine-tuning input ``(T, size, size)`` at which the token count is compared.

    Returns ``{"parameters": P, "tokens": N}`` (equal before and after).

    Raises:
        TubeSwitchError: the set is not an interpolation of the model's tubes, or the parameter or token
            count changed; the message gives both counts.
    """
    before_params = sum(p.numel() for p in model.parameters())
    before_tokens = sum(token_counts(model.tubes, frames, size, size))
    new_specs = parse_tubes(tubes)
    try:
        model.set_tubes(new_specs)
    except (ValueError, RuntimeError) as exc:
        raise TubeSwitchError(f"tubes {tubes!r}: cannot replace the pretrained tubes ({exc})") from None
    after_params = sum(p.numel() for p in model.parameters())
    after_tokens = sum(token_counts(model.tubes, frames, size, size))
    if (after_params, after_tokens) != (before_params, before_tokens):
        raise TubeSwitchError(
            f"tubes {tubes!r}: parameters {before_params} -> {after_params}, tokens at "
            f"{frames}x{size}^2 {before_tokens} -> {after_tokens}; an interpolated set must keep both"
        )
    with torch.no_grad():  # the forward works at the new kernel size (the weights are resized in it)
        x = torch.zeros(1, 3, frames, size, size, device=next(model.parameters()).device)
        tokens = model.tokenizer(x).shape[1]
    if tokens != before_tokens:
        raise TubeSwitchError(
            f"tubes {tubes!r}: the tokenizer gives {tokens} tokens, expected {before_tokens}"
        )
    return {"parameters": after_params, "tokens": after_tokens}


def prepare_model(bundle: ModelBundle, name: str, num_classes: int, fcfg: FinetuneConfig) -> TubeViT:
    """The fine-tuning model: pretrained weights (or the same architecture from scratch with
    ``init: scratch``), every pretrained head dropped, a new head ``name`` with ``num_classes`` outputs,
    head dropout ``fcfg.dropout``, and the tubes switched when ``fcfg.tubes`` is set."""
    torch.manual_seed(fcfg.seed)
    model = build_model(bundle.config, {name: num_classes}, head_dropout=fcfg.dropout)
    scaling = scaling_record(bundle.model)
    if scaling is not None:  # an image-to-video scaled model: its gate (and linear width map) too
        apply_scaling_record(model, scaling)
    if fcfg.init == "pretrain":
        state = {k: v for k, v in bundle.model.state_dict().items() if not k.startswith("heads.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if unexpected or any(not k.startswith(f"heads.{name}.") for k in missing):
            raise RuntimeError(f"pretrained weights do not fit: missing {missing}, unexpected {unexpected}")
    if fcfg.tubes is not None:
        counts = switch_tubes(model, fcfg.tubes, fcfg.loader.frames, fcfg.loader.size)
        log.info("finetune %s: tubes switched to %s (%s unchanged)", name, fcfg.tubes, counts)
    return model


def run(
    params: Params,
    name: str,
    pretrained: Path,
    shards: str | Path,
    out: Path,
    checkpoints: Path | None,
    live: Path | None = None,
    timing: Path | None = None,
    *,
    callbacks: Sequence[Callback] = (),
    progress: bool = True,
) -> dict[str, Any]:
    """Fine-tune the bundle in ``pretrained`` on ``<shards>/train`` and write the bundle to ``out``.

    Args:
        params: the validated params; ``params.finetune[name]`` must exist.
        name: the dataset (``ssv2``, ``charades``).
        pretrained: the pretrain stage's model folder.
        shards: ``shards/<name>`` (with ``train/index.json``; ``val/`` is used when ``eval_every > 0``).
        out, checkpoints, live, timing, callbacks, progress: as in :func:`pipelines.pretrain.run`.

    Raises:
        KeyError: no ``finetune.<name>`` section.
        NonFiniteLossError: a step's loss is NaN or infinite (the message names the step).
    """
    # params
    if name not in params.finetune:
        raise KeyError(f"finetune.{name}: not in params (fine-tuned datasets: {sorted(params.finetune)})")
    fcfg = params.finetune[name]
    lcfg = fcfg.loader
    dcfg = params.dataset(name)
    stage = training.Stage(f"finetune-{name}", fcfg.device, lcfg.workers, log)

    # data
    meta = training.dataset_meta(shards, name, "train", dcfg)
    batches = stage.batches(fcfg, {name: meta}, {name: lcfg}, {name: 1.0})
    evaluate = None
    if fcfg.eval_every > 0:
        val = training.dataset_meta(shards, name, "val", dcfg)
        evaluate = training.make_validation(
            {name: val}, {name: lcfg}, stage.device, params.evaluate.batch_size
        )

    # model: the pretrained bundle with a new head
    bundle = load_model(pretrained)
    model = prepare_model(bundle, name, meta.num_classes, fcfg)
    weights_sha = sha256_file(weights_file(pretrained))
    chash = config_hash(
        training.hashable_config(fcfg), to_dict(bundle.config), weights_sha, training.data_fingerprint([meta])
    )

    # train
    objective = build_objective(
        meta.num_classes, multilabel=meta.multilabel, label_smoothing=fcfg.label_smoothing, mixup=fcfg.mixup
    )
    io = training.RunOutputs(out, checkpoints, live, timing, callbacks, progress)
    result = stage.train(
        fcfg,
        model,
        batches,
        {name: objective},
        io,
        shapes={name: (lcfg.batch_size, 3, lcfg.frames, lcfg.size, lcfg.size)},
        weights={name: 1.0},
        chash=chash,
        evaluate=evaluate,
    )

    # save
    extra = {
        "stage": stage.name,
        "steps": fcfg.steps,
        "init": fcfg.init,
        "pretrained_sha256": weights_sha,
        "tubes_name": fcfg.tubes,
    }
    dcfg = params.dataset(name)
    inputs = {
        name: {"frames": lcfg.frames, "size": lcfg.size, "fps": dcfg.fps, "short_side": dcfg.short_side}
    }
    summary = stage.save(io, result, model, bundle.config, {name: meta}, inputs, extra)

    # report
    return stage.report(timing, summary, f"wrote {out}")


def _run_from_args(params: Params, name: str, paths: dict[str, Any], progress: bool = True) -> dict[str, Any]:
    return run(params, name, **paths, progress=progress)


finetune_flow = training.training_flow("finetune", "pipelines.finetune", _run_from_args, "dataset")


def build_parser() -> argparse.ArgumentParser:
    parser = training.stage_parser(
        "pipelines.finetune", __doc__, "the dataset to fine-tune on (a key of finetune: in params)"
    )
    parser.add_argument(
        "--pretrained", type=Path, required=True, help="pretrained model folder (models/pretrain)"
    )
    training.add_training_arguments(
        parser, "shards/<ds>, or a URL such as s3://bucket/shards/<ds>", "<ds>", "finetune-<ds>"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    training.setup_logging()
    params = load_params_or_exit(args.params, dataset=args.dataset)
    if args.dataset not in params.finetune:
        print(
            f"{args.params}: finetune.{args.dataset}: not defined (fine-tuned datasets: "
            f"{', '.join(sorted(params.finetune)) or 'none'})",
            file=sys.stderr,
        )
        return 2
    paths = {"pretrained": args.pretrained, **training.training_paths(args)}
    nproc = params.finetune[args.dataset].nproc
    return training.launch(
        "pipelines.finetune",
        argv,
        nproc,
        args.no_flow,
        run=lambda: _run_from_args(params, args.dataset, paths, progress=not args.no_progress),
        flow=lambda: finetune_flow(nproc, argv, args.dataset, (params, args.dataset, paths), {}),
    )


if __name__ == "__main__":
    raise SystemExit(main())
