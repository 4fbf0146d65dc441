"""Image-ViT weight conversion (timm, torchvision layouts) and image-to-video scaling (paper §3.6)."""

from __future__ import annotations

import copy

import pytest
import timm
import torch
import torchvision

from tubevit.model.convert import (
    ConversionError,
    inflate_kernel,
    load_image_vit,
    read_state_dict,
    scale_image_to_video,
)
from tubevit.model.tubes import TubeSpec, token_counts
from tubevit.model.tubevit import create_model
from tubevit.model.vit import GatedSkip


def test_timm_vit_b_state_dict_loads():
    torch.manual_seed(0)
    sd = timm.create_model("vit_base_patch16_224", pretrained=False).state_dict()  # random init, no download
    with torch.device("meta"):
        model = create_model("base", "paper", {"kinetics": 600})
    model.to_empty(device="cpu")
    report = load_image_vit(model, sd)
    assert sorted(report.dropped) == ["cls_token", "head.bias", "head.weight", "pos_embed"]
    own = model.state_dict()
    encoder = [k for k in own if k.startswith(("blocks.", "norm."))]
    assert len(encoder) == 12 * 12 + 2 and set(encoder) <= set(report.copied)
    for k in encoder:
        assert torch.equal(own[k], sd[k]), k
    # the 1x16x16 tube is the patch embedding, exactly
    assert torch.equal(own["tokenizer.tubes.3.proj.weight"], sd["patch_embed.proj.weight"].unsqueeze(2))
    assert torch.equal(own["tokenizer.tubes.3.proj.bias"], sd["patch_embed.proj.bias"])
    # the 3D tubes: spatially resized, inflated over t (divided by t); S2D tubes take the first D/S rows
    w8 = inflate_kernel(sd["patch_embed.proj.weight"][:384], (8, 8, 8))
    assert torch.equal(own["tokenizer.tubes.0.proj.weight"], w8)
    assert sorted(report.inflated) == [
        f"tokenizer.tubes.{i}.proj.{p}" for i in range(3) for p in ("bias", "weight")
    ]
    assert set(report.kept_init) == {k for k in own if k.startswith(("pool.", "heads."))}


def test_timm_blocks_compute_like_timm():
    torch.manual_seed(0)
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2, img_size=32)
    model = create_model("tiny", "paper", {"k": 2}, depth=2)
    load_image_vit(model, ref.state_dict())
    x = torch.randn(2, 10, 192)
    with torch.no_grad():
        for ours, theirs in zip(model.blocks, ref.blocks, strict=True):
            torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


def test_torchvision_layout_loads_and_computes_alike():
    torch.manual_seed(0)
    tv = torchvision.models.VisionTransformer(
        image_size=32, patch_size=16, num_layers=2, num_heads=4, hidden_dim=64, mlp_dim=256
    )
    sd = tv.state_dict()
    model = create_model("nano", "paper", {"k": 2}, depth=2)
    report = load_image_vit(model, sd)
    assert sorted(report.dropped) == [
        "class_token",
        "encoder.pos_embedding",
        "heads.head.bias",
        "heads.head.weight",
    ]
    own = model.state_dict()
    assert torch.equal(
        own["blocks.1.attn.qkv.weight"], sd["encoder.layers.encoder_layer_1.self_attention.in_proj_weight"]
    )
    assert torch.equal(own["norm.weight"], sd["encoder.ln.weight"])
    assert torch.equal(own["tokenizer.tubes.3.proj.weight"][:, :, 0], sd["conv_proj.weight"])
    x = torch.randn(2, 5, 64)
    with torch.no_grad():
        for ours, theirs in zip(model.blocks, tv.encoder.layers, strict=True):
            torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)


def test_unexpected_and_missing_keys_are_listed(tmp_path):
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, depth=2, img_size=32)
    sd = ref.state_dict()
    model = create_model("tiny", "paper", {"k": 2}, depth=2)
    bad = dict(sd, **{"fc_norm.weight": torch.ones(192), "reg_token": torch.zeros(1, 1, 192)})
    with pytest.raises(
        ConversionError, match=r"unexpected keys in the timm state dict: fc_norm.weight, reg_token"
    ):
        load_image_vit(model, bad)
    missing = {k: v for k, v in sd.items() if k not in ("blocks.1.mlp.fc2.bias", "norm.weight")}
    with pytest.raises(ConversionError, match=r"missing keys: blocks.1.mlp.fc2.bias, norm.weight"):
        load_image_vit(model, missing)
    deep = create_model("tiny", "paper", {"k": 2}, depth=3)
    with pytest.raises(ConversionError, match=r"missing keys: blocks.2.norm1.weight"):
        load_image_vit(deep, sd)
    with pytest.raises(ConversionError, match="not an image-ViT state dict"):
        load_image_vit(model, {"weight": torch.zeros(3)})
    # a checkpoint file wrapped as {"model": state_dict} reads back with weights_only
    torch.save({"model": sd}, tmp_path / "vit.pt")
    assert load_image_vit(model, read_state_dict(tmp_path / "vit.pt")).dropped


def test_inflation_keeps_static_clip_response():
    w2d = torch.randn(4, 3, 16, 16)
    frame = torch.full((1, 3, 1, 16, 16), 0.5)
    clip = frame.expand(1, 3, 8, 16, 16)
    w3d = inflate_kernel(w2d, (8, 16, 16))
    torch.testing.assert_close(
        (w3d * clip).sum(dim=(1, 2, 3, 4)), (w2d.unsqueeze(2) * frame).sum(dim=(1, 2, 3, 4))
    )
    w_small = inflate_kernel(w2d, (4, 8, 8))  # resize 16 -> 8 keeps a constant frame's response (x2 factor)
    torch.testing.assert_close(w_small.sum(dim=(1, 2, 3, 4)), w2d.sum(dim=(1, 2, 3)), rtol=1e-5, atol=1e-5)


# ---- image-to-video scaling ------------------------------------------------------------------------------


def _pair(large_dim: int, large_heads: int):
    torch.manual_seed(0)
    small = create_model("nano", "embedded", {"kinetics": 5})
    large = create_model(
        "nano", "embedded", {"kinetics": 5}, embed_dim=large_dim, num_heads=large_heads, depth=4
    )
    return small, large


def test_scaling_by_s2d_copies_tubes_and_alpha_zero_equals_ungated():
    small, large = _pair(256, 4)  # width ratio 4: S2D (1, 2, 2) on every tube
    scaled = scale_image_to_video(small, large, scale_from_layer=2)
    assert scaled.tube_proj is None
    assert [s.s2d for s in scaled.tubes] == [(2, 2, 2), (1, 4, 4), (1, 2, 2), (1, 2, 2)]
    for new, old in zip(scaled.tokenizer.tubes, small.tokenizer.tubes, strict=True):
        assert torch.equal(new.proj.weight, old.proj.weight)
    assert token_counts(scaled.tubes, 16, 64, 64) == token_counts(small.tubes, 16, 64, 64)
    assert scaled.gate is not None and scaled.gate.alpha.item() == 0.0
    scaled.eval()
    x = torch.randn(2, 3, 16, 64, 64)
    ungated = copy.deepcopy(scaled)
    gate = GatedSkip(256, gated=False)
    gate.load_state_dict({k: v for k, v in scaled.gate.state_dict().items() if k != "alpha"})
    ungated.gate = gate
    torch.testing.assert_close(scaled(x, "kinetics"), ungated(x, "kinetics"), rtol=0, atol=0)
    with torch.no_grad():
        scaled.gate.alpha.fill_(0.5)
    assert not torch.allclose(scaled(x, "kinetics"), ungated(x, "kinetics"))


def test_scaling_frozen_parameters_get_no_gradient():
    small, large = _pair(128, 4)  # ratio 2: S2D (2, 1, 1)
    scaled = scale_image_to_video(small, large, scale_from_layer=3)
    assert [s.s2d for s in scaled.tubes] == [(4, 1, 1), (2, 2, 2), (2, 1, 1), (2, 1, 1)]
    scaled.train()
    scaled(torch.randn(2, 3, 16, 64, 64), "kinetics").sum().backward()
    frozen = {n for n, p in scaled.named_parameters() if not p.requires_grad}
    assert frozen == {
        n
        for n, _ in scaled.named_parameters()
        if n.startswith(("tokenizer.", "blocks.0.", "blocks.1.", "blocks.2."))
    }
    for name, p in scaled.named_parameters():
        if name in frozen:
            assert p.grad is None, name
        else:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert scaled.gate.alpha.grad.abs().item() > 0
    assert "gate.alpha" in scaled.no_weight_decay()


def test_scaling_non_integer_ratio_uses_identity_linear_map():
    small, large = _pair(96, 4)  # ratio 1.5
    x = torch.randn(1, 3, 16, 64, 64)
    tokens_small = small.tokenizer(x)
    scaled = scale_image_to_video(small, large, scale_from_layer=1, freeze_before=0)
    assert scaled.tube_proj is not None and scaled.tube_proj.weight.requires_grad
    assert torch.equal(scaled.tube_proj.weight, torch.eye(96, 64))  # [I; 0]
    projected = scaled.tube_proj(scaled.tokenizer(x))
    torch.testing.assert_close(projected[..., :64], tokens_small)
    assert torch.all(projected[..., 64:] == 0)
    assert scaled(x, "kinetics").shape == (1, 5)
    small2, large2 = _pair(96, 4)
    with pytest.raises(ValueError, match="64 -> 96 is not an integer ratio"):
        scale_image_to_video(small2, large2, 1, width_map="s2d")
    with pytest.raises(ValueError, match=r"scale_from_layer must be in \[1, 4\]"):
        scale_image_to_video(small2, large2, 5)


def test_s2d_width_map_error_names_the_tube():
    torch.manual_seed(0)
    odd = [TubeSpec((1, 8, 8), (3, 3, 3))]
    small = create_model("nano", odd, {"k": 2})
    large = create_model("nano", odd, {"k": 2}, embed_dim=128)
    with pytest.raises(
        ValueError, match=r"no S2D split of 2 divides the stride of tube\(s\) \['1x8x8 stride=\(3, 3, 3\)"
    ):
        scale_image_to_video(small, large, 1, width_map="s2d")
    # auto falls back to the linear map
    assert scale_image_to_video(small, large, 1).tube_proj is not None


def _requires_grad_out(module: torch.nn.Module) -> list[bool]:
    seen: list[bool] = []
    module.register_forward_hook(lambda _m, _i, out: seen.append(out.requires_grad))
    return seen


@pytest.mark.parametrize(
    ("mode", "proj_trains", "frozen_blocks_in_graph"),
    [("frozen", False, False), ("gate", True, False), ("full", True, True)],
)
def test_linear_width_map_tube_proj_grad(mode, proj_trains, frozen_blocks_in_graph):
    """Issue 9 item 3: with frozen blocks, ``tube_proj`` is frozen at [I; 0] by default, so the frozen
    blocks run without autograd; ``gate`` trains it through the gate only (z_0 detached for the frozen
    blocks); ``full`` back-propagates through the frozen blocks."""
    small, large = _pair(96, 4)  # ratio 1.5: linear map
    kwargs = {} if mode == "frozen" else {"tube_proj_grad": mode}
    scaled = scale_image_to_video(small, large, scale_from_layer=2, **kwargs)
    assert torch.equal(scaled.tube_proj.weight, torch.eye(96, 64))
    frozen = {n for n, p in scaled.named_parameters() if not p.requires_grad}
    expected = {
        n for n, _ in scaled.named_parameters() if n.startswith(("tokenizer.", "blocks.0.", "blocks.1."))
    }
    if not proj_trains:
        expected.add("tube_proj.weight")
    assert frozen == expected
    assert scaled.detach_stem is (mode == "gate")
    block0, block2 = _requires_grad_out(scaled.blocks[0]), _requires_grad_out(scaled.blocks[2])
    with torch.no_grad():
        scaled.gate.alpha.fill_(0.3)  # open the gate so that its z_0 term carries a gradient
    scaled.train()
    scaled(torch.randn(2, 3, 16, 64, 64), "kinetics").sum().backward()
    assert block0 == [frozen_blocks_in_graph] and block2 == [True]
    grad = scaled.tube_proj.weight.grad
    if proj_trains:
        assert grad is not None and grad.abs().sum() > 0
    else:
        assert grad is None
    for name, p in scaled.named_parameters():
        if name in frozen:
            assert p.grad is None, name


def test_gate_mode_gradient_is_the_gate_term_only():
    """``gate``: tube_proj's gradient equals the one through tanh(alpha) * z_0 alone (blocks 0..s-1 see a
    detached z_0), and the forward is unchanged."""
    small, large = _pair(96, 4)
    full = scale_image_to_video(small, large, scale_from_layer=2, tube_proj_grad="full")
    gate = copy.deepcopy(full)
    gate.detach_stem = True
    for m in (full, gate):
        with torch.no_grad():
            m.gate.alpha.fill_(0.3)
        m.eval()
    x = torch.randn(2, 3, 16, 64, 64)
    torch.testing.assert_close(full(x, "kinetics"), gate(x, "kinetics"), rtol=0, atol=0)
    gate(x, "kinetics").sum().backward()
    full(x, "kinetics").sum().backward()
    assert not torch.allclose(gate.tube_proj.weight.grad, full.tube_proj.weight.grad)
    with pytest.raises(
        ValueError, match=r"tube_proj_grad must be one of \('frozen', 'gate', 'full'\), got 'x'"
    ):
        scale_image_to_video(*_pair(96, 4), 2, tube_proj_grad="x")
