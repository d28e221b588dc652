"""The canonical encoding: one text per value, whatever its dict or set order.

The text is JSON where the value is JSON, with sorted keys and no spaces (what
``json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``
writes), and tokens that JSON never starts a value with for the rest; see
docs/concepts.md for the table. Every token is self-delimiting, so equal texts
mean equal values (long set members up to a BLAKE2b-128 collision) and values
of different types never share a text.

Two paths write the same text. A value that is plain JSON goes to the standard
library's C JSON encoder in one call (`_plain_json`). Anything else goes
through a loop over an explicit stack that writes one list of chunks, and
still hands each flat plain container to the C encoder.
Neither recurses in Python: the recursion limit never matters, nesting past
`MAX_DEPTH` and a container inside itself are a `TypeError` naming where, and
the time is linear in the size whatever the depth. A set's members are
sorted by their texts, and a text longer than 32 characters is replaced by its
digest first, so sets nested in sets stay linear too: each member is written
once, and at most 33 characters of it are sorted and copied into its set.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping, Set
from hashlib import blake2b
from operator import itemgetter
from typing import Any

from ._plain_json import SMALL_INT, STR, is_flat, is_plain, json_text, str_text
from ._records import record_class
from ._text import safe_repr

__all__ = ["MAX_DEPTH", "encode"]

MAX_DEPTH = 1000
"""The deepest nesting of containers the default grouper encodes.

A value nested deeper, or a container inside itself, is a `TypeError` from
`default_group` and `canonical_encoding` that names where it sits; only the
call that passed it fails.
"""

_SHORT = 32  # a set member's text longer than this is written as its digest
_NONFINITE = {"nan": "NaN", "inf": "Infinity", "-inf": "-Infinity"}
_FIRST = itemgetter(0)
_DONE: Any = object()


def _int_text(x: int) -> str:
    if -SMALL_INT < x < SMALL_INT:
        return repr(x)
    # Hex is exact, linear and free of Python's int-to-decimal digit limit.
    return "#" + format(x, "x")


def _float_text(x: float) -> str:
    text = repr(x)  # the shortest round trip: exact, -0.0 apart from 0.0
    return _NONFINITE.get(text, text)


def _int_subclass_text(x: int) -> str:
    return _int_text(int.__int__(x))  # the value, whatever the subclass overrides


def _float_subclass_text(x: float) -> str:
    return _float_text(float.__float__(x))


def _bytes_text(x: Any) -> str:
    return "b" + str_text(bytes(x).decode("latin-1"))


def _none_text(_x: Any) -> str:
    return "null"


def _bool_text(x: Any) -> str:
    return "true" if x else "false"


# Leaves: their text. _kind maps subclasses (IntEnum, str enums) to these.
_TEXT: dict[type, Callable[[Any], str]] = {
    str: str_text,
    int: _int_text,
    float: _float_text,
    bool: _bool_text,
    type(None): _none_text,
    bytes: _bytes_text,
    bytearray: _bytes_text,
    memoryview: _bytes_text,
}
_LEAVES = frozenset(_TEXT)
_NOT_STR = _LEAVES - STR


# ------------------------------------------------------------- the loop ----


class _Frame:
    """A container being written: its members left, and what its current one is."""

    __slots__ = ("container", "count", "members")

    def __init__(self, container: Any, members: Iterator[Any]) -> None:
        self.container = container
        self.members = members
        self.count = 0

    def next(self, out: list[str]) -> Any:
        """The next member to write (after writing what precedes it), or _DONE."""
        raise NotImplementedError

    def label(self) -> str:
        """Where the current member sits, for error messages."""
        raise NotImplementedError


class _Sequence(_Frame):
    """A list ``[a,b]`` or a tuple ``(a,b)``."""

    __slots__ = ("closer",)

    def __init__(self, container: Any, closer: str) -> None:
        super().__init__(container, iter(container))
        self.closer = closer

    def next(self, out: list[str]) -> Any:
        member = next(self.members, _DONE)
        if member is _DONE:
            out.append(self.closer)
        elif self.count:
            out.append(",")
        self.count += 1
        return member

    def label(self) -> str:
        return f"[{self.count - 1}]"


class _Record(_Frame):
    """A mapping with str keys ``{"a":1}``, or a record ``@"mod.Name"{"a":1}``: sorted."""

    __slots__ = ("fields", "key")

    def __init__(self, container: Any, items: list[tuple[str, Any]], fields: bool) -> None:
        items.sort(key=_FIRST)  # keys are distinct: values are never compared
        super().__init__(container, iter(items))
        self.key: Any = None
        self.fields = fields

    def next(self, out: list[str]) -> Any:
        item = next(self.members, _DONE)
        if item is _DONE:
            out.append("}")
            return _DONE
        self.key = item[0]
        out.append(f"{',' if self.count else ''}{str_text(item[0])}:")
        self.count += 1
        return item[1]

    def label(self) -> str:
        return f".{self.key}" if self.fields else f"[{safe_repr(self.key, 40)}]"


class _Unordered(_Frame):
    """A set ``<a,b>``, or a mapping with other keys than str ``{<k:v,k:v>}``.

    Each member (each ``key:value``) is written after the chunks already in
    the buffer, then taken out as one text, shortened (`_short`) and kept;
    the texts are sorted and written when the container ends.
    """

    __slots__ = ("closer", "key", "opener", "start", "texts", "value")

    def __init__(self, container: Any, members: Iterator[Any], pairs: bool) -> None:
        super().__init__(container, members)
        self.opener, self.closer = ("{<", ">}") if pairs else ("<", ">")
        self.texts: list[str] = []
        self.start = -1
        self.key: Any = None
        self.value: Any = _DONE  # a pair's value, once its key is written

    def next(self, out: list[str]) -> Any:
        if self.value is not _DONE:
            value, self.value = self.value, _DONE
            out.append(":")
            return value
        if self.start >= 0:  # the previous member is written: keep its text
            self.texts.append("".join(out[self.start :]))
            del out[self.start :]
        member = next(self.members, _DONE)
        if member is _DONE:
            out.append(_sorted_text(self.opener, self.texts, self.closer))
            return _DONE
        self.start = len(out)
        self.count += 1
        if self.opener == "<":
            return member
        self.key, self.value = member
        return self.key

    def label(self) -> str:
        return "{...}" if self.opener == "<" else f"[{safe_repr(self.key, 40)}]"


def _short(text: str) -> str:
    """A member's text as it is sorted and written: itself, or past 32 characters
    ``%`` and its digest. So a set nested in sets copies at most 33 characters
    per level, and the encoding stays linear whatever the depth."""
    if len(text) <= _SHORT:
        return text
    return "%" + blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


def _sorted_text(opener: str, texts: list[str], closer: str) -> str:
    """The members' texts (each shortened), sorted, between *opener* and *closer*."""
    if texts and max(map(len, texts)) > _SHORT:
        texts = list(map(_short, texts))
    texts.sort()
    return f"{opener}{','.join(texts)}{closer}"


def _leaf_texts(members: Any) -> list[str] | None:
    """The texts of *members* when each is of a leaf type, else None."""
    kinds = set(map(type, members))
    if len(kinds) == 1:
        text = _TEXT.get(kinds.pop())
        return None if text is None else list(map(text, members))
    if kinds <= _LEAVES:
        return [_TEXT[type(member)](member) for member in members]
    return None


# ------------------------------------------------------------ openers ----
# Each writes a container's opening (or, for a flat plain one, all of it) and
# returns its frame; None when nothing is left to walk.


def _open_list(value: Any, out: list[str], accelerate: bool) -> _Frame | None:
    if accelerate and type(value) is list and is_flat(value):
        out.append(json_text(value))
        return None
    out.append("[")
    return _Sequence(value, "]")


def _open_tuple(value: Any, out: list[str], accelerate: bool) -> _Frame | None:
    texts = _leaf_texts(value) if accelerate else None
    if texts is not None:
        out.append(f"({','.join(texts)})")
        return None
    out.append("(")
    return _Sequence(value, ")")


def _open_mapping(value: Any, out: list[str], accelerate: bool) -> _Frame | None:
    kinds = set(map(type, value))
    if kinds <= STR:
        if accelerate and type(value) is dict and is_flat(value.values()):
            out.append(json_text(value))
            return None
    elif kinds & _NOT_STR or not all(issubclass(kind, str) for kind in kinds):
        pairs = _leaf_pairs(value) if accelerate else None
        if pairs is not None:
            out.append(_sorted_text("{<", pairs, ">}"))
            return None
        return _Unordered(value, iter(list(value.items())), pairs=True)
    out.append("{")
    return _Record(value, list(value.items()), fields=False)


def _leaf_pairs(mapping: Any) -> list[str] | None:
    """The ``key:value`` texts of *mapping* when every key and value is of a leaf type."""
    pairs = []
    for key, value in mapping.items():
        key_text = _TEXT.get(type(key))
        value_text = _TEXT.get(type(value))
        if key_text is None or value_text is None:
            return None
        pairs.append(f"{key_text(key)}:{value_text(value)}")
    return pairs


def _open_set(value: Any, out: list[str], accelerate: bool) -> _Frame | None:
    texts = _leaf_texts(value) if accelerate else None
    if texts is not None:
        out.append(_sorted_text("<", texts, ">"))
        return None
    return _Unordered(value, iter(value), pairs=False)


def _open_record(value: Any, out: list[str], accelerate: bool) -> _Frame:
    record = record_class(type(value))
    assert isinstance(record, tuple)  # _how said so
    prefix, names = record
    out.append(prefix)
    items = [(name, getattr(value, name)) for name in names]
    return _Record(value, items, fields=True)


_Opener = Callable[[Any, list[str], bool], "_Frame | None"]
_OPENERS: dict[type, _Opener] = {
    list: _open_list,
    tuple: _open_tuple,
    dict: _open_mapping,
    set: _open_set,
    frozenset: _open_set,
}
# Subclasses (IntEnum, str enums, OrderedDict, ...) encode as these, in order.
_FALLBACKS: tuple[tuple[type, Callable[[Any], str] | None, _Opener | None], ...] = (
    (int, _int_subclass_text, None),
    (float, _float_subclass_text, None),
    (str, str_text, None),
    (bytes, _bytes_text, None),
    (tuple, None, _open_tuple),
    (list, None, _open_list),
    (Mapping, None, _open_mapping),
    (Set, None, _open_set),
)


def _how(value: Any) -> tuple[Callable[[Any], str] | None, _Opener | None]:
    """How to write *value*: its text function (a leaf) or its opener (a container)."""
    opener = _OPENERS.get(type(value))
    if opener is not None:
        return None, opener
    for base, text, fallback in _FALLBACKS:
        if isinstance(value, base):
            return text, fallback
    if isinstance(record_class(type(value)), tuple):
        return None, _open_record
    return None, None


def encode_general(value: Any, root: str, accelerate: bool = True) -> str:
    """The canonical text of *value* by the loop (flat plain containers by the C
    encoder when *accelerate*); *root* names *value* in error messages."""
    text = _TEXT.get(type(value))
    if text is not None:
        return text(value)
    out: list[str] = []
    frame = _open(value, out, [], set(), root, accelerate)
    if frame is None:  # a leaf subclass, or a container written whole
        return "".join(out)
    _walk(out, [frame], {id(value)}, root, accelerate)
    return "".join(out)


def _walk(
    out: list[str], stack: list[_Frame], on_path: set[int], root: str, accelerate: bool
) -> None:
    """Write the members of the containers on *stack*, depth first, into *out*.

    *on_path* holds the ids of the containers on the stack (a container met
    again among its own members is a cycle).
    """
    while stack:
        value = stack[-1].next(out)
        if value is _DONE:
            on_path.discard(id(stack.pop().container))
            continue
        text = _TEXT.get(type(value))
        if text is not None:
            out.append(text(value))
            continue
        frame = _open(value, out, stack, on_path, root, accelerate)
        if frame is not None:
            stack.append(frame)
            on_path.add(id(value))


def _open(
    value: Any,
    out: list[str],
    stack: list[_Frame],
    on_path: set[int],
    root: str,
    accelerate: bool,
) -> _Frame | None:
    text, opener = _how(value)
    if text is not None:
        out.append(text(value))
        return None
    if opener is None:
        raise _error(value, root, stack, _unknown(value))
    if id(value) in on_path:
        raise _error(value, root, stack, "a container holds itself: a")
    if len(stack) >= MAX_DEPTH:
        raise _error(value, root, stack, f"nesting deeper than {MAX_DEPTH} levels:")
    return opener(value, out, accelerate)


def _unknown(value: Any) -> str:
    if isinstance(record_class(type(value)), str):
        return "a mutable record cannot name a group:"
    return "cannot group a value of type"


def _error(value: Any, root: str, stack: list[_Frame], what: str) -> TypeError:
    labels = [frame.label() for frame in stack]
    if len(labels) > 12:
        labels = [*labels[:6], f"...({len(labels) - 10} more)...", *labels[-4:]]
    where = root + "".join(labels)
    kind = type(value)
    record = record_class(kind)
    if isinstance(record, str):
        how = (
            f"a {record} can change after it named a group; make it frozen "
            "(@dataclass(frozen=True), @attrs.frozen) or give the device a group() hook"
        )
    else:
        how = (
            "the default grouper encodes None, bool, int, float, str, bytes, lists, "
            "tuples, mappings, sets and frozen dataclass and attrs instances, nested at "
            f"most {MAX_DEPTH} deep and never inside themselves; give the device a "
            "group() hook for other values"
        )
    return TypeError(f"{what} {kind.__module__}.{kind.__qualname__} at {where}: {how}")


def encode(value: Any, root: str = "value", skip: Collection[Any] = ()) -> bytes:
    """The canonical encoding of *value*, as UTF-8 bytes.

    *root* names *value* in error messages; *skip*: top-level mapping keys
    left out. Raises `TypeError` (see `canonical_encoding`).
    """
    kind = type(value)
    text = _TEXT.get(kind)
    if text is not None:  # the common small case: one call
        return text(value).encode("utf-8", "surrogatepass")
    if skip and isinstance(value, Mapping):
        value = {key: member for key, member in value.items() if key not in skip}
        kind = dict
    if (kind is dict or kind is list) and is_plain(value):
        try:
            return json_text(value).encode("utf-8", "surrogatepass")
        except RecursionError:  # C recursion on an already deep stack: the loop never
            pass
    opener = _OPENERS.get(kind)
    if opener is None:  # a subclass, a record, or what cannot be encoded
        return encode_general(value, root).encode("utf-8", "surrogatepass")
    out: list[str] = []  # a container at the top: no cycle or depth to check yet
    frame = opener(value, out, True)
    if frame is not None:
        _walk(out, [frame], {id(value)}, root, True)
    return "".join(out).encode("utf-8", "surrogatepass")
