"""shard stage: layout, index, deterministic tars, failures, rerun skip, verify, kill -9 then rerun."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import yaml

from pipelines.common import StageLockedError, read_json, read_jsonl, sha256_file, stage_lock
from pipelines.shard import ShardError, main, read_tar_samples, run, verify_split
from tests.tubevit.data.clips import make_image_set, make_video_set
from tubevit.config.data import ShardConfig

ROOT = Path(__file__).resolve().parents[2]
CLASSES = ["left", "right", "grow"]


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> Path:
    """videos/kinetics with 10 train and 4 val clips of 6..19 frames."""
    items = [
        {"id": f"-yt{i:02d}", "split": "train" if i < 10 else "val", "frames": 6 + i, "label": i % 3}
        for i in range(14)
    ]
    return make_video_set(tmp_path_factory.mktemp("videos") / "kinetics", items, CLASSES, fps=15.0)


def _tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_layout_index_and_samples(videos, tmp_path):
    out = tmp_path / "shards"
    summary = run("kinetics", ["train", "val"], ShardConfig(target_bytes=4096, min_shards=2), videos, out)
    assert summary["splits"]["train"] == {
        "manifest_rows": 10,
        "ok": 10,
        "failed": 0,
        "skipped": False,
        "shards": 5,
    }
    assert summary["total"] == 14 and summary["failed"] == 0
    assert read_json(out / "summary.json") == summary
    manifest = {r["id"]: r for r in read_jsonl(videos / "manifest.jsonl")}
    for split, count in (("train", 10), ("val", 4)):
        index = read_json(out / split / "index.json")
        assert index["dataset"] == "kinetics" and index["split"] == split and index["media"] == "mp4"
        assert index["total"] == count == sum(e["samples"] for e in index["shards"])
        assert index["classes"] == CLASSES and index["num_classes"] == 3
        names = [e["name"] for e in index["shards"]]
        assert names == [f"kinetics-{split}-{i:06d}.tar" for i in range(len(names))]
        assert sorted(p.name for p in (out / split).glob("*.tar")) == names
        keys = []
        for entry in index["shards"]:
            path = out / split / entry["name"]
            assert entry["sha256"] == sha256_file(path) and entry["bytes"] == path.stat().st_size
            with tarfile.open(path) as tar:
                members = tar.getmembers()
            assert all(
                m.mtime == 0 and m.uid == 0 and m.gid == 0 and m.uname == "" and m.mode == 0o444
                for m in members
            )
            samples = read_tar_samples(path)
            assert len(samples) == entry["samples"] and next(iter(samples)) == entry["first_key"]
            for key, sample in samples.items():
                assert set(sample) == {"json", "mp4"}
                meta = json.loads(sample["json"])
                row = manifest[meta["id"]]
                assert row["split"] == split
                assert meta == {k: v for k, v in row.items() if k not in ("file", "split")}
                assert sample["mp4"] == (videos / row["file"]).read_bytes()
                keys.append(key)
        assert keys == [f"{i:09d}" for i in range(count)]  # numeric keys, in order, no gaps
    # the order is a seeded shuffle, not the manifest's (ids sorted) order
    first = read_tar_samples(out / "train" / "kinetics-train-000000.tar")
    ids = [json.loads(s["json"])["id"] for s in first.values()]
    assert ids != sorted(ids) or len(ids) == 1


def test_deterministic_bytes_and_seed(videos, tmp_path):
    scfg = ShardConfig(target_bytes=8192, min_shards=2, seed=3)
    run("kinetics", ["train", "val"], scfg, videos, tmp_path / "a")
    run("kinetics", ["train", "val"], scfg, videos, tmp_path / "b")
    assert _tree(tmp_path / "a") == _tree(tmp_path / "b")
    run("kinetics", ["train"], ShardConfig(target_bytes=8192, min_shards=2, seed=4), videos, tmp_path / "c")

    def order(root):
        index = read_json(root / "train" / "index.json")
        return [
            json.loads(s["json"])["id"]
            for e in index["shards"]
            for s in read_tar_samples(root / "train" / e["name"]).values()
        ]

    assert sorted(order(tmp_path / "a")) == sorted(order(tmp_path / "c"))
    assert order(tmp_path / "a") != order(tmp_path / "c")


def test_min_shards_and_target_bytes(videos, tmp_path):
    big = run(
        "kinetics", ["train"], ShardConfig(target_bytes=1 << 30, min_shards=3), videos, tmp_path / "big"
    )
    counts = [e["samples"] for e in read_json(tmp_path / "big" / "train" / "index.json")["shards"]]
    assert big["splits"]["train"]["shards"] == 3 and counts == [3, 4, 3]
    run("kinetics", ["train"], ShardConfig(target_bytes=1024, min_shards=1), videos, tmp_path / "tiny")
    counts = [e["samples"] for e in read_json(tmp_path / "tiny" / "train" / "index.json")["shards"]]
    assert counts == [1] * 10  # every sample is > 1024 tar bytes, so each closes its shard
    few = run("kinetics", ["val"], ShardConfig(target_bytes=1 << 30, min_shards=8), videos, tmp_path / "few")
    assert few["splits"]["val"]["shards"] == 1  # fewer samples than min_shards: one shard, no empty ones


def test_failures_are_recorded_and_counts_reconcile(videos, tmp_path):
    src = tmp_path / "videos"
    shutil.copytree(videos, src)
    (src / "train" / "-yt03.mp4").unlink()
    rows = read_jsonl(src / "manifest.jsonl")
    rows.append({**rows[0], "id": "escape", "file": "../outside.mp4"})
    rows.append({**rows[0], "id": "webm", "file": "train/x.webm"})
    (src / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = run("kinetics", ["train", "val"], ShardConfig(target_bytes=4096), src, tmp_path / "out")
    train = summary["splits"]["train"]
    assert train["manifest_rows"] == 12 and train["ok"] == 9 and train["failed"] == 3
    failures = {r["id"]: r for r in read_jsonl(tmp_path / "out" / "failures.jsonl")}
    assert set(failures) == {"-yt03", "escape", "webm"}
    assert failures["-yt03"]["reason"] == "file 'train/-yt03.mp4' is missing"
    assert "is not inside" in failures["escape"]["reason"]
    assert "not .mp4 or .jpg" in failures["webm"]["reason"]
    assert read_json(tmp_path / "out" / "train" / "index.json")["total"] == 9


def test_missing_manifest_names_the_file(tmp_path):
    with pytest.raises(ShardError, match=r"manifest\.jsonl: missing"):
        run("kinetics", ["train"], ShardConfig(), tmp_path, tmp_path / "out")


def test_rerun_skips_and_changes_rewrite(videos, tmp_path):
    src = tmp_path / "videos"
    shutil.copytree(videos, src)
    out = tmp_path / "out"
    scfg = ShardConfig(target_bytes=4096)
    run("kinetics", ["train", "val"], scfg, src, out)
    before = _tree(out)
    mtime = (out / "train" / "index.json").stat().st_mtime_ns
    (out / "train" / ".kinetics-train-000009.tar.tmp-dead").write_bytes(b"stale")
    summary = run("kinetics", ["train", "val"], scfg, src, out)
    assert summary["splits"]["train"]["skipped"] and summary["splits"]["val"]["skipped"]
    assert (out / "train" / "index.json").stat().st_mtime_ns == mtime
    assert _tree(out) == {**before, "summary.json": _tree(out)["summary.json"]}  # temporaries removed
    # a changed label changes the fingerprint: the split is rewritten, the other one still skipped
    rows = read_jsonl(src / "manifest.jsonl")
    rows[0]["label"] = 2 if rows[0]["label"] != 2 else 0
    (src / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    summary = run("kinetics", ["train", "val"], scfg, src, out)
    assert not summary["splits"]["train"]["skipped"] and summary["splits"]["val"]["skipped"]
    # fewer shards than before: the extra old tars are removed
    run("kinetics", ["train", "val"], ShardConfig(target_bytes=1 << 30, min_shards=2), src, out)
    assert sorted(p.name for p in (out / "train").glob("*.tar")) == [
        "kinetics-train-000000.tar",
        "kinetics-train-000001.tar",
    ]


def test_verify_detects_corruption(videos, tmp_path):
    out = tmp_path / "out"
    run("kinetics", ["val"], ShardConfig(target_bytes=4096), videos, out)
    index = read_json(out / "val" / "index.json")
    verify_split(out / "val", index)
    path = out / "val" / index["shards"][1]["name"]
    data = bytearray(path.read_bytes())
    data[600] ^= 0xFF  # inside the first member's data
    path.write_bytes(bytes(data))
    with pytest.raises(ShardError, match=rf"{path.name}: sha256 differs from the index"):
        verify_split(out / "val", index)
    bad = {
        **index,
        "shards": [{**e, "sha256": sha256_file(out / "val" / e["name"])} for e in index["shards"]],
    }
    with pytest.raises(ShardError, match="json does not decode"):
        verify_split(out / "val", bad)


def test_images_are_jpg_samples(tmp_path):
    items = [{"id": f"n0{i}_{i}", "split": "train", "label": i % 2, "value": 20 * i} for i in range(5)]
    src = make_image_set(tmp_path / "imagenet", items, ["n01", "n02"])
    run("imagenet", ["train"], ShardConfig(target_bytes=1024, min_shards=2), src, tmp_path / "out")
    index = read_json(tmp_path / "out" / "train" / "index.json")
    assert index["media"] == "jpg" and index["total"] == 5
    sample = read_tar_samples(tmp_path / "out" / "train" / index["shards"][0]["name"])["000000000"]
    assert set(sample) == {"json", "jpg"} and sample["jpg"][:2] == b"\xff\xd8"


def test_main_reads_params(videos, tmp_path):
    data = yaml.safe_load((ROOT / "tests" / "fixtures" / "params-micro.yaml").read_text())
    data["datasets"]["kinetics"]["splits"] = ["val"]
    data["shard"] = {"target_bytes": 2048, "min_shards": 2, "seed": 1}
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(data))
    main(
        [
            "kinetics",
            "--videos",
            str(videos),
            "--out",
            str(tmp_path / "out"),
            "--params",
            str(params),
            "--no-flow",
        ]
    )
    index = read_json(tmp_path / "out" / "val" / "index.json")
    assert index["params"] == {"target_bytes": 2048, "min_shards": 2, "seed": 1} and index["total"] == 4
    assert not (tmp_path / "out" / "train").exists()


def test_kill_9_mid_shard_then_rerun_equals_uninterrupted(videos, tmp_path):
    """The run is killed while it blocks reading one clip (a FIFO in its place) after writing shards."""
    scfg = "ShardConfig(target_bytes=1024, min_shards=2)"
    ref = tmp_path / "ref"
    run("kinetics", ["train", "val"], ShardConfig(target_bytes=1024, min_shards=2), videos, ref)
    index = read_json(ref / "train" / "index.json")
    victim = json.loads(read_tar_samples(ref / "train" / index["shards"][6]["name"])["000000006"]["json"])[
        "id"
    ]

    src = tmp_path / "videos"
    shutil.copytree(videos, src)
    clip = src / "train" / f"{victim}.mp4"
    real = clip.read_bytes()
    clip.unlink()
    os.mkfifo(clip)
    out = tmp_path / "out"
    code = (
        "from pathlib import Path; from pipelines.shard import run; from tubevit.config.data import ShardConfig; "
        f"run('kinetics', ['train', 'val'], {scfg}, Path({str(src)!r}), Path({str(out)!r}))"
    )
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
    try:
        deadline = time.monotonic() + 60
        while not list((out / "train").glob(".*.tmp-*")) or len(list((out / "train").glob("*.tar"))) < 3:
            assert proc.poll() is None, "the run ended before it reached the blocking clip"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    assert not (out / "train" / "index.json").exists()
    assert list((out / "train").glob(".*.tmp-*"))  # a half-written shard was left behind
    clip.unlink()
    clip.write_bytes(real)
    run("kinetics", ["train", "val"], ShardConfig(target_bytes=1024, min_shards=2), src, out)
    assert _tree(out) == _tree(ref)


def test_dvc_symlink_cache_keeps_every_row(videos, tmp_path):
    """A real DVC repo with ``cache.type: symlink``: every file of videos/<ds> is a link into .dvc/cache.
    The containment check reads the path as written, so nothing is dropped, and the tars equal a run on
    plain files."""
    dvc = str(Path(sys.executable).with_name("dvc"))
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copytree(videos, repo / "videos" / "kinetics")
    for args in (
        ["init", "--no-scm", "-q"],
        ["config", "cache.type", "symlink"],
        ["add", "-q", "videos/kinetics"],
    ):
        subprocess.run([dvc, *args], cwd=repo, check=True, capture_output=True)
    clip = repo / "videos" / "kinetics" / "train" / "-yt00.mp4"
    assert clip.is_symlink() and (repo / ".dvc" / "cache") in clip.resolve().parents
    summary = run("kinetics", ["train", "val"], ShardConfig(target_bytes=4096), repo / "videos" / "kinetics",
                  tmp_path / "linked")  # fmt: skip
    assert (summary["splits"]["train"]["ok"], summary["splits"]["val"]["ok"], summary["failed"]) == (10, 4, 0)
    run("kinetics", ["train", "val"], ShardConfig(target_bytes=4096), videos, tmp_path / "plain")
    assert _tree(tmp_path / "linked") == _tree(tmp_path / "plain")


def _params(tmp_path: Path, **dataset) -> Path:
    data = yaml.safe_load((ROOT / "tests" / "fixtures" / "params-micro.yaml").read_text())
    data["datasets"]["kinetics"].update(dataset)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump(data))
    return params


def test_main_exit_codes_and_one_line_reasons(videos, tmp_path, capsys):
    args = ["kinetics", "--videos", str(videos), "--params", str(_params(tmp_path)), "--no-flow"]
    assert main([*args, "--out", str(tmp_path / "ok")]) == 0
    printed = capsys.readouterr().out
    assert printed.startswith("== shard kinetics ==\nsplit              in       ok   failed   reused\n")
    assert "train              10       10        0        0\n" in printed and "result: ok\n" in printed

    missing = [
        "kinetics",
        "--videos",
        str(tmp_path / "none"),
        "--params",
        str(_params(tmp_path)),
        "--no-flow",
    ]
    assert main([*missing, "--out", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        f"shard kinetics: {tmp_path / 'none' / 'manifest.jsonl'}: missing (run the reencode stage first)"
    ]

    src = tmp_path / "videos"
    shutil.copytree(videos, src)
    for p in (src / "val").glob("*.mp4"):
        p.unlink()
    args = ["kinetics", "--videos", str(src), "--params", str(_params(tmp_path)), "--no-flow"]
    assert main([*args, "--out", str(tmp_path / "noval")]) == 1
    captured = capsys.readouterr()
    reason = "split 'val': no usable manifest rows (all 4 failed; see failures.jsonl)"
    assert captured.err.strip().splitlines() == [f"shard kinetics: {reason}"]
    assert "      4  missing\n" in captured.out and f"result: FAILED: {reason}" in captured.out

    (src / "train" / "-yt00.mp4").unlink()
    params = _params(tmp_path, splits=["train"], failure_budget=0.05)
    assert (
        main(
            [
                "kinetics",
                "--videos",
                str(src),
                "--params",
                str(params),
                "--no-flow",
                "--out",
                str(tmp_path / "b"),
            ]
        )
        == 1
    )
    assert capsys.readouterr().err.strip() == (
        "shard kinetics: split 'train': 1 of 10 manifest rows failed (10.0%), over failure_budget 0.05 "
        "(see failures.jsonl)"
    )
    params = _params(tmp_path, splits=["train"], failure_budget=0.1)
    assert (
        main(
            [
                "kinetics",
                "--videos",
                str(src),
                "--params",
                str(params),
                "--no-flow",
                "--out",
                str(tmp_path / "b"),
            ]
        )
        == 0
    )


def test_a_second_run_on_a_locked_out_fails_before_touching_it(videos, tmp_path):
    out = tmp_path / "out"
    (out / "train").mkdir(parents=True)
    live = out / "train" / ".kinetics-train-000000.tar.tmp-0123456789abcdef"
    live.write_bytes(b"the first run is writing this")
    with stage_lock(out, "shard"):  # as another run would hold it (flock: per open file, so it conflicts)
        with pytest.raises(
            StageLockedError, match=r"^shard: .*/out is in use by another shard run \(pid \d+; lock "
        ):
            run("kinetics", ["train"], ShardConfig(), videos, out)
        assert live.exists() and not (out / "summary.json").exists()
    run("kinetics", ["train"], ShardConfig(), videos, out)
    assert not live.exists() and read_json(out / "train" / "index.json")["total"] == 10
