"""States at rest: how a store writes a state, sealed to its namespace and group.

A sealed state is one header line and the bodies::

    b"TPS1 " + mac + b" " + header + b"\\n" + state body + reply body

The header is compact JSON: the group's digest, the codec, the fencing token,
the ids of the requests the state applied, the bodies' sizes (a reply of -1 is
the state itself) and their SHA-256. ``mac`` (64 hex digits) covers the
namespace and the header, so it binds the bodies through their hash:

* With a signing key it is an HMAC-SHA256: a state moved to another group's
  name, copied from another namespace, forged or damaged is `CorruptResult`,
  checked before anything is decoded. Bodies are pickles (anything picklable).
* Without one it is a plain SHA-256: damage is found, forgery is not (nothing
  is authenticated, so pickles are never loaded). Bodies are JSON, and a value
  that would not read back equal (a tuple, a non-string key, NaN, an object)
  is refused with a `TypeError` that says where it sits.

The header alone is authenticated, so a store can read the token of the state
it is about to replace (fencing) without reading the bodies.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import pickle
from collections.abc import Mapping
from typing import Any, NoReturn

import attrs
import trio

from ._exceptions import CorruptResult

__all__ = ["HEADER_LIMIT", "MIN_KEY_BYTES", "Encoded", "StateCodec"]

MIN_KEY_BYTES = 16
"""The shortest signing key accepted (HMAC-SHA256 wants at least 128 bits)."""

_MAGIC = b"TPS1 "
_MAC_SIZE = 64
HEADER_LIMIT = 1 << 20
"""The longest header line read (it holds at most 1,024 request ids of 256 characters)."""
_INLINE = 1 << 16  # larger bodies are hashed and decoded in a worker thread
_PICKLE_PROTOCOL = 5
_SAME = -1  # the reply is the state


@attrs.frozen
class Encoded:
    """A state (and a reply) encoded, not yet sealed."""

    state: bytes
    reply: bytes | None
    """None: the reply is the state."""


@attrs.frozen
class _Header:
    group: str
    codec: str
    token: int | None
    applied: tuple[str, ...]
    state: int
    reply: int
    sha256: str


def _check_key(_codec: object, _attribute: object, key: Any) -> None:
    if key is None:
        return
    if not isinstance(key, bytes):
        raise TypeError(f"signing_key must be bytes, got {type(key).__name__}")
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(
            f"signing_key must be at least {MIN_KEY_BYTES} bytes, got {len(key)}: "
            "use secrets.token_bytes(32)"
        )


def _check_namespace(_codec: object, _attribute: object, namespace: Any) -> None:
    if not isinstance(namespace, str):
        raise TypeError(f"namespace must be a str, got {type(namespace).__name__}")
    if not namespace or len(namespace) > 200 or not namespace.isprintable():
        raise ValueError(f"namespace must be 1 to 200 printable characters, got {namespace[:40]!r}")


@attrs.frozen
class StateCodec:
    """Seals states for one namespace (authenticated with *key*, as pickles), and opens them."""

    namespace: str = attrs.field(validator=_check_namespace)
    key: bytes | None = attrs.field(default=None, repr=False, validator=_check_key)

    @property
    def codec(self) -> str:
        return "json" if self.key is None else "pickle"

    # -- sealing -------------------------------------------------------------

    def encode(self, state: Any, where: str, *, reply: Any = None) -> Encoded:
        """Encode *state* and *reply* now, in the calling task, without a checkpoint.

        So what is sealed is the values as they are at this call, whatever
        happens to them later. A reply that is the state is encoded once.

        Raises:
            TypeError: a value would not read back equal (JSON) or does not
                pickle; *where* names the group.
        """
        state_body = self._dump(state, where, "state")
        if reply is state:
            return Encoded(state_body, None)
        return Encoded(state_body, self._dump(reply, where, "reply"))

    async def seal(
        self,
        digest: str,
        encoded: Encoded,
        *,
        token: int | None = None,
        applied: tuple[str, ...] = (),
    ) -> bytes:
        """Return *encoded* sealed for the group named *digest*, with its token and
        the requests it applied (large bodies are hashed in a worker thread)."""
        size = len(encoded.state) + len(encoded.reply or b"")
        if size <= _INLINE:
            return self._wrap(digest, token, applied, encoded)
        return await trio.to_thread.run_sync(self._wrap, digest, token, applied, encoded)

    def _dump(self, value: Any, where: str, what: str) -> bytes:
        if self.key is not None:
            try:
                return pickle.dumps(value, protocol=_PICKLE_PROTOCOL)
            except Exception as exc:
                raise TypeError(
                    f"{where}: cannot save a {type(value).__name__} {what}: it does not "
                    f"pickle ({exc}); nothing was saved"
                ) from None
        try:
            text = json.dumps(value, separators=(",", ":"), allow_nan=False, ensure_ascii=False)
            problem = _difference(value, json.loads(text), what)
        except (TypeError, ValueError, RecursionError) as exc:
            text, problem = "", f"the {what} cannot be written as JSON ({exc})"
        if problem is None:
            return text.encode("utf-8", "surrogatepass")
        raise TypeError(
            f"{where}: cannot save this {what} with the JSON codec: {problem}, so it would "
            "not read back equal; nothing was saved. Keep states to JSON values (dicts "
            "with str keys, lists, str, finite numbers, bools, None), or give the store "
            "a signing_key to save signed pickles"
        )

    def _wrap(
        self, digest: str, token: int | None, applied: tuple[str, ...], encoded: Encoded
    ) -> bytes:
        state_body, reply_body = encoded.state, encoded.reply or b""
        checksum = hashlib.sha256(state_body)
        checksum.update(reply_body)
        header = {
            "group": digest,
            "codec": self.codec,
            "token": token,
            "applied": list(applied),
            "state": len(state_body),
            "reply": _SAME if encoded.reply is None else len(reply_body),
            "sha256": checksum.hexdigest(),
        }
        line = json.dumps(header, separators=(",", ":"), sort_keys=True).encode()
        return b"".join((_MAGIC, self._mac(line), b" ", line, b"\n", state_body, reply_body))

    def _mac(self, line: bytes) -> bytes:
        message = b"trio-persist state\0%s\0%s" % (self.namespace.encode(), line)
        if self.key is None:
            return hashlib.sha256(message).hexdigest().encode()
        return hmac.new(self.key, message, hashlib.sha256).hexdigest().encode()

    # -- opening -------------------------------------------------------------

    async def open(
        self, digest: str, data: bytes, where: str
    ) -> tuple[Any, int | None, tuple[str, ...], Any]:
        """Return ``(state, token, applied, reply)`` of a state sealed for *digest*.

        Large states are checked and decoded in a worker thread.

        Raises:
            CorruptResult: *data* is not a state this codec sealed for this
                group (garbage, damaged, forged, moved, or sealed with another
                key or namespace); *where* names the group.
        """
        if len(data) <= _INLINE:
            return self.open_sync(digest, data, where)
        return await trio.to_thread.run_sync(self.open_sync, digest, data, where)

    def open_sync(
        self, digest: str, data: bytes, where: str
    ) -> tuple[Any, int | None, tuple[str, ...], Any]:
        """`open`, in the calling thread."""
        header, start = self._header(data, where)
        if header.group != digest:
            _corrupt(
                where,
                f"holds the state of group {header.group}, not its own (moved or copied "
                "from another group's name?)",
            )
        body = memoryview(data)[start:]
        size = header.state + max(header.reply, 0)
        if len(body) != size:
            _corrupt(where, f"has {len(body)} bytes of state where its header says {size}")
        if not hmac.compare_digest(hashlib.sha256(body).hexdigest(), header.sha256):
            _corrupt(where, "does not match its checksum (damaged, or altered)")
        state = self._load(body[: header.state], where)
        reply = state if header.reply == _SAME else self._load(body[header.state :], where)
        return state, header.token, header.applied, reply

    def token_of(self, head: bytes) -> int | None:
        """The token in the header at the start of *head*, if authentic; else None.

        What a store reads of the state it is about to replace, to fence a save.
        """
        try:
            return self._header(head, "")[0].token
        except CorruptResult:
            return None

    def _header(self, data: bytes, where: str) -> tuple[_Header, int]:
        if not data.startswith(_MAGIC):
            _corrupt(where, "is not a trio-persist state")
        end = data.find(b"\n", 0, HEADER_LIMIT)
        start = len(_MAGIC) + _MAC_SIZE + 1
        if end < start or data[start - 1 : start] != b" ":
            _corrupt(where, "has no complete header (truncated?)")
        line = data[start:end]
        if not hmac.compare_digest(data[len(_MAGIC) : start - 1], self._mac(line)):
            signed = "unsigned or " if self.key is not None else "signed, "
            _corrupt(
                where,
                f"does not match its seal: {signed}damaged, forged, or written by a store "
                "with another signing key or namespace",
            )
        return _parse_header(line, where), end + 1

    def _load(self, body: memoryview, where: str) -> Any:
        try:
            if self.key is not None:
                return pickle.loads(body)
            return json.loads(str(body, "utf-8", "surrogatepass"))
        except Exception as exc:
            _corrupt(where, f"holds a body that failed to decode ({type(exc).__name__})")


_TYPES = {"group": str, "codec": str, "sha256": str, "state": int, "reply": int}


def _parse_header(line: bytes, where: str) -> _Header:
    try:
        raw = json.loads(line)
    except ValueError:
        raw = None
    if not isinstance(raw, dict) or any(type(raw.get(k)) is not t for k, t in _TYPES.items()):
        _corrupt(where, "has a malformed header")
    token, applied = raw.get("token"), raw.get("applied")
    if not (
        raw["codec"] in ("json", "pickle")
        and raw["state"] >= 0
        and raw["reply"] >= _SAME
        and (token is None or (type(token) is int and 0 <= token < 2**63))
        and isinstance(applied, list)
        and all(isinstance(i, str) for i in applied)
    ):
        _corrupt(where, "has a malformed header")
    return _Header(
        raw["group"], raw["codec"], token, tuple(applied), raw["state"], raw["reply"], raw["sha256"]
    )


def _corrupt(where: str, what: str) -> NoReturn:
    raise CorruptResult(
        f"{where} {what}: refusing it. Delete it to start the group afresh, or put back a good copy"
    )


def _difference(value: Any, reread: Any, what: str) -> str | None:
    """Where *reread* (JSON's copy of *value*) differs from it, or None."""
    if reread == value:
        return None
    stack: list[tuple[str, Any, Any]] = [(f"the {what}", value, reread)]
    while stack:
        path, original, copy = stack.pop()
        if isinstance(original, tuple):
            return f"{path} is a tuple (JSON reads it back as a list)"
        if isinstance(original, Mapping):
            for key, item in original.items():
                if not isinstance(key, str):
                    return f"{path} has a {type(key).__name__} key (JSON keys read back as str)"
                if isinstance(copy, dict) and key in copy:
                    stack.append((f"{path}[{key[:40]!r}]", item, copy[key]))
        elif isinstance(original, list) and isinstance(copy, list):
            pairs = enumerate(zip(original, copy, strict=False))
            stack.extend((f"{path}[{i}]", a, b) for i, (a, b) in pairs)
        elif original != copy:
            return f"{path} is a {type(original).__name__} that reads back as {copy!r:.40}"
    return "it does not compare equal to its JSON copy"
