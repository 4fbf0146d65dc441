"""Helpers shared by every stage: atomic writes, JSON lines, checksums, per-item outcomes, task runners,
and the Prefect conventions (flow run names, logs and result artifacts, the ``--no-flow`` flag).

Rules that these helpers enforce (docs/design.md, "DVC outs"):
- Never modify an existing out file in place: with DVC's hardlink/symlink cache those bytes are the cache's.
  Every write goes to ``.<name>.tmp-<uuid>`` in the same folder and is renamed over the final name.
- A stage deletes stale temporaries (from a killed run) when it starts: :func:`remove_stale_temporaries`.
- A data stage records each item as ok or failed with a reason, and goes on: :class:`Outcomes`.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import re
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping, Sequence
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


# --------------------------------------------------------------------------------------------------------
# Prefect: where a stage's flow runs show up (run names, logs, artifacts) and the command-line conventions
# --------------------------------------------------------------------------------------------------------

FORWARDED_LOGGERS = ("tubevit", "pipelines")  # library and stage loggers that reach the Prefect UI
NO_FLOW_HELP = "run without Prefect: no flow, no server needed (torchrun ranks use it too)"


def forward_logs_to_prefect(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Make every ``tubevit.*`` and ``pipelines.*`` logger reach the Prefect UI (per-item failures, time
    estimates, summaries), in this process and in the processes it starts.

    Adds the two names to ``PREFECT_LOGGING_EXTRA_LOGGERS`` in ``environ`` (default ``os.environ``), keeping
    names already there, and sets ``PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW=ignore`` unless it is set (the
    same loggers also run outside flows, e.g. with ``--no-flow``). Prefect reads both when it is first
    imported: ``pipelines/__init__.py`` calls this, so every ``python -m pipelines.<stage>`` has them.
    Returns the environment (for subprocesses).
    """
    env = os.environ if environ is None else environ
    names = [n.strip() for n in env.get("PREFECT_LOGGING_EXTRA_LOGGERS", "").split(",") if n.strip()]
    names += [n for n in FORWARDED_LOGGERS if n not in names]
    env["PREFECT_LOGGING_EXTRA_LOGGERS"] = ",".join(names)
    env.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
    return env  # type: ignore[return-value]


def run_name(stage: str, dataset_param: str | None = "name") -> Callable[[], str]:
    """A ``flow_run_name`` callable: ``<stage>-<dataset>-<UTC time>`` (``reencode-kinetics-20260129-030000``).

    Args:
        stage: the stage name (the flow's name).
        dataset_param: the flow parameter holding the dataset name; None for a stage of no dataset
            (``pretrain-<UTC time>``).
    """

    def name() -> str:
        from prefect.runtime import flow_run

        parts = [stage]
        if dataset_param is not None:
            value = flow_run.parameters.get(dataset_param)
            if value:
                parts.append(str(value))
        parts.append(time.strftime("%Y%m%d-%H%M%S", time.gmtime()))
        return "-".join(parts)

    return name


def _cell(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if isinstance(value, list | dict) else str(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _flatten(result: Mapping[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    rows: list[tuple[str, Any]] = []
    for key, value in result.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            rows += _flatten(value, name + ".")
        else:
            rows.append((name, value))
    return rows


def result_markdown(
    title: str, result: Mapping[str, Any], failures: Sequence[Mapping[str, Any]] = (), max_rows: int = 50
) -> str:
    """A stage's result as markdown: a ``| key | value |`` table of every value (nested keys dotted), then
    a table of the failures (id, split, kind, reason; at most ``max_rows``, with the count of the rest)."""
    lines = [f"# {title}", "", "| key | value |", "|---|---|"]
    lines += [f"| {_cell(k)} | {_cell(v)} |" for k, v in _flatten(result)]
    lines += ["", f"## Failures: {len(failures)}"]
    if failures:
        columns = [c for c in ("id", "split", "kind", "reason") if any(c in f for f in failures)]
        lines += ["", "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
        for f in failures[:max_rows]:
            lines.append("| " + " | ".join(_cell(f.get(c, "")) for c in columns) + " |")
        if len(failures) > max_rows:
            lines.append(f"\n... and {len(failures) - max_rows} more (see failures.jsonl)")
    return "\n".join(lines) + "\n"


def artifact_key(stage: str, dataset: str | None) -> str:
    """The Prefect artifact key of a stage's result (lowercase letters, digits and dashes)."""
    raw = f"{stage}-{dataset}" if dataset else stage
    return re.sub(r"-+", "-", re.sub(r"[^a-z0-9-]", "-", raw.lower())).strip("-")


def publish_result(
    stage: str,
    dataset: str | None,
    result: Any,
    failures: str | os.PathLike | Sequence[Mapping[str, Any]] | None = None,
) -> Any:
    """Publish a stage's result as a Prefect markdown artifact (key ``<stage>-<dataset>``) and return it.

    Called at the end of each stage's flow. Outside a flow run (``--no-flow``), or for a result that is not
    a mapping (a torchrun exit status), it only returns ``result``.

    Args:
        failures: the stage's ``failures.jsonl`` (a path; missing = none) or its rows.
    """
    from prefect.artifacts import create_markdown_artifact
    from prefect.context import FlowRunContext

    if FlowRunContext.get() is None or not isinstance(result, Mapping):
        return result
    rows = read_jsonl(failures) if isinstance(failures, str | os.PathLike) else list(failures or ())
    title = f"{stage} · {dataset}" if dataset else stage
    create_markdown_artifact(
        key=artifact_key(stage, dataset),
        markdown=result_markdown(title, result, rows),
        description=f"{title}: result, counts and failures",
    )
    return result


def add_no_flow_flag(parser: argparse.ArgumentParser) -> None:
    """``--no-flow`` (``args.no_flow``): the one flag name for "run without Prefect" in every stage;
    ``--no-prefect`` is kept as a hidden alias."""
    parser.add_argument("--no-flow", dest="no_flow", action="store_true", help=NO_FLOW_HELP)
    parser.add_argument("--no-prefect", dest="no_flow", action="store_true", help=argparse.SUPPRESS)


# Usage examples shown by ``python -m pipelines.<stage> --help`` (argparse epilog; with
# ``formatter_class=argparse.RawDescriptionHelpFormatter``). DVC runs the stages with the paths of dvc.yaml.
STAGE_EXAMPLES = {
    "download": """\
  python -m pipelines.download kinetics --out raw/kinetics --params params.yaml
  python -m pipelines.download ssv2 --out raw/ssv2 --workers 8          # 8 items at once
  python -m pipelines.download imagenet --out raw/imagenet --no-flow    # without Prefect
  dvc repro download@kinetics                                           # as DVC runs it""",
    "reencode": """\
  python -m pipelines.reencode kinetics --raw raw/kinetics --out videos/kinetics --params params.yaml
  python -m pipelines.reencode ssv2 --raw raw/ssv2 --out videos/ssv2 --no-flow   # plain thread pool
  dvc repro reencode@kinetics                                                    # as DVC runs it""",
    "shard": """\
  python -m pipelines.shard kinetics --videos videos/kinetics --out shards/kinetics --params params.yaml
  python -m pipelines.shard ssv2 --videos videos/ssv2 --out shards/ssv2 --no-flow
  dvc repro shard@kinetics                                                      # as DVC runs it""",
    "pretrain": """\
  python -m pipelines.pretrain --shards shards --out models/pretrain --checkpoints checkpoints/pretrain \\
      --live dvclive/pretrain --timing metrics/timing/pretrain.json --params params.yaml
  python -m pipelines.pretrain --shards s3://bucket/shards --out models/pretrain \\
      --checkpoints checkpoints/pretrain --no-flow --no-progress
  dvc repro pretrain              # as DVC runs it; pretrain.nproc > 1 launches one torchrun""",
    "finetune": """\
  python -m pipelines.finetune ssv2 --pretrained models/pretrain --shards shards/ssv2 --out models/ssv2 \\
      --checkpoints checkpoints/ssv2 --live dvclive/finetune-ssv2 --params params.yaml
  python -m pipelines.finetune charades --pretrained models/pretrain --shards shards/charades \\
      --out models/charades --checkpoints checkpoints/charades --no-flow
  dvc repro finetune@ssv2         # as DVC runs it""",
    "evaluate": """\
  python -m pipelines.evaluate kinetics --model models/pretrain --shards shards/kinetics \\
      --metrics metrics/kinetics.json --plots plots/kinetics --params params.yaml
  python -m pipelines.evaluate ssv2 --model models/ssv2 --shards shards/ssv2 --metrics /tmp/ssv2.json --no-flow
  dvc repro evaluate@ssv2         # as DVC runs it""",
}


def usage_examples(stage: str) -> str:
    """The ``--help`` epilog of ``python -m pipelines.<stage>``: its usage examples."""
    return "examples:\n" + STAGE_EXAMPLES[stage] + "\n"


def write_failures_by_kind(folder: str | os.PathLike, failed: Iterable[Mapping[str, Any]]) -> Path:
    """Write ``<folder>/failures_by_kind.json``: ``[{"kind": k, "count": n}, ...]`` sorted by kind, one row
    per kind that occurred (``[]`` when nothing failed). It is the data of dvc.yaml's "Failures by reason"
    plot (DVC plots read JSON lists, not ``failures.jsonl``). Rows without a ``kind`` count as ``other``."""
    counts = Counter(str(f.get("kind") or "other") for f in failed)
    path = Path(folder) / "failures_by_kind.json"
    write_json_atomic(path, [{"kind": k, "count": n} for k, n in sorted(counts.items())])
    return path


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
