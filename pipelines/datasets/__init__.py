"""Dataset adapters: one module per real annotation format (``kinetics``, ``charades``, ``ssv2``, ``imagenet``).

Each adapter module exposes ``read_items(root: Path, split: str) -> list[Item]`` and
``class_names(root: Path) -> list[str]`` (index = label). ``synthetic`` writes the same formats.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from pipelines.datasets.base import AnnotationError, Item, normalise_split

__all__ = ["FORMATS", "AnnotationError", "Item", "get_adapter", "normalise_split"]

FORMATS = ("kinetics", "charades", "ssv2", "imagenet")


def get_adapter(format: str) -> ModuleType:
    """The adapter module of a dataset format (Kinetics-400/600/700 all use ``kinetics``).

    Raises:
        ValueError: an unknown format, naming it and the known ones.
    """
    if format not in FORMATS:
        raise ValueError(f"unknown dataset format {format!r}; known: {', '.join(FORMATS)}")
    return importlib.import_module(f"pipelines.datasets.{format}")
