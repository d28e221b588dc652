"""State stores: what every store does, whatever it keeps its states in (docs/stores.md).

Each test runs against the four shipped stores, on real files, a real
SQLite database and a real Redis server: a state reads back equal, whole,
and only for its own group; what the codec cannot carry is refused at
``save``; fenced saves refuse a stale owner; one group's saves apply in call
order; a cancelled save did nothing, and a save that reached its thread
finishes.
"""

from __future__ import annotations

import copy
import itertools
import math
import pathlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import pytest
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import trio_persist
from trio_persist import stores
from trio_persist._grouping import group_digest
from trio_persist._state_codec import StateCodec
from trio_persist._store import open_store, record_store
from trio_persist.redis import RedisStore

KEY = b"k" * 32
KINDS = ["memory", "file", "sqlite", "redis"]
BIG = 200_000  # characters: sealed in a worker thread, like any state over 64 KiB

Factory = Callable[..., stores.MemoryStore | stores.FileStore | stores.SqliteStore | RedisStore]


@pytest.fixture
def make(tmp_path: pathlib.Path, request: pytest.FixtureRequest) -> Factory:
    """Makes stores of the test's kind (on disk or on Redis, in one place per test)."""
    kind = request.param if hasattr(request, "param") else "memory"
    # On the suite's Redis server, each test in a namespace of its own.
    url = request.getfixturevalue("redis_url") if kind == "redis" else ""
    namespace = request.getfixturevalue("namespace")

    def factory(**options: Any) -> Any:
        if kind == "memory":
            return stores.MemoryStore(**options)
        if kind == "file":
            return stores.FileStore(tmp_path / "states", **options)
        if kind == "redis":
            return RedisStore(url, **{"namespace": namespace, **options})
        return stores.SqliteStore(tmp_path / "states.db", **options)

    return factory


@pytest.fixture
async def store(make: Factory) -> AsyncIterator[Any]:
    async with make() as opened:
        yield opened


every_kind = pytest.mark.parametrize("make", KINDS, indirect=True)
on_disk = pytest.mark.parametrize("make", ["file", "sqlite"], indirect=True)


# -- a state reads back equal, whole, and only for its own group ------------------


@every_kind
async def test_a_saved_state_loads_back_equal_and_delete_forgets_it(store: Any) -> None:
    await store.save(("cart", "alice"), {"items": ["book", "pen"], "total": 12.5})
    assert await store.load(("cart", "alice")) == {"items": ["book", "pen"], "total": 12.5}
    await store.delete(("cart", "alice"))
    assert await store.load(("cart", "alice")) is None


@every_kind
async def test_a_group_never_saved_loads_as_none_and_deleting_it_does_nothing(
    store: Any,
) -> None:
    assert await store.load("nobody") is None
    await store.delete("nobody")
    assert await store.load_record("nobody") is None


@every_kind
async def test_each_group_keeps_its_own_state(store: Any) -> None:
    groups = ["a", ("a",), 1, 1.0, b"a", None, trio_persist.default_group("base", 1)]
    for number, group in enumerate(groups):
        await store.save(group, {"n": number})
    assert [await store.load(group) for group in groups] == [{"n": n} for n in range(7)]


@every_kind
async def test_a_state_mutated_after_its_save_does_not_change_what_was_saved(
    store: Any,
) -> None:
    state = {"items": ["book"]}
    await store.save("cart", state)
    state["items"].append("pen")
    loaded = await store.load("cart")
    assert loaded == {"items": ["book"]}
    loaded["items"].append("ink")  # each load is a fresh copy
    assert await store.load("cart") == {"items": ["book"]}


@every_kind
async def test_a_state_mutated_while_its_save_runs_is_saved_as_it_was_at_the_call(
    store: Any,
) -> None:
    state = {"blob": "x" * BIG, "items": ["book"]}
    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.save, "cart", state)
        await trio.testing.wait_all_tasks_blocked()
        state["items"].append("pen")
    assert (await store.load("cart"))["items"] == ["book"]


@every_kind
async def test_a_state_of_none_reads_back_as_no_state(store: Any) -> None:
    await store.save("cart", None)
    assert await store.load("cart") is None
    assert await store.load_record("cart") == stores.StateRecord(None)


# -- the codec: JSON that reads back equal, or signed pickles --------------------------


@every_kind
@pytest.mark.parametrize(
    ("state", "where"),
    [
        ((1, 2), "the state is a tuple"),
        ({"items": [1, (2, 3)]}, r"the state\['items'\]\[1\] is a tuple"),
        ({"by_id": {7: "book"}}, r"the state\['by_id'\] has a int key"),
        ({"x": math.nan}, "cannot be written as JSON"),
        ({"tags": {"a", "b"}}, "cannot be written as JSON"),
        (object(), "cannot be written as JSON"),
    ],
)
async def test_the_json_codec_refuses_what_would_not_read_back_equal_and_saves_nothing(
    store: Any, state: Any, where: str
) -> None:
    await store.save("cart", {"items": []})
    with pytest.raises(TypeError, match=where) as refused:
        await store.save("cart", state)
    assert "nothing was saved" in str(refused.value)
    assert "signing_key" in str(refused.value)  # what to do instead
    assert await store.load("cart") == {"items": []}
    assert store.statistics().failures == 1


json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.tuples(inner)
        | st.dictionaries(st.text(max_size=3) | st.integers(0, 3), inner, max_size=3)
    ),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(json_like)
def test_a_state_reads_back_equal_or_is_refused_at_save_never_changed(state: Any) -> None:
    async def main() -> None:
        store = stores.MemoryStore()
        try:
            await store.save("g", state)
        except TypeError:
            return
        assert await store.load("g") == state

    trio.run(main)


@attrs.frozen
class Cart:
    owner: str
    items: tuple[str, ...]


@every_kind
async def test_with_a_signing_key_any_picklable_state_round_trips(make: Factory) -> None:
    async with make(signing_key=KEY) as store:
        state = {"cart": Cart("alice", ("book",)), "seen": {1, 2}, (1, 2): math.inf}
        await store.save("cart", state)
        assert await store.load("cart") == state
        with pytest.raises(TypeError, match="does not pickle"):
            await store.save("cart", lambda: None)
        assert await store.load("cart") == state


@every_kind
@pytest.mark.parametrize(
    ("key", "error", "message"),
    [
        (b"short", ValueError, "at least 16 bytes, got 5"),
        ("a string key......", TypeError, "must be bytes"),
    ],
)
def test_a_signing_key_is_bytes_of_at_least_16(
    make: Factory, key: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        make(signing_key=key)


@every_kind
async def test_a_group_the_canonical_encoding_cannot_name_is_a_type_error(store: Any) -> None:
    for call in (store.load, store.delete, lambda g: store.save(g, 1)):
        with pytest.raises(TypeError, match=r"cannot name this group: .*object at group\[1\]"):
            await call(("cart", object()))
    assert store.statistics() == stores.StoreStatistics(0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)


@every_kind
async def test_a_state_larger_than_max_bytes_is_refused_and_nothing_is_saved(
    make: Factory,
) -> None:
    async with make(max_bytes=4096) as store:
        await store.save("cart", "small")
        with pytest.raises(ValueError, match="more than this store's max_bytes"):
            await store.save("cart", "x" * 5000)
        assert await store.load("cart") == "small"


@every_kind
async def test_errors_name_the_group_by_its_digest_never_by_its_value(store: Any) -> None:
    group = ("session", "alice@example.com")
    with pytest.raises(TypeError) as refused:
        await store.save(group, (1, 2))
    assert group_digest(group) in str(refused.value)
    assert "alice" not in str(refused.value)


# -- what a store tells -----------------------------------------------------------------


@every_kind
async def test_statistics_count_each_operation_and_its_bytes(store: Any) -> None:
    await store.save("a", {"n": 1})
    await store.load("a")
    await store.load("b")
    await store.delete("a")
    with pytest.raises(TypeError):
        await store.save("a", (1,))
    stats = store.statistics()
    assert (stats.saves, stats.loads, stats.found, stats.deletes, stats.failures) == (1, 2, 1, 1, 1)
    assert stats.bytes_saved == stats.bytes_loaded == stats.largest > 0
    assert stats.save_seconds > 0
    assert stats.load_seconds > 0
    assert stats.to_json()["saves"] == 1


@every_kind
def test_the_repr_says_where_states_live_but_never_the_key(make: Factory) -> None:
    store = make(signing_key=KEY, namespace="shop")
    text = repr(store)
    assert text.startswith(f"<{type(store).__module__}.{type(store).__name__}")
    assert "namespace='shop' signed" in text
    assert "kkkk" not in text
    assert "signing_key" not in text


# -- records: a state with its owner's token and what it applied --------------------------


@every_kind
async def test_a_record_keeps_its_token_the_requests_it_applied_and_the_reply(
    store: Any,
) -> None:
    record = stores.StateRecord({"n": 3}, token=7, applied=("r1", "r2"), reply="ok")
    await store.save_record("g", record)
    assert await store.load_record("g") == record
    assert await store.load("g") == {"n": 3}


@every_kind
async def test_a_reply_that_is_the_state_is_stored_once_and_reads_back_as_the_state(
    store: Any,
) -> None:
    state = {"blob": "x" * 1000}
    await store.save_record("once", stores.StateRecord(state, applied=("r1",), reply=state))
    once = store.statistics().bytes_saved
    await store.save_record("twice", stores.StateRecord(state, applied=("r1",), reply=dict(state)))
    twice = store.statistics().bytes_saved - once
    assert 1000 < twice - once < 1100  # the second record holds the state twice
    record = await store.load_record("once")
    assert record is not None
    assert record.reply is record.state


@every_kind
async def test_a_plain_save_reads_back_as_a_record_without_token_or_requests(
    store: Any,
) -> None:
    await store.save("g", [1])
    assert await store.load_record("g") == stores.StateRecord([1])


@every_kind
async def test_a_save_with_a_lower_token_is_refused_as_a_stale_owner(store: Any) -> None:
    await store.save_record("g", stores.StateRecord("new owner", token=5))
    with pytest.raises(trio_persist.StaleOwner, match=r"newer owner \(token 5\).*\(token 3\)") as e:
        await store.save_record("g", stores.StateRecord("stale owner", token=3))
    assert (e.value.token, e.value.stored) == (3, 5)
    assert group_digest("g") in str(e.value)
    assert await store.load("g") == "new owner"
    await store.save_record("g", stores.StateRecord("same owner", token=5))
    await store.save_record("g", stores.StateRecord("next owner", token=6))
    assert await store.load_record("g") == stores.StateRecord("next owner", token=6)
    stats = store.statistics()
    assert (stats.fenced, stats.failures, stats.saves) == (1, 1, 3)


@every_kind
async def test_a_save_without_a_token_is_never_fenced_and_clears_the_token(
    store: Any,
) -> None:
    await store.save_record("g", stores.StateRecord("fenced", token=9))
    await store.save("g", "by hand")
    await store.save_record("g", stores.StateRecord("fenced again", token=1))
    assert await store.load_record("g") == stores.StateRecord("fenced again", token=1)


@every_kind
async def test_delete_forgets_the_token_too(store: Any) -> None:
    await store.save_record("g", stores.StateRecord("a", token=9))
    await store.delete("g")
    await store.save_record("g", stores.StateRecord("b", token=1))
    assert await store.load("g") == "b"


async def test_save_record_takes_a_state_record() -> None:
    with pytest.raises(TypeError, match="record must be a StateRecord, got dict"):
        await stores.MemoryStore().save_record("g", {"state": 1})  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fields", "error", "message"),
    [
        ({"token": -1}, ValueError, "token must be >= 0"),
        ({"token": 2**63}, ValueError, r"and < 2\*\*63"),
        ({"token": True}, TypeError, "token must be None or an int"),
        ({"applied": ["r1"]}, TypeError, "applied must be a tuple"),
        ({"applied": ("r",) * 1025}, ValueError, "more than 1024"),
        ({"applied": ("r" * 257,)}, ValueError, "longer than 256"),
    ],
)
def test_a_state_record_checks_its_token_and_request_ids(
    fields: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        stores.StateRecord("state", **fields)


# -- concurrency and cancellation ---------------------------------------------------------


@every_kind
async def test_saves_of_one_group_apply_in_call_order(store: Any) -> None:
    async with trio.open_nursery() as nursery:
        for n in range(12):
            # Large and small states, so that some are sealed in a thread.
            state = {"n": n, "blob": "x" * (BIG if n % 2 else 10)}
            nursery.start_soon(store.save, "g", state)
            await trio.lowlevel.checkpoint()
    assert (await store.load("g"))["n"] == 11


@every_kind
async def test_saves_of_different_groups_may_run_at_once_and_all_land(store: Any) -> None:
    async with trio.open_nursery() as nursery:
        for n in range(20):
            nursery.start_soon(store.save, f"g{n}", {"n": n, "blob": "x" * (BIG // 4)})
    assert [(await store.load(f"g{n}"))["n"] for n in range(20)] == list(range(20))


@every_kind
async def test_a_save_cancelled_before_it_starts_saves_nothing(store: Any) -> None:
    await store.save("g", "old")
    with trio.CancelScope() as scope:
        scope.cancel()
        await store.save("g", "new")
    assert scope.cancelled_caught
    assert await store.load("g") == "old"
    assert store.statistics().failures == 0  # a cancellation is not a failure


@every_kind
async def test_a_save_cancelled_while_it_waits_behind_another_saves_nothing(
    store: Any,
) -> None:
    threads = trio.to_thread.current_default_thread_limiter()
    for token in range(int(threads.total_tokens)):  # no thread may start for now
        await threads.acquire_on_behalf_of(token)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(store.save, "g", {"blob": "x" * BIG, "n": 1})  # waits in its seal
        await trio.testing.wait_all_tasks_blocked()
        with trio.CancelScope() as scope:
            nursery.start_soon(_cancel_soon, scope)
            await store.save("g", {"n": 2})
        for token in range(int(threads.total_tokens)):
            threads.release_on_behalf_of(token)
    assert scope.cancelled_caught
    assert (await store.load("g"))["n"] == 1


async def _cancel_soon(scope: trio.CancelScope) -> None:
    await trio.testing.wait_all_tasks_blocked()
    scope.cancel()


@on_disk
async def test_a_save_cancelled_while_its_thread_writes_completes_then_sees_the_cancel(
    store: Any,
) -> None:
    await store.save("g", "old")
    steps = []
    with trio.CancelScope() as scope:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(_cancel_soon, scope)
            await store.save("g", "new")  # its write is in a thread when the cancel comes
            steps.append("returned")
            await trio.lowlevel.checkpoint()
            steps.append("not reached")
    assert steps == ["returned"]
    assert await store.load("g") == "new"


# -- the protocol: what the engine checks and uses ----------------------------------------


class OnlyStore:
    async def load(self, group: Any) -> Any:
        return None

    async def save(self, group: Any, state: Any) -> None:
        pass

    async def delete(self, group: Any) -> None:
        pass


def test_check_store_accepts_none_and_any_object_with_the_three_async_methods() -> None:
    assert stores.check_store(None) is None
    plain = OnlyStore()
    assert stores.check_store(plain) is plain


def test_check_store_names_what_is_missing() -> None:
    class SyncLoad(OnlyStore):
        def load(self, group: Any) -> Any:  # type: ignore[override]
            return None

    with pytest.raises(TypeError, match="got dict \\(it has no load, save, delete\\)"):
        stores.check_store({})
    with pytest.raises(TypeError, match=r"it has no load \(it must be async"):
        stores.check_store(SyncLoad())
    with pytest.raises(TypeError, match=r"keeps records.*OnlyStore has no load_record, save_"):
        stores.check_store(OnlyStore(), records=True)


def test_check_store_refuses_a_store_class_and_says_to_make_one() -> None:
    with pytest.raises(TypeError, match=r"got the class FileStore: make one, such as FileStore\("):
        stores.check_store(stores.FileStore)


@every_kind
def test_every_shipped_store_keeps_records(make: Factory) -> None:
    store = make()
    assert stores.check_store(store, records=True) is store
    assert record_store(store) is store
    assert record_store(OnlyStore()) is None


async def test_open_store_enters_a_store_that_has_a_life_and_passes_the_others(
    tmp_path: pathlib.Path,
) -> None:
    sqlite = stores.SqliteStore(tmp_path / "db")
    async with open_store(sqlite) as opened:
        assert opened is sqlite
        assert repr(sqlite).endswith(" open>")
    assert repr(sqlite).endswith(" closed>")
    plain = OnlyStore()
    async with open_store(plain) as opened:
        assert opened is plain


@every_kind
async def test_a_store_keeps_its_states_when_closed_and_opened_again(make: Factory) -> None:
    store = make()
    async with store:
        await store.save("g", {"n": 1})
    async with store:
        assert await store.load("g") == {"n": 1}
    assert copy.copy(store.statistics()).saves == 1


# -- any sequence of operations: the store behaves as a dict with fencing ------------------

operations = st.lists(
    st.tuples(
        st.sampled_from(["save", "save_record", "delete", "load"]),
        st.integers(0, 2),  # the group
        st.integers(0, 5),  # the value, and the token of save_record
    ),
    max_size=25,
)


@pytest.mark.parametrize(
    ("kind", "examples"), [("memory", 200), ("file", 15), ("sqlite", 15), ("redis", 15)]
)
def test_any_sequence_of_operations_acts_on_a_dict_with_fencing(
    tmp_path: pathlib.Path, kind: str, examples: int, request: pytest.FixtureRequest
) -> None:
    places = (tmp_path / str(n) for n in itertools.count())
    url = request.getfixturevalue("redis_url") if kind == "redis" else ""

    @settings(max_examples=examples, deadline=None)
    @given(operations)
    def check(steps: list[tuple[str, int, int]]) -> None:
        place = next(places)

        async def main() -> None:
            store: Any = {
                "memory": lambda: stores.MemoryStore(),
                "file": lambda: stores.FileStore(place),
                "sqlite": lambda: stores.SqliteStore(place),
                "redis": lambda: RedisStore(url, namespace=f"{tmp_path.name}-{place.name}"),
            }[kind]()
            model: dict[int, tuple[int, int | None]] = {}
            async with store:
                for operation, group, value in steps:
                    await _step(store, model, operation, group, value)
                for group in range(3):
                    expected = model.get(group)
                    assert await store.load(group) == (None if expected is None else expected[0])

        trio.run(main)

    check()


async def _step(
    store: Any, model: dict[int, tuple[int, int | None]], operation: str, group: int, value: int
) -> None:
    if operation == "save":
        await store.save(group, value)
        model[group] = (value, None)
    elif operation == "save_record":
        stored = model.get(group, (0, None))[1]
        if stored is not None and stored > value:
            with pytest.raises(trio_persist.StaleOwner):
                await store.save_record(group, stores.StateRecord(value, token=value))
        else:
            await store.save_record(group, stores.StateRecord(value, token=value))
            model[group] = (value, value)
    elif operation == "delete":
        await store.delete(group)
        model.pop(group, None)
    else:
        expected = model.get(group)
        assert await store.load(group) == (None if expected is None else expected[0])


@pytest.mark.parametrize(
    ("make_store", "error", "message"),
    [
        (lambda: stores.MemoryStore(max_bytes=True), TypeError, "max_bytes must be an int"),
        (lambda: stores.MemoryStore(max_bytes=100), ValueError, "at least 1024"),
        (lambda: stores.MemoryStore(namespace=""), ValueError, "1 to 200 printable"),
        (lambda: stores.MemoryStore(namespace=b"ns"), TypeError, "namespace must be a str"),
        (lambda: stores.FileStore(b"/states"), TypeError, "directory must be a str or a path"),
        (lambda: stores.SqliteStore(b"states.db"), TypeError, "path must be a str or a path"),
        (lambda: stores.SqliteStore("file:x?mode=ro"), ValueError, "must name a database file"),
        (lambda: stores.SqliteStore("x.db", timeout="5"), TypeError, "number of seconds"),
        (lambda: stores.SqliteStore("x.db", timeout=-1), ValueError, "between 0 and 1e6"),
    ],
)
def test_options_are_checked_where_they_are_given(
    make_store: Callable[[], Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        make_store()


async def test_a_sealed_record_over_the_records_limits_is_refused(
    tmp_path: pathlib.Path,
) -> None:
    # Sealed by hand, past what StateRecord accepts: a store never returns it.
    codec = StateCodec("trio-persist")
    data = await codec.seal(group_digest("g"), codec.encode(1, "w"), applied=("r" * 300,))
    (tmp_path / f"{group_digest('g')}.state").write_bytes(data)
    with pytest.raises(trio_persist.CorruptResult, match="holds a malformed record"):
        await stores.FileStore(tmp_path).load("g")
