"""Typed, frozen configuration: build a dataclass from a plain mapping, with errors that name the key.

Every ``params.yaml`` section maps onto a frozen dataclass. :func:`build` is the one way to make one from
a mapping: it refuses unknown keys, checks every value against the field's type annotation (``int``,
``float``, ``bool``, ``str``, ``Literal``, ``tuple[int, int, int]``, ``list[X]``, ``dict[str, X]``,
``X | None`` and nested dataclasses) and then lets the dataclass's ``__post_init__`` check ranges. Every
error is a :class:`ConfigError` whose message starts with the dotted key, e.g.
``pretrain.optim.lr: expected a number, got 'fast'``.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Mapping
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

__all__ = ["ConfigError", "build", "check", "to_dict"]

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is missing, unknown, of the wrong type or out of range.

    The message always starts with the dotted key that is wrong.
    """

    def __init__(self, key: str, reason: str):
        self.key = key
        self.reason = reason
        super().__init__(f"{key}: {reason}" if key else reason)


def check(condition: bool, key: str, reason: str) -> None:
    """Raise ``ConfigError(key, reason)`` unless ``condition`` holds (for ``__post_init__`` checks)."""
    if not condition:
        raise ConfigError(key, reason)


def _join(prefix: str, name: str | int) -> str:
    if isinstance(name, int):
        return f"{prefix}[{name}]"
    return f"{prefix}.{name}" if prefix else name


def _describe(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _convert(tp: Any, value: Any, key: str) -> Any:
    """Check ``value`` against annotation ``tp`` and return it in the annotated form (tuples, dataclasses)."""
    origin = get_origin(tp)
    args = get_args(tp)

    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(key, "must be set, got null")
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return _convert(option, value, key)
            except ConfigError as exc:
                errors.append(exc.reason)
        raise ConfigError(key, " or ".join(errors))
    if value is None:
        raise ConfigError(key, "must be set, got null")
    if origin is Literal:
        if value not in args:
            raise ConfigError(key, f"must be one of {', '.join(map(repr, args))}, got {_describe(value)}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        return build(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(key, f"expected true or false, got {_describe(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(key, f"expected an integer, got {_describe(value)}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(key, f"expected a number, got {_describe(value)}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(key, f"expected a string, got {_describe(value)}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(key, f"expected a list, got {_describe(value)}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(args[0], v, _join(key, i)) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(key, f"expected {len(args)} values, got {len(value)}: {_describe(value)}")
        return tuple(_convert(a, v, _join(key, i)) for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if origin is list:
        if not isinstance(value, list | tuple):
            raise ConfigError(key, f"expected a list, got {_describe(value)}")
        return [_convert(args[0], v, _join(key, i)) for i, v in enumerate(value)]
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(key, f"expected a mapping, got {_describe(value)}")
        ktype, vtype = args if args else (Any, Any)
        out = {}
        for k, v in value.items():
            out[_convert(ktype, k, _join(key, str(k)))] = _convert(vtype, v, _join(key, str(k)))
        return out
    if isinstance(tp, type):
        if not isinstance(value, tp):
            raise ConfigError(key, f"expected {tp.__name__}, got {_describe(value)}")
        return value
    raise TypeError(f"{key}: unsupported annotation {tp!r}")  # a bug in a config class, not in params


def build(cls: type[T], data: Mapping[str, Any] | None, key: str = "") -> T:
    """Build the frozen dataclass ``cls`` from ``data``.

    Args:
        cls: a dataclass type whose fields are annotated with the types above.
        data: the mapping read from YAML (``None`` means empty: every field takes its default).
        key: the dotted key of this section, used as the prefix of error messages.

    Raises:
        ConfigError: an unknown key, a missing required key, a wrong type or (from ``__post_init__``) a
            value out of range. The message names the dotted key.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(key, f"expected a mapping, got {_describe(data)}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(map(str, data)) - set(fields))
    if unknown:
        names = ", ".join(_join(key, u) for u in unknown)
        raise ConfigError(_join(key, unknown[0]), f"unknown key ({names}); known keys: {', '.join(fields)}")
    hints = get_type_hints(cls)
    kwargs = {}
    for name, field in fields.items():
        sub = _join(key, name)
        if name in data:
            kwargs[name] = _convert(hints[name], data[name], sub)
        elif field.default is dataclasses.MISSING and field.default_factory is dataclasses.MISSING:
            raise ConfigError(sub, "missing required key")
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        if key and not exc.key.startswith(key):
            raise ConfigError(_join(key, exc.key), exc.reason) from None
        raise


def to_dict(config: Any) -> Any:
    """The plain (YAML/JSON-ready) form of a config: dataclasses become dicts, tuples lists."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)}
    if isinstance(config, tuple | list):
        return [to_dict(v) for v in config]
    if isinstance(config, Mapping):
        return {k: to_dict(v) for k, v in config.items()}
    return config
