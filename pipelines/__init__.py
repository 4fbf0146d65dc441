"""The DAG: one module per stage (a pure ``run`` + a thin ``main`` + a Prefect flow). See dvc.yaml."""
