"""The main command's body (``bash scripts/demo.sh``): run the whole DAG on the embedded default.

1. Start or reuse the local Prefect server (:mod:`pipelines.server`), so that every stage's flow shows in
   the UI, and export ``PREFECT_API_URL`` and ``PREFECT_LOGGING_EXTRA_LOGGERS=tubevit,pipelines`` to the
   stages.
2. Start or reuse the deployment server (``python -m pipelines.deploy start``: ``tubevit-repro`` on its
   cron and ``tubevit-exp``) in the background, its pid in ``.prefect/deploy.pid``, so that the UI's
   Deployments page lists both. ``--no-deploy`` skips it.
3. ``dvc --wait-for-lock repro`` (DVC reruns only what changed), its output streamed to the terminal.
4. Write each stage's wall time to ``metrics/timing/stages.json`` (written outside DVC: no stage depends
   on it, and it is not a DVC metric), print the times and ``dvc metrics show`` (the evaluation metrics)
   and where the plots, the UI and the stop commands are.

``python -m pipelines.demo [--force] [--no-server] [--no-deploy] [targets ...]``
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterable
from pathlib import Path

from pipelines import server
from pipelines.common import forward_logs_to_prefect, read_json, write_json_atomic

__all__ = ["main", "run_repro", "stage_times"]

ROOT = Path(__file__).resolve().parents[1]
TIMING = Path("metrics") / "timing" / "stages.json"  # beside the stages' own timing files


def stage_times(events: Iterable[tuple[float, str]], end: float) -> dict[str, float]:
    """Wall seconds per stage from ``dvc repro``'s output lines, each with the time it was read.

    A stage runs from its ``Running stage '<name>':`` line to the next stage's line (run or skipped) or
    ``end``. Skipped stages (``Stage '<name>' didn't change, skipping``) are not listed.
    """
    times: dict[str, float] = {}
    current: tuple[str, float] | None = None
    for t, line in events:
        started = line.startswith("Running stage '")
        skipped = line.startswith("Stage '") and "didn't change" in line
        if (started or skipped) and current is not None:
            times[current[0]] = round(t - current[1], 3)
            current = None
        if started:
            current = (line.split("'")[1], t)
    if current is not None:
        times[current[0]] = round(end - current[1], 3)
    return times


def stage_env(api_url: str | None) -> dict[str, str]:
    """The environment of ``dvc repro``: this venv first on PATH (stage commands say ``python``), the
    Prefect server's URL, and the ``tubevit.*`` and ``pipelines.*`` logs forwarded to the UI."""
    env = forward_logs_to_prefect(dict(os.environ))
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    if api_url:
        env["PREFECT_API_URL"] = api_url
    return env


def run_repro(
    args: list[str], env: dict[str, str], cwd: Path, out=sys.stdout
) -> tuple[int, dict[str, float]]:
    """Run ``dvc --wait-for-lock repro <args>``, echoing its output; returns (exit status, stage times)."""
    cmd = [sys.executable, "-m", "dvc", "--wait-for-lock", "repro", *args]
    events: list[tuple[float, str]] = []
    with subprocess.Popen(
        cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
    ) as process:
        assert process.stdout is not None
        for line in process.stdout:
            events.append((time.monotonic(), line.rstrip("\n")))
            out.write(line)
            out.flush()
    return process.returncode, stage_times(events, time.monotonic())


def write_timing(path: Path, times: dict[str, float], total: float, args: list[str]) -> dict:
    """Merge this run's stage times into ``path`` (stages that did not run keep their last time)."""
    old = read_json(path) if path.exists() else {}
    stages = dict(old.get("stages_s", {}))
    stages.update(times)
    record = {
        "stages_s": dict(sorted(stages.items())),
        "last_run": {"stages_s": times, "total_s": round(total, 3), "args": args},
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
    }
    write_json_atomic(path, record)
    return record


EPILOG = """\
examples:
  bash scripts/demo.sh                          # this command with the venv set up: the whole DAG
  python -m pipelines.demo                      # the same, in an active environment
  python -m pipelines.demo --force              # rerun every stage
  python -m pipelines.demo evaluate@ssv2        # one stage (and what it needs)
  python -m pipelines.demo --no-deploy          # no deployment server (Deployments page stays empty)
  python -m pipelines.demo --no-server          # no Prefect server either (each stage starts its own)
stop the background servers: python -m pipelines.server stop   (stops the deployment server too)
"""


def start_servers(
    no_server: bool = False,
    no_deploy: bool = False,
    home: Path = server.DEFAULT_HOME,
    port: int | None = None,
    workspace: Path = ROOT,
) -> str | None:
    """Start (or reuse) the Prefect server and the deployment server for ``workspace``, with their pid files
    under ``home``; print where they are. Returns the API URL, or None with ``no_server``.

    Raises:
        RuntimeError: a server did not start (the message names which and ends with its log).
    """
    if no_server:
        return None
    info = server.start(home, port=port)
    pid = f", pid {info.pid} in {info.home / 'server.pid'}" if info.pid else ""
    print(f"[demo] Prefect UI: {info.ui} (API {info.url}{pid})", flush=True)
    if not no_deploy:
        from pipelines import deploy  # imports prefect: only when it is used

        served = deploy.start(info.url, workspace, info.home)
        how = "reusing" if served.reused else "started"
        print(
            f"[demo] deployments tubevit-repro (cron) and tubevit-exp: {info.ui}/deployments "
            f"(server {how}, pid {served.pid} in {info.home / 'deploy.pid'}, log {served.log})",
            flush=True,
        )
    return info.url


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pipelines.demo",
        description=__doc__.split("\n")[0],
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("targets", nargs="*", help="dvc repro targets (default: the whole DAG)")
    parser.add_argument("--force", action="store_true", help="rerun every stage (dvc repro --force)")
    parser.add_argument("--no-server", action="store_true", help="no Prefect server (flows start their own)")
    parser.add_argument(
        "--no-deploy", action="store_true", help="do not start the deployment server (pipelines.deploy)"
    )
    args = parser.parse_args(argv)

    try:
        api_url = start_servers(args.no_server, args.no_deploy)
    except RuntimeError as exc:
        print(f"[demo] {exc}", file=sys.stderr)
        return 1
    env = stage_env(api_url)
    repro_args = [*(["--force"] if args.force else []), *args.targets]
    start = time.monotonic()
    status, times = run_repro(repro_args, env, ROOT)
    total = time.monotonic() - start
    if times:
        write_timing(ROOT / TIMING, times, total, repro_args)
    print(f"[demo] dvc repro exited with status {status} after {total:.0f} s", flush=True)
    for name, seconds in times.items():
        print(f"[demo]   {name:<22} {seconds:8.1f} s")
    if status:
        return status
    subprocess.run([sys.executable, "-m", "dvc", "metrics", "show"], cwd=ROOT, env=env, check=False)
    print(
        "[demo] metrics: metrics/*.json (`dvc metrics show`); plots: plots/ (`dvc plots show`, then open "
        "dvc_plots/index.html); stage times: metrics/timing/stages.json"
    )
    if api_url:
        ui = api_url.removesuffix("/api")
        print(f"[demo] flow runs: {ui}/runs; deployments: {ui}/deployments; artifacts: {ui}/artifacts")
        print("[demo] stop the servers: python -m pipelines.server stop (the deployment server too)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
