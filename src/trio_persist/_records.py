"""Records for the canonical encoding: frozen dataclass and attrs classes.

A frozen dataclass or attrs instance is encoded by its type (module and
qualified name) and the fields that take part in its equality; a mutable one
is refused (`_encoding`).
"""

from __future__ import annotations

import dataclasses
import weakref

import attrs

from ._plain_json import str_text

__all__ = ["record_class"]


@attrs.frozen
class _FrozenProbe:
    """attrs gives every frozen class this one's ``__setattr__``."""


_RECORDS: weakref.WeakKeyDictionary[type, tuple[str, tuple[str, ...]] | str] = (
    weakref.WeakKeyDictionary()
)


def record_class(cls: type) -> tuple[str, tuple[str, ...]] | str | None:
    """A frozen dataclass or attrs class: its text's start and its compared fields.

    A mutable one: what it is, for the error. Anything else: None.
    """
    known = _RECORDS.get(cls)
    if known is not None:
        return known
    if dataclasses.is_dataclass(cls):
        frozen = cls.__dataclass_params__.frozen  # type: ignore[attr-defined]
        names = tuple(f.name for f in dataclasses.fields(cls) if f.compare)
        what = "dataclass"
    elif attrs.has(cls):
        frozen = cls.__setattr__ is _FrozenProbe.__setattr__
        names = tuple(a.name for a in attrs.fields(cls) if a.eq)
        what = "attrs class"
    else:
        return None
    name = f"{cls.__module__}.{cls.__qualname__}"
    record = (f"@{str_text(name)}{{", names) if frozen else f"mutable {what}"
    _RECORDS[cls] = record
    return record
