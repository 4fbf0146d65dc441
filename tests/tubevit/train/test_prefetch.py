"""DevicePrefetcher: a pass-through on the CPU; on CUDA the same values, on the device, in order."""

from __future__ import annotations

import pytest
import torch

from tubevit.train.prefetch import DevicePrefetcher

from .helpers import make_batch


def batches(n: int = 3) -> list[dict]:
    return [make_batch("kinetics", i, 2) for i in range(n)]


def test_cpu_is_a_pass_through_without_read_ahead():
    data = batches()
    taken = []

    def source():
        for b in data:
            taken.append(b)
            yield b

    it = iter(DevicePrefetcher(source(), "cpu"))
    first = next(it)
    assert first is data[0] and len(taken) == 1  # the same object, no copy, nothing read ahead
    rest = list(it)
    assert all(a is b for a, b in zip([first, *rest], data, strict=True))
    assert first["video"].dtype == torch.uint8


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_copies_every_tensor_and_keeps_the_rest():
    data = [
        {**b, "video": b["video"].pin_memory(), "label": b["label"].pin_memory(), "aug": torch.ones(2, 9)}
        for b in batches(4)
    ]
    out = list(DevicePrefetcher(iter(data), "cuda"))
    assert len(out) == 4
    for got, want in zip(out, data, strict=True):
        assert got["aug"] is want["aug"]  # packed augmentation params are read on the host: not copied
        assert got["video"].device.type == "cuda" and got["video"].dtype == torch.uint8
        assert torch.equal(got["video"].cpu(), want["video"]) and torch.equal(
            got["label"].cpu(), want["label"]
        )
        assert got["key"] == want["key"] and got["dataset"] == "kinetics"
