"""Strict conversion of plain mappings (JSON, YAML, command-line options) into the config dataclasses.

Every config of the package (the network's, training's, CLIP pretraining's) loads through
:func:`from_dict`. Nothing here imports torch or the rest of the package, so modeling and training
both use it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping
from typing import Any, Literal

__all__ = ["dotted", "from_dict"]

ErrorStyle = Literal["keys", "key", "config"]


def dotted(where: str, key: str | int) -> str:
    """The location of ``key`` inside ``where`` ("" for the top of a config)."""
    return f"{where}.{key}" if where else str(key)


def from_dict(cls: type, data: Any, where: str = "", *, typed: bool = False, required: bool = False,
              style: ErrorStyle = "keys") -> Any:
    """``cls(**data)`` for a dataclass ``cls``, strictly.

    ``where`` is the dotted location of ``data`` in the whole config; every error names it. A key that
    is not a field of ``cls`` is a ValueError naming it. A field whose type is a dataclass is built from
    its mapping by the same rules (an instance is kept as it is); a list becomes a tuple (JSON and YAML
    have no tuples).

    typed: every value is checked against its field's type, converting what YAML cannot say (lists to
        tuples of the right length, ints to floats, mappings to dataclasses, also inside tuples).
    required: a field without a default that ``data`` lacks is a ValueError listing all of them (else
        the dataclass's own TypeError, which ``style="config"`` turns into a ValueError).
    style: the spelling of the errors, each config's own (tests and users match them): "keys" -
        ``model: unknown keys ['a', 'b']``; "key" - ``data: unknown key 'a' (known: ...)``, the fields
        sorted; "config" - ``unknown config key 'optim.a' (known there: ...)``, the fields in order.
    """
    if not isinstance(data, Mapping):
        got = repr(data) if style == "config" else type(data).__name__
        raise ValueError(f"{where or 'config'}: expected a mapping, got {got}")
    fields = dataclasses.fields(cls)
    names = [f.name for f in fields]
    unknown = [k for k in data if k not in names]
    if unknown:
        if style == "config":
            raise ValueError(f"unknown config key {dotted(where, unknown[0])!r} (known there: {', '.join(names)})")
        if style == "key":
            raise ValueError(f"{where}: unknown key {sorted(unknown)[0]!r} (known: {', '.join(sorted(names))})")
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}")
    if required:
        missing = sorted(f.name for f in fields if f.name not in data
                         and f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
        if missing:
            raise ValueError(f"{where}: missing keys {missing}")
    hints = typing.get_type_hints(cls)
    options = {"typed": typed, "required": required, "style": style}
    kwargs = {k: _convert(v, hints[k], dotted(where, k), options) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except TypeError as e:  # a missing required field, e.g. a dataset without a name
        if style != "config":
            raise
        raise ValueError(f"{where or 'config'}: {e}") from None


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))


def _convert(value: Any, hint: Any, where: str, options: dict[str, Any]) -> Any:
    """One field's value: mappings -> dataclasses and lists -> tuples; with ``typed``, checked against
    the field's type (ints -> floats where a float is due)."""
    if dataclasses.is_dataclass(hint):
        return value if isinstance(value, hint) else from_dict(hint, value, where, **options)
    if not options["typed"]:
        return tuple(value) if isinstance(value, list) else value
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        choices = [a for a in args if a is not type(None)]
        if len(choices) != 1:
            raise TypeError(f"{where}: unsupported type {hint}")
        return _convert(value, choices[0], where, options)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{where}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], dotted(where, i), options) for i, v in enumerate(value))
        if len(value) != len(args):
            raise ValueError(f"{where}: expected a list of {len(args)} values, got {list(value)!r}")
        return tuple(_convert(v, a, dotted(where, i), options) for i, (v, a) in enumerate(zip(value, args)))
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{where}: expected an integer, got {value!r}")
        return value
    if hint in (bool, str) and not isinstance(value, hint):
        raise ValueError(f"{where}: expected {_type_name(hint)}, got {value!r}")
    return value
