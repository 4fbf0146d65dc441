"""Cross-entropy with label smoothing (hard and soft targets), BCE, MixUp on 5-D video batches."""

from __future__ import annotations

import math
from unittest import mock

import numpy as np
import pytest
import torch
from torchvision import tv_tensors
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


def test_mixup_lambda_is_torchvision_mixup_under_the_drawn_seed():
    """lam comes from a torch.Generator seeded from rng: what v2.MixUp draws under torch.manual_seed(seed)."""
    video = torch.randn(4, 3, 2, 5, 5)  # (B, C, T, H, W)
    label = torch.tensor([0, 1, 2, 3])
    for seed in range(5):
        mixed, soft = MixUp(0.3, 5)(video, label, np.random.default_rng(seed))
        torch_seed = int(np.random.default_rng(seed).integers(0, 2**63 - 1))  # the one draw MixUp makes
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(torch_seed)
            expected, expected_soft = v2.MixUp(alpha=0.3, num_classes=5)(tv_tensors.Video(video), label)
        assert torch.equal(mixed, expected.as_subclass(torch.Tensor)) and torch.equal(soft, expected_soft)
        lam = MixUp(0.3, 5).draw_lambda(np.random.default_rng(seed))
        assert (
            0.0 <= lam <= 1.0
            and soft[0, 0].item() == pytest.approx(lam)
            and soft[0, 3].item() == pytest.approx(1 - lam)
        )
        torch.testing.assert_close(mixed, video * lam + video.roll(1, 0) * (1 - lam))


def test_mixup_never_reseeds_the_global_rng():
    def refuse(*args, **kwargs):
        raise AssertionError("torch.manual_seed called by MixUp")

    rng = np.random.default_rng(3)
    video, label = torch.randn(3, 3, 1, 4, 4), torch.tensor([0, 1, 2])
    state = torch.get_rng_state()
    with mock.patch("torch.manual_seed", refuse), mock.patch("torch.random.manual_seed", refuse):
        lams = [MixUp(0.3, 3)(video, label, rng)[1][0, 0].item() for _ in range(20)]
    assert torch.equal(torch.get_rng_state(), state)
    assert len(set(lams)) == 20 and all(0.0 <= lam <= 1.0 for lam in lams)
    # Beta(0.3, 0.3) is U-shaped: most draws lie near 0 or 1
    many = [MixUp(0.3, 3).draw_lambda(np.random.default_rng(s)) for s in range(400)]
    assert np.mean([min(lam, 1 - lam) < 0.1 for lam in many]) > 0.5 and abs(np.mean(many) - 0.5) < 0.06
