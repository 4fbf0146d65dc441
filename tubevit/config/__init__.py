"""Typed, frozen configuration dataclasses, one module per ``params.yaml`` concern.

- :mod:`tubevit.config.base`: :func:`build` (mapping -> dataclass, errors naming the key), :class:`ConfigError`.
- :mod:`tubevit.config.data`: datasets, synthetic generation, download, re-encode, shard, loader.
- :mod:`tubevit.config.model`: model variant, tube set, head.
- :mod:`tubevit.config.train`: optimiser, schedule, pretrain / finetune / evaluate sections.
"""

from tubevit.config.base import ConfigError, build, check, to_dict

__all__ = ["ConfigError", "build", "check", "to_dict"]
