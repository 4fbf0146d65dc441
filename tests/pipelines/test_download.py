"""Download stage: a real HTTP server on 127.0.0.1 serving archives made here; local folders; synthetic; yt-dlp."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import shutil
import socket
import sys
import tarfile
import threading
import types
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml

from pipelines import download
from pipelines.common import StageLockedError, read_json, read_jsonl, stage_lock
from pipelines.datasets import kinetics
from tubevit.config.base import ConfigError
from tubevit.config.data import DatasetConfig, SyntheticConfig

# ------------------------------------------------------------------------------------------ test server


class Server:
    """A threaded HTTP server: ``files`` path -> bytes, with Range support; ``drop_once`` paths send half
    their body on the first full GET and then cut the connection. ``requests`` logs (path, Range header)."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.drop_once: set[str] = set()
        self.redirects: dict[str, str] = {}  # path -> Location of a 302
        self.requests: list[tuple[str, str | None]] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                rng = self.headers.get("Range")
                outer.requests.append((self.path, rng))
                if self.path in outer.redirects:
                    self.send_response(302)
                    self.send_header("Location", outer.redirects[self.path])
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                body = outer.files.get(self.path)
                if body is None:
                    self.send_error(404, "Not Found")
                    return
                start = 0
                if rng and rng.startswith("bytes=") and rng.endswith("-"):
                    start = int(rng[6:-1])
                    if start >= len(body):
                        self.send_error(416, "Range Not Satisfiable")
                        return
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if self.path in outer.drop_once and start == 0:
                    outer.drop_once.discard(self.path)
                    self.wfile.write(body[: len(body) // 2])
                    self.wfile.flush()
                    self.connection.shutdown(socket.SHUT_RDWR)
                    self.close_connection = True
                    return
                self.wfile.write(body[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def add(self, path: str, body: bytes) -> str:
        self.files[path] = body
        return self.url + path


@pytest.fixture
def server():
    srv = Server()
    srv.thread.start()
    yield srv
    srv.httpd.shutdown()
    srv.httpd.server_close()
    srv.thread.join(5)


# -------------------------------------------------------------------------------------------- archives
CSV = b"label,youtube_id,time_start,time_end,split\nabseiling,-0Hy_ZGzUPo,0,10,train\nair drumming,_bc4SNs_Ojs,3,13,train\n"
CLIPS = {
    "train/-0Hy_ZGzUPo_000000_000010.mp4": bytes(range(256)) * 400,  # 100 KiB
    "train/_bc4SNs_Ojs_000003_000013.mp4": b"\x00\x01" * 30000,
    "annotations/train.csv": CSV,
}


def make_tar(members: dict[str, bytes], compression: str = "gz", extra=()) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode=f"w:{compression}") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), 0
            tf.addfile(info, io.BytesIO(data))
        for info in extra:
            tf.addfile(info)
    return buffer.getvalue()


def make_zip(members: dict[str, bytes], symlinks: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as zf:
        for name, data in members.items():
            zf.writestr(name, data)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16) | 0
            zf.writestr(info, target)
    return buffer.getvalue()


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def http_cfg(*urls: str, sha256: tuple[str, ...] = (), annotations: tuple[str, ...] = ()) -> DatasetConfig:
    return DatasetConfig(
        format="kinetics", source="http", uri=urls, sha256=sha256, annotations=annotations, trimmed=True
    )


def failures(out: Path) -> list[dict]:
    return read_jsonl(out / "failures.jsonl")


# ------------------------------------------------------------------------------------------------- http
def test_good_archive_extracts_verifies_and_reruns_as_skipped(server: Server, tmp_path: Path):
    data = make_tar(CLIPS)
    url = server.add("/k400_train_part_0.tar.gz", data)
    out = tmp_path / "raw" / "kinetics"
    summary = download.run("kinetics", http_cfg(url, sha256=(sha(data),)), out)
    assert summary == {
        "dataset": "kinetics",
        "source": "http",
        "items": 1,
        "ok": 1,
        "failed": 0,
        "skipped": 0,
    }
    for rel, body in CLIPS.items():
        assert (out / rel).read_bytes() == body
    record = read_json(next((out / ".downloads").glob("*.json")))
    assert record == {
        "url": url,
        "bytes": len(data),
        "sha256": sha(data),
        "resumed_from": 0,
        "files": sorted(CLIPS),
    }
    assert not [p for p in (out / ".downloads").iterdir() if p.suffix != ".json"]  # archive and .part gone
    assert failures(out) == [] and read_json(out / "summary.json") == summary
    # the adapter reads what was downloaded: trimmed clip names found
    items = kinetics.read_items(out, "train")
    assert [(i.id, i.source, i.extra["trimmed_name"]) for i in items] == [
        ("-0Hy_ZGzUPo_000000_000010", "train/-0Hy_ZGzUPo_000000_000010.mp4", True),
        ("_bc4SNs_Ojs_000003_000013", "train/_bc4SNs_Ojs_000003_000013.mp4", True),
    ]
    n_requests = len(server.requests)
    again = download.run("kinetics", http_cfg(url, sha256=(sha(data),)), out)
    assert (again["ok"], again["skipped"], again["failed"]) == (1, 1, 0)
    assert len(server.requests) == n_requests  # nothing fetched again


def test_dropped_connection_resumes_with_range(server: Server, tmp_path: Path):
    data = make_zip(CLIPS)
    url = server.add("/part.zip", data)
    server.drop_once.add("/part.zip")
    out = tmp_path / "out"
    summary = download.run("kinetics", http_cfg(url, sha256=(sha(data),)), out)
    assert (summary["ok"], summary["failed"]) == (1, 0)
    half = len(data) // 2
    assert server.requests == [("/part.zip", None), ("/part.zip", f"bytes={half}-")]
    record = read_json(next((out / ".downloads").glob("*.json")))
    assert (record["resumed_from"], record["bytes"], record["sha256"]) == (half, len(data), sha(data))
    for rel, body in CLIPS.items():
        assert (out / rel).read_bytes() == body


def test_partial_file_from_a_killed_run_is_resumed(server: Server, tmp_path: Path):
    body = b"youtube_id,time_start\n" + b"x" * 5000
    url = server.add("/ann/test.csv", body)
    out = tmp_path / "out"
    part = download.partial_dir(out) / f"{download._url_key(url)}.part"  # outside the out (issue 9.7)
    assert part == tmp_path / ".partial" / "out" / f"{download._url_key(url)}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(body[:1234])  # what a killed run left
    summary = download.run("kinetics", http_cfg(url), out)
    assert summary["ok"] == 1
    assert server.requests == [("/ann/test.csv", "bytes=1234-")]
    assert (out / "test.csv").read_bytes() == body
    assert not part.exists()


def test_404_is_a_failure_naming_the_url_and_not_retried(server: Server, tmp_path: Path):
    good = server.add("/a.csv", CSV)
    missing = server.url + "/missing.tar.gz"
    out = tmp_path / "out"
    summary = download.run("kinetics", http_cfg(good, missing), out)
    assert (summary["items"], summary["ok"], summary["failed"]) == (2, 1, 1)
    assert failures(out) == [
        {"id": missing, "kind": "http", "source": missing, "reason": f"{missing}: HTTP 404 Not Found"}
    ]
    assert [r for r in server.requests if r[0] == "/missing.tar.gz"] == [("/missing.tar.gz", None)]
    assert (out / "a.csv").read_bytes() == CSV


def test_archive_with_parent_member_is_refused(server: Server, tmp_path: Path):
    data = make_tar({"train/ok.mp4": b"fine", "../evil.txt": b"owned"})
    url = server.add("/evil.tar.gz", data)
    out = tmp_path / "sandbox" / "out"
    summary = download.run("kinetics", http_cfg(url), out)
    assert (summary["ok"], summary["failed"]) == (0, 1)
    (row,) = failures(out)
    assert (
        row["reason"]
        == f"{url}: member '../evil.txt' escapes the target folder ('..'); nothing was extracted"
    )
    assert not (tmp_path / "sandbox" / "evil.txt").exists()
    assert not (out / "train").exists()  # nothing at all was extracted
    assert not list((out / ".downloads").glob("*.json"))  # not recorded as complete


def test_wrong_checksum_is_refused_and_leaves_nothing(server: Server, tmp_path: Path):
    data = make_tar(CLIPS)
    url = server.add("/k.tar.gz", data)
    out = tmp_path / "out"
    summary = download.run("kinetics", http_cfg(url, sha256=("0" * 64,)), out)
    assert (summary["ok"], summary["failed"]) == (0, 1)
    assert failures(out)[0]["reason"] == f"{url}: sha256 mismatch: expected {'0' * 64}, got {sha(data)}"
    assert sorted(p.name for p in out.rglob("*")) == ["failures.jsonl", "summary.json"]
    assert not list(download.partial_dir(out).iterdir())  # the bad archive's partial is gone too


def test_unreachable_url_names_the_url(tmp_path: Path):
    with socket.socket() as s:  # a port with nobody listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"http://127.0.0.1:{port}/k400.tar.gz"
    summary = download.run("kinetics", http_cfg(url), tmp_path / "out")
    assert (summary["ok"], summary["failed"]) == (0, 1)
    reason = failures(tmp_path / "out")[0]["reason"]
    assert reason.startswith(f"cannot reach {url}: ") and "refused" in reason.lower()


def test_short_body_is_incomplete_and_kept_for_resume(tmp_path: Path):
    class Short(BaseHTTPRequestHandler):  # announces 20 bytes, sends 10, closes
        def log_message(self, *args):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Length", "20")
            self.end_headers()
            self.wfile.write(b"0123456789")
            self.close_connection = True

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Short)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/f.bin"
        with pytest.raises(download.TransientError) as err:
            download.fetch_url(url, tmp_path / "f.bin")
        assert str(err.value) == f"{url}: connection closed after 10 of 20 bytes; will resume"
        assert (tmp_path / ".f.bin.part").read_bytes() == b"0123456789" and not (tmp_path / "f.bin").exists()
    finally:
        httpd.shutdown()
        httpd.server_close()


# ---------------------------------------------------------------------------------------- safe extract
def _tar_member(name: str, kind: bytes, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mtime = kind, linkname, 0
    return info


@pytest.mark.parametrize(
    ("archive", "reason"),
    [
        (
            make_tar({}, extra=[_tar_member("train/link.mp4", tarfile.SYMTYPE, "/etc/passwd")]),
            "member 'train/link.mp4' is a symbolic link (to '/etc/passwd')",
        ),
        (
            make_tar({"a.mp4": b"a"}, extra=[_tar_member("b.mp4", tarfile.LNKTYPE, "a.mp4")]),
            "member 'b.mp4' is a hard link (to 'a.mp4')",
        ),
        (make_tar({}, extra=[_tar_member("dev/null", tarfile.CHRTYPE)]), "member 'dev/null' is a device"),
        (make_tar({}, extra=[_tar_member("pipe", tarfile.FIFOTYPE)]), "member 'pipe' is a FIFO"),
        (make_tar({"/abs/x.mp4": b"x"}, compression=""), "member '/abs/x.mp4' is an absolute path"),
        (make_zip({"a/../../x.mp4": b"x"}), "member 'a/../../x.mp4' escapes the target folder ('..')"),
        (make_zip({"ok.mp4": b"x"}, symlinks={"link": "/etc/passwd"}), "member 'link' is a symbolic link"),
    ],
)
def test_safe_extract_refuses_unsafe_members(tmp_path: Path, archive: bytes, reason: str):
    path = tmp_path / "a.bin"
    path.write_bytes(archive)
    dest = tmp_path / "dest"
    with pytest.raises(download.UnsafeArchiveError) as err:
        download.safe_extract(path, dest, label="the-archive")
    assert str(err.value) == f"the-archive: {reason}; nothing was extracted"
    assert not dest.exists() or not any(dest.iterdir())


def test_safe_extract_tar_and_zip(tmp_path: Path):
    for kind, data in (("tar", make_tar(CLIPS, compression="xz")), ("zip", make_zip(CLIPS))):
        archive = tmp_path / f"a.{kind}"
        archive.write_bytes(data)
        files = download.safe_extract(archive, tmp_path / kind)
        assert files == sorted(CLIPS)
        assert {f: (tmp_path / kind / f).read_bytes() for f in files} == CLIPS
        assert sorted(p.name for p in (tmp_path / kind).iterdir()) == [
            "annotations",
            "train",
        ]  # no staging left
    (tmp_path / "junk.tar").write_bytes(b"not an archive at all" * 30)
    with pytest.raises(download.DownloadError, match=r"junk.tar: not a readable archive"):
        download.safe_extract(tmp_path / "junk.tar", tmp_path / "junk")


# ------------------------------------------------------------------------------------------------ local
def test_local_folder_is_linked_and_rerun_skips(tmp_path: Path):
    src = tmp_path / "src"
    for rel, body in CLIPS.items():
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_bytes(body)
    (src / ".hidden.tmp-1").write_bytes(b"x")
    cfg = DatasetConfig(format="kinetics", source="local", uri=(str(src),), trimmed=True)
    out = tmp_path / "raw"
    summary = download.run("kinetics", cfg, out)
    assert (summary["items"], summary["ok"], summary["skipped"]) == (3, 3, 0)
    for rel, body in CLIPS.items():
        assert (out / rel).read_bytes() == body
        assert (out / rel).stat().st_ino == (src / rel).stat().st_ino  # hard-linked (same filesystem)
    assert not (out / ".hidden.tmp-1").exists()
    assert download.run("kinetics", cfg, out)["skipped"] == 3
    missing = DatasetConfig(format="kinetics", source="local", uri=(str(tmp_path / "nope"),))
    with pytest.raises(FileNotFoundError, match=r"source 'local': folder .*nope does not exist"):
        download.run("kinetics", missing, tmp_path / "raw2")


# -------------------------------------------------------------------------------------------- synthetic
def test_synthetic_generates_skips_and_regenerates(tmp_path: Path):
    tiny = SyntheticConfig(train=3, val=2, size=32, seconds=1.0, fps=10.0, seed=0)
    cfg = DatasetConfig(format="imagenet", source="synthetic", synthetic=tiny)
    out = tmp_path / "imagenet"
    summary = download.run("imagenet", cfg, out)
    assert (summary["items"], summary["ok"], summary["failed"], summary["skipped"]) == (
        6,
        6,
        0,
        0,
    )  # 5 JPEGs + synset list
    record = read_json(out / ".synthetic.json")
    assert record["format"] == "imagenet" and record["config"]["train"] == 3 and len(record["files"]) == 6
    before = {p: p.stat().st_mtime_ns for p in out.rglob("*.JPEG")}
    assert download.run("imagenet", cfg, out)["skipped"] == 6
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.JPEG")} == before
    smaller = dataclasses.replace(cfg, synthetic=dataclasses.replace(tiny, train=1))
    assert download.run("imagenet", smaller, out)["ok"] == 4
    assert len(list(out.rglob("*.JPEG"))) == 3  # the files of the old config are gone


def test_main_cli_synthetic(tmp_path: Path, capsys):
    params = tmp_path / "params.yaml"
    shutil.copy(Path(__file__).parents[1] / "fixtures" / "params-micro.yaml", params)
    out = tmp_path / "raw" / "imagenet"
    assert download.main(["imagenet", "--out", str(out), "--params", str(params), "--no-prefect"]) == 0
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == read_json(out / "summary.json")
    assert printed["failed"] == 0 and printed["ok"] == printed["items"] > 0
    assert len(list(out.rglob("*.JPEG"))) == printed["items"] - 1  # + LOC_synset_mapping.txt
    with pytest.raises(SystemExit) as exit_info:
        download.main(["nope", "--out", str(out), "--params", str(params)])
    assert exit_info.value.code == 2
    assert "datasets.nope: dataset 'nope' is not defined" in capsys.readouterr().err


# ---------------------------------------------------------------------------------------------- youtube
def fake_yt_dlp(behaviour: str) -> types.ModuleType:
    """A stand-in yt_dlp module that FAILS in the given way (never a fake success)."""
    module = types.ModuleType("yt_dlp")
    utils = types.ModuleType("yt_dlp.utils")

    class DownloadError(Exception):
        pass

    class YoutubeDL:
        def __init__(self, options):
            self.options = options

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def download(self, urls):
            if behaviour == "unavailable":
                raise DownloadError(f"ERROR: [youtube] {urls[0][-11:]}: Video unavailable")
            return 0  # "success" without a file

    utils.DownloadError = DownloadError
    module.utils, module.YoutubeDL = utils, YoutubeDL
    return module


def test_youtube_without_yt_dlp_is_a_clear_error(tmp_path: Path, monkeypatch):
    monkeypatch.setitem(sys.modules, "yt_dlp", None)  # import yt_dlp raises ImportError
    cfg = DatasetConfig(format="kinetics", source="youtube")
    with pytest.raises(
        RuntimeError, match=r"source 'youtube' needs yt-dlp: pip install 'tubevit\[youtube\]'"
    ):
        download.run("kinetics", cfg, tmp_path / "out")


@pytest.mark.parametrize(
    ("behaviour", "reason"),
    [
        ("unavailable", "yt-dlp: ERROR: [youtube] {id}: Video unavailable"),
        ("no-file", "yt-dlp reported success but wrote no file"),
    ],
)
def test_youtube_errors_are_failures(
    server: Server, tmp_path: Path, monkeypatch, behaviour: str, reason: str
):
    monkeypatch.setitem(sys.modules, "yt_dlp", fake_yt_dlp(behaviour))
    monkeypatch.setitem(sys.modules, "yt_dlp.utils", sys.modules["yt_dlp"].utils)
    annotation = server.add("/kinetics700_2020/train.csv", CSV)
    out = tmp_path / "raw"
    (out / "train").mkdir(parents=True)
    (out / "train" / "_bc4SNs_Ojs.mp4").write_bytes(b"already here")  # found: not fetched again
    cfg = DatasetConfig(format="kinetics", source="youtube", annotations=(annotation,), splits=("train",))
    summary = download.run("kinetics", cfg, out)
    assert (summary["items"], summary["ok"], summary["failed"]) == (
        2,
        1,
        1,
    )  # the CSV ok, the one clip failed
    (row,) = failures(out)
    url = "https://www.youtube.com/watch?v=-0Hy_ZGzUPo"
    assert row == {
        "id": "-0Hy_ZGzUPo_000000_000010",
        "kind": "youtube",
        "source": url,
        "reason": f"{url}: " + reason.format(id="-0Hy_ZGzUPo"),
    }
    assert not list(out.rglob(".yt-*")) and not (out / "train" / "-0Hy_ZGzUPo.mp4").exists()


# ---------------------------------------------------------------------------------------------- Prefect
@pytest.mark.slow
def test_download_flow_with_prefect_tasks(prefect_api, server: Server, tmp_path: Path):
    data = make_tar(CLIPS)
    good = server.add("/good.tar.gz", data)
    dropping = server.add("/drop.csv", CSV * 50)
    server.drop_once.add("/drop.csv")
    missing = server.url + "/missing.zip"
    with socket.socket() as s:  # a port with nobody listening: retried by Prefect, then a failure
        s.bind(("127.0.0.1", 0))
        unreachable = f"http://127.0.0.1:{s.getsockname()[1]}/gone.csv"
    out = tmp_path / "out"
    cfg = http_cfg(good, dropping, missing, unreachable, sha256=(sha(data), "", "", ""))
    summary = download.run_flow("kinetics", cfg, out)
    assert (summary["items"], summary["ok"], summary["failed"]) == (4, 2, 2)
    rows = {r["id"]: r["reason"] for r in failures(out)}
    assert rows[missing] == f"{missing}: HTTP 404 Not Found"
    assert rows[unreachable].startswith(f"cannot reach {unreachable}: ")
    assert (out / "drop.csv").read_bytes() == CSV * 50
    assert ("/drop.csv", f"bytes={len(CSV * 50) // 2}-") in server.requests  # resumed by a Prefect retry
    assert [r for r in server.requests if r[0] == "/missing.zip"] == [("/missing.zip", None)]  # 404: no retry


# ------------------------------------------------------------------------------- hardening (issue 9)
class AlwaysShort(BaseHTTPRequestHandler):
    """Announces 20 bytes, sends 10 and closes, on every request (it ignores Range)."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.send_response(200)
        self.send_header("Content-Length", "20")
        self.end_headers()
        self.wfile.write(b"0123456789")
        self.close_connection = True


def test_partial_downloads_never_live_inside_the_out(tmp_path: Path):
    """A run whose item keeps failing mid-body leaves its partial file beside the out, not in it, so a
    DVC commit of the out never caches (and links back) a file that the next run appends to."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), AlwaysShort)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{httpd.server_address[1]}/ann/train.csv"
        out = tmp_path / "raw" / "kinetics"
        summary = download.run("kinetics", http_cfg(url), out)
    finally:
        httpd.shutdown()
        httpd.server_close()
    assert (summary["ok"], summary["failed"]) == (0, 1)
    assert failures(out)[0]["reason"] == f"{url}: connection closed after 10 of 20 bytes; will resume"
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*")) == ["failures.jsonl", "summary.json"]
    part = tmp_path / "raw" / ".partial" / "kinetics" / f"{download._url_key(url)}.part"
    assert part.read_bytes() == b"0123456789"


def test_a_linked_partial_is_started_over_never_appended(server: Server, tmp_path: Path):
    """A partial file that has another hard link (as a cache object would) is not appended to: the
    download starts from zero and the other link keeps its bytes."""
    body = b"label,youtube_id\n" + b"y" * 4000
    url = server.add("/ann/val.csv", body)
    out = tmp_path / "out"
    part = download.partial_dir(out) / f"{download._url_key(url)}.part"
    part.parent.mkdir(parents=True)
    part.write_bytes(body[:100])
    cache = tmp_path / "cache-object"
    os.link(part, cache)
    summary = download.run("kinetics", http_cfg(url), out)
    assert summary["ok"] == 1 and (out / "val.csv").read_bytes() == body
    assert server.requests == [("/ann/val.csv", None)]  # from zero, no Range
    assert cache.read_bytes() == body[:100]


def test_annotation_urls_must_be_http_naming_the_key():
    with pytest.raises(ConfigError) as exc:
        DatasetConfig(
            format="kinetics",
            source="local",
            uri=("raw",),
            annotations=("https://a/b.csv", "file:///etc/passwd"),
        )
    assert str(exc.value) == "annotations[1]: must be an http(s) URL, got 'file:///etc/passwd'"
    with pytest.raises(ConfigError, match=r"^uri\[0\]: must be an http\(s\) URL, got 'ftp://x/y.tar'$"):
        DatasetConfig(format="kinetics", source="http", uri=("ftp://x/y.tar",))


def test_budget_and_cap_params_are_checked():
    with pytest.raises(ConfigError, match=r"^failure_budget: must be a fraction in \[0, 1\], got 1.5$"):
        DatasetConfig(format="kinetics", failure_budget=1.5)
    with pytest.raises(ConfigError, match=r"^max_archive_members: must be >= 1, got 0$"):
        DatasetConfig(format="kinetics", max_archive_members=0)


def test_a_redirect_to_another_scheme_is_refused(server: Server, tmp_path: Path):
    server.redirects["/ann/train.csv"] = "ftp://127.0.0.1/train.csv"
    server.redirects["/ok.csv"] = "/real.csv"  # http -> http is followed
    server.add("/real.csv", CSV)
    url, ok = server.url + "/ann/train.csv", server.url + "/ok.csv"
    out = tmp_path / "out"
    summary = download.run("kinetics", http_cfg(ok, annotations=(url,)), out)
    assert (summary["ok"], summary["failed"]) == (1, 1)
    assert failures(out)[0]["reason"] == (
        f"{url}: redirect to 'ftp://127.0.0.1/train.csv' refused (only http(s) is followed)"
    )
    assert (out / "ok.csv").read_bytes() == CSV and not (out / "train.csv").exists()


def test_same_url_twice_is_one_item_and_same_file_name_is_refused(server: Server, tmp_path: Path):
    first = server.add("/a/train.csv", CSV)
    second = server.add("/b/train.csv", CSV.replace(b"abseiling", b"climbing"))
    out = tmp_path / "out"
    summary = download.run("kinetics", http_cfg(first, second, first, annotations=(first,)), out, workers=2)
    assert (summary["items"], summary["ok"], summary["failed"]) == (2, 1, 1)
    assert failures(out) == [
        {
            "id": second,
            "kind": "http",
            "source": second,
            "reason": f"{second}: file name 'train.csv' is also the file of {first}; rename or drop one",
        }
    ]
    assert (out / "train.csv").read_bytes() == CSV
    assert [r[0] for r in server.requests] == ["/a/train.csv"]


def test_same_named_archives_from_two_urls_both_extract(server: Server, tmp_path: Path):
    a = server.add("/a/part.tar.gz", make_tar({"train/a.mp4": b"a" * 5000}))
    b = server.add("/b/part.tar.gz", make_tar({"train/b.mp4": b"b" * 7000}))
    out = tmp_path / "out"
    summary = download.run("kinetics", http_cfg(a, b), out, workers=2)
    assert (summary["ok"], summary["failed"]) == (2, 0)
    assert (out / "train" / "a.mp4").read_bytes() == b"a" * 5000
    assert (out / "train" / "b.mp4").read_bytes() == b"b" * 7000


def test_archive_caps_refuse_the_whole_archive(server: Server, tmp_path: Path):
    members = {f"train/{i}.mp4": b"x" * 1000 for i in range(3)}
    tar_url = server.add("/many.tar.gz", make_tar(members))
    zip_url = server.add("/big.zip", make_zip({"train/big.mp4": b"z" * 5000}))
    cfg = dataclasses.replace(http_cfg(tar_url, zip_url), max_archive_members=2, max_extract_bytes=4000)
    out = tmp_path / "out"
    summary = download.run("kinetics", cfg, out)
    assert (summary["ok"], summary["failed"]) == (0, 2)
    assert {r["id"]: r["reason"] for r in failures(out)} == {
        tar_url: f"{tar_url}: 3 members, over the cap of 2 (max_archive_members); nothing was extracted",
        zip_url: f"{zip_url}: 5000 bytes to extract, over the cap of 4000 (max_extract_bytes); nothing was extracted",
    }
    assert not (out / "train").exists()


def test_a_second_download_run_on_the_same_out_fails_at_start(server: Server, tmp_path: Path):
    url = server.add("/a.csv", CSV)
    out = tmp_path / "out"
    locked = pytest.raises(StageLockedError, match=r"is in use by another download run")
    with stage_lock(out, "download"), locked:
        download.run("kinetics", http_cfg(url), out)
    assert not out.exists() and server.requests == []
    assert download.run("kinetics", http_cfg(url), out)["ok"] == 1


def test_main_exits_1_over_the_failure_budget_with_a_summary(tmp_path: Path, capsys, caplog):
    folder = tmp_path / "src"
    folder.mkdir()
    (folder / "a.mp4").write_bytes(b"a")
    with socket.socket() as s:  # nobody listening: the annotation fails after its retries
        s.bind(("127.0.0.1", 0))
        gone = f"http://127.0.0.1:{s.getsockname()[1]}/train.csv"
    data = yaml.safe_load((Path(__file__).parents[1] / "fixtures" / "params-micro.yaml").read_text())
    data["datasets"]["kinetics"] = {
        "format": "kinetics",
        "source": "local",
        "uri": [str(folder)],
        "annotations": [gone],
    }
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(data))
    argv = ["kinetics", "--out", str(tmp_path / "raw"), "--params", str(params), "--no-prefect"]
    assert download.main(argv) == 1
    printed = capsys.readouterr().out
    assert "== download kinetics (local) ==" in printed
    assert "all                 2        1        1        0" in printed and "      1  network" in printed
    reason = "split 'all': 1 of 2 items failed (50.0%), over failure_budget 0.1 (see failures.jsonl)"
    assert f"result: FAILED: {reason}" in printed
    assert [r.getMessage() for r in caplog.records if r.levelname == "ERROR"] == [
        f"download kinetics: {reason}"
    ]
    data["datasets"]["kinetics"]["failure_budget"] = 0.5
    params.write_text(yaml.safe_dump(data))
    assert download.main(argv) == 0
    assert "all                 2        1        1        1" in capsys.readouterr().out  # a.mp4 reused
