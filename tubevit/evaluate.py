"""Multi-view evaluation: predictions gathered by clip key, view aggregation, and metrics as plain data.

Aggregation over the V views of a clip (temporal x spatial):
  - single-label: the mean over views of the softmax (:func:`softmax_mean`);
  - multi-label (Charades): the max (default, ``evaluate.charades_aggregate: max``) or the mean over views
    of the sigmoid (:func:`sigmoid_max`, :func:`sigmoid_mean`). Max scores an action that is visible in
    only one temporal view as present, which suits Charades' long videos with short actions; mean is the
    smoother alternative. Both are monotone per class, so they change the ranking mAP sees only across
    videos.

Metrics:
  - top-1 / top-5 accuracy (:func:`topk_accuracy`), per-class accuracy and the confusion matrix (rows: true
    class, columns: predicted) as lists, ready for JSON and ``dvc plots``;
  - Charades mAP (:func:`charades_map`), the official protocol: a class's AP is the mean of the precision
    at the rank of each of its positives; the mean is over the classes with at least one positive; videos
    with no label get score -inf for every class (the Charades reference script's fix).

Controls for temporal modelling: :func:`shuffle_frames` (frames permuted inside each clip) and
:func:`static_frames` (one random frame repeated), passed as ``transform`` to :func:`predict`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from tubevit.data.augment import to_model_input
from tubevit.train import distributed
from tubevit.train.loop import check_uint8
from tubevit.train.precision import autocast, input_dtype, resolve_precision
from tubevit.train.prefetch import DevicePrefetcher

__all__ = [
    "AGGREGATES",
    "Predictions",
    "aggregate",
    "charades_map",
    "confusion_matrix",
    "gather_views",
    "multilabel_metrics",
    "per_class_accuracy",
    "predict",
    "shuffle_frames",
    "sigmoid_max",
    "sigmoid_mean",
    "single_label_metrics",
    "softmax_mean",
    "static_frames",
    "topk_accuracy",
]

log = logging.getLogger(__name__)


# ---- view aggregation: (N, V, K) logits -> (N, K) scores ---------------------------------------------------


def softmax_mean(logits: torch.Tensor) -> torch.Tensor:
    """``(N, V, K)`` logits -> ``(N, K)``: the mean over the V views of the softmax over K classes."""
    return logits.float().softmax(dim=-1).mean(dim=1)


def sigmoid_max(logits: torch.Tensor) -> torch.Tensor:
    """``(N, V, K)`` logits -> ``(N, K)``: the max over the V views of the per-class sigmoid."""
    return logits.float().sigmoid().amax(dim=1)


def sigmoid_mean(logits: torch.Tensor) -> torch.Tensor:
    """``(N, V, K)`` logits -> ``(N, K)``: the mean over the V views of the per-class sigmoid."""
    return logits.float().sigmoid().mean(dim=1)


AGGREGATES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "softmax_mean": softmax_mean,
    "max": sigmoid_max,
    "mean": sigmoid_mean,
}


def aggregate(
    logits: torch.Tensor, multilabel: bool, charades_aggregate: Literal["max", "mean"] = "max"
) -> torch.Tensor:
    """``(N, V, K)`` logits -> ``(N, K)`` scores: :func:`softmax_mean` for single-label data, else the
    sigmoid ``max`` or ``mean`` named by ``charades_aggregate``."""
    return AGGREGATES[charades_aggregate if multilabel else "softmax_mean"](logits)


# ---- collecting predictions ----------------------------------------------------------------------------------


@dataclass
class Predictions:
    """Per-clip outputs, clips sorted by key.

    ``keys``: N clip keys; ``logits``: float32 ``(N, V, K)`` (views in ``view`` order); ``labels``: int64
    ``(N,)`` or float32 multi-hot ``(N, K)`` (video-level).
    """

    keys: list[str]
    logits: torch.Tensor
    labels: torch.Tensor


def gather_views(
    keys: Sequence[str], views: Sequence[int], logits: torch.Tensor, labels: torch.Tensor
) -> Predictions:
    """Group rows by clip key into ``(N, V, K)``.

    Args:
        keys, views: per row, the clip key and its view index (``v * S + s``).
        logits: ``(M, K)``, one row per (clip, view).
        labels: ``(M,)`` or ``(M, K)``, the clip's label repeated on each of its rows.

    Raises:
        ValueError: clips have different numbers of views, or a (key, view) pair repeats; the message
            names the key.
    """
    rows: dict[str, dict[int, int]] = {}
    for i, (key, view) in enumerate(zip(keys, views, strict=True)):
        seen = rows.setdefault(key, {})
        if view in seen:
            raise ValueError(f"clip {key!r}: view {view} appears twice")
        seen[view] = i
    counts = {len(v) for v in rows.values()}
    if len(counts) > 1:
        fewest = min(rows, key=lambda k: len(rows[k]))
        raise ValueError(
            f"clip {fewest!r} has {len(rows[fewest])} views, others up to {max(counts)}: incomplete predictions"
        )
    ordered = sorted(rows)
    index = torch.tensor([[rows[k][v] for v in sorted(rows[k])] for k in ordered], dtype=torch.long)
    index = index.reshape(len(ordered), -1)  # (N, V)
    return Predictions(keys=ordered, logits=logits[index], labels=labels[index[:, 0]])


def shuffle_frames(video: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Control: permute the T frames of each clip independently. ``(B, C, T, H, W)`` -> same shape, on
    ``video``'s device (uint8 or float). ``generator`` is a CPU generator; the draws do not depend on the
    device."""
    B, _C, T = video.shape[:3]
    order = torch.stack([torch.randperm(T, generator=generator) for _ in range(B)])  # (B, T)
    order = order.to(video.device, non_blocking=True)
    index = order.view(B, 1, T, 1, 1).expand(-1, video.shape[1], -1, *video.shape[3:])
    return video.gather(2, index)


def static_frames(video: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Control: one random frame of each clip repeated T times. ``(B, C, T, H, W)`` -> same shape, on
    ``video``'s device. ``generator`` is a CPU generator."""
    B, _C, T = video.shape[:3]
    pick = torch.randint(0, T, (B,), generator=generator).to(video.device, non_blocking=True)  # (B,)
    frames = video[torch.arange(B, device=video.device), :, pick]  # (B, C, H, W)
    return frames.unsqueeze(2).expand(-1, -1, T, -1, -1).contiguous()


@torch.no_grad()
def predict(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]],
    dataset: str,
    *,
    device: str | torch.device = "cpu",
    transform: Callable[[torch.Tensor, torch.Generator], torch.Tensor] | None = None,
    seed: int = 0,
    precision: str = "auto",
) -> Predictions:
    """Run ``model(video, dataset)`` over evaluation batches and gather the logits by clip key and view.

    Args:
        model: ``model(x (B, C, T, H, W), dataset) -> logits (B, K)``; put in eval mode.
        batches: the evaluation loader's dicts with uint8 ``video`` ``(B, C, T, H, W)``, ``label``, ``key``
            and ``view`` (a list of ints; may be absent: one view per clip). They are copied to ``device``
            ahead of use (:class:`~tubevit.train.prefetch.DevicePrefetcher`) and normalised there
            (:func:`tubevit.data.augment.to_model_input`).
        transform: an optional control applied to each uint8 video batch on the device
            (:func:`shuffle_frames`, :func:`static_frames`), drawing from a CPU generator seeded with
            ``seed``.
        precision: ``auto`` (bf16 on CUDA, fp32 on the CPU), ``bf16``, ``fp16`` or ``fp32``: autocast and
            the input dtype (:mod:`tubevit.train.precision`).

    The logits stay on the device: nothing is copied to the host per batch. Each rank groups its rows by
    clip into ``(n_r, V, K)`` on the device (the views of a clip are on one rank: the evaluation loader
    splits by sample); under torchrun the ranks then exchange these fixed-size tensors (padded to the
    largest rank) with ``all_gather`` and only the clip keys as objects. Every rank returns the whole
    result, copied to the CPU once.

    Raises:
        ValueError: no batch at all (on any rank), a clip with missing or repeated views, or a clip seen
            on two ranks (each names the clip).
    """
    device = torch.device(device)
    prec = resolve_precision(precision, device)
    dtype = input_dtype(prec)
    model.eval()
    generator = torch.Generator().manual_seed(seed)
    keys: list[str] = []
    views: list[int] = []
    logits: list[torch.Tensor] = []
    labels: list[torch.Tensor] = []
    for batch in DevicePrefetcher(batches, device):
        check_uint8(batch, f"{dataset}: evaluation")
        video = batch["video"].to(device, non_blocking=True)
        if transform is not None:
            video = transform(video, generator)
        x = to_model_input({**batch, "video": video}, device, dtype)
        with autocast(device, prec):
            out = model(x, dataset)
        logits.append(out.float())  # (B, K) on the device
        labels.append(batch["label"].to(device, non_blocking=True))
        keys.extend(batch["key"])
        view = batch.get("view")
        views.extend([0] * len(batch["key"]) if view is None else _ints(view))
    local = (
        gather_views(keys, views, torch.cat(logits), torch.cat(labels))
        if logits
        else None  # this rank had no batch: it still takes part in the exchange
    )
    merged = _gather_ranks(local, device)
    if merged is None:
        raise ValueError(f"{dataset}: the evaluation batches were empty")
    return Predictions(keys=merged.keys, logits=merged.logits.cpu(), labels=merged.labels.cpu())


def _ints(view: Any) -> list[int]:
    """A batch's ``view`` entry as ints (a list, or a tensor: a device tensor costs a host sync)."""
    return view.tolist() if isinstance(view, torch.Tensor) else [int(v) for v in view]


def _gather_ranks(local: Predictions | None, device: torch.device) -> Predictions | None:
    """Every rank's per-clip predictions on every rank, clips sorted by key; ``local`` in one process.

    Fixed-size tensors travel (``(n_max, V, K)`` logits and ``(n_max, ...)`` labels, padded), and the clip
    keys with the shapes as small objects; the logits never go through pickling.
    """
    if not distributed.is_distributed():
        return local
    meta = None
    if local is not None:
        meta = (local.keys, tuple(local.logits.shape[1:]), tuple(local.labels.shape[1:]), local.labels.dtype)
    metas = distributed.all_gather_objects(meta)
    present = [m for m in metas if m is not None]
    if not present:
        return None
    shapes = {(m[1], m[2], m[3]) for m in present}
    if len(shapes) > 1:
        raise ValueError(f"ranks disagree on (views, classes) shapes: {sorted(map(str, shapes))}")
    (logit_shape, label_shape, label_dtype), n_max = shapes.pop(), max(len(m[0]) for m in present)
    logits = torch.zeros(n_max, *logit_shape, device=device)
    labels = torch.zeros(n_max, *label_shape, dtype=label_dtype, device=device)
    if local is not None:
        logits[: len(local.keys)] = local.logits
        labels[: len(local.keys)] = local.labels
    all_logits = distributed.all_gather_tensors(logits)
    all_labels = distributed.all_gather_tensors(labels)
    keys: list[str] = []
    owner: dict[str, int] = {}
    rows = []
    for r, m in enumerate(metas):
        if m is None:
            continue
        for i, key in enumerate(m[0]):
            if key in owner:
                raise ValueError(f"clip {key!r} was evaluated on ranks {owner[key]} and {r}")
            owner[key] = r
            keys.append(key)
            rows.append(r * n_max + i)
    order = sorted(range(len(keys)), key=keys.__getitem__)
    index = torch.tensor([rows[i] for i in order], device=device)
    return Predictions(
        keys=[keys[i] for i in order],
        logits=torch.cat(all_logits)[index],
        labels=torch.cat(all_labels)[index],
    )


# ---- metrics ------------------------------------------------------------------------------------------------


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Fraction of clips whose label is among the k highest scores. ``scores (N, K)``, ``labels (N,)``.

    k larger than K counts every clip as correct (``min(k, K)`` classes are taken).
    """
    top = scores.topk(min(max(ks), scores.shape[1]), dim=1).indices  # (N, k_max)
    hits = top == labels.view(-1, 1)
    return {k: hits[:, :k].any(dim=1).float().mean().item() for k in ks}


def per_class_accuracy(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[float | None]:
    """Recall per class: ``[correct / count]`` for each of ``num_classes``; ``None`` for a class with no clip."""
    out: list[float | None] = []
    for c in range(num_classes):
        mask = labels == c
        out.append((preds[mask] == c).float().mean().item() if mask.any() else None)
    return out


def confusion_matrix(preds: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[list[int]]:
    """``num_classes x num_classes`` counts; row = true class, column = predicted class."""
    flat = torch.bincount(labels * num_classes + preds, minlength=num_classes * num_classes)
    return flat.view(num_classes, num_classes).tolist()


def charades_map(
    scores: np.ndarray | torch.Tensor, labels: np.ndarray | torch.Tensor
) -> tuple[float, np.ndarray]:
    """Charades mAP (official protocol) and the AP of every class.

    Args:
        scores: ``(N, K)`` per-class scores of N videos.
        labels: ``(N, K)`` multi-hot ground truth (0 / 1).

    Returns:
        ``(mAP, ap)``: ``ap`` is ``(K,)`` with NaN for classes without positives; ``mAP`` is the mean over
        the others. Videos with no label are scored -inf for every class first. Tied scores are ranked by
        video order (a stable sort).

    Raises:
        ValueError: shapes differ, or no class has a positive.
    """
    scores = _numpy(scores).astype(np.float64)  # a copy: empty rows are overwritten below
    positive = _numpy(labels) > 0
    if scores.shape != positive.shape or scores.ndim != 2:
        raise ValueError(f"scores {scores.shape} and labels {positive.shape} must both be (N, K)")
    scores[~positive.any(axis=1)] = -np.inf
    order = np.argsort(-scores, axis=0, kind="stable")  # (N, K): videos by decreasing score, per class
    hits = np.take_along_axis(positive, order, axis=0)  # (N, K)
    precision = np.cumsum(hits, axis=0) / np.arange(1, len(hits) + 1)[:, None]
    n_pos = hits.sum(axis=0)
    if not n_pos.any():
        raise ValueError("no class has a positive: mAP is undefined")
    with np.errstate(invalid="ignore", divide="ignore"):
        ap = np.where(n_pos > 0, (precision * hits).sum(axis=0) / n_pos, np.nan)
    return float(np.nanmean(ap)), ap


def _numpy(x: np.ndarray | torch.Tensor) -> np.ndarray:
    return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def single_label_metrics(scores: torch.Tensor, labels: torch.Tensor, num_classes: int) -> dict[str, Any]:
    """``top1``, ``top5``, ``per_class_accuracy`` and ``confusion`` of ``scores (N, K)`` vs ``labels (N,)``."""
    acc = topk_accuracy(scores, labels, (1, 5))
    preds = scores.argmax(dim=1)
    return {
        "top1": acc[1],
        "top5": acc[5],
        "per_class_accuracy": per_class_accuracy(preds, labels, num_classes),
        "confusion": confusion_matrix(preds, labels, num_classes),
    }


def multilabel_metrics(scores: torch.Tensor, labels: torch.Tensor) -> dict[str, Any]:
    """``mAP`` and ``per_class_ap`` (``None`` for classes without positives) of ``scores (N, K)``."""
    value, ap = charades_map(scores, labels)
    return {"mAP": value, "per_class_ap": [None if np.isnan(a) else float(a) for a in ap]}
