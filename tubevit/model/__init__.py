"""The TubeViT model: tube geometry and tokenizer, fixed position embedding, ViT encoder, heads.

- :mod:`tubevit.model.tubes`: ``TubeSpec``, grids/centres, ``SparseTubeTokenizer``, S2D, interpolation, tube sets.
- :mod:`tubevit.model.posemb`: fixed 3D sin-cos position embedding at token centres.
- :mod:`tubevit.model.vit`: pre-LN blocks, MAP head, image-to-video gate.
- :mod:`tubevit.model.tubevit`: ``TubeViT``, the variant table, ``create_model``.
- :mod:`tubevit.model.convert`: image-ViT weights (timm / torchvision), image-to-video scaling.
"""

from tubevit.model.tubes import TubeSpec, get_tube_set, parse_tubes
from tubevit.model.tubevit import VARIANTS, TubeViT, create_model

__all__ = ["VARIANTS", "TubeSpec", "TubeViT", "create_model", "get_tube_set", "parse_tubes"]
