"""Fixed 3D sin-cos position embedding at each token's centre (paper §3.3, Eqs. 3-7).

For ``j < D // 6`` channels ``6j ... 6j+5`` are ``sin(t w_j), cos(t w_j), sin(x w_j), cos(x w_j),
sin(y w_j), cos(y w_j)`` with ``w_j = 10000 ** (-j / (D // 6))``; channels from ``6 * (D // 6)`` on are 0.
``t`` is the centre in input frames, ``x`` the width pixel and ``y`` the height pixel of the model input
(see :func:`tubevit.model.tubes.centers`), so all tubes share one coordinate frame and an image's tokens
(``t = 0``) match the 1x16x16 tube's tokens on frame 0 of a video.

It is a pure function of ``(specs, T, H, W, D)``, memoised per shape: never a parameter, never in a state
dict, so one model serves images, 32-, 64- and 128-frame clips.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import torch
from torch import Tensor

from tubevit.model.tubes import TubeSpec, tube_centers

__all__ = ["TEMPERATURE", "position_embedding", "sincos_3d"]

TEMPERATURE = 10000.0


def sincos_3d(centers: Tensor, dim: int, temperature: float = TEMPERATURE) -> Tensor:
    """Sin-cos embedding of 3D points.

    Args:
        centers: ``(N, 3)`` points ``(t, y, x)`` (frames, height pixel, width pixel).
        dim: embedding width ``D`` (any ``D >= 6``; ``D % 6`` trailing channels are 0).

    Returns:
        ``(N, D)`` float64: channels ``6j..6j+5`` = sin/cos of ``t w_j``, ``x w_j``, ``y w_j``.
    """
    if dim < 6:
        raise ValueError(f"sin-cos 3D position embedding needs dim >= 6, got {dim}")
    n_freq = dim // 6
    omega = temperature ** (-torch.arange(n_freq, dtype=torch.float64) / n_freq)  # (F,)
    c = centers.to(torch.float64)
    t, y, x = c[:, 0:1] * omega, c[:, 1:2] * omega, c[:, 2:3] * omega  # (N, F) each
    groups = torch.stack([t.sin(), t.cos(), x.sin(), x.cos(), y.sin(), y.cos()], dim=2)  # (N, F, 6)
    out = torch.zeros(c.shape[0], dim, dtype=torch.float64)
    out[:, : 6 * n_freq] = groups.reshape(c.shape[0], 6 * n_freq)
    return out


SpecKey = tuple[tuple[int, ...] | None, ...]
"""A tube spec as plain tuples: ``(kernel, stride, offset, s2d, learned_kernel)``."""


def _spec_key(spec: TubeSpec) -> SpecKey:
    return (spec.kernel, spec.stride, spec.offset, spec.s2d, spec.learned_kernel)


@functools.lru_cache(maxsize=64)
def _cached(keys: tuple[SpecKey, ...], T: int, H: int, W: int, dim: int) -> Tensor:
    specs = [TubeSpec(*key) for key in keys]
    return sincos_3d(tube_centers(specs, T, H, W), dim).to(torch.float32)


@functools.lru_cache(maxsize=64)
def _cached_on(
    keys: tuple[SpecKey, ...], T: int, H: int, W: int, dim: int, device: torch.device, dtype: torch.dtype
) -> Tensor:
    return _cached(keys, T, H, W, dim).to(device=device, dtype=dtype)  # one copy per device and dtype


@torch.compiler.assume_constant_result
def _lookup(
    keys: tuple[SpecKey, ...], T: int, H: int, W: int, dim: int, device: torch.device, dtype: torch.dtype
) -> Tensor:
    """The memoised embedding. Under ``torch.compile`` Dynamo calls it once per traced input shape, outside
    the graph, and puts the result into the graph as a constant: the sin-cos computation and the
    ``lru_cache`` are never traced (plain Python arguments: tuples of ints, a device, a dtype)."""
    if device.type == "cpu" and dtype == torch.float32:
        return _cached(keys, T, H, W, dim)
    return _cached_on(keys, T, H, W, dim, device, dtype)


def position_embedding(
    specs: Sequence[TubeSpec],
    T: int,
    H: int,
    W: int,
    dim: int,
    *,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Position embedding of every token of ``specs`` on a ``(T, H, W)`` input, in token order.

    Tubes without a position on this input contribute no rows (as in the tokenizer).

    Returns:
        ``(N, D)`` tensor on ``device`` in ``dtype`` (computed in float64; memoised per shape, device and
        dtype, so a GPU step does not copy it again). Treat it as read-only: it is shared between calls.
        Inside ``torch.compile`` it is a constant of the graph of each input shape (no recompilation
        between shapes beyond one graph each, and nothing of it is traced).
    """
    keys = tuple(_spec_key(s) for s in specs)
    device = torch.device("cpu") if device is None else torch.device(device)
    return _lookup(keys, int(T), int(H), int(W), int(dim), device, dtype)
