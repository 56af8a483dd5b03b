"""Typed stage configs built from the workflow's (schema-validated) config mapping.

Each stage declares a frozen dataclass; :func:`from_mapping` builds it from a mapping and
raises :class:`ConfigError` naming the key (``train_cam.lr``) for unknown, missing,
mistyped or out-of-range entries, so a stage is also safe to call outside Snakemake.

Fields declare their constraints with :func:`setting` (ranges, choices, non-empty lists;
``Literal[...]`` types are choices too) and whether they can change a result: a
:func:`runtime` field (loader workers, logging and resume cadence, inference batch sizes)
is left out of the rule's tracked params, so changing it reruns nothing. The generated
schema carries all of it (``minimum``, ``enum``, ``minItems``, ``x-result: false``).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from qaclims.core.errors import ConfigError

T = TypeVar("T")

_BOUNDS = ("ge", "gt", "le", "lt")


def setting(
    default: Any = dataclasses.MISSING,
    *,
    factory: Any = None,
    result: bool = True,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    choices: tuple[Any, ...] | None = None,
    min_items: int | None = None,
    doc: str | None = None,
) -> Any:
    """A config field with constraints (checked by :func:`from_mapping`, written to the schema).

    ``ge/gt/le/lt`` bound a number (each item of a list); ``choices`` lists the allowed
    values (of each item); ``min_items`` is the shortest allowed list; ``result=False`` marks
    a setting that cannot change any output; ``doc`` is its description in the schema.
    """
    meta: dict[str, Any] = {"result": result}
    if doc is not None:
        meta["doc"] = doc
    for k, v in (("ge", ge), ("gt", gt), ("le", le), ("lt", lt)):
        if v is not None:
            meta[k] = v
    if choices is not None:
        meta["choices"] = tuple(choices)
    if min_items is not None:
        meta["min_items"] = min_items
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def runtime(default: Any, **kw: Any) -> Any:
    """A setting that cannot change a result (workers, cadence, inference batch size)."""
    return setting(default, result=False, **kw)


def with_default(cls: type, name: str, default: Any) -> Any:
    """Field ``name`` of config class ``cls`` with another default: same checks, same doc
    (for a subclass that only changes defaults)."""
    f = next(f for f in dataclasses.fields(cls) if f.name == name)
    return dataclasses.field(default=default, metadata=f.metadata)


def is_result_field(f: dataclasses.Field[Any]) -> bool:
    """False for :func:`runtime` fields."""
    return bool(f.metadata.get("result", True))


def _check_constraints(value: Any, meta: Mapping[str, Any], where: str) -> None:
    if "min_items" in meta and isinstance(value, tuple) and len(value) < meta["min_items"]:
        raise ConfigError(f"{where}: needs at least {meta['min_items']} item(s), got {value!r}")
    items = value if isinstance(value, tuple) else (value,)
    ops = {"ge": (float.__ge__, ">="), "gt": (float.__gt__, ">"),
           "le": (float.__le__, "<="), "lt": (float.__lt__, "<")}  # fmt: skip
    for item in items:
        if "choices" in meta and item not in meta["choices"]:
            allowed = ", ".join(map(repr, meta["choices"]))
            raise ConfigError(f"{where}: {item!r} is not one of {allowed}")
        if isinstance(item, int | float) and not isinstance(item, bool):
            for k in _BOUNDS:
                if k in meta and not ops[k][0](float(item), float(meta[k])):
                    raise ConfigError(f"{where}: must be {ops[k][1]} {meta[k]}, got {item!r}")


def _check(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin is typing.Literal:
        if value not in args:
            raise ConfigError(f"{where}: {value!r} is not one of {', '.join(map(repr, args))}")
        return value
    if origin in (typing.Union, types.UnionType):
        errors = []
        for a in args:
            try:
                return _check(value, a, where)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(f"{where}: {value!r} matches none of {tp}")
    if tp is type(None):
        if value is None:
            return None
        raise ConfigError(f"{where}: expected null, got {value!r}")
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return from_mapping(tp, value, where)
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {type(value).__name__}")
        item = args[0] if args else Any
        return tuple(_check(v, item, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _check(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if isinstance(tp, type):
        if not isinstance(value, tp):
            raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
        return value
    return value


def from_mapping(cls: type[T], mapping: Mapping[str, Any], where: str) -> T:
    """Build dataclass ``cls`` from ``mapping``; errors name ``where.key``.

    Unknown keys and missing keys without a default are errors; lists become tuples so
    the result is hashable and immutable.
    """
    if not dataclasses.is_dataclass(cls):
        raise TypeError(f"{cls} is not a dataclass")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(mapping) - set(fields))
    if unknown:
        raise ConfigError(
            f"unknown config key {where}.{unknown[0]} (allowed: {', '.join(sorted(fields))})"
        )
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        key = f"{where}.{name}"
        if name in mapping:
            kwargs[name] = _check(mapping[name], hints[name], key)
            _check_constraints(kwargs[name], f.metadata, key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing config key {key}")
    return cls(**kwargs)


def to_dict(obj: Any) -> dict[str, Any]:
    """A dataclass config as a plain JSON-serialisable dict (tuples become lists)."""

    def conv(v: Any) -> Any:
        if isinstance(v, tuple | list):
            return [conv(x) for x in v]
        if isinstance(v, dict):
            return {k: conv(x) for k, x in v.items()}
        return v

    return {k: conv(v) for k, v in dataclasses.asdict(obj).items()}
