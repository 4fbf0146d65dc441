"""On a GPU: bf16 steps with device-side augmentation and torch.compile, no recompilation between an image
step and a video step (skipped without CUDA)."""

from __future__ import annotations

import math

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

from tubevit.data.augment import draw_clip_params, pack_params
from tubevit.model.tubevit import create_model
from tubevit.train.loop import Callback, train

from .helpers import NUM_CLASSES, OPTIM, objectives

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def device_batch(dataset: str, index: int, frames: int, size: int = 32) -> dict:
    """A batch as the loader yields it with ``augment_on: device``: decoded uint8 frames zero-padded to
    the batch's largest H, W (pinned), and the packed per-sample crop and RandAugment parameters."""
    g = torch.Generator().manual_seed(index)
    heights, widths = [40, 36, 48, 44], [52, 60, 48, 56]
    video = torch.zeros(4, 3, frames, max(heights), max(widths), dtype=torch.uint8)
    for i, (h, w) in enumerate(zip(heights, widths, strict=True)):
        video[i, :, :, :h, :w] = torch.randint(0, 256, (3, frames, h, w), dtype=torch.uint8, generator=g)
    params = [
        draw_clip_params(1000 * index + i, h, w, size=size)
        for i, (h, w) in enumerate(zip(heights, widths, strict=True))
    ]
    return {
        "video": video.pin_memory(),
        "aug": pack_params(params),
        "label": torch.randint(0, NUM_CLASSES[dataset], (4,), generator=g).pin_memory(),
        "dataset": dataset,
        "key": [f"{index}-{i}" for i in range(4)],
    }


def test_bf16_compiled_steps_with_device_augmentation_do_not_recompile():
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = create_model("nano", "embedded", NUM_CLASSES)
    order = ["imagenet", "kinetics", "imagenet", "kinetics", "kinetics", "imagenet"]

    def batches(start):
        for k, name in enumerate(order[start:], start):
            yield device_batch(name, k, 1 if name == "imagenet" else 8)

    losses = []

    class Losses(Callback):
        def on_step(self, step, metrics):
            losses.append((step, metrics["dataset"], metrics["loss"]))

    train(
        model, batches, objectives(), OPTIM, len(order), device="cuda", compile=True, precision="bf16",
        callbacks=[Losses()],
    )  # fmt: skip
    assert counters["frames"]["ok"] == 2 and counters["stats"]["unique_graphs"] == 2
    assert sum(counters["graph_break"].values()) == 0
    assert [(s, d) for s, d, _ in losses] == list(enumerate(order, 1))
    assert all(math.isfinite(v) for _, _, v in losses)
    assert next(model.parameters()).device.type == "cuda"
    torch._dynamo.reset()
