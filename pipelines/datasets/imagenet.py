"""ImageNet (ILSVRC-2012) adapter: synset folders.

Layout: ``train/<synset>/*.JPEG`` and ``val/<synset>/*.JPEG`` (the usual re-organised validation set), or a flat
``val/`` folder with ``LOC_val_solution.csv`` (``ImageId,PredictionString``; the first word of the prediction
string is the synset), as in the Kaggle release. Folders may be under ``ILSVRC/Data/CLS-LOC/`` instead of the root.
The class map is ``LOC_synset_mapping.txt`` (``n01440764 tench, Tinca tinca``; index = line order) when present,
else the sorted synset folders of ``train/``. Class names are the synset ids: ImageNet's human-readable names
are not unique (two classes are called "crane", two "maillot").
"""

from __future__ import annotations

import csv
import re
from pathlib import Path

from pipelines.datasets.base import AnnotationError, Item, normalise_split, read_code_lines

__all__ = ["IMAGE_SUFFIXES", "MAPPING_FILE", "class_names", "read_items", "synset_words"]

MAPPING_FILE = "LOC_synset_mapping.txt"
VAL_SOLUTION = "LOC_val_solution.csv"
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
SYNSET = re.compile(r"^n\d{8}$")
SPLIT_FOLDERS = {"train": ("train",), "val": ("val", "validation")}


def _data_root(root: Path) -> Path:
    root = Path(root)
    nested = root / "ILSVRC" / "Data" / "CLS-LOC"
    return nested if nested.is_dir() and not (root / "train").is_dir() else root


def _mapping(root: Path) -> list[tuple[str, str]] | None:
    path = Path(root) / MAPPING_FILE
    if not path.is_file():
        return None
    return read_code_lines(path, lambda code: bool(SYNSET.match(code)), "'nXXXXXXXX <words>'")


def class_names(root: Path) -> list[str]:
    """The synset ids in index order (``LOC_synset_mapping.txt``, else the sorted ``train/`` folders)."""
    mapping = _mapping(root)
    if mapping is not None:
        return [s for s, _ in mapping]
    train = _data_root(root) / "train"
    if not train.is_dir():
        raise AnnotationError(train, f"no {MAPPING_FILE} and no train/ folder of synsets")
    return sorted(p.name for p in train.iterdir() if p.is_dir() and SYNSET.match(p.name))


def synset_words(root: Path) -> dict[str, str]:
    """``{synset: words}`` from ``LOC_synset_mapping.txt`` (empty when the file is absent)."""
    return dict(_mapping(root) or [])


def _images(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
    )


def read_items(root: Path, split: str) -> list[Item]:
    """The images of ``split`` (``train`` or ``val``), sorted by synset then file name.

    Raises:
        AnnotationError: no folder for the split, a synset folder that is not in the class map, or a flat
            validation image missing from ``LOC_val_solution.csv``.
    """
    root = Path(root)
    split = normalise_split(split)
    data = _data_root(root)
    folder = next((data / n for n in SPLIT_FOLDERS.get(split, ()) if (data / n).is_dir()), None)
    if folder is None:
        raise AnnotationError(data / split, f"no image folder for split {split!r}")
    index = {s: i for i, s in enumerate(class_names(root))}
    items: list[Item] = []

    def add(path: Path, synset: str) -> None:
        items.append(
            Item(
                id=path.stem,
                split=split,
                source=path.relative_to(root).as_posix(),
                label=index[synset],
                labels=(index[synset],),
                extra={"synset": synset},
            )
        )

    subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    for sub in subfolders:
        if sub.name not in index:
            raise AnnotationError(sub, f"unknown label: synset folder {sub.name!r} is not in the class map")
        for path in _images(sub):
            add(path, sub.name)
    flat = _images(folder)
    if flat:
        solution = root / VAL_SOLUTION
        if not solution.is_file():
            raise AnnotationError(solution, f"{len(flat)} images directly in {folder} but no {VAL_SOLUTION}")
        synsets: dict[str, str] = {}
        with open(solution, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            if not {"ImageId", "PredictionString"} <= set(reader.fieldnames or []):
                raise AnnotationError(solution, "header lacks ImageId,PredictionString", 1)
            for row in reader:
                words = (row["PredictionString"] or "").split()
                if not words or words[0] not in index:
                    raise AnnotationError(
                        solution, f"unknown label {words[:1]} for {row['ImageId']}", reader.line_num
                    )
                synsets[row["ImageId"]] = words[0]
        for path in flat:
            if path.stem not in synsets:
                raise AnnotationError(solution, f"no label for image {path.name}")
            add(path, synsets[path.stem])
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise AnnotationError(folder, f"image id {dup} occurs twice")
    return items
