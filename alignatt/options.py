"""Command-line flags derived from option dataclasses, so every option is declared exactly once."""
from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def _flag(prefix: str, name: str) -> str:
    return "--" + (prefix + name).replace("_", "-")


def _value_type(annotation: Any) -> type:
    """The concrete type of `X`, `X | None` or `Optional[X]`."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported option type {annotation}")
        return args[0]
    return annotation


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, prefix: str = "",
                            skip: tuple[str, ...] = (), filled_later: dict[str, str] | None = None) -> None:
    """Add one flag per field of the dataclass `cls` (--prefix-field-name), help from field metadata.
    `filled_later` maps option names (prefix included, underscores) to who fills them in: their flags default
    to None, so that what was not given explicitly can be told apart."""
    hints = typing.get_type_hints(cls)
    filled_later = filled_later or {}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kind = _value_type(hints[f.name])
        help_text = f.metadata.get("help", "")
        name = (prefix + f.name).replace("-", "_")
        default = None if name in filled_later else f.default
        shown = filled_later.get(name, f.default)
        if kind is bool:
            parser.add_argument(_flag(prefix, f.name), action=argparse.BooleanOptionalAction, default=default,
                                help=f"{help_text} (default: {shown})" if name in filled_later else help_text)
        else:
            parser.add_argument(_flag(prefix, f.name), type=kind, default=default,
                                help=f"{help_text} (default: {shown})")


def _coerce(value: Any, kind: type, name: str) -> Any:
    """Values from configuration files arrive as YAML scalars: give them the field's type."""
    if value is None or isinstance(value, kind):
        return value
    if kind is bool:
        if str(value).lower() in ("true", "1", "yes"):
            return True
        if str(value).lower() in ("false", "0", "no"):
            return False
    elif kind in (int, float, str) and not isinstance(value, bool):
        try:
            return kind(value)
        except ValueError:
            pass
    raise ValueError(f"option {name}: {value!r} is not a valid {kind.__name__}")


def dataclass_from_args(cls: type[T], args: Any, prefix: str = "", **overrides: Any) -> T:
    """Build `cls` from parsed flags (or any namespace), fields missing from `args` keep their defaults."""
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        attr = (prefix + f.name).replace("-", "_")
        if hasattr(args, attr):
            values[f.name] = _coerce(getattr(args, attr), _value_type(hints[f.name]), attr)
    values.update(overrides)
    return cls(**values)
