"""`RedisStore` on real Redis servers: fencing across clients and processes, restarts
with and without persistence, a stalled server, and persists in two processes
(docs/stores.md, "On Redis"). What every store does is in test_stores.py, which
runs against this store too; the Cluster's share is in test_redis_cluster.py.

The real clock and real servers; every wait is bounded.
"""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from typing import Any

import coredis
import pytest
import trio
import trio.testing

import trio_persist
from fault_proxy import FaultProxy
from redis_server import RedisServer
from trio_persist._grouping import group_digest
from trio_persist.redis import RedisBackend, RedisStore
from trio_persist.stores import StateRecord
from virtual_helpers import killed_after


def restart(server: RedisServer) -> None:
    """Kill *server* (SIGKILL: no shutdown save) and start it again on its port."""
    assert server.process is not None
    server.process.send_signal(signal.SIGKILL)
    server.process.wait()
    server.process = None
    server.start()


# -- keys and fencing -----------------------------------------------------------------


async def test_each_group_is_one_hash_holding_the_sealed_record_and_its_token(
    redis_url: str, namespace: str
) -> None:
    async with (
        RedisStore(redis_url, namespace=namespace) as store,
        coredis.Redis.from_url(redis_url) as raw,
    ):
        await store.save_record(("cart", "ann"), StateRecord(["dune"], token=42))
        key = store.key_of(("cart", "ann"))
        assert key == f"{namespace}:state:{{{group_digest(('cart', 'ann'))}}}"
        fields = await raw.hgetall(key)
        assert set(fields) == {b"data", b"token"}
        assert fields[b"token"] == b"42"
        assert b"dune" in fields[b"data"]  # JSON, sealed: readable, checked for damage


async def test_a_stale_owner_on_another_client_is_refused_and_counted(
    redis_url: str, namespace: str
) -> None:
    async with (
        RedisStore(redis_url, namespace=namespace) as new_owner,
        RedisStore(redis_url, namespace=namespace) as old_owner,
    ):
        await old_owner.save_record("account", StateRecord(1, token=3))
        await new_owner.save_record("account", StateRecord(2, token=4))
        with pytest.raises(trio_persist.StaleOwner, match=r"newer owner \(token 4\)"):
            await old_owner.save_record("account", StateRecord(99, token=3))
        assert await new_owner.load_record("account") == StateRecord(2, token=4)
        assert old_owner.statistics().fenced == 1


async def test_tokens_are_compared_as_numbers_up_to_the_largest_a_record_carries(
    redis_url: str, namespace: str
) -> None:
    async with RedisStore(redis_url, namespace=namespace) as store:
        await store.save_record("g", StateRecord("a", token=2**63 - 1))
        for lower in (2**63 - 2, 2**53 + 1, 10**18, 9, 0):
            with pytest.raises(trio_persist.StaleOwner):
                await store.save_record("g", StateRecord("b", token=lower))
        await store.save_record("g", StateRecord("c", token=2**63 - 1))
        assert await store.load("g") == "c"


async def test_a_foreign_value_under_a_groups_key_is_refused_not_overwritten(
    redis_url: str, namespace: str
) -> None:
    async with (
        RedisStore(redis_url, namespace=namespace) as store,
        coredis.Redis.from_url(redis_url) as raw,
    ):
        await raw.set(store.key_of("g"), "not a hash")
        for call in (store.load("g"), store.save("g", 1)):
            with pytest.raises(trio_persist.CorruptResult, match="foreign value"):
                await call
        await raw.delete([store.key_of("g")])
        await raw.hset(store.key_of("g"), {"data": "x", "token": "many"})
        with pytest.raises(trio_persist.CorruptResult, match="stored token is not a number"):
            await store.save_record("g", StateRecord(1, token=1))
        with pytest.raises(trio_persist.CorruptResult):
            await store.load("g")  # "x" is not a sealed record
        assert await raw.hget(store.key_of("g"), "token") == b"many"


async def test_a_record_over_max_bytes_is_refused_without_being_read(
    redis_url: str, namespace: str
) -> None:
    async with RedisStore(redis_url, namespace=namespace) as store:
        await store.save("g", "x" * 5000)
    async with RedisStore(redis_url, namespace=namespace, max_bytes=4096) as small:
        with pytest.raises(trio_persist.CorruptResult, match="more than this store's max_bytes"):
            await small.load("g")
        assert small.statistics().bytes_loaded == 0


# -- the connection: opening, bounds, faults -----------------------------------------


async def test_a_store_used_before_it_is_entered_says_so(redis_url: str) -> None:
    store = RedisStore(redis_url)
    with pytest.raises(trio_persist.BackendUnavailable, match="enter it first"):
        await store.load("g")
    assert repr(store).endswith(" closed>")


async def test_an_unreachable_server_fails_at_entering_within_the_timeout() -> None:
    from redis_server import free_port

    store = RedisStore(f"redis://127.0.0.1:{free_port()}/0", timeout=0.5)
    with trio.fail_after(20), pytest.raises(trio_persist.BackendUnavailable, match="connecting"):
        async with store:
            pass  # pragma: no cover - refused before the block runs
    assert repr(store).endswith(" closed>")


@pytest.mark.parametrize(
    ("url", "error", "message"),
    [
        ("http://h/0", ValueError, "must be a redis://"),
        ("redis://user:pa/ss@h:6379/0", ValueError, "percent-encode"),
        (6379, TypeError, "a Redis URL or a coredis client, got int"),
    ],
)
def test_the_url_or_client_is_checked_where_it_is_given(
    url: Any, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        RedisStore(url)


def test_the_repr_and_messages_never_show_the_password() -> None:
    store = RedisStore("redis://user:secret@127.0.0.1:1/0?password=other")
    assert "secret" not in repr(store)
    assert "other" not in repr(store)
    assert repr(store).startswith("<trio_persist.redis.RedisStore('redis://user:***@")
    with pytest.raises(ValueError, match="must be a redis://") as refused:
        RedisStore("http://user:secret@h/0")
    assert "secret" not in str(refused.value)


@pytest.mark.parametrize("timeout", [0, -1, float("nan"), True])
def test_the_timeout_is_a_positive_number_of_seconds(timeout: Any) -> None:
    with pytest.raises((TypeError, ValueError), match="timeout must be"):
        RedisStore("redis://127.0.0.1:1/0", timeout=timeout)


async def test_a_stalled_server_fails_saves_and_loads_within_the_timeout_then_recovers(
    redis_server: RedisServer, namespace: str
) -> None:
    proxy = FaultProxy(redis_server.port)
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(proxy.serve)
            async with RedisStore(proxy.url, namespace=namespace, timeout=0.5) as store:
                await store.save("g", "before")
                proxy.stall()
                with pytest.raises(trio_persist.BackendUnavailable, match="did not answer in time"):
                    await store.save("g", "during")
                with pytest.raises(trio_persist.BackendUnavailable, match="did not answer in time"):
                    await store.load("g")
                proxy.resume()
                proxy.cut()  # the timed-out answers are still on the old connections
                await store.save("g", "after")
                assert await store.load("g") == "after"
                assert store.statistics().failures == 2
            nursery.cancel_scope.cancel()


async def test_a_save_cancelled_once_sent_completes_then_sees_the_cancel(
    redis_server: RedisServer, namespace: str
) -> None:
    # A save that reached Redis cannot be taken back: it runs to its answer
    # (within the timeout), and the cancellation comes at the next checkpoint.
    proxy = FaultProxy(redis_server.port)
    steps = []
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            await nursery.start(proxy.serve)
            async with RedisStore(proxy.url, namespace=namespace, timeout=20) as store:
                await store.save("g", "old")
                proxy.stall()
                with trio.CancelScope() as scope:
                    nursery.start_soon(_cancel_then_resume, scope, proxy)
                    await store.save("g", "new")  # stalled on its way when cancelled
                    steps.append("returned")
                    await trio.lowlevel.checkpoint()
                    steps.append("not reached")  # pragma: no cover
                assert await store.load("g") == "new"
            nursery.cancel_scope.cancel()
    assert steps == ["returned"]


async def _cancel_then_resume(scope: trio.CancelScope, proxy: FaultProxy) -> None:
    await trio.testing.wait_all_tasks_blocked()
    scope.cancel()
    proxy.resume()


@pytest.mark.parametrize("last", ["first", "second"])
async def test_persists_in_different_tasks_share_one_store_whichever_closes_last(
    redis_url: str, namespace: str, last: str
) -> None:
    store = RedisStore(redis_url, namespace=namespace)

    async def add(total: int, amount: int) -> int:
        return total + amount

    async def serve(group: str, linger: trio.Event) -> None:
        async with trio_persist.open_persist(add, store=store) as persist:
            await persist.ask(group, 1, default=int)
            await linger.wait()

    first, second = trio.Event(), trio.Event()
    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(serve, "a", first)
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(serve, "b", second)
            await trio.testing.wait_all_tasks_blocked()
            assert repr(store).endswith(" open>")
            (second if last == "first" else first).set()
            await trio.testing.wait_all_tasks_blocked()
            (first if last == "first" else second).set()
    assert repr(store).endswith(" closed>")
    async with store:
        assert [await store.load(g) for g in "ab"] == [1, 1]


async def test_one_client_serves_a_store_and_a_backend_in_one_persist(
    redis_url: str, namespace: str
) -> None:
    async def add(total: int, amount: int) -> int:
        return total + amount

    client = coredis.Redis.from_url(redis_url)
    store = RedisStore(client, namespace=namespace)
    backend = RedisBackend(client, namespace=namespace, heartbeat=None)
    with trio.fail_after(30):
        for expected in (3, 6):
            async with trio_persist.open_persist(add, store=store, backend=backend) as persist:
                assert await persist.ask("account", 3, default=int) == expected


# -- restarts ---------------------------------------------------------------------------


async def test_records_and_tokens_survive_redis_killed_and_restarted_with_append_only_files(
    tmp_path: Path, namespace: str
) -> None:
    server = RedisServer(data_dir=tmp_path)  # appendonly yes, appendfsync always
    server.start()
    try:
        with trio.fail_after(30):
            async with RedisStore(server.url, namespace=namespace, timeout=5) as store:
                await store.save_record("g", StateRecord({"n": 7}, token=7, applied=("r7",)))
                restart(server)
                with pytest.raises(trio_persist.StaleOwner):
                    await store.save_record("g", StateRecord({"n": 3}, token=3))
                assert await store.load_record("g") == StateRecord(
                    {"n": 7}, token=7, applied=("r7",)
                )
    finally:
        server.stop()


async def test_redis_restarted_empty_forgets_the_records_and_their_tokens(
    namespace: str,
) -> None:
    # What the deployment must prevent (docs/stores.md): without persistence a
    # restart loses every state, and nothing is left to fence a stale owner.
    server = RedisServer()
    server.start()
    try:
        with trio.fail_after(30):
            async with RedisStore(server.url, namespace=namespace, timeout=5) as store:
                await store.save_record("g", StateRecord("new owner", token=7))
                restart(server)
                assert await store.load_record("g") is None
                await store.save_record("g", StateRecord("stale owner", token=3))
                assert await store.load("g") == "stale owner"
    finally:
        server.stop()


# -- persists in processes ------------------------------------------------------------------

CHILD = """
import sys, trio, trio_persist
from trio_persist._grouping import group_digest
from trio_persist.redis import RedisBackend, RedisStore

async def add(total, amount):
    return total + amount

async def main():
    url, namespace, amount, loop = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    store = RedisStore(url, namespace=namespace)
    async with trio_persist.open_persist(add, store=store, durable=True) as persist:
        print(await persist.ask("account", amount, default=int), flush=True)
        while loop == "loop":
            print(await persist.ask("account", amount, default=int), flush=True)

trio.run(main)
"""


async def test_a_persist_in_a_second_process_asks_from_the_state_the_first_saved(
    redis_url: str, namespace: str
) -> None:
    with trio.fail_after(60):
        for amount, total in ((5, b"5"), (7, b"12"), (1, b"13")):
            done = await trio.run_process(
                [sys.executable, "-c", CHILD, redis_url, namespace, str(amount), "once"],
                capture_stdout=True,
            )
            assert done.stdout.strip() == total


async def test_a_durable_worker_killed_at_any_moment_lost_no_acknowledged_change(
    redis_url: str, namespace: str
) -> None:
    acknowledged = await killed_after([CHILD, redis_url, namespace, "1", "loop"])
    async with RedisStore(redis_url, namespace=namespace) as store:
        saved = await store.load("account")
    # Every reply was saved before it was printed: at most the one being
    # answered when the child died is saved and not acknowledged.
    assert saved is not None
    assert acknowledged <= saved
