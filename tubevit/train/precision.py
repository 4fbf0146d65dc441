"""Training precision: ``bf16`` | ``fp16`` | ``fp32`` (``auto``: bf16 on CUDA, fp32 elsewhere).

- ``bf16`` / ``fp16``: ``torch.autocast(device_type, dtype)`` around the forward pass, and the model input
  (the normalised video) is made in that dtype on the device; the loss is computed in float32.
  ``fp16`` also needs a ``torch.amp.GradScaler`` (the loop makes one).
- ``fp32``: no autocast; float32 input. The default on the CPU, where bf16 is ~20x slower on the
  machines this project was measured on, and the only setting under which training is bitwise
  deterministic.
"""

from __future__ import annotations

import contextlib
from typing import Literal

import torch

__all__ = ["PRECISIONS", "Precision", "autocast", "input_dtype", "resolve_precision"]

Precision = Literal["auto", "bf16", "fp16", "fp32"]
PRECISIONS = ("auto", "bf16", "fp16", "fp32")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def resolve_precision(precision: str, device: torch.device) -> Literal["bf16", "fp16", "fp32"]:
    """``auto`` -> ``bf16`` on CUDA, ``fp32`` on any other device; other names are returned as they are.

    Raises:
        ValueError: an unknown name (the message lists the known ones).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "auto":
        return "bf16" if torch.device(device).type == "cuda" else "fp32"
    return precision  # type: ignore[return-value]


def input_dtype(precision: str) -> torch.dtype:
    """The dtype of the model input under a resolved ``precision``: bfloat16, float16 or float32."""
    return _DTYPES[precision]


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """``torch.autocast`` in the precision's dtype on ``device``; a null context for ``fp32``."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=_DTYPES[precision])
