"""The Prefect and command-line conventions of pipelines/common.py: flow run names, forwarded loggers, the
result artifact's markdown, the one "run without Prefect" flag, and `--help` examples on every command.
(Against a real server: tests/pipelines/test_deploy.py.)"""

from __future__ import annotations

import argparse
import importlib
import re
from pathlib import Path

import pytest

from pipelines.common import (
    add_no_flow_flag,
    artifact_key,
    forward_logs_to_prefect,
    read_json,
    result_markdown,
    write_failures_by_kind,
)

ROOT = Path(__file__).resolve().parents[2]
STAGES = ("download", "reencode", "shard", "pretrain", "finetune", "evaluate")


def test_forward_logs_adds_both_loggers_and_keeps_others():
    env = forward_logs_to_prefect({"PREFECT_LOGGING_EXTRA_LOGGERS": "tubevit, dask"})
    assert env["PREFECT_LOGGING_EXTRA_LOGGERS"] == "tubevit,dask,pipelines"
    assert env["PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW"] == "ignore"
    assert forward_logs_to_prefect({})["PREFECT_LOGGING_EXTRA_LOGGERS"] == "tubevit,pipelines"
    kept = forward_logs_to_prefect({"PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW": "warn"})
    assert kept["PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW"] == "warn"


def test_importing_pipelines_sets_the_loggers_for_this_process():
    import os

    import pipelines  # noqa: F401 - its import forwards the loggers

    names = os.environ["PREFECT_LOGGING_EXTRA_LOGGERS"].split(",")
    assert "tubevit" in names and "pipelines" in names


def test_result_markdown_tables():
    result = {"dataset": "ssv2", "ok": 15, "splits": {"train": {"ok": 7, "failed": 1}}, "ratio": [1, 2]}
    failures = [
        {"id": f"clip{i}", "split": "train", "kind": "unreadable", "reason": "bad | data"} for i in range(3)
    ]
    text = result_markdown("reencode · ssv2", result, failures, max_rows=2)
    lines = text.splitlines()
    assert lines[:4] == ["# reencode · ssv2", "", "| key | value |", "|---|---|"]
    assert lines[4:8] == [
        "| dataset | ssv2 |",
        "| ok | 15 |",
        "| splits.train.ok | 7 |",
        "| splits.train.failed | 1 |",
    ]
    assert "| ratio | [1, 2] |" in lines
    assert "## Failures: 3" in lines
    assert "| id | split | kind | reason |" in lines
    assert "| clip0 | train | unreadable | bad \\| data |" in lines  # a | in a value is escaped
    assert "| clip2 |" not in text and "... and 1 more (see failures.jsonl)" in text
    assert result_markdown("pretrain", {"steps": 2}).endswith("## Failures: 0\n")


def test_artifact_keys():
    assert artifact_key("reencode", "kinetics") == "reencode-kinetics"
    assert artifact_key("pretrain", None) == "pretrain"
    assert artifact_key("evaluate", "K400_Mini") == "evaluate-k400-mini"


def test_failures_by_kind_file(tmp_path):
    failed = [
        {"id": "a", "kind": "unreadable"},
        {"id": "b", "kind": "past_end"},
        {"id": "c", "kind": "unreadable"},
        {"id": "d", "reason": "no kind"},
    ]
    path = write_failures_by_kind(tmp_path, failed)
    assert path == tmp_path / "failures_by_kind.json"
    assert read_json(path) == [
        {"kind": "other", "count": 1},
        {"kind": "past_end", "count": 1},
        {"kind": "unreadable", "count": 2},
    ]
    assert read_json(write_failures_by_kind(tmp_path, [])) == []


def test_no_flow_flag_and_its_hidden_alias():
    parser = argparse.ArgumentParser()
    add_no_flow_flag(parser)
    assert parser.parse_args([]).no_flow is False
    assert parser.parse_args(["--no-flow"]).no_flow is True
    assert parser.parse_args(["--no-prefect"]).no_flow is True
    assert "--no-prefect" not in parser.format_help() and "--no-flow" in parser.format_help()


def _commands() -> list[str]:
    """Every ``python -m pipelines.<name>`` command: the modules with a ``main``."""
    return sorted(p.stem for p in (ROOT / "pipelines").glob("*.py") if "\ndef main(" in p.read_text())


def test_the_command_list_is_complete():
    assert _commands() == sorted([*STAGES, "demo", "deploy", "params", "profile", "server"]), (
        "a new command: add it to this test's expectations"
    )


@pytest.mark.parametrize("name", _commands())
def test_help_shows_usage_examples(name, capsys):
    module = importlib.import_module(f"pipelines.{name}")
    with pytest.raises(SystemExit) as info:
        module.main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: python -m pipelines.{name}")
    head, examples = text.split("\nexamples:\n", 1)
    lines = [line.strip() for line in examples.splitlines() if line.strip()]
    commands = [line for line in lines if line.startswith(("python -m pipelines.", "bash scripts/"))]
    assert len(commands) >= 2, examples  # examples, one per line (RawDescriptionHelpFormatter)
    if name in STAGES:
        assert f"python -m pipelines.{name} " in examples
        # the one flag name for "run without Prefect"; the old one still parses, unlisted
        assert "--no-flow" in head and "--no-prefect" not in text
        assert re.search(r"--no-flow\b", examples)


def test_every_stage_flow_is_named_per_run_and_training_flows_retry(monkeypatch):
    """Each stage's flow names its runs `<stage>-<dataset>-<UTC time>` (from the flow's dataset parameter)
    and the training flows retry once (they resume from their checkpoints)."""
    from prefect.runtime import flow_run

    flows = {
        "download": ("download_flow", "name"),
        "reencode": ("reencode_flow", "name"),
        "shard": ("shard_flow", "name"),
        "pretrain": ("pretrain_flow", None),
        "finetune": ("finetune_flow", "dataset"),
        "evaluate": ("evaluate_flow", "name"),
    }
    for stage, (attr, dataset_param) in flows.items():
        flow = getattr(importlib.import_module(f"pipelines.{stage}"), attr)
        assert flow.name == stage
        parameters = {"params": object(), "paths": {}} | ({dataset_param: "ssv2"} if dataset_param else {})
        assert set(parameters) - {"params", "paths"} <= set(flow.parameters.properties), stage
        monkeypatch.setitem(flow_run.FIELDS, "parameters", lambda parameters=parameters: parameters)
        expected = rf"{stage}-ssv2-\d{{8}}-\d{{6}}" if dataset_param else rf"{stage}-\d{{8}}-\d{{6}}"
        assert re.fullmatch(expected, flow.flow_run_name()), (stage, flow.flow_run_name())
        assert flow.retries == (1 if stage in ("pretrain", "finetune") else 0), stage


def test_run_name_format(monkeypatch):
    from prefect.runtime import flow_run

    from pipelines.common import run_name

    monkeypatch.setitem(flow_run.FIELDS, "parameters", lambda: {"name": "kinetics", "cfg": object()})
    assert re.fullmatch(r"reencode-kinetics-\d{8}-\d{6}", run_name("reencode")())
    assert re.fullmatch(r"pretrain-\d{8}-\d{6}", run_name("pretrain", None)())
    monkeypatch.setitem(flow_run.FIELDS, "parameters", lambda: {})  # no dataset given: stage and time
    assert re.fullmatch(r"shard-\d{8}-\d{6}", run_name("shard")())
