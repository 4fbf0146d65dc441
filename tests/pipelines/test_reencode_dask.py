"""Stage reencode on a Dask cluster (``reencode.dask_address``) gives the thread runner's outputs, byte for byte.

The cluster is a small in-process ``LocalCluster`` (``processes=False``: one worker, two threads), which runs
the same Prefect tasks through ``prefect_dask.DaskTaskRunner`` as a remote cluster would; workers of a real
cluster need the workspace on a shared filesystem at the same path (docs/design.md "Beyond one machine").
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from pipelines.common import read_jsonl
from pipelines.reencode import run, run_flow
from tubevit.config.data import DatasetConfig, ReencodeConfig

HEADER = "label,youtube_id,time_start,time_end,split\n"


def files_of(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()
    }


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    """A Kinetics-format folder: 3 full-length 3 s clips (one id starting with '-'), 5 windows, 1 bad file."""
    root = tmp_path_factory.mktemp("raw")
    for i, yt in enumerate(["-dask000001", "_dask000002", "dask0000003"]):
        src = f"testsrc2=size=64x48:rate=30:duration=3,hue=h={40 * i}"
        subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", "-f", "lavfi", "-i", src, "-c:v", "libx264",
                        "-pix_fmt", "yuv420p", "-threads", "1", str(root / f"{yt}.mp4")], check=True)  # fmt: skip
    (root / "broken00001.mp4").write_text("not a video\n")
    rows = ["a,-dask000001,0,2,train\n", "b,-dask000001,1,3,train\n", "a,_dask000002,0,3,train\n",
            "b,dask0000003,0,1,train\n", "a,broken00001,0,2,train\n", "b,dask0000003,1,2,val\n"]  # fmt: skip
    (root / "train.csv").write_text(HEADER + "".join(rows[:5]))
    (root / "val.csv").write_text(HEADER + rows[5])
    return root


CFG = DatasetConfig(format="kinetics", source="local", uri=("raw",), fps=15.0, short_side=32)


def test_dask_cluster_gives_the_thread_runners_outputs(prefect_api, raw, tmp_path):
    from distributed import LocalCluster

    threads = run("kinetics", CFG, ReencodeConfig(workers=2), raw, tmp_path / "threads")
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        rcfg = ReencodeConfig(workers=2, dask_address=cluster.scheduler_address, chunk_size=2)
        dask = run_flow("kinetics", CFG, rcfg, raw, tmp_path / "dask")
        ran = cluster.scheduler.task_prefixes["reencode_chunk_task"].state_counts
    assert ran["memory"] == 3  # 6 items in chunks of 2, each a Prefect task that ran on the Dask worker
    assert (
        (dask["input"], dask["ok"], dask["failed"])
        == (6, 5, 1)
        == (threads["input"], threads["ok"], threads["failed"])
    )
    assert dask["reused"] == 0
    assert files_of(tmp_path / "dask") == files_of(tmp_path / "threads")
    rows = read_jsonl(tmp_path / "dask" / "manifest.jsonl")
    assert [(r["split"], r["id"], r["frames"]) for r in rows] == [
        ("train", "-dask000001_000000_000002", 30),
        ("train", "-dask000001_000001_000003", 30),
        ("train", "_dask000002_000000_000003", 45),
        ("train", "dask0000003_000000_000001", 15),
        ("val", "dask0000003_000001_000002", 15),
    ]
    failure = read_jsonl(tmp_path / "dask" / "failures.jsonl")
    assert [(f["id"], f["reason"]) for f in failure] == [
        ("broken00001_000000_000002", "not a media file (starts with b'not a video\\n')")
    ]


def test_a_task_that_crashes_on_dask_is_recorded_as_its_items_failure(
    prefect_api, raw, tmp_path, monkeypatch
):
    """A chunk's task raises past process_item (here a MemoryError, as an exhausted worker would): the
    stage still ends, and each item of that chunk is a ``crash`` row of failures.jsonl."""
    from distributed import LocalCluster

    from pipelines import reencode

    call = reencode._ChunkFn.__call__

    def crashing(self, chunk):
        if any(it.id == "_dask000002_000000_000003" for it in chunk):
            raise MemoryError("worker out of memory")
        return call(self, chunk)

    monkeypatch.setattr(reencode._ChunkFn, "__call__", crashing)
    with LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as cluster:
        rcfg = ReencodeConfig(workers=2, dask_address=cluster.scheduler_address, chunk_size=2)
        result = run_flow("kinetics", CFG, rcfg, raw, tmp_path / "dask")
    # chunks of 2 in (split, id) order: the crashing one holds _dask000002 and broken00001
    assert (result["input"], result["ok"], result["failed"]) == (6, 4, 2)
    assert result["failures_by_kind"] == {"crash": 2}
    rows = read_jsonl(tmp_path / "dask" / "failures.jsonl")
    assert [(r["id"], r["kind"], r["reason"]) for r in rows] == [
        ("_dask000002_000000_000003", "crash", "the task crashed: MemoryError: worker out of memory"),
        ("broken00001_000000_000002", "crash", "the task crashed: MemoryError: worker out of memory"),
    ]
    manifest = [r["id"] for r in read_jsonl(tmp_path / "dask" / "manifest.jsonl")]
    assert manifest == [
        "-dask000001_000000_000002",
        "-dask000001_000001_000003",
        "dask0000003_000000_000001",
        "dask0000003_000001_000002",
    ]
