"""Switch params.yaml to a named recipe: ``python -m pipelines.profile paper --variant base``.

``params.yaml`` holds the ACTIVE values, and DVC tracks exactly what runs (no hidden precedence).
``recipes.yaml`` holds whole training recipes, ``<profile>.<dataset>.<variant>`` (``paper``: every value of
supplement Table 1, ``embedded``: the CPU-sized default). They live outside params.yaml, so that DVC (``dvc
exp show``, ``dvc params diff``) lists only the active values. This command copies one recipe into the
active sections and rewrites params.yaml atomically, keeping its comments and layout; then ``dvc repro``
runs it and ``dvc exp run -S key=value`` still overrides single values on top.

Where each recipe goes:
- the recipe of a dataset that is mixed in ``pretrain.datasets`` (``kinetics``) sets the pretraining
  stage: ``model.variant``, ``model.tubes``, ``pretrain.optim``, ``steps``, ``label_smoothing``, ``mixup``,
  ``accum_steps``, ``compile``, ``precision``, ``grad_checkpointing`` and every ``pretrain.loader.<ds>``
  (image datasets get ``frames: 1``; each gets the recipe's ``augment_on``), plus
  ``evaluate``'s views;
- the recipe of a dataset under ``finetune`` (``charades``, ``ssv2``) sets ``finetune.<ds>`` the same way,
  with ``dropout`` and a ``tubes`` override when its tube set differs from the pretraining one;
- every recipe sets ``datasets.<ds>.fps`` and ``short_side`` (images mixed in pretraining get that recipe's
  short side).

Augmentation: every loader gets the recipe's crop scale and ratio and RandAugment ops and magnitude; the
optimiser its ``clip_grad`` (the paper does not state one: recipes.yaml documents the choice).

Batch: the recipe's batch is GLOBAL (Table 1: 256, Charades 64). It is split as
``loader.batch_size (per rank micro-batch) x accum_steps x nproc``; ``--micro-batch`` defaults to the largest
divisor of ``batch / nproc`` that is <= 32.

Data sources are left alone. A profile other than ``embedded`` refuses a dataset that is still on ``source:
synthetic`` (Table 1 on synthetic clips is rarely what one means): point ``datasets.<ds>.source``/``uri`` at
the real data first (docs/pipeline.md), or pass ``--allow-synthetic`` (e.g. to test a recipe's shapes).
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ruamel.yaml import YAML

from pipelines.common import write_text_atomic
from pipelines.params import ConfigError, Params, check_model, format_error, read_yaml
from tubevit.config.base import build, check
from tubevit.config.model import ModelConfig

__all__ = [
    "DEFAULT_RECIPES",
    "RecipeConfig",
    "RecipeError",
    "Recipes",
    "apply_profile",
    "load_recipes",
    "main",
    "profile_updates",
    "split_batch",
]

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_RECIPES = ROOT / "recipes.yaml"
MAX_MICRO_BATCH = 32
SYNTHETIC_PROFILES = ("embedded",)  # profiles made for the synthetic datasets; the others refuse them


@dataclass(frozen=True)
class RecipeConfig:
    """One column of supplement Table 1 for one model size (``recipes.yaml``: ``<profile>.<dataset>.<variant>``).

    Units: LR per step, steps and warmup in optimiser steps, batch in clips (global), fps in frames per
    second, frames per clip, size (crop side) and short side in pixels. The optional fields (``None``) leave
    the active value alone.
    """

    optimizer: Literal["adam"]  # Adam; weight decay per ``wd_mode``
    wd_mode: Literal["adamw", "decoupled_unscaled", "l2"]  # how weight decay is applied (docs/design.md)
    weight_decay: float
    lr: float  # base (peak) learning rate
    schedule: Literal["cosine"]  # linear warmup then cosine decay
    warmup_steps: int
    clip_grad: float  # max global gradient L2 norm; 0 = off (not stated by the paper: our choice)
    steps: int
    batch_size: int  # global batch
    randaugment_ops: int  # RandAugment layers; 0 = off
    randaugment_magnitude: int  # on the 0..10 scale
    crop_scale: tuple[float, float]  # RandomResizedCrop scale
    crop_ratio: tuple[float, float]  # RandomResizedCrop aspect ratio
    mixup: float  # Beta alpha; 0 = off
    label_smoothing: float
    dropout: float
    frames: int  # T per clip
    fps: float  # re-encode / sampling frame rate
    size: int  # crop side
    short_side: int  # re-encode short side
    tubes: str  # tube set name (tubevit.model.tubes.get_tube_set)
    temporal_views: int  # evaluation views
    spatial_views: int
    # How it runs (GPU recipes); None leaves the active value alone.
    compile: bool | None = None  # torch.compile the model
    precision: Literal["auto", "bf16", "fp16", "fp32"] | None = None  # auto: bf16 on CUDA, fp32 on the CPU
    grad_checkpointing: bool | None = None  # recompute the encoder blocks in backward (L/H at 64 frames)
    augment_on: Literal["auto", "cpu", "device"] | None = None  # where crop/RandAugment run, every loader
    # Image-to-video scaling (paper §3.6, Eq. 8), pretraining recipes only; None: train the model in full.
    # The paths are files or bundles under weights/ that the user provides (weights/README.md).
    scale_from_layer: int | None = (
        None  # s: the gated skip tanh(alpha) * z_0 into layer s; blocks before s frozen
    )
    init_from: str | None = None  # the large image-pretrained ViT (timm or torchvision layout)
    tubes_from: str | None = None  # the smaller trained TubeViT whose tubes are taken
    width_map: Literal["auto", "s2d", "linear"] = "auto"  # auto: S2D for integer width ratios, else linear
    gated: bool = True

    def __post_init__(self) -> None:
        for name in ("weight_decay", "lr", "mixup", "label_smoothing", "dropout", "clip_grad"):
            value = getattr(self, name)
            check(value >= 0, name, f"must be >= 0, got {value}")
        check(self.lr > 0, "lr", f"must be > 0, got {self.lr}")
        check(0 <= self.warmup_steps < self.steps, "warmup_steps", "must be in [0, steps)")
        check(self.batch_size >= 1, "batch_size", f"must be >= 1, got {self.batch_size}")
        check(self.fps > 0, "fps", f"must be > 0 frames per second, got {self.fps}")
        check(self.frames >= 1, "frames", f"must be >= 1, got {self.frames}")
        check(self.size >= 8, "size", f"must be >= 8 pixels, got {self.size}")
        check(self.short_side >= self.size, "short_side", f"must be >= size ({self.size})")
        check(self.dropout < 1, "dropout", f"must be < 1, got {self.dropout}")
        check(self.label_smoothing < 1, "label_smoothing", f"must be < 1, got {self.label_smoothing}")
        check(self.randaugment_ops >= 0, "randaugment_ops", f"must be >= 0, got {self.randaugment_ops}")
        check(0 <= self.randaugment_magnitude <= 10, "randaugment_magnitude", "must be in [0, 10]")
        check(0 < self.crop_scale[0] <= self.crop_scale[1] <= 1, "crop_scale", f"bad range {self.crop_scale}")
        check(0 < self.crop_ratio[0] <= self.crop_ratio[1], "crop_ratio", f"bad range {self.crop_ratio}")
        check(self.temporal_views >= 1, "temporal_views", f"must be >= 1, got {self.temporal_views}")
        check(self.spatial_views in (1, 3), "spatial_views", f"must be 1 or 3, got {self.spatial_views}")
        if self.scale_from_layer is not None:
            check(
                self.scale_from_layer >= 1, "scale_from_layer", f"must be >= 1, got {self.scale_from_layer}"
            )
            for name in ("init_from", "tubes_from"):
                check(getattr(self, name) is not None, name, "image-to-video scaling needs it")


# profile -> dataset -> variant -> recipe
Recipes = dict[str, dict[str, dict[str, RecipeConfig]]]


def _mapping(value: Any, key: str) -> Mapping:
    if not isinstance(value, Mapping) or not value:
        raise ConfigError(key, f"expected a non-empty mapping, got {value!r}")
    return value


def load_recipes(path: str | Path = DEFAULT_RECIPES) -> Recipes:
    """Read and validate a recipes file: ``<profile>.<dataset>.<variant>`` -> :class:`RecipeConfig`.

    Each recipe's ``tubes`` must be valid for its model variant. Error keys are dotted paths in the file
    (``paper.ssv2.base.tubes``).

    Raises:
        ConfigError: the first problem found.
    """
    data = read_yaml(path)
    recipes: Recipes = {}
    for profile, per_dataset in data.items():
        recipes[profile] = {}
        for name, variants in _mapping(per_dataset, str(profile)).items():
            recipes[profile][name] = {}
            for variant, raw in _mapping(variants, f"{profile}.{name}").items():
                key = f"{profile}.{name}.{variant}"
                recipe = build(RecipeConfig, raw, key)
                check_model(ModelConfig(), key, variant=variant, tubes=recipe.tubes)
                recipes[profile][name][variant] = recipe
    return recipes


def split_batch(global_batch: int, nproc: int, micro_batch: int | None = None) -> tuple[int, int]:
    """``(micro_batch, accum_steps)`` with ``micro_batch * accum_steps * nproc == global_batch``.

    Raises:
        ConfigError: ``global_batch`` is not divisible by ``nproc * micro_batch``.
    """
    if global_batch % nproc:
        raise ConfigError("batch_size", f"global batch {global_batch} is not divisible by nproc={nproc}")
    per_rank = global_batch // nproc
    if micro_batch is None:
        micro_batch = max(d for d in range(1, min(per_rank, MAX_MICRO_BATCH) + 1) if per_rank % d == 0)
    if micro_batch < 1 or per_rank % micro_batch:
        raise ConfigError(
            "batch_size", f"global batch {global_batch} / nproc {nproc} is not divisible by {micro_batch}"
        )
    return micro_batch, per_rank // micro_batch


def _stage_updates(
    prefix: str, recipe: RecipeConfig, loaders: dict[str, bool], nproc: int, micro_batch: int | None
) -> dict[str, Any]:
    """Updates of one training section (``pretrain`` or ``finetune.<ds>``); ``loaders``: name -> is_image.

    ``loaders`` empty means the section has a single ``loader`` (finetune).
    """
    micro, accum = split_batch(recipe.batch_size, nproc, micro_batch)
    out: dict[str, Any] = {
        f"{prefix}.optim.lr": recipe.lr,
        f"{prefix}.optim.weight_decay": recipe.weight_decay,
        f"{prefix}.optim.wd_mode": recipe.wd_mode,
        f"{prefix}.optim.warmup_steps": recipe.warmup_steps,
        f"{prefix}.optim.schedule": recipe.schedule,
        f"{prefix}.optim.clip_grad": recipe.clip_grad,
        f"{prefix}.steps": recipe.steps,
        f"{prefix}.accum_steps": accum,
        f"{prefix}.nproc": nproc,
        f"{prefix}.label_smoothing": recipe.label_smoothing,
        f"{prefix}.mixup": recipe.mixup,
    }
    for name in ("compile", "precision", "grad_checkpointing"):
        if getattr(recipe, name) is not None:
            out[f"{prefix}.{name}"] = getattr(recipe, name)
    loader_prefixes = {f"{prefix}.loader.{n}": img for n, img in loaders.items()} or {
        f"{prefix}.loader": False
    }
    for lp, is_image in loader_prefixes.items():
        out |= {
            f"{lp}.frames": 1 if is_image else recipe.frames,
            f"{lp}.size": recipe.size,
            f"{lp}.batch_size": micro,
            f"{lp}.crop_scale": list(recipe.crop_scale),
            f"{lp}.crop_ratio": list(recipe.crop_ratio),
            f"{lp}.randaugment": recipe.randaugment_ops > 0,
            f"{lp}.randaugment_ops": recipe.randaugment_ops,
            f"{lp}.randaugment_magnitude": recipe.randaugment_magnitude,
        }
        if recipe.augment_on is not None:
            out[f"{lp}.augment_on"] = recipe.augment_on
    return out


def _refuse_synthetic(params: Params, profile: str, names: list[str]) -> None:
    for name in names:
        if params.datasets[name].source == "synthetic":
            raise ConfigError(
                f"datasets.{name}.source",
                f"still 'synthetic': profile {profile!r} is meant for the real dataset; point "
                f"datasets.{name}.source and uri at it first, or pass --allow-synthetic",
            )


def profile_updates(
    params: Params,
    recipes: Recipes,
    profile: str,
    variant: str,
    *,
    nproc: int = 1,
    micro_batch: int | None = None,
    allow_synthetic: bool = False,
) -> dict[str, Any]:
    """The dotted keys (and values) that switch ``params`` to ``recipes[profile][*][variant]``.

    Raises:
        ConfigError: no such profile or variant, a recipe for a dataset that ``params`` does not define, a
            batch that does not split (see :func:`split_batch`), or (profiles other than ``embedded``, unless
            ``allow_synthetic``) a dataset it sets that is still on ``source: synthetic``.
    """
    if profile not in recipes:
        known = ", ".join(recipes) or "none"
        raise ConfigError(profile, f"no such profile (defined: {known})")
    per_dataset = recipes[profile]
    updates: dict[str, Any] = {}
    pretrain_datasets = list(params.pretrain.datasets)
    touched: list[str] = []
    for ds, variants in per_dataset.items():
        if ds not in params.datasets:
            raise ConfigError(f"{profile}.{ds}", f"dataset {ds!r} is not defined under datasets in params")
        if variant not in variants:
            known = ", ".join(variants)
            raise ConfigError(f"{profile}.{ds}.{variant}", f"no such variant (defined: {known})")
        recipe = variants[variant]
        touched.append(ds)
        updates[f"datasets.{ds}.fps"] = recipe.fps
        updates[f"datasets.{ds}.short_side"] = recipe.short_side
        if ds in pretrain_datasets:
            loaders = {name: params.datasets[name].is_image for name in pretrain_datasets}
            updates |= _stage_updates("pretrain", recipe, loaders, nproc, micro_batch)
            updates["model.variant"] = variant
            # how pretraining starts: §3.6 image-to-video scaling, or (None) the whole model from scratch;
            # only the keys whose active value differs are written
            start = {
                "init_from": recipe.init_from,
                "tubes_from": recipe.tubes_from,
                "scale_from_layer": recipe.scale_from_layer or 0,
                "width_map": recipe.width_map,
                "gated": recipe.gated,
            }
            for key, value in start.items():
                if getattr(params.pretrain, key) != value:
                    updates[f"pretrain.{key}"] = value
            updates["model.tubes"] = recipe.tubes
            updates["model.head_dropout"] = recipe.dropout
            updates["evaluate.temporal_views"] = recipe.temporal_views
            updates["evaluate.spatial_views"] = recipe.spatial_views
            for name in pretrain_datasets:
                if params.datasets[name].is_image:
                    updates[f"datasets.{name}.short_side"] = recipe.short_side
                    touched.append(name)
    if profile not in SYNTHETIC_PROFILES and not allow_synthetic:
        _refuse_synthetic(params, profile, list(dict.fromkeys(touched)))
    pretrain_tubes = updates.get("model.tubes", params.model.tubes)
    for ds, variants in per_dataset.items():
        if ds in params.finetune:
            recipe = variants[variant]
            updates |= _stage_updates(f"finetune.{ds}", recipe, {}, nproc, micro_batch)
            updates[f"finetune.{ds}.dropout"] = recipe.dropout
            updates[f"finetune.{ds}.tubes"] = recipe.tubes if recipe.tubes != pretrain_tubes else None
    return updates


_MISSING = object()


def _get_dotted(doc: MutableMapping, dotted: str) -> Any:
    node: Any = doc
    for name in dotted.split("."):
        if not isinstance(node, MutableMapping) or name not in node:
            return _MISSING
        node = node[name]
    return node


def _same_number(a: Any, b: Any) -> bool:
    """15 and 15.0 are the same value (keep the file's spelling); True and 1 are not."""
    numbers = (int, float)
    return (
        isinstance(a, numbers)
        and isinstance(b, numbers)
        and not isinstance(a, bool)
        and not isinstance(b, bool)
        and a == b
    )


def _same_value(old: Any, new: Any) -> bool:
    """``old`` (read from the file) already holds ``new``: equal with the same type, equal numbers, or
    equal lists of those."""
    if isinstance(old, list) and isinstance(new, list):
        return len(old) == len(new) and all(_same_value(a, b) for a, b in zip(old, new, strict=True))
    return (old == new and type(old) is type(new)) or _same_number(old, new)


def _set_dotted(doc: MutableMapping, dotted: str, value: Any) -> None:
    """Set ``doc[a][b][c] = value`` for ``"a.b.c"``, creating mappings on the way. A list replaces the
    items of an existing list, so that its flow style (``[0.25, 1.0]``) is kept."""
    *parents, last = dotted.split(".")
    node = doc
    for name in parents:
        if node.get(name) is None:
            node[name] = {}
        node = node[name]
    if isinstance(value, list) and isinstance(node.get(last), list):
        node[last][:] = value
    else:
        node[last] = value


def _represent_none(representer: Any, data: None) -> Any:
    return representer.represent_scalar("tag:yaml.org,2002:null", "null")


class RecipeError(ConfigError):
    """A problem in the recipes file, or a profile or variant it does not define (key: dotted in that file)."""


def apply_profile(
    path: str | Path,
    profile: str,
    variant: str,
    *,
    recipes: str | Path = DEFAULT_RECIPES,
    nproc: int | None = None,
    micro_batch: int | None = None,
    allow_synthetic: bool = False,
    dry_run: bool = False,
) -> list[tuple[str, Any, Any]]:
    """Copy ``<profile>.*.<variant>`` of the recipes file into the active sections of the params file ``path``.

    The result is validated as a whole before the file is replaced (atomically); comments and layout are
    kept. ``nproc`` defaults to the file's ``pretrain.nproc``.

    Returns:
        ``(dotted key, old value, new value)`` for every value that changed.

    Raises:
        RecipeError: the recipes file is invalid, or has no such profile or variant.
        ConfigError: the params file, the batch split or the result is invalid, or a dataset is still on
            ``source: synthetic`` (see :func:`profile_updates`). The file is then left unchanged.
    """
    path = Path(path)
    params = build(Params, read_yaml(path))
    try:
        book = load_recipes(recipes)
    except ConfigError as exc:
        raise RecipeError(exc.key, exc.reason) from None
    if nproc is None:
        nproc = params.pretrain.nproc
    if profile not in book:
        raise RecipeError(profile, f"no such profile (defined: {', '.join(book) or 'none'})")
    for ds, variants in book[profile].items():
        if variant not in variants:
            raise RecipeError(
                f"{profile}.{ds}.{variant}", f"no such variant (defined: {', '.join(variants)})"
            )
    updates = profile_updates(
        params,
        book,
        profile,
        variant,
        nproc=nproc,
        micro_batch=micro_batch,
        allow_synthetic=allow_synthetic,
    )

    yaml = YAML()  # round-trip: keeps comments, key order and flow style
    yaml.width = 4096  # never wrap a flow mapping
    yaml.preserve_quotes = True
    yaml.representer.add_representer(type(None), _represent_none)
    doc = yaml.load(path.read_text(encoding="utf-8"))
    changes = []
    for key, value in updates.items():
        old = _get_dotted(doc, key)
        if _same_value(old, value):
            continue
        old = list(old) if isinstance(old, list) else old  # a copy: the list is updated in place
        _set_dotted(doc, key, value)
        changes.append((key, old, value))
    buffer = io.StringIO()
    yaml.dump(doc, buffer)
    text = buffer.getvalue()

    tmp_check = path.with_name(f".{path.name}.profile-check")
    try:
        tmp_check.write_text(text, encoding="utf-8")
        build(Params, read_yaml(tmp_check))  # the whole result must validate
    finally:
        tmp_check.unlink(missing_ok=True)
    if not dry_run and changes:
        write_text_atomic(path, text)
    return changes


EPILOG = """\
examples:
  python -m pipelines.profile paper --variant base --nproc 8           # Table 1, ViT-B, one 8-GPU node
  python -m pipelines.profile paper --variant large --nproc 8 --micro-batch 4
  python -m pipelines.profile paper --variant base --dry-run           # print the changes only
  python -m pipelines.profile paper --variant base --allow-synthetic   # Table 1 on the synthetic data
  python -m pipelines.profile embedded --variant nano                  # back to the CPU-sized default
then: dvc repro (or dvc exp run -S key=value on top)
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.profile",
        description=__doc__.split("\n")[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("profile", help="a profile of the recipes file (paper, embedded)")
    parser.add_argument("--variant", required=True, help="model size: base, large, huge (paper); nano")
    parser.add_argument("--params", default="params.yaml", help="the params file to rewrite")
    parser.add_argument("--recipes", default="recipes.yaml", help="the recipes file (default: recipes.yaml)")
    parser.add_argument("--nproc", type=int, default=None, help="ranks per node (default: pretrain.nproc)")
    parser.add_argument("--micro-batch", type=int, default=None, help="per-rank batch (default: <= 32)")
    parser.add_argument(
        "--allow-synthetic",
        action="store_true",
        help="apply a paper-scale profile even to datasets still on source: synthetic",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the changes, write nothing")
    args = parser.parse_args(argv)
    try:
        changes = apply_profile(
            args.params,
            args.profile,
            args.variant,
            recipes=args.recipes,
            nproc=args.nproc,
            micro_batch=args.micro_batch,
            allow_synthetic=args.allow_synthetic,
            dry_run=args.dry_run,
        )
    except ConfigError as exc:
        print(
            format_error(args.recipes if isinstance(exc, RecipeError) else args.params, exc), file=sys.stderr
        )
        return 2
    for key, old, new in changes:
        print(f"{key}: {'(absent)' if old is _MISSING else repr(old)} -> {new!r}")
    verb = "would change" if args.dry_run else "changed"
    print(
        f"{args.params}: profile {args.profile}/{args.variant}: {verb} {len(changes)} values", file=sys.stderr
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
