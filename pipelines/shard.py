"""shard stage: pack re-encoded clips (or images) into WebDataset tars, one set per (dataset, split).

Input (the reencode stage's output), ``videos/<ds>/``:
    manifest.jsonl   one row per re-encoded item: id, split, file (relative to videos/<ds>), label, labels,
                     actions ([class, start s, end s]), fps, frames, duration, width, height, source
    classes.json     class names, index = label

Output, ``shards/<ds>/``:
    <split>/<ds>-<split>-%06d.tar   samples ``{%09d}.json`` + ``{%09d}.mp4`` (video) or ``.jpg`` (image)
    <split>/index.json              shard names, samples, bytes, sha256; class map; total; input fingerprint
    failures.jsonl                  manifest rows that could not be packed (missing or unreadable file)
    summary.json                    counts per split (manifest rows = ok + failed)

Properties:
- The sample order is a pure function of the manifest and ``shard.seed``: rows are sorted by id, then
  shuffled with ``random.Random("<seed>:<split>")``. Keys count up in that order.
- Tar members are written with tarfile in USTAR format with mtime 0, uid/gid 0, empty user and group
  names and mode 0444, so equal inputs give byte-equal tars.
- A shard is closed once it holds ``target_bytes`` (tar bytes); a split with at least ``min_shards``
  samples gets at least ``min_shards`` shards (webdataset needs one per rank x worker).
- Each tar is written to a temporary name and renamed. ``index.json`` is written last, after a verify pass
  that re-reads every tar (sample count, sha256, every json decodes). A killed run leaves no index.json
  (or the previous one), so the rerun rewrites the split; the outputs equal an uninterrupted run's.
- A rerun skips a split whose index.json records the same input fingerprint (the manifest rows of the
  split, their file sizes, the class map and the shard params) and whose tars exist with their sizes.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import math
import os
import random
import re
import sys
import tarfile
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from pipelines.common import (
    Outcomes,
    StageLockedError,
    add_no_flow_flag,
    atomic_path,
    budget_problem,
    dumps_json,
    format_stage_summary,
    publish_result,
    read_json,
    read_jsonl,
    remove_stale_temporaries,
    run_name,
    sha256_file,
    stage_lock,
    usage_examples,
    write_json_atomic,
)
from tubevit.config.data import ShardConfig

log = logging.getLogger(__name__)

INDEX_NAME = "index.json"
INDEX_VERSION = 1
BLOCK = tarfile.BLOCKSIZE  # 512
JSON_KEYS = ("id", "label", "labels", "actions", "fps", "frames", "duration", "width", "height", "source")
MEDIA = {".mp4": "mp4", ".jpg": "jpg", ".jpeg": "jpg"}


class ShardError(RuntimeError):
    """A shard set could not be written or does not verify; the message names the file and the reason."""


@dataclass(frozen=True)
class Sample:
    """One sample to pack: its key, its media bytes' path and extension, and its json metadata."""

    key: str
    path: Path
    ext: str  # "mp4" or "jpg"
    size: int  # media bytes
    meta: dict[str, Any]

    def json_bytes(self) -> bytes:
        return json.dumps(self.meta, sort_keys=True, ensure_ascii=False).encode("utf-8")

    def tar_bytes(self) -> int:
        """Bytes this sample takes in a tar: a 512-byte header plus the padded data, per member."""
        return sum(BLOCK + math.ceil(n / BLOCK) * BLOCK for n in (len(self.json_bytes()), self.size))


def shard_name(dataset: str, split: str, index: int) -> str:
    return f"{dataset}-{split}-{index:06d}.tar"


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = 0
    info.mode = 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    return info


def write_tar(path: Path, samples: Iterable[Sample]) -> None:
    """Write ``samples`` to the tar ``path`` atomically (temporary name, then rename).

    Each sample becomes ``<key>.json`` then ``<key>.<ext>``, deterministic headers (see module doc).
    """
    with atomic_path(path) as tmp, tarfile.open(tmp, "w", format=tarfile.USTAR_FORMAT) as tar:
        for s in samples:
            payload = s.json_bytes()
            tar.addfile(_tarinfo(f"{s.key}.json", len(payload)), io.BytesIO(payload))
            with open(s.path, "rb") as f:
                tar.addfile(_tarinfo(f"{s.key}.{s.ext}", s.size), f)


def plan_shards(samples: list[Sample], target_bytes: int, min_shards: int) -> list[list[Sample]]:
    """Group ``samples`` (in order) into shards.

    A shard closes once its tar bytes reach ``target_bytes``. If that gives fewer than ``min_shards``
    shards and there are at least ``min_shards`` samples, the samples are split into ``min_shards``
    contiguous groups of near-equal counts instead. Never returns an empty shard.
    """
    groups: list[list[Sample]] = []
    current: list[Sample] = []
    size = 0
    for s in samples:
        current.append(s)
        size += s.tar_bytes()
        if size >= target_bytes:
            groups.append(current)
            current, size = [], 0
    if current:
        groups.append(current)
    n = len(samples)
    if len(groups) < min_shards and n >= min_shards:
        bounds = [round(i * n / min_shards) for i in range(min_shards + 1)]
        groups = [samples[bounds[i] : bounds[i + 1]] for i in range(min_shards)]
    return groups


def fingerprint(rows: list[dict], sizes: list[int], classes: list[str], scfg: ShardConfig) -> str:
    """sha256 of everything a split's shards depend on: manifest rows, file sizes, classes, shard params."""
    h = hashlib.sha256()
    h.update(dumps_json({"version": INDEX_VERSION, "classes": classes, "shard": scfg.__dict__}).encode())
    for row, size in zip(rows, sizes, strict=True):
        h.update(json.dumps(row, sort_keys=True, ensure_ascii=False).encode())
        h.update(f"\n{size}\n".encode())
    return h.hexdigest()


def _sample_meta(row: dict) -> dict[str, Any]:
    meta = {k: row[k] for k in JSON_KEYS if k in row}
    meta.setdefault("labels", [])
    meta.setdefault("actions", [])
    return meta


def order_rows(rows: list[dict], seed: int, split: str) -> list[dict]:
    """The split's deterministic sample order: sorted by id, then shuffled with ``Random(f"{seed}:{split}")``."""
    rows = sorted(rows, key=lambda r: str(r["id"]))
    random.Random(f"{seed}:{split}").shuffle(rows)
    return rows


def read_tar_samples(path: Path) -> dict[str, dict[str, bytes]]:
    """Read a tar into {key: {ext: bytes}} (keys in file order). Raises ShardError on a bad member."""
    samples: dict[str, dict[str, bytes]] = {}
    try:
        with tarfile.open(path, "r") as tar:
            for m in tar:
                if not m.isreg() or "/" in m.name or "." not in m.name:
                    raise ShardError(f"{path}: unexpected member {m.name!r}")
                key, ext = m.name.split(".", 1)
                f = tar.extractfile(m)
                assert f is not None
                samples.setdefault(key, {})[ext] = f.read()
    except tarfile.TarError as exc:
        raise ShardError(f"{path}: not a readable tar ({exc})") from None
    return samples


def verify_split(folder: Path, index: dict) -> None:
    """Re-read every shard listed in ``index``: sha256, byte size, sample count, json decodes, media present.

    Raises:
        ShardError: naming the shard (and key) that does not match.
    """
    total = 0
    for entry in index["shards"]:
        path = folder / entry["name"]
        if not path.is_file():
            raise ShardError(f"{path}: missing")
        if path.stat().st_size != entry["bytes"]:
            raise ShardError(f"{path}: {path.stat().st_size} bytes, index says {entry['bytes']}")
        if sha256_file(path) != entry["sha256"]:
            raise ShardError(f"{path}: sha256 differs from the index")
        samples = read_tar_samples(path)
        if len(samples) != entry["samples"]:
            raise ShardError(f"{path}: {len(samples)} samples, index says {entry['samples']}")
        for key, members in samples.items():
            if not re.fullmatch(r"\d{9}", key):
                raise ShardError(f"{path}: key {key!r} is not 9 digits")
            if set(members) != {"json", index["media"]}:
                raise ShardError(f"{path}: sample {key} has members {sorted(members)}")
            try:
                json.loads(members["json"])
            except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                raise ShardError(f"{path}: sample {key}: json does not decode ({exc})") from None
        total += len(samples)
    if total != index["total"]:
        raise ShardError(f"{folder}: {total} samples in the shards, index says {index['total']}")


def _index_is_current(folder: Path, fp: str) -> bool:
    path = folder / INDEX_NAME
    if not path.is_file():
        return False
    try:
        index = read_json(path)
    except (OSError, json.JSONDecodeError):
        return False
    if index.get("fingerprint") != fp:
        return False
    for entry in index.get("shards", []):
        p = folder / entry["name"]
        if not p.is_file() or p.stat().st_size != entry["bytes"]:
            return False
    return True


def shard_split(
    name: str, split: str, rows: list[dict], classes: list[str], scfg: ShardConfig, videos: Path, out: Path
) -> dict[str, Any]:
    """Write (or skip, when current) the shard set of one split. Returns its summary.

    ``rows`` are the manifest rows of this split; a row whose file is missing, is not a regular file or
    has an unknown extension is recorded as a failure (id, split, reason) and left out.
    """
    folder = out / split
    outcomes = Outcomes()
    samples_rows: list[tuple[dict, Path, str, int]] = []
    root = Path(os.path.abspath(videos))
    for row in order_rows(rows, scfg.seed, split):
        rid = str(row.get("id"))
        rel = str(row.get("file", ""))
        # Containment by the path as written, not by where links point: with DVC's symlink cache every
        # file of videos/<ds> is a link into .dvc/cache, and .resolve() would put it "outside".
        path = Path(os.path.normpath(root / rel))
        ext = MEDIA.get(Path(rel).suffix.lower())
        if not rel or Path(rel).is_absolute() or root not in path.parents:
            outcomes.add_failure(rid, f"file {rel!r} is not inside {videos}", split=split, kind="outside")
        elif ext is None:
            outcomes.add_failure(
                rid, f"file {rel!r}: extension is not .mp4 or .jpg", split=split, kind="extension"
            )
        elif not path.exists():
            outcomes.add_failure(rid, f"file {rel!r} is missing", split=split, kind="missing")
        else:
            samples_rows.append((row, path, ext, path.stat().st_size))
    exts = {ext for _, _, ext, _ in samples_rows}
    if len(exts) > 1:
        raise ShardError(f"{videos}: split {split} mixes media types {sorted(exts)}")
    media = exts.pop() if exts else "mp4"
    fp = fingerprint([r for r, *_ in samples_rows], [s for *_, s in samples_rows], classes, scfg)
    summary = {"split": split, "manifest_rows": len(rows), "ok": len(samples_rows), "failed": outcomes.failed}
    if _index_is_current(folder, fp):
        index = read_json(folder / INDEX_NAME)
        log.info("%s/%s: index.json is current (%d samples), skipped", name, split, index["total"])
        return {**summary, "skipped": True, "shards": len(index["shards"])}

    samples = [
        Sample(f"{i:09d}", path, ext, size, _sample_meta(row))
        for i, (row, path, ext, size) in enumerate(samples_rows)
    ]
    groups = plan_shards(samples, scfg.target_bytes, scfg.min_shards)
    folder.mkdir(parents=True, exist_ok=True)
    entries = []
    for i, group in enumerate(groups):
        tar_path = folder / shard_name(name, split, i)
        write_tar(tar_path, group)
        entries.append(
            {
                "name": tar_path.name,
                "samples": len(group),
                "bytes": tar_path.stat().st_size,
                "sha256": sha256_file(tar_path),
                "first_key": group[0].key,
            }
        )
    wanted = {e["name"] for e in entries}
    for stale in folder.glob(f"{name}-{split}-*.tar"):
        if stale.name not in wanted:
            stale.unlink()
    index = {
        "version": INDEX_VERSION,
        "dataset": name,
        "split": split,
        "media": media,
        "total": len(samples),
        "shards": entries,
        "classes": classes,
        "num_classes": len(classes),
        "fingerprint": fp,
        "params": {"target_bytes": scfg.target_bytes, "min_shards": scfg.min_shards, "seed": scfg.seed},
    }
    verify_split(folder, index)
    write_json_atomic(folder / INDEX_NAME, index)
    log.info("%s/%s: %d samples in %d shards", name, split, len(samples), len(entries))
    return {**summary, "skipped": False, "shards": len(entries)}


def run(name: str, split_names: Iterable[str], scfg: ShardConfig, videos: Path, out: Path) -> dict[str, Any]:
    """Shard every split of dataset ``name`` from ``videos`` (= videos/<name>) into ``out`` (= shards/<name>).

    Returns the summary written to ``out/summary.json``: per split the manifest row count, ok count, shard
    count and whether it was skipped; ``failures.jsonl`` lists the rows left out with their reasons.

    Raises:
        ShardError: the manifest or class map is missing, or a written split does not verify.
        StageLockedError: another shard run holds this out's lock.
    """
    with stage_lock(out, "shard"):
        return _run_locked(name, split_names, scfg, videos, out)


def _run_locked(name: str, split_names: Iterable[str], scfg: ShardConfig, videos: Path, out: Path) -> dict:
    videos, out = Path(videos), Path(out)
    manifest, classes_path = videos / "manifest.jsonl", videos / "classes.json"
    for p in (manifest, classes_path):
        if not p.is_file():
            raise ShardError(f"{p}: missing (run the reencode stage first)")
    rows = read_jsonl(manifest)
    classes = read_json(classes_path)
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise ShardError(f"{classes_path}: expected a JSON list of class names")
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    splits = list(split_names)
    unknown = sorted({str(r.get("split")) for r in rows} - set(splits))
    if unknown:
        log.warning("%s: manifest rows of splits %s are not sharded (splits: %s)", manifest, unknown, splits)
    outcomes = Outcomes()
    per_split = {}
    for split in splits:
        result = shard_split(
            name, split, [r for r in rows if r.get("split") == split], classes, scfg, videos, out
        )
        for failure in result.pop("failed"):
            outcomes.failed.append(failure)
        result["failed"] = result["manifest_rows"] - result["ok"]
        per_split[split] = result
    outcomes.write_failures(out)
    summary = {
        "dataset": name,
        "splits": {s: {k: v for k, v in r.items() if k != "split"} for s, r in per_split.items()},
        "total": sum(r["ok"] for r in per_split.values()),
        "failed": len(outcomes.failed),
        "failures_by_kind": dict(sorted(Counter(f["kind"] for f in outcomes.failed).items())),
    }
    write_json_atomic(out / "summary.json", summary)
    return summary


def verdict(summary: dict[str, Any], failure_budget: float) -> str | None:
    """Why the shard set is not usable (a split without samples, or over the budget), or ``None``."""
    counts = {s: (r["manifest_rows"], r["failed"]) for s, r in summary["splits"].items()}
    return budget_problem(counts, failure_budget, what="manifest rows")


def summary_screen(summary: dict[str, Any], problem: str | None) -> str:
    """The one-screen end summary: per split manifest rows in, packed, failed, reused (a current split)."""
    splits = {
        s: {"in": r["manifest_rows"], "ok": r["ok"], "failed": r["failed"], "reused": r["ok"] * r["skipped"]}
        for s, r in summary["splits"].items()
    }
    return format_stage_summary(f"shard {summary['dataset']}", splits, summary["failures_by_kind"], problem)


@task(cache_policy=NO_CACHE)
def shard_task(name: str, splits: list[str], scfg: ShardConfig, videos: Path, out: Path) -> dict[str, Any]:
    return run(name, splits, scfg, videos, out)


@flow(name="shard", flow_run_name=run_name("shard"))
def shard_flow(name: str, splits: list[str], scfg: ShardConfig, videos: Path, out: Path) -> dict[str, Any]:
    """Prefect flow of the shard stage: one task that runs :func:`run`."""
    summary = shard_task(name, splits, scfg, videos, out)
    return publish_result("shard", name, summary, Path(out) / "failures.jsonl")


def main(argv: list[str] | None = None) -> int:
    """The command: exit 0 when every split is usable, 1 with one line on stderr otherwise (a missing
    manifest, a split with no sample, more than ``datasets.<ds>.failure_budget`` of a split's rows left out,
    a shard that does not verify, or another run holding the lock); 2 for bad params."""
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.shard",
        description="Pack re-encoded clips into WebDataset shards.",
        epilog=usage_examples("shard"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("dataset", help="dataset name (kinetics, charades, ssv2, imagenet)")
    parser.add_argument("--videos", type=Path, required=True, help="videos/<dataset> (reencode output)")
    parser.add_argument("--out", type=Path, required=True, help="shards/<dataset>")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    add_no_flow_flag(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from pipelines.params import load_params_or_exit  # validates every section (torch-free)

    params = load_params_or_exit(args.params, dataset=args.dataset)
    dcfg, scfg = params.dataset(args.dataset), params.shard
    try:
        if args.no_flow:
            summary = run(args.dataset, list(dcfg.splits), scfg, args.videos, args.out)
        else:
            summary = shard_flow(args.dataset, list(dcfg.splits), scfg, args.videos, args.out)
    except (ShardError, StageLockedError, OSError, ValueError) as exc:
        print(f"shard {args.dataset}: {exc}", file=sys.stderr)
        return 1
    problem = verdict(summary, dcfg.failure_budget)
    print(summary_screen(summary, problem))
    print(dumps_json(summary), end="")
    if problem:
        print(f"shard {args.dataset}: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
