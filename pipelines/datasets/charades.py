"""Charades adapter (multi-label action localisation).

Annotation format (the AllenAI release, ``Charades.zip``):
- ``Charades_v1_train.csv`` and ``Charades_v1_test.csv`` with the columns
  ``id,subject,scene,quality,relevance,verified,script,objects,descriptions,actions,length``; ``actions`` is
  ``"c092 11.90 21.20;c147 0.00 12.60"`` (class, start s, end s) and is empty for videos with no action;
  ``length`` is the video's length in seconds.
- ``Charades_v1_classes.txt``: ``c000 Holding some clothes``, one class per line (index = line order).
Files are searched in the root and one folder below it (``Charades/``). Videos ``<id>.mp4`` are found
anywhere under the root (``Charades_v1_480/``).

Splits: ``train`` reads ``Charades_v1_train.csv``; ``val`` reads ``Charades_v1_test.csv`` (Charades' test set is
the validation set of every paper, TubeViT's included).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

from pipelines.datasets.base import AnnotationError, Item, find_media, normalise_split, read_code_lines

__all__ = ["CLASSES_FILE", "SPLIT_FILES", "class_codes", "class_names", "parse_actions", "read_items"]

CLASSES_FILE = "Charades_v1_classes.txt"
SPLIT_FILES = {"train": "Charades_v1_train.csv", "val": "Charades_v1_test.csv"}
MEDIA_FOLDER = "Charades_v1_480"


def _find(root: Path, name: str) -> Path:
    root = Path(root)
    for candidate in [root / name, *sorted(root.glob(f"*/{name}"))]:
        if candidate.is_file():
            return candidate
    raise AnnotationError(root / name, "annotation file not found (looked in the folder and one level below)")


def _classes(root: Path) -> list[tuple[str, str]]:
    def valid(code: str) -> bool:
        return len(code) >= 2 and code[0] == "c" and code[1:].isdigit()

    return read_code_lines(_find(root, CLASSES_FILE), valid, "'cNNN <name>'")


def class_codes(root: Path) -> list[str]:
    """The class codes (``c000``, ``c001``, ...) in index order."""
    return [c for c, _ in _classes(root)]


def class_names(root: Path) -> list[str]:
    """The class names of ``Charades_v1_classes.txt`` in file order (index = label)."""
    return [n for _, n in _classes(root)]


def parse_actions(
    text: str, index: dict[str, int], path: Path | str = "<actions>", line: int | None = None
) -> tuple[tuple[int, float, float], ...]:
    """Parse ``"c092 11.90 21.20;c147 0.00 12.60"`` into ``((92, 11.9, 21.2), (147, 0.0, 12.6))``.

    Class codes map through ``index`` (code -> label). An empty text means no action.

    Raises:
        AnnotationError: a malformed action, an unknown class code or an end before the start.
    """
    actions = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        fields = part.split()
        if len(fields) != 3:
            raise AnnotationError(path, f"action {part!r} is not 'cNNN start end'", line)
        code, start_text, end_text = fields
        if code not in index:
            raise AnnotationError(path, f"unknown class {code!r} in action {part!r}", line)
        try:
            start, end = float(start_text), float(end_text)
        except ValueError:
            raise AnnotationError(path, f"action {part!r} has a non-numeric time", line) from None
        if not (math.isfinite(start) and math.isfinite(end)) or start < 0 or end < start:
            raise AnnotationError(path, f"action {part!r} needs 0 <= start <= end", line)
        actions.append((index[code], start, end))
    return tuple(actions)


def read_items(root: Path, split: str) -> list[Item]:
    """The videos of ``split`` (``train`` or ``val``, the latter from ``Charades_v1_test.csv``), in file order.

    Each item has ``label=None``, ``labels`` = the sorted distinct action classes (``()`` for a video with no
    action), ``actions`` with their times in seconds, and ``start``/``end`` ``None`` (the whole video).
    """
    root = Path(root)
    split = normalise_split(split)
    if split == "test":  # Charades' test file is our val split
        split = "val"
    path = _find(root, SPLIT_FILES[split])
    index = {code: i for i, code in enumerate(class_codes(root))}
    media = find_media(root)
    items: list[Item] = []
    seen: set[str] = set()
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in ("id", "actions") if c not in (reader.fieldnames or [])]
        if missing:
            raise AnnotationError(path, f"header lacks column(s) {', '.join(missing)}", 1)
        for row in reader:
            line = reader.line_num
            if None in row or any(v is None for v in row.values()):
                raise AnnotationError(path, f"expected {len(reader.fieldnames)} columns", line)
            video_id = row["id"].strip()
            if not video_id:
                raise AnnotationError(path, "empty id", line)
            if video_id in seen:
                raise AnnotationError(path, f"duplicate id {video_id}", line)
            seen.add(video_id)
            actions = parse_actions(row["actions"], index, path, line)
            length = None
            if row.get("length", "").strip():
                try:
                    length = float(row["length"])
                except ValueError:
                    raise AnnotationError(path, f"length is not a number: {row['length']!r}", line) from None
            found = media.get(video_id)
            items.append(
                Item(
                    id=video_id,
                    split=split,
                    source=found or f"{MEDIA_FOLDER}/{video_id}.mp4",
                    label=None,
                    labels=tuple(sorted({a[0] for a in actions})),
                    start=None,
                    end=None,
                    actions=actions,
                    extra={"length": length, "found": found is not None},
                )
            )
    return items
