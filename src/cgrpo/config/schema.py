"""Typed config machinery: dataclasses with help text, strict parsing, one-line errors.

Fields are declared with :func:`option`, which records a help string and optional
bounds/choices. :func:`parse` turns a plain dict (from YAML or the command line) into
a dataclass, checking unknown keys, types, bounds and choices, and raising
:class:`ConfigError` with the dotted key, the value and what is allowed.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

T = TypeVar("T")
_MISSING = dataclasses.MISSING


class ConfigError(ValueError):
    """A bad config value: ``key`` (dotted path), ``value`` and what is allowed."""

    def __init__(self, key: str, value: Any, allowed: str) -> None:
        self.key, self.value, self.allowed = key, value, allowed
        super().__init__(f"config error: {key} = {value!r}: {allowed}")


def option(
    default: Any = _MISSING,
    help: str = "",
    *,
    choices: typing.Sequence[Any] | None = None,
    min: float | None = None,
    max: float | None = None,
    min_exclusive: bool = False,
    default_factory: Any = _MISSING,
) -> Any:
    """A dataclass field with help text and optional checks (``min``/``max``/``choices``).

    A field with neither default nor factory is required.
    """
    meta = {
        "help": help,
        # a list stays live: cgrpo.grpo's register_* functions add the names they register
        "choices": choices if isinstance(choices, list) or choices is None else tuple(choices),
        "min": min,
        "max": max,
        "min_exclusive": min_exclusive,
    }
    if default_factory is not _MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(tp: Any, value: Any, key: str) -> Any:
    """Check/convert ``value`` against the annotation ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, key)
            except ConfigError as e:
                errors.append(e.allowed.removeprefix("expected "))
        raise ConfigError(key, value, f"expected {' or '.join(errors)}")
    if typing.get_origin(tp) is typing.Literal:
        if value not in args:
            raise ConfigError(key, value, f"choose one of {', '.join(map(str, args))}")
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise ConfigError(key, value, f"expected a mapping of {tp.__name__} fields")
        return parse(tp, value, key)
    if origin in (list, tuple) or tp in (list, tuple):
        if isinstance(value, str | bytes) or not isinstance(value, list | tuple):
            raise ConfigError(key, value, "expected a list")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            item = args[0]
        elif origin is tuple and args:
            if len(args) != len(value):
                raise ConfigError(key, value, f"expected a list of {len(args)} items")
            return tuple(_coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        else:
            item = args[0] if args else Any
        items = [_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if (origin is tuple or tp is tuple) else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(key, value, "expected a mapping")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(vt, v, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(key, value, "expected true or false")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(key, value, "expected an integer")
    if tp is float:
        number = None
        if isinstance(value, int | float) and not isinstance(value, bool):
            number = float(value)
        elif isinstance(value, str):
            # YAML 1.1 reads "2e-5" (no dot) as a string; users mean the number
            try:
                number = float(value)
            except ValueError:
                pass
        if number is None:
            raise ConfigError(key, value, "expected a number")
        if not math.isfinite(number):  # .nan / .inf would train silently on NaN
            raise ConfigError(key, value, "expected a finite number")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(key, value, "expected a string")
    return value


def _check_bounds(f: dataclasses.Field, value: Any, key: str) -> None:
    meta = f.metadata
    choices = meta.get("choices")
    if choices is not None and value is not None:
        values = value if isinstance(value, list | tuple) else [value]
        for v in values:
            if v not in choices:
                raise ConfigError(key, value, f"choose from {', '.join(map(str, choices))}")
    lo, hi = meta.get("min"), meta.get("max")
    if isinstance(value, int | float) and not isinstance(value, bool):
        if lo is not None and (value < lo or (meta.get("min_exclusive") and value <= lo)):
            op = ">" if meta.get("min_exclusive") else ">="
            rng = f"{op} {lo}" + (f" and <= {hi}" if hi is not None else "")
            raise ConfigError(key, value, f"must be {rng}")
        if hi is not None and value > hi:
            raise ConfigError(
                key, value, f"must be <= {hi}" + (f" and >= {lo}" if lo is not None else "")
            )


def parse(cls: type[T], data: Mapping[str, Any] | None, prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, strictly; nested dataclasses recurse.

    After construction, a ``validate()`` method on the dataclass (if any) runs for
    cross-field checks and should raise :class:`ConfigError`.
    """
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in fields:
            raise ConfigError(
                key, value, f"unknown key; valid keys here: {', '.join(sorted(fields))}"
            )
        coerced = _coerce(hints[name], value, key)
        _check_bounds(fields[name], coerced, key)
        kwargs[name] = coerced
    for name, f in fields.items():
        if name not in kwargs and f.default is _MISSING and f.default_factory is _MISSING:
            key = f"{prefix}.{name}" if prefix else name
            raise ConfigError(key, None, f"required ({f.metadata.get('help', '')})".rstrip(" ()"))
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        validate(prefix)
    return obj


def to_dict(obj: Any) -> Any:
    """Plain-data (YAML-safe) form of a config dataclass."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, list | tuple):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def describe(cls: type, prefix: str = "") -> list[tuple[str, str, Any, str]]:
    """(key, type, default, help) rows of every field, nested dataclasses flattened."""
    rows = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key = f"{prefix}.{f.name}" if prefix else f.name
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            rows.extend(describe(tp, key))
            continue
        if f.default is not _MISSING:
            default = f.default
        elif f.default_factory is not _MISSING:
            default = to_dict(f.default_factory())
        else:
            default = "(required)"
        rows.append((key, _type_name(tp), default, f.metadata.get("help", "")))
    return rows
