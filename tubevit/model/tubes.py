"""Sparse video tubes: geometry (grids, token counts, centres), the tokenizer, S2D and kernel interpolation.

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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
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

Triple = tuple[int, int, int]
_AXES = ("t", "h", "w")


class TubeSpecError(ValueError):
    """An invalid tube spec. ``key`` names the field (``stride``, or ``tubes[1].stride`` from
    :func:`parse_tubes`), ``reason`` says what is wrong."""

    def __init__(self, key: str, reason: str):
        self.key = key
        self.reason = reason
        super().__init__(f"{key}: {reason}")


def _triple(value: Any, name: str, minimum: int) -> Triple:
    if not isinstance(value, Sequence) or isinstance(value, str) or len(value) != 3:
        raise TubeSpecError(name, f"expected 3 integers (t, h, w), got {value!r}")
    for v in value:
        if isinstance(v, bool) or not isinstance(v, int):
            raise TubeSpecError(name, f"expected 3 integers (t, h, w), got {value!r}")
        if v < minimum:
            raise TubeSpecError(name, f"every value must be >= {minimum}, got {tuple(value)!r}")
    return (int(value[0]), int(value[1]), int(value[2]))


@dataclass(frozen=True)
class TubeSpec:
    """One sparse tube: a 3D convolution ``kernel`` applied with ``stride`` from ``offset``.

    Args:
        kernel: ``(t, h, w)`` kernel in frames / pixels, as applied to the input.
        stride: ``(t, h, w)`` distance between neighbouring tokens.
        offset: ``(t, h, w)`` start of the first position (the input is sliced from there).
        s2d: ``(f_t, f_h, f_w)`` space-to-depth split factors: ``(2, 1, 1)`` is the paper's "2x temporal",
            ``(1, 2, 2)`` its "4x spatial". ``stride`` must be divisible by them.
        learned_kernel: shape of the learned weight when the tube uses kernel interpolation (the weight is
            resized to ``kernel`` in the forward); ``None`` means ``kernel``. ``kernel - learned_kernel``
            must be even and >= 0 on every axis.

    Raises:
        TubeSpecError: a value that is not 3 positive integers (offset: >= 0), a stride not divisible by
            its S2D factor, or an interpolation that cannot keep the token centres.
    """

    kernel: Triple
    stride: Triple
    offset: Triple = (0, 0, 0)
    s2d: Triple = (1, 1, 1)
    learned_kernel: Triple | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "kernel", _triple(self.kernel, "kernel", 1))
        object.__setattr__(self, "stride", _triple(self.stride, "stride", 1))
        object.__setattr__(self, "offset", _triple(self.offset, "offset", 0))
        object.__setattr__(self, "s2d", _triple(self.s2d, "s2d", 1))
        if self.learned_kernel is not None:
            learned = _triple(self.learned_kernel, "learned_kernel", 1)
            object.__setattr__(self, "learned_kernel", None if learned == self.kernel else learned)
        for axis, s, f in zip(_AXES, self.stride, self.s2d, strict=True):
            if s % f:
                raise TubeSpecError(
                    "stride", f"{axis} stride {s} is not divisible by its S2D factor {f} (s2d={self.s2d})"
                )
        if self.learned_kernel is not None:
            for axis, k, kl in zip(_AXES, self.kernel, self.learned_kernel, strict=True):
                if k < kl or (k - kl) % 2:
                    raise TubeSpecError(
                        "kernel",
                        f"{axis}: interpolated kernel {self.kernel} must exceed learned_kernel "
                        f"{self.learned_kernel} by an even amount on every axis (it is padded by half "
                        "the difference per side to keep token centres)",
                    )

    @property
    def split(self) -> int:
        """S2D factor ``S``: the number of parts concatenated into one token (1 without S2D)."""
        return self.s2d[0] * self.s2d[1] * self.s2d[2]

    @property
    def weight_kernel(self) -> Triple:
        """Shape of the learned weight (``learned_kernel`` if interpolated, else ``kernel``); it sets the
        token positions."""
        return self.learned_kernel if self.learned_kernel is not None else self.kernel

    @property
    def interp_pad(self) -> Triple:
        """Window widening per side, ``(kernel - learned_kernel)/2``, of an interpolated tube (real input
        before the offset is read; only what lies outside the input is replicate-padded)."""
        wk = self.weight_kernel
        return ((self.kernel[0] - wk[0]) // 2, (self.kernel[1] - wk[1]) // 2, (self.kernel[2] - wk[2]) // 2)

    def to_dict(self) -> dict[str, Any]:
        """Plain form (lists), as written in params: ``{kernel, stride, offset, s2d[, learned_kernel]}``."""
        out: dict[str, Any] = {
            "kernel": list(self.kernel),
            "stride": list(self.stride),
            "offset": list(self.offset),
            "s2d": list(self.s2d),
        }
        if self.learned_kernel is not None:
            out["learned_kernel"] = list(self.learned_kernel)
        return out

    def __str__(self) -> str:
        k = "x".join(map(str, self.kernel))
        extra = "" if self.split == 1 else f" s2d={self.s2d}"
        if self.learned_kernel is not None:
            extra += f" from {'x'.join(map(str, self.learned_kernel))}"
        return f"{k} stride={self.stride} offset={self.offset}{extra}"


# --------------------------------------------------------------------------------------------------------
# Pure geometry
# --------------------------------------------------------------------------------------------------------


def grid(spec: TubeSpec, T: int, H: int, W: int) -> Triple:
    """Token grid ``(t, h, w)`` of ``spec`` on a ``(T, H, W)`` input; ``(0, 0, 0)`` if it has no position."""
    counts = []
    for L, o, k, s in zip((T, H, W), spec.offset, spec.weight_kernel, spec.stride, strict=True):
        counts.append(0 if L - o < k else (L - o - k) // s + 1)
    if 0 in counts:
        return (0, 0, 0)
    return (counts[0], counts[1], counts[2])


def num_tokens(spec: TubeSpec, T: int, H: int, W: int) -> int:
    """Number of tokens of ``spec`` on a ``(T, H, W)`` input (0 when the tube is skipped)."""
    t, h, w = grid(spec, T, H, W)
    return t * h * w


def token_counts(specs: Sequence[TubeSpec], T: int, H: int, W: int) -> list[int]:
    """Tokens per tube, in tube order, on a ``(T, H, W)`` input."""
    return [num_tokens(s, T, H, W) for s in specs]


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


# --------------------------------------------------------------------------------------------------------
# Named tube sets
# --------------------------------------------------------------------------------------------------------

# Supplement Table 3: the main TubeViT tubes (B and L), (t, h, w).
_PAPER = (
    TubeSpec((8, 8, 8), (16, 32, 32), (0, 0, 0), (2, 1, 1)),  # 2x temporal S2D
    TubeSpec((16, 4, 4), (6, 32, 32), (4, 8, 8), (1, 2, 2)),  # 4x spatial S2D
    TubeSpec((4, 12, 12), (16, 32, 32), (0, 16, 16)),
    TubeSpec((1, 16, 16), (32, 16, 16), (0, 0, 0)),  # the image tube (patch embedding)
)

# Supplement §2: for Charades the kernels are enlarged (interpolated) to 1x16x16, 16x16x16, 32x8x8 and
# 4x32x32 with strides unchanged. Mapping (paper kernel -> enlarged): 8x8x8 -> 16x16x16 (x2 on every axis),
# 16x4x4 -> 32x8x8 (x2), 4x12x12 -> 4x32x32 (spatial x8/3), 1x16x16 -> 1x16x16 (unchanged). It is the only
# assignment that keeps every kernel's aspect or one axis and scales the two S2D tubes by integers; with
# plain VALID arithmetic it gives the 317 / 2199 tokens (32 / 128 frames) quoted in docs/design.md, which our
# padding brings back to 539 / 2499.
_CHARADES_KERNELS = ((16, 16, 16), (32, 8, 8), (4, 32, 32), (1, 16, 16))

# Embedded default (16 frames of 64x64): the paper set with every kernel, offset and spatial stride halved
# and the temporal strides kept. 16x64^2 tokens per tube: 16 + 32 + 16 + 64 = 128 (the paper's 32x224^2:
# 98 + 147 + 98 + 196). At 8x64^2 (the micro tests): 16 + 0 + 16 + 64 = 96. A 64x64 image: 64.
_EMBEDDED = (
    TubeSpec((4, 4, 4), (16, 16, 16), (0, 0, 0), (2, 1, 1)),
    TubeSpec((8, 2, 2), (6, 16, 16), (2, 4, 4), (1, 2, 2)),
    TubeSpec((2, 6, 6), (16, 16, 16), (0, 8, 8)),
    TubeSpec((1, 8, 8), (32, 8, 8), (0, 0, 0)),
)
# The same kernel enlargement for the embedded set (x2, x2, spatial 6 -> 16, unchanged).
_EMBEDDED_KERNELS = ((8, 8, 8), (16, 4, 4), (2, 16, 16), (1, 8, 8))


# Embedded default on a CPU (16 frames of 32x32, the `nano` model): two dense tubes, measured to learn
# motion much sooner than `embedded` (whose 3D tubes are spatially sparse: 2x2-4x4 pixel kernels at stride
# 16 see 1/16-1/64 of the frame, and the model learns colour alone for hundreds of steps; docs/results.md).
# - frame 0 as 8x8 patches (the image tube, as the paper's 1x16x16 at stride 16 on 224^2 is 14x14 patches
#   of frame 0; here 4x4 patches of a 32^2 frame): 16 tokens, also an image's 16 tokens;
# - 8x8x8 tubes tiling the clip (stride = kernel, the paper's 8x8x8 kernel at our scale): every pixel of
#   every frame is in exactly one tube, so every motion is seen. 16x32^2: 2x4x4 = 32 tokens; 8x32^2 (micro
#   tests): 16 tokens.
# In all 48 tokens at 16x32^2 (32 at 8x32^2). At 16x64^2: 64 + 128 = 192.
_EMBEDDED32 = (
    TubeSpec((1, 8, 8), (32, 8, 8), (0, 0, 0)),
    TubeSpec((8, 8, 8), (8, 8, 8), (0, 0, 0)),
)
# Charades fine-tuning: the 3D kernel enlarged x2 on every axis (8x8x8 -> 16x16x16, as the paper's
# 8x8x8 -> 16x16x16), the image tube unchanged; strides, tokens and parameters unchanged (docs/design.md
# "Interpolated kernels").
_EMBEDDED32_KERNELS = ((1, 8, 8), (16, 16, 16))


def _interpolated(base: Sequence[TubeSpec], kernels: Sequence[Triple]) -> tuple[TubeSpec, ...]:
    return tuple(
        TubeSpec(k, s.stride, s.offset, s.s2d, learned_kernel=s.weight_kernel)
        for s, k in zip(base, kernels, strict=True)
    )


# Supplement Table 5 (ablation of tube shapes, ViT K600, 50k steps): shapes (a)-(h), strides (i)-(v).
_T5_SHAPES: dict[str, Triple] = {
    "a": (1, 16, 16),
    "b": (4, 32, 32),
    "c": (4, 4, 4),
    "d": (4, 12, 12),
    "e": (8, 8, 8),
    "f": (16, 4, 4),
    "g": (16, 16, 16),
    "h": (32, 8, 8),
}
_T5_STRIDES: dict[str, Triple] = {
    "i": (4, 16, 16),
    "ii": (8, 8, 8),
    "iii": (8, 32, 32),
    "iv": (16, 16, 16),
    "v": (32, 32, 32),
}
# The 8 configurations in the table's order (no offsets, no S2D: the table gives none). The extracted
# table prints the first three configurations on one row with only two numbers, "87.9 87.5": we assign
# them to configurations 1 and 2 in order, so configuration 3, (c+iv)+(c+iv)+(c+iv), has no known result.
_T5_CONFIGS: tuple[tuple[tuple[str, str], ...], ...] = (
    (("a", "iv"), ("b", "v"), ("f", "iv")),
    (("c", "iv"), ("e", "v"), ("g", "iv")),
    (("c", "iv"), ("c", "iv"), ("c", "iv")),
    (("a", "iv"), ("e", "v"), ("g", "iv")),
    (("b", "iv"), ("e", "v"), ("g", "iv")),
    (("a", "iv"), ("d", "v"), ("e", "iv"), ("b", "v")),
    (("a", "iv"), ("b", "v"), ("c", "iv"), ("h", "v")),
    (("a", "iv"), ("d", "v"), ("e", "iv"), ("f", "v")),
)
_T5_K600 = (87.9, 87.5, None, 87.8, 87.7, 88.6, 87.9, 88.9)

TUBE_SETS: dict[str, tuple[TubeSpec, ...]] = {
    "paper": _PAPER,
    "charades_interpolated": _interpolated(_PAPER, _CHARADES_KERNELS),
    "embedded": _EMBEDDED,
    "embedded_interpolated": _interpolated(_EMBEDDED, _EMBEDDED_KERNELS),
    "embedded32": _EMBEDDED32,
    "embedded32_interpolated": _interpolated(_EMBEDDED32, _EMBEDDED32_KERNELS),
}
TABLE5_RESULTS: dict[str, float | None] = {}
"""K600 top-1 of each Table 5 configuration, by its numbered name (``None``: not in the table)."""
TABLE5_ALIASES: dict[str, str] = {}
"""Readable alias (e.g. ``table5_aiv_dv_eiv_fv``) -> numbered name (``table5_8``)."""

for _n, (_cfg, _acc) in enumerate(zip(_T5_CONFIGS, _T5_K600, strict=True), start=1):
    _specs = tuple(TubeSpec(_T5_SHAPES[shape], _T5_STRIDES[stride]) for shape, stride in _cfg)
    _name = f"table5_{_n}"
    _alias = "table5_" + "_".join(shape + stride for shape, stride in _cfg)
    TUBE_SETS[_name] = _specs
    TUBE_SETS[_alias] = _specs
    TABLE5_RESULTS[_name] = _acc
    TABLE5_ALIASES[_alias] = _name


def dense_tubes(kernel: Triple = (2, 16, 16)) -> tuple[TubeSpec, ...]:
    """A dense ViViT-style tubelet tokenisation: one tube with stride == kernel (default 2x16x16)."""
    return (TubeSpec(kernel, kernel),)


def get_tube_set(name: str) -> tuple[TubeSpec, ...]:
    """The named tube set: ``paper`` (supplement Table 3), ``charades_interpolated``, ``embedded``,
    ``embedded_interpolated``, ``embedded32`` (the embedded default at 32^2), ``embedded32_interpolated``,
    ``table5_1`` ... ``table5_8`` (or their aliases such as
    ``table5_aiv_dv_eiv_fv``) and ``dense`` (2x16x16 tubelets).

    Raises:
        KeyError: an unknown name; the message lists the known ones.
    """
    if name == "dense":
        return dense_tubes()
    try:
        return TUBE_SETS[name]
    except KeyError:
        known = ", ".join([*TUBE_SETS, "dense"])
        raise KeyError(f"unknown tube set {name!r}; known: {known}") from None


_SPEC_KEYS = tuple(f.name for f in fields(TubeSpec))


def parse_tubes(value: str | Sequence[Mapping[str, Any] | TubeSpec]) -> tuple[TubeSpec, ...]:
    """A tube set from its name or from a list of ``{kernel, stride, offset, s2d[, learned_kernel]}``.

    Raises:
        TubeSpecError: an unknown name (key ``tubes``), or an invalid spec with a key such as
            ``tubes[1].stride``.
    """
    if isinstance(value, str):
        try:
            return get_tube_set(value)
        except KeyError as exc:
            raise TubeSpecError("tubes", exc.args[0]) from None
    if not isinstance(value, Sequence) or not value:
        raise TubeSpecError("tubes", f"expected a tube set name or a non-empty list of specs, got {value!r}")
    specs = []
    for i, item in enumerate(value):
        if isinstance(item, TubeSpec):
            specs.append(item)
            continue
        if not isinstance(item, Mapping):
            raise TubeSpecError(f"tubes[{i}]", f"expected a mapping with kernel and stride, got {item!r}")
        unknown = sorted(set(map(str, item)) - set(_SPEC_KEYS))
        if unknown:
            raise TubeSpecError(
                f"tubes[{i}].{unknown[0]}", f"unknown key; known keys: {', '.join(_SPEC_KEYS)}"
            )
        for required in ("kernel", "stride"):
            if required not in item:
                raise TubeSpecError(f"tubes[{i}].{required}", "missing required key")
        try:
            specs.append(TubeSpec(**item))
        except TubeSpecError as exc:
            raise TubeSpecError(f"tubes[{i}].{exc.key}", exc.reason) from None
    return tuple(specs)
