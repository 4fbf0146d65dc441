"""The item every dataset adapter returns, split-name normalisation and annotation errors.

An adapter (``pipelines/datasets/<format>.py``) reads a dataset's *real* annotation format from the
download stage's output folder ``raw/<ds>/`` and returns a list of :class:`Item`. The synthetic
generator writes the same formats, so one adapter serves both.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tubevit.config.data import SPLIT_ALIASES, normalise_split  # one table for params and adapters

__all__ = ["SPLIT_ALIASES", "AnnotationError", "Item", "find_media", "normalise_split", "read_code_lines"]

VIDEO_SUFFIXES = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v")


class AnnotationError(ValueError):
    """An annotation file is missing, malformed or names an unknown label.

    The message names the file, the line (where there is one) and the reason:
    ``raw/kinetics/train.csv:12: time_end 3 is not after time_start 5``.
    """

    def __init__(self, path: str | Path, reason: str, line: int | str | None = None):
        self.path = str(path)
        self.line = line
        self.reason = reason
        where = f"{path}:{line}" if line is not None else f"{path}"
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True)
class Item:
    """One annotated sample of a dataset.

    Attributes:
        id: unique within the dataset (Kinetics: ``{youtube_id}_{start:06d}_{end:06d}``; may start with ``-``).
        split: the normalised split, ``"train"``, ``"val"`` or ``"test"``.
        source: the media file, relative to the dataset root (POSIX separators), or a URL when the file is
            not on disk yet (Kinetics: the YouTube watch URL).
        label: the class index (single-label datasets), ``None`` for multi-label or unlabelled items.
        labels: the class indices of a multi-label item (Charades: the video's actions), ``()`` when none.
        start: start of the annotated window in seconds, ``None`` for the whole file.
        end: end of the annotated window in seconds, ``None`` for the whole file.
        actions: Charades: ``(class, start s, end s)`` per action, ``()`` otherwise.
        extra: dataset-specific metadata (JSON-serialisable).
    """

    id: str
    split: str
    source: str
    label: int | None = None
    labels: tuple[int, ...] = ()
    start: float | None = None
    end: float | None = None
    actions: tuple[tuple[int, float, float], ...] = ()
    extra: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)


def find_media(root: Path, suffixes: tuple[str, ...] = VIDEO_SUFFIXES) -> dict[str, str]:
    """Index the media files under ``root`` by file stem: ``{stem: path relative to root}``.

    Hidden files and folders (temporaries, download state) are ignored. Where one stem occurs more than
    once the first in sorted path order wins, so the result is deterministic.
    """
    index: dict[str, str] = {}
    root = Path(root)
    if not root.is_dir():
        return index
    paths = sorted(
        p
        for p in root.rglob("*")
        if p.suffix.lower() in suffixes
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    for p in paths:
        if p.is_file():
            index.setdefault(p.stem, p.relative_to(root).as_posix())
    return index


def read_code_lines(path: Path, valid: Callable[[str], bool], expected: str) -> list[tuple[str, str]]:
    """Read a ``<code> <name>`` per line file (Charades classes, ImageNet synset mapping).

    Blank lines are skipped. A line whose code fails ``valid`` or has no name, or a code that occurs
    twice, raises :class:`AnnotationError` naming the file and line; ``expected`` describes the format
    in that message (e.g. ``'cNNN <name>'``). Returns ``[(code, name), ...]`` in file order.
    """
    out: list[tuple[str, str]] = []
    seen: dict[str, int] = {}
    with open(path, encoding="utf-8") as f:
        for line, text in enumerate(f, 1):
            text = text.strip()
            if not text:
                continue
            code, _, name = text.partition(" ")
            if not valid(code) or not name.strip():
                raise AnnotationError(path, f"expected {expected}, got {text!r}", line)
            if code in seen:
                raise AnnotationError(path, f"{code} occurs twice (first on line {seen[code]})", line)
            seen[code] = line
            out.append((code, name.strip()))
    return out
