"""The canonical encoding: its bytes, and the C path and the loop writing the same ones.

Groups are digests of these bytes, shared by every process of a namespace: a
change of any byte here is a new encoding version (docs/concepts.md).
"""

from __future__ import annotations

import dataclasses
import inspect
import json
import runpy
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from hashlib import blake2b
from pathlib import Path
from typing import Any

import attrs
import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from trio_persist import MAX_DEPTH, canonical_encoding, default_group
from trio_persist._encoding import encode_general
from trio_persist._plain_json import is_plain


def digest(text: bytes) -> bytes:
    return blake2b(text, digest_size=16).hexdigest().encode()


@dataclasses.dataclass(frozen=True)
class Point:
    x: Any
    y: Any


@attrs.frozen
class Line:
    start: Any
    end: Any
    note: str = attrs.field(default="", eq=False)  # not part of equality: not encoded


@pytest.mark.parametrize(
    ("value", "encoded"),
    [
        (None, b"null"),
        (True, b"true"),
        (False, b"false"),
        (-1, b"-1"),
        (2**63 - 1, b"9223372036854775807"),
        (2**63, b"#8000000000000000"),  # from 2**63 on: hex, exact at any size
        (-(2**70), b"#-400000000000000000"),
        (1.5, b"1.5"),
        (1e16, b"1e+16"),
        (0.0, b"0.0"),
        (-0.0, b"-0.0"),
        (float("nan"), b"NaN"),
        (float("-inf"), b"-Infinity"),
        ("s", b'"s"'),
        ('é"\n', '"é\\"\\n"'.encode()),
        ("\ud800", b'"\xed\xa0\x80"'),  # a lone surrogate: UTF-8 as if it were one
        (b"b", b'b"b"'),
        (b"\xff\x00", b'b"\xc3\xbf\\u0000"'),  # bytes as a JSON string of latin-1
        ((1, "a"), b'(1,"a")'),
        ((2,), b"(2)"),
        ((), b"()"),
        ([1], b"[1]"),
        ([[1], 2], b"[[1],2]"),
        ({"k": 1, "a": None}, b'{"a":null,"k":1}'),
        ({"a": [1, (2,)]}, b'{"a":[1,(2)]}'),
        ([1, 2**63], b"[1,#8000000000000000]"),
        ((["x", 2**63],), b'(["x",#8000000000000000])'),
        ((["x", 1],), b'(["x",1])'),  # big ints inside JSON: never the C path's
        ({"n": -(2**63), "s": "x"}, b'{"n":#-8000000000000000,"s":"x"}'),
        ({"n": 2**63, "s": []}, b'{"n":#8000000000000000,"s":[]}'),
        (
            {"a": [[1, 2**64]], "b": [2**63 - 1]},
            b'{"a":[[1,#10000000000000000]],"b":[9223372036854775807]}',
        ),
        (frozenset({1, "a", (2,)}), b'<"a",(2),1>'),  # members' texts, sorted
        ({1: 2, None: "b"}, b'{<1:2,null:"b">}'),  # a mapping with other keys than str
        (frozenset({"x" * 31}), b"<%" + digest(b'"' + b"x" * 31 + b'"') + b">"),
        (Point(1, [2]), b'@"test_encoding.Point"{"x":1,"y":[2]}'),
        (Line(1, 2, note="ignored"), b'@"test_encoding.Line"{"end":2,"start":1}'),
    ],
)
def test_the_canonical_encoding_of_each_kind_is_fixed(value: Any, encoded: bytes) -> None:
    assert canonical_encoding(value) == encoded


def test_a_set_member_longer_than_32_characters_is_written_as_its_digest() -> None:
    assert canonical_encoding({"x" * 30}) == b'<"' + b"x" * 30 + b'">'  # 32 characters
    assert canonical_encoding({"x" * 31}) == b"<%" + digest(b'"' + b"x" * 31 + b'"') + b">"
    assert (
        canonical_encoding({("x" * 40,): 1}) == b"{<%" + digest(b'("' + b"x" * 40 + b'"):1') + b">}"
    )


def test_a_default_group_is_fixed_too() -> None:
    expected = blake2b(b'"api"\n{"user":42}', digest_size=16, person=b"trio-persist/2")
    assert default_group("api", {"user": 42}) == expected.hexdigest()
    assert default_group("api", {"user": 42}) == "ac7d95a847101acb7d7582373d881727"


# ------------------------------------------------------- the two paths ----

small_ints = st.integers(min_value=-(2**63) + 1, max_value=2**63 - 1)
any_ints = st.integers() | st.integers(min_value=2**62, max_value=2**70).map(lambda i: i * -1)
texts = st.text(st.characters() | st.characters(categories=["Cs"]), max_size=4)
plain_json = st.recursive(
    st.none() | st.booleans() | small_ints | st.floats() | texts,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(texts, children, max_size=4),
    max_leaves=20,
)
hashable = st.recursive(
    st.none() | st.booleans() | any_ints | st.floats() | texts | st.binary(max_size=3),
    lambda children: st.tuples(children, children) | st.frozensets(children, max_size=3),
    max_leaves=6,
)
almost_json = st.recursive(
    hashable,
    lambda children: (
        st.lists(children, max_size=4)
        | st.tuples(children, children)
        | st.dictionaries(texts, children, max_size=4)
        | st.dictionaries(hashable, children, max_size=3)
        | st.frozensets(hashable, max_size=3)
        | st.builds(Point, children, children)
    ),
    max_leaves=16,
)


def by_the_loop(value: Any) -> bytes:
    """The encoding written by the loop alone, the C encoder never used."""
    return encode_general(value, "value", accelerate=False).encode("utf-8", "surrogatepass")


EDGES = [float("nan"), -0.0, float("inf"), float("-inf"), "\ud800\n", 2**63 - 1, -(2**63) + 1]


@given(plain_json)
@example(EDGES)
@example({"b": EDGES, "a": {"": [None, True, False, "é"]}})
def test_a_json_value_is_its_sorted_compact_json_written_in_one_c_call(value: Any) -> None:
    expected = json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert canonical_encoding(value) == expected.encode("utf-8", "surrogatepass")
    assert by_the_loop(value) == canonical_encoding(value)
    if isinstance(value, (dict, list)):
        assert is_plain(value)  # so the C path wrote it


@given(almost_json)
@example([*EDGES, 2**63, -(2**63), (1,), b"\x00\xff"])
@example({(1, 2): frozenset({b"\x00", 2**70, -(2**70)}), 1: [Point(1, "x" * 40)], "t": ()})
def test_the_c_path_and_the_loop_write_the_same_bytes(value: Any) -> None:
    assert canonical_encoding(value) == by_the_loop(value)


def _strict(value: Any) -> Any:
    """*value* as nested tuples that are equal exactly when the values are the same
    (types made explicit, so 1 == 1.0 == True no longer holds; dicts and sets as
    multisets, sorted by repr)."""
    kind = type(value)
    if kind is float:
        return ("float", value.hex())
    if kind in (list, tuple):
        return (kind.__name__, tuple(_strict(v) for v in value))
    if kind is dict:
        pairs = [(_strict(k), _strict(v)) for k, v in value.items()]
        return ("dict", tuple(sorted(pairs, key=repr)))
    if kind is frozenset:
        return ("set", tuple(sorted((_strict(v) for v in value), key=repr)))
    if kind is Point:
        return ("Point", _strict(value.x), _strict(value.y))
    return (kind.__name__, value)


@given(almost_json, almost_json)
@example(2**70, -(2**70))
@example(float("nan"), None)
@example({1: "a"}, {"1": "a"})
@example(frozenset({(1,)}), frozenset({1}))
def test_two_values_share_an_encoding_exactly_when_they_are_the_same(a: Any, b: Any) -> None:
    assert (canonical_encoding(a) == canonical_encoding(b)) == (_strict(a) == _strict(b))


@contextmanager
def stack_room(frames: int) -> Iterator[None]:
    """Only *frames* more frames before a RecursionError."""
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(len(inspect.stack(0)) + frames)
    try:
        yield
    finally:
        sys.setrecursionlimit(old)


def nested(depth: int) -> Any:
    value: Any = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"child": value}
    return value


def test_a_plain_value_too_deep_for_the_c_encoders_stack_is_written_by_the_loop() -> None:
    value = nested(50)
    assert is_plain(value)
    expected = canonical_encoding(value)
    with stack_room(30):  # json's C encoder recurses once per level: it cannot
        assert canonical_encoding(value) == expected


def test_sets_nested_in_sets_are_encoded_whatever_the_depth() -> None:
    value: Any = frozenset({1})
    for _ in range(MAX_DEPTH - 1):
        value = frozenset({value, "x"})
    # each level holds a digest and "x", however deep it goes
    assert len(canonical_encoding(value)) == len('<"x",%>') + 32
    with pytest.raises(TypeError, match="nesting deeper than"):
        canonical_encoding(frozenset({value}))


# --------------------------------------------------------------- records ----


def test_a_frozen_record_is_its_type_and_its_fields() -> None:
    @dataclasses.dataclass(frozen=True)
    class Other:
        x: Any
        y: Any

    assert canonical_encoding(Point(1, 2)) == canonical_encoding(Point(1, 2))
    assert canonical_encoding(Point(1, 2)) != canonical_encoding(Point(2, 1))
    assert canonical_encoding(Point(1, 2)) != canonical_encoding(Other(1, 2))  # same fields
    assert canonical_encoding(Point(1, 2)) != canonical_encoding({"x": 1, "y": 2})
    assert canonical_encoding(Line(1, 2, "a")) == canonical_encoding(Line(1, 2, "b"))


@pytest.mark.parametrize(
    "make",
    [
        dataclasses.dataclass(type("Mutable", (), {"__annotations__": {"n": int}})),
        attrs.define(type("Mutable", (), {"__annotations__": {"n": int}})),
    ],
)
def test_a_mutable_record_is_refused_with_what_to_do(make: Any) -> None:
    with pytest.raises(TypeError) as info:
        default_group("api", {"order": [make(1)]})
    message = str(info.value)
    assert "Mutable at request['order'][0]" in message
    assert "a mutable record cannot name a group" in message
    assert "make it frozen" in message
    assert "group() hook" in message


def test_an_unencodable_field_is_named_by_its_path() -> None:
    with pytest.raises(TypeError, match=r"builtins\.object at value\[0\]\.y\[1\]"):
        canonical_encoding([Point(1, [2, object()])])


def test_max_depth_shows_its_own_docstring_in_the_reference() -> None:
    pytest.importorskip("sphinx")
    conf = runpy.run_path(str(Path(__file__).resolve().parent.parent / "docs" / "conf.py"))
    lines = (int.__doc__ or "").splitlines()  # what autodoc finds on the re-exported int
    conf["_docstring_where_defined"](None, "data", "trio_persist.MAX_DEPTH", MAX_DEPTH, {}, lines)
    assert lines[0] == "The deepest nesting of containers the default grouper encodes."
