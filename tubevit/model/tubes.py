"""Sparse video tubes: token centres, the tokenizer, S2D and kernel interpolation.

The specs and their pure geometry (:class:`TubeSpec`, grids, token counts, the named tube sets) live in the
torch-free :mod:`tubevit.model.specs` and are re-exported here.

Shapes are ``(t, h, w)`` triples; a video is ``(B, C, T, H, W)``, an image the same with ``T == 1``.

**Geometry.** Per axis, with input length ``L``, offset ``o``, stride ``s`` and the tube's *learned* kernel
``k``, a tube has ``n = floor((L - o - k) / s) + 1`` positions (0 when ``L - o < k``). Position ``i`` starts
at ``o + i*s`` and its centre is ``o + i*s + (k - 1)/2``, in input frames / pixels. The offset is applied by
slicing the input, followed by a VALID strided convolution. A tube with no position (its kernel longer than
the input, e.g. the paper's 16x4x4 tube with offset 4 on a 16-frame clip, or every 3D tube on an image) is
skipped: it contributes no tokens.

**S2D** (space-to-depth, paper §3.4). A tube with split factors ``s2d = (f_t, f_h, f_w)`` (``S`` their
product; "2x temporal" is ``(2, 1, 1)``, "4x spatial" ``(1, 2, 2)``) keeps the positions of its non-S2D
twin. Each token is made of ``S`` parts from one convolution with ``d/S`` output channels (shared weights,
so the tube has 1/S of the twin's parameters); the parts start ``s/f`` apart on the split axes, and part
``j`` (row-major over ``(j_t, j_h, j_w)``) fills channels ``[j*d/S, (j+1)*d/S)``. Where the last part would
overrun the input, the input is end-padded by replication. The token count and width therefore always equal
the twin's. A merged token's centre is the centre of the union of its parts:
``o + i*s + ((f - 1)*s/f + k - 1)/2``.

**Kernel interpolation** (paper §3.4, supplement §2). A spec may have ``learned_kernel`` (the shape of its
weight) different from ``kernel`` (the shape it is applied with). The weight keeps its learned shape, so the
parameter count is unchanged; the forward resizes it with ``F.interpolate(trilinear, align_corners=False)``
times ``old volume / new volume`` and widens each window by ``p = (kernel - learned_kernel)/2`` per side,
so every token keeps the position and centre of the learned-kernel tube (same token count, same position
embedding). A window reads the real frames / pixels before the offset (``[o - p, o)``); only the part that
lies outside the input (``max(0, p - o)`` at the start, the overrun at the end) is replicate-padded.

**Token order.** Tubes in their given order (skipped tubes contribute nothing); within a tube, tokens are
row-major over its ``(t, h, w)`` grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tubevit.model.specs import (  # re-exported: the torch-free geometry and tube sets
    TABLE5_ALIASES,
    TABLE5_RESULTS,
    TUBE_SETS,
    TubeSpec,
    TubeSpecError,
    dense_tubes,
    get_tube_set,
    grid,
    num_tokens,
    parse_tubes,
    token_counts,
)

__all__ = [
    "TABLE5_ALIASES",
    "TABLE5_RESULTS",
    "TUBE_SETS",
    "SparseTubeTokenizer",
    "TubeEmbed",
    "TubeSpec",
    "TubeSpecError",
    "centers",
    "dense_tubes",
    "get_tube_set",
    "grid",
    "num_tokens",
    "parse_tubes",
    "resize_kernel",
    "token_counts",
    "tube_centers",
]


# --------------------------------------------------------------------------------------------------------
# Token centres (tensors)
# --------------------------------------------------------------------------------------------------------


def _axis_centers(n: int, o: int, s: int, k: int, f: int) -> Tensor:
    i = torch.arange(n, dtype=torch.float64)
    return o + i * s + ((f - 1) * s / f + k - 1) / 2


def centers(spec: TubeSpec, T: int, H: int, W: int) -> Tensor:
    """Centres of ``spec``'s tokens on a ``(T, H, W)`` input.

    Returns:
        ``(N, 3)`` float64 tensor of ``(t, y, x)`` in input frames / pixels (y: height, x: width), in token
        order (row-major over the grid). ``N`` may be 0.
    """
    gt, gh, gw = grid(spec, T, H, W)
    if gt == 0:
        return torch.zeros(0, 3, dtype=torch.float64)
    k, s, o, f = spec.weight_kernel, spec.stride, spec.offset, spec.s2d
    ct = _axis_centers(gt, o[0], s[0], k[0], f[0])
    cy = _axis_centers(gh, o[1], s[1], k[1], f[1])
    cx = _axis_centers(gw, o[2], s[2], k[2], f[2])
    mesh = torch.meshgrid(ct, cy, cx, indexing="ij")
    return torch.stack([m.reshape(-1) for m in mesh], dim=1)


def tube_centers(specs: Sequence[TubeSpec], T: int, H: int, W: int) -> Tensor:
    """Centres of all tokens of ``specs`` in token order: ``(N, 3)`` float64 ``(t, y, x)``."""
    return torch.cat([centers(s, T, H, W) for s in specs], dim=0)


# --------------------------------------------------------------------------------------------------------
# Kernel interpolation and the tokenizer
# --------------------------------------------------------------------------------------------------------


def resize_kernel(weight: Tensor, size: Sequence[int]) -> Tensor:
    """Resize a 3D kernel, keeping its response to a constant input.

    Args:
        weight: ``(O, C, kt, kh, kw)`` convolution weight.
        size: new ``(kt', kh', kw')``.

    Returns:
        ``(O, C, kt', kh', kw')``: trilinear ``F.interpolate`` (``align_corners=False``) times
        ``kt*kh*kw / (kt'*kh'*kw')``. Exact response on a constant input for integer scale factors.
    """
    size = tuple(int(v) for v in size)
    if tuple(weight.shape[2:]) == size:
        return weight
    old = math.prod(weight.shape[2:])
    new = math.prod(size)
    return F.interpolate(weight, size=size, mode="trilinear", align_corners=False) * (old / new)


class TubeEmbed(nn.Module):
    """One tube: a ``Conv3d`` from ``in_chans`` to ``embed_dim / S`` channels with the spec's learned kernel.

    The convolution's own stride is unused: :meth:`forward` applies offset, interpolation, S2D and stride.
    """

    def __init__(self, spec: TubeSpec, embed_dim: int, in_chans: int = 3):
        super().__init__()
        if embed_dim % spec.split:
            raise ValueError(
                f"tube {spec}: embed_dim {embed_dim} is not divisible by its S2D factor {spec.split}"
            )
        self.spec = spec
        self.embed_dim = embed_dim
        self.proj = nn.Conv3d(in_chans, embed_dim // spec.split, kernel_size=spec.weight_kernel)

    def set_spec(self, spec: TubeSpec) -> None:
        """Swap in a spec with the same learned kernel, stride, offset and S2D (e.g. an interpolated one)."""
        old = self.spec
        same = (spec.weight_kernel, spec.stride, spec.offset, spec.s2d) == (
            old.weight_kernel,
            old.stride,
            old.offset,
            old.s2d,
        )
        if not same:
            raise ValueError(
                f"tube {old} cannot become {spec}: learned kernel, stride, offset and s2d must stay the same"
            )
        self.spec = spec

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, T, H, W)`` -> ``(B, N, D)`` tokens in row-major ``(t, h, w)`` order (``N`` may be 0)."""
        B, _, T, H, W = x.shape
        spec = self.spec
        n = grid(spec, T, H, W)
        if n[0] == 0:
            return x.new_zeros(B, 0, self.embed_dim)
        f, s, o, k, p = spec.s2d, spec.stride, spec.offset, spec.kernel, spec.interp_pad
        step = tuple(si // fi for si, fi in zip(s, f, strict=True))  # conv stride: s / f
        # conv position m starts at o + m*step - p (input coords), m < n*f: it reads [o - p, end). Real
        # frames/pixels before the offset are used; only what lies outside the input is replicate-padded.
        starts = [oi - pi for oi, pi in zip(o, p, strict=True)]
        ends = [
            oi + (ni * fi - 1) * st - pi + ki
            for oi, ni, fi, st, pi, ki in zip(o, n, f, step, p, k, strict=True)
        ]
        lo = [max(st, 0) for st in starts]
        x = x[:, :, lo[0] : ends[0], lo[1] : ends[1], lo[2] : ends[2]]
        front = [max(0, -st) for st in starts]  # max(0, p - o)
        end_pad = [max(0, e - L) for e, L in zip(ends, (T, H, W), strict=True)]
        pad = (front[2], end_pad[2], front[1], end_pad[1], front[0], end_pad[0])
        if any(pad):
            x = F.pad(x, pad, mode="replicate")
        weight = resize_kernel(self.proj.weight, k)
        y = F.conv3d(x, weight, self.proj.bias, stride=step)  # (B, D/S, nt*ft, nh*fh, nw*fw)
        if spec.split == 1:
            return y.flatten(2).transpose(1, 2)  # (B, D, nt, nh, nw) -> (B, N, D)
        c = y.shape[1]
        y = y.reshape(B, c, n[0], f[0], n[1], f[1], n[2], f[2])
        # (B, c, nt, ft, nh, fh, nw, fw) -> (B, nt, nh, nw, ft, fh, fw, c) -> (B, N, S*c): part j -> [j*c, (j+1)*c)
        y = y.permute(0, 2, 4, 6, 3, 5, 7, 1)
        return y.reshape(B, n[0] * n[1] * n[2], spec.split * c)

    def extra_repr(self) -> str:
        return str(self.spec)


class SparseTubeTokenizer(nn.Module):
    """All tubes of a model: ``(B, C, T, H, W)`` -> ``(B, N, D)`` tokens, concatenated in tube order.

    Args:
        tubes: the tube specs (see :class:`TubeSpec`), e.g. ``get_tube_set("paper")``.
        embed_dim: token width ``D``; must be divisible by every tube's S2D factor.
        in_chans: input channels ``C``.

    The weight of tube ``i`` is ``tubes.{i}.proj.weight`` with shape ``(D/S, C, *learned_kernel)``.
    """

    def __init__(self, tubes: Sequence[TubeSpec], embed_dim: int, in_chans: int = 3):
        super().__init__()
        if not tubes:
            raise ValueError("a tokenizer needs at least one tube")
        self.embed_dim = embed_dim
        self.in_chans = in_chans
        self.tubes = nn.ModuleList([TubeEmbed(s, embed_dim, in_chans) for s in tubes])

    @property
    def specs(self) -> tuple[TubeSpec, ...]:
        return tuple(t.spec for t in self.tubes)

    def set_specs(self, specs: Sequence[TubeSpec]) -> None:
        """Switch every tube to a compatible spec (same learned kernel, stride, offset and S2D), e.g. the
        interpolated set of :func:`get_tube_set` ``("charades_interpolated")``. Parameters and token counts
        do not change."""
        if len(specs) != len(self.tubes):
            raise ValueError(f"expected {len(self.tubes)} tube specs, got {len(specs)}")
        for i, (tube, spec) in enumerate(zip(self.tubes, specs, strict=True)):
            try:
                tube.set_spec(spec)
            except ValueError as exc:
                raise ValueError(f"tube {i}: {exc}") from None

    def active_specs(self, T: int, H: int, W: int) -> tuple[TubeSpec, ...]:
        """The specs with at least one token on a ``(T, H, W)`` input, in tube order."""
        return tuple(s for s in self.specs if num_tokens(s, T, H, W) > 0)

    def forward(self, x: Tensor) -> Tensor:
        """``(B, C, T, H, W)`` -> ``(B, N, D)``; tubes without a position on this input are skipped.

        Raises:
            ValueError: no tube has a position on this input size.
        """
        T, H, W = x.shape[2:]  # (B, C, T, H, W)
        if x.shape[1] != self.in_chans:
            raise ValueError(f"expected {self.in_chans} input channels, got input of shape {tuple(x.shape)}")
        out = [tube(x) for tube in self.tubes if num_tokens(tube.spec, T, H, W) > 0]
        if not out:
            raise ValueError(f"no tube has a position on input (T, H, W) = {(T, H, W)}; tubes: {self.specs}")
        return out[0] if len(out) == 1 else torch.cat(out, dim=1)
