"""Download stage: fill ``raw/<ds>/`` with a dataset in its own format (annotation files + media).

``python -m pipelines.download <ds> --out raw/<ds> --params params.yaml``

Sources (``datasets.<ds>.source``):
- ``synthetic``: :func:`pipelines.datasets.synthetic.generate` writes the embedded-default dataset.
  ``.synthetic.json`` records the format, the generator config and every file's size and sha256; a rerun with
  the same config and all files present skips, a changed config deletes the files it listed and regenerates.
- ``local``: every file of the folder ``uri[0]`` is hard-linked (or copied, across filesystems) into the
  output under the same relative path. A file whose target has the same inode, or the same size and mtime, is
  complete and skipped.
- ``http``: each URL of ``annotations`` and ``uri`` is one item (a URL listed twice is one item; two URLs
  whose files would have the same name: the second fails, naming the first). It downloads with ``urllib``
  to ``<key>.part`` (``<key>`` = ``<sha1(url)[:12]>-<file name>``) in the partial folder
  ``<out parent>/.partial/<out name>/``, *outside* the out: DVC never caches or links a partial file, so
  resuming (an HTTP ``Range`` request after a dropped connection: this run's retries or the next run) never
  appends to a file DVC owns; a partial that is a link, or has other hard links, is started over. Only
  http(s) URLs are accepted, redirects included. It checks the size (``Content-Length`` /
  ``Content-Range``) and the sha256 when params give one (``sha256[i]``, ``''`` = unknown). Archives
  (``.tar``, ``.tar.gz``/``.tgz``, ``.tar.bz2``, ``.tar.xz``, ``.zip``) are extracted into the output after
  every member has been checked: a member that escapes the folder (absolute, ``..``), a symbolic link, a
  hard link, a device or a FIFO refuses the whole archive, naming the member, and so do more members than
  ``max_archive_members`` or more bytes than ``max_extract_bytes``. Other files are stored as
  ``<out>/<file name>``. ``.downloads/<key>.json`` records the URL, byte count, sha256 and the files
  written; a rerun skips an item whose record matches.
- ``youtube``: (Kinetics) the annotation CSVs come from ``annotations`` (http), then each clip whose video is
  not on disk is fetched with yt-dlp (the optional extra ``pip install 'tubevit[youtube]'``) as the full
  video ``<out>/<split>/<youtube_id>.<ext>`` (``trimmed: false``: reencode cuts the window). yt-dlp's errors
  become failures with its message; an item counts as ok only when its file exists.

Every item ends ok or in ``failures.jsonl`` (``id``, ``reason``, ``source``); ``summary.json`` holds the counts
(``items = ok + failed``). The command prints a one-screen summary and exits 1 with a one-line reason when no
item succeeded or more than ``datasets.<ds>.failure_budget`` of them failed. One run at a time per out
(:func:`pipelines.common.stage_lock`): a second run fails at start. Network errors (refused, reset, timed out, incomplete body, HTTP 408/429/5xx) are
retried (``retries`` times, with resume); 4xx, checksum and unsafe-archive errors are final.
The Prefect flow :func:`download_flow` runs one task per item (http and youtube tasks retry).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import http.client
import json
import logging
import os
import re
import shutil
import stat
import tarfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from pipelines.common import (
    Outcomes,
    StageLockedError,
    add_no_flow_flag,
    atomic_path,
    budget_problem,
    format_stage_summary,
    publish_result,
    read_json,
    read_jsonl,
    remove_stale_temporaries,
    run_name,
    sha256_file,
    stage_lock,
    task_runner,
    usage_examples,
    write_json_atomic,
)
from pipelines.datasets.base import AnnotationError
from tubevit.config.base import to_dict
from tubevit.config.data import DatasetConfig

log = logging.getLogger(__name__)

__all__ = [
    "CapError",
    "DownloadError",
    "TransientError",
    "UnsafeArchiveError",
    "dedupe_http",
    "download_flow",
    "failure_cause",
    "fetch_url",
    "main",
    "partial_dir",
    "run",
    "run_flow",
    "safe_extract",
    "summary_screen",
]

DOWNLOADS = ".downloads"  # per-URL completion records, inside the output folder
PARTIAL = ".partial"  # <out parent>/.partial/<out name>/: partial downloads, outside the out
SYNTHETIC_RECORD = ".synthetic.json"
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz", ".zip")
CHUNK = 1 << 16
USER_AGENT = "tubevit-download/0.1"
EXTRACT_PREFIX = ".extract-"


class DownloadError(RuntimeError):
    """One item cannot be downloaded; the message names it (URL, file) and the reason. Not retried."""


class TransientError(DownloadError):
    """A network failure worth retrying (refused, reset, timed out, incomplete body, HTTP 408/429/5xx)."""


class UnsafeArchiveError(DownloadError):
    """An archive member escapes the target folder or is a link or device; nothing was extracted."""


class CapError(DownloadError):
    """An archive is over a cap (members, extracted bytes); nothing was extracted."""


def partial_dir(out: str | os.PathLike) -> Path:
    """Where the stage keeps partial downloads of ``out``: ``<parent>/.partial/<name>``, beside the out."""
    out = Path(out).absolute()
    return out.parent / PARTIAL / out.name


class _HttpOnlyRedirects(urllib.request.HTTPRedirectHandler):
    """Follow redirects to http(s) only (urllib's default also follows ``ftp://``)."""

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        scheme = urllib.parse.urlparse(urllib.parse.urljoin(req.full_url, newurl)).scheme.lower()
        if scheme not in ("http", "https"):
            raise DownloadError(f"{req.full_url}: redirect to {newurl!r} refused (only http(s) is followed)")
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_OPENER = urllib.request.build_opener(_HttpOnlyRedirects)


# ---------------------------------------------------------------------------------------------------- http
def _url_key(url: str) -> str:
    """A file-system-safe, collision-free name for a URL: ``<sha1[:12]>-<basename>``."""
    name = PurePosixPath(urllib.parse.urlparse(url).path).name or "index"
    name = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    return f"{hashlib.sha1(url.encode()).hexdigest()[:12]}-{name}"


def _url_name(url: str) -> str:
    name = PurePosixPath(urllib.parse.unquote(urllib.parse.urlparse(url).path)).name
    if not name or name in (".", ".."):
        raise DownloadError(f"{url}: the URL names no file")
    return name


def is_archive(name: str) -> bool:
    return name.lower().endswith(ARCHIVE_SUFFIXES)


def _content_range_total(value: str | None) -> tuple[int | None, int | None]:
    """``bytes 100-199/200`` -> (first byte 100, total 200); ``None`` parts when absent or ``*``."""
    match = re.match(r"bytes (\d+)-\d+/(\d+|\*)", value or "")
    if not match:
        return None, None
    return int(match.group(1)), None if match.group(2) == "*" else int(match.group(2))


def _move_into(part: Path, dest: Path) -> None:
    """Rename the finished ``part`` onto ``dest`` (copy to a temporary beside ``dest`` across filesystems)."""
    try:
        os.replace(part, dest)
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        with atomic_path(dest) as tmp:
            shutil.copyfile(part, tmp)
        part.unlink()


def fetch_url(
    url: str, dest: Path, *, sha256: str = "", timeout: float = 30.0, part: Path | None = None
) -> dict[str, Any]:
    """Download ``url`` to ``dest`` atomically, resuming the partial file ``part`` with HTTP Range.

    The size is checked against ``Content-Length`` (or the total of ``Content-Range``) and the sha256
    against ``sha256`` when given; a mismatch deletes the partial file. ``part`` defaults to
    ``.<dest name>.part`` beside ``dest``; the stage passes one outside its DVC out (:func:`partial_dir`).
    A partial file is only appended to while it is this stage's own: one that is a symbolic link or has
    other hard links (a cache may own its bytes) is deleted and the download starts over. Only http(s)
    URLs are fetched, and only http(s) redirects followed.

    Returns:
        ``{"url", "bytes", "sha256", "resumed_from"}`` (``resumed_from``: bytes already on disk, 0 if none).

    Raises:
        TransientError: the server cannot be reached, the connection dropped (the partial file is kept
            for the next try), or HTTP 408/429/5xx.
        DownloadError: HTTP 4xx, a size or checksum mismatch, a non-http(s) URL or redirect. Every message
            names the URL.
    """
    if urllib.parse.urlparse(url).scheme.lower() not in ("http", "https"):
        raise DownloadError(f"{url}: only http(s) URLs are downloaded")
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = Path(part) if part is not None else dest.with_name(f".{dest.name}.part")
    part.parent.mkdir(parents=True, exist_ok=True)
    if part.is_symlink() or (part.exists() and part.stat().st_nlink > 1):
        part.unlink()  # never append to bytes that something else links to
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    try:
        response = _OPENER.open(request, timeout=timeout)
    except urllib.error.HTTPError as exc:
        exc.close()
        if exc.code == 416 and have:  # the range starts at or past the end: start again
            part.unlink()
            raise TransientError(f"{url}: HTTP 416 for a resumed range; restarting from zero") from None
        message = f"{url}: HTTP {exc.code} {exc.reason}"
        if exc.code in (408, 429) or exc.code >= 500:
            raise TransientError(message) from None
        raise DownloadError(message) from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", exc)
        raise TransientError(f"cannot reach {url}: {reason}") from None
    with response:
        first, total = None, None
        if have and response.status == 206:
            first, total = _content_range_total(response.headers.get("Content-Range"))
            if first != have:
                raise DownloadError(f"{url}: asked for bytes from {have}, server sent from {first}")
            mode = "ab"
        else:  # a fresh download, or a server that ignores Range: start from zero
            have, mode = 0, "wb"
            length = response.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
        try:
            with open(part, mode) as f:
                while block := response.read(CHUNK):
                    f.write(block)
        except (OSError, http.client.HTTPException) as exc:
            raise TransientError(
                f"{url}: connection lost after {part.stat().st_size} bytes ({exc}); will resume"
            ) from None
    size = part.stat().st_size
    if total is not None and size < total:
        raise TransientError(f"{url}: connection closed after {size} of {total} bytes; will resume")
    if total is not None and size > total:
        part.unlink()
        raise DownloadError(f"{url}: size mismatch: got {size} bytes, the server announced {total}")
    digest = sha256_file(part)
    if sha256 and digest != sha256.lower():
        part.unlink()
        raise DownloadError(f"{url}: sha256 mismatch: expected {sha256.lower()}, got {digest}")
    _move_into(part, dest)
    return {"url": url, "bytes": size, "sha256": digest, "resumed_from": have}


# ------------------------------------------------------------------------------------------------ archives
def _member_problem(name: str) -> str | None:
    path = PurePosixPath(name.replace("\\", "/"))
    if path.is_absolute() or re.match(r"^[A-Za-z]:", name):
        return "is an absolute path"
    if ".." in path.parts:
        return "escapes the target folder ('..')"
    return None


def _check_caps(label: str, count: int, total: int, max_members: int | None, max_bytes: int | None) -> None:
    if max_members is not None and count > max_members:
        raise CapError(
            f"{label}: {count} members, over the cap of {max_members} (max_archive_members); "
            "nothing was extracted"
        )
    if max_bytes is not None and total > max_bytes:
        raise CapError(
            f"{label}: {total} bytes to extract, over the cap of {max_bytes} (max_extract_bytes); "
            "nothing was extracted"
        )


def _check_tar(
    archive: Path, label: str, max_members: int | None = None, max_bytes: int | None = None
) -> list[tarfile.TarInfo]:
    members = []
    total = 0
    with tarfile.open(archive, "r:*") as tf:
        for m in tf:  # counted while listing: a hostile archive stops at the cap, not at the end
            members.append(m)
            total += m.size if m.isfile() else 0
            _check_caps(label, len(members), total, max_members, max_bytes)
    for m in members:
        problem = _member_problem(m.name)
        if problem is None:
            if m.issym():
                problem = f"is a symbolic link (to {m.linkname!r})"
            elif m.islnk():
                problem = f"is a hard link (to {m.linkname!r})"
            elif m.ischr() or m.isblk():
                problem = "is a device"
            elif m.isfifo():
                problem = "is a FIFO"
            elif not (m.isfile() or m.isdir()):
                problem = "is not a regular file or folder"
        if problem:
            raise UnsafeArchiveError(f"{label}: member {m.name!r} {problem}; nothing was extracted")
    return members


def _check_zip(
    archive: Path, label: str, max_members: int | None = None, max_bytes: int | None = None
) -> None:
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        _check_caps(label, len(infos), sum(i.file_size for i in infos), max_members, max_bytes)
        for info in infos:
            problem = _member_problem(info.filename)
            mode = info.external_attr >> 16
            if problem is None and mode:
                if stat.S_ISLNK(mode):
                    problem = "is a symbolic link"
                elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                    problem = "is a device"
                elif stat.S_ISFIFO(mode):
                    problem = "is a FIFO"
            if problem:
                raise UnsafeArchiveError(
                    f"{label}: member {info.filename!r} {problem}; nothing was extracted"
                )


def safe_extract(
    archive: Path,
    dest: Path,
    label: str | None = None,
    *,
    max_members: int | None = None,
    max_bytes: int | None = None,
) -> list[str]:
    """Extract a tar (any compression) or zip ``archive`` into ``dest`` after checking every member.

    ``max_members`` and ``max_bytes`` cap the member count and the bytes the files declare (tar and zip
    write exactly the declared sizes); ``None`` = no cap.

    Members are extracted into a staging folder inside ``dest`` and then renamed into place, so ``dest`` never
    holds a half-extracted file.

    Returns:
        The extracted files, relative to ``dest`` (POSIX), sorted.

    Raises:
        UnsafeArchiveError: a member is absolute, contains ``..``, or is a symbolic link, hard link, device
            or FIFO; the message names the archive (``label``) and the member. Nothing is extracted.
        CapError: more members or bytes than the caps. Nothing is extracted.
        DownloadError: the file is not a readable archive.
    """
    archive, dest = Path(archive), Path(dest)
    label = label or str(archive)
    try:
        if zipfile.is_zipfile(archive):
            _check_zip(archive, label, max_members, max_bytes)
            kind = "zip"
        else:
            _check_tar(archive, label, max_members, max_bytes)
            kind = "tar"
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise DownloadError(f"{label}: not a readable archive ({exc})") from None
    dest.mkdir(parents=True, exist_ok=True)
    staging = dest / f"{EXTRACT_PREFIX}{uuid.uuid4().hex}"
    try:
        if kind == "zip":
            with zipfile.ZipFile(archive) as zf:
                zf.extractall(staging)
        else:
            with tarfile.open(archive, "r:*") as tf:
                tf.extractall(staging, filter="data")  # the checks above are stricter; this is a second guard
        files = sorted(p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file())
        for rel in files:
            target = dest / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / rel, target)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as exc:
        raise DownloadError(f"{label}: extraction failed ({exc})") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return files


# ------------------------------------------------------------------------------------------------- items
@dataclass(frozen=True)
class Job:
    """One item of the download stage: what to fetch and where."""

    id: str  # item id in failures.jsonl (the URL, the relative file, the clip id)
    kind: str  # "http" | "local" | "youtube"
    source: str  # URL or absolute source path
    sha256: str = ""
    dest: str = ""  # youtube: the output file stem, relative to out (``<split>/<youtube_id>``)


@dataclass(frozen=True)
class Limits:
    """Caps on untrusted archives (``datasets.<ds>.max_archive_members`` / ``max_extract_bytes``)."""

    max_members: int | None = None
    max_bytes: int | None = None


def _http_record_path(out: Path, url: str) -> Path:
    return out / DOWNLOADS / f"{_url_key(url)}.json"


def _http_complete(out: Path, job: Job) -> bool:
    path = _http_record_path(out, job.source)
    if not path.is_file():
        return False
    try:
        record = read_json(path)
    except (OSError, ValueError):
        return False
    if record.get("url") != job.source or (job.sha256 and record.get("sha256") != job.sha256.lower()):
        return False
    return all((out / rel).is_file() for rel in record.get("files", []))


def http_item(job: Job, out: Path, limits: Limits = Limits()) -> dict[str, Any]:
    """Download (and extract) one URL into ``out``; skip it when its record says it is complete.

    The partial file is ``<partial_dir(out)>/<url key>.part`` (outside ``out``); an archive is fetched
    there too and extracted into ``out`` within ``limits``.
    """
    if _http_complete(out, job):
        return {"id": job.id, "status": "skipped"}
    name = _url_name(job.source)
    key = _url_key(job.source)
    part = partial_dir(out) / f"{key}.part"
    if is_archive(name):
        archive = partial_dir(out) / key
        info = fetch_url(job.source, archive, sha256=job.sha256, part=part)
        try:
            files = safe_extract(
                archive, out, label=job.source, max_members=limits.max_members, max_bytes=limits.max_bytes
            )
        finally:
            archive.unlink(missing_ok=True)  # the record keeps its size and sha256
    else:
        info = fetch_url(job.source, out / name, sha256=job.sha256, part=part)
        files = [name]
    write_json_atomic(_http_record_path(out, job.source), {**info, "files": files})
    return {"id": job.id, "status": "downloaded", "bytes": info["bytes"], "files": len(files)}


def local_item(job: Job, out: Path) -> dict[str, Any]:
    """Hard-link (or copy) one file of a local folder to the same relative path in ``out``."""
    src, dst = Path(job.source), out / job.id
    try:
        s = src.stat()
    except OSError as exc:
        raise DownloadError(f"{src}: cannot read ({exc.strerror or exc})") from None
    if dst.exists():
        d = dst.stat()
        if (d.st_ino, d.st_dev) == (s.st_ino, s.st_dev) or (d.st_size, d.st_mtime_ns) == (
            s.st_size,
            s.st_mtime_ns,
        ):
            return {"id": job.id, "status": "skipped"}
    with atomic_path(dst) as tmp:
        try:
            os.link(src, tmp)
            how = "linked"
        except OSError:  # another filesystem, or links not allowed
            shutil.copy2(src, tmp)
            how = "copied"
    return {"id": job.id, "status": how, "bytes": s.st_size}


TRANSIENT_YTDLP = re.compile(
    r"timed out|temporar|connection|HTTP Error (408|429|5\d\d)|Errno 1(04|10|11)", re.I
)


def youtube_item(job: Job, out: Path) -> dict[str, Any]:
    """Fetch one YouTube video with yt-dlp into ``out/<job.dest>.<ext>`` (full length).

    Raises:
        TransientError / DownloadError: yt-dlp's error message (network-like messages are transient), or
            "reported success but wrote no file". Never counted as a success without a file.
    """
    import yt_dlp  # the optional extra; run() checks it is importable before any job starts

    stem = out / job.dest
    if any(
        p.is_file() for p in stem.parent.glob(f"{glob_escape(stem.name)}.*") if not p.name.startswith(".")
    ):
        return {"id": job.id, "status": "skipped"}
    staging = stem.parent / f".yt-{uuid.uuid4().hex}"
    options = {
        "format": "bv*[height<=480][ext=mp4]+ba[ext=m4a]/b[height<=480][ext=mp4]/bv*[height<=480]+ba/b",
        "merge_output_format": "mp4",
        "outtmpl": str(staging / "%(id)s.%(ext)s"),
        "noplaylist": True,
        "quiet": True,
        "no_warnings": True,
        "noprogress": True,
        "retries": 3,
        "socket_timeout": 30,
    }
    try:
        with yt_dlp.YoutubeDL(options) as ydl:
            code = ydl.download([job.source])
        if code:
            raise DownloadError(f"{job.source}: yt-dlp exited with status {code}")
        files = sorted(
            p for p in staging.glob("*") if p.is_file() and not p.name.endswith((".part", ".ytdl"))
        )
        if not files:
            raise DownloadError(f"{job.source}: yt-dlp reported success but wrote no file")
        target = stem.with_suffix(files[0].suffix)
        os.replace(files[0], target)
        return {"id": job.id, "status": "downloaded", "bytes": target.stat().st_size}
    except yt_dlp.utils.DownloadError as exc:
        message = " ".join(str(exc).split())
        error = TransientError if TRANSIENT_YTDLP.search(message) else DownloadError
        raise error(f"{job.source}: yt-dlp: {message}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def glob_escape(name: str) -> str:
    return re.sub(r"([*?\[])", r"[\1]", name)


WORKERS: dict[str, Callable[[Job, Path], dict[str, Any]]] = {
    "http": http_item,
    "local": local_item,
    "youtube": youtube_item,
}
RETRIES = {"http": 3, "youtube": 2, "local": 0}


# ---------------------------------------------------------------------------------------- executing jobs
# A mapper runs ``fn(job)`` for every job and returns, per job, either the ok row or the exception.
Mapper = Callable[[Callable[[Job], dict], Sequence[Job]], list[dict | BaseException]]


def _attempt(fn: Callable[[Job], dict], job: Job) -> dict:
    """Run ``fn(job)`` with ``RETRIES[kind]`` retries on :class:`TransientError` (0.2 s, 0.4 s, ... apart)."""
    retries = RETRIES[job.kind]
    for attempt in range(retries + 1):
        try:
            return fn(job)
        except TransientError as exc:
            if attempt == retries:
                raise
            log.info("%s: %s (retry %d of %d)", job.id, exc, attempt + 1, retries)
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def _thread_map(workers: int) -> Mapper:
    def mapper(fn, jobs):
        from concurrent.futures import ThreadPoolExecutor

        def one(job):
            try:
                return _attempt(fn, job)
            except Exception as exc:  # every item ends ok or failed with its reason
                return exc

        if workers <= 1 or len(jobs) <= 1:
            return [one(j) for j in jobs]
        with ThreadPoolExecutor(max_workers=workers) as pool:
            return list(pool.map(one, jobs))

    return mapper


def _execute(
    jobs: Sequence[Job], out: Path, mapper: Mapper, outcomes: Outcomes, limits: Limits = Limits()
) -> None:
    def fn(job: Job) -> dict:
        if job.kind == "http":
            return http_item(job, out, limits)
        return WORKERS[job.kind](job, out)

    results = mapper(fn, list(jobs))
    if len(results) != len(jobs):
        raise RuntimeError(f"{len(jobs)} download items submitted but {len(results)} results returned")
    for job, result in zip(jobs, results, strict=True):
        if isinstance(result, BaseException):
            reason = (
                str(result) if isinstance(result, DownloadError) else f"{type(result).__name__}: {result}"
            )
            outcomes.add_failure(job.id, reason, source=job.source, kind=job.kind)
        else:
            outcomes.add_ok({**result, "source": job.source, "kind": job.kind})


# --------------------------------------------------------------------------------------------- sources
def _http_jobs(urls: Sequence[str], sha256: Sequence[str] = ()) -> list[Job]:
    sums = list(sha256) or [""] * len(urls)
    return [Job(id=url, kind="http", source=url, sha256=s) for url, s in zip(urls, sums, strict=True)]


def dedupe_http(jobs: Sequence[Job], outcomes: Outcomes) -> list[Job]:
    """One job per URL, and one URL per stored file name.

    A URL listed twice (annotations and uri, or twice in uri) runs once (with the first non-empty sha256).
    A second URL whose file (not an archive) would have the same name as an earlier one's fails, naming
    both: the two would overwrite each other in ``<out>/<name>``.
    """
    by_url: dict[str, Job] = {}
    for job in jobs:
        first = by_url.get(job.source)
        if first is None or (not first.sha256 and job.sha256):
            by_url[job.source] = job
    keep, names = [], {}
    for job in by_url.values():
        try:
            name = _url_name(job.source)
        except DownloadError:
            keep.append(job)  # fails in its own run, with its reason
            continue
        if not is_archive(name) and name in names:
            outcomes.add_failure(
                job.id,
                f"{job.source}: file name {name!r} is also the file of {names[name]}; rename or drop one",
                source=job.source,
                kind=job.kind,
            )
            continue
        names.setdefault(name, job.source)
        keep.append(job)
    return keep


def _local_jobs(folder: Path) -> list[Job]:
    if not folder.is_dir():
        raise FileNotFoundError(f"source 'local': folder {folder} does not exist")
    jobs = []
    for path in sorted(folder.rglob("*")):
        rel = path.relative_to(folder)
        if path.is_file() and not any(part.startswith(".") for part in rel.parts):
            jobs.append(Job(id=rel.as_posix(), kind="local", source=str(path.absolute())))
    return jobs


def _youtube_jobs(cfg: DatasetConfig, out: Path) -> list[Job]:
    from pipelines.datasets import get_adapter
    from pipelines.datasets.kinetics import YOUTUBE_ID

    adapter = get_adapter(cfg.format)
    jobs, seen = [], set()
    for split in cfg.splits:
        for item in adapter.read_items(out, split):
            youtube_id = item.extra.get("youtube_id")
            if youtube_id is None or item.extra.get("found") or youtube_id in seen:
                continue
            if not YOUTUBE_ID.fullmatch(youtube_id):  # it becomes a path and a URL: the adapter checks too
                raise RuntimeError(f"{item.id}: youtube_id {youtube_id!r} is not a YouTube id")
            seen.add(youtube_id)
            jobs.append(
                Job(id=item.id, kind="youtube", source=item.source, dest=f"{item.split}/{youtube_id}")
            )
    return jobs


def _synthetic(name: str, cfg: DatasetConfig, out: Path, outcomes: Outcomes, workers: int) -> None:
    from pipelines.datasets import synthetic

    record_path = out / SYNTHETIC_RECORD
    want = {"format": cfg.format, "config": to_dict(cfg.synthetic)}
    record = None
    if record_path.is_file():
        with contextlib.suppress(OSError, ValueError):
            record = read_json(record_path)
    if record and {k: record.get(k) for k in want} == want:
        files = record.get("files", {})
        if all(
            (out / rel).is_file() and (out / rel).stat().st_size == meta["bytes"]
            for rel, meta in files.items()
        ):
            for rel in sorted(files):
                outcomes.add_ok({"id": rel, "status": "skipped", "source": "synthetic", "kind": "synthetic"})
            return
    if record:  # another config: delete what the previous generation wrote (only that)
        for rel in record.get("files", {}):
            (out / rel).unlink(missing_ok=True)
        record_path.unlink(missing_ok=True)
    try:
        files = synthetic.generate(cfg.format, out, cfg.synthetic, workers=workers)
    except Exception as exc:
        outcomes.add_failure(
            name, f"synthetic generation failed: {exc}", source="synthetic", kind="synthetic"
        )
        return
    meta = {rel: {"bytes": (out / rel).stat().st_size, "sha256": sha256_file(out / rel)} for rel in files}
    write_json_atomic(record_path, {**want, "files": meta})
    for rel in files:
        outcomes.add_ok({"id": rel, "status": "generated", "source": "synthetic", "kind": "synthetic"})


def _require_yt_dlp() -> None:
    try:
        import yt_dlp  # noqa: F401
    except ImportError:
        raise RuntimeError("source 'youtube' needs yt-dlp: pip install 'tubevit[youtube]'") from None


def _clean_staging(out: Path) -> None:
    """Remove extraction and yt-dlp staging folders left by a killed run (partial ``.part`` files stay)."""
    if not out.is_dir():
        return
    for path in [*out.glob(f"{EXTRACT_PREFIX}*"), *out.rglob(".yt-*")]:
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)


def run(
    name: str,
    cfg: DatasetConfig,
    out: str | os.PathLike,
    *,
    workers: int = 2,
    map_items: Mapper | None = None,
) -> dict[str, Any]:
    """Download dataset ``name`` into ``out`` (``raw/<name>``) from ``cfg.source``.

    Args:
        name: the dataset name (``datasets.<name>`` in params).
        cfg: its config (``source``, ``uri``, ``sha256``, ``annotations``, ``synthetic``...).
        out: the output folder.
        workers: parallel items (threads) for the plain runner and the synthetic generator.
        map_items: how items run (default: a thread pool with retries on network errors; the Prefect
            flow passes one that submits tasks).

    Returns:
        The summary written to ``out/summary.json``: ``{"dataset", "source", "items", "ok", "failed",
        "skipped"}`` with ``items == ok + failed``.

    Raises:
        FileNotFoundError: ``local`` and the folder does not exist.
        RuntimeError: ``youtube`` without yt-dlp installed, or for a format without YouTube ids.
    """
    out = Path(out)
    with stage_lock(out, "download"):  # a second run on this out fails here, before touching it
        return _run_locked(name, cfg, out, workers, map_items)


def _run_locked(name: str, cfg: DatasetConfig, out: Path, workers: int, map_items: Mapper | None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(out)
    _clean_staging(out)
    limits = Limits(cfg.max_archive_members, cfg.max_extract_bytes)
    mapper = map_items or _thread_map(workers)
    outcomes = Outcomes()
    started = time.monotonic()
    if cfg.source == "synthetic":
        _synthetic(name, cfg, out, outcomes, workers)
    elif cfg.source == "local":
        _execute(dedupe_http(_http_jobs(cfg.annotations), outcomes), out, mapper, outcomes, limits)
        _execute(_local_jobs(Path(cfg.uri[0])), out, mapper, outcomes)
    elif cfg.source == "http":
        jobs = dedupe_http(_http_jobs(cfg.annotations) + _http_jobs(cfg.uri, cfg.sha256), outcomes)
        _execute(jobs, out, mapper, outcomes, limits)
    elif cfg.source == "youtube":
        if cfg.format != "kinetics":
            raise RuntimeError(f"datasets.{name}.source: 'youtube' serves Kinetics only, not {cfg.format!r}")
        _require_yt_dlp()
        _execute(dedupe_http(_http_jobs(cfg.annotations), outcomes), out, mapper, outcomes, limits)
        if not outcomes.failed:
            _execute(_youtube_jobs(cfg, out), out, mapper, outcomes)
    else:  # DatasetConfig validates the source; kept for a clear message
        raise ValueError(f"datasets.{name}.source: unknown source {cfg.source!r}")
    outcomes.write_failures(out)
    summary = {
        "dataset": name,
        "source": cfg.source,
        "items": len(outcomes.ok) + len(outcomes.failed),
        "ok": len(outcomes.ok),
        "failed": len(outcomes.failed),
        "skipped": sum(1 for r in outcomes.ok if r.get("status") == "skipped"),
    }
    write_json_atomic(out / "summary.json", summary)
    log.info("download %s: %s in %.1f s", name, json.dumps(summary), time.monotonic() - started)
    return summary


# ---------------------------------------------------------------------------------------------- Prefect
@task(name="download-item", cache_policy=NO_CACHE, task_run_name="download-{job.kind}-{job.id}")
def download_item_task(fn: Callable[[Job], dict], job: Job) -> dict:
    """One item; a final error is returned as ``{"error": reason}`` (not retried), a transient one raised."""
    try:
        return fn(job)
    except TransientError:
        raise
    except DownloadError as exc:
        return {"error": str(exc)}
    except Exception as exc:
        return {"error": f"{type(exc).__name__}: {exc}"}


def _prefect_map(fn: Callable[[Job], dict], jobs: Sequence[Job]) -> list[dict | BaseException]:
    futures = [
        download_item_task.with_options(retries=RETRIES[job.kind], retry_delay_seconds=1).submit(fn, job)
        for job in jobs
    ]
    results: list[dict | BaseException] = []
    for future in futures:
        future.wait()
        value = future.result(raise_on_failure=False)  # the exception itself once the retries are spent
        if isinstance(value, dict) and set(value) == {"error"}:
            value = DownloadError(value["error"])
        results.append(value)
    return results


@flow(name="download", flow_run_name=run_name("download"), validate_parameters=False)
def download_flow(name: str, cfg: DatasetConfig, out: str, workers: int = 2) -> dict[str, Any]:
    """The download stage as a Prefect flow: one task per item (http and youtube tasks retry)."""
    summary = run(name, cfg, out, workers=workers, map_items=_prefect_map)
    return publish_result("download", name, summary, Path(out) / "failures.jsonl")


def run_flow(name: str, cfg: DatasetConfig, out: str | os.PathLike, workers: int = 2) -> dict[str, Any]:
    """Run :func:`download_flow` on a thread-pool task runner of ``workers`` threads."""
    return download_flow.with_options(task_runner=task_runner(workers))(
        name, cfg, str(Path(out).absolute()), workers
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.download",
        description=__doc__.split("\n")[0],
        epilog=usage_examples("download"),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "dataset", help="dataset name under datasets: in params (kinetics, charades, ssv2, imagenet)"
    )
    parser.add_argument("--out", required=True, type=Path, help="the output folder, raw/<ds>")
    parser.add_argument("--params", default="params.yaml", type=Path, help="the params file")
    parser.add_argument("--workers", default=2, type=int, help="items downloaded at once")
    add_no_flow_flag(parser)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    from pipelines.params import load_params_or_exit

    cfg = load_params_or_exit(args.params, dataset=args.dataset).dataset(args.dataset)
    try:
        if args.no_flow:
            summary = run(args.dataset, cfg, args.out, workers=args.workers)
        else:
            summary = run_flow(args.dataset, cfg, args.out, workers=args.workers)
    except (FileNotFoundError, RuntimeError, AnnotationError, StageLockedError) as exc:
        log.error("%s", exc)
        return 1
    problem = budget_problem({"all": (summary["items"], summary["failed"])}, cfg.failure_budget)
    print(summary_screen(summary, read_jsonl(args.out / "failures.jsonl"), problem))
    print(json.dumps(summary))
    if problem:
        log.error("download %s: %s", args.dataset, problem)
        return 1
    return 0


def failure_cause(reason: str) -> str:
    """A short cause for a failure reason (the screen groups by it): ``http 404``, ``network``, ..."""
    if match := re.search(r": HTTP (\d{3})", reason):
        return f"http {match.group(1)}"
    for needle, cause in (
        ("sha256 mismatch", "checksum"),
        ("size mismatch", "size"),
        ("(max_archive_members)", "cap: archive members"),
        ("(max_extract_bytes)", "cap: extracted bytes"),
        ("nothing was extracted", "unsafe archive"),
        ("not a readable archive", "bad archive"),
        ("redirect to", "redirect refused"),
        ("also the file of", "duplicate file name"),
        ("yt-dlp", "yt-dlp"),
        ("cannot reach", "network"),
        ("connection", "network"),
        ("synthetic generation failed", "synthetic"),
    ):
        if needle in reason:
            return cause
    return "other"


def summary_screen(summary: dict[str, Any], failures: list[dict], problem: str | None) -> str:
    """The one-screen end summary: items in, ok, failed (by cause), reused (skipped as complete)."""
    row = {
        "in": summary["items"],
        "ok": summary["ok"],
        "failed": summary["failed"],
        "reused": summary["skipped"],
    }
    causes: dict[str, int] = {}
    for failure in failures:
        cause = failure_cause(str(failure.get("reason", "")))
        causes[cause] = causes.get(cause, 0) + 1
    title = f"download {summary['dataset']} ({summary['source']})"
    return format_stage_summary(title, {"all": row}, causes, problem)


if __name__ == "__main__":
    raise SystemExit(main())
