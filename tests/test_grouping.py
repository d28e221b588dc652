"""The default grouper: a 128-bit digest of a canonical encoding, never a short hash."""

from __future__ import annotations

import enum
from collections import OrderedDict
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trio_persist import canonical_encoding, default_group


def test_a_group_is_a_128_bit_hex_digest() -> None:
    group = default_group({"a": 1}, "req")
    assert isinstance(group, str)
    assert len(bytes.fromhex(group)) * 8 == 128


def test_dict_order_does_not_change_the_group() -> None:
    assert default_group({"a": 1, "b": [1, {"x": 2, "y": 3}]}, None) == default_group(
        {"b": [1, {"y": 3, "x": 2}], "a": 1}, None
    )
    assert default_group({"a": 1, "b": 2}, {"q": 1, "r": 2}) == default_group(
        {"b": 2, "a": 1}, {"r": 2, "q": 1}
    )


def test_every_key_counts_by_default_priv_included() -> None:
    # Upstream dropped "priv": two callers differing only there shared a result.
    assert default_group({"a": 1}, {"r": 1, "priv": "alice"}) != default_group(
        {"a": 1}, {"r": 1, "priv": "mallory"}
    )


def test_ignored_top_level_keys_are_left_out_of_base_and_request() -> None:
    ignore = ("priv",)
    assert default_group(
        {"a": 1, "priv": "secret"}, {"r": 1, "priv": 2}, ignore_keys=ignore
    ) == default_group({"a": 1}, {"r": 1}, ignore_keys=ignore)


def test_an_ignored_key_still_counts_when_nested() -> None:
    ignore = ("priv",)
    assert default_group({"a": {"priv": 1}}, None, ignore_keys=ignore) != default_group(
        {"a": {}}, None, ignore_keys=ignore
    )


@pytest.mark.parametrize(
    ("left", "right"),
    [
        (1, 1.0),
        (1, True),
        (0, False),
        (1, "1"),
        ("1", b"1"),
        (b"ab", bytearray(b"ba")),
        ([1, 2], (1, 2)),
        ({1: 2}, [(1, 2)]),
        ({1}, [1]),
        (None, "None"),
        (0.0, -0.0),
        (["a", "b"], ["ab"]),
        ("", b""),
        ((1,), [1]),
        ({1: "a"}, {"1": "a"}),
        ({"a": 1}, {"a": True}),
        ({"a": 1}, {"a": 1.0}),
        (2**63, 2**63 + 0.0),
        (frozenset({1}), (1,)),
        (None, float("nan")),
    ],
)
def test_values_of_different_types_never_share_a_group(left: Any, right: Any) -> None:
    assert canonical_encoding(left) != canonical_encoding(right)
    assert default_group(left, None) != default_group(right, None)


def test_base_and_request_are_not_interchangeable() -> None:
    assert default_group("a", "b") != default_group("b", "a")
    assert default_group(["a"], None) != default_group("a", [None])


def test_subclasses_encode_as_their_base_type() -> None:
    class Colour(enum.IntEnum):
        RED = 1

    class Key(str, enum.Enum):
        NAME = "name"

    class Money(float):
        def __repr__(self) -> str:
            return f"Money({float(self)})"

    assert canonical_encoding(Colour.RED) == canonical_encoding(1)
    assert canonical_encoding(OrderedDict(b=1, a=2)) == canonical_encoding({"a": 2, "b": 1})
    assert canonical_encoding(frozenset({1, 2})) == canonical_encoding({2, 1})
    assert canonical_encoding(memoryview(b"xy")) == canonical_encoding(b"xy")
    assert canonical_encoding({Key.NAME: [Colour.RED]}) == canonical_encoding({"name": [1]})
    assert canonical_encoding({Colour.RED, 2}) == canonical_encoding({1, 2})
    assert canonical_encoding({Colour.RED: 2}) == canonical_encoding({1: 2})
    assert canonical_encoding([Money(2.5)]) == canonical_encoding([2.5])


def test_the_base_is_encoded_once_for_both_of_its_groups() -> None:
    from trio_persist._grouping import default_group_and_base

    both = default_group_and_base({"user": 1, "priv": "x"}, ["r"], ("priv",))
    assert both == (
        default_group({"user": 1}, ["r"]),
        default_group({"user": 1}, None),
    )


def test_a_group_leaves_the_process_as_a_digest_of_what_it_holds() -> None:
    from trio_persist._grouping import group_digest

    default = default_group("api", {"user": 42})
    assert group_digest(default) == default  # already a digest
    assert group_digest(("orders", 42)) == group_digest(("orders", 42))
    assert group_digest(("orders", 42)) != group_digest(("orders", 43))

    class Opaque:  # cannot be encoded: its repr names it
        def __repr__(self) -> str:
            return "Opaque(7)"

    class Unprintable:
        def __repr__(self) -> str:
            raise RuntimeError("no repr")

    assert group_digest(Opaque()) == group_digest(Opaque())
    assert len(group_digest(Unprintable())) == 32


def test_an_unencodable_value_names_its_type_and_path() -> None:
    with pytest.raises(TypeError, match=r"builtins\.object at request\['a'\]\[1\]"):
        default_group({"base": 1}, {"a": [1, object()]})
    with pytest.raises(TypeError, match=r"builtins\.complex at base\[0\]"):
        default_group([1j], None)
    with pytest.raises(TypeError, match=r"at value\{\.\.\.\}"):
        canonical_encoding({(1, object())})
    with pytest.raises(TypeError, match="group\\(\\) hook"):
        canonical_encoding(object())


@given(st.dictionaries(st.text(max_size=3), st.integers(), max_size=6))
def test_any_insertion_order_of_a_mapping_gives_one_group(mapping: dict[str, int]) -> None:
    reversed_mapping = dict(reversed(list(mapping.items())))
    assert default_group(mapping, mapping) == default_group(reversed_mapping, reversed_mapping)


def test_a_deep_path_in_an_error_is_shortened_in_the_middle() -> None:
    deep: Any = object()
    for index in range(14):
        deep = [deep] if index % 2 else {f"k{index}": deep}
    with pytest.raises(TypeError) as info:
        canonical_encoding(deep)
    # 14 levels: the first six and the last four are shown
    assert "at value[0]['k12'][0]['k10'][0]['k8']...(4 more)...[0]['k2'][0]['k0']: " in str(
        info.value
    )


def test_requests_are_the_same_only_when_equal_or_encoded_alike() -> None:
    from trio_persist._grouping import same_request

    nan = float("nan")
    assert same_request(nan, nan)  # the very same object
    assert not same_request(nan, float("nan"))  # NaN is not equal to itself

    class Odd(dict):  # type: ignore[type-arg]
        def __eq__(self, other: object) -> Any:
            return "maybe"  # not a bool: the encodings decide

        __hash__ = dict.__hash__  # type: ignore[assignment]

    assert same_request(Odd(a=1), Odd(a=1))
    assert not same_request(Odd(a=1), Odd(a=2))
    assert not same_request(Odd(a=2), Odd(a=1))


@pytest.mark.parametrize("shared", [(1, 2), frozenset({1}), {"a": 1}, [1]])
def test_a_container_shared_twice_is_not_a_cycle(shared: Any) -> None:
    # Only a container inside itself is refused; the same one twice side by side is fine.
    assert canonical_encoding([shared, shared]).count(canonical_encoding(shared)) == 2
