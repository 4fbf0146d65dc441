"""ModelConfig: validation with errors naming the key, and build_model."""

from __future__ import annotations

import pytest
import torch

from tubevit.config.base import ConfigError, build, to_dict
from tubevit.config.model import ModelConfig, build_model
from tubevit.model.tubes import TubeSpec, get_tube_set


def test_defaults_build_the_embedded_nano_model():
    cfg = build(ModelConfig, {}, "model")
    assert (cfg.variant, cfg.tubes, cfg.head_mlp) == ("nano", "embedded", False)
    model = build_model(cfg, {"kinetics": 12, "imagenet": 10})
    assert model.embed_dim == 64 and len(model.blocks) == 4 and model.tubes == get_tube_set("embedded")
    assert model(torch.randn(1, 3, 16, 64, 64), "kinetics").shape == (1, 12)


def test_tubes_written_out_in_full():
    specs = [
        {"kernel": [1, 8, 8], "stride": [8, 8, 8]},
        {"kernel": [4, 8, 8], "stride": [4, 16, 16], "offset": [0, 4, 4], "s2d": [2, 1, 1]},
    ]
    cfg = build(ModelConfig, {"variant": "tiny", "tubes": specs, "drop_path_rate": 0.1}, "model")
    assert cfg.specs == (
        TubeSpec((1, 8, 8), (8, 8, 8)),
        TubeSpec((4, 8, 8), (4, 16, 16), (0, 4, 4), (2, 1, 1)),
    )
    assert to_dict(cfg)["tubes"] == specs
    model = build_model(cfg, {"k": 3}, head_dropout=0.2, tubes="paper")
    assert model.tubes == get_tube_set("paper") and model.head_drop.p == 0.2
    assert model.blocks[-1].drop_path1.p == pytest.approx(0.1)


@pytest.mark.parametrize(
    ("data", "key", "message"),
    [
        ({"variant": "mega"}, "model.variant", "must be one of 'nano'"),
        ({"tubes": "nope"}, "model.tubes", "unknown tube set 'nope'"),
        (
            {
                "tubes": [
                    {"kernel": [1, 8, 8], "stride": [8, 8, 8]},
                    {"kernel": [2, 2, 2], "stride": [3, 2, 0]},
                ]
            },
            "model.tubes[1].stride",
            ">= 1",
        ),
        (
            {"tubes": [{"kernel": [1, 8, 8], "stride": [8, 8, 8], "bogus": 1}]},
            "model.tubes[0].bogus",
            "unknown key",
        ),
        (
            {"tubes": [{"kernel": [4, 4, 4], "stride": [3, 8, 8], "s2d": [2, 1, 1]}]},
            "model.tubes[0].stride",
            "not divisible by its S2D factor",
        ),
        (
            {"tubes": [{"kernel": [4, 4, 4], "stride": [9, 8, 8], "s2d": [3, 1, 1]}], "variant": "nano"},
            "model.tubes[0].s2d",
            "S2D factor 3 of tube",
        ),
        ({"head_dropout": 1.5}, "model.head_dropout", "must be in [0, 1)"),
        ({"drop_path_rate": "x"}, "model.drop_path_rate", "expected a number"),
        ({"depth": 3}, "model.depth", "unknown key"),
    ],
)
def test_errors_name_the_key(data, key, message):
    with pytest.raises(ConfigError) as info:
        build(ModelConfig, data, "model")
    assert info.value.key == key
    assert message in str(info.value)
    assert str(info.value).startswith(key)
