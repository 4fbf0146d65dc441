"""Switch params.yaml to a named recipe: ``python -m pipelines.profile paper --variant base``.

``params.yaml`` holds the ACTIVE values, and DVC tracks exactly what runs (no hidden precedence).
``recipes.<profile>.<dataset>.<variant>`` holds a whole training recipe (``paper``: every value of
supplement Table 1). This command copies one recipe into the active sections and rewrites params.yaml
atomically, keeping its comments and layout; then ``dvc repro`` runs it and ``dvc exp run -S key=value``
still overrides single values on top::

    python -m pipelines.profile paper --variant base            # Table 1, ViT-B
    python -m pipelines.profile paper --variant large --nproc 8 --micro-batch 4
    python -m pipelines.profile embedded --variant nano         # back to the CPU-sized default

Where each recipe goes:
- the recipe of a dataset that is mixed in ``pretrain.datasets`` (``kinetics``) sets the pretraining
  stage: ``model.variant``, ``model.tubes``, ``pretrain.optim``, ``steps``, ``label_smoothing``, ``mixup``,
  ``accum_steps`` and every ``pretrain.loader.<ds>`` (image datasets get ``frames: 1``), plus
  ``evaluate``'s views;
- the recipe of a dataset under ``finetune`` (``charades``, ``ssv2``) sets ``finetune.<ds>`` the same way,
  with ``dropout`` and a ``tubes`` override when its tube set differs from the pretraining one;
- every recipe sets ``datasets.<ds>.fps`` and ``short_side`` (images mixed in pretraining get that recipe's
  short side).

Batch: the recipe's batch is GLOBAL (Table 1: 256, Charades 64). It is split as
``loader.batch_size (per rank micro-batch) x accum_steps x nproc``; ``--micro-batch`` defaults to the largest
divisor of ``batch / nproc`` that is <= 32.

Data sources are left alone: the paper profile on ``source: synthetic`` trains Table 1 on synthetic data.
Point ``datasets.<ds>.source``/``uri`` at the real data separately (docs/pipeline.md).
"""

from __future__ import annotations

import argparse
import io
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML

from pipelines.common import write_text_atomic
from pipelines.params import ConfigError, Params, RecipeConfig, format_error, read_yaml
from tubevit.config.base import build

__all__ = ["apply_profile", "main", "profile_updates", "split_batch"]

MAX_MICRO_BATCH = 32


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
        f"{prefix}.steps": recipe.steps,
        f"{prefix}.accum_steps": accum,
        f"{prefix}.nproc": nproc,
        f"{prefix}.label_smoothing": recipe.label_smoothing,
        f"{prefix}.mixup": recipe.mixup,
    }
    loader_prefixes = {f"{prefix}.loader.{n}": img for n, img in loaders.items()} or {
        f"{prefix}.loader": False
    }
    for lp, is_image in loader_prefixes.items():
        out |= {
            f"{lp}.frames": 1 if is_image else recipe.frames,
            f"{lp}.size": recipe.size,
            f"{lp}.batch_size": micro,
            f"{lp}.randaugment": recipe.randaugment_ops > 0,
            f"{lp}.randaugment_ops": recipe.randaugment_ops,
            f"{lp}.randaugment_magnitude": recipe.randaugment_magnitude,
        }
    return out


def profile_updates(
    params: Params, profile: str, variant: str, *, nproc: int = 1, micro_batch: int | None = None
) -> dict[str, Any]:
    """The dotted keys (and values) that switch ``params`` to ``recipes.<profile>.*.<variant>``.

    Raises:
        ConfigError: no such profile or variant, or a batch that does not split (see :func:`split_batch`).
    """
    if profile not in params.recipes:
        known = ", ".join(params.recipes) or "none"
        raise ConfigError(f"recipes.{profile}", f"no such profile (defined: {known})")
    per_dataset = params.recipes[profile]
    updates: dict[str, Any] = {}
    pretrain_datasets = list(params.pretrain.datasets)
    for ds, variants in per_dataset.items():
        if variant not in variants:
            known = ", ".join(variants)
            raise ConfigError(f"recipes.{profile}.{ds}.{variant}", f"no such variant (defined: {known})")
        recipe = variants[variant]
        updates[f"datasets.{ds}.fps"] = recipe.fps
        updates[f"datasets.{ds}.short_side"] = recipe.short_side
        if ds in pretrain_datasets:
            loaders = {name: params.datasets[name].is_image for name in pretrain_datasets}
            updates |= _stage_updates("pretrain", recipe, loaders, nproc, micro_batch)
            updates["model.variant"] = variant
            updates["model.tubes"] = recipe.tubes
            updates["model.head_dropout"] = recipe.dropout
            updates["evaluate.temporal_views"] = recipe.temporal_views
            updates["evaluate.spatial_views"] = recipe.spatial_views
            for name in pretrain_datasets:
                if params.datasets[name].is_image:
                    updates[f"datasets.{name}.short_side"] = recipe.short_side
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


def _set_dotted(doc: MutableMapping, dotted: str, value: Any) -> None:
    """Set ``doc[a][b][c] = value`` for ``"a.b.c"``, creating mappings on the way."""
    *parents, last = dotted.split(".")
    node = doc
    for name in parents:
        if node.get(name) is None:
            node[name] = {}
        node = node[name]
    node[last] = value


def _represent_none(representer: Any, data: None) -> Any:
    return representer.represent_scalar("tag:yaml.org,2002:null", "null")


def apply_profile(
    path: str | Path,
    profile: str,
    variant: str,
    *,
    nproc: int | None = None,
    micro_batch: int | None = None,
    dry_run: bool = False,
) -> list[tuple[str, Any, Any]]:
    """Copy ``recipes.<profile>.*.<variant>`` into the active sections of the params file ``path``.

    The result is validated as a whole before the file is replaced (atomically); comments and layout are
    kept. ``nproc`` defaults to the file's ``pretrain.nproc``.

    Returns:
        ``(dotted key, old value, new value)`` for every value that changed.

    Raises:
        ConfigError: the file, the profile or the result is invalid (the file is then left unchanged).
    """
    path = Path(path)
    params = build(Params, read_yaml(path))
    if nproc is None:
        nproc = params.pretrain.nproc
    updates = profile_updates(params, profile, variant, nproc=nproc, micro_batch=micro_batch)

    yaml = YAML()  # round-trip: keeps comments, key order and flow style
    yaml.width = 4096  # never wrap a flow mapping
    yaml.preserve_quotes = True
    yaml.representer.add_representer(type(None), _represent_none)
    doc = yaml.load(path.read_text(encoding="utf-8"))
    changes = []
    for key, value in updates.items():
        old = _get_dotted(doc, key)
        if (old == value and type(old) is type(value)) or _same_number(old, value):
            continue
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.profile", description=__doc__.split("\n")[0])
    parser.add_argument("profile", help="a name under recipes (e.g. paper, embedded)")
    parser.add_argument("--variant", required=True, help="model size: base, large, huge (paper); nano")
    parser.add_argument("--params", default="params.yaml", help="the params file to rewrite")
    parser.add_argument("--nproc", type=int, default=None, help="ranks per node (default: pretrain.nproc)")
    parser.add_argument("--micro-batch", type=int, default=None, help="per-rank batch (default: <= 32)")
    parser.add_argument("--dry-run", action="store_true", help="print the changes, write nothing")
    args = parser.parse_args(argv)
    try:
        changes = apply_profile(
            args.params,
            args.profile,
            args.variant,
            nproc=args.nproc,
            micro_batch=args.micro_batch,
            dry_run=args.dry_run,
        )
    except ConfigError as exc:
        print(format_error(args.params, exc), file=sys.stderr)
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
