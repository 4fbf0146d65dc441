"""``params.yaml`` -> typed, validated config: the ONE place the params file is read.

Every stage's ``main()`` calls :func:`load_params_or_exit`; a malformed file stops the stage at start with
ONE line on stderr that names the dotted key, and exit status 2::

    params.yaml: pretrain.optim.lr: expected a number, got 'fast'

Malformed means: an unknown key, a wrong type, a value out of range (e.g. a negative fps), a dataset that
is referenced (``pretrain.datasets``, ``pretrain.loader``, ``finetune``, ``evaluate``, ``recipes``) but not
defined under ``datasets``, an invalid tube spec (checked by the model config), a duplicated YAML key or
a file that is not YAML.

Check a file by hand: ``python -m pipelines.params --check params.yaml``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from tubevit.config.base import ConfigError, build, check, to_dict
from tubevit.config.data import DatasetConfig, ReencodeConfig, ShardConfig

__all__ = [
    "ConfigError",
    "DeployConfig",
    "Params",
    "RecipeConfig",
    "load_params",
    "load_params_or_exit",
    "main",
    "read_yaml",
]

EXIT_BAD_PARAMS = 2


@dataclass(frozen=True)
class DeployConfig:
    """The Prefect deployments of ``pipelines/deploy.py``."""

    cron: str = "0 3 * * *"  # schedule of "tubevit-repro" (minute hour day month weekday)
    timezone: str = "UTC"  # IANA name the cron is read in

    def __post_init__(self) -> None:
        check(len(self.cron.split()) == 5, "cron", f"expected 5 cron fields, got {self.cron!r}")


@dataclass(frozen=True)
class RecipeConfig:
    """One column of supplement Table 1 for one model size (``recipes.<profile>.<dataset>.<variant>``).

    ``python -m pipelines.profile <profile> --variant <variant>`` copies these values into the active
    sections (``model``, ``datasets``, ``pretrain``, ``finetune``, ``evaluate``).
    Units: LR per step, steps and warmup in optimiser steps, batch in clips (global), fps in frames per
    second, frames per clip, size (crop side) and short side in pixels.
    """

    optimizer: Literal["adam"]  # Adam; weight decay per ``wd_mode``
    wd_mode: Literal["adamw", "decoupled_unscaled", "l2"]  # how weight decay is applied (DESIGN "Training")
    weight_decay: float
    lr: float  # base (peak) learning rate
    schedule: Literal["cosine"]  # linear warmup then cosine decay
    warmup_steps: int
    steps: int
    batch_size: int  # global batch
    randaugment_ops: int  # RandAugment layers
    randaugment_magnitude: int  # on the 0..10 scale
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

    def __post_init__(self) -> None:
        for name in ("weight_decay", "lr", "mixup", "label_smoothing", "dropout"):
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
        check(0 <= self.randaugment_magnitude <= 10, "randaugment_magnitude", "must be in [0, 10]")
        check(self.temporal_views >= 1, "temporal_views", f"must be >= 1, got {self.temporal_views}")
        check(self.spatial_views in (1, 3), "spatial_views", f"must be 1 or 3, got {self.spatial_views}")


# model, pretrain, finetune and evaluate are kept as plain mappings until tubevit.config.model and
# tubevit.config.train land; then they become ModelConfig, PretrainConfig, FinetuneConfig, EvaluateConfig.
@dataclass(frozen=True)
class Params:
    """The whole ``params.yaml``, validated. Sections mirror the stages (DESIGN.md "Params")."""

    datasets: dict[str, DatasetConfig]
    seed: int = 0
    reencode: ReencodeConfig = field(default_factory=ReencodeConfig)
    shard: ShardConfig = field(default_factory=ShardConfig)
    model: dict[str, Any] = field(default_factory=dict)
    pretrain: dict[str, Any] = field(default_factory=dict)
    finetune: dict[str, dict[str, Any]] = field(default_factory=dict)
    evaluate: dict[str, Any] = field(default_factory=dict)
    recipes: dict[str, dict[str, dict[str, RecipeConfig]]] = field(default_factory=dict)
    deploy: DeployConfig = field(default_factory=DeployConfig)

    def __post_init__(self) -> None:
        check(len(self.datasets) >= 1, "datasets", "must define at least one dataset")
        for key, name in self._dataset_references():
            check(name in self.datasets, key, f"dataset {name!r} is not defined under datasets")

    def _dataset_references(self) -> list[tuple[str, str]]:
        """(dotted key, dataset name) for every place that names a dataset."""
        refs: list[tuple[str, str]] = []
        for section in ("datasets", "loader"):
            value = self.pretrain.get(section)
            if isinstance(value, Mapping):
                refs += [(f"pretrain.{section}.{name}", str(name)) for name in value]
        refs += [(f"finetune.{name}", str(name)) for name in self.finetune]
        for section in ("datasets", "loader"):
            value = self.evaluate.get(section)
            if isinstance(value, Mapping):
                refs += [(f"evaluate.{section}.{name}", str(name)) for name in value]
            elif isinstance(value, list | tuple):
                refs += [(f"evaluate.{section}[{i}]", str(name)) for i, name in enumerate(value)]
        for profile, per_dataset in self.recipes.items():
            refs += [(f"recipes.{profile}.{name}", str(name)) for name in per_dataset]
        return refs

    def dataset(self, name: str) -> DatasetConfig:
        """The config of dataset ``name``; ``ConfigError('datasets.<name>')`` when it is not defined."""
        if name not in self.datasets:
            known = ", ".join(self.datasets) or "none"
            raise ConfigError(f"datasets.{name}", f"dataset {name!r} is not defined (defined: {known})")
        return self.datasets[name]

    def to_dict(self) -> dict[str, Any]:
        """The plain (YAML-ready) form: what :func:`load_params` would read back to an equal ``Params``."""
        return to_dict(self)


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses a key given twice in one mapping (PyYAML keeps the last silently)."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            line = key_node.start_mark.line + 1
            raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r} (line {line})")
        seen.add(key)
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping (safe loader, duplicate keys refused).

    Raises:
        ConfigError: the file is missing, is not YAML, or does not hold a mapping (key ``""``).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("", f"cannot read the file: {exc.strerror or exc}") from None
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)  # safe: a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ConfigError("", "not valid YAML: " + " ".join(str(exc).split())) from None
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError("", f"expected a mapping at the top level, got {type(data).__name__}")
    return dict(data)


def load_params(path: str | Path = "params.yaml") -> Params:
    """Read and validate ``path``.

    Raises:
        ConfigError: the first problem found; ``str(exc)`` starts with the dotted key.
    """
    return build(Params, read_yaml(path))


def format_error(path: str | Path, exc: ConfigError) -> str:
    """The one-line message of a params error: ``<path>: <dotted key>: <reason>``."""
    return f"{path}: {exc}"


def load_params_or_exit(path: str | Path = "params.yaml", *, dataset: str | None = None) -> Params:
    """:func:`load_params` for a stage's ``main()``: on a bad file print one line to stderr and exit 2.

    Args:
        path: the params file.
        dataset: when given, also require ``datasets.<dataset>`` to be defined (a stage run for it).
    """
    try:
        params = load_params(path)
        if dataset is not None:
            params.dataset(dataset)
    except ConfigError as exc:
        print(format_error(path, exc), file=sys.stderr)
        raise SystemExit(EXIT_BAD_PARAMS) from None
    return params


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.params", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--check", metavar="PARAMS", default="params.yaml", help="the params file to validate"
    )
    args = parser.parse_args(argv)
    load_params_or_exit(args.check)
    print(f"{args.check}: ok")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
