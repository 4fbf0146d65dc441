"""Model bundles: a trained TubeViT in a folder, loadable without the pipeline and without pickle.

A bundle is ``<dir>/config.json`` plus the weights in one of two layouts:

- ``<dir>/model.pt``: a bare ``state_dict`` written by ``torch.save`` (what the training stages write),
  loaded with ``torch.load(weights_only=True)``;
- ``<dir>/model.safetensors``: the same tensors in the safetensors format (:func:`export_model`), loaded
  without pickle at all.

A folder holds exactly one of them (:func:`save_model` removes the other layout's file). The fixed position
embedding is a non-persistent buffer and never in the weights. ``config.json`` holds:

- ``format``: :data:`BUNDLE_FORMAT`; ``model``: the model config with the tube specs written out;
- ``heads``: dataset -> number of classes; ``classes``: dataset -> class names (index = label);
- ``inputs``: dataset -> ``{"frames": T, "size": S}`` the head was trained on, and where the stage records
  them, ``"fps"`` (frames per second the clips were sampled at) and ``"short_side"`` (pixels of the
  re-encoded frames' short side);
- ``multilabel``: dataset -> bool; ``parameters``; ``tokens`` (per dataset, at its input shape); and any
  extra keys of the stage (``stage``, ``steps``, ...);
- ``scaling`` (only for a model built by image-to-video scaling, paper §3.6): ``{"gate_index", "gated",
  "tube_dim"}`` from :func:`tubevit.model.convert.scaling_record`, so that the gate and a linear width map
  are rebuilt before the strict load.
"""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from tubevit.config.base import build, to_dict
from tubevit.config.model import ModelConfig, build_model
from tubevit.model.convert import apply_scaling_record, scaling_record
from tubevit.model.tubes import token_counts
from tubevit.model.tubevit import TubeViT
from tubevit.train.checkpoint import load_weights, save_weights

__all__ = [
    "BUNDLE_FORMAT",
    "CONFIG_FILE",
    "MODEL_FILE",
    "SAFETENSORS_FILE",
    "ExportError",
    "ModelBundle",
    "export_model",
    "load_model",
    "reference_input",
    "save_model",
    "weights_file",
]

BUNDLE_FORMAT = 1
MODEL_FILE = "model.pt"
SAFETENSORS_FILE = "model.safetensors"
CONFIG_FILE = "config.json"
_KNOWN_KEYS = {
    "format",
    "model",
    "heads",
    "classes",
    "inputs",
    "multilabel",
    "parameters",
    "tokens",
    "scaling",
}


class ExportError(RuntimeError):
    """An exported bundle does not reproduce the source bundle's logits."""


@dataclass
class ModelBundle:
    """A trained model and what ``config.json`` says about it."""

    model: TubeViT
    config: ModelConfig  # tubes written out as specs
    heads: dict[str, int]  # dataset -> number of classes
    classes: dict[str, list[str]]  # dataset -> class names
    inputs: dict[str, dict[str, Any]]  # dataset -> {"frames": T, "size": S[, "fps": f, "short_side": s]}
    multilabel: dict[str, bool]
    extra: dict[str, Any] = field(default_factory=dict)


@contextlib.contextmanager
def _atomic(final: Path) -> Iterator[Path]:
    """A temporary path beside ``final``, renamed over it on success and deleted on error."""
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}.tmp-{uuid.uuid4().hex}")
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


def _write_json(path: Path, obj: Any) -> None:
    with _atomic(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n", encoding="utf-8")


def _config_with_specs(cfg: ModelConfig, model: TubeViT) -> ModelConfig:
    """``cfg`` with ``tubes`` replaced by the model's current specs written out (after set_tubes)."""
    return ModelConfig(**{**to_dict(cfg), "tubes": [spec.to_dict() for spec in model.tubes]})


def _config_json(bundle: ModelBundle) -> dict[str, Any]:
    model = bundle.model
    cfg = _config_with_specs(bundle.config, model)
    tokens = {
        ds: sum(token_counts(model.tubes, shape["frames"], shape["size"], shape["size"]))
        for ds, shape in bundle.inputs.items()
    }
    return {
        "format": BUNDLE_FORMAT,
        "model": to_dict(cfg),
        "heads": dict(bundle.heads),
        "classes": bundle.classes,
        "inputs": bundle.inputs,
        "multilabel": bundle.multilabel,
        "parameters": sum(p.numel() for p in model.parameters()),
        "tokens": tokens,
        **bundle.extra,
        **({"scaling": scaling} if (scaling := scaling_record(model)) is not None else {}),
    }


def _save_safetensors(path: Path, state: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    with _atomic(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": f"tubevit-bundle-{BUNDLE_FORMAT}"})


def save_model(
    directory: str | Path, bundle: ModelBundle, layout: Literal["pt", "safetensors"] = "pt"
) -> Path:
    """Write the weights (``model.pt`` or ``model.safetensors``) and ``config.json`` atomically.

    The other layout's weights file, if present, is removed so that the folder is unambiguous. Returns
    ``directory``.
    """
    directory = Path(directory)
    if layout not in ("pt", "safetensors"):
        raise ValueError(f"layout must be 'pt' or 'safetensors', got {layout!r}")
    meta = _config_json(bundle)
    state = bundle.model.state_dict()
    if layout == "pt":
        save_weights(directory / MODEL_FILE, state)
        (directory / SAFETENSORS_FILE).unlink(missing_ok=True)
    else:
        _save_safetensors(directory / SAFETENSORS_FILE, state)
        (directory / MODEL_FILE).unlink(missing_ok=True)
    _write_json(directory / CONFIG_FILE, meta)
    return directory


def weights_file(directory: str | Path) -> Path:
    """The weights file of the bundle in ``directory``: ``model.safetensors`` or ``model.pt``.

    Raises:
        FileNotFoundError: ``config.json`` or both weights files are missing.
        ValueError: both weights files are present (which one is current is unknown).
    """
    directory = Path(directory)
    if not (directory / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{directory / CONFIG_FILE}: missing (not a model folder written by a stage)")
    found = [directory / n for n in (SAFETENSORS_FILE, MODEL_FILE) if (directory / n).is_file()]
    if not found:
        raise FileNotFoundError(
            f"{directory}: no weights ({SAFETENSORS_FILE} or {MODEL_FILE}); not a model folder written by a stage"
        )
    if len(found) == 2:
        raise ValueError(
            f"{directory}: both {SAFETENSORS_FILE} and {MODEL_FILE} are present; keep one (the folder "
            "is ambiguous)"
        )
    return found[0]


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    if path.name == SAFETENSORS_FILE:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(path), device="cpu")
        except (SafetensorError, OSError) as exc:
            raise ValueError(f"{path}: not a readable safetensors file ({exc})") from None
    return load_weights(path)  # torch.load(weights_only=True)


def load_model(directory: str | Path) -> ModelBundle:
    """Rebuild the model of ``<directory>/config.json`` and load its weights strictly, from
    ``model.safetensors`` (no pickle) or ``model.pt`` (``torch.load(weights_only=True)``).

    The model is returned on the CPU in training mode (call ``.eval()`` to predict).

    Raises:
        FileNotFoundError: ``config.json`` or the weights are missing.
        ValueError: ``config.json`` is not a bundle config of this format, or both layouts are present.
    """
    directory = Path(directory)
    weights = weights_file(directory)
    try:
        meta = json.loads((directory / CONFIG_FILE).read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"{directory / CONFIG_FILE}: not valid JSON ({exc})") from None
    if not isinstance(meta, dict) or meta.get("format") != BUNDLE_FORMAT:
        raise ValueError(f"{directory / CONFIG_FILE}: not a model config of format {BUNDLE_FORMAT}")
    cfg = build(ModelConfig, meta["model"], "model")
    heads = {str(k): int(v) for k, v in meta["heads"].items()}
    model = build_model(cfg, heads)
    if meta.get("scaling"):  # the image-to-video gate (and linear width map) of a scaled model
        apply_scaling_record(model, meta["scaling"])
    model.load_state_dict(_load_state(weights), strict=True)
    return ModelBundle(
        model=model,
        config=cfg,
        heads=heads,
        classes={k: list(v) for k, v in meta["classes"].items()},
        inputs={k: dict(v) for k, v in meta["inputs"].items()},
        multilabel={k: bool(v) for k, v in meta["multilabel"].items()},
        extra={k: v for k, v in meta.items() if k not in _KNOWN_KEYS},
    )


def reference_input(frames: int, size: int, seed: int = 0, batch: int = 2) -> torch.Tensor:
    """A fixed float32 input ``(batch, 3, frames, size, size)`` (standard normal, from a seeded
    ``torch.Generator``) for comparing two models' logits."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, frames, size, size, generator=gen)


@torch.no_grad()
def _logits(model: TubeViT, inputs: dict[str, dict[str, Any]]) -> dict[str, torch.Tensor]:
    model.eval()
    return {
        ds: model(reference_input(shape["frames"], shape["size"]), ds) for ds, shape in sorted(inputs.items())
    }


def export_model(source: str | Path, out: str | Path) -> dict[str, Any]:
    """Export the bundle in ``source`` (either layout) to ``out`` as ``model.safetensors`` + ``config.json``.

    Then reload ``out`` and check that every head gives bit-identical logits on a fixed input
    (:func:`reference_input` at the head's trained ``frames`` and ``size``, eval mode, CPU, fp32).

    Returns ``{"out", "weights", "tensors", "heads": {dataset: max |logit difference|}}``.

    Raises:
        ValueError: ``out`` is ``source``.
        ExportError: a head's logits differ after the round trip (the exported folder is left in place for
            inspection, and the message names the head and the largest difference).
    """
    source, out = Path(source), Path(out)
    if out.resolve() == source.resolve():
        raise ValueError(f"{out}: export needs a folder other than the source bundle")
    bundle = load_model(source)
    save_model(out, bundle, layout="safetensors")
    before = _logits(bundle.model, bundle.inputs)
    after = _logits(load_model(out).model, bundle.inputs)
    diffs: dict[str, float] = {}
    for ds, logits in before.items():
        diffs[ds] = float((after[ds] - logits).abs().max())
        if not torch.equal(after[ds], logits):
            raise ExportError(
                f"{out}: head {ds!r} logits differ after the export round trip (max |diff| {diffs[ds]:.3g})"
            )
    return {
        "out": str(out),
        "weights": str(out / SAFETENSORS_FILE),
        "tensors": len(bundle.model.state_dict()),
        "heads": diffs,
    }
