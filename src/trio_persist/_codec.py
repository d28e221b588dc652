"""Codecs: how outcomes cross processes through the backend.

An outcome travels as one JSON envelope::

    {"v": 1, "token": 17, "ok": true, "codec": "json", "value": ...}
    {"v": 1, "token": 17, "ok": false, "type": "ValueError", "message": "..."}

`JsonCodec` (the default) carries JSON-like values. `PickleCodec` carries any
picklable value, and only signed: the pickle is base64 text with an
HMAC-SHA256 over the token and the data, checked before anything is loaded.
An envelope that is garbage, unsigned or tampered with raises `CorruptResult`.
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

__all__ = ["JsonCodec", "PickleCodec", "decode_outcome", "encode_error", "encode_value"]


@attrs.frozen
class JsonCodec:
    """JSON-like values only (dicts with string keys, lists, str, numbers, bools, None)."""

    name: str = "json"

    def dump(self, value: Any, token: int) -> dict[str, Any]:
        return {"codec": "json", "value": value}  # checked when the envelope is encoded

    def load(self, envelope: dict[str, Any], where: str) -> Any:
        if envelope.get("codec") != "json":
            raise CorruptResult(
                f"{where} holds a {envelope.get('codec')!r} result, but this backend has no "
                "signing key: refusing to load it"
            )
        return envelope["value"]


@attrs.frozen
class PickleCodec:
    """Any picklable value, signed with HMAC-SHA256 under *key*; never loaded unsigned."""

    key: bytes = attrs.field(repr=False)
    name: str = "pickle"

    def _mac(self, token: int, data: str) -> str:
        return hmac.new(self.key, f"{token}:{data}".encode(), hashlib.sha256).hexdigest()

    def dump(self, value: Any, token: int) -> dict[str, Any]:
        data = base64.b64encode(pickle.dumps(value)).decode()
        return {"codec": "pickle", "value": data, "mac": self._mac(token, data)}

    def load(self, envelope: dict[str, Any], where: str) -> Any:
        if envelope.get("codec") == "json":
            return envelope["value"]
        data, mac = envelope.get("value"), envelope.get("mac")
        if not isinstance(data, str) or not isinstance(mac, str):
            raise CorruptResult(f"{where} holds an unsigned pickle: refusing to load it")
        if not hmac.compare_digest(mac, self._mac(envelope["token"], data)):
            raise CorruptResult(
                f"{where}: the pickle's signature does not match: refusing to load it"
            )
        return pickle.loads(base64.b64decode(data))


Codec = JsonCodec | PickleCodec


def encode_value(codec: Codec, value: Any, token: int) -> bytes:
    """The envelope of a result.

    Raises:
        TypeError: the value does not fit the codec (not JSON-like, for `JsonCodec`).
    """
    envelope = {"v": 1, "token": token, "ok": True, **codec.dump(value, token)}
    try:
        return json.dumps(envelope, separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        raise TypeError(
            f"cannot send a {type(value).__name__} across processes with the JSON codec "
            f"({exc}); return JSON-like values, or give the backend a signing_key to use "
            "signed pickles"
        ) from None


def encode_error(error: BaseException, token: int) -> bytes:
    envelope = {
        "v": 1,
        "token": token,
        "ok": False,
        "type": type(error).__name__,
        "message": str(error),
    }
    return json.dumps(envelope, separators=(",", ":")).encode()


def decode_outcome(codec: Codec, payload: bytes | str, where: str) -> tuple[int, bool, Any]:
    """Return ``(token, ok, value_or_error)``; raise `CorruptResult` for garbage."""
    try:
        envelope = json.loads(payload)
        token = envelope["token"]
        ok = envelope["ok"]
        if envelope.get("v") != 1 or not isinstance(token, int) or not isinstance(ok, bool):
            raise ValueError("not a version-1 envelope")
    except (ValueError, TypeError, KeyError):
        shown = payload[:40]
        raise CorruptResult(
            f"{where} holds garbage, not a trio-persist result: {shown!r}"
        ) from None
    if ok:
        return token, True, codec.load(envelope, where)
    return (
        token,
        False,
        RemoteError(str(envelope.get("type", "Error")), str(envelope.get("message", ""))),
    )
