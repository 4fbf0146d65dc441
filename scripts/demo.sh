#!/usr/bin/env bash
# The main command: set up what is missing, start (or reuse) the local Prefect server, run the whole DAG
# (`dvc repro`) on the embedded default, and print where the metrics, plots and the UI are.
#   bash scripts/demo.sh            # the DAG; a second run does nothing (DVC: nothing changed)
#   bash scripts/demo.sh --force    # rerun every stage
# Stop the Prefect server afterwards with: .venv/bin/python -m pipelines.server stop
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PATH="$PWD/.venv/bin:$PATH"
export PREFECT_SERVER_ANALYTICS_ENABLED=false
export PREFECT_LOGGING_EXTRA_LOGGERS=tubevit
exec python -m pipelines.demo "$@"
