"""The payloads outcomes cross processes in: sealed to namespace, key and token."""

from __future__ import annotations

import collections
import enum
from typing import Any

import pytest

import trio_persist
from trio_persist._codec import ABANDONED, Seal, decode_outcome, encode_error, encode_value

KEY = "{ns:k}:result"


@pytest.mark.parametrize("key", [None, b"secret"])
def test_values_errors_and_abandonments_round_trip(key: bytes | None) -> None:
    seal = Seal("ns", key)
    assert decode_outcome(seal, KEY, encode_value(seal, KEY, {"a": [1, "x"]}, 7), "w") == (
        7,
        True,
        {"a": [1, "x"]},
    )
    token, ok, error = decode_outcome(seal, KEY, encode_error(seal, KEY, ValueError("no"), 8), "w")
    assert (token, ok, str(error)) == (8, False, "ValueError: no")
    assert isinstance(error, trio_persist.RemoteError)
    abandoned = seal.wrap(KEY, 9, {"abandoned": True})
    assert decode_outcome(seal, KEY, abandoned, "w") == (9, False, ABANDONED)


@pytest.mark.parametrize(
    "body",
    [
        {"ok": True},  # no value
        {"ok": "yes", "codec": "json", "value": 1},  # not a bool
        {"ok": True, "codec": "yaml", "value": 1},  # no such codec
        {"ok": True, "codec": "data", "value": 1},  # nor this one
        {"value": 1},  # no outcome at all
        {"abandoned": 1},  # not quite an abandonment either
    ],
)
def test_a_body_that_is_not_an_outcome_is_corrupt(body: dict[str, object]) -> None:
    seal = Seal("ns")
    with pytest.raises(trio_persist.CorruptResult):
        decode_outcome(seal, KEY, seal.wrap(KEY, 1, body), "w")


class Color(enum.IntEnum):
    RED = 1


class Tag(str):
    pass


class Touchy(dict):  # type: ignore[type-arg]
    """A dict that JSON encodes, whose ``==`` raises."""

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("never compare me")

    __hash__ = None  # type: ignore[assignment]


@pytest.mark.parametrize(
    ("value", "why"),
    [
        (Color.RED, "a value of type Color"),
        ({"c": [Color.RED]}, "a value of type Color"),
        (collections.OrderedDict(a=1), "a value of type OrderedDict"),
        ([Tag("x")], "a value of type Tag"),
        ((1, 2), "a value of type tuple"),
        ({1: "x"}, "a key of type int"),
        ([Touchy(a=1)], "a value of type Touchy"),
        (float("nan"), "Out of range float values are not JSON compliant"),
    ],
)
def test_json_refuses_what_would_not_come_back_as_the_same_types(value: Any, why: str) -> None:
    # Never silently turned into another type; nothing of the value's own is called.
    with pytest.raises(TypeError, match=r"cannot send a .* with the JSON codec") as caught:
        encode_value(Seal("ns"), KEY, value, 1)
    assert why in str(caught.value)


def test_json_carries_plain_values_of_any_size() -> None:
    seal = Seal("ns")
    value = {"n": 10**40, "f": 0.5, "b": True, "none": None, "l": [[]], "s": "é"}
    assert decode_outcome(seal, KEY, encode_value(seal, KEY, value, 1), "w") == (1, True, value)


def test_what_does_not_pickle_is_refused_with_the_reason() -> None:
    seal = Seal("ns", b"secret")
    with pytest.raises(TypeError, match="cannot send a function across processes: it does not"):
        encode_value(seal, KEY, lambda: None, 1)


def test_a_signed_pickle_that_fails_to_load_is_corrupt() -> None:
    seal = Seal("ns", b"secret")
    body = {"ok": True, "codec": "pickle", "value": "bm90IGEgcGlja2xl"}  # "not a pickle"
    with pytest.raises(trio_persist.CorruptResult, match="a signed pickle failed to load"):
        decode_outcome(seal, KEY, seal.wrap(KEY, 1, body), "w")


def test_a_payload_sealed_for_another_key_token_or_namespace_is_refused() -> None:
    seal = Seal("ns", b"secret")
    payload = encode_value(seal, KEY, "v", 5)
    with pytest.raises(trio_persist.CorruptResult, match="signature does not match"):
        decode_outcome(seal, "{ns:other}:result", payload, "w")
    with pytest.raises(trio_persist.CorruptResult, match="signature does not match"):
        decode_outcome(Seal("other", b"secret"), KEY, payload, "w")
    with pytest.raises(trio_persist.CorruptResult, match="signature does not match"):
        decode_outcome(seal, KEY, payload.replace(b"5:", b"6:", 1), "w")


def test_a_json_value_is_encoded_once(monkeypatch: pytest.MonkeyPatch) -> None:
    from trio_persist import _codec

    calls: list[object] = []
    encode = _codec._ENCODER.encode

    def counted(value: Any) -> str:
        calls.append(value)
        return encode(value)

    monkeypatch.setattr(_codec._ENCODER, "encode", counted)
    seal = Seal("ns")
    payload = encode_value(seal, KEY, {"a": [1, "x"]}, 7)
    assert len(calls) == 1
    assert decode_outcome(seal, KEY, payload, "w") == (7, True, {"a": [1, "x"]})
