"""Kinetics-400/600/700 adapter.

Annotation format (the DeepMind releases): CSV files with the header
``label,youtube_id,time_start,time_end,split`` (Kinetics-400 adds ``is_cc``; the unlabelled test files of
Kinetics-600 drop ``label``), one file per split: ``train.csv``, ``validate.csv`` (Kinetics-700) or
``val.csv`` (Kinetics-400), ``test.csv``, possibly with a prefix (``kinetics_700_train.csv``), in the root or
one folder below it (``annotations/``, ``kinetics700_2020/``). Times are seconds into the YouTube video.

Media files are found anywhere under the root by name:
- ``{youtube_id}_{start:06d}_{end:06d}.mp4``: a trimmed clip (the CVDF archives), which already holds
  ``[time_start, time_end]``;
- ``{youtube_id}.mp4`` (or ``.webm``/``.mkv``): the full-length video (yt-dlp, synthetic), which reencode trims.
``Item.extra["trimmed_name"]`` records which one was found (``None`` when neither is on disk; then
``source`` is the YouTube URL and ``extra["found"]`` is false). Whether reencode trims is decided by the
dataset's ``trimmed`` param, not by the name.

Class indices are the positions in the sorted list of label names found in all annotation files (the
convention of the Kinetics literature; the releases ship no class-index file).
"""

from __future__ import annotations

import csv
import math
import re
from pathlib import Path

from pipelines.datasets.base import AnnotationError, Item, find_media, normalise_split

__all__ = ["YOUTUBE_ID", "annotation_files", "class_names", "clip_name", "read_items"]

REQUIRED = ("youtube_id", "time_start", "time_end")
YOUTUBE_ID = re.compile(r"[A-Za-z0-9_-]{11}")  # what YouTube issues: never a path ('/', '..') or a URL
YOUTUBE_URL = "https://www.youtube.com/watch?v={}"


def clip_name(youtube_id: str, start: float, end: float) -> str:
    """The trimmed-clip name of the CVDF archives: ``{youtube_id}_{start:06d}_{end:06d}``."""
    return f"{youtube_id}_{int(start):06d}_{int(end):06d}"


def _file_split(path: Path) -> str | None:
    token = re.split(r"[_\-.]", path.stem.lower())[-1]
    try:
        return normalise_split(token)
    except ValueError:
        return None


def annotation_files(root: Path) -> dict[str, list[Path]]:
    """The annotation CSVs under ``root`` (root and one level below) grouped by normalised split."""
    root = Path(root)
    found: dict[str, list[Path]] = {}
    for path in sorted([*root.glob("*.csv"), *root.glob("*/*.csv")]):
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        split = _file_split(path)
        if split is None:
            continue
        with open(path, encoding="utf-8", newline="") as f:
            header = next(csv.reader(f), [])
        if "youtube_id" in [h.strip() for h in header]:
            found.setdefault(split, []).append(path)
    return found


def _rows(path: Path):
    """Yield ``(line, row dict)`` of a Kinetics CSV, checking the header and the column count."""
    with open(path, encoding="utf-8", newline="") as f:
        reader = csv.reader(f)
        header = [h.strip() for h in next(reader, [])]
        missing = [c for c in REQUIRED if c not in header]
        if missing:
            raise AnnotationError(path, f"header lacks column(s) {', '.join(missing)} (got {header})", 1)
        for row in reader:
            line = reader.line_num
            if not row or all(not c.strip() for c in row):
                continue
            if len(row) != len(header):
                raise AnnotationError(path, f"expected {len(header)} columns, got {len(row)}: {row}", line)
            yield line, dict(zip(header, (c.strip() for c in row), strict=True))


def _seconds(path: Path, line: int, row: dict, key: str) -> float:
    try:
        value = float(row[key])
    except ValueError:
        raise AnnotationError(path, f"{key} is not a number: {row[key]!r}", line) from None
    if not math.isfinite(value) or value < 0:
        raise AnnotationError(path, f"{key} must be a finite number >= 0, got {row[key]!r}", line)
    return value


def class_names(root: Path) -> list[str]:
    """The sorted label names of every annotation file under ``root`` (index = label)."""
    files = annotation_files(root)
    if not files:
        raise AnnotationError(root, "no Kinetics annotation CSV (label,youtube_id,time_start,time_end,split)")
    names: set[str] = set()
    for paths in files.values():
        for path in paths:
            for _, row in _rows(path):
                if row.get("label"):
                    names.add(row["label"])
    return sorted(names)


def read_items(root: Path, split: str) -> list[Item]:
    """The clips of ``split`` (``train``, ``val`` or ``test``), in file order.

    Raises:
        AnnotationError: no annotation file for the split, a malformed row or a window that ends before it
            starts, naming the file and line.
    """
    root = Path(root)
    split = normalise_split(split)
    files = annotation_files(root).get(split)
    if not files:
        raise AnnotationError(
            root,
            f"no annotation CSV for split {split!r} (looked for *train.csv, *val.csv, *validate.csv, "
            "*test.csv with a youtube_id column in the folder and one level below)",
        )
    index = {name: i for i, name in enumerate(class_names(root))}
    media = find_media(root)
    items: list[Item] = []
    seen: dict[str, str] = {}
    for path in files:
        for line, row in _rows(path):
            youtube_id = row["youtube_id"]
            if not youtube_id:
                raise AnnotationError(path, "empty youtube_id", line)
            row_split = split
            if row.get("split"):
                try:
                    row_split = normalise_split(row["split"], f"{path}:{line}")
                except ValueError as exc:
                    raise AnnotationError(path, f"unknown split {row['split']!r}", line) from exc
            if row_split != split:
                continue
            start = _seconds(path, line, row, "time_start")
            end = _seconds(path, line, row, "time_end")
            if end <= start:
                raise AnnotationError(
                    path, f"time_end {row['time_end']} is not after time_start {row['time_start']}", line
                )
            label_name = row.get("label", "")
            label = None
            if label_name:
                if label_name not in index:  # cannot happen with data-derived classes; kept as a guard
                    raise AnnotationError(path, f"unknown label {label_name!r}", line)
                label = index[label_name]
            if not YOUTUBE_ID.fullmatch(youtube_id):
                raise AnnotationError(
                    path, f"youtube_id {youtube_id!r} is not 11 characters of A-Z, a-z, 0-9, '_', '-'", line
                )
            item_id = clip_name(youtube_id, start, end)
            if item_id in seen:
                raise AnnotationError(path, f"duplicate clip {item_id} (first at {seen[item_id]})", line)
            seen[item_id] = f"{path}:{line}"
            trimmed = media.get(item_id)
            full = media.get(youtube_id)
            if trimmed is not None:
                source, trimmed_name = trimmed, True
            elif full is not None:
                source, trimmed_name = full, False
            else:
                source, trimmed_name = YOUTUBE_URL.format(youtube_id), None
            items.append(
                Item(
                    id=item_id,
                    split=split,
                    source=source,
                    label=label,
                    labels=() if label is None else (label,),
                    start=start,
                    end=end,
                    extra={
                        "youtube_id": youtube_id,
                        "trimmed_name": trimmed_name,
                        "found": trimmed_name is not None,
                    },
                )
            )
    return items
