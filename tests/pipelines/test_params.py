"""params.yaml validation: a malformed file stops with exactly one stderr line naming the dotted key."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipelines.params import ConfigError, Params, load_params, load_params_or_exit, read_yaml
from tubevit.config.base import build
from tubevit.config.data import DatasetConfig

ROOT = Path(__file__).resolve().parents[2]
PARAMS = ROOT / "params.yaml"
MICRO = ROOT / "tests" / "fixtures" / "params-micro.yaml"


def _set(data: dict, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for name in parents:
        data = data[name]
    data[last] = value


def _delete(data: dict, dotted: str) -> None:
    *parents, last = dotted.split(".")
    for name in parents:
        data = data[name]
    del data[last]


def _check(path: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.params", "--check", str(path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_embedded_default_and_micro_params_are_valid():
    for path in (PARAMS, MICRO):
        params = load_params(path)
        assert isinstance(params, Params)
        assert set(params.datasets) == {"kinetics", "charades", "ssv2", "imagenet"}
        assert isinstance(params.datasets["kinetics"], DatasetConfig)
        assert params.datasets["kinetics"].fps == 15.0 and params.datasets["charades"].multilabel
        # the plain form reads back to an equal config
        assert build(Params, params.to_dict()) == params


def test_check_command_accepts_params_yaml(tmp_path):
    result = _check(PARAMS)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"{PARAMS}: ok"
    assert result.stderr == ""


# (mutation of the valid embedded default, dotted key in the message, words of the reason)
MALFORMED = [
    ("unknown-top-level", lambda d: _set(d, "modle", {"variant": "nano"}), "modle", "unknown key"),
    ("unknown-nested", lambda d: _set(d, "reencode.crff", 20), "reencode.crff", "unknown key"),
    (
        "unknown-dataset-key",
        lambda d: _set(d, "datasets.kinetics.fsp", 15),
        "datasets.kinetics.fsp",
        "unknown key",
    ),
    (
        "wrong-type-int",
        lambda d: _set(d, "reencode.crf", "high"),
        "reencode.crf",
        "expected an integer, got 'high'",
    ),
    (
        "wrong-type-float",
        lambda d: _set(d, "datasets.ssv2.fps", "fast"),
        "datasets.ssv2.fps",
        "expected a number",
    ),
    (
        "wrong-type-bool",
        lambda d: _set(d, "datasets.charades.multilabel", "yes"),
        "datasets.charades.multilabel",
        "expected true or false",
    ),
    ("negative-fps", lambda d: _set(d, "datasets.ssv2.fps", -24), "datasets.ssv2.fps", "must be > 0"),
    (
        "negative-synthetic-fps",
        lambda d: _set(d, "datasets.kinetics.synthetic.fps", -30),
        "datasets.kinetics.synthetic.fps",
        "must be > 0",
    ),
    (
        "undefined-pretrain-dataset",
        lambda d: _set(d, "pretrain.datasets.kinetcs", 1.0),
        "pretrain.datasets.kinetcs",
        "'kinetcs' is not defined under datasets",
    ),
    (
        "undefined-pretrain-loader",
        lambda d: _set(d, "pretrain.loader.k700", {"frames": 16}),
        "pretrain.loader.k700",
        "'k700' is not defined under datasets",
    ),
    (
        "undefined-finetune",
        lambda d: _set(d, "finetune.hmdb", copy.deepcopy(d["finetune"]["ssv2"])),
        "finetune.hmdb",
        "'hmdb' is not defined under datasets",
    ),
    (
        "removed-dataset",
        lambda d: _delete(d, "datasets.charades"),
        "finetune.charades",
        "'charades' is not defined under datasets",
    ),
    (
        "undefined-recipe-dataset",
        lambda d: _set(d, "recipes.paper.k400", d["recipes"]["paper"]["kinetics"]),
        "recipes.paper.k400",
        "'k400' is not defined",
    ),
    ("bad-cron", lambda d: _set(d, "deploy.cron", "daily"), "deploy.cron", "expected 5 cron fields"),
]


@pytest.mark.parametrize(
    ("mutate", "key", "reason"), [m[1:] for m in MALFORMED], ids=[m[0] for m in MALFORMED]
)
def test_malformed_params_stop_with_one_line_naming_the_key(tmp_path, mutate, key, reason):
    data = yaml.safe_load(PARAMS.read_text())
    mutate(data)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))

    with pytest.raises(ConfigError) as info:
        load_params(path)
    assert info.value.key == key
    assert reason in info.value.reason

    result = _check(path)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"{path}: {key}: "), lines[0]
    assert reason in lines[0]


def test_duplicate_yaml_key_is_refused(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("datasets:\n  kinetics: {format: kinetics}\n  kinetics: {format: ssv2}\n")
    with pytest.raises(ConfigError, match=r"duplicate key 'kinetics' \(line 3\)"):
        read_yaml(path)


def test_missing_file_and_undefined_stage_dataset_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        load_params_or_exit(tmp_path / "nope.yaml")
    assert info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"{tmp_path / 'nope.yaml'}: cannot read the file")

    with pytest.raises(SystemExit) as info:
        load_params_or_exit(PARAMS, dataset="k400")
    assert info.value.code == 2
    err = capsys.readouterr().err.splitlines()
    assert err == [
        f"{PARAMS}: datasets.k400: dataset 'k400' is not defined (defined: kinetics, charades, ssv2, imagenet)"
    ]

    params = load_params_or_exit(PARAMS, dataset="ssv2")
    assert params.dataset("ssv2").fps == 24.0
