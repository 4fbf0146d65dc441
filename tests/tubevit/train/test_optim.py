"""Parameter groups, the three weight-decay modes and the warmup + cosine schedule."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from tubevit.config.train import OptimConfig
from tubevit.train.optim import build_optimizer, build_schedule, lr_factor, param_groups

from .helpers import StandIn


def test_param_groups_exclude_norms_biases_probe_and_frozen():
    model = StandIn()
    model.stem2d.weight.requires_grad_(False)  # frozen: in no group
    decay, plain = param_groups(model, 0.1)
    assert decay["weight_decay"] == 0.1 and plain["weight_decay"] == 0.0
    assert sorted(decay["names"]) == sorted(
        ["stem3d.weight", "mlp.0.weight", "heads.kinetics.weight", "heads.imagenet.weight"]
    )
    assert "probe" in plain["names"] and "norm.weight" in plain["names"] and "norm.bias" in plain["names"]
    assert all("bias" in n or "norm" in n or n == "probe" for n in plain["names"])
    assert "stem2d.weight" not in decay["names"] + plain["names"]
    assert {id(p) for p in decay["params"]} == {
        id(p) for n, p in model.named_parameters() if n in decay["names"]
    }


def test_param_groups_use_no_weight_decay_and_1d():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.ones(3, 3))
            self.alpha = nn.Parameter(torch.zeros(()))  # scalar gate: 0-D
            self.scale = nn.Parameter(torch.ones(3))  # 1-D
            self.table = nn.Parameter(torch.ones(2, 3))

        def no_weight_decay(self):
            return {"table"}

    decay, plain = param_groups(M(), 0.5)
    assert decay["names"] == ["w"]
    assert plain["names"] == ["alpha", "scale", "table"]


def test_real_model_groups_match_its_own():
    from tubevit.model.tubevit import create_model

    model = create_model("nano", "embedded", {"kinetics": 5})
    decay, plain = param_groups(model, 0.1)
    skip = model.no_weight_decay()
    expected = {id(p) for n, p in model.named_parameters() if p.ndim >= 2 and n not in skip}
    assert {id(p) for p in decay["params"]} == expected
    assert "pool.probe" in plain["names"]


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        # zero gradient: Adam's own update is 0, only the decay moves the weight
        ("adamw", 1.0 - 0.1 * 0.01),  # lr * wd
        ("decoupled_unscaled", 1.0 - 0.01),  # wd * schedule factor (1 after warmup 0)
        ("l2", 1.0 - 0.1),  # grad = wd * p; Adam's first step moves by lr * g / |g|
    ],
)
def test_weight_decay_modes(mode, expected):
    model = nn.Linear(4, 4, bias=False)
    nn.init.ones_(model.weight)
    opt = build_optimizer(model, OptimConfig(lr=0.1, weight_decay=0.01, wd_mode=mode, warmup_steps=0))
    assert isinstance(opt, torch.optim.Adam if mode == "l2" else torch.optim.AdamW)
    model.weight.grad = torch.zeros_like(model.weight)
    opt.step()
    torch.testing.assert_close(model.weight, torch.full((4, 4), expected), rtol=0, atol=1e-6)


def test_decoupled_unscaled_follows_schedule_not_base_lr():
    model = nn.Linear(2, 2, bias=False)
    nn.init.ones_(model.weight)
    cfg = OptimConfig(lr=1e-4, weight_decay=0.01, wd_mode="decoupled_unscaled", warmup_steps=4)
    opt = build_optimizer(model, cfg)
    sched = build_schedule(opt, cfg, total_steps=10)
    model.weight.grad = torch.zeros_like(model.weight)
    opt.step()  # step 0: factor 1/4
    torch.testing.assert_close(model.weight, torch.full((2, 2), 1 - 0.01 / 4), rtol=0, atol=1e-7)
    sched.step()


@pytest.mark.parametrize("mode", ["adamw", "decoupled_unscaled", "l2"])
def test_cpu_optimizer_is_foreach_and_bitwise_equal_to_the_per_parameter_loop(mode):
    """On the CPU the optimiser is the multi-tensor (foreach) Adam(W): not fused, and after several steps
    of varying gradients its weights equal, bit for bit, those of torch's per-parameter implementation."""
    cfg = OptimConfig(lr=1e-2, weight_decay=0.05, wd_mode=mode, warmup_steps=0)
    models = [nn.Sequential(nn.Linear(5, 7), nn.LayerNorm(7), nn.Linear(7, 3)) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    start = models[0][0].weight.detach().clone()
    fast = build_optimizer(models[0], cfg)
    assert fast.defaults["foreach"] is True and not fast.defaults["fused"]
    cls = torch.optim.Adam if mode == "l2" else torch.optim.AdamW
    slow = cls(
        param_groups(models[1], fast.param_groups[0]["weight_decay"]),
        lr=cfg.lr,
        betas=cfg.betas,
        eps=cfg.eps,
        foreach=False,
    )
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        grads = [torch.randn(p.shape, generator=gen) for p in models[0].parameters()]
        for model, opt in zip(models, (fast, slow), strict=True):
            for p, g in zip(model.parameters(), grads, strict=True):
                p.grad = g.clone()
            opt.step()
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        assert torch.equal(a, b)
    assert (models[0][0].weight - start).abs().min() > 0  # every weight moved


def test_no_trainable_parameters_is_an_error():
    model = nn.Linear(2, 2)
    model.requires_grad_(False)
    with pytest.raises(ValueError, match="Linear: no trainable parameters"):
        build_optimizer(model, OptimConfig())


def test_lr_factor_warmup_then_cosine():
    assert [lr_factor(s, 4, 12) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, 4, 12) == 1.0
    assert lr_factor(8, 4, 12) == pytest.approx(0.5)  # halfway through the cosine
    assert lr_factor(11, 4, 12) == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 8)))
    assert lr_factor(12, 4, 12) == pytest.approx(0.0)
    assert lr_factor(0, 0, 10) == 1.0  # no warmup


def test_schedule_drives_optimizer_lr():
    model = nn.Linear(2, 2)
    cfg = OptimConfig(lr=0.2, warmup_steps=2)
    opt = build_optimizer(model, cfg)
    sched = build_schedule(opt, cfg, total_steps=6)
    lrs = []
    for _ in range(6):
        lrs.append(opt.param_groups[0]["lr"])
        assert opt.param_groups[1]["lr"] == lrs[-1]
        opt.step()
        sched.step()
    expected = [0.2 * lr_factor(s, 2, 6) for s in range(6)]
    assert lrs == pytest.approx(expected)
    assert lrs[:3] == pytest.approx([0.1, 0.2, 0.2])
