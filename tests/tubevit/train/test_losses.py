"""Cross-entropy with label smoothing (hard and soft targets), BCE, MixUp on 5-D video batches."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from tubevit.train.losses import MixUp, binary_cross_entropy, build_objective, cross_entropy, no_mix


def test_cross_entropy_hand_computed():
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    target = torch.tensor([0, 2])
    z = math.log(math.exp(2) + 2)  # logsumexp of row 0
    plain = ((z - 2) + math.log(3)) / 2
    assert cross_entropy(logits, target).item() == pytest.approx(plain, rel=1e-6)
    # smoothing 0.3: target (1 - 0.3) one-hot + 0.1 everywhere
    row0 = 0.8 * (z - 2) + 0.1 * z + 0.1 * z
    row1 = math.log(3)
    assert cross_entropy(logits, target, 0.3).item() == pytest.approx((row0 + row1) / 2, rel=1e-6)


def test_cross_entropy_soft_targets_with_smoothing():
    torch.manual_seed(0)
    logits = torch.randn(4, 5)
    soft = torch.softmax(torch.randn(4, 5), dim=1)
    eps = 0.2
    smoothed = soft * (1 - eps) + eps / 5
    expected = -(smoothed * torch.log_softmax(logits, 1)).sum(1).mean()
    torch.testing.assert_close(cross_entropy(logits, soft, eps), expected)
    # a one-hot soft target equals the index target
    onehot = torch.nn.functional.one_hot(torch.tensor([1, 0, 4, 2]), 5).float()
    torch.testing.assert_close(
        cross_entropy(logits, onehot, eps), cross_entropy(logits, torch.tensor([1, 0, 4, 2]), eps)
    )


def test_binary_cross_entropy_hand_computed():
    logits = torch.tensor([[0.0, 2.0]])
    target = torch.tensor([[1.0, 0.0]])
    sp = lambda x: math.log1p(math.exp(x))  # noqa: E731  softplus
    expected = (sp(-0.0) + sp(2.0)) / 2  # -log sigmoid(0), -log(1 - sigmoid(2))
    assert binary_cross_entropy(logits, target).item() == pytest.approx(expected, rel=1e-6)
    # smoothing 0.1: targets 0.95 and 0.05
    smoothed = (0.95 * sp(-0.0) + 0.05 * sp(0.0) + 0.05 * sp(-2.0) + 0.95 * sp(2.0)) / 2
    assert binary_cross_entropy(logits, target, 0.1).item() == pytest.approx(smoothed, rel=1e-6)


def test_plain_5d_tensor_is_refused_by_torchvision_mixup():
    """Why MixUp wraps the batch as a tv_tensors.Video: a plain (B, C, T, H, W) tensor raises."""
    with pytest.raises(ValueError, match="Expected a batched input with 4 dims"):
        v2.MixUp(alpha=0.3, num_classes=3)(torch.randn(2, 3, 2, 4, 4), torch.tensor([0, 1]))


def test_mixup_on_video_batches():
    torch.manual_seed(0)
    video = torch.randn(4, 3, 2, 5, 5)  # (B, C, T, H, W)
    label = torch.tensor([0, 1, 2, 3])
    before = video.clone()
    mixed, soft = MixUp(0.3, 5)(video, label, np.random.default_rng(0))
    assert type(mixed) is torch.Tensor and mixed.shape == video.shape
    assert torch.equal(video, before)  # the input is not modified
    assert soft.shape == (4, 5) and torch.allclose(soft.sum(1), torch.ones(4))
    lam = soft[0, 0].item()  # row 0 mixes itself (lam) with row 3 (1 - lam)
    assert 0 <= lam <= 1
    torch.testing.assert_close(mixed, lam * video + (1 - lam) * video.roll(1, 0))
    expected_soft = lam * torch.eye(5)[label] + (1 - lam) * torch.eye(5)[label.roll(1, 0)]
    torch.testing.assert_close(soft, expected_soft)


def test_mixup_draw_depends_only_on_the_generator():
    video = torch.randn(3, 3, 2, 4, 4)
    label = torch.tensor([0, 1, 2])
    mix = MixUp(0.3, 3)
    torch.manual_seed(1)
    a = mix(video, label, np.random.default_rng(7))
    torch.manual_seed(2)  # torch's global state does not matter ...
    b = mix(video, label, np.random.default_rng(7))
    c = mix(video, label, np.random.default_rng(8))  # ... the generator does
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[1], c[1])
    state = torch.get_rng_state()
    mix(video, label, np.random.default_rng(7))
    assert torch.equal(state, torch.get_rng_state())  # and it is left untouched


def test_mixup_refuses_multi_hot_and_bad_alpha():
    with pytest.raises(ValueError, match="int64 class indices"):
        MixUp(0.3, 3)(torch.randn(2, 3, 1, 4, 4), torch.ones(2, 3), np.random.default_rng(0))
    with pytest.raises(ValueError, match="alpha: must be > 0"):
        MixUp(0.0, 3)


def test_build_objective():
    single = build_objective(5, label_smoothing=0.1)
    assert single.mix is no_mix
    logits, target = torch.randn(2, 5), torch.tensor([1, 3])
    torch.testing.assert_close(single.loss(logits, target), cross_entropy(logits, target, 0.1))
    mixed = build_objective(5, mixup=0.3)
    assert isinstance(mixed.mix, MixUp) and mixed.mix.alpha == 0.3 and mixed.mix.num_classes == 5
    multi = build_objective(5, multilabel=True, label_smoothing=0.1)
    hot = torch.tensor([[1.0, 0, 0, 1, 0], [0, 0, 0, 0, 0]])
    torch.testing.assert_close(multi.loss(logits, hot), binary_cross_entropy(logits, hot, 0.1))
    with pytest.raises(ValueError, match=r"mixup=0\.3: MixUp is for single-label"):
        build_objective(5, multilabel=True, mixup=0.3)
    video = torch.randn(2, 3, 2, 4, 4)
    out = no_mix(video, target, np.random.default_rng(0))
    assert out[0] is video and out[1] is target
