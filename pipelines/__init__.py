"""The DAG: one module per stage (a pure ``run`` + a thin ``main`` + a Prefect flow). See dvc.yaml."""

import os

# Before torch loads OpenMP (libgomp reads it once): threads waiting at a barrier sleep instead of spinning,
# so a training stage that uses every core does not stall when the Prefect server or another process takes
# a core for a moment (pipelines.training.configure_threads). An explicit value in the environment wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from pipelines.common import forward_logs_to_prefect

forward_logs_to_prefect()  # before Prefect is imported: pipelines.* and tubevit.* logs reach the UI
