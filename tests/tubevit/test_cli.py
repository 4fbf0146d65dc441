"""``tubevit describe``: tokens, parameters and GMACs as JSON, and its argument errors; tube specs with
``"s2d": null``; ``export`` errors and every command's help examples."""

from __future__ import annotations

import json

import pytest

from tubevit.cli import describe, main
from tubevit.config.base import ConfigError, build
from tubevit.config.model import ModelConfig


def test_describe_base_paper_json(capsys):
    assert (
        main(
            ["describe", "--variant", "base", "--tubes", "paper", "--frames", "32", "--size", "224", "--json"]
        )
        == 0
    )
    info = json.loads(capsys.readouterr().out)
    assert info["tokens"] == {"per_tube": [98, 147, 98, 196], "total": 539}
    p = info["params"]
    assert p["total"] == p["tubes"] + p["encoder"] + p["heads"] and p["heads"] == p["pool"] + p["classifiers"]
    assert round(p["total"] / 1e6, 1) == 91.3 and p["tubes"] == 3456 * 768 + 2112
    dense = info["dense"]
    assert dense["tokens"] == {"per_tube": [3136], "total": 3136}  # 16 x 14 x 14 tubelets of 2x16x16
    assert dense["params"]["encoder"] == p["encoder"]
    # analytic encoder MACs per block: 12 N D^2 + 2 N^2 D
    enc = 12 * (12 * 539 * 768**2 + 2 * 539**2 * 768) / 1e9
    assert enc < info["gmacs"] < enc * 1.03
    assert info["gmac_ratio"] == pytest.approx(info["gmacs"] / dense["gmacs"]) and info["gmac_ratio"] < 0.2


def test_describe_inline_specs_and_table(capsys):
    spec = '[{"kernel": [1, 8, 8], "stride": [8, 8, 8]}, {"kernel": [4, 8, 8], "stride": [4, 16, 16], "s2d": [2, 1, 1]}]'
    assert (
        main(
            [
                "describe",
                "--variant",
                "nano",
                "--tubes",
                spec,
                "--frames",
                "8",
                "--size",
                "64",
                "--heads",
                "k=3",
            ]
        )
        == 0
    )
    out = capsys.readouterr().out
    assert "TubeViT-nano on 8x64x64" in out and "tokens per tube: [64, 32]" in out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--tubes", "nope"], "unknown tube set 'nope'"),
        (
            ["--tubes", '[{"kernel": [1, 8, 8], "stride": [8, 0, 8]}]'],
            "tubes[0].stride: every value must be >= 1",
        ),
        (["--tubes", "[{"], "--tubes is not valid JSON"),
        (["--heads", "imagenet"], "expected name=classes"),
    ],
)
def test_describe_argument_errors(args, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(["describe", "--variant", "nano", *args])
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_describe_no_tokens_is_an_error(capsys):
    assert main(["describe", "--variant", "nano", "--tubes", "paper", "--frames", "1", "--size", "8"]) == 2
    assert "no tube has a position on a 1x8x8 clip" in capsys.readouterr().err


# ---- tube specs as users write them: "s2d": null is the same as no s2d (issue 10 §6) -------------------


def test_describe_s2d_null_is_the_same_as_omitting_it(capsys):
    base = '[{"kernel": [1, 8, 8], "stride": [8, 8, 8]%s}, {"kernel": [4, 8, 8], "stride": [4, 16, 16], "s2d": [2, 1, 1]}]'
    outs = []
    for extra in ("", ', "s2d": null', ', "s2d": null, "offset": null, "learned_kernel": null'):
        args = ["describe", "--variant", "nano", "--tubes", base % extra, "--frames", "8", "--size", "64"]
        assert main([*args, "--heads", "k=3", "--json"]) == 0
        outs.append(json.loads(capsys.readouterr().out))
    assert outs[0] == outs[1] == outs[2]
    assert outs[1]["tubes"][0]["s2d"] == [1, 1, 1] and outs[1]["tokens"]["per_tube"] == [64, 32]
    info = describe("nano", [{"kernel": [1, 8, 8], "stride": [8, 8, 8], "s2d": None}], 8, 64, {"k": 3})
    assert info["tubes"][0] == {
        "kernel": [1, 8, 8],
        "stride": [8, 8, 8],
        "offset": [0, 0, 0],
        "s2d": [1, 1, 1],
    }


def test_params_s2d_null_is_the_same_as_omitting_it():
    yaml = pytest.importorskip("yaml")
    text = """
model:
  variant: nano
  tubes:
    - {kernel: [1, 8, 8], stride: [32, 8, 8], s2d: null}
    - {kernel: [8, 8, 8], stride: [8, 8, 8], offset: ~, s2d: [2, 1, 1]}
"""
    cfg = build(ModelConfig, yaml.safe_load(text)["model"], "model")
    plain = build(
        ModelConfig,
        {
            "variant": "nano",
            "tubes": [
                {"kernel": [1, 8, 8], "stride": [32, 8, 8]},
                {"kernel": [8, 8, 8], "stride": [8, 8, 8], "s2d": [2, 1, 1]},
            ],
        },
        "model",
    )
    assert cfg == plain and cfg.specs == plain.specs
    assert cfg.specs[0].s2d == (1, 1, 1) and cfg.specs[1].offset == (0, 0, 0)
    assert "s2d" not in cfg.tubes[0]  # the null is dropped, so config.json and hashes match the plain form
    # other nulls are still refused, naming the key
    with pytest.raises(ConfigError, match=r"tubes\[0\]\.kernel: expected 3 integers"):
        ModelConfig(tubes=[{"kernel": None, "stride": [8, 8, 8]}])
    with pytest.raises(ConfigError, match=r"tubes\[0\]\.s2d: expected 3 integers"):
        ModelConfig(tubes=[{"kernel": [1, 8, 8], "stride": [8, 8, 8], "s2d": "none"}])


# ---- export and help ------------------------------------------------------------------------------------


def test_export_errors_name_the_folder(tmp_path, capsys):
    assert main(["export", "--model", str(tmp_path / "absent"), "--out", str(tmp_path / "out")]) == 1
    assert f"tubevit export: {tmp_path / 'absent' / 'config.json'}: missing" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("command", "example"),
    [
        ("predict", "tubevit predict --model models/ssv2 clip.mp4"),
        ("export", "tubevit export --model"),
        ("tubes", "tubevit tubes --tubes paper --frames 32 --size 224 --out tubes.png"),
    ],
)
def test_help_shows_examples(command, example, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0 and example in capsys.readouterr().out
