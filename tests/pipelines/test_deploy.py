"""Prefect against real servers: the main command's `prefect server start` and background deployment
server (pid files, one stop command), runs triggered through the API and observed to complete with their
outputs and names, experiments that leave the workspace alone, and a stage's flow run with its logs and
result artifact."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from pipelines import deploy, server
from pipelines.demo import start_servers
from pipelines.deploy import DvcError, dvc_command, run_dvc, set_args

ROOT = Path(__file__).resolve().parents[2]
MICRO = ROOT / "tests" / "fixtures" / "params-micro.yaml"

# A one-stage DAG that reads two params and writes a metric: fast, and enough to see what ran.
ECHO_PY = """\
import json

import yaml

params = yaml.safe_load(open("params.yaml"))
json.dump({"seed": params["shard"]["seed"], "steps": params["pretrain"]["steps"]}, open("echo.json", "w"))
"""
DVC_YAML = """\
stages:
  echo:
    cmd: python echo.py
    deps: [echo.py]
    params: [shard.seed, pretrain.steps]
    metrics:
      - echo.json:
          cache: false
"""


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


@pytest.fixture()
def workspace(tmp_path):
    """A tiny git + DVC repository with the micro params and the one-stage DAG, committed."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _git(repo, "init", "-q", "-b", "main")
    _git(repo, "config", "user.name", "tubevit test")
    _git(repo, "config", "user.email", "test@tubevit.local")
    subprocess.run(dvc_command("init", "-q"), cwd=repo, check=True)
    shutil.copyfile(ROOT / ".dvc" / "config", repo / ".dvc" / "config")
    shutil.copyfile(MICRO, repo / "params.yaml")
    (repo / "dvc.yaml").write_text(DVC_YAML)
    (repo / "echo.py").write_text(ECHO_PY)
    _git(repo, "add", "-A")
    _git(repo, "commit", "-q", "-m", "tiny DAG")
    return repo


def test_set_args():
    assert set_args({"pretrain.steps": 5, "model.tubes": "paper", "pretrain.compile": True}) == [
        "-S",
        "pretrain.steps=5",
        "-S",
        "model.tubes=paper",
        "-S",
        "pretrain.compile=true",
    ]
    assert set_args({"datasets.ssv2.splits": ["train"]}) == ["-S", 'datasets.ssv2.splits=["train"]']
    with pytest.raises(ValueError, match="bad params key 'a b'"):
        set_args({"a b": 1})


def test_dvc_environment(workspace, monkeypatch):
    """DVC commands of the deployments: this venv first, logs forwarded, and the project's relative
    site_cache_dir (.dvc/site) passed as an absolute path (`dvc exp run --temp` fails on the relative one)."""
    monkeypatch.delenv("DVC_SITE_CACHE_DIR", raising=False)
    env = deploy._env(workspace)
    assert env["DVC_SITE_CACHE_DIR"] == str((workspace / ".dvc" / "site").resolve())
    assert env["PATH"].split(os.pathsep)[0] == str(Path(sys.executable).parent)
    assert set(env["PREFECT_LOGGING_EXTRA_LOGGERS"].split(",")) >= {"tubevit", "pipelines"}
    (workspace / ".dvc" / "config").write_text("[core]\n    site_cache_dir = /var/tmp/dvc-site\n")
    assert "DVC_SITE_CACHE_DIR" not in deploy._env(workspace)  # absolute: DVC reads it right


def test_run_dvc_failure_names_the_command(workspace):
    with pytest.raises(DvcError, match=r"`dvc --wait-for-lock repro nope` in .* exited with status \d+"):
        run_dvc(["repro", "nope"], workspace)


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.5)
    raise TimeoutError(f"{what} not after {timeout} s")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.slow
def test_main_command_serves_the_deployments_and_experiments_leave_the_workspace(
    tmp_path, workspace, monkeypatch, capsys
):
    """What the main command does (pipelines.demo.start_servers): the Prefect server and, beside it, the
    deployment server in the background with its pid file; both deployments listed; runs through the API
    named after their flow; `tubevit-exp` records the experiment and leaves params.yaml and the outputs as
    they were, so the next `tubevit-repro` has nothing to rerun; one stop command stops both servers."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    monkeypatch.delenv("PREFECT_API_URL", raising=False)  # a server of its own, not the session's
    monkeypatch.setenv("PREFECT_RUNNER_POLL_FREQUENCY", "1")  # the runner polls every 10 s by default
    t0 = time.monotonic()
    home = tmp_path / "prefect-home"
    url = start_servers(home=home, port=server.find_free_port(), workspace=workspace)
    printed = capsys.readouterr().out
    info, served = server.status(home), deploy.status(home)
    assert info is not None and served is not None and info.url == url == served.url
    assert (home / "server.pid").read_text().strip() == str(info.pid)
    assert (home / "deploy.pid").read_text().strip() == str(served.pid)
    assert f"Prefect UI: {info.ui}" in printed
    assert f"{info.ui}/deployments" in printed and str(home / "deploy.pid") in printed
    # the main command run again reuses both
    assert start_servers(home=home, workspace=workspace) == url
    assert deploy.status(home).pid == served.pid and server.status(home).pid == info.pid
    log = home / "deploy.log"
    try:
        with temporary_settings(updates={PREFECT_API_URL: url}):
            with get_client(sync_client=True) as client:

                def registered():
                    assert _alive(served.pid), log.read_text()[-3000:]
                    try:
                        return all(client.read_deployment_by_name(n) for n in deploy.DEPLOYMENT_NAMES)
                    except Exception:
                        return None

                _wait_for(registered, 120, "the two deployments")
                print(f"deployments registered after {time.monotonic() - t0:.1f} s")
                repro = client.read_deployment_by_name("dvc-repro/tubevit-repro")
                assert [s.schedule.cron for s in repro.schedules] == ["0 3 * * *"]  # deploy.cron
                assert repro.schedules[0].schedule.timezone == "UTC"

            run = run_deployment("dvc-repro/tubevit-repro", timeout=180, poll_interval=1)
            assert run.state.is_completed(), (run.state, log.read_text()[-3000:])
            assert re.fullmatch(r"dvc-repro-\d{8}-\d{6}", run.name), run.name
            print(f"repro run done after {time.monotonic() - t0:.1f} s")
            assert json.loads((workspace / "echo.json").read_text()) == {"seed": 0, "steps": 2}
            assert "echo" in (workspace / "dvc.lock").read_text()

            params = (workspace / "params.yaml").read_bytes()
            outputs = {
                p: (p.read_bytes(), p.stat().st_mtime_ns)
                for p in (workspace / "echo.json", workspace / "dvc.lock")
            }
            run = run_deployment(
                "dvc-exp/tubevit-exp",
                parameters={"set_params": {"pretrain.steps": 7}, "name": "steps7"},
                timeout=180,
                poll_interval=1,
            )
            assert run.state.is_completed(), (run.state, log.read_text()[-3000:])
            assert re.fullmatch(r"dvc-exp-steps7-\d{8}-\d{6}", run.name), run.name
            print(f"exp run done after {time.monotonic() - t0:.1f} s")
            # --temp: the experiment ran in a copy; the workspace is untouched
            assert (workspace / "params.yaml").read_bytes() == params
            assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in outputs} == outputs
            shown = subprocess.run(
                dvc_command("exp", "show", "--json"),
                cwd=workspace,
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            exps = [e for rev in json.loads(shown) for e in (rev.get("experiments") or [])]
            names = {run_["name"]: run_ for e in exps for run_ in e["revs"]}
            assert "steps7" in names
            data = names["steps7"]["data"]
            assert data["params"]["params.yaml"]["data"]["pretrain"]["steps"] == 7
            assert data["metrics"]["echo.json"]["data"] == {"seed": 0, "steps": 7}
            with get_client(sync_client=True) as client:  # the run's result, as a markdown artifact
                (artifact,) = client.read_artifacts(
                    artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["dvc-exp-steps7"]))
                )
                assert artifact.flow_run_id == run.id
                assert "| experiment | steps7 |" in artifact.data
                assert (
                    "| set_params.pretrain.steps | 7 |" in artifact.data
                    and '| ran | ["echo"] |' in artifact.data
                )

            # the nightly run after the experiment: the baseline is unchanged, nothing reruns
            run = run_deployment("dvc-repro/tubevit-repro", timeout=180, poll_interval=1)
            assert run.state.is_completed(), (run.state, log.read_text()[-3000:])
            assert {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in outputs} == outputs
            print(f"second repro run done after {time.monotonic() - t0:.1f} s")
    finally:
        assert server.main(["stop", "--home", str(home)]) == 0  # stops the deployment server too
    assert not (home / "server.pid").exists() and not (home / "deploy.pid").exists()
    assert not _alive(info.pid) and not _alive(served.pid)
    assert deploy.status(home) is None and server.status(home) is None


def test_deploy_start_reports_a_serve_process_that_exits(tmp_path, workspace):
    """A deployment server that cannot start (here: a malformed params file) is reported, not left as a
    stale pid file."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("datasets: {}\n")
    home = tmp_path / "home"
    with pytest.raises(
        RuntimeError, match=r"pipelines.deploy serve exited with status 2: .*bad.yaml: datasets"
    ):
        deploy.start("http://127.0.0.1:9/api", workspace, home, params=bad, check_s=60)
    assert not (home / "deploy.pid").exists() and deploy.status(home) is None
    assert deploy.stop(home) is False


@pytest.mark.slow
def test_stage_flow_run_is_named_logs_each_failure_and_publishes_its_result(tmp_path, prefect_api):
    """A data stage against a real server, as DVC runs it (a subprocess; no PREFECT_LOGGING_EXTRA_LOGGERS in
    its environment): its flow run is `reencode-kinetics-<UTC time>`, the per-item failure logged by
    `pipelines.common` is in the run's logs, and the run has a `reencode-kinetics` markdown artifact with
    the counts and the failure."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        ArtifactFilter,
        ArtifactFilterKey,
        FlowFilter,
        FlowFilterName,
        LogFilter,
        LogFilterFlowRunId,
    )
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from pipelines import download
    from pipelines.params import load_params

    raw, videos = tmp_path / "raw", tmp_path / "videos"
    download.run("kinetics", load_params(MICRO).dataset("kinetics"), raw)  # synthetic, no flow
    bad = sorted((raw / "train").glob("*.mp4"))[0]
    bad.write_bytes(b"garbage, not a video")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_LOGGING_")}
    env |= {"PREFECT_API_URL": prefect_api, "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "pipelines.reencode", "kinetics", "--raw", str(raw), "--out", str(videos)]
    started = datetime.now(UTC)  # the session's server also holds other tests' reencode runs
    result = subprocess.run(
        [*cmd, "--params", str(MICRO)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    # 1 of the 8 train items failed: over the micro params' failure_budget (0.1), so the stage exits 1 with one
    # line, after writing its reports, its logs and its artifact
    assert result.returncode == 1, result.stderr[-3000:]
    assert "split 'train': 1 of 8 items failed (12.5%), over failure_budget 0.1" in result.stderr
    (failure,) = [json.loads(line) for line in (videos / "failures.jsonl").read_text().splitlines()]
    assert failure["source"] == f"train/{bad.name}" and failure["kind"] == "unreadable"

    with temporary_settings(updates={PREFECT_API_URL: prefect_api}), get_client(sync_client=True) as client:
        runs = client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["reencode"])))
        runs = [
            r
            for r in runs
            if r.name.startswith("reencode-kinetics-") and r.start_time and r.start_time >= started
        ]
        assert len(runs) == 1, [r.name for r in runs]
        (run,) = runs
        assert re.fullmatch(r"reencode-kinetics-\d{8}-\d{6}", run.name) and run.state.is_completed()
        logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run.id])))
        lines = [(log.name, log.message) for log in logs]
        assert ("pipelines.common", f"{failure['id']}: {failure['reason']}") in lines, lines[-20:]
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=["reencode-kinetics"]))
        )
        (artifact,) = [a for a in artifacts if a.flow_run_id == run.id]
        assert artifact.type == "markdown"
        text = artifact.data
        assert text.startswith("# reencode · kinetics\n")
        assert "| input | 16 |" in text and "| ok | 15 |" in text and "| failed | 1 |" in text
        assert "## Failures: 1" in text
        assert f"| {failure['id']} | train | unreadable | {failure['reason']} |" in text
