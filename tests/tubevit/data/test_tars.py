"""The fast local tar reader gives exactly webdataset's samples, and leaves every unusual shard to it."""

from __future__ import annotations

import gzip
import io
import tarfile
from pathlib import Path

import pytest
import webdataset as wds

import tubevit.data.tars as tars
from tubevit.data.tars import local_path, plain_members, tar_samples

MEMBERS = [
    ("000.json", b'{"label": 1}'),
    ("000.mp4", b"\x00\x01video-bytes" * 70),  # 910 bytes: two blocks, padded
    ("000.TXT", b"upper-case extension"),
    ("__meta__", b"skipped by webdataset"),
    ("001.json", b"{}"),
    ("001.seg.npy", b"a two-part extension"),
    ("noext", b"no extension: skipped"),
    ("sub/002.json", b"[]"),
    ("sub/002.mp4", b""),  # empty member
    ("__dir__/x.json", b"a meta directory: skipped"),
]


def _write(path: Path, members=MEMBERS, fmt=tarfile.USTAR_FORMAT, mode="w") -> Path:
    with tarfile.open(path, mode, format=fmt) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def _both(url: str) -> tuple[tuple[list, list], tuple[list, list]]:
    """(samples, handled errors) of webdataset's reader and of ours on ``url``."""
    out = []
    for stage in (wds.tarfile_to_samples, tar_samples):
        seen: list[str] = []

        def handler(exn, seen=seen):
            seen.append(type(exn).__name__)
            return True

        fn = stage(handler=handler) if stage is wds.tarfile_to_samples else stage(handler)
        samples = list(fn(iter([{"url": url}])))
        out.append(([list(s.items()) for s in samples], seen))
    return out[0], out[1]


def _no_fallback(monkeypatch):
    """Make webdataset's reader fail if our reader hands it a shard."""

    def refuse(**kw):
        def stage(src):
            raise AssertionError(f"fell back to webdataset for {[x['url'] for x in src]}")

        return stage

    monkeypatch.setattr(tars.wds, "tarfile_to_samples", refuse)


def test_plain_shards_are_read_here_with_webdatasets_samples(tmp_path, monkeypatch):
    path = _write(tmp_path / "a.tar")
    (want, want_errors), _ = _both(str(path))
    assert want_errors == [] and [dict(s)["__key__"] for s in want] == ["000", "001", "sub/002"]
    assert (
        dict(want[0])["txt"] == b"upper-case extension"
        and dict(want[1])["seg.npy"] == b"a two-part extension"
    )
    _no_fallback(monkeypatch)
    for url in (str(path), f"file://{path}"):
        got = [list(s.items()) for s in tar_samples()(iter([{"url": url}]))]
        assert got == [[(k, url if k == "__url__" else v) for k, v in s] for s in want]
    with path.open("rb") as f:
        members = plain_members(f, path.stat().st_size)
    assert [(name, size) for name, _, size in members] == [(n, len(d)) for n, d in MEMBERS]
    assert members[1][1] == 3 * 512  # header, 1-block json, header: the mp4's data offset in bytes


def test_several_shards_in_a_stream_keep_their_order(tmp_path, monkeypatch):
    a = _write(tmp_path / "a.tar")
    b = _write(tmp_path / "b.tar", [("x.json", b"1"), ("y.json", b"2")])
    urls = [str(a), str(b), str(a)]
    want = [list(s.items()) for s in wds.tarfile_to_samples()(iter([{"url": u} for u in urls]))]
    _no_fallback(monkeypatch)
    got = [list(s.items()) for s in tar_samples()(iter([{"url": u} for u in urls]))]
    assert got == want and len(got) == 8


@pytest.mark.parametrize(
    "case", ["pax_long_name", "gnu_long_name", "gzip", "truncated_data", "truncated_header", "bad_checksum"]
)
def test_unusual_shards_go_to_webdataset_and_read_the_same(tmp_path, case):
    path = tmp_path / "s.tar"
    long = [("d" * 120 + "/k.json", b"long"), *MEMBERS[:3]]
    if case == "pax_long_name":
        _write(path, long, fmt=tarfile.PAX_FORMAT)
    elif case == "gnu_long_name":
        _write(path, long, fmt=tarfile.GNU_FORMAT)
    elif case == "gzip":
        path.write_bytes(gzip.compress(_write(tmp_path / "plain.tar").read_bytes()))
    else:
        data = bytearray(_write(tmp_path / "plain.tar").read_bytes())
        if case == "truncated_data":
            data = data[: 512 * 3 + 100]  # inside the mp4's data (header 1024, data 1536..2446)
        elif case == "truncated_header":
            data = data[: 512 * 5 + 100]  # inside the third member's header (2560)
        else:
            data[512 * 5 + 10] ^= 0xFF  # the third member's header no longer matches its checksum
        path.write_bytes(bytes(data))
    with path.open("rb") as f:
        assert plain_members(f, path.stat().st_size) is None
    (want, want_errors), (got, errors) = _both(str(path))
    assert got == want and errors == want_errors
    if case in ("pax_long_name", "gnu_long_name", "gzip"):  # whole and readable: every sample
        assert len(want) == (3 if case == "gzip" else 2) and want_errors == []
        assert dict(want[0])["__key__"] == ("000" if case == "gzip" else "d" * 120 + "/k")
    if case == "truncated_data":
        assert want_errors and set(want_errors) == {"ReadError"} and len(want) == 1


def test_a_repeated_extension_and_a_missing_file_are_handled_as_webdataset_does(tmp_path):
    dup = _write(tmp_path / "dup.tar", [("a.json", b"1"), ("a.json", b"2"), ("b.json", b"3")])
    (want, want_errors), (got, errors) = _both(str(dup))
    assert got == want and errors == want_errors == ["ValueError"]
    (want, want_errors), (got, errors) = _both(str(tmp_path / "missing.tar"))
    assert got == want == [] and errors == want_errors == ["FileNotFoundError"]


def test_only_local_urls_are_read_here(monkeypatch):
    assert local_path("/data/a.tar") == "/data/a.tar" and local_path("rel/a.tar") == "rel/a.tar"
    assert local_path("file:///data/a.tar") == "/data/a.tar"
    for url in ("s3://b/a.tar", "https://h/a.tar", "pipe:cat a.tar", "-"):
        assert local_path(url) is None, url
    monkeypatch.setenv("GOPEN_REWRITE", "/data=/mnt")  # gopen would rewrite it: webdataset opens it
    assert local_path("/data/a.tar") is None


def test_a_shard_that_shrinks_after_the_scan_is_a_handled_read_error(tmp_path, monkeypatch):
    a = _write(tmp_path / "a.tar")
    b = _write(tmp_path / "b.tar", [("x.json", b"1")])
    scan = tars.plain_members

    def grown(f, size):  # the scan saw sub/002.mp4 run past the end of the file (as if it shrank since)
        members = scan(f, size)
        return [(m, o, n + (1 << 20) if m == "sub/002.mp4" else n) for m, o, n in members]

    monkeypatch.setattr(tars, "plain_members", grown)
    seen: list[Exception] = []
    src = [{"url": str(a)}, {"url": str(b)}]
    keys = [s["__key__"] for s in tar_samples(lambda e: seen.append(e) or True)(iter([dict(x) for x in src]))]
    assert keys == ["000", "001", "x"]  # a's last sample is lost, b is read
    assert len(seen) == 1 and "unexpected end of data" in str(seen[0]) and str(a) in str(seen[0])
    stop = [s["__key__"] for s in tar_samples(lambda e: False)(iter([dict(x) for x in src]))]
    assert stop == ["000", "001"]  # a handler that returns False ends the stream, as in webdataset


def test_a_shard_is_scanned_once_until_it_changes(tmp_path, monkeypatch):
    path = _write(tmp_path / "a.tar")
    scans = []
    scan = tars.plain_members
    monkeypatch.setattr(tars, "plain_members", lambda f, size: scans.append(size) or scan(f, size))
    read = [[s["__key__"] for s in tar_samples()(iter([{"url": str(path)}]))] for _ in range(3)]
    assert read == [["000", "001", "sub/002"]] * 3 and len(scans) == 1
    _write(path, [("z.json", b"r" * 20000)])  # another size (and modification time): scanned again
    assert [s["__key__"] for s in tar_samples()(iter([{"url": str(path)}]))] == ["z"] and len(scans) == 2
