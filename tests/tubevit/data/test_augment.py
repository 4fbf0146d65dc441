"""Per-sample augmentation params, the CPU path (one clip) and the batched device path (on CPU tensors).

Pinned tolerance between the two paths (uint8 levels), interpolation numerics only:
- crop + resize: every value within 1 level with the CUDA path's ``matmul`` crop, in float32 or float16 (torch's
  uint8 resize kernel rounds fixed-point sums, the matmul rounds float sums of the same antialiased weights);
  bitwise with the ``per_sample`` crop that CPU tensors use (the same uint8 kernel);
- RandAugment ops: bitwise identical on the same input;
- end to end: per clip, mean |difference| <= 1 level and >= 75% of the values within 1 level; over many clips
  >= 95% within 1 level (a 1-level crop difference can cross a Posterize/Solarize step or move an Equalize
  histogram bin, and Equalize on noise spreads 1-level shifts to a few levels, so some values jump).
"""

from __future__ import annotations

import math
from unittest import mock

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from tubevit.data import augment
from tubevit.data.augment import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    RANDAUGMENT_OPS,
    ClipAugment,
    ClipParams,
    augment_batch,
    augment_clip,
    draw_clip_params,
    normalize,
    pack_params,
    resolve_augment_on,
    to_model_input,
    unpack_params,
)


def _noise(t: int, h: int, w: int, seed: int) -> np.ndarray:
    """uint8 (T, H, W, 3) random levels, a different image per frame."""
    return np.random.default_rng(seed).integers(0, 256, (t, h, w, 3), dtype=np.uint8)


def _batch(clips: list[np.ndarray]) -> torch.Tensor:
    """uint8 (T, H, W, 3) clips -> uint8 (B, 3, T, Hmax, Wmax), zero-padded at the bottom and right."""
    t = clips[0].shape[0]
    h, w = max(c.shape[1] for c in clips), max(c.shape[2] for c in clips)
    out = torch.zeros(len(clips), 3, t, h, w, dtype=torch.uint8)
    for i, c in enumerate(clips):
        out[i, :, :, : c.shape[1], : c.shape[2]] = torch.as_tensor(c).permute(3, 0, 1, 2)  # THWC -> CTHW
    return out


def _device(clip: np.ndarray, params: ClipParams, crop: str = "matmul") -> torch.Tensor:
    """The device path on one clip: float (3, T, size, size); by default with the CUDA path's matmul crop."""
    return augment_batch(_batch([clip]), pack_params([params]), crop=crop)[0]


CROPS = ["matmul", "per_sample"]


# --- drawing ------------------------------------------------------------------------------------------------


def test_draws_are_torchvision_compose_under_the_same_seed():
    """Same crop box and ops as v2.RandomResizedCrop + v2.RandAugment(11 bins) seeded with the sample seed."""
    reference = v2.Compose(
        [
            v2.RandomResizedCrop(24, scale=(0.25, 1.0), ratio=(3 / 4, 4 / 3), antialias=True),
            v2.RandAugment(num_ops=2, magnitude=10, num_magnitude_bins=11),
        ]
    )
    for seed in [0, 1, 7, 123456789, 2**63 - 5]:
        clip = _noise(3, 40, 52, seed % 1000)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            expected = reference(augment.to_video(clip)).as_subclass(torch.Tensor)  # (T, C, S, S)
        params = draw_clip_params(seed, 40, 52, size=24)
        assert torch.equal(augment_clip(clip, params), expected.permute(1, 0, 2, 3)), seed


@pytest.mark.parametrize("size", [24, 224])
def test_magnitudes_are_bin_10_of_11_with_a_sign(size):
    expected = {
        "Identity": 0.0,
        "ShearX": 0.3,
        "ShearY": 0.3,
        "TranslateX": 150.0 / 331.0 * size,
        "TranslateY": 150.0 / 331.0 * size,
        "Rotate": 30.0,
        "Brightness": 0.9,
        "Color": 0.9,
        "Contrast": 0.9,
        "Sharpness": 0.9,
        "Posterize": 4.0,
        "Solarize": 0.0,
        "AutoContrast": 0.0,
        "Equalize": 0.0,
    }
    assert tuple(expected) == RANDAUGMENT_OPS
    seen, signs = set(), set()
    for seed in range(200):
        params = draw_clip_params(seed, 300, 400, size=size)
        assert len(params.ops) == 2 and params.size == size
        for name, value in params.ops:
            assert abs(value) == pytest.approx(expected[name], rel=1e-6), (name, value)
            seen.add(name)
            signs.add(math.copysign(1.0, value) if value else 0.0)
    assert seen == set(expected) and signs == {-1.0, 0.0, 1.0}
    mid = draw_clip_params(3, 300, 400, size=size, magnitude=5, num_ops=8)
    halves = {n: abs(v) for n, v in mid.ops if n in ("Rotate", "Brightness", "Posterize")}
    assert all(
        halves[n] == pytest.approx({"Rotate": 15.0, "Brightness": 0.45, "Posterize": 6.0}[n]) for n in halves
    )


def test_crop_box_lies_in_the_frame_with_the_drawn_area_and_ratio():
    for seed in range(100):
        p = draw_clip_params(
            seed, 40, 52, size=16, scale=(0.25, 1.0), ratio=(3 / 4, 4 / 3), randaugment=False
        )
        assert p.ops == ()
        assert p.top >= 0 and p.top + p.height <= 40 and p.left >= 0 and p.left + p.width <= 52
        assert 0.2 <= p.height * p.width / (40 * 52) <= 1.05  # rounding of w and h
        assert 3 / 4 - 0.1 <= p.width / p.height <= 4 / 3 + 0.1
    # no box of area >= 0.9 and ratio 1 fits a 10 x 100 frame: the centre fallback, the widest allowed box
    fallback = draw_clip_params(0, 10, 100, size=8, scale=(0.9, 1.0), ratio=(1.0, 1.0), randaugment=False)
    assert fallback == ClipParams(8, 0, 45, 10, 10, ())
    assert draw_clip_params(5, 40, 52, size=16) == draw_clip_params(5, 40, 52, size=16)
    assert draw_clip_params(5, 40, 52, size=16) != draw_clip_params(6, 40, 52, size=16)


def test_draw_refuses_bad_arguments():
    with pytest.raises(ValueError, match=r"RandAugment magnitude must be in \[0, 10\], got 11"):
        draw_clip_params(0, 10, 10, size=8, magnitude=11)
    with pytest.raises(ValueError, match="frame size must be positive, got 0x10"):
        draw_clip_params(0, 0, 10, size=8)
    with pytest.raises(ValueError, match=r"scale must satisfy 0 < lo <= hi, got \(1.0, 0.5\)"):
        draw_clip_params(0, 10, 10, size=8, scale=(1.0, 0.5))
    with pytest.raises(ValueError, match="num_ops must be >= 0, got -1"):
        draw_clip_params(0, 10, 10, size=8, num_ops=-1)


def test_clip_augment_holds_the_settings_and_checks_them():
    aug = ClipAugment(24, scale=[0.5, 1.0], ratio=(1.0, 1.0), num_ops=3, magnitude=7)
    assert aug.scale == (0.5, 1.0)
    assert aug.draw(11, 40, 52) == draw_clip_params(
        11, 40, 52, size=24, scale=(0.5, 1.0), ratio=(1.0, 1.0), num_ops=3, magnitude=7
    )
    assert len(aug.draw(11, 40, 52).ops) == 3 and ClipAugment(24, randaugment=False).draw(1, 40, 52).ops == ()
    with pytest.raises(ValueError, match=r"RandAugment magnitude must be in \[0, 10\], got 12"):
        ClipAugment(24, magnitude=12)
    with pytest.raises(ValueError, match="size must be positive, got 0"):
        ClipAugment(0)


def test_pack_unpack_round_trip_and_errors():
    params = [draw_clip_params(s, 40, 52, size=24) for s in range(5)]
    packed = pack_params(params)
    assert packed.dtype == torch.float32 and packed.shape == (5, 9)  # size, box, 2 x (op id, magnitude)
    assert packed[0, :5].tolist() == [24, params[0].top, params[0].left, params[0].height, params[0].width]
    assert unpack_params(packed) == params  # float32 holds every value exactly
    with pytest.raises(ValueError, match=r"differ in size \[16, 24\] or op count \[2\]"):
        pack_params([params[0], draw_clip_params(0, 40, 52, size=16)])
    with pytest.raises(ValueError, match=r"packed params must be \(B, 5 \+ 2 \* num_ops\), got \(5, 8\)"):
        unpack_params(packed[:, :8])
    with pytest.raises(ValueError, match="no params"):
        pack_params([])


# --- the two paths --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("src", "size"), [((40, 52), 24), ((20, 30), 48), ((64, 64), 32)])
def test_matmul_crop_is_within_one_level_of_the_cpu_crop(src, size):
    h, w = src
    diffs = []
    for seed in range(25):
        clip = _noise(2, h, w, seed)
        params = draw_clip_params(seed, h, w, size=size, randaugment=False)
        cpu = augment_clip(clip, params)
        dev = _device(clip, params)
        assert cpu.dtype == torch.uint8 and cpu.shape == (3, 2, size, size)
        assert dev.dtype == torch.float32 and dev.shape == (3, 2, size, size)
        assert torch.equal(dev, dev.round()) and dev.min() >= 0 and dev.max() <= 255
        diffs.append((dev - cpu.float()).abs())
    d = torch.stack(diffs)
    assert d.max() <= 1 and d.mean() < 0.3


def test_per_sample_crop_on_cpu_tensors_is_the_cpu_path_bitwise():
    for seed in range(20):
        clip = _noise(3, 40, 52, seed)
        params = draw_clip_params(seed, 40, 52, size=24)  # with RandAugment: its ops are bitwise too
        dev = augment_batch(_batch([clip]), pack_params([params]))[0]  # auto: per_sample on CPU tensors
        assert torch.equal(dev, augment_clip(clip, params).float()), params


@pytest.mark.parametrize("name", RANDAUGMENT_OPS)
def test_device_ops_are_bitwise_the_cpu_ops(name):
    """With a crop that is the whole frame at its own size (no resampling), both paths agree exactly."""
    values = [0.0]
    _, signed = v2.RandAugment._AUGMENTATION_SPACE[name]
    table = v2.RandAugment._AUGMENTATION_SPACE[name][0](11, 24, 24)
    if table is not None:
        values = [float(table[m]) for m in (3, 7, 10)]
        values += [-v for v in values] if signed else []
    clips = [_noise(3, 24, 24, 10 + i) for i in range(len(values))]
    # a low-contrast clip, so AutoContrast and Equalize have something to stretch
    clips[0] = (clips[0] // 4 + 60).astype(np.uint8)
    params = [ClipParams(24, 0, 0, 24, 24, ((name, v), ("Identity", 0.0))) for v in values]
    batch = augment_batch(_batch(clips), pack_params(params), crop="matmul")  # the whole group in one op
    changed = 0
    for i, (clip, p) in enumerate(zip(clips, params, strict=True)):
        cpu = augment_clip(clip, p)
        assert torch.equal(batch[i], cpu.float()), (name, p.ops[0][1])
        changed += not torch.equal(cpu, torch.as_tensor(clip).permute(3, 0, 1, 2))
    if name != "Identity":
        assert changed >= 1  # the op did something to the clip


def test_end_to_end_within_the_pinned_tolerance():
    diffs = []
    for seed in range(60):
        clip = _noise(2, 40, 52, seed)
        params = draw_clip_params(seed, 40, 52, size=24)
        d = (_device(clip, params) - augment_clip(clip, params).float()).abs()
        assert d.mean() <= 1.0 and (d <= 1).float().mean() >= 0.75, (seed, params.ops)
        diffs.append(d.flatten())
    assert (torch.cat(diffs) <= 1).float().mean() >= 0.95


@pytest.mark.parametrize("crop", CROPS)
def test_every_frame_of_a_clip_gets_the_same_crop_and_ops(crop):
    image = _noise(1, 40, 52, 3)
    clip = np.repeat(image, 5, axis=0)  # five identical frames
    params = [draw_clip_params(s, 40, 52, size=16) for s in range(12)]
    out = augment_batch(_batch([clip] * 12), pack_params(params), crop=crop)  # (12, 3, 5, 16, 16)
    for i, p in enumerate(params):
        cpu = augment_clip(clip, p)
        for t in range(1, 5):
            assert torch.equal(out[i, :, t], out[i, :, 0]), (p.ops, t)
            assert torch.equal(cpu[:, t], cpu[:, 0]), (p.ops, t)
    assert len({out[i].numpy().tobytes() for i in range(12)}) == 12  # clips differ


@pytest.mark.parametrize("crop", CROPS)
def test_images_take_the_same_path(crop):
    image = _noise(1, 40, 52, 4)
    params = draw_clip_params(9, 40, 52, size=16)
    cpu = augment_clip(image, params)
    dev = _device(image, params, crop)
    assert cpu.shape == dev.shape == (3, 1, 16, 16)
    assert (dev - cpu.float()).abs().mean() <= 1.0


@pytest.mark.parametrize("crop", CROPS)
def test_a_padded_batch_of_different_sizes_gives_each_clip_alone(crop):
    sizes = [(40, 52), (30, 44), (48, 36), (20, 20), (40, 52)]
    clips = [_noise(3, h, w, i) for i, (h, w) in enumerate(sizes)]
    params = [draw_clip_params(100 + i, h, w, size=24) for i, (h, w) in enumerate(sizes)]
    out = augment_batch(_batch(clips), pack_params(params), crop=crop)
    assert out.shape == (5, 3, 3, 24, 24)
    for i, clip in enumerate(clips):
        assert torch.equal(out[i], _device(clip, params[i], crop)), params[i]


def test_batch_checks_its_inputs():
    clip = _noise(2, 20, 20, 0)
    params = draw_clip_params(0, 40, 52, size=8)  # a box drawn for a larger frame
    with pytest.raises(ValueError, match=r"sample 0: crop box .* exceeds the 20x20 batch"):
        augment_batch(_batch([clip]), pack_params([ClipParams(8, 10, 10, 15, 15, params.ops)]))
    with pytest.raises(ValueError, match="2 packed params for a batch of 1"):
        augment_batch(_batch([clip]), pack_params([ClipParams(8, 0, 0, 20, 20)] * 2))
    with pytest.raises(ValueError, match="size 16 differs from the packed size 8"):
        augment_batch(_batch([clip]), pack_params([ClipParams(8, 0, 0, 20, 20)]), 16)
    with pytest.raises(ValueError, match=r"expected uint8 \(B, C, T, H, W\), got torch.float32"):
        augment_batch(_batch([clip]).float(), pack_params([ClipParams(8, 0, 0, 20, 20)]))
    with pytest.raises(ValueError, match="crop must be auto, matmul or per_sample, got 'bilinear'"):
        augment_batch(_batch([clip]), pack_params([ClipParams(8, 0, 0, 20, 20)]), crop="bilinear")
    with pytest.raises(ValueError, match="size 16 differs from the params' size 8"):
        augment_clip(clip, ClipParams(8, 0, 0, 20, 20), 16)


def test_fp16_crop_stays_within_one_level():
    """The CUDA path resamples in fp16 (levels 0..255 are exact in it); checked here on CPU tensors."""
    clips = [_noise(2, 64, 80, s) for s in range(4)]
    params = [draw_clip_params(s, 64, 80, size=32, randaugment=False) for s in range(4)]
    boxes = torch.tensor([[p.top, p.left, p.height, p.width] for p in params], dtype=torch.float32)
    fp16 = augment._crop_resize(_batch(clips), boxes, 32, torch.float16)
    cpu = torch.stack([augment_clip(c, p) for c, p in zip(clips, params, strict=True)]).float()
    assert fp16.shape == (4, 3, 2, 32, 32) and (fp16 - cpu).abs().max() <= 1


def test_no_global_reseed_and_the_global_rng_is_untouched():
    def refuse(*args, **kwargs):
        raise AssertionError("torch.manual_seed called during augmentation")

    clip = _noise(2, 40, 52, 0)
    state = torch.get_rng_state()
    with mock.patch("torch.manual_seed", refuse), mock.patch("torch.random.manual_seed", refuse):
        params = [draw_clip_params(s, 40, 52, size=16) for s in range(8)]
        for p in params:
            augment_clip(clip, p)
        for crop in CROPS:
            augment_batch(_batch([clip] * 8), pack_params(params), crop=crop)
    assert torch.equal(torch.get_rng_state(), state)


# --- normalisation and the model input --------------------------------------------------------------------------


def test_normalize_values_layout_and_dtype():
    video = torch.zeros(2, 3, 4, 5, 6, dtype=torch.uint8)  # (B, C, T, H, W)
    video[:, 0], video[:, 1], video[:, 2] = 255, 128, 0
    x = normalize(video)
    assert x.shape == (2, 3, 4, 5, 6) and x.dtype == torch.float32
    for c, v in enumerate((255, 128, 0)):
        expected = (v / 255 - IMAGENET_MEAN[c]) / IMAGENET_STD[c]
        assert torch.allclose(x[:, c], torch.full((2, 4, 5, 6), expected), atol=1e-6)
    assert torch.equal(normalize(video.float()), x)  # float levels give the same
    assert normalize(video, torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(ValueError, match=r"expected \(B, 3, T, H, W\), got \(3, 4, 5, 6\)"):
        normalize(video[0])


def test_to_model_input_runs_the_device_path_only_with_packed_params():
    clips = [_noise(2, 40, 52, s) for s in range(3)]
    params = [draw_clip_params(s, 40, 52, size=16) for s in range(3)]
    video = _batch(clips)
    out = to_model_input({"video": video, "aug": pack_params(params), "label": torch.zeros(3)}, "cpu")
    assert out.shape == (3, 3, 2, 16, 16) and out.dtype == torch.float32
    assert torch.equal(out, normalize(augment_batch(video, pack_params(params))))
    cropped = torch.stack(
        [augment_clip(c, p) for c, p in zip(clips, params, strict=True)]
    )  # the CPU path's batch
    plain = to_model_input({"video": cropped}, torch.device("cpu"), torch.float32)
    assert torch.equal(plain, normalize(cropped))


def test_resolve_augment_on():
    assert resolve_augment_on("auto", "cuda:0") == "device"
    assert resolve_augment_on("auto", "cpu") == augment.CPU_AUTO_CHOICE_NO_WORKERS == "device"
    assert resolve_augment_on("auto", "cpu", workers=2) == augment.CPU_AUTO_CHOICE == "cpu"
    assert resolve_augment_on("auto", "cuda:0", workers=2) == "device"
    assert resolve_augment_on("cpu", "cpu", workers=0) == "cpu"
    assert resolve_augment_on("device", "cpu") == "device"
    assert resolve_augment_on("cpu", torch.device("cuda")) == "cpu"
    with pytest.raises(ValueError, match="augment_on: must be one of auto, cpu, device, got 'gpu'"):
        resolve_augment_on("gpu", "cpu")


# --- on a GPU (never in CI) -------------------------------------------------------------------------------------

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")


@pytest.mark.gpu
@cuda
def test_cuda_batch_is_within_the_pinned_tolerance_of_the_cpu_path():
    """On CUDA (fp16 matmul crop): crop within 1 level; end to end as on CPU tensors."""
    clips = [_noise(2, 40, 52, s) for s in range(40)]
    params = [draw_clip_params(s, 40, 52, size=24) for s in range(40)]
    crops = [draw_clip_params(s, 40, 52, size=24, randaugment=False) for s in range(40)]
    video = _batch(clips).cuda()
    crop = augment_batch(video, pack_params(crops)).cpu()  # auto: the matmul crop on CUDA
    full = augment_batch(video, pack_params(params)).cpu()
    diffs = []
    for i, clip in enumerate(clips):
        assert (crop[i] - augment_clip(clip, crops[i]).float()).abs().max() <= 1
        d = (full[i] - augment_clip(clip, params[i]).float()).abs()
        assert d.mean() <= 1.0 and (d <= 1).float().mean() >= 0.75, params[i].ops
        diffs.append(d.flatten())
    assert (torch.cat(diffs) <= 1).float().mean() >= 0.95


@pytest.mark.gpu
@cuda
def test_cuda_model_input_needs_no_host_synchronisation():
    clips = [_noise(4, 64, 80, s) for s in range(16)]
    params = pack_params([draw_clip_params(s, 64, 80, size=32) for s in range(16)])  # kept on the host
    batch = {"video": _batch(clips).cuda(), "aug": params}
    to_model_input(batch, "cuda")  # warm-up: first-call constants
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = to_model_input(batch, "cuda")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.shape == (16, 3, 4, 32, 32) and out.device.type == "cuda"
