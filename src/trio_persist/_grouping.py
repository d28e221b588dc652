"""Group names: a canonical encoding of ``(base, request)`` and its digest.

The default grouper must never let two different requests share a result
(upstream's 27-bit ``phash2`` could, W1), so it hashes an *injective* encoding
with BLAKE2b-128. Every value is written as a type tag plus a self-delimiting
payload, so ``1``, ``1.0``, ``True``, ``"1"`` and ``b"1"`` all encode apart,
mappings and sets are sorted by their encoded members (order never matters), and
anything the encoding does not know raises `TypeError` naming its type and where
it sits.

The encoder is a loop over an explicit stack, not a recursion: a request nested
600 deep (an ordinary JSON body for a web service) encodes like any other, the
recursion limit never matters, nesting past `MAX_DEPTH` and self-referencing
containers are a `TypeError` with their path, and ints of any size encode
exactly (Python's 4,300-digit limit on ``str(int)`` never applies).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Collection, Mapping, Set
from hashlib import blake2b
from typing import Any

__all__ = [
    "MAX_DEPTH",
    "canonical_encoding",
    "default_group",
    "default_group_and_base",
    "group_digest",
    "same_request",
]

MAX_DEPTH = 1000
"""The deepest nesting of containers the default grouper encodes."""

_DIGEST_SIZE = 16  # 128 bits: collisions need ~2**64 live groups
_HEX_DIGEST = re.compile(f"[0-9a-f]{{{2 * _DIGEST_SIZE}}}")
_PAIR = b"P"
_SMALL_INT = 1 << 63


def _enc_none(_x: Any) -> bytes:
    return b"N"


def _enc_bool(x: Any) -> bytes:
    return b"T" if x else b"F"


def _enc_int(x: Any) -> bytes:
    if -_SMALL_INT < x < _SMALL_INT:
        return b"i%d;" % x
    # Big ints as two's-complement bytes: exact, linear, and free of the
    # int-to-str digit limit. The tag differs, and the magnitude decides the
    # tag, so an int always encodes one way.
    data = int.to_bytes(x, (x.bit_length() + 8) // 8, "big", signed=True)
    return b"I%d:%s" % (len(data), data)


def _enc_float(x: Any) -> bytes:
    # float.hex is exact and canonical (it tells -0.0 from 0.0, as repr does).
    return b"f" + float(x).hex().encode() + b";"


def _enc_str(x: Any) -> bytes:
    data = str.encode(x, "utf-8", "surrogatepass")
    return b"s%d:%s" % (len(data), data)


def _enc_bytes(x: Any) -> bytes:
    data = bytes(x)
    return b"b%d:%s" % (len(data), data)


_LEAVES: dict[type, Callable[[Any], bytes]] = {
    type(None): _enc_none,
    bool: _enc_bool,
    int: _enc_int,
    float: _enc_float,
    str: _enc_str,
    bytes: _enc_bytes,
    bytearray: _enc_bytes,
    memoryview: _enc_bytes,
}
# Containers: their tag. A mapping's members are (key, value) pairs.
_CONTAINERS: dict[type, bytes] = {
    list: b"l",
    tuple: b"t",
    dict: b"d",
    set: b"S",
    frozenset: b"S",
}
# Subclasses (IntEnum, OrderedDict, str enums, ...) fall back to these, in order.
_FALLBACKS: tuple[tuple[type, type], ...] = (
    (bool, bool),
    (int, int),
    (float, float),
    (str, str),
    (bytes, bytes),
    (tuple, tuple),
    (list, list),
    (Mapping, dict),
    (Set, frozenset),
)


def _kind(x: Any) -> type | None:
    cls = type(x)
    if cls in _LEAVES or cls in _CONTAINERS:
        return cls
    for base, as_type in _FALLBACKS:
        if isinstance(x, base):
            return as_type
    return None


class _Frame:
    """One container being encoded: its members left, and their encodings so far."""

    __slots__ = ("container", "label", "members", "parts", "tag")

    def __init__(self, container: Any, tag: bytes, members: Any, label: str) -> None:
        self.container = container
        self.tag = tag
        self.members = members
        self.parts: list[bytes] = []
        self.label = label

    def finish(self) -> bytes:
        parts = self.parts
        if self.tag == b"p":  # a mapping's pair: key then value, no header
            return b"".join(parts)
        if self.tag in (b"d", b"S"):
            parts.sort()
        return b"%s%d:%s" % (self.tag, len(parts), b"".join(parts))


def _members(x: Any, tag: bytes, skip: Collection[Any]) -> Any:
    """(label, member) pairs of a container, in its own order."""
    if tag == b"d":
        return ((f"[{_short_repr(k)}]", (k, v)) for k, v in x.items() if not (skip and k in skip))
    if tag == b"S":
        return (("{...}", member) for member in x)
    if tag == b"p":
        return iter((("", x[0]), ("", x[1])))
    return ((f"[{i}]", member) for i, member in enumerate(x))


def _short_repr(value: Any) -> str:
    try:
        text = repr(value)
    except Exception:
        text = f"<{type(value).__name__}>"
    return text if len(text) <= 40 else text[:37] + "..."


def _encode(value: Any, root: str, skip: Collection[Any] = ()) -> bytes:
    """The canonical encoding of *value*; *skip*: top-level mapping keys left out."""
    kind = _kind(value)
    if kind in _LEAVES:
        return _LEAVES[kind](value)  # the common case: no stack at all
    stack: list[_Frame] = []
    on_path: set[int] = set()  # ids of the containers being encoded (cycles)
    label = ""
    while True:
        # Encode *value*: a leaf at once, a container by pushing a frame.
        if kind is None:
            raise _error(value, root, stack, label, "cannot group a value of type")
        if kind in _LEAVES:
            encoded = _LEAVES[kind](value)
        else:
            tag = b"p" if kind is _Pair else _CONTAINERS[kind]
            if tag != b"p":
                if id(value) in on_path:
                    raise _error(value, root, stack, label, "a container holds itself: a")
                if len(on_path) >= MAX_DEPTH:
                    raise _error(
                        value, root, stack, label, f"nesting deeper than {MAX_DEPTH} levels:"
                    )
                on_path.add(id(value))
            members = _members(value, tag, skip if not stack else ())
            stack.append(_Frame(value, tag, members, label))
            encoded = b""
        # Feed finished encodings to their parents until one has a member left.
        while True:
            if encoded:
                if not stack:
                    return encoded
                stack[-1].parts.append(encoded)
            frame = stack[-1]
            member: Any = next(frame.members, _DONE)
            if member is not _DONE:
                label, value = member
                kind = _Pair if frame.tag == b"d" else _kind(value)
                break
            stack.pop()
            if frame.tag != b"p":
                on_path.discard(id(frame.container))
            encoded = frame.finish()


class _Pair:
    """Marker kind: a mapping's (key, value) member."""


_DONE = object()


def _error(value: Any, root: str, stack: list[_Frame], label: str, what: str) -> TypeError:
    labels = [frame.label for frame in stack[1:]] + [label]
    if len(labels) > 12:
        labels = [*labels[:6], f"...({len(labels) - 10} more)...", *labels[-4:]]
    where = root + "".join(labels)
    kind = type(value)
    return TypeError(
        f"{what} {kind.__module__}.{kind.__qualname__} at {where}: the default grouper "
        "encodes None, bool, int, float, str, bytes, lists, tuples, mappings and sets, "
        f"nested at most {MAX_DEPTH} deep and never inside themselves; give the device "
        "a group() hook for other values"
    )


def canonical_encoding(value: Any) -> bytes:
    """Return the canonical bytes the default grouper hashes for *value*.

    Equal JSON-like values give equal bytes whatever their dict or set order;
    values of different types never do.

    Raises:
        TypeError: *value* holds something that cannot be encoded (an unknown
            type, a container inside itself, nesting past `MAX_DEPTH`); the
            message names its type and its path inside *value*.
    """
    return _encode(value, "value")


def default_group(base: Any, request: Any, *, ignore_keys: Collection[Any] = ()) -> str:
    """Return the default group of ``(base, request)``: a 128-bit BLAKE2b hex digest.

    Every value counts, except the top-level keys of a mapping *base* or
    *request* named in *ignore_keys* (two calls that differ only there share
    one group, and so one result).

    Raises:
        TypeError: a value cannot be encoded (see `canonical_encoding`).
    """
    h = blake2b(_PAIR, digest_size=_DIGEST_SIZE)
    h.update(_encode(base, "base", ignore_keys))
    h.update(_encode(request, "request", ignore_keys))
    return h.hexdigest()


def default_group_and_base(
    base: Any, request: Any, ignore_keys: Collection[Any] = ()
) -> tuple[str, str]:
    """Return ``(default_group(base, request), default_group(base, None))``.

    The base is encoded once: the hash state after it is copied, so finding a
    worker for the base costs one more tiny hash, not a second encoding.
    """
    h = blake2b(_PAIR, digest_size=_DIGEST_SIZE)
    h.update(_encode(base, "base", ignore_keys))
    base_only = h.copy()
    base_only.update(b"N")
    h.update(_encode(request, "request", ignore_keys))
    return h.hexdigest(), base_only.hexdigest()


def group_digest(group: Any) -> str:
    """A name for *group* that says nothing of what it holds: a 128-bit hex digest.

    A default group (already a digest) is itself; any other group is hashed
    from its canonical encoding, or from its ``repr`` when it cannot be
    encoded. This is how a group is named wherever it leaves the process
    (Redis heartbeats, spans), unless the device's ``label`` hook names it.
    """
    if isinstance(group, str) and _HEX_DIGEST.fullmatch(group):
        return group
    h = blake2b(b"G", digest_size=_DIGEST_SIZE)
    try:
        h.update(_encode(group, "group"))
    except (TypeError, RecursionError):
        try:
            text = repr(group)
        except Exception:
            text = f"<{type(group).__qualname__} at {id(group):#x}>"
        h.update(b"r" + text.encode("utf-8", "surrogatepass"))
    return h.hexdigest()


def same_request(left: Any, right: Any) -> bool:
    """Whether two requests of one group are the same, without trusting ``==``.

    Identity first; then ``==`` if it answers with a real bool; else (numpy and
    pandas values answer with arrays, some objects raise) their canonical
    encodings, and False if those cannot be made. Never raises: one request's
    comparison can never fail another caller.
    """
    if left is right:
        return True
    try:
        answer = left == right
    except Exception:
        answer = None
    if answer is True or answer is False:
        return answer
    try:
        return _encode(left, "request") == _encode(right, "request")
    except Exception:
        return False
