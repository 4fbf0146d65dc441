"""Stand-ins shared by the training tests: a tiny model with TubeViT's call signature and batch factories."""

from __future__ import annotations

import random
import zlib
from collections.abc import Iterator

import torch
from torch import nn

from tubevit.config.train import OptimConfig
from tubevit.data.augment import to_model_input
from tubevit.train.losses import build_objective

NUM_CLASSES = {"kinetics": 5, "imagenet": 4}


class StandIn(nn.Module):
    """``model(x (B, C, T, H, W), dataset) -> logits (B, K)``: a per-dataset stem, a shared MLP, per-dataset heads.

    Images (T == 1) go through the 2D stem only, videos through the 3D stem only, like TubeViT's tubes, so an
    image step leaves the video parameters unused (what DDP's ``find_unused_parameters`` is for). A
    non-persistent buffer stands in for the memoised fixed position embedding.
    """

    def __init__(self, dim: int = 16, dropout: float = 0.0):
        super().__init__()
        self.stem2d = nn.Linear(3, dim)
        self.stem3d = nn.Linear(3 * 2, dim)
        self.norm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.Dropout(dropout))
        self.probe = nn.Parameter(torch.zeros(1, 1, dim))
        self.heads = nn.ModuleDict({k: nn.Linear(dim, n) for k, n in NUM_CLASSES.items()})
        self.register_buffer("pos_embed_cache", torch.ones(dim), persistent=False)

    def forward(self, x: torch.Tensor, dataset: str) -> torch.Tensor:
        T = x.shape[2]  # x: (B, C, T, H, W)
        if T == 1:
            feats = self.stem2d(x.mean(dim=(2, 3, 4)))  # (B, C) -> (B, D)
        else:
            halves = torch.stack([x[:, :, : T // 2].mean((2, 3, 4)), x[:, :, T // 2 :].mean((2, 3, 4))], -1)
            feats = self.stem3d(halves.flatten(1))  # (B, C * 2) -> (B, D)
        h = self.norm(feats + self.pos_embed_cache + self.probe[0, 0])
        return self.heads[dataset](h + self.mlp(h))


def make_batch(
    dataset: str, index: int, batch_size: int, seed: int = 0, frames: int = 4, size: int = 4
) -> dict:
    """Micro-batch ``index`` of ``dataset``: a pure function of (dataset, index, seed), the same in every process.

    ``video``: uint8 (B, 3, T, size, size) with T = 1 for imagenet (as the loaders yield it: the loop
    normalises on the device), brighter by 25 levels per class; ``label``: int64 (B,).
    """
    g = torch.Generator().manual_seed(zlib.crc32(f"{dataset}/{index}/{seed}".encode()))
    frames = 1 if dataset == "imagenet" else frames
    label = torch.randint(0, NUM_CLASSES[dataset], (batch_size,), generator=g)
    noise = torch.randn(batch_size, 3, frames, size, size, generator=g) * 50 + 60
    video = (noise + label.view(-1, 1, 1, 1, 1).float() * 25).round().clamp(0, 255).to(torch.uint8)
    return {
        "video": video,
        "label": label,
        "dataset": dataset,
        "key": [f"{index}-{i}" for i in range(batch_size)],
    }


def joint_batches(
    batch_size: int,
    accum_steps: int,
    seed: int = 0,
    weights=(("kinetics", 1.0), ("imagenet", 1.0)),
    frames: int = 4,
    size: int = 4,
    rank: int = 0,
    world_size: int = 1,
):
    """A batch factory: step k's dataset from ``Random(seed + k)``; ``accum_steps`` micro-batches per step.

    Under DDP, rank r of w gets rows ``[r * B / w, (r + 1) * B / w)`` of the global micro-batch of B clips.
    """
    names = [n for n, _ in weights]
    w = [x for _, x in weights]

    def factory(start_step: int) -> Iterator[dict]:
        step = start_step
        while True:
            name = random.Random(seed + step).choices(names, w)[0]
            for i in range(accum_steps):
                batch = make_batch(name, step * accum_steps + i, batch_size, seed, frames, size)
                part = slice(rank * batch_size // world_size, (rank + 1) * batch_size // world_size)
                yield {**batch, "video": batch["video"][part], "label": batch["label"][part]}
            step += 1

    return factory


def objectives(label_smoothing: float = 0.0, mixup: float = 0.0) -> dict:
    return {
        k: build_objective(n, label_smoothing=label_smoothing, mixup=mixup) for k, n in NUM_CLASSES.items()
    }


def model_input(batch: dict) -> torch.Tensor:
    """The normalised float32 model input of a :func:`make_batch` batch (what the loop feeds the model)."""
    return to_model_input(batch, torch.device("cpu"), torch.float32)


OPTIM = OptimConfig(lr=1e-2, weight_decay=0.05, warmup_steps=2, clip_grad=1.0)
