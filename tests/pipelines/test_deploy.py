"""The Prefect deployments: a real `prefect server start`, the serve process of pipelines.deploy, runs
triggered through the API, observed to complete with their outputs, the server stopped by its pid."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipelines import server
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


@pytest.mark.slow
def test_deployments_run_dvc_repro_and_exp_run_through_the_api(tmp_path, workspace):
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment
    from prefect.settings import PREFECT_API_URL, temporary_settings

    t0 = time.monotonic()
    home = tmp_path / "prefect-home"
    info = server.start(home, port=server.find_free_port(), reuse_env=False)  # `prefect server start`
    assert not info.reused and info.pid and (home / "server.pid").read_text().strip() == str(info.pid)
    again = server.start(home, reuse_env=False)  # a healthy recorded server is reused, not restarted
    assert (again.reused, again.pid, again.url) == (True, info.pid, info.url)
    assert server.status(home) == again and server.healthy(info.url)
    # the runner polls for due runs every 10 s by default
    env = {**server.server_env(home), "PREFECT_API_URL": info.url, "PREFECT_RUNNER_POLL_FREQUENCY": "1"}
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed in finally
    serving = subprocess.Popen(
        [sys.executable, "-m", "pipelines.deploy", "--workspace", str(workspace)],
        cwd=ROOT,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        with temporary_settings(updates={PREFECT_API_URL: info.url}):
            with get_client(sync_client=True) as client:

                def registered():
                    try:
                        return client.read_deployment_by_name(
                            "dvc-repro/tubevit-repro"
                        ) and client.read_deployment_by_name("dvc-exp/tubevit-exp")
                    except Exception:
                        assert serving.poll() is None, (tmp_path / "serve.log").read_text()[-3000:]
                        return None

                print(f"server healthy after {time.monotonic() - t0:.1f} s")
                _wait_for(registered, 120, "the two deployments")
                print(f"deployments registered after {time.monotonic() - t0:.1f} s")
                repro = client.read_deployment_by_name("dvc-repro/tubevit-repro")
                crons = [s.schedule.cron for s in repro.schedules]
                assert crons == ["0 3 * * *"]  # deploy.cron of the params
                assert repro.schedules[0].schedule.timezone == "UTC"

            run = run_deployment("dvc-repro/tubevit-repro", timeout=180, poll_interval=1)
            assert run.state.is_completed(), (run.state, (tmp_path / "serve.log").read_text()[-3000:])
            print(f"repro run done after {time.monotonic() - t0:.1f} s")
            assert json.loads((workspace / "echo.json").read_text()) == {"seed": 0, "steps": 2}
            assert "echo" in (workspace / "dvc.lock").read_text()

            run = run_deployment(
                "dvc-exp/tubevit-exp",
                parameters={"set_params": {"pretrain.steps": 7}, "name": "steps7"},
                timeout=180,
                poll_interval=1,
            )
            assert run.state.is_completed(), (run.state, (tmp_path / "serve.log").read_text()[-3000:])
            print(f"exp run done after {time.monotonic() - t0:.1f} s")
            # dvc exp run leaves the experiment's results in the workspace and records the experiment
            assert json.loads((workspace / "echo.json").read_text()) == {"seed": 0, "steps": 7}
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
    finally:
        serving.send_signal(signal.SIGINT)
        try:
            serving.wait(timeout=30)
        except subprocess.TimeoutExpired:
            serving.kill()
            serving.wait()
        log.close()
        assert server.stop(home)  # by the pid in server.pid
    assert not (home / "server.pid").exists()
    with pytest.raises(ProcessLookupError):
        os.kill(info.pid, 0)
