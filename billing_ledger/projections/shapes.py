"""Frozen dataclasses written as the contract's JSON objects, field by named field."""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from typing import Any


def json_of(value: object, names: str) -> dict[str, Any]:
    """The fields `names` (separated by spaces) of `value`, in that order, as JSON values."""
    return {name: _plain(getattr(value, name)) for name in names.split()}


def _plain(value: Any) -> Any:
    # A tuple is a JSON array; an object of the read side writes itself with its own
    # `to_json` (the contract names its keys), a plain record with all its fields.
    if value is None or isinstance(value, str | int | float):
        return value
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if hasattr(value, "to_json"):
        return value.to_json()
    if is_dataclass(value) and not isinstance(value, type):
        return json_of(value, " ".join(f.name for f in fields(value)))
    return value
