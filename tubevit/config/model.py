"""Config of the model (``model`` in params.yaml) and the one function that builds a TubeViT from it.

```yaml
model:
  variant: nano            # nano | tiny | small | base | large | huge
  tubes: embedded          # a tube set name, or a list of {kernel, stride, offset, s2d} specs
                           # (offset, s2d, learned_kernel optional; null is the same as omitting the key)
  drop_path_rate: 0.0
  head_dropout: 0.0        # dropout before each dataset's classifier (fine-tuning sets it per dataset)
  head_mlp: false          # big_vision's MLP in the MAP head
```
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from tubevit.config.base import ConfigError, check
from tubevit.model.specs import TubeSpec, TubeSpecError, parse_tubes  # torch-free: validation in every stage
from tubevit.model.variants import VARIANTS

if TYPE_CHECKING:  # the model itself imports torch: loaded only when a model is built
    from tubevit.model.tubevit import TubeViT

__all__ = ["OPTIONAL_SPEC_KEYS", "ModelConfig", "build_model", "drop_null_keys"]

OPTIONAL_SPEC_KEYS = ("offset", "s2d", "learned_kernel")
"""Keys of a tube spec with a default: written as ``null`` (YAML ``~``, JSON ``null``) they mean the default."""


def drop_null_keys(tubes: Any) -> Any:
    """``tubes`` with the optional spec keys whose value is ``None`` removed, so that ``"s2d": null``
    means the same as no ``s2d`` key. A set name, or anything that is not a list of mappings, is returned
    unchanged (validation reports it)."""
    if isinstance(tubes, str) or not isinstance(tubes, list | tuple):
        return tubes
    return [
        {k: v for k, v in spec.items() if not (k in OPTIONAL_SPEC_KEYS and v is None)}
        if isinstance(spec, Mapping)
        else spec
        for spec in tubes
    ]


VariantName = Literal["nano", "tiny", "small", "base", "large", "huge"]


@dataclass(frozen=True)
class ModelConfig:
    """TubeViT size, tubes and regularisation. Rates are probabilities in [0, 1)."""

    variant: VariantName = "nano"
    tubes: str | list[dict[str, Any]] = "embedded"  # set name (tubevit.model.specs.get_tube_set) or specs
    drop_path_rate: float = 0.0  # stochastic depth at the last block (linear from 0)
    drop_rate: float = 0.0  # dropout after the position embedding and in attention / MLP projections
    attn_drop_rate: float = 0.0  # attention-probability dropout
    head_dropout: float = 0.0  # dropout before each dataset's linear classifier
    head_mlp: bool = False  # MLP in the MAP head (big_vision); off as in our default

    def __post_init__(self) -> None:
        for name in ("drop_path_rate", "drop_rate", "attn_drop_rate", "head_dropout"):
            value = getattr(self, name)
            check(0.0 <= value < 1.0, name, f"must be in [0, 1), got {value}")
        object.__setattr__(self, "tubes", drop_null_keys(self.tubes))
        try:
            specs = parse_tubes(self.tubes)
        except TubeSpecError as exc:
            raise ConfigError(exc.key, exc.reason) from None
        width = VARIANTS[self.variant].embed_dim
        for i, spec in enumerate(specs):
            check(
                width % spec.split == 0,
                f"tubes[{i}].s2d" if not isinstance(self.tubes, str) else "tubes",
                f"S2D factor {spec.split} of tube {spec} does not divide the {self.variant} width {width}",
            )

    @property
    def specs(self) -> tuple[TubeSpec, ...]:
        """The tube specs of ``tubes`` (a set's specs, or the parsed list)."""
        return parse_tubes(self.tubes)


def build_model(cfg: ModelConfig, heads: Mapping[str, int], **overrides: Any) -> TubeViT:
    """Build the TubeViT described by ``cfg`` with one classifier per ``heads`` entry (name -> classes).

    ``overrides`` replace ``cfg`` fields for this build (e.g. ``head_dropout=0.2`` for Charades
    fine-tuning, ``tubes="charades_interpolated"``); they are validated like params.
    """
    from tubevit.model.tubevit import create_model  # torch: only when a model is built

    if overrides:
        cfg = dataclasses.replace(cfg, **overrides)
    return create_model(
        cfg.variant,
        cfg.specs,
        heads,
        drop_path_rate=cfg.drop_path_rate,
        drop_rate=cfg.drop_rate,
        attn_drop_rate=cfg.attn_drop_rate,
        head_dropout=cfg.head_dropout,
        head_mlp=cfg.head_mlp,
    )
