#!/usr/bin/env bash
# The main command: set up what is missing, start (or reuse) the local Prefect server and, beside it, the
# deployment server (tubevit-repro on its cron, tubevit-exp), run the whole DAG (`dvc repro`) on the
# embedded default, and print where the metrics, plots, the UI and the pid files are.
#   bash scripts/demo.sh                # the DAG; a second run does nothing (DVC: nothing changed)
#   bash scripts/demo.sh --force        # rerun every stage
#   bash scripts/demo.sh --no-deploy    # without the deployment server
#   bash scripts/demo.sh --help         # every option, with examples
# Stop both servers afterwards with: .venv/bin/python -m pipelines.server stop
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_LOGGING_EXTRA_LOGGERS=tubevit,pipelines
exec python -m pipelines.demo "$@"
