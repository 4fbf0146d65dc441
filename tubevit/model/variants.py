"""The TubeViT encoder sizes: :class:`Variant` and the :data:`VARIANTS` table (big_vision's one table).

Torch-free on purpose: the params loader checks a variant's width against the tubes' S2D factors in every
stage, and the data stages must not pay for importing torch. :mod:`tubevit.model.tubevit` re-exports both
names and builds the model from them.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["VARIANTS", "Variant"]


@dataclass(frozen=True)
class Variant:
    """Encoder size: width ``embed_dim`` (D), ``depth`` blocks, ``num_heads``, MLP width ``mlp_ratio * D``."""

    embed_dim: int
    depth: int
    num_heads: int
    mlp_ratio: float = 4.0


VARIANTS: dict[str, Variant] = {
    "nano": Variant(64, 4, 4),  # embedded default on a 2-core CPU (docs/design.md prototype)
    "tiny": Variant(192, 12, 3),  # DeiT-Ti
    "small": Variant(384, 12, 6),  # DeiT-S
    "base": Variant(768, 12, 12),  # supplement Table 2: ViT-B, MLP 3072
    "large": Variant(1024, 24, 16),  # ViT-L, MLP 4096
    "huge": Variant(1280, 32, 16),  # ViT-H, MLP 5120
}
