"""A training process for the DDP and kill-resume tests: the real nano TubeViT on stand-in batches.

Run as ``python tests/tubevit/train/worker.py ...`` or under ``torchrun --nproc_per_node N``. Every rank
writes its final weights to ``<out>.rank<r>.pt``; rank 0 writes its last completed step to ``<out>.progress``
after every step.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
sys.path.insert(0, str(Path(__file__).parents[3]))

from helpers import NUM_CLASSES, OPTIM, joint_batches, objectives

from tubevit.model.tubevit import create_model
from tubevit.train import distributed
from tubevit.train.checkpoint import save_weights
from tubevit.train.loop import Callback, train


class Progress(Callback):
    def __init__(self, path: Path, sleep: float):
        self.path, self.sleep = path, sleep

    def on_step(self, step, metrics):
        self.path.write_text(str(step))
        time.sleep(self.sleep)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--batch", type=int, default=4, help="global clips per micro-batch")
    parser.add_argument("--accum", type=int, default=1)
    parser.add_argument("--checkpoint-dir", type=Path)
    parser.add_argument("--checkpoint-every", type=int, default=0)
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds to wait after each step")
    parser.add_argument("--dropout", type=float, default=0.0)
    parser.add_argument("--mixup", type=float, default=0.0)
    args = parser.parse_args()

    torch.set_num_threads(1)
    info = distributed.init_distributed("cpu")
    torch.manual_seed(0)
    model = create_model(
        "nano", "embedded", NUM_CLASSES, drop_path_rate=args.dropout, head_dropout=args.dropout
    )
    batches = joint_batches(
        args.batch, args.accum, frames=8, size=32, rank=info.rank, world_size=info.world_size
    )
    train(
        model,
        batches,
        objectives(label_smoothing=0.1, mixup=args.mixup),
        OPTIM,
        args.steps,
        accum_steps=args.accum,
        device=info.device,
        seed=0,
        checkpoint_dir=args.checkpoint_dir,
        checkpoint_every=args.checkpoint_every,
        config_hash="worker",
        callbacks=[Progress(args.out.with_suffix(".progress"), args.sleep)],
    )
    save_weights(args.out.with_suffix(f".rank{info.rank}.pt"), model.state_dict())
    distributed.cleanup()


if __name__ == "__main__":
    main()
