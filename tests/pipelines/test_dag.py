"""The DAG at micro scale (tests/fixtures/params-micro.yaml): `dvc repro` from a fresh clone runs every
stage; a second repro does nothing; a param change reruns only what depends on it; `dvc exp run -S`
works; `dvc metrics show` / `dvc plots show` present the results; two from-scratch repros in two clones
give identical shards (index.json sha256s) and identical metrics.

One session fixture runs the two from-scratch repros at once (two clones, each with its own DVC cache, so
the second cannot restore from the first's run cache); every stage reports to the session's Prefect
server (`prefect_api`), so no stage starts its own.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from pipelines.common import write_failures_by_kind, write_json_atomic
from pipelines.demo import stage_times

ROOT = Path(__file__).resolve().parents[2]
MICRO = ROOT / "tests" / "fixtures" / "params-micro.yaml"
DATASETS = ("kinetics", "charades", "ssv2", "imagenet")
VIDEO_DATASETS = ("kinetics", "charades", "ssv2")
STAGES = (
    [f"{stage}@{ds}" for stage in ("download", "reencode", "shard") for ds in DATASETS]
    + ["pretrain", "finetune@charades", "finetune@ssv2"]
    + [f"evaluate@{ds}" for ds in ("kinetics", "imagenet", "charades", "ssv2")]
)
IDENTITY = {
    "GIT_AUTHOR_NAME": "tubevit test",
    "GIT_AUTHOR_EMAIL": "test@tubevit.local",
    "GIT_COMMITTER_NAME": "tubevit test",
    "GIT_COMMITTER_EMAIL": "test@tubevit.local",
}


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.update(IDENTITY)
    env["PREFECT_LOGGING_EXTRA_LOGGERS"] = "tubevit"
    # two pipelines run at once on the machine's cores: one torch thread each (pipelines.training.
    # configure_threads would give each every core, and OpenMP threads stall when they share one)
    env["OMP_NUM_THREADS"] = "1"
    return env


def _run(cmd: list[str], repo: Path, timeout: float = 300) -> str:
    result = subprocess.run(cmd, cwd=repo, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, (
        f"{' '.join(cmd)} failed in {repo}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    )
    return result.stdout + result.stderr


def dvc(repo: Path, *args: str, timeout: float = 300) -> str:
    return _run([sys.executable, "-m", "dvc", *args], repo, timeout)


def dvc_json(repo: Path, *args: str, timeout: float = 300):
    """The JSON that ``dvc <args> --json`` prints on stdout (DVC's warnings go to stderr)."""
    cmd = [sys.executable, "-m", "dvc", *args, "--json"]
    result = subprocess.run(cmd, cwd=repo, env=_env(), capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(cmd)} failed in {repo}:\n{result.stderr[-4000:]}"
    return json.loads(result.stdout)


def git(repo: Path, *args: str) -> str:
    return _run(["git", *args], repo, 60)


def _fresh_repo(dest: Path) -> Path:
    """A fresh git repository holding the project's files (tracked and not ignored) with the micro params."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    for name in filter(None, files):
        src = ROOT / os.fsdecode(name)
        if src.is_file():  # a tracked file deleted in the working tree is skipped
            (dest / os.fsdecode(name)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / os.fsdecode(name))
    shutil.copyfile(MICRO, dest / "params.yaml")
    git(dest, "init", "-q", "-b", "main")
    git(dest, "add", "-A")
    git(dest, "commit", "-q", "-m", "micro DAG")
    return dest


def _repro_all(repos: list[Path]) -> list[tuple[str, dict[str, float]]]:
    """`dvc repro` in every repo at once; returns each one's output and stage times."""
    procs = []
    for repo in repos:
        log = open(repo.parent / f"{repo.name}-repro.log", "w+")  # noqa: SIM115 - closed below
        cmd = [sys.executable, "-m", "dvc", "repro"]
        procs.append(
            (repo, log, subprocess.Popen(cmd, cwd=repo, env=_env(), stdout=log, stderr=subprocess.STDOUT))
        )
    out = []
    for repo, log, proc in procs:
        code = proc.wait(timeout=600)
        log.seek(0)
        text = log.read()
        log.close()
        assert code == 0, f"dvc repro failed in {repo}:\n{text[-6000:]}"
        events = [(0.0, line) for line in text.splitlines()]
        out.append((text, stage_times(events, 0.0)))
    return out


@pytest.fixture(scope="session")
def dag(tmp_path_factory, prefect_api):
    """Two fresh clones of the micro DAG, each reproduced from scratch (at the same time)."""
    base = tmp_path_factory.mktemp("dag")
    a = _fresh_repo(base / "a")
    b = base / "b"
    git(base, "clone", "-q", str(a), str(b))
    start = time.monotonic()
    (out_a, _), (out_b, _) = _repro_all([a, b])
    seconds = time.monotonic() - start
    git(a, "add", "dvc.lock")  # as `dvc repro` suggests: the lock file is versioned with the code
    git(a, "commit", "-q", "-m", "dvc.lock")
    return {"a": a, "b": b, "out_a": out_a, "out_b": out_b, "seconds": seconds}


def _lock_outs(repo: Path) -> dict[str, str]:
    """out path -> md5 recorded in ``dvc.lock``."""
    lock = YAML(typ="safe").load((repo / "dvc.lock").read_text())
    return {out["path"]: out["md5"] for stage in lock["stages"].values() for out in stage.get("outs", [])}


def _ran(output: str) -> list[str]:
    return [line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")]


@pytest.mark.slow
def test_fresh_clone_runs_every_stage(dag):
    for key in ("out_a", "out_b"):
        assert sorted(_ran(dag[key])) == sorted(STAGES)
    a = dag["a"]
    for ds in DATASETS:
        assert (a / "raw" / ds).is_dir() and (a / "videos" / ds / "manifest.jsonl").is_file()
        for split in ("train", "val"):
            index = json.loads((a / "shards" / ds / split / "index.json").read_text())
            assert sum(s["samples"] for s in index["shards"]) == 8  # 8 items per split
    for model in ("pretrain", "charades", "ssv2"):
        assert (a / "models" / model / "model.pt").is_file()
    assert (a / "checkpoints" / "pretrain").is_dir()
    lock = (a / "dvc.lock").read_text()
    assert all(f"{stage}:" in lock for stage in STAGES)


@pytest.mark.slow
def test_second_repro_does_nothing(dag):
    out = dvc(dag["a"], "repro")
    assert _ran(out) == []
    assert sum("didn't change, skipping" in line for line in out.splitlines()) == len(STAGES)
    assert "Data and pipelines are up to date." in dvc(dag["a"], "status")


@pytest.mark.slow
def test_two_from_scratch_repros_are_identical(dag):
    a, b = dag["a"], dag["b"]
    for ds in DATASETS:
        for split in ("train", "val"):
            ia = json.loads((a / "shards" / ds / split / "index.json").read_text())
            ib = json.loads((b / "shards" / ds / split / "index.json").read_text())
            assert [s["sha256"] for s in ia["shards"]] == [s["sha256"] for s in ib["shards"]], (ds, split)
            assert ia == ib
    for ds in DATASETS:
        assert (a / "metrics" / f"{ds}.json").read_bytes() == (b / "metrics" / f"{ds}.json").read_bytes(), ds
    for model in ("pretrain", "charades", "ssv2"):
        assert (a / "models" / model / "model.pt").read_bytes() == (
            b / "models" / model / "model.pt"
        ).read_bytes()
    # dvc.lock: every out has the same hash in both clones (raw/, videos/, shards/, models/, plots/,
    # metrics/<ds>.json and checkpoints/), except the logs with wall-clock times and clips/s
    outs_a, outs_b = _lock_outs(a), _lock_outs(b)
    assert set(outs_a) == set(outs_b)
    timed = ("dvclive/", "metrics/timing/")
    same = {path for path in outs_a if not path.startswith(timed)}
    assert {p.split("/")[0] for p in same} >= {
        "raw",
        "videos",
        "shards",
        "models",
        "plots",
        "metrics",
        "checkpoints",
    }
    assert {p: outs_a[p] for p in same} == {p: outs_b[p] for p in same}


def test_stage_times_from_dvc_output():
    """pipelines.demo times each stage from `dvc repro`'s output lines (skipped stages are not listed)."""
    lines = [
        (0.0, "Running stage 'download@kinetics':"),
        (0.5, "> python -m pipelines.download kinetics --out raw/kinetics --params params.yaml"),
        (4.0, "Stage 'download@ssv2' didn't change, skipping"),
        (4.5, "Running stage 'reencode@kinetics':"),
        (9.0, "Updating lock file 'dvc.lock'"),
    ]
    assert stage_times(lines, end=10.0) == {"download@kinetics": 4.0, "reencode@kinetics": 5.5}
    assert stage_times([], end=1.0) == {}


def _set_param(path: Path, dotted: str, value) -> None:
    """Set one key of a params file in place (round-trip YAML: comments and layout kept)."""
    yaml = YAML()
    doc = yaml.load(path.read_text())
    *parents, last = dotted.split(".")
    node = doc
    for name in parents:
        node = node[name]
    assert last in node, dotted
    node[last] = value
    with path.open("w") as f:
        yaml.dump(doc, f)


@pytest.mark.slow
def test_param_change_reruns_only_dependent_stages(dag):
    """`dvc status` names exactly the stages that read a changed key (execution-only keys: none), and a
    real repro after a change reruns that stage and what its changed outputs feed, nothing else."""
    a = dag["a"]
    params = a / "params.yaml"
    original = params.read_text()
    # (key, value, stages whose params changed, the key DVC reports: the leaf, or the tracked section)
    cases = [
        ("finetune.charades.steps", 3, ["finetune@charades"], "finetune.charades"),
        (
            "datasets.ssv2.fps",
            12,
            ["finetune@ssv2", "reencode@ssv2"],
            "datasets.ssv2.fps",
        ),  # the bundle records fps
        ("evaluate.temporal_views", 2, [f"evaluate@{d}" for d in DATASETS], "evaluate"),
        ("model.head_dropout", 0.1, ["pretrain"], "model"),
        ("reencode.workers", 1, [], None),  # execution-only keys are not tracked: nothing reruns
        ("reencode.dask_address", "tcp://127.0.0.1:8786", [], None),
    ]
    try:
        for key, value, changed, reported in cases:
            params.write_text(original)
            _set_param(params, key, value)
            status = json.loads(dvc(a, "status", "--json"))
            assert sorted(status) == sorted(changed), (key, status)
            for stage in changed:
                assert status[stage] == [{"changed deps": {"params.yaml": {reported: "modified"}}}], (
                    key,
                    status,
                )
    finally:
        params.write_text(original)
    assert "Data and pipelines are up to date." in dvc(a, "status")

    # a real rerun (in clone b, after the determinism test has compared it): only the fine-tuning of
    # charades and its evaluation run
    b = dag["b"]
    _set_param(b / "params.yaml", "finetune.charades.steps", 3)
    out = dvc(b, "repro")
    assert _ran(out) == ["finetune@charades", "evaluate@charades"]
    assert json.loads((b / "metrics" / "timing" / "finetune-charades.json").read_text())["steps"] == 3


@pytest.mark.slow
def test_metrics_and_plots_show(dag):
    a = dag["a"]
    shown = json.loads(dvc(a, "metrics", "show", "--json"))
    metrics = shown[""]["data"] if "" in shown else next(iter(shown.values()))["data"]
    for ds in ("kinetics", "ssv2", "imagenet"):
        values = metrics[f"metrics/{ds}.json"]["data"]
        assert 0.0 <= values["top1"] <= values["top5"] <= 1.0
        assert values["clips"] == 8
    assert 0.0 <= metrics["metrics/charades.json"]["data"]["mAP"] <= 1.0
    for ds in ("kinetics", "ssv2", "charades"):
        assert (
            "top1_shuffled" in metrics[f"metrics/{ds}.json"]["data"]
            or "mAP_shuffled" in metrics[f"metrics/{ds}.json"]["data"]
        )
    # timing files are plain outs, not metrics; dvclive's summaries are metrics (at the last of 2 steps)
    assert not [path for path in metrics if path.startswith("metrics/timing/")]
    assert (a / "metrics" / "timing" / "pretrain.json").is_file()
    for live in ("pretrain", "finetune-charades", "finetune-ssv2"):
        summary = metrics[f"dvclive/{live}/metrics.json"]["data"]
        assert summary["step"] == 2 and summary["train"]["loss"] > 0, (live, summary)

    plots = dvc_json(a, "plots", "show")["data"]
    expected = {
        "Training loss": 3 * 2,  # 3 training stages x 2 steps
        "Per-class accuracy": 8 + 6 + 10,  # synthetic kinetics, imagenet, ssv2 classes
        "Charades per-class AP": 12,
        "plots/ssv2/confusion.csv": 8,  # one row per val clip
    }
    for name, rows in expected.items():
        assert len(plots[name][0]["content"]["data"]["values"]) == rows, name
    # reencode's data quality, per dataset: 8 train + 8 val items each (micro sources: 30 fps, 64 px)
    quality = {
        "Source fps (reencode)": ("source_fps", VIDEO_DATASETS),
        "Source duration, s (reencode)": ("source_duration", VIDEO_DATASETS),
        "Source resolution, px (reencode)": ("source_height", DATASETS),
    }
    for name, (field, datasets) in quality.items():
        rows = plots[name][0]["content"]["data"]["values"]
        per_dataset = {ds: [r for r in rows if r["filename"] == f"{ds}/quality.json"] for ds in datasets}
        assert {ds: len(r) for ds, r in per_dataset.items()} == dict.fromkeys(datasets, 16), name
        for ds, ds_rows in per_dataset.items():
            expected_rows = json.loads((a / "videos" / ds / "quality.json").read_text())
            assert sorted(r[field] for r in ds_rows) == sorted(q[field] for q in expected_rows), (name, ds)
    assert {r["source_fps"] for r in plots["Source fps (reencode)"][0]["content"]["data"]["values"]} == {30.0}
    dvc(a, "plots", "show", "-o", str(a / "dvc_plots"))
    html = (a / "dvc_plots" / "index.html").read_text()
    assert "Per-class accuracy" in html and "Charades per-class AP" in html and "Training loss" in html


@pytest.mark.slow
def test_remote_push_then_pull_in_a_fresh_clone_restores_without_recomputing(dag, tmp_path):
    """The README's remote example: `dvc remote add -d local <folder>`, `dvc push`; a fresh clone's `dvc
    pull` restores raw/, videos/, shards/ and models/ byte for byte, and `dvc repro --allow-missing` runs
    nothing. Only the uncached checkpoints are missing there (`dvc status` names exactly them)."""
    a = dag["a"]
    # runs before the experiment test: a's workspace is its commit's dvc repro
    git(a, "diff", "--quiet", "HEAD", "--", "params.yaml", "dvc.lock")
    published = tmp_path / "published"
    git(tmp_path, "clone", "-q", str(a), str(published))
    for folder in ("metrics", "plots", "dvclive"):  # `cache: false` outs: versioned with git, as DVC says
        shutil.copytree(a / folder, published / folder)
    dvc(published, "cache", "dir", "--local", str(a / ".dvc" / "cache"))  # the cache that dvc repro filled
    remote = tmp_path / "remote"
    dvc(published, "remote", "add", "-d", "local", str(remote))
    git(published, "add", "-A")
    git(published, "commit", "-q", "-m", "results and the remote")
    pushed = dvc(published, "push")
    assert remote.is_dir() and any(remote.rglob("*")), pushed

    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(published), str(clone))
    assert not (clone / "shards").exists() and not (clone / "models").exists()
    dvc(clone, "pull")
    for ds in DATASETS:
        for split in ("train", "val"):
            index = Path("shards", ds, split, "index.json")
            assert (clone / index).read_bytes() == (a / index).read_bytes()
            for shard in json.loads((a / index).read_text())["shards"]:
                tar = index.parent / shard["name"]
                assert (clone / tar).read_bytes() == (a / tar).read_bytes()
        manifest = Path("videos", ds, "manifest.jsonl")
        assert (clone / manifest).read_bytes() == (a / manifest).read_bytes()
    for model in ("pretrain", "charades", "ssv2"):
        path = Path("models", model, "model.pt")
        assert (clone / path).read_bytes() == (a / path).read_bytes()
    status = json.loads(dvc(clone, "status", "--json"))
    assert status == {
        stage: [{"changed outs": {f"checkpoints/{name}": "deleted"}}]
        for stage, name in (
            ("pretrain", "pretrain"),
            ("finetune@charades", "charades"),
            ("finetune@ssv2", "ssv2"),
        )
    }
    out = dvc(clone, "repro", "--allow-missing")
    assert _ran(out) == [], out
    assert sum("didn't change, skipping" in line for line in out.splitlines()) == len(STAGES)


@pytest.mark.slow
def test_exp_run_with_a_pretrain_param(dag):
    """`dvc exp run -S pretrain.checkpoint_every=2`: pretrain reruns; its model is bitwise the same (the
    checkpoint interval does not change training), so nothing downstream reruns."""
    a = dag["a"]
    out = dvc(a, "exp", "run", "-n", "ckpt2", "-S", "pretrain.checkpoint_every=2")
    assert _ran(out) == ["pretrain"]
    assert "checkpoint_every: 2" in (a / "params.yaml").read_text()  # the experiment is in the workspace
    assert "checkpoint_every: 1" in git(a, "show", "HEAD:params.yaml")  # the commit is untouched
    shown = json.loads(dvc(a, "exp", "show", "--json"))
    exps = {
        rev["name"]: rev for entry in shown for e in (entry.get("experiments") or []) for rev in e["revs"]
    }
    assert "ckpt2" in exps
    data = exps["ckpt2"]["data"]
    assert data["params"]["params.yaml"]["data"]["pretrain"]["checkpoint_every"] == 2
    # params.yaml holds only the active sections (recipes live in recipes.yaml), and the experiment's
    # metrics are the evaluation metrics and dvclive's summaries, not the timing files
    assert set(data["params"]["params.yaml"]["data"]) == {
        "datasets",
        "reencode",
        "shard",
        "model",
        "pretrain",
        "finetune",
        "evaluate",
        "deploy",
    }
    assert "dvclive/pretrain/metrics.json" in data["metrics"]
    assert not [path for path in data["metrics"] if path.startswith("metrics/timing/")]
    # DVC keeps `cache: false` metrics in git: the experiment's commit holds them (.gitignore must not).
    ssv2 = json.loads((a / "metrics" / "ssv2.json").read_text())
    assert data["metrics"]["metrics/ssv2.json"]["data"] == ssv2


def _reencode_plots() -> dict:
    """dvc.yaml's reencode data-quality plot definitions (title -> definition)."""
    plots = YAML(typ="safe").load((ROOT / "dvc.yaml").read_text())["plots"]
    return {name: spec for entry in plots for name, spec in entry.items() if name.endswith("(reencode)")}


def test_reencode_quality_plots_are_declared(tmp_path):
    """dvc.yaml's data-quality plots, drawn by `dvc plots show` from files in reencode's format (fabricated
    here; the micro DAG test draws the real ones): one series per dataset for source fps, duration and
    resolution, and the failures by reason (failures_by_kind.json, written by
    pipelines.common.write_failures_by_kind)."""
    specs = _reencode_plots()
    assert set(specs) == {
        "Source fps (reencode)",
        "Source duration, s (reencode)",
        "Source resolution, px (reencode)",
        "Failures by reason (reencode)",
    }
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    dvc(repo, "init", "-q")
    (repo / ".dvc" / "plots").mkdir()
    shutil.copyfile(ROOT / ".dvc" / "plots" / "histogram.json", repo / ".dvc" / "plots" / "histogram.json")
    (repo / "dvc.yaml").write_text(json.dumps({"plots": [{k: v} for k, v in specs.items()]}))
    sources = {"kinetics": (25.0, 10.0), "charades": (30.0, 30.0), "ssv2": (12.0, 3.0)}
    for i, ds in enumerate(DATASETS):
        rows = []
        for j in range(3 + i):  # a different count per dataset
            row = {"id": f"{ds}{j}", "split": "train", "source_width": 320 + j, "source_height": 240 + i}
            if ds in sources:
                fps, seconds = sources[ds]
                row |= {"source_fps": fps, "source_duration": seconds + j}
            rows.append(row)
        write_json_atomic(repo / "videos" / ds / "quality.json", rows)
        failed = [{"id": f"{ds}-bad{j}", "kind": "unreadable" if j % 2 else "missing"} for j in range(i)]
        write_failures_by_kind(repo / "videos" / ds, failed)

    shown = dvc_json(repo, "plots", "show")
    assert not shown.get("errors"), shown.get("errors")
    plots = {name: p[0]["content"] for name, p in shown["data"].items()}

    def rows_of(name: str) -> dict[str, list[dict]]:
        values = plots[name]["data"]["values"]
        return {ds: [r for r in values if r["filename"].startswith(f"{ds}/")] for ds in DATASETS}

    fps = rows_of("Source fps (reencode)")
    assert {ds: [r["source_fps"] for r in rows] for ds, rows in fps.items()} == {
        "kinetics": [25.0] * 3,
        "charades": [30.0] * 4,
        "ssv2": [12.0] * 5,
        "imagenet": [],  # images have no frame rate
    }
    duration = rows_of("Source duration, s (reencode)")
    assert [r["source_duration"] for r in duration["ssv2"]] == [3.0, 4.0, 5.0, 6.0, 7.0]
    resolution = rows_of("Source resolution, px (reencode)")
    assert {ds: len(rows) for ds, rows in resolution.items()} == {
        "kinetics": 3,
        "charades": 4,
        "ssv2": 5,
        "imagenet": 6,
    }
    assert {r["source_height"] for r in resolution["imagenet"]} == {243}
    failures = rows_of("Failures by reason (reencode)")
    assert {ds: {r["kind"]: r["count"] for r in rows} for ds, rows in failures.items()} == {
        "kinetics": {},
        "charades": {"missing": 1},
        "ssv2": {"missing": 1, "unreadable": 1},
        "imagenet": {"missing": 2, "unreadable": 1},
    }
    # the histogram template bins the field and counts items, coloured by dataset
    encoding = plots["Source fps (reencode)"]["encoding"]
    assert encoding["x"]["field"] == "source_fps" and encoding["x"]["bin"]
    assert encoding["y"]["aggregate"] == "count" and encoding["color"]["field"] == "filename"
    assert plots["Source resolution, px (reencode)"]["encoding"]["x"]["field"] == "source_width"
