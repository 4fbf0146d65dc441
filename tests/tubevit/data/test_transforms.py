"""Clip-consistent augmentation, evaluation crops, normalisation and layout."""

from __future__ import annotations

import hashlib
from unittest import mock

import numpy as np
import pytest
import torch

from tubevit.data.augment import augment_clip
from tubevit.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    EvalTransform,
    TrainTransform,
    normalize,
    sample_seed,
)


def _noise_clip(t: int = 6, h: int = 40, w: int = 52, seed: int = 0) -> np.ndarray:
    """uint8 (T, H, W, 3): the same random image repeated T times."""
    image = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return np.repeat(image[None], t, axis=0)


def test_augmentation_is_identical_across_frames_and_differs_across_clips():
    transform = TrainTransform(24, scale=(0.25, 1.0), ratio=(3 / 4, 4 / 3))
    clip = _noise_clip()
    outputs = []
    for key in ("000000001", "000000002", "000000003"):
        x = transform(clip, sample_seed(0, 0, key))
        assert x.dtype == torch.float32 and x.shape == (3, 6, 24, 24)  # (C, T, H, W)
        for t in range(1, 6):
            assert torch.equal(x[:, t], x[:, 0]), f"{key}: frame {t} differs from frame 0"
        outputs.append(x)
    assert not torch.equal(outputs[0], outputs[1]) and not torch.equal(outputs[1], outputs[2])


def test_randaugment_is_applied_and_seeded():
    plain = TrainTransform(24, scale=(1.0, 1.0), ratio=(52 / 40, 52 / 40), randaugment=False)
    ra = TrainTransform(24, scale=(1.0, 1.0), ratio=(52 / 40, 52 / 40), num_ops=2, magnitude=10)
    clip = _noise_clip(t=2)
    seeds = [sample_seed(1, 0, f"{i:09d}") for i in range(8)]
    changed = [not torch.equal(plain.augment(clip, s), ra.augment(clip, s)) for s in seeds]
    assert sum(changed) >= 6  # two ops per clip; only Identity twice leaves a clip as it was
    assert torch.equal(ra(clip, seeds[0]), ra(clip, seeds[0]))  # same seed, same output
    # magnitude 10 of 11 bins: e.g. Rotate is +-30 degrees, Posterize keeps 4 bits
    ops = [op for s in seeds for op in ra.params(40, 52, s).ops]
    assert len(ops) == 16 and all(
        abs(v) == {"Rotate": 30.0, "Posterize": 4.0}[n] for n, v in ops if n in ("Rotate", "Posterize")
    )


def test_global_rng_is_left_untouched_and_never_reseeded():
    def refuse(*args, **kwargs):
        raise AssertionError("torch.manual_seed called during augmentation")

    state = torch.get_rng_state()
    with mock.patch("torch.manual_seed", refuse), mock.patch("torch.random.manual_seed", refuse):
        TrainTransform(16)(_noise_clip(t=2), 123)
    assert torch.equal(torch.get_rng_state(), state)


def test_uint8_outputs_for_normalisation_on_the_device():
    clip = _noise_clip(t=3)
    train = TrainTransform(16, normalized=False)
    levels = train(clip, 7)
    assert (
        levels.dtype == torch.uint8 and levels.shape == (3, 3, 16, 16) and levels.is_contiguous()
    )  # (C, T, H, W)
    assert torch.equal(levels, augment_clip(clip, train.params(40, 52, 7)))
    assert torch.equal(normalize(levels.permute(1, 0, 2, 3)), TrainTransform(16)(clip, 7))
    views = EvalTransform(16, spatial_views=3, normalized=False)(clip)
    assert views.dtype == torch.uint8 and views.shape == (3, 3, 3, 16, 16)  # (S, C, T, H, W)
    assert torch.equal(normalize(views.transpose(1, 2)), EvalTransform(16, spatial_views=3)(clip))


def test_sample_seed_is_stable():
    assert sample_seed(0, 0, "000000001") == sample_seed(0, 0, "000000001")
    assert (
        len({sample_seed(0, 0, "1"), sample_seed(0, 1, "1"), sample_seed(1, 0, "1"), sample_seed(0, 0, "2")})
        == 4
    )
    # sha256 of the parts' text, so it does not depend on PYTHONHASHSEED or the process
    digest = hashlib.sha256(b"0\x1f0\x1f000000001").digest()
    assert (
        sample_seed(0, 0, "000000001")
        == int.from_bytes(digest[:8], "little") & (2**63 - 1)
        == 9017147414261720738
    )


def test_normalize_values_and_layout():
    video = torch.zeros(2, 3, 4, 5, dtype=torch.uint8)  # (T, C, H, W)
    video[:, 0], video[:, 1], video[:, 2] = 255, 128, 0
    x = normalize(video)
    assert x.shape == (3, 2, 4, 5) and x.dtype == torch.float32
    for c, v in enumerate((255, 128, 0)):
        assert torch.allclose(x[c], torch.full((2, 4, 5), (v / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]))


def test_eval_three_crops_along_the_long_side():
    # frame 32 x 96 (H x W) whose column c holds gray level c: resized to short side 16 -> 16 x 48
    columns = np.broadcast_to(np.arange(96, dtype=np.uint8)[None, :, None], (32, 96, 3))
    clip = np.repeat(columns[None], 3, axis=0).copy()
    crops = EvalTransform(16, spatial_views=3).crops(clip)
    assert crops.shape == (3, 3, 3, 16, 16)  # (S, T, C, H, W)
    firsts = [int(c[0, 0, 8, 0]) for c in crops]
    lasts = [int(c[0, 0, 8, -1]) for c in crops]
    assert firsts[0] <= 1 and lasts[2] >= 94  # the start and the end of the long side
    assert abs(firsts[1] - 32) <= 1 and abs(lasts[1] - 63) <= 1  # the centre third
    centre = EvalTransform(16, spatial_views=1).crops(clip)
    assert centre.shape == (1, 3, 3, 16, 16) and torch.equal(centre[0], crops[1])
    tall = EvalTransform(16, spatial_views=3)(np.ascontiguousarray(clip.transpose(0, 2, 1, 3)))
    assert tall.shape == (3, 3, 3, 16, 16)  # (S, C, T, H, W); crops along the height


def test_images_take_the_same_path():
    image = _noise_clip(t=1)
    assert TrainTransform(16)(image, 5).shape == (3, 1, 16, 16)
    assert EvalTransform(16)(image).shape == (1, 3, 1, 16, 16)
    with pytest.raises(ValueError, match=r"expected frames of shape \(T, H, W, 3\), got \(40, 52, 3\)"):
        TrainTransform(16)(image[0], 5)
