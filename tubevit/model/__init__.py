"""The TubeViT model: tube geometry and tokenizer, fixed position embedding, ViT encoder, heads.

- :mod:`tubevit.model.specs`: ``TubeSpec``, grids and token counts, the named tube sets (no torch).
- :mod:`tubevit.model.variants`: the encoder size table ``VARIANTS`` (no torch).
- :mod:`tubevit.model.tubes`: token centres, ``SparseTubeTokenizer``, S2D, interpolation (re-exports specs).
- :mod:`tubevit.model.posemb`: fixed 3D sin-cos position embedding at token centres.
- :mod:`tubevit.model.vit`: pre-LN blocks, MAP head, image-to-video gate.
- :mod:`tubevit.model.tubevit`: ``TubeViT``, ``create_model`` (re-exports the variant table).
- :mod:`tubevit.model.convert`: image-ViT weights (timm / torchvision), image-to-video scaling.

The package-level names are loaded on first use (PEP 562), so importing a torch-free submodule such as
``tubevit.model.specs`` (the params loader does, in every stage) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tubevit.model.specs import TubeSpec, get_tube_set, parse_tubes
    from tubevit.model.tubevit import TubeViT, create_model
    from tubevit.model.variants import VARIANTS

__all__ = ["VARIANTS", "TubeSpec", "TubeViT", "create_model", "get_tube_set", "parse_tubes"]

_LAZY = {
    "VARIANTS": "tubevit.model.variants",
    "TubeSpec": "tubevit.model.specs",
    "get_tube_set": "tubevit.model.specs",
    "parse_tubes": "tubevit.model.specs",
    "TubeViT": "tubevit.model.tubevit",
    "create_model": "tubevit.model.tubevit",
}


def __getattr__(name: str) -> Any:
    """Load a package-level name from its submodule on first access (then cache it in the package)."""
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
