"""The DAG: one module per stage (a pure ``run`` + a thin ``main`` + a Prefect flow). See dvc.yaml."""

from pipelines.common import forward_logs_to_prefect

forward_logs_to_prefect()  # before Prefect is imported: pipelines.* and tubevit.* logs reach the UI
