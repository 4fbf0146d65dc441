"""Read the samples of local tar shards quickly, exactly as ``webdataset.tarfile_to_samples`` reads them.

webdataset reads a shard through ``tarfile`` in stream mode: 10 KiB reads joined into each member, every
header parsed field by field. For the shards that ``pipelines/shard`` writes (USTAR, regular files) that
was 0.1 ms per sample warm and about 0.3 ms in a training loader, where each sample's video decode evicts
the reader's code and data from the CPU caches between two samples: 4% of a 16 x 112^2 clip's decode.

:func:`tar_samples` reads a local shard (a plain path or ``file://``) with one ``read`` per member after a
scan of its headers, and gives the very samples webdataset gives: ``{"__key__", "__url__", <ext>: bytes}``
in tar order, grouped by :func:`webdataset.tariterators.base_plus_ext` with lower-case extensions, meta
files (``__*__``) skipped. The headers are parsed by ``tarfile.TarInfo.frombuf`` (checksums included).
Anything but a plain archive of regular files that ends cleanly (a pax or GNU long-name header, a link or
directory, a compressed or truncated file, a bad checksum, a duplicate extension, a file that cannot be
opened) and every remote URL goes to webdataset's reader, which handles it as it always has (errors go to
``handler``).
"""

from __future__ import annotations

import os
import re
import tarfile
from collections.abc import Callable, Iterable, Iterator
from urllib.parse import urlparse
from urllib.request import url2pathname

import webdataset as wds
from webdataset import utils as wds_utils
from webdataset.handlers import reraise_exception
from webdataset.tariterators import base_plus_ext, meta_prefix, meta_suffix

__all__ = ["local_path", "plain_members", "tar_samples"]

BLOCK = tarfile.BLOCKSIZE  # 512
_SKIP_META = re.compile(r"__[^/]*__($|/)")  # webdataset's tar_file_iterator(skip_meta=...)
# what tarfile's "r|*" mode takes for a compressed stream (gzip, bzip2, lzma, xz, zstd)
_COMPRESSED = (b"\x1f\x8b\x08", b"BZh91", b"\x5d\x00\x00\x80", b"\xfd7zXZ", b"\x28\xb5\x2f\xfd")

Member = tuple[str, int, int]  # (suffix, data offset in bytes, size in bytes)


def local_path(url: str) -> str | None:
    """The file path of a local shard URL (a plain path or ``file://``); None for any other URL, and
    whenever webdataset's ``gopen`` would rewrite (``GOPEN_REWRITE``) or refuse (``WDS_SECURE``) it."""
    if url == "-" or os.environ.get("GOPEN_REWRITE") or wds_utils.enforce_security:
        return None
    parsed = urlparse(url)
    if parsed.scheme == "":
        return url
    if parsed.scheme == "file":
        return url2pathname(parsed.path)
    return None


def plain_members(f, size: int) -> list[tuple[str, int, int]] | None:
    """``(name, data offset, size)`` of every member of the tar file ``f`` (``size`` bytes), in order; None
    unless every header is a valid USTAR/GNU header of a regular file whose data lies in the file and the
    archive ends at the end of the file or at a zero block (what webdataset reads to the end without error).
    """
    members = []
    offset = 0
    while offset < size:
        f.seek(offset)
        buf = f.read(BLOCK)
        if len(buf) < BLOCK:
            return None  # a truncated header
        if buf.count(b"\0") == BLOCK:
            break  # end of archive
        if offset == 0 and buf.startswith(_COMPRESSED):
            return None
        try:
            info = tarfile.TarInfo.frombuf(buf, tarfile.ENCODING, "surrogateescape")
        except tarfile.HeaderError:
            return None
        if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
            return None  # pax / GNU long names, links, directories, sparse files: tarfile's own reader
        data = offset + BLOCK
        end = data + -(-info.size // BLOCK) * BLOCK
        if end > size:
            return None
        members.append((info.name, data, info.size))
        offset = end
    return members


def _group(members: list[tuple[str, int, int]]) -> list[tuple[str, list[Member]]] | None:
    """webdataset's sample grouping of ``members``: ``(key, [(suffix, offset, size), ...])`` in order; None
    when a sample repeats an extension (webdataset raises on it)."""
    samples: list[tuple[str, list[Member]]] = []
    for name, offset, size in members:
        if "/" not in name and name.startswith(meta_prefix) and name.endswith(meta_suffix):
            continue
        if _SKIP_META.match(name):
            continue
        prefix, suffix = base_plus_ext(name)
        if prefix is None:
            continue
        suffix = suffix.lower()
        if not samples or samples[-1][0] != prefix:
            samples.append((prefix, []))
        parts = samples[-1][1]
        if any(s == suffix for s, _, _ in parts):
            return None
        parts.append((suffix, offset, size))
    return samples


_LAYOUTS: dict[tuple[int, int, int, int], list[tuple[str, list[Member]]] | None] = {}
_MAX_LAYOUTS = 1 << 16


def _layout(f) -> list[tuple[str, list[Member]]] | None:
    """:func:`_group` of :func:`plain_members` of the open shard ``f``, remembered per file (device, inode,
    size, modification time in ns) in this process: a resampled training stream draws each shard again and
    again, and its headers need scanning once."""
    st = os.fstat(f.fileno())
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _LAYOUTS:
        members = plain_members(f, st.st_size)
        if len(_LAYOUTS) >= _MAX_LAYOUTS:
            del _LAYOUTS[next(iter(_LAYOUTS))]  # the oldest
        _LAYOUTS[key] = _group(members) if members is not None else None
    return _LAYOUTS[key]


def tar_samples(
    handler: Callable[[Exception], bool] = reraise_exception,
) -> Callable[[Iterable[dict]], Iterator[dict]]:
    """A pipeline stage like ``wds.tarfile_to_samples(handler=handler)``: ``{"url": ...}`` items in, the
    samples of each shard out, shard by shard. Local plain shards are read here; the rest by webdataset."""
    fallback = wds.tarfile_to_samples(handler=handler)

    def stage(src: Iterable[dict]) -> Iterator[dict]:
        for item in src:
            url = item["url"]
            path = local_path(url)
            try:
                f = open(path, "rb") if path is not None else None  # noqa: SIM115 -- closed below
            except OSError:
                f = None
            if f is None:
                yield from fallback(iter([item]))
                continue
            with f:
                samples = _layout(f)
                if not samples:  # not plain (or empty): webdataset's reader decides what it holds
                    yield from fallback(iter([item]))
                    continue
                for key, parts in samples:
                    sample = {"__key__": key, "__url__": url}
                    for suffix, offset, size in parts:
                        f.seek(offset)
                        sample[suffix] = f.read(size)
                        if len(sample[suffix]) != size:  # the file shrank since the scan
                            break
                    else:
                        yield sample
                        continue
                    if handler(tarfile.ReadError(f"unexpected end of data @ {url}")):
                        break  # the next shard, as webdataset does after a handled error
                    return

    return stage
