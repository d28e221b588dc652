"""Group names: a canonical encoding of ``(base, request)`` and its digest.

The default grouper must never let two different requests share a result
(upstream's 27-bit ``phash2`` could, W1), so it hashes an *injective* encoding
with BLAKE2b-128. Every value is written as a type tag plus a self-delimiting
payload, so ``1``, ``1.0``, ``True``, ``"1"`` and ``b"1"`` all encode apart,
mappings and sets are sorted by their encoded members (order never matters), and
anything the encoding does not know raises `TypeError` naming its type and where
it sits.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Set
from hashlib import blake2b
from typing import Any

__all__ = ["canonical_encoding", "default_group", "default_group_and_base"]

_DIGEST_SIZE = 16  # 128 bits: collisions need ~2**64 live groups
_PAIR = b"P"
_PRIV = "priv"


class _Unencodable(Exception):
    """Internal: carries the offending value up the stack, gathering its path."""

    def __init__(self, value: object) -> None:
        self.value = value
        self.path: list[str] = []


def _enc_none(_x: Any) -> bytes:
    return b"N"


def _enc_bool(x: Any) -> bytes:
    return b"T" if x else b"F"


def _enc_int(x: Any) -> bytes:
    return b"i%d;" % x


def _enc_float(x: Any) -> bytes:
    # float.hex is exact and canonical (it tells -0.0 from 0.0, as repr does).
    return b"f" + float(x).hex().encode() + b";"


def _enc_str(x: Any) -> bytes:
    data = str.encode(x, "utf-8", "surrogatepass")
    return b"s%d:%s" % (len(data), data)


def _enc_bytes(x: Any) -> bytes:
    data = bytes(x)
    return b"b%d:%s" % (len(data), data)


def _enc_seq(tag: bytes) -> Callable[[Any], bytes]:
    def enc(x: Any) -> bytes:
        parts = [b"%s%d:" % (tag, len(x))]
        for index, item in enumerate(x):
            try:
                parts.append(_encode(item))
            except _Unencodable as exc:
                exc.path.append(f"[{index}]")
                raise
        return b"".join(parts)

    return enc


def _enc_mapping(x: Any, *, skip_priv: bool = False) -> bytes:
    pairs = []
    for key, value in x.items():
        if skip_priv and key == _PRIV:
            continue
        try:
            pairs.append(_encode(key) + _encode(value))
        except _Unencodable as exc:
            exc.path.append(f"[{key!r}]")
            raise
    pairs.sort()
    return b"d%d:%s" % (len(pairs), b"".join(pairs))


def _enc_set(x: Any) -> bytes:
    try:
        items = sorted(_encode(item) for item in x)
    except _Unencodable as exc:
        exc.path.append("{...}")
        raise
    return b"S%d:%s" % (len(items), b"".join(items))


_ENCODERS: dict[type, Callable[[Any], bytes]] = {
    type(None): _enc_none,
    bool: _enc_bool,
    int: _enc_int,
    float: _enc_float,
    str: _enc_str,
    bytes: _enc_bytes,
    bytearray: _enc_bytes,
    memoryview: _enc_bytes,
    list: _enc_seq(b"l"),
    tuple: _enc_seq(b"t"),
    dict: _enc_mapping,
    set: _enc_set,
    frozenset: _enc_set,
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


def _encode(x: Any) -> bytes:
    encoder = _ENCODERS.get(type(x))
    if encoder is None:
        for cls, as_type in _FALLBACKS:
            if isinstance(x, cls):
                encoder = _ENCODERS[as_type]
                break
        else:
            raise _Unencodable(x)
    return encoder(x)


def _encode_top(x: Any) -> bytes:
    # Upstream drops the top-level "priv" key of each message; nested ones stay.
    if type(x) is dict or (not isinstance(x, (str, bytes)) and isinstance(x, Mapping)):
        return _enc_mapping(x, skip_priv=True)
    return _encode(x)


def _type_error(exc: _Unencodable, root: str) -> TypeError:
    where = root + "".join(reversed(exc.path))
    kind = type(exc.value)
    return TypeError(
        f"cannot group a value of type {kind.__module__}.{kind.__qualname__} at {where}: "
        "the default grouper encodes None, bool, int, float, str, bytes, lists, tuples, "
        "mappings and sets; give the device a group() hook for other values"
    )


def canonical_encoding(value: Any) -> bytes:
    """Return the canonical bytes the default grouper hashes for *value*.

    Equal JSON-like values give equal bytes whatever their dict or set order;
    values of different types never do.

    Raises:
        TypeError: *value* holds something that cannot be encoded; the message
            names its type and its path inside *value*.
    """
    try:
        return _encode(value)
    except _Unencodable as exc:
        raise _type_error(exc, "value") from None


def _encoded_base(base: Any) -> bytes:
    try:
        return _encode_top(base)
    except _Unencodable as exc:
        raise _type_error(exc, "base") from None


def _encoded_request(request: Any) -> bytes:
    try:
        return _encode_top(request)
    except _Unencodable as exc:
        raise _type_error(exc, "request") from None


def default_group(base: Any, request: Any) -> str:
    """Return the default group of ``(base, request)``: a 128-bit BLAKE2b hex digest.

    A top-level ``"priv"`` key of a mapping *base* or *request* is left out.

    Raises:
        TypeError: a value cannot be encoded (see `canonical_encoding`).
    """
    h = blake2b(_PAIR, digest_size=_DIGEST_SIZE)
    h.update(_encoded_base(base))
    h.update(_encoded_request(request))
    return h.hexdigest()


def default_group_and_base(base: Any, request: Any) -> tuple[str, str]:
    """Return ``(default_group(base, request), default_group(base, None))``.

    The base is encoded once: the hash state after it is copied, so finding a
    worker for the base costs one more tiny hash, not a second encoding.
    """
    h = blake2b(_PAIR, digest_size=_DIGEST_SIZE)
    h.update(_encoded_base(base))
    base_only = h.copy()
    base_only.update(b"N")
    h.update(_encoded_request(request))
    return h.hexdigest(), base_only.hexdigest()
