"""Something-Something v2 adapter.

Annotation format (the 20BN / Qualcomm release):
- ``labels.json`` (``something-something-v2-labels.json``): ``{"Approaching something with your camera": "0", ...}``,
  template text without brackets -> class index (a string);
- ``train.json`` / ``validation.json`` (``something-something-v2-train.json``...): a list of
  ``{"id": "78687", "label": "holding potato next to vicks vaporub bottle",
  "template": "Holding [something] next to [something]", "placeholders": [...]}``;
  the class is the template with its brackets removed, looked up in ``labels.json``;
- ``test.json``: ``[{"id": "1420"}, ...]`` without labels (split ``test``).
Files are searched in the root and one folder below it. Videos ``<id>.webm`` are found anywhere under the root
(``20bn-something-something-v2/``).
"""

from __future__ import annotations

import json
from pathlib import Path

from pipelines.datasets.base import AnnotationError, Item, find_media, normalise_split

__all__ = ["class_names", "label_map", "read_items", "template_key"]

SPLIT_FILES = {"train": "train.json", "val": "validation.json", "test": "test.json"}
MEDIA_FOLDER = "20bn-something-something-v2"


def template_key(template: str) -> str:
    """``"Holding [something] next to [something]"`` -> ``"Holding something next to something"``."""
    return template.replace("[", "").replace("]", "")


def _find(root: Path, suffix: str) -> Path:
    root = Path(root)
    candidates = [root / suffix, root / f"something-something-v2-{suffix}"]
    candidates += sorted(
        p for p in root.glob(f"*/*{suffix}") if p.name in (suffix, f"something-something-v2-{suffix}")
    )
    for candidate in candidates:
        if candidate.is_file():
            return candidate
    raise AnnotationError(
        root / suffix, "annotation file not found (looked in the folder and one level below)"
    )


def _load(path: Path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise AnnotationError(path, f"not valid JSON ({exc.msg})", exc.lineno) from None


def label_map(root: Path) -> dict[str, int]:
    """``labels.json`` as ``{template without brackets: index}``, checked to be 0..K-1 without gaps."""
    path = _find(root, "labels.json")
    raw = _load(path)
    if not isinstance(raw, dict):
        raise AnnotationError(path, f"expected an object of template -> index, got {type(raw).__name__}")
    out = {}
    for key, value in raw.items():
        try:
            out[key] = int(value)
        except (TypeError, ValueError):
            raise AnnotationError(path, f"index of {key!r} is not an integer: {value!r}") from None
    if sorted(out.values()) != list(range(len(out))):
        raise AnnotationError(path, f"indices are not 0..{len(out) - 1} without gaps or repeats")
    return out


def class_names(root: Path) -> list[str]:
    """The templates (without brackets) in index order."""
    labels = label_map(root)
    return sorted(labels, key=labels.__getitem__)


def read_items(root: Path, split: str) -> list[Item]:
    """The videos of ``split`` (``train``, ``val`` from ``validation.json``, or ``test``), in file order.

    Raises:
        AnnotationError: a missing file, an entry without an id, or a template that is not in
            ``labels.json`` (after removing its brackets), naming the file and the entry.
    """
    root = Path(root)
    split = normalise_split(split)
    path = _find(root, SPLIT_FILES[split])
    entries = _load(path)
    if not isinstance(entries, list):
        raise AnnotationError(path, f"expected a list of entries, got {type(entries).__name__}")
    labels = label_map(root) if split != "test" else {}
    media = find_media(root)
    items: list[Item] = []
    seen: set[str] = set()
    for n, entry in enumerate(entries):
        where = f"entry {n}"
        if not isinstance(entry, dict) or "id" not in entry:
            raise AnnotationError(path, "entry has no 'id'", where)
        video_id = str(entry["id"])
        if video_id in seen:
            raise AnnotationError(path, f"duplicate id {video_id}", where)
        seen.add(video_id)
        label = None
        template = entry.get("template")
        if split != "test":
            if not isinstance(template, str):
                raise AnnotationError(path, f"id {video_id}: no 'template'", where)
            key = template_key(template)
            if key not in labels:
                raise AnnotationError(
                    path, f"id {video_id}: unknown label {key!r} (template {template!r})", where
                )
            label = labels[key]
        found = media.get(video_id)
        items.append(
            Item(
                id=video_id,
                split=split,
                source=found or f"{MEDIA_FOLDER}/{video_id}.webm",
                label=label,
                labels=() if label is None else (label,),
                extra={
                    "template": template,
                    "text": entry.get("label"),
                    "placeholders": list(entry.get("placeholders", [])),
                    "found": found is not None,
                },
            )
        )
    return items
