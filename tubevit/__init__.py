"""TubeViT: sparse video tubes for joint image and video learning (Piergiovanni et al., CVPR 2023).

The library has no side effects on import, never reads ``params.yaml`` and never imports ``pipelines``.
"""

__version__ = "0.1.0"
