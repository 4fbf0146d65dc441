"""TubeViT: sparse tube tokenizer + fixed 3D position embedding + pre-LN ViT + MAP head + one linear
classifier per dataset. Images ``(B, C, 1, H, W)`` and videos ``(B, C, T, H, W)`` share every layer; an
image only gets tokens from tubes whose temporal kernel is 1.

>>> model = create_model("tiny", "paper", {"kinetics": 400, "imagenet": 1000})
>>> logits = model(torch.randn(2, 3, 32, 224, 224), "kinetics")  # (2, 400)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from tubevit.model.posemb import position_embedding
from tubevit.model.tubes import SparseTubeTokenizer, TubeSpec, parse_tubes
from tubevit.model.variants import VARIANTS, Variant  # re-exported: the torch-free size table
from tubevit.model.vit import Block, GatedSkip, MAPHead

__all__ = [
    "VARIANTS",
    "TubeViT",
    "Variant",
    "count_macs",
    "create_model",
    "parameter_counts",
]


class TubeViT(nn.Module):
    """Sparse-tube video/image ViT with per-dataset heads.

    Args:
        tubes: tube specs (see :mod:`tubevit.model.tubes`).
        heads: dataset name -> number of classes; one ``nn.Linear`` each in ``self.heads``.
        embed_dim, depth, num_heads, mlp_ratio: encoder size (D, blocks, heads, MLP ratio).
        in_chans: input channels C.
        qkv_bias: bias on the attention's qkv projection.
        drop_rate: dropout after the position embedding and inside attention/MLP projections.
        attn_drop_rate: attention-probability dropout.
        drop_path_rate: stochastic depth, increasing linearly to this value over the blocks.
        head_dropout: dropout before each dataset's linear classifier.
        head_mlp: use big_vision's MLP in the MAP head (off by default).
        tube_dim: token width of the tubes when it differs from ``embed_dim`` (image-to-video scaling with
            a non-integer width ratio): a linear map ``tube_dim -> embed_dim`` (``tube_proj``) follows them.
    """

    def __init__(
        self,
        tubes: Sequence[TubeSpec],
        heads: Mapping[str, int],
        *,
        embed_dim: int,
        depth: int,
        num_heads: int,
        mlp_ratio: float = 4.0,
        in_chans: int = 3,
        qkv_bias: bool = True,
        drop_rate: float = 0.0,
        attn_drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        head_dropout: float = 0.0,
        head_mlp: bool = False,
        tube_dim: int | None = None,
    ):
        super().__init__()
        if embed_dim < 6:
            raise ValueError(f"embed_dim must be >= 6 for the 3D sin-cos embedding, got {embed_dim}")
        self.embed_dim = embed_dim
        self.num_heads = num_heads
        self.mlp_ratio = mlp_ratio
        tube_dim = tube_dim or embed_dim
        self.tokenizer = SparseTubeTokenizer(tubes, tube_dim, in_chans)
        self.tube_proj = nn.Linear(tube_dim, embed_dim, bias=False) if tube_dim != embed_dim else None
        self.pos_drop = nn.Dropout(drop_rate)
        rates = [drop_path_rate * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            [
                Block(embed_dim, num_heads, mlp_ratio, qkv_bias, drop_rate, attn_drop_rate, rates[i])
                for i in range(depth)
            ]
        )
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.pool = MAPHead(embed_dim, num_heads, mlp_ratio, mlp=head_mlp)
        self.head_drop = nn.Dropout(head_dropout)
        self.heads = nn.ModuleDict()
        self.gate: GatedSkip | None = None
        self.gate_index: int | None = None
        self.detach_stem = False  # blocks before the gate take z_0 detached (image-to-video scaling)
        self.grad_checkpointing = False
        self.apply(_init_weights)
        for name, num_classes in heads.items():
            self.add_head(name, num_classes)

    # ---- structure ------------------------------------------------------------------------------------

    @property
    def tubes(self) -> tuple[TubeSpec, ...]:
        return self.tokenizer.specs

    def set_tubes(self, tubes: str | Sequence[TubeSpec | Mapping[str, Any]]) -> None:
        """Switch to compatible tube specs in place, e.g. ``"charades_interpolated"`` on a ``paper`` model:
        same learned kernels, strides, offsets and S2D, so parameters and token counts are unchanged."""
        self.tokenizer.set_specs(parse_tubes(tubes))

    def add_head(self, name: str, num_classes: int) -> nn.Linear:
        """Add (or replace) the linear classifier of dataset ``name``: ``(B, D)`` -> ``(B, num_classes)``."""
        if num_classes < 1:
            raise ValueError(f"head {name!r}: num_classes must be >= 1, got {num_classes}")
        head = nn.Linear(self.embed_dim, num_classes)
        if self.norm.weight.device.type != "meta":
            head.to(self.norm.weight.device, self.norm.weight.dtype)
        _init_weights(head)
        self.heads[name] = head
        return head

    def add_gate(self, index: int, gated: bool = True) -> GatedSkip:
        """Insert the image-to-video scaling gate (:class:`GatedSkip`) on the output of ``blocks[index-1]``
        (``y_s``, ``s = index``); ``blocks[index:]`` then take ``z_s``."""
        if not 1 <= index <= len(self.blocks):
            raise ValueError(f"gate index must be in [1, {len(self.blocks)}], got {index}")
        self.gate = GatedSkip(self.embed_dim, self.mlp_ratio, gated=gated).to(self.norm.weight.device)
        self.gate.apply(_init_weights)
        self.gate_index = index
        return self.gate

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recompute each block in the backward pass (activation checkpointing) to save memory."""
        self.grad_checkpointing = enable

    def no_weight_decay(self) -> set[str]:
        """Names of parameters excluded from weight decay besides biases and norms (timm convention)."""
        names = {"pool.probe"}
        if self.gate is not None and self.gate.alpha is not None:
            names.add("gate.alpha")
        return names

    # ---- forward --------------------------------------------------------------------------------------

    def embed(self, x: Tensor) -> Tensor:
        """``(B, C, T, H, W)`` -> ``(B, N, D)``: tube tokens plus the fixed position embedding (``z_0``)."""
        T, H, W = x.shape[2:]  # (B, C, T, H, W)
        tokens = self.tokenizer(x)
        if self.tube_proj is not None:
            tokens = self.tube_proj(tokens)
        pos = position_embedding(
            self.tokenizer.active_specs(T, H, W), T, H, W, self.embed_dim, device=x.device, dtype=tokens.dtype
        )
        return tokens + pos  # (B, N, D) + (N, D)

    def forward_features(self, x: Tensor) -> Tensor:
        """``(B, C, T, H, W)`` -> ``(B, N, D)`` encoder output after the final LayerNorm."""
        z0 = self.embed(x)
        # detach_stem: only the gate's tanh(alpha) * z_0 term carries a gradient to the tubes, so the
        # frozen blocks before it need no backward (tubevit.model.convert, tube_proj_grad="gate")
        x = self.pos_drop(z0.detach() if self.detach_stem else z0)
        for i, block in enumerate(self.blocks):
            if self.gate is not None and i == self.gate_index:
                x = self.gate(x, z0)
            if self.grad_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, use_reentrant=False)
            else:
                x = block(x)
        if self.gate is not None and self.gate_index == len(self.blocks):
            x = self.gate(x, z0)
        return self.norm(x)

    def forward_head(self, x: Tensor, dataset: str) -> Tensor:
        """``(B, N, D)`` -> ``(B, K)`` logits of ``dataset``'s classifier (attention pooling, dropout, linear)."""
        if dataset not in self.heads:
            raise KeyError(f"no head for dataset {dataset!r}; heads: {', '.join(self.heads) or 'none'}")
        return self.heads[dataset](self.head_drop(self.pool(x)))

    def forward(self, x: Tensor, dataset: str) -> Tensor:
        """``(B, C, T, H, W)`` (images: ``T == 1``) -> ``(B, K)`` logits of ``dataset``."""
        return self.forward_head(self.forward_features(x), dataset)


def _init_weights(module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.Conv3d):
        # lecun-normal over the learned kernel's fan-in, as big_vision / timm's jax init of patch embeddings
        fan_in = module.weight[0].numel()
        nn.init.trunc_normal_(module.weight, std=1.0 / math.sqrt(fan_in))
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def create_model(
    variant: str,
    tubes: str | Sequence[TubeSpec | Mapping[str, Any]],
    heads: Mapping[str, int],
    *,
    drop_path_rate: float = 0.0,
    head_dropout: float = 0.0,
    head_mlp: bool = False,
    drop_rate: float = 0.0,
    attn_drop_rate: float = 0.0,
    in_chans: int = 3,
    **overrides: Any,
) -> TubeViT:
    """Build a TubeViT of a named size.

    Args:
        variant: one of ``nano``, ``tiny``, ``small``, ``base``, ``large``, ``huge`` (:data:`VARIANTS`).
        tubes: a tube set name (``"paper"``, ``"embedded"``, ...) or a list of specs / spec dicts.
        heads: dataset name -> number of classes.
        overrides: ``embed_dim``, ``depth``, ``num_heads``, ``mlp_ratio``, ``qkv_bias`` or ``tube_dim``
            replacing the variant's values.

    Build on the meta device (``with torch.device("meta"): create_model(...)``) to count parameters or
    MACs of large variants without allocating them.
    """
    if variant not in VARIANTS:
        raise KeyError(f"unknown variant {variant!r}; known: {', '.join(VARIANTS)}")
    v = VARIANTS[variant]
    size = {"embed_dim": v.embed_dim, "depth": v.depth, "num_heads": v.num_heads, "mlp_ratio": v.mlp_ratio}
    allowed = {"embed_dim", "depth", "num_heads", "mlp_ratio", "qkv_bias", "tube_dim"}
    unknown = sorted(set(overrides) - allowed)
    if unknown:
        raise TypeError(f"create_model got unknown arguments {unknown}; overridable: {sorted(allowed)}")
    size.update(overrides)
    return TubeViT(
        parse_tubes(tubes),
        heads,
        in_chans=in_chans,
        drop_rate=drop_rate,
        attn_drop_rate=attn_drop_rate,
        drop_path_rate=drop_path_rate,
        head_dropout=head_dropout,
        head_mlp=head_mlp,
        **size,
    )


def parameter_counts(model: TubeViT) -> dict[str, int]:
    """Parameters by part: ``tubes`` (tokenizer and ``tube_proj``), ``encoder`` (blocks, gate, final norm),
    ``pool`` (MAP head), ``classifiers`` (the per-dataset linears), ``heads`` (pool + classifiers) and
    ``total``."""

    def n(module: nn.Module | None) -> int:
        return 0 if module is None else sum(p.numel() for p in module.parameters())

    tubes = n(model.tokenizer) + n(model.tube_proj)
    encoder = n(model.blocks) + n(model.norm) + n(model.gate)
    pool, classifiers = n(model.pool), n(model.heads)
    counts = {
        "tubes": tubes,
        "encoder": encoder,
        "pool": pool,
        "classifiers": classifiers,
        "heads": pool + classifiers,
        "total": n(model),
    }
    assert counts["total"] == tubes + encoder + pool + classifiers, "a parameter outside the known parts"
    return counts


def count_macs(model: nn.Module, shape: Sequence[int], dataset: str) -> int:
    """Multiply-accumulates of one forward pass on an input of ``shape`` ``(B, C, T, H, W)``.

    Counted with ``torch.utils.flop_counter.FlopCounterMode`` on the model's device under the MATH SDPA
    backend (CPU's fused SDPA counts as 0 FLOPs in torch 2.14); on the meta device nothing is allocated.
    MACs = FLOPs / 2.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    x = torch.zeros(*shape, device=device)
    counter = FlopCounterMode(display=False)
    with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), counter:
        model(x, dataset)
    return counter.get_total_flops() // 2
