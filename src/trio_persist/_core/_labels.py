"""Labels: what an operator sees for a group, at a cost bounded whatever the value.

A label is the device's ``label`` hook's text, or a group name a ``group`` hook
chose, or a short rendering of the request (the state, for a worker). The
rendering never calls ``repr`` on a whole value: `bounded_repr` shows a few
members of each container, a few levels deep, and cuts long strings before
copying them, so a label of a 100 MB state costs what a label of a small one
costs. Owners build their label once per group and keep it.
"""

from __future__ import annotations

import re
import reprlib
from collections.abc import Hashable
from typing import Any

from .._text import literal, safe_repr

__all__ = ["LABEL_WIDTH", "bounded_repr", "call_label", "default_label"]

LABEL_WIDTH = 80
"""The longest label shown for a group."""

_DIGEST = re.compile(r"[0-9a-f]{32}")


class _ShortRepr(reprlib.Repr):
    def repr_instance(self, x: Any, level: int) -> str:
        # Any other object's own repr, which may be long: made once, then cut.
        return safe_repr(x, self.maxother)


_SHORT = _ShortRepr()
_SHORT.maxlevel = 3
_SHORT.maxstring = LABEL_WIDTH
_SHORT.maxother = LABEL_WIDTH
_SHORT.maxlong = LABEL_WIDTH
for _field in ("maxdict", "maxlist", "maxtuple", "maxset", "maxfrozenset", "maxdeque", "maxarray"):
    setattr(_SHORT, _field, 8)


def bounded_repr(value: object, limit: int = LABEL_WIDTH) -> str:
    """A ``repr`` of *value* showing a few members of each container, at most
    *limit* characters; never raises."""
    try:
        text = _SHORT.repr(value)
    except Exception:
        return safe_repr(value, limit)
    return literal(text, limit)


def default_label(group: Hashable | None, value: object) -> str:
    """The label without a hook: a name a group hook chose, or *value* rendered."""
    if isinstance(group, str) and not _DIGEST.fullmatch(group):
        return literal(group, LABEL_WIDTH)
    return bounded_repr(value)


def call_label(name: str, args: Any, kwargs: Any) -> str:
    """A wrapped function's call, as written: ``name(arg, key=value)``."""
    shown = [bounded_repr(arg, 30) for arg in args]
    shown += [f"{key}={bounded_repr(value, 30)}" for key, value in kwargs.items()]
    return literal(f"{name}({', '.join(shown)})", LABEL_WIDTH)
