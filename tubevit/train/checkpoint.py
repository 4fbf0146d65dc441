"""Atomic training checkpoints: save, find, load (``weights_only=True``) and resume checks.

A checkpoint is one file, ``<dir>/checkpoint.pt``, replaced atomically (written under
``.checkpoint.pt.tmp-<uuid>``, flushed, then ``os.replace``): a kill at any moment leaves either the old
or the new checkpoint, never a torn one. Only the latest is kept. It holds:

- ``model``: the unwrapped model's ``state_dict()`` (non-persistent buffers, such as the memoised fixed
  position embedding, are never in it), ``optimizer`` and ``scheduler`` state dicts;
- ``step``: optimiser steps done, ``data_position``: micro-batches consumed (``step * accum_steps``);
- ``rng``: one entry per rank with torch CPU and CUDA states, Python ``random`` state and the loop's
  ``np.random.Generator`` state (``bit_generator.state``: ``np.random.get_state()`` does not load under
  ``weights_only=True``);
- ``world_size`` and ``config_hash``: resume refuses a checkpoint written under other params;
- ``scaler`` (only with ``precision: fp16``): the ``torch.amp.GradScaler`` state (scale and growth tracker).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import uuid
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tubevit.config.base import to_dict

__all__ = [
    "CHECKPOINT_NAME",
    "CheckpointError",
    "capture_rng",
    "config_hash",
    "latest_checkpoint",
    "load_checkpoint",
    "load_weights",
    "remove_stale_temporaries",
    "restore_rng",
    "save_checkpoint",
    "save_weights",
]

log = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used: another config, another world size, or a malformed file."""


def config_hash(*configs: Any) -> str:
    """SHA-256 (hex) of the canonical JSON of ``configs`` (dataclasses, mappings, lists, scalars).

    Pass everything that must match for a resume to be valid (e.g. the model and pretrain configs).
    """
    text = json.dumps([to_dict(c) for c in configs], sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def capture_rng(np_rng: np.random.Generator) -> dict[str, Any]:
    """This process's RNG states: torch CPU, torch CUDA (all devices), Python ``random``, ``np_rng``."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "python": random.getstate(),
        "numpy": np_rng.bit_generator.state,
    }


def restore_rng(state: dict[str, Any], np_rng: np.random.Generator) -> None:
    """Set the states captured by :func:`capture_rng` (CUDA only where it was captured and is present)."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    random.setstate(state["python"])
    np_rng.bit_generator.state = state["numpy"]


def _atomic_save(obj: Any, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def remove_stale_temporaries(directory: Path) -> list[Path]:
    """Delete ``.<name>.tmp-*`` files left in ``directory`` by a killed writer; returns what was removed."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    stale = sorted(directory.glob(".*.tmp-*"))
    for path in stale:
        path.unlink(missing_ok=True)
        log.info("removed stale temporary %s", path)
    return stale


def save_checkpoint(
    directory: Path,
    *,
    model_state: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    step: int,
    data_position: int,
    rng: list[dict[str, Any]],
    config_hash: str,
    scaler: dict[str, Any] | None = None,
) -> Path:
    """Atomically write ``<directory>/checkpoint.pt`` (replacing the previous one); returns its path.

    Args:
        model_state: the unwrapped model's ``state_dict()``.
        step: optimiser steps done; ``data_position``: micro-batches consumed.
        rng: :func:`capture_rng` of every rank, in rank order.
        config_hash: :func:`config_hash` of the run's configs.
        scaler: ``GradScaler.state_dict()`` of an fp16 run (stored under ``scaler``); ``None``: not stored.
    """
    path = Path(directory) / CHECKPOINT_NAME
    state = {
        "format": FORMAT_VERSION,
        "model": {k: v.detach().cpu() for k, v in model_state.items()},
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "step": step,
        "data_position": data_position,
        "rng": rng,
        "world_size": len(rng),
        "config_hash": config_hash,
    }
    if scaler is not None:
        state["scaler"] = scaler
    _atomic_save(state, path)
    return path


def latest_checkpoint(directory: Path) -> Path | None:
    """``<directory>/checkpoint.pt`` if it exists, else ``None``."""
    path = Path(directory) / CHECKPOINT_NAME
    return path if path.is_file() else None


def load_checkpoint(path: Path, *, config_hash: str, world_size: int = 1) -> dict[str, Any]:
    """Load a checkpoint with ``torch.load(weights_only=True)`` and check that it may be resumed.

    Raises:
        CheckpointError: the stored config hash differs from ``config_hash`` (the params changed), the
            world size differs, or the file is not a checkpoint of this format.
    """
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, dict) or state.get("format") != FORMAT_VERSION:
        raise CheckpointError(f"{path}: not a tubevit training checkpoint (format {FORMAT_VERSION})")
    if state["config_hash"] != config_hash:
        raise CheckpointError(
            f"{path}: written with config hash {state['config_hash'][:12]}, but the current config hashes "
            f"to {config_hash[:12]}; the params changed since it was written. Delete the checkpoint to "
            "start over, or restore the params it was written with."
        )
    if state["world_size"] != world_size:
        raise CheckpointError(
            f"{path}: written by {state['world_size']} ranks, resumed with {world_size}; resume with the "
            "same number of processes (the data position and RNG states are per rank)"
        )
    return state


def save_weights(path: Path, model_state: dict[str, torch.Tensor]) -> Path:
    """Atomically write a bare ``state_dict`` (final weights, a DVC out) to ``path``."""
    path = Path(path)
    _atomic_save({k: v.detach().cpu() for k, v in model_state.items()}, path)
    return path


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    """The model ``state_dict`` in a weights file or a training checkpoint (``weights_only=True``)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and state.get("format") == FORMAT_VERSION and "model" in state:
        return state["model"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: neither a state dict nor a tubevit training checkpoint")
    return state
