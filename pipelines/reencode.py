"""Stage ``reencode@<ds>``: raw media -> uniform h264 mp4 at the dataset's fps (images: RGB JPEG), plus a manifest.

The pieces with a job of their own live in their own modules: probing in :mod:`pipelines.media`, the
ffmpeg command, encoding (video and images) and per-item errors in :mod:`pipelines.encode`, checking an
encoded file in :mod:`pipelines.verify`. This module keeps the plan (items, names, sidecars, reuse), the
reports, the flow and the command line.

Usage::

    python -m pipelines.reencode kinetics --raw raw/kinetics --out videos/kinetics --params params.yaml

Reads the items of every split in ``datasets.<ds>.splits`` through the dataset's adapter and writes, under
``--out`` (``videos/<ds>/``):

- ``<split>/<safe name>.mp4`` (images: ``.jpg``), and beside it ``<safe name>.mp4.json``, the item's
  *sidecar*: the item-level params it was made with (fps, short side, trim window, codec args, source
  size) and the probed result. A rerun reuses an output only if its sidecar records the same params and the
  output still has the recorded size (docs/design.md "DVC outs": ``videos/`` is ``persist: true``).
- ``manifest.jsonl``: one row per re-encoded item, sorted by (split, id): id, split, file (relative to
  ``--out``), label, labels, actions, fps, frames, duration (s), width, height, source. Images: fps and
  duration are ``null`` and frames is 1.
- ``classes.json`` (class names, index = label), ``failures.jsonl`` (id, split, source, kind, reason),
  ``summary.json`` (counts per split, durations, fps and duration histograms) and ``quality.json`` (one row
  per item: the data of the data-quality plot). All of them are a pure function of the inputs and params, so
  a rerun, or a run resumed after a kill, writes the same bytes. What differs between runs (items reused,
  wall time) is returned by :func:`run` and logged, never written into the out.

Video (docs/design.md "Re-encode", pinned)::

    ffmpeg -nostdin -threads 1 [-ss <start> -t <length>] -i <absolute path> -map 0:v:0 -an -sn -dn
        -vf fps=<fps>,scale=<short side, other side -2>,setsar=1,format=yuv420p -c:v libx264 -preset <p>
        -crf <q> -g <round(fps)> -threads 1 -fflags +bitexact -map_metadata -1 -movflags +faststart <tmp>

built with ffmpeg-python by :func:`pipelines.encode.encode_spec`; :func:`ffmpeg_command` is the same argv as a list (for the
benchmark). ffmpeg-python writes each file's options in sorted order, and ``-nostdin`` after the output;
ffmpeg applies per-file options to the next file whatever their order, so this is the pinned command
(a test checks that the pinned order gives identical bytes). The source is probed before and the output
after (h264, yuv420p, the fps, frames > 0, the short side, no rotation) with PyAV in a reused helper
process (:func:`pipelines.media.probe_video_fast`, :mod:`pipelines.probe`: no launch per file, and a crash
or hang stays in the helper); ffprobe, with a timeout, only for a file PyAV finds unusual, so a bad file
gets ffprobe's reason. The temporary is
``.<name>.tmp-<uuid>.mp4`` beside the output (the ``.mp4`` suffix lets ffmpeg pick the muxer, so the
pinned command needs no ``-f``), renamed when verified.

Kinetics trimming (pinned): with ``trimmed: false`` an item's [start, end] window is cut with input-side
``-ss``/``-t`` (accurate seek); an empty window or one that starts past the end of the file is a failure, and
if most windows start past the end the stage stops and suggests ``trimmed: true``. With ``trimmed: true``
the whole file is kept.

Images (format ``imagenet``): Pillow opens, applies the EXIF orientation, converts to RGB (CMYK,
greyscale, palette; alpha over white), resizes the short side to N (bicubic) and saves JPEG at
``reencode.jpeg_quality``, whatever the source's real format (this fixes ImageNet's CMYK and PNG-named-JPEG
files).

Every bad input becomes one row of ``failures.jsonl`` with its reason, and the stage goes on; per split,
input = ok + failed. Caps on untrusted input (``reencode.max_side``, ``max_duration_s``, ``probe_timeout_s``,
``max_encode_s``) make an item over one fail with kind ``cap``; a chunk whose task crashes (an escaped
exception, a dead Dask worker) fails its items with kind ``crash``. The command exits 1 with a one-line reason
when a split has no usable item or more than ``datasets.<ds>.failure_budget`` of its items failed (the reports
are written first), and prints a one-screen summary. One run at a time per out: a second run fails at start
(:func:`pipelines.common.stage_lock`, the lock file ``.<out name>.lock`` beside the out).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import json
import logging
import math
import os
import re
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from pipelines.common import (
    Outcomes,
    StageLockedError,
    add_no_flow_flag,
    budget_problem,
    format_stage_summary,
    publish_result,
    read_json,
    remove_stale_temporaries,
    run_name,
    stage_lock,
    task_runner,
    usage_examples,
    write_failures_by_kind,
    write_json_atomic,
    write_jsonl_atomic,
)
from pipelines.datasets.base import AnnotationError, Item
from pipelines.encode import (
    ItemFailure,
    codec_params,
    encode_image,
    encode_spec,
    encode_video,
    ffmpeg_command,
    plan_trim,
    probe_source,
    scale_filter,
    temporary,
    trim_window,
    video_filter,
)
from pipelines.media import ProbeError, probe_video_fast
from pipelines.verify import verify_video
from tubevit.config.base import ConfigError
from tubevit.config.data import DatasetConfig, ReencodeConfig

log = logging.getLogger(__name__)

__all__ = [
    "SIDECAR_VERSION",
    "TrimmedMismatchError",
    "crash_rows",
    "encode_spec",
    "ffmpeg_command",
    "main",
    "output_name",
    "process_item",
    "reencode_flow",
    "reencode_items",
    "run",
    "run_flow",
    "safe_name",
    "scale_filter",
    "summary_screen",
]

VIDEO_SUFFIX = ".mp4"
IMAGE_SUFFIX = ".jpg"
SIDECAR_SUFFIX = ".json"  # appended to the media name: <name>.mp4.json
SIDECAR_VERSION = 1  # bump when the meaning of an output changes without a change of params
TRIM_CHECK_SAMPLE = 16  # windows probed before any encoding to catch trimmed files declared untrimmed

_PLAIN_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,199}")
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]")


class TrimmedMismatchError(RuntimeError):
    """``trimmed: false`` but most trim windows start past the end of their files: the files are clips."""


# --------------------------------------------------------------------------------------------------------
# Names and the ffmpeg command (pure functions)
# --------------------------------------------------------------------------------------------------------


def safe_name(item_id: str) -> str:
    """A file-name stem for ``item_id`` that is safe on every filesystem and on a command line.

    Plain ids (letters, digits, ``_``, ``.``, ``-``; first character a letter, digit or ``_``; at most 200
    characters) are kept as they are. Any other id (one starting with ``-`` or ``.``, holding ``/`` or spaces,
    or too long) becomes ``_<id with unsafe characters replaced by _>-<10 hex of sha1(id)>``, which starts
    with ``_`` and is unique per id. Example: ``-abc`` -> ``_-abc-<hash>``.
    """
    if _PLAIN_NAME.fullmatch(item_id):
        return item_id
    digest = hashlib.sha1(item_id.encode("utf-8")).hexdigest()[:10]
    return f"_{_UNSAFE.sub('_', item_id)[:150]}-{digest}"


def output_name(item: Item, image: bool) -> str:
    """The output path of ``item`` relative to the stage's out folder: ``<split>/<safe name>.mp4|.jpg``."""
    return f"{item.split}/{safe_name(item.id)}{IMAGE_SUFFIX if image else VIDEO_SUFFIX}"


# --------------------------------------------------------------------------------------------------------
# One item
# --------------------------------------------------------------------------------------------------------


def _source_path(item: Item, raw: Path) -> Path:
    """The absolute path of the item's source under ``raw``; refuses URLs and paths that leave ``raw``."""
    if "://" in item.source:
        raise ItemFailure(
            "missing", f"missing file: the source is a URL that was not downloaded ({item.source})"
        )
    rel = Path(item.source)
    norm = Path(os.path.normpath(raw.absolute() / rel))
    if rel.is_absolute() or not norm.is_relative_to(raw.absolute()):
        raise ItemFailure("missing", f"source {item.source!r} is outside the dataset folder")
    if not norm.exists():
        raise ItemFailure("missing", f"missing file: {item.source}")
    return norm


def _item_params(item: Item, cfg: DatasetConfig, rcfg: ReencodeConfig, source_size: int) -> dict[str, Any]:
    """The item-level params an output is made with; an existing output is reused only if they match."""
    if cfg.is_image:
        return {
            "version": SIDECAR_VERSION,
            "kind": "image",
            "short_side": cfg.short_side,
            "jpeg_quality": rcfg.jpeg_quality,
            "resample": "bicubic",
            "mode": "RGB",
            "source": item.source,
            "source_size": source_size,
        }
    return {
        "version": SIDECAR_VERSION,
        "kind": "video",
        "fps": cfg.fps,
        "short_side": cfg.short_side,
        "trim": trim_window(item, cfg),
        "codec": codec_params(cfg.fps, rcfg.preset, rcfg.crf),
        "filter": video_filter(cfg.fps, f"scale=<short side {cfg.short_side}, other side -2>"),
        "source": item.source,
        "source_size": source_size,
    }


def _reuse(final: Path, sidecar: Path, params: dict[str, Any]) -> dict[str, Any] | None:
    """The sidecar's record if ``final`` may be reused (same params, same size), else None."""
    if not (final.is_file() and sidecar.is_file()):
        return None
    try:
        record = read_json(sidecar)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("params") != params:
        return None
    if record.get("output_size") != final.stat().st_size:
        return None
    return record


def _encode_video(item: Item, src: Path, final: Path, cfg: DatasetConfig, rcfg: ReencodeConfig) -> dict:
    """Probe, plan the trim, encode to a temporary, verify, rename. Returns the sidecar's ``media`` and
    ``quality``."""
    info = probe_source(src, rcfg)
    window = trim_window(item, cfg)
    start, length, expected = plan_trim(info, window, rcfg)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary(final)
    try:
        stderr = encode_video(src, tmp, info, cfg, rcfg, start, length, expected)
        out = verify_video(tmp, cfg, window, info, expected, stderr, rcfg.probe_timeout_s)
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    media = {
        "fps": out.fps,
        "frames": out.frames,
        "duration": round(out.duration, 6),
        "width": out.width,
        "height": out.height,
    }
    quality = {
        "source_codec": info.codec,
        "source_fps": round(info.fps, 6),
        "source_frames": info.frames or None,  # None when the container stores no count (WebM)
        "source_duration": round(info.duration, 6),
        "source_width": info.display_width,
        "source_height": info.display_height,
        "source_rotation": info.rotation,
        "trim_start": None if window is None else start,
        "trim_end": None if window is None else round(start + length, 6),
        # share of output frames that repeat a source frame (SSv2: 12 fps sources at 24 fps -> 0.5)
        "duplicated_fraction": round(max(0.0, 1.0 - info.fps / cfg.fps), 6) if info.fps > 0 else None,
    }
    return {"media": media, "quality": quality}


def process_item(item: Item, cfg: DatasetConfig, rcfg: ReencodeConfig, raw: str, out: str) -> dict:
    """Re-encode one item (or reuse its output). Never raises for a bad input.

    Returns ``{"id", "split", "status": "ok"|"failed", ...}``: ok results carry ``file``, ``media``,
    ``quality`` and ``reused``; failed ones ``kind`` and ``reason``.
    """
    raw_path, out_path = Path(raw), Path(out)
    rel = output_name(item, cfg.is_image)
    final = out_path / rel
    sidecar = final.with_name(final.name + SIDECAR_SUFFIX)
    base = {"id": item.id, "split": item.split, "source": item.source}
    windowed = not cfg.is_image and trim_window(item, cfg) is not None
    try:
        src = _source_path(item, raw_path)
        if not src.is_file():
            raise ItemFailure("missing", f"source is not a regular file: {item.source}")
        params = _item_params(item, cfg, rcfg, src.stat().st_size)
        record = _reuse(final, sidecar, params)
        if record is not None:
            return {
                **base,
                "status": "ok",
                "file": rel,
                "reused": True,
                "window_checked": windowed,
                **_result(record),
            }
        made = (
            encode_image(src, final, cfg, rcfg)
            if cfg.is_image
            else _encode_video(item, src, final, cfg, rcfg)
        )
        record = {"id": item.id, "params": params, "output_size": final.stat().st_size, **made}
        write_json_atomic(sidecar, record)
        return {
            **base,
            "status": "ok",
            "file": rel,
            "reused": False,
            "window_checked": windowed,
            **_result(record),
        }
    except ItemFailure as exc:
        checked = windowed and exc.kind not in ("missing", "unreadable")
        return {**base, "status": "failed", "kind": exc.kind, "reason": exc.reason, "window_checked": checked}
    except Exception as exc:  # a bug or an OS error on one item must not stop the stage
        log.exception("%s: unexpected error", item.id)
        reason = f"{type(exc).__name__}: {exc}"
        return {**base, "status": "failed", "kind": "error", "reason": reason, "window_checked": False}


def _result(record: dict) -> dict:
    return {"media": record["media"], "quality": record["quality"]}


def process_chunk(
    items: Sequence[Item], cfg: DatasetConfig, rcfg: ReencodeConfig, raw: str, out: str
) -> list:
    """:func:`process_item` over a chunk (the unit of one task)."""
    return [process_item(it, cfg, rcfg, raw, out) for it in items]


# --------------------------------------------------------------------------------------------------------
# The stage
# --------------------------------------------------------------------------------------------------------

MapChunks = Callable[[Callable[..., list], list[list[Item]]], list[list[dict]]]


def crash_rows(chunk: Sequence[Item], exc: BaseException) -> list[dict]:
    """The results of a chunk whose task crashed (an exception escaped it, or its worker died): each item
    fails with kind ``crash`` and the exception as the reason, so the stage still writes its reports."""
    reason = f"the task crashed: {type(exc).__name__}: {exc}"[:500]
    return [
        {
            "id": it.id,
            "split": it.split,
            "source": it.source,
            "status": "failed",
            "kind": "crash",
            "reason": reason,
            "window_checked": False,
        }
        for it in chunk
    ]


def _thread_map(workers: int) -> MapChunks:
    def map_chunks(fn, chunks):
        def one(chunk):
            try:
                return fn(chunk)
            except Exception as exc:
                log.exception("reencode chunk starting at %s crashed", chunk[0].id)
                return crash_rows(chunk, exc)

        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(one, chunks))

    return map_chunks


def _check_trimmed(
    name: str, items: Sequence[Item], cfg: DatasetConfig, rcfg: ReencodeConfig, raw: Path
) -> None:
    """Probe a few windows before encoding: if most start past their file's end, the files are clips."""
    sample = [it for it in items if trim_window(it, cfg) is not None][:TRIM_CHECK_SAMPLE]
    past, probed = _count_past_end(sample, cfg, rcfg, raw)
    if probed and past * 2 > probed:
        raise TrimmedMismatchError(_trimmed_message(name, past, probed))


def _count_past_end(
    items: Sequence[Item], cfg: DatasetConfig, rcfg: ReencodeConfig, raw: Path
) -> tuple[int, int]:
    past = probed = 0
    for it in items:
        try:
            info = probe_video_fast(
                _source_path(it, raw),
                count_frames=False,
                timeout=rcfg.probe_timeout_s,
                max_side=rcfg.max_side,
            )
        except (ItemFailure, ProbeError):
            continue
        probed += 1
        window = trim_window(it, cfg)
        past += window is not None and window[0] >= info.duration
    return past, probed


def _trimmed_message(name: str, past: int, probed: int) -> str:
    return (
        f"datasets.{name}.trimmed is false, but {past} of {probed} trim windows start past the end of "
        f"their video: the files look already trimmed to their windows (CVDF archives name clips "
        f"{{id}}_{{start:06d}}_{{end:06d}}.mp4). Set `datasets.{name}.trimmed: true` in params.yaml."
    )


def _dedupe(items: Sequence[Item], image: bool) -> tuple[list[Item], list[dict]]:
    """Keep the first item per output file; later duplicates (same id, or ids with one name) fail."""
    seen: dict[str, str] = {}
    keep, dupes = [], []
    for it in items:
        rel = output_name(it, image)
        if rel in seen:
            reason = (
                f"duplicate id {it.id!r} in split {it.split!r}"
                if seen[rel] == it.id
                else f"output name {rel} already taken by id {seen[rel]!r}"
            )
            dupes.append(
                {"id": it.id, "split": it.split, "source": it.source, "kind": "duplicate", "reason": reason}
            )
        else:
            seen[rel] = it.id
            keep.append(it)
    return keep, dupes


def _manifest_row(item: Item, result: dict) -> dict:
    media = result["media"]
    return {
        "id": item.id,
        "split": item.split,
        "file": result["file"],
        "label": item.label,
        "labels": list(item.labels),
        "actions": [list(a) for a in item.actions],
        "fps": media["fps"],
        "frames": media["frames"],
        "duration": media["duration"],
        "width": media["width"],
        "height": media["height"],
        "source": item.source,
    }


def _histogram(values: Sequence[float], fmt: Callable[[float], str]) -> dict[str, int]:
    counts = Counter(fmt(v) for v in values)
    return dict(sorted(counts.items(), key=lambda kv: float(kv[0])))


def _summary(
    name: str, cfg: DatasetConfig, items: Sequence[Item], ok: list[dict], failed: list[dict]
) -> dict:
    splits: dict[str, dict[str, Any]] = {}
    for split in sorted({it.split for it in items} | set(cfg.splits)):
        n_in = sum(it.split == split for it in items)
        rows = [r for r in ok if r["split"] == split]
        n_failed = sum(f["split"] == split for f in failed)
        splits[split] = {
            "input": n_in,
            "ok": len(rows),
            "failed": n_failed,
            "duration_s": round(sum(r["duration"] or 0.0 for r in rows), 6),
            "frames": sum(r["frames"] for r in rows),
        }
    summary: dict[str, Any] = {
        "dataset": name,
        "format": cfg.format,
        "kind": "image" if cfg.is_image else "video",
        "fps": None if cfg.is_image else cfg.fps,
        "short_side": cfg.short_side,
        "trimmed": cfg.trimmed,
        "splits": splits,
        "input": len(items),
        "ok": len(ok),
        "failed": len(failed),
        "failures_by_kind": dict(sorted(Counter(f["kind"] for f in failed).items())),
    }
    if not cfg.is_image:
        summary["duration_s"] = round(sum(r["duration"] for r in ok), 6)
        summary["source_fps_histogram"] = _histogram([r["source_fps"] for r in ok], lambda v: f"{v:.3f}")
        summary["duration_histogram_s"] = _histogram(
            [r["duration"] for r in ok], lambda v: f"{math.floor(v)}"
        )
        summary["upsampled_items"] = sum((r["duplicated_fraction"] or 0) > 0 for r in ok)
    return summary


def _remove_orphans(out: Path, splits: Sequence[str], keep: set[str], image: bool) -> int:
    """Delete media and sidecars in ``<out>/<split>/`` that belong to no ok item (removed or now failing)."""
    suffix = IMAGE_SUFFIX if image else VIDEO_SUFFIX
    removed = 0
    for split in splits:
        folder = out / split
        if not folder.is_dir():
            continue
        for p in sorted(folder.iterdir()):
            if not p.is_file() or p.name.startswith("."):
                continue
            media = p.name[: -len(SIDECAR_SUFFIX)] if p.name.endswith(suffix + SIDECAR_SUFFIX) else p.name
            if media.endswith(suffix) and f"{split}/{media}" not in keep:
                p.unlink()
                removed += 1
    return removed


def reencode_items(
    name: str,
    items: Sequence[Item],
    classes: Sequence[str],
    cfg: DatasetConfig,
    rcfg: ReencodeConfig,
    raw: str | os.PathLike,
    out: str | os.PathLike,
    map_chunks: MapChunks | None = None,
) -> dict[str, Any]:
    """Re-encode ``items`` (read from ``raw``) into ``out`` and write the manifest and reports.

    Args:
        name: the dataset name (for messages).
        items: the adapter's items of every split.
        classes: class names, index = label (written to ``classes.json``).
        map_chunks: runs ``fn`` over the chunks and returns the results in order (default: a thread pool of
            ``rcfg.workers``; the Prefect flow passes one that submits tasks).

    Returns:
        The summary (as in ``summary.json``) plus run statistics that are not written: ``reused``,
        ``encoded``, ``seconds``, ``seconds_per_item``, ``stale_temporaries``, ``orphans_removed``.

    Raises:
        TrimmedMismatchError: ``trimmed: false`` and most windows start past the end of their files.
        ConfigError: an odd short side for video (yuv420p needs even sizes).
    """
    t0 = time.perf_counter()
    raw, out = Path(raw).absolute(), Path(out).absolute()
    if not cfg.is_image and cfg.short_side % 2:
        raise ConfigError(
            f"datasets.{name}.short_side", f"must be even for yuv420p video, got {cfg.short_side}"
        )
    with stage_lock(out, "reencode"):  # a second run on this out fails here, before touching it
        return _reencode_locked(name, items, classes, cfg, rcfg, raw, out, map_chunks, t0)


def _reencode_locked(name, items, classes, cfg, rcfg, raw: Path, out: Path, map_chunks, t0: float) -> dict:
    image = cfg.is_image
    out.mkdir(parents=True, exist_ok=True)
    stale = remove_stale_temporaries(out)
    ordered = sorted(items, key=lambda it: (it.split, it.id))
    todo, duplicates = _dedupe(ordered, image)
    if not image:
        _check_trimmed(name, todo, cfg, rcfg, raw)

    chunks = [todo[i : i + rcfg.chunk_size] for i in range(0, len(todo), rcfg.chunk_size)]
    fn = _ChunkFn(cfg, rcfg, str(raw), str(out))
    results = [r for chunk in (map_chunks or _thread_map(rcfg.workers))(fn, chunks) for r in chunk]
    if len(results) != len(todo):
        raise RuntimeError(
            f"reencode {name}: {len(todo)} items submitted but {len(results)} results returned"
        )

    outcomes = Outcomes()
    manifest, quality = [], []
    reused = 0
    for item, res in zip(todo, results, strict=True):
        if res["status"] == "ok":
            manifest.append(_manifest_row(item, res))
            quality.append({"id": item.id, "split": item.split, **res["media"], **res["quality"]})
            reused += res["reused"]
        else:
            outcomes.add_failure(
                item.id, res["reason"], split=item.split, source=item.source, kind=res["kind"]
            )
    for dup in duplicates:
        outcomes.add_failure(
            dup["id"], dup["reason"], split=dup["split"], source=dup["source"], kind="duplicate"
        )
    outcomes.ok = manifest

    orphans = _remove_orphans(
        out, sorted({it.split for it in ordered} | set(cfg.splits)), {r["file"] for r in manifest}, image
    )
    write_jsonl_atomic(out / "manifest.jsonl", manifest)
    write_json_atomic(out / "classes.json", list(classes))
    outcomes.write_failures(out)
    write_failures_by_kind(out, outcomes.failed)  # the failures-by-reason plot
    write_json_atomic(out / "quality.json", quality)
    summary = _summary(name, cfg, ordered, quality, outcomes.failed)
    write_json_atomic(out / "summary.json", summary)

    seconds = time.perf_counter() - t0
    reused_by_split = Counter(r["split"] for r in results if r["status"] == "ok" and r["reused"])
    stats = {
        "reused_by_split": dict(sorted(reused_by_split.items())),
        "verdict": budget_problem(
            {s: (v["input"], v["failed"]) for s, v in summary["splits"].items()}, cfg.failure_budget
        ),
        "reused": reused,
        "encoded": len(manifest) - reused,
        "seconds": round(seconds, 3),
        "seconds_per_item": round(seconds / max(1, len(ordered)), 4),
        "stale_temporaries": stale,
        "orphans_removed": orphans,
    }
    log.info(
        "reencode %s: %d ok (%d reused), %d failed in %.1f s",
        name,
        len(manifest),
        reused,
        len(outcomes.failed),
        seconds,
    )
    past_end = sum(r["status"] == "failed" and r["kind"] == "past_end" for r in results)
    checked = sum(r["window_checked"] for r in results)
    if past_end * 2 > checked:
        raise TrimmedMismatchError(_trimmed_message(name, past_end, checked))
    return {**summary, **stats}


@dataclasses.dataclass(frozen=True)
class _ChunkFn:
    """A picklable ``chunk -> results`` callable (threads, or Dask workers through Prefect)."""

    cfg: DatasetConfig
    rcfg: ReencodeConfig
    raw: str
    out: str

    def __call__(self, chunk: Sequence[Item]) -> list[dict]:
        return process_chunk(chunk, self.cfg, self.rcfg, self.raw, self.out)


def read_dataset(cfg: DatasetConfig, raw: str | os.PathLike) -> tuple[list[Item], list[str]]:
    """The items of every split in ``cfg.splits`` and the class names, through the dataset's adapter."""
    from pipelines.datasets import get_adapter

    adapter = get_adapter(cfg.format)
    raw = Path(raw)
    items = [it for split in cfg.splits for it in adapter.read_items(raw, split)]
    return items, list(adapter.class_names(raw))


def run(
    name: str,
    cfg: DatasetConfig,
    rcfg: ReencodeConfig,
    raw: str | os.PathLike,
    out: str | os.PathLike,
    map_chunks: MapChunks | None = None,
) -> dict[str, Any]:
    """The stage: read ``raw`` through the adapter, re-encode into ``out``. See :func:`reencode_items`."""
    items, classes = read_dataset(cfg, raw)
    return reencode_items(name, items, classes, cfg, rcfg, raw, out, map_chunks=map_chunks)


# --------------------------------------------------------------------------------------------------------
# Prefect
# --------------------------------------------------------------------------------------------------------


@task(name="reencode-chunk", cache_policy=NO_CACHE, retries=0, task_run_name="reencode-{label}")
def reencode_chunk_task(fn: _ChunkFn, chunk: list[Item], label: str) -> list[dict]:
    """One Prefect task: re-encode a chunk of items (``reencode.chunk_size``), each recorded ok or failed."""
    return fn(chunk)


def _prefect_map(fn: _ChunkFn, chunks: list[list[Item]]) -> list[list[dict]]:
    """Submit one task per chunk; a task that crashes (on a Dask worker too) becomes its items' failures."""
    futures = [reencode_chunk_task.submit(fn, chunk, label=chunk[0].id) for chunk in chunks]
    results = []
    for future, chunk in zip(futures, chunks, strict=True):
        try:
            value = future.result(raise_on_failure=False)
        except Exception as exc:  # e.g. distributed's KilledWorker: the worker process died
            value = exc
        if isinstance(value, BaseException):
            log.error(
                "reencode chunk starting at %s crashed: %s: %s", chunk[0].id, type(value).__name__, value
            )
            value = crash_rows(chunk, value)
        results.append(value)
    return results


@flow(name="reencode", flow_run_name=run_name("reencode"), validate_parameters=False)
def reencode_flow(name: str, cfg: DatasetConfig, rcfg: ReencodeConfig, raw: str, out: str) -> dict[str, Any]:
    """The stage as a Prefect flow: per-item (per-chunk) tasks on the flow's task runner."""
    result = run(name, cfg, rcfg, raw, out, map_chunks=_prefect_map)
    return publish_result("reencode", name, result, Path(out) / "failures.jsonl")


def run_flow(
    name: str, cfg: DatasetConfig, rcfg: ReencodeConfig, raw: str | os.PathLike, out: str | os.PathLike
):
    """Run :func:`reencode_flow` on ``task_runner(rcfg.workers, rcfg.dask_address)`` (threads or Dask)."""
    runner = task_runner(rcfg.workers, rcfg.dask_address)
    return reencode_flow.with_options(task_runner=runner)(
        name, cfg, rcfg, str(Path(raw).absolute()), str(Path(out).absolute())
    )


def summary_screen(result: dict[str, Any]) -> str:
    """The one-screen end summary of a run (:func:`run`'s result): per split in / ok / failed / reused,
    failures by kind, and the budget verdict."""
    splits = {
        split: {
            "in": row["input"],
            "ok": row["ok"],
            "failed": row["failed"],
            "reused": result.get("reused_by_split", {}).get(split, 0),
        }
        for split, row in result["splits"].items()
    }
    title = f"reencode {result['dataset']} ({result['seconds']:.1f} s)"
    return format_stage_summary(title, splits, result["failures_by_kind"], result.get("verdict"))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.reencode",
        description=__doc__.split("\n")[0],
        epilog=usage_examples("reencode"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "dataset", help="dataset name under datasets: in params (kinetics, charades, ssv2, imagenet)"
    )
    parser.add_argument("--raw", required=True, type=Path, help="the download stage's output, raw/<ds>")
    parser.add_argument("--out", required=True, type=Path, help="the output folder, videos/<ds>")
    parser.add_argument("--params", default="params.yaml", type=Path, help="the params file")
    add_no_flow_flag(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from pipelines.params import load_params_or_exit

    params = load_params_or_exit(args.params, dataset=args.dataset)
    cfg, rcfg = params.dataset(args.dataset), params.reencode
    try:
        if args.no_flow:
            result = run(args.dataset, cfg, rcfg, args.raw, args.out)
        else:
            result = run_flow(args.dataset, cfg, rcfg, args.raw, args.out)
    except (TrimmedMismatchError, ConfigError, AnnotationError, StageLockedError) as exc:
        log.error("%s", exc)
        return 1
    print(summary_screen(result))
    print(json.dumps({k: result[k] for k in ("input", "ok", "failed", "reused", "encoded", "seconds")}))
    if result["verdict"]:
        log.error("reencode %s: %s", args.dataset, result["verdict"])
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
