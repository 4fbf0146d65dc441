"""ViT encoder layers (pre-LN, ``F.scaled_dot_product_attention``) and the attention-pooling (MAP) head.

Parameter names follow timm's ``vision_transformer.py`` (``norm1``, ``attn.qkv``, ``attn.proj``, ``norm2``,
``mlp.fc1``, ``mlp.fc2``) so image-ViT checkpoints map across directly (:mod:`tubevit.model.convert`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["Attention", "Block", "DropPath", "GatedSkip", "MAPHead", "Mlp"]


class DropPath(nn.Module):
    """Stochastic depth: zero a whole sample's residual branch with probability ``p`` (training only)."""

    def __init__(self, p: float = 0.0):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask / keep

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Mlp(nn.Module):
    """``(B, N, D)`` -> ``(B, N, D)``: Linear(D, hidden), GELU, dropout, Linear(hidden, D), dropout."""

    def __init__(self, dim: int, hidden_dim: int, drop: float = 0.0):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden_dim)
        self.act = nn.GELU()
        self.drop1 = nn.Dropout(drop)
        self.fc2 = nn.Linear(hidden_dim, dim)
        self.drop2 = nn.Dropout(drop)

    def forward(self, x: Tensor) -> Tensor:
        return self.drop2(self.fc2(self.drop1(self.act(self.fc1(x)))))


class Attention(nn.Module):
    """Multi-head self-attention, ``(B, N, D)`` -> ``(B, N, D)``, via ``F.scaled_dot_product_attention``."""

    def __init__(
        self, dim: int, num_heads: int, qkv_bias: bool = True, attn_drop: float = 0.0, proj_drop: float = 0.0
    ):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.attn_drop = attn_drop
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(proj_drop)

    def forward(self, x: Tensor) -> Tensor:
        B, N, D = x.shape
        # (B, N, 3D) -> (3, B, heads, N, head_dim)
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        x = x.transpose(1, 2).reshape(B, N, D)  # (B, heads, N, head_dim) -> (B, N, D)
        return self.proj_drop(self.proj(x))


class Block(nn.Module):
    """Pre-LN transformer block: ``x + DropPath(Attn(LN(x)))``, then ``x + DropPath(MLP(LN(x)))``.

    ``(B, N, D)`` -> ``(B, N, D)``.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        qkv_bias: bool = True,
        proj_drop: float = 0.0,
        attn_drop: float = 0.0,
        drop_path: float = 0.0,
    ):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias=qkv_bias, attn_drop=attn_drop, proj_drop=proj_drop)
        self.drop_path1 = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), drop=proj_drop)
        self.drop_path2 = DropPath(drop_path)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.drop_path1(self.attn(self.norm1(x)))
        return x + self.drop_path2(self.mlp(self.norm2(x)))


class MAPHead(nn.Module):
    """Multi-head attention pooling (big_vision's MAP head): ``(B, N, D)`` -> ``(B, D)``.

    A learned query ``probe`` attends over the tokens (multi-head, SDPA), then a LayerNorm. With
    ``mlp=True`` the big_vision form is used instead: ``x + MLP(LN(x))`` after the attention.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, mlp: bool = False):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.head_dim = dim // num_heads
        self.probe = nn.Parameter(torch.zeros(1, 1, dim))
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio)) if mlp else None
        nn.init.trunc_normal_(self.probe, std=0.02)

    def forward(self, x: Tensor) -> Tensor:
        B, N, D = x.shape
        q = self.q(self.probe).expand(B, -1, -1)  # (1, 1, D) -> (B, 1, D)
        q = q.reshape(B, 1, self.num_heads, self.head_dim).transpose(1, 2)  # -> (B, heads, 1, head_dim)
        # (B, N, 2D) -> (2, B, heads, N, head_dim)
        kv = self.kv(x).reshape(B, N, 2, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)
        k, v = kv.unbind(0)
        y = F.scaled_dot_product_attention(q, k, v)  # (B, heads, 1, head_dim)
        y = self.proj(y.transpose(1, 2).reshape(B, D))  # -> (B, D)
        if self.mlp is None:
            return self.norm(y)
        return y + self.mlp(self.norm(y))


class GatedSkip(nn.Module):
    """Image-to-video scaling gate (paper §3.6, Eq. 8): ``z_s = MLP(LN(y_s)) + y_s + tanh(alpha) * z_0``.

    ``y_s``: ``(B, N, D)`` output of the last frozen layer; ``z_0``: ``(B, N, D)`` encoder input (tokens +
    position embedding). ``alpha`` is a learned scalar initialised to 0, so the gate starts closed.
    ``gated=False`` drops the ``z_0`` term (the same block without the gate).
    """

    def __init__(self, dim: int, mlp_ratio: float = 4.0, gated: bool = True):
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.alpha = nn.Parameter(torch.zeros(())) if gated else None

    def forward(self, y: Tensor, z0: Tensor) -> Tensor:
        out = y + self.mlp(self.norm(y))
        if self.alpha is not None:
            out = out + torch.tanh(self.alpha) * z0
        return out
