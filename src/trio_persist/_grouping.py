"""Group names: the BLAKE2b-128 digest of the canonical encoding of ``(base, request)``.

The default grouper must never let two different requests share a result
(upstream's 27-bit ``phash2`` could), so it hashes an *injective* encoding
(`_encoding`) with BLAKE2b-128: values of different types never share a group,
mappings and sets are order-free, and anything the encoding does not know is a
`TypeError` naming its type and where it sits.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from hashlib import blake2b
from typing import Any

from ._encoding import MAX_DEPTH, encode

__all__ = [
    "MAX_DEPTH",
    "canonical_encoding",
    "default_group",
    "default_group_and_base",
    "group_digest",
    "same_request",
]

_DIGEST_SIZE = 16  # 128 bits: collisions need ~2**64 live groups
_HEX_DIGEST = re.compile(f"[0-9a-f]{{{2 * _DIGEST_SIZE}}}")
# The encoding's version, hashed into every default group: every process of a
# namespace must run the same one (docs/concepts.md).
_PERSON = b"trio-persist/2"


def canonical_encoding(value: Any) -> bytes:
    """Return the canonical bytes the default grouper hashes for *value*.

    The bytes are UTF-8 text: JSON with sorted keys and no spaces when *value*
    is JSON-like (``{"a":[1,2.5,null]}``), and self-delimiting tokens JSON
    never starts a value with for the rest (tuples ``(1,2)``, bytes ``b"..."``,
    ints past 2**63 in hex ``#8000000000000000``, sets ``<"a",1>`` and
    mappings with other keys than str ``{<1:"a">}`` as their members'
    encodings, sorted, a long one as its digest). So equal values give equal
    bytes whatever their dict or set order, and values of different types
    never do: ``1``, ``1.0``, ``True``, ``"1"``, ``b"1"``, ``(1,)`` and ``[1]``
    are all apart, and ``0.0`` is not ``-0.0``. Subclasses (``IntEnum``,
    ``OrderedDict``) encode as their base type.

    A frozen dataclass or attrs instance is encoded by its type (module and
    qualified name) and the fields that take part in its equality:
    ``@"shop.Order"{"id":7,"lines":[...]}``. A mutable one is refused: a value
    that can change after it named a group makes a poor name.

    The bytes are part of every default group's identity, across processes
    too: every process of one namespace must run the same encoding version
    (docs/concepts.md).

    Raises:
        TypeError: *value* holds something that cannot be encoded (an unknown
            type, a mutable dataclass or attrs instance, a container inside
            itself, nesting past `MAX_DEPTH`); the message names its type and
            its path inside *value*.
    """
    return encode(value, "value")


def default_group(base: Any, request: Any, *, ignore_keys: Collection[Any] = ()) -> str:
    """Return the default group of ``(base, request)``: a 128-bit BLAKE2b hex digest.

    The digest is of both canonical encodings (see `canonical_encoding`).
    Every value counts, except the top-level keys of a mapping *base* or
    *request* named in *ignore_keys* (two calls that differ only there share
    one group, and so one result).

    Raises:
        TypeError: a value cannot be encoded (see `canonical_encoding`).
    """
    # "\n" is never inside an encoding (JSON escapes it): the pair is injective.
    both = b"%s\n%s" % (encode(base, "base", ignore_keys), encode(request, "request", ignore_keys))
    return blake2b(both, digest_size=_DIGEST_SIZE, person=_PERSON).hexdigest()


def default_group_and_base(
    base: Any, request: Any, ignore_keys: Collection[Any] = ()
) -> tuple[str, str]:
    """Return ``(default_group(base, request), default_group(base, None))``.

    The base is encoded once: the hash state after it is copied, so finding a
    worker for the base costs one more tiny hash, not a second encoding.
    """
    h = blake2b(encode(base, "base", ignore_keys), digest_size=_DIGEST_SIZE, person=_PERSON)
    h.update(b"\n")
    base_only = h.copy()
    base_only.update(b"null")
    h.update(encode(request, "request", ignore_keys))
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
        h.update(encode(group, "group"))
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
        return encode(left, "request") == encode(right, "request")
    except Exception:
        return False
