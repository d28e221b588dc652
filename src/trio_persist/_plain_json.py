"""The canonical encoding's C path: plain JSON written by the standard library.

The canonical encoding is JSON where the value is JSON (`_encoding`), so a
value checked to be plain JSON (exact ``dict`` with str keys, ``list``, str,
int below 2**63, float, bool, None, at most `FAST_DEPTH` deep) is written by
the C JSON encoder in one call, made once here (``json.dumps`` would build
an encoder per call). The check looks at each container's member types in
one C pass (``set(map(type, ...))``).
"""

from __future__ import annotations

import json
import json.encoder
from collections.abc import Callable
from typing import Any

__all__ = ["FAST_DEPTH", "SMALL_INT", "STR", "is_flat", "is_plain", "json_text", "str_text"]

SMALL_INT = 1 << 63  # ints below this (in magnitude) are decimal, as in JSON
FAST_DEPTH = 64  # plain values up to this deep go to the C encoder whole
STR = frozenset({str})
_INT = frozenset({int})
_SCALARS = frozenset({str, float, bool, type(None)})
_FLAT = _SCALARS | {int}
_PLAIN = _FLAT | {dict, list}
_UP: Any = object()

str_text: Callable[[str], str] = json.encoder.encode_basestring  # C when available
"""A str as a JSON string (non-ASCII kept, control characters escaped)."""


def _refuse(value: Any) -> Any:  # pragma: no cover - values are checked first
    raise TypeError(f"not plain JSON: {type(value).__qualname__}")


_make_c_encoder = getattr(json.encoder, "c_make_encoder", None)
if _make_c_encoder is not None:  # CPython: one C call, no encoder object per call
    _c_encode = _make_c_encoder(None, _refuse, str_text, None, ":", ",", True, False, True)

    def json_text(value: Any) -> str:
        """The JSON of a plain *value*: sorted keys, no spaces, floats by ``repr``."""
        return "".join(_c_encode(value, 0))

else:  # pragma: no cover - other interpreters: the same text, written in Python
    _py_encoder = json.JSONEncoder(
        ensure_ascii=False,
        check_circular=False,
        sort_keys=True,
        separators=(",", ":"),
        default=_refuse,
    )

    def json_text(value: Any) -> str:
        return "".join(_py_encoder.iterencode(value))


def is_flat(members: Any) -> bool:
    """Whether *members* are all plain leaves (their container is one C call)."""
    return _flat(set(map(type, members)), members)


def _flat(kinds: set[type], members: Any) -> bool:
    if kinds <= _SCALARS:
        return True
    if kinds == _INT:  # one C pass each instead of a loop
        low: int = min(members)
        high: int = max(members)
        return low > -SMALL_INT and high < SMALL_INT
    if not kinds <= _FLAT:
        return False
    for member in members:
        if type(member) is int and not -SMALL_INT < member < SMALL_INT:
            return False
    return True


def is_plain(value: Any) -> bool:
    """Whether the C encoder writes *value* (an exact dict or list) as the loop would.

    Depth-first with a depth bound, so a container inside itself is simply not
    plain (the loop then reports it) and the check costs at most the bound
    times the widest container before it gives up.
    """
    todo = [value]
    depth = 1
    while todo:
        members = todo.pop()
        if members is _UP:  # every member of a container below is checked
            depth -= 1
            continue
        if type(members) is dict:
            if not STR.issuperset(map(type, members)):
                return False
            members = members.values()
        kinds = set(map(type, members))
        if kinds <= _FLAT:  # no container below
            if _flat(kinds, members):
                continue
            return False
        if not kinds <= _PLAIN:
            return False
        below = depth
        for member in members:
            kind = type(member)
            if kind is int:
                if not -SMALL_INT < member < SMALL_INT:
                    return False
            elif kind is dict or kind is list:
                if below == depth:
                    if depth >= FAST_DEPTH:
                        return False
                    todo.append(_UP)
                    below = depth + 1
                todo.append(member)
        depth = below
    return True
