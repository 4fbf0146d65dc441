"""Stage ``evaluate@<ds>``: multi-view evaluation of a trained model on a dataset's ``val`` split.

    python -m pipelines.evaluate ssv2 --model models/ssv2 --shards shards/ssv2 --metrics metrics/ssv2.json \
        --plots plots/ssv2 --timing metrics/timing/evaluate-ssv2.json --params params.yaml

Reads ``params.evaluate`` (``temporal_views`` x ``spatial_views``, ``charades_aggregate``,
``batch_size``) and ``params.datasets.<ds>`` (``multilabel``, ``num_classes``). The clip length and crop
size are the ones the model's head was trained with (``inputs`` in ``<model>/config.json``).

Views: every clip gives ``temporal_views`` windows starting evenly over the video, times
``spatial_views`` crops (an image gives its spatial views only). Scores per clip: the mean over views
of the softmax (single-label); the max (default) or mean over views of the sigmoid (multi-label).

``--metrics`` (deterministic; no timings):
- single-label: ``top1``, ``top5``; multi-label (Charades): ``mAP`` (official protocol);
- video sets, the temporal controls: ``top1_shuffled`` (frames permuted inside each clip, seeded) and
  ``top1_static`` (one random frame repeated); for multi-label sets ``mAP_shuffled`` and ``mAP_static``;
- ``clips`` (checked against ``index.json``), ``views``, ``num_classes``, ``chance`` (1/K, or the mean
  label prevalence for multi-label, i.e. the mAP of random scores in expectation).

``--plots`` (DVC plot data, CSV with a header row):
- ``per_class.csv``: ``class,name,count,accuracy`` (single-label; accuracy is the recall) or
  ``class,name,count,ap`` (multi-label; count = videos with the label);
- ``confusion.csv`` (single-label): one row per clip, ``key,actual,predicted`` (class names), for DVC's
  ``confusion`` template (``x: actual, y: predicted``).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import logging
from pathlib import Path
from typing import Any

import torch
from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from pipelines import training
from pipelines.common import add_no_flow_flag, publish_result, run_name, write_json_atomic, write_text_atomic
from pipelines.params import Params, load_params_or_exit
from tubevit.bundle import load_model
from tubevit.config.data import LoaderConfig
from tubevit.config.train import EvaluateConfig
from tubevit.data.shards import check_complete, eval_loader
from tubevit.evaluate import (
    Predictions,
    aggregate,
    multilabel_metrics,
    predict,
    shuffle_frames,
    single_label_metrics,
    static_frames,
)

__all__ = ["evaluate_flow", "main", "metrics_from_predictions", "run", "write_plots"]

log = logging.getLogger(__name__)

CONTROL_SEED = 0  # the frame permutations / picks of the controls


def metrics_from_predictions(
    preds: Predictions, multilabel: bool, num_classes: int, charades_aggregate: str = "max"
) -> dict[str, Any]:
    """Aggregate views and compute the metrics of :func:`tubevit.evaluate.single_label_metrics` or
    :func:`tubevit.evaluate.multilabel_metrics` (with per-class and confusion data)."""
    scores = aggregate(preds.logits, multilabel, charades_aggregate)  # (N, K)
    if multilabel:
        return multilabel_metrics(scores, preds.labels)
    return single_label_metrics(scores, preds.labels, num_classes)


def _csv(rows: list[dict[str, Any]], fields: list[str]) -> str:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_plots(
    plots: Path, preds: Predictions, result: dict[str, Any], classes: list[str], multilabel: bool
) -> list[Path]:
    """Write the per-class and (single-label) confusion CSVs to ``plots``; returns the paths."""
    plots = Path(plots)
    written = []
    if multilabel:
        counts = (preds.labels > 0).sum(dim=0).tolist()
        rows = [
            {"class": c, "name": classes[c], "count": int(counts[c]), "ap": "" if ap is None else f"{ap:.6f}"}
            for c, ap in enumerate(result["per_class_ap"])
        ]
        path = plots / "per_class.csv"
        write_text_atomic(path, _csv(rows, ["class", "name", "count", "ap"]))
        written.append(path)
        return written
    counts = torch.bincount(preds.labels, minlength=len(classes)).tolist()
    rows = [
        {
            "class": c,
            "name": classes[c],
            "count": int(counts[c]),
            "accuracy": "" if acc is None else f"{acc:.6f}",
        }
        for c, acc in enumerate(result["per_class_accuracy"])
    ]
    path = plots / "per_class.csv"
    write_text_atomic(path, _csv(rows, ["class", "name", "count", "accuracy"]))
    written.append(path)
    scores = aggregate(preds.logits, False)
    predicted = scores.argmax(dim=1).tolist()
    rows = [
        {"key": key, "actual": classes[int(label)], "predicted": classes[p]}
        for key, label, p in zip(preds.keys, preds.labels.tolist(), predicted, strict=True)
    ]
    path = plots / "confusion.csv"
    write_text_atomic(path, _csv(rows, ["key", "actual", "predicted"]))
    written.append(path)
    return written


def _chance(preds: Predictions, multilabel: bool, num_classes: int) -> float:
    if multilabel:  # expected AP of random scores = the class's prevalence; mean over present classes
        prevalence = (preds.labels > 0).float().mean(dim=0)
        present = prevalence > 0
        return float(prevalence[present].mean()) if present.any() else 0.0
    return 1.0 / num_classes


def run(
    params: Params,
    name: str,
    model_dir: Path,
    shards: str | Path,
    metrics: Path,
    plots: Path | None,
    timing: Path | None = None,
    *,
    split: str = "val",
    controls: bool = True,
) -> dict[str, Any]:
    """Evaluate the model bundle in ``model_dir`` on ``<shards>/<split>`` and write metrics and plots.

    Args:
        params: the validated params (``evaluate`` and ``datasets.<name>``).
        name: the dataset; the model must have a head ``name``.
        model_dir: a model folder written by the pretrain or finetune stage.
        shards: ``shards/<name>``.
        metrics: the metrics JSON to write.
        plots: the folder for the plot CSVs (``None``: none).
        timing: the timing JSON (``None``: none).
        controls: also run the shuffled and static controls on video sets.

    Returns the metrics written (without the per-class lists).

    Raises:
        KeyError: the model has no head for ``name``.
        ValueError: the evaluated clips do not match ``index.json`` (count or duplicates).
    """
    # params
    ecfg: EvaluateConfig = params.evaluate
    dcfg = params.dataset(name)
    stage = training.Stage(f"evaluate-{name}", "auto", None, log)
    info = stage.info

    # model (its head's input shape sets the clips)
    meta = training.dataset_meta(shards, name, split, dcfg)
    bundle = load_model(model_dir)
    if name not in bundle.heads:
        raise KeyError(f"{model_dir}: the model has no head for {name!r} (heads: {', '.join(bundle.heads)})")
    if bundle.heads[name] != meta.num_classes:
        raise ValueError(
            f"{model_dir}: head {name!r} has {bundle.heads[name]} classes, {meta.index} has {meta.num_classes}"
        )
    model = bundle.model.to(info.device).eval()
    shape = bundle.inputs[name]
    is_image = shape["frames"] == 1
    lcfg = LoaderConfig(
        frames=shape["frames"],
        size=shape["size"],
        batch_size=ecfg.batch_size,
        randaugment=False,
        temporal_views=1 if is_image else ecfg.temporal_views,
        spatial_views=ecfg.spatial_views,
    )
    views = lcfg.temporal_views * lcfg.spatial_views

    # data
    def loader():
        return eval_loader(
            meta.urls,
            lcfg,
            dataset=name,
            num_classes=meta.num_classes,
            multilabel=meta.multilabel,
            rank=info.rank,
            world_size=info.world_size,
        )

    # evaluate
    preds = predict(model, loader(), name, device=info.device)
    check_complete(preds.keys, meta.index)
    if preds.logits.shape[1] != views:
        raise ValueError(f"{name}: expected {views} views per clip, got {preds.logits.shape[1]}")
    result = metrics_from_predictions(preds, meta.multilabel, meta.num_classes, ecfg.charades_aggregate)
    key = "mAP" if meta.multilabel else "top1"
    out: dict[str, Any] = {k: v for k, v in result.items() if k in ("top1", "top5", "mAP")}
    if controls and not is_image:
        for control, transform in (("shuffled", shuffle_frames), ("static", static_frames)):
            cpreds = predict(
                model, loader(), name, device=info.device, transform=transform, seed=CONTROL_SEED
            )
            check_complete(cpreds.keys, meta.index)
            cres = metrics_from_predictions(
                cpreds, meta.multilabel, meta.num_classes, ecfg.charades_aggregate
            )
            out[f"{key}_{control}"] = cres[key]
    out.update(
        {
            "clips": len(preds.keys),
            "views": views,
            "num_classes": meta.num_classes,
            "chance": _chance(preds, meta.multilabel, meta.num_classes),
        }
    )
    # save
    if info.is_main:
        write_json_atomic(metrics, out)
        if plots is not None:
            write_plots(plots, preds, result, meta.classes, meta.multilabel)

    # report
    stage.report(
        timing, {"clips": len(preds.keys), "views": views}, f"metrics {json.dumps(out, sort_keys=True)}"
    )
    return out


@task(name="evaluate-run", cache_policy=NO_CACHE)
def _evaluate_task(params: Params, name: str, paths: dict[str, Path | None]) -> dict[str, Any]:
    return run(params, name, **paths)


@flow(name="evaluate", flow_run_name=run_name("evaluate"), validate_parameters=False)
def evaluate_flow(params: Params, name: str, paths: dict[str, Path | None]) -> dict[str, Any]:
    """The evaluate stage as a Prefect flow (one task)."""
    return publish_result("evaluate", name, _evaluate_task(params, name, paths))


def build_parser() -> argparse.ArgumentParser:
    parser = training.stage_parser("pipelines.evaluate", __doc__, "the dataset to evaluate (its val split)")
    parser.add_argument(
        "--model", type=Path, required=True, help="model folder (models/pretrain or models/<ds>)"
    )
    parser.add_argument(
        "--shards", type=str, required=True, help="shards/<ds>, or a URL such as s3://bucket/shards/<ds>"
    )
    parser.add_argument("--metrics", type=Path, required=True, help="metrics JSON (metrics/<ds>.json)")
    parser.add_argument("--plots", type=Path, default=None, help="plot data folder (plots/<ds>)")
    parser.add_argument(
        "--timing", type=Path, default=None, help="timing JSON (metrics/timing/evaluate-<ds>.json)"
    )
    add_no_flow_flag(parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    training.setup_logging()
    params = load_params_or_exit(args.params, dataset=args.dataset)
    paths = {
        "model_dir": args.model,
        "shards": args.shards,
        "metrics": args.metrics,
        "plots": args.plots,
        "timing": args.timing,
    }
    out = run(params, args.dataset, **paths) if args.no_flow else evaluate_flow(params, args.dataset, paths)
    print(json.dumps(out, sort_keys=True))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
