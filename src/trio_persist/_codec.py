"""Codecs: how outcomes cross processes through the backend, sealed to their key.

A payload is ``b"<token>:<mac>:<body>"``. The token comes first so the Redis
scripts can order payloads without decoding them; the body is JSON::

    {"ok": true, "codec": "json", "value": ...}
    {"ok": true, "codec": "pickle", "value": "<base64>"}
    {"ok": false, "type": "ValueError", "message": "..."}
    {"abandoned": true}

With a signing key, ``mac`` is an HMAC-SHA256 over the namespace, the key, the
token and the body, checked before anything is decoded: a payload moved to
another key, replayed with another token or forged is `CorruptResult`, and so
is any unsigned payload. Without a key ``mac`` is empty and nothing is
authenticated (so pickles are never loaded).

`JsonCodec` (no signing key) carries JSON values and refuses what would not
come back equal (tuples, non-string keys, NaN): a leader's callers and its
followers never see different values. `PickleCodec` (with a signing key)
carries anything picklable.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import pickle
from typing import Any

import attrs

from ._exceptions import CorruptResult, RemoteError

__all__ = ["ABANDONED", "Seal", "decode_outcome", "encode_error", "encode_value"]

ABANDONED = object()  # decode_outcome's value for an abandonment notice


@attrs.frozen
class Seal:
    """Signs and checks payloads for one namespace (authenticated with *key*)."""

    namespace: str
    key: bytes | None = attrs.field(default=None, repr=False)

    def mac(self, redis_key: str, token: int, body: bytes) -> str:
        if self.key is None:
            return ""
        message = b"\0".join((self.namespace.encode(), redis_key.encode(), b"%d" % token, body))
        return hmac.new(self.key, message, hashlib.sha256).hexdigest()

    def wrap(self, redis_key: str, token: int, body: dict[str, Any]) -> bytes:
        return self.wrap_encoded(redis_key, token, _dumps(body))

    def wrap_encoded(self, redis_key: str, token: int, data: bytes) -> bytes:
        """`wrap` for a body already encoded (by `_dumps`)."""
        return b"%d:%s:%s" % (token, self.mac(redis_key, token, data).encode(), data)

    def open(self, redis_key: str, payload: bytes | str, where: str) -> tuple[int, dict[str, Any]]:
        """Return ``(token, body)`` of an authentic payload; else `CorruptResult`."""
        if isinstance(payload, str):
            payload = payload.encode()
        try:
            raw_token, mac, data = payload.split(b":", 2)
            if not raw_token.isdigit() or len(raw_token) > 16:
                raise ValueError("no token")
            token = int(raw_token)
            body = None
            if self.key is None or hmac.compare_digest(
                mac, self.mac(redis_key, token, data).encode()
            ):
                body = json.loads(data)
                if not isinstance(body, dict):
                    raise ValueError("not an object")
        except ValueError:
            raise CorruptResult(
                f"{where} holds garbage, not a trio-persist result: {payload[:40]!r}"
            ) from None
        if body is None:
            raise CorruptResult(
                f"{where}: the result's signature does not match this key and namespace "
                "(unsigned, forged or moved): refusing it"
            )
        return token, body


def encode_value(seal: Seal, redis_key: str, value: Any, token: int) -> bytes:
    """The payload of a result.

    Raises:
        TypeError: the value would not cross faithfully (not JSON that reads back
            equal, without a signing key; not picklable, with one).
    """
    if seal.key is not None:
        try:
            data = base64.b64encode(pickle.dumps(value)).decode()
        except Exception as exc:
            raise TypeError(
                f"cannot send a {type(value).__name__} across processes: it does not pickle ({exc})"
            ) from None
        return seal.wrap(redis_key, token, {"ok": True, "codec": "pickle", "value": data})
    # Encoded once: the encoding itself refuses cycles, NaN and what JSON cannot
    # hold; then the types are checked (safe to walk: no cycle).
    try:
        encoded = _dumps({"ok": True, "codec": "json", "value": value})
    except (TypeError, ValueError, RecursionError) as exc:
        reason: str | None = str(exc) or type(exc).__name__
    else:
        reason = _not_read_back_equal(value)
        if reason is None:
            return seal.wrap_encoded(redis_key, token, encoded)
    raise TypeError(
        f"cannot send a {type(value).__name__} across processes with the JSON codec "
        f"({reason}); return JSON values (dicts with string keys, lists, str, numbers, "
        "bools, None), or give the backend a signing_key to use signed pickles"
    )


def _dumps(body: dict[str, Any]) -> bytes:
    return _ENCODER.encode(body).encode()


# Made once: `json.dumps` with any option makes an encoder for every call.
_ENCODER = json.JSONEncoder(separators=(",", ":"), allow_nan=False)


def _not_read_back_equal(value: Any) -> str | None:
    """Why *value*, which JSON encoded (so it holds no cycle), would not read back
    as the same value of the same types, or None if it would.

    Types are checked exactly (an ``IntEnum`` is not an int, an ``OrderedDict`` not
    a dict), and nothing of the value's own is called (no ``==``, no ``repr``).
    """
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is dict:
            for key, inner in item.items():
                if type(key) is not str:
                    return f"it would not read back equal: a key of type {type(key).__name__}"
                stack.append(inner)
        elif kind is list:
            stack.extend(item)
        elif kind not in _JSON_SCALARS:
            return f"it would not read back equal: a value of type {kind.__name__}"
    return None


_JSON_SCALARS = (str, int, float, bool, type(None))


def encode_error(seal: Seal, redis_key: str, error: BaseException, token: int) -> bytes:
    body = {"ok": False, "type": type(error).__name__, "message": str(error)}
    return seal.wrap(redis_key, token, body)


def decode_outcome(
    seal: Seal, redis_key: str, payload: bytes | str, where: str
) -> tuple[int, bool, Any]:
    """Return ``(token, ok, value_or_error)`` (`ABANDONED` for a notice); else `CorruptResult`."""
    token, body = seal.open(redis_key, payload, where)
    if body.get("abandoned") is True:
        return token, False, ABANDONED
    ok = body.get("ok")
    if ok is False:
        return token, False, RemoteError(str(body.get("type")), str(body.get("message")))
    codec = body.get("codec")
    if ok is not True or "value" not in body:
        raise CorruptResult(f"{where} holds garbage, not a trio-persist result")
    if codec == "json":
        return token, True, body["value"]
    if codec == "pickle" and seal.key is not None and isinstance(body["value"], str):
        try:
            return token, True, pickle.loads(base64.b64decode(body["value"]))
        except Exception as exc:
            raise CorruptResult(f"{where}: a signed pickle failed to load ({exc})") from None
    raise CorruptResult(
        f"{where} holds a {codec!r} result, but this backend has no signing key: "
        "refusing to load it"
    )
