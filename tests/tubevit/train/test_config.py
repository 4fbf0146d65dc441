"""The training configs build from params.yaml's sections and refuse bad values, naming the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tubevit.config.base import ConfigError, build
from tubevit.config.data import LoaderConfig
from tubevit.config.train import EvaluateConfig, FinetuneConfig, OptimConfig, PretrainConfig

PARAMS = Path(__file__).parents[3] / "params.yaml"


def test_params_yaml_sections_build():
    params = yaml.safe_load(PARAMS.read_text())
    pre = build(PretrainConfig, params["pretrain"], "pretrain")
    assert set(pre.datasets) == set(pre.loader)
    assert all(isinstance(v, LoaderConfig) for v in pre.loader.values())
    assert isinstance(pre.optim, OptimConfig)
    assert pre.optim.betas == tuple(params["pretrain"]["optim"]["betas"])
    assert pre.steps == params["pretrain"]["steps"]
    for name, section in params["finetune"].items():
        ft = build(FinetuneConfig, section, f"finetune.{name}")
        assert ft.steps == section["steps"]
        assert ft.dropout == section.get("dropout", 0.0)
    ev = build(EvaluateConfig, params["evaluate"], "evaluate")
    assert ev.temporal_views == params["evaluate"]["temporal_views"]


def test_defaults_and_types():
    pre = build(
        PretrainConfig, {"datasets": {"kinetics": 2.0}, "loader": {"kinetics": {"frames": 8}}}, "pretrain"
    )
    assert pre.datasets == {"kinetics": 2.0}
    assert pre.loader["kinetics"].frames == 8
    assert pre.optim == OptimConfig()
    assert (pre.init_from, pre.tubes_from, pre.scale_from_layer, pre.freeze_before) == (None, None, 0, None)
    scaled = build(
        PretrainConfig,
        {"init_from": "vit_h.pth", "tubes_from": "models/small.pt", "scale_from_layer": 26},
        "pretrain",
    )
    assert (scaled.scale_from_layer, scaled.freeze_before, scaled.width_map, scaled.gated) == (
        26,
        None,
        "auto",
        True,
    )
    assert (pre.precision, pre.grad_checkpointing, pre.compile) == ("auto", False, False)
    ft = build(FinetuneConfig, {"tubes": "embedded_interpolated", "multilabel": True}, "finetune.charades")
    assert (ft.precision, ft.grad_checkpointing) == ("auto", False)
    fast = build(FinetuneConfig, {"precision": "fp16", "grad_checkpointing": True}, "finetune.ssv2")
    assert (fast.precision, fast.grad_checkpointing) == ("fp16", True)
    assert ft.tubes == "embedded_interpolated" and ft.multilabel and ft.init == "pretrain"


@pytest.mark.parametrize(
    ("cls", "data", "key", "reason"),
    [
        (OptimConfig, {"lr": 0}, "pretrain.optim.lr", "must be > 0"),
        (OptimConfig, {"wd_mode": "sgd"}, "pretrain.optim.wd_mode", "must be one of"),
        (OptimConfig, {"betas": [0.9, 1.0]}, "pretrain.optim.betas[1]", "must be in [0, 1)"),
        (OptimConfig, {"clip_grad": -1}, "pretrain.optim.clip_grad", "must be >= 0"),
        (PretrainConfig, {"steps": 0}, "pretrain.steps", "must be >= 1"),
        (PretrainConfig, {"accum_steps": 0}, "pretrain.accum_steps", "must be >= 1"),
        (PretrainConfig, {"label_smoothing": 1.0}, "pretrain.label_smoothing", "must be in [0, 1)"),
        (PretrainConfig, {"datasets": {"kinetics": 1.0}}, "pretrain.loader.imagenet", "not in datasets"),
        (
            PretrainConfig,
            {"datasets": {"kinetics": 0.0}, "loader": {"kinetics": {}}},
            "pretrain.datasets.kinetics",
            "weight must be > 0",
        ),
        (
            PretrainConfig,
            {"datasets": {"ucf": 1.0}, "loader": {"ucf": {}}},
            "pretrain.datasets.ucf",
            "unknown dataset",
        ),
        (PretrainConfig, {"scale_from_layer": 4}, "pretrain.init_from", "needs init_from"),
        (
            PretrainConfig,
            {"scale_from_layer": 4, "init_from": "a"},
            "pretrain.tubes_from",
            "needs tubes_from",
        ),
        (PretrainConfig, {"tubes_from": "a"}, "pretrain.tubes_from", "only used by image-to-video scaling"),
        (
            PretrainConfig,
            {"freeze_before": 2},
            "pretrain.freeze_before",
            "only used by image-to-video scaling",
        ),
        (
            PretrainConfig,
            {"scale_from_layer": 4, "init_from": "a", "tubes_from": "b", "freeze_before": 5},
            "pretrain.freeze_before",
            "must be in [0, scale_from_layer=4], got 5",
        ),
        (PretrainConfig, {"width_map": "pca"}, "pretrain.width_map", "must be one of"),
        (
            PretrainConfig,
            {"steps": 10, "optim": {"warmup_steps": 20}},
            "pretrain.optim.warmup_steps",
            "must be <= steps",
        ),
        (PretrainConfig, {"device": "tpu"}, "pretrain.device", "must be one of"),
        (PretrainConfig, {"precision": "fp8"}, "pretrain.precision", "must be one of"),
        (FinetuneConfig, {"precision": "half"}, "pretrain.precision", "must be one of"),
        (PretrainConfig, {"epochs": 3}, "pretrain.epochs", "unknown key"),
        (FinetuneConfig, {"multilabel": True, "mixup": 0.3}, "pretrain.mixup", "single-label"),
        (FinetuneConfig, {"dropout": 1.5}, "pretrain.dropout", "must be in [0, 1)"),
        (EvaluateConfig, {"spatial_views": 2}, "pretrain.spatial_views", "must be 1 or 3"),
        (EvaluateConfig, {"charades_aggregate": "median"}, "pretrain.charades_aggregate", "must be one of"),
    ],
)
def test_bad_values_name_the_key(cls, data, key, reason):
    section = "pretrain.optim" if cls is OptimConfig else "pretrain"
    with pytest.raises(ConfigError) as err:
        build(cls, data, section)
    assert err.value.key == key
    assert reason in str(err.value)
    assert str(err.value).startswith(key)
