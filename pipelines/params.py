"""``params.yaml`` -> typed, validated config: the ONE place the params file is read.

Every stage's ``main()`` calls :func:`load_params_or_exit`; a malformed file stops the stage at start with
ONE line on stderr that names the dotted key, and exit status 2::

    params.yaml: pretrain.optim.lr: expected a number, got 'fast'

Malformed means: an unknown key, a wrong type, a value out of range (e.g. a negative fps), a dataset that
is referenced (``pretrain.datasets``, ``pretrain.loader``, ``finetune``) but not defined
under ``datasets``, an invalid tube spec (checked by :class:`tubevit.config.model.ModelConfig`), a duplicated
YAML key or a file that is not YAML.

Check a file by hand: ``python -m pipelines.params --check params.yaml``.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import zoneinfo
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, get_args, get_type_hints

from ruamel.yaml import YAML
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from tubevit.config.base import ConfigError, build, check, to_dict
from tubevit.config.data import DatasetConfig, ReencodeConfig, ShardConfig
from tubevit.config.model import ModelConfig
from tubevit.config.train import EvaluateConfig, FinetuneConfig, PretrainConfig

__all__ = [
    "ConfigError",
    "DeployConfig",
    "Params",
    "check_model",
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
        try:
            zoneinfo.ZoneInfo(self.timezone)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ConfigError("timezone", f"unknown IANA time zone {self.timezone!r}") from None


def check_model(model: ModelConfig, key: str, **changes: Any) -> None:
    """Validate ``model`` with ``changes`` (a variant, a tube set) as if they stood at ``key``."""
    variants = get_args(get_type_hints(ModelConfig)["variant"])
    if "variant" in changes and changes["variant"] not in variants:
        raise ConfigError(key, f"unknown model variant {changes['variant']!r}; known: {', '.join(variants)}")
    try:
        dataclasses.replace(model, **changes)
    except ConfigError as exc:
        raise ConfigError(f"{key}.{exc.key}", exc.reason) from None


@dataclass(frozen=True)
class Params:
    """The whole ``params.yaml``, validated. Sections mirror the stages (docs/design.md "Params")."""

    datasets: dict[str, DatasetConfig]
    reencode: ReencodeConfig = field(default_factory=ReencodeConfig)
    shard: ShardConfig = field(default_factory=ShardConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    finetune: dict[str, FinetuneConfig] = field(default_factory=dict)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    deploy: DeployConfig = field(default_factory=DeployConfig)

    def __post_init__(self) -> None:
        check(len(self.datasets) >= 1, "datasets", "must define at least one dataset")
        for key, name in self._dataset_references():
            check(name in self.datasets, key, f"dataset {name!r} is not defined under datasets")
        for name, cfg in self.finetune.items():
            if cfg.tubes is not None:
                check_model(self.model, f"finetune.{name}", tubes=cfg.tubes)
            multilabel = self.datasets[name].multilabel
            check(
                cfg.multilabel == multilabel,
                f"finetune.{name}.multilabel",
                f"must equal datasets.{name}.multilabel ({str(multilabel).lower()})",
            )

    def _dataset_references(self) -> list[tuple[str, str]]:
        """(dotted key, dataset name) for every place that names a dataset."""
        refs = [(f"pretrain.datasets.{name}", name) for name in self.pretrain.datasets]
        refs += [(f"pretrain.loader.{name}", name) for name in self.pretrain.loader]
        refs += [(f"finetune.{name}", name) for name in self.finetune]
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


def read_yaml(path: str | Path) -> dict[str, Any]:
    """Read a YAML mapping as DVC does (YAML 1.2, ruamel's safe loader; a key given twice is refused).

    YAML 1.2 matters: ``dvc exp run -S lr=5e-5`` writes ``5e-05``, a float in YAML 1.2 but a string for
    YAML 1.1 readers (PyYAML).

    Raises:
        ConfigError: the file is missing, is not YAML, or does not hold a mapping (key ``""``).
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError("", f"cannot read the file: {exc.strerror or exc}") from None
    try:
        data = YAML(typ="safe", pure=True).load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}: " if mark is not None else ""
        what = " ".join(str(exc.problem or exc.context or "").split())
        raise ConfigError("", f"not valid YAML: {where}{what}") from None
    except YAMLError as exc:
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


EPILOG = """\
examples:
  python -m pipelines.params --check params.yaml
  python -m pipelines.params --check params.yaml tests/fixtures/params-micro.yaml
exit status 2 and one line per bad file on stderr: <file>: <dotted key>: <reason>
"""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.params",
        description=__doc__.split("\n")[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--check", metavar="PARAMS", nargs="+", default=["params.yaml"], help="params files to validate"
    )
    args = parser.parse_args(argv)
    status = 0
    for (
        path
    ) in args.check:  # one line per file: "<path>: ok" on stdout or "<path>: <key>: <reason>" on stderr
        try:
            load_params(path)
        except ConfigError as exc:
            print(format_error(path, exc), file=sys.stderr)
            status = EXIT_BAD_PARAMS
        else:
            print(f"{path}: ok")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
