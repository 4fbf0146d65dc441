"""Helpers shared by every stage: atomic writes, JSON lines, checksums, per-item outcomes, task runners.

Rules that these helpers enforce (DESIGN.md, "DVC outs"):
- Never modify an existing out file in place: with DVC's hardlink/symlink cache those bytes are the cache's.
  Every write goes to ``.<name>.tmp-<uuid>`` in the same folder and is renamed over the final name.
- A stage deletes stale temporaries (from a killed run) when it starts: :func:`remove_stale_temporaries`.
- A data stage records each item as ok or failed with a reason, and goes on: :class:`Outcomes`.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

TMP_MARK = ".tmp-"


def temporary_name(final: Path) -> Path:
    """A unique temporary path beside ``final``: ``<dir>/.<name>.tmp-<uuid>``."""
    final = Path(final)
    return final.with_name(f".{final.name}{TMP_MARK}{uuid.uuid4().hex}")


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path to write; on success rename it to ``final``, on error delete it.

    The parent folder is created. The rename is atomic on one filesystem, so ``final`` is either the old
    complete file, absent, or the new complete file; never half-written.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_name(final)
    try:
        yield tmp
        os.replace(tmp, final)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def dumps_json(obj: Any) -> str:
    """Stable JSON text (sorted keys, 2-space indent, trailing newline) so that reruns give equal bytes."""
    return json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n"


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    write_text_atomic(path, dumps_json(obj))


def write_jsonl_atomic(path: str | os.PathLike, rows: Iterable[dict]) -> None:
    """Write one compact JSON object per line (sorted keys), atomically."""
    text = "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows)
    write_text_atomic(path, text)


def read_json(path: str | os.PathLike) -> Any:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    """Read a JSON-lines file; a missing file is an empty list. A bad line raises naming file and line."""
    path = Path(path)
    if not path.exists():
        return []
    rows = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError as exc:
                    raise ValueError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
    return rows


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def remove_stale_temporaries(root: str | os.PathLike) -> int:
    """Delete every ``.<name>.tmp-<uuid>`` file under ``root`` (left by a killed run). Returns the count."""
    root = Path(root)
    if not root.exists():
        return 0
    count = 0
    for p in root.rglob(f".*{TMP_MARK}*"):
        if p.is_file() or p.is_symlink():
            p.unlink()
            count += 1
    if count:
        log.info("removed %d stale temporary file(s) under %s", count, root)
    return count


@dataclass
class Outcomes:
    """Per-item results of a data stage: every input item ends as ok or failed with a reason.

    ``write(folder)`` writes ``failures.jsonl`` (id, split, reason, sorted by id) atomically, so that counts
    reconcile: ``len(ok) + len(failed) == number of inputs``.
    """

    ok: list[dict] = field(default_factory=list)
    failed: list[dict] = field(default_factory=list)

    def add_ok(self, row: dict) -> None:
        self.ok.append(row)

    def add_failure(self, item_id: str, reason: str, **extra: Any) -> None:
        log.warning("%s: %s", item_id, reason)
        self.failed.append({"id": item_id, "reason": reason, **extra})

    def merge(self, other: Outcomes) -> None:
        self.ok.extend(other.ok)
        self.failed.extend(other.failed)

    def write_failures(self, folder: str | os.PathLike, name: str = "failures.jsonl") -> Path:
        path = Path(folder) / name
        write_jsonl_atomic(path, sorted(self.failed, key=lambda r: (str(r.get("split", "")), str(r["id"]))))
        return path


def task_runner(workers: int = 2, dask_address: str | None = None):
    """The Prefect task runner of a data stage: threads by default, a Dask cluster when an address is set.

    Dask workers need the workspace on a shared filesystem at the same path.
    """
    if dask_address:
        from prefect_dask import DaskTaskRunner

        return DaskTaskRunner(address=dask_address)
    from prefect.task_runners import ThreadPoolTaskRunner

    return ThreadPoolTaskRunner(max_workers=workers)


# ------------------------------------------------------------------------------------ data-stage helpers
class StageLockedError(RuntimeError):
    """Another run of the same stage holds the lock of this output folder; the message names both."""


def lock_path(out: str | os.PathLike) -> Path:
    """The lock file of an output folder: ``<parent>/.<name>.lock``, beside the out (never inside it)."""
    out = Path(out).absolute()
    return out.with_name(f".{out.name}.lock")


@contextlib.contextmanager
def stage_lock(out: str | os.PathLike, stage: str) -> Iterator[Path]:
    """Hold an exclusive lock on output folder ``out`` for the body (one run of one stage at a time).

    A second run of the stage on the same out does not wait: it fails at once with
    :class:`StageLockedError`, naming the lock file and the holder's pid, before it touches the folder
    (so it never removes the first run's live temporaries). The lock is an ``flock`` on
    ``<parent>/.<name>.lock``: the kernel drops it when the holder exits, killed or not, so a stale lock
    file from a killed run does not block the next one.
    """
    import fcntl

    path = lock_path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip() or "unknown"
            raise StageLockedError(
                f"{stage}: {Path(out)} is in use by another {stage} run ({holder}; lock {path}); "
                "wait for it to finish, then run again"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()}".encode(), 0)
        yield path
    finally:
        os.close(fd)  # releases the flock


def budget_problem(counts: dict[str, tuple[int, int]], budget: float, what: str = "items") -> str | None:
    """The one-line reason a data stage fails, or ``None`` when every split is usable.

    Args:
        counts: per split (or ``"all"``), ``(items in, items failed)``.
        budget: the fraction of a split's items allowed to fail (``datasets.<ds>.failure_budget``).
        what: the noun in the message (``items``, ``clips``, ``manifest rows``).

    A split fails when it has no item, when every item failed, or when more than ``budget`` of them did.
    """
    for split, (n_in, n_failed) in counts.items():
        if n_in == 0:
            return f"split {split!r}: no {what} to process"
        if n_failed >= n_in:
            return f"split {split!r}: no usable {what} (all {n_in} failed; see failures.jsonl)"
        if n_failed > budget * n_in:
            return (
                f"split {split!r}: {n_failed} of {n_in} {what} failed ({100 * n_failed / n_in:.1f}%), "
                f"over failure_budget {budget:g} (see failures.jsonl)"
            )
    return None


def format_stage_summary(
    title: str,
    splits: dict[str, dict[str, int]],
    failed_by_reason: dict[str, int],
    verdict: str | None = None,
) -> str:
    """A one-screen summary of a data stage: per split items in, ok, failed, reused; failures by reason.

    Args:
        title: e.g. ``"reencode kinetics"``.
        splits: per split ``{"in", "ok", "failed", "reused"}`` (missing keys print as 0).
        failed_by_reason: failure count per reason kind (the ten largest are shown).
        verdict: the budget problem (:func:`budget_problem`), or ``None`` for "ok".
    """
    lines = [f"== {title} ==", f"{'split':<12}{'in':>9}{'ok':>9}{'failed':>9}{'reused':>9}"]
    total = dict.fromkeys(("in", "ok", "failed", "reused"), 0)
    for split, row in splits.items():
        lines.append(f"{split:<12}" + "".join(f"{row.get(k, 0):>9}" for k in total))
        for k in total:
            total[k] += row.get(k, 0)
    if len(splits) > 1:
        lines.append(f"{'total':<12}" + "".join(f"{total[k]:>9}" for k in total))
    if failed_by_reason:
        lines.append("failed by reason:")
        ranked = sorted(failed_by_reason.items(), key=lambda kv: (-kv[1], kv[0]))
        for reason, n in ranked[:10]:
            lines.append(f"  {n:>7}  {reason}")
        if len(ranked) > 10:
            lines.append(f"  {sum(n for _, n in ranked[10:]):>7}  ({len(ranked) - 10} other reasons)")
    lines.append(f"result: {'FAILED: ' + verdict if verdict else 'ok'}")
    return "\n".join(lines)
