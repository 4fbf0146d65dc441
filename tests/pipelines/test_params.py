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


def _check(*paths: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pipelines.params", "--check", *map(str, paths)],
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


def _malformed(tmp_path: Path, case: str, mutate) -> Path:
    data = read_yaml(PARAMS)
    mutate(data)
    path = tmp_path / case / "params.yaml"
    path.parent.mkdir()
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# (id, mutation of the valid embedded default, dotted key in the message, words of the reason). The first
# case of each kind also runs `python -m pipelines.params --check` in a subprocess; the others go through
# load_params_or_exit in-process (the same code path as every stage's main()).
MALFORMED = [
    # an unknown key
    ("unknown-nested", lambda d: _set(d, "reencode.crff", 20), "reencode.crff", "unknown key"),
    ("unknown-top-level", lambda d: _set(d, "modle", {"variant": "nano"}), "modle", "unknown key"),
    # recipes live in recipes.yaml (pipelines.profile), and the unused top-level seed is gone
    ("recipes-in-params", lambda d: _set(d, "recipes", {"paper": {}}), "recipes", "unknown key"),
    ("top-level-seed", lambda d: _set(d, "seed", 0), "seed", "unknown key"),
    (
        "unknown-dataset-key",
        lambda d: _set(d, "datasets.kinetics.fsp", 15),
        "datasets.kinetics.fsp",
        "unknown key",
    ),
    (
        "unknown-optim-key",
        lambda d: _set(d, "pretrain.optim.lrate", 0.1),
        "pretrain.optim.lrate",
        "unknown key",
    ),
    # a wrong type
    (
        "wrong-type-int",
        lambda d: _set(d, "reencode.crf", "high"),
        "reencode.crf",
        "expected an integer, got 'high'",
    ),
    (
        "wrong-type-float",
        lambda d: _set(d, "pretrain.optim.lr", "fast"),
        "pretrain.optim.lr",
        "expected a number, got 'fast'",
    ),
    (
        "wrong-type-bool",
        lambda d: _set(d, "datasets.charades.multilabel", "yes"),
        "datasets.charades.multilabel",
        "expected true or false",
    ),
    (
        "wrong-type-list",
        lambda d: _set(d, "datasets.ssv2.splits", "train"),
        "datasets.ssv2.splits",
        "expected a list",
    ),
    # a dataset referenced but not defined
    (
        "removed-dataset",
        lambda d: _delete(d, "datasets.imagenet"),
        "pretrain.datasets.imagenet",
        "'imagenet' is not defined under datasets",
    ),
    (
        "undefined-finetune",
        lambda d: _set(d, "finetune.hmdb", copy.deepcopy(d["finetune"]["ssv2"])),
        "finetune.hmdb",
        "'hmdb' is not defined under datasets",
    ),
    (
        "removed-finetune-dataset",
        lambda d: _delete(d, "datasets.charades"),
        "finetune.charades",
        "'charades' is not defined under datasets",
    ),
    (
        "unknown-pretrain-dataset",
        lambda d: _set(d, "pretrain.datasets.kinetcs", 1.0),
        "pretrain.datasets.kinetcs",
        "unknown dataset",
    ),
    (
        "undefined-pretrain-loader",
        lambda d: _set(d, "pretrain.loader.k700", {"frames": 16}),
        "pretrain.loader.k700",
        "'k700' is not in datasets",
    ),
    # an invalid tube spec
    (
        "tube-kernel",
        lambda d: _set(d, "model.tubes", [{"kernel": [4, 4], "stride": [16, 16, 16]}]),
        "model.tubes[0].kernel",
        "expected 3 integers",
    ),
    ("tube-name", lambda d: _set(d, "model.tubes", "papr"), "model.tubes", "unknown tube set 'papr'"),
    (
        "tube-s2d-stride",
        lambda d: _set(d, "model.tubes", [{"kernel": [4, 4, 4], "stride": [15, 16, 16], "s2d": [2, 1, 1]}]),
        "model.tubes[0].stride",
        "not divisible by its S2D factor 2",
    ),
    (
        "tube-offset",
        lambda d: _set(
            d, "model.tubes", [{"kernel": [4, 4, 4], "stride": [16, 16, 16], "offset": [-1, 0, 0]}]
        ),
        "model.tubes[0].offset",
        "must be >= 0",
    ),
    (
        "finetune-tubes",
        lambda d: _set(d, "finetune.charades.tubes", "charades_interpolatd"),
        "finetune.charades.tubes",
        "unknown tube set",
    ),
    # a negative fps
    ("negative-fps", lambda d: _set(d, "datasets.ssv2.fps", -24), "datasets.ssv2.fps", "must be > 0"),
    (
        "negative-synthetic-fps",
        lambda d: _set(d, "datasets.kinetics.synthetic.fps", -30),
        "datasets.kinetics.synthetic.fps",
        "must be > 0",
    ),
    # other cross-checks and ranges
    (
        "multilabel-mismatch",
        lambda d: _set(d, "finetune.charades.multilabel", False),
        "finetune.charades.multilabel",
        "must equal datasets.charades.multilabel (true)",
    ),
    ("bad-cron", lambda d: _set(d, "deploy.cron", "daily"), "deploy.cron", "expected 5 cron fields"),
]


@pytest.mark.parametrize(("case", "mutate", "key", "reason"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_params_stop_with_one_line_naming_the_key(tmp_path, capsys, case, mutate, key, reason):
    path = _malformed(tmp_path, case, mutate)
    with pytest.raises(ConfigError) as info:
        load_params(path)
    assert info.value.key == key
    assert reason in info.value.reason

    # what every stage's main() does: one stderr line, exit status 2
    with pytest.raises(SystemExit) as exit_info:
        load_params_or_exit(path)
    assert exit_info.value.code == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == f"{path}: {info.value}\n"
    assert captured.err.startswith(f"{path}: {key}: ")


def test_check_command_one_line_per_file_and_exit_status(tmp_path):
    """The command line, in a subprocess: one malformed file of each kind, and the two valid files."""
    kinds = ["unknown-nested", "wrong-type-int", "removed-dataset", "tube-kernel", "negative-fps"]
    cases = {m[0]: m for m in MALFORMED}
    bad = [(_malformed(tmp_path, kind, cases[kind][1]), cases[kind][2], cases[kind][3]) for kind in kinds]

    result = _check(PARAMS, MICRO, *(path for path, _, _ in bad))
    assert result.returncode == 2
    assert result.stdout.splitlines() == [f"{PARAMS}: ok", f"{MICRO}: ok"]
    lines = result.stderr.splitlines()
    assert len(lines) == len(bad), result.stderr
    for line, (path, key, reason) in zip(lines, bad, strict=True):
        assert line.startswith(f"{path}: {key}: "), line
        assert reason in line

    ok = _check(PARAMS)
    assert (ok.returncode, ok.stdout, ok.stderr) == (0, f"{PARAMS}: ok\n", "")


def test_duplicate_yaml_key_is_refused(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("datasets:\n  kinetics: {format: kinetics}\n  kinetics: {format: ssv2}\n")
    with pytest.raises(ConfigError, match=r'not valid YAML: line 3: found duplicate key "kinetics"'):
        read_yaml(path)


def test_yaml_1_2_floats_as_dvc_writes_them(tmp_path):
    """`dvc exp run -S pretrain.optim.lr=5e-5` writes `5e-05`: a float in YAML 1.2 (a string in 1.1)."""
    text = PARAMS.read_text().replace("lr: 1.0e-3", "lr: 5e-05", 1)
    assert "lr: 5e-05" in text
    path = tmp_path / "params.yaml"
    path.write_text(text)
    assert load_params(path).pretrain.optim.lr == 5e-05


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
    assert params.dataset("ssv2").format == "ssv2"
