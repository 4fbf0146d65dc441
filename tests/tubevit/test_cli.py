"""``tubevit describe``: tokens, parameters and GMACs as JSON, and its argument errors."""

from __future__ import annotations

import json

import pytest

from tubevit.cli import main


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
