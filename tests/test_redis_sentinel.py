"""The Redis backend behind Sentinel: a primary client from coredis's Sentinel,
deduplication through it, and a failover (the primary killed, its replica
promoted) after which tokens keep growing and calls succeed again; a
`RedisStore` through the same client keeps its records and fencing across it."""

from __future__ import annotations

import logging
import signal
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
from coredis import Sentinel
from coredis.connection import TCPLocation

import trio_persist
from redis_helpers import Recorder, eventually, open_pair
from redis_server import RedisSentinel
from trio_persist.redis import RedisBackend, RedisStore, fencing_token
from trio_persist.stores import StateRecord


@pytest.fixture
def sentinel(tmp_path: Path) -> Iterator[RedisSentinel]:
    servers = RedisSentinel(tmp_path)
    servers.start()
    try:
        yield servers
    finally:
        servers.stop()


class Counter:
    """A worker's device: its state counts its requests."""

    async def resolve(self, state: Any, request: Any) -> Any:
        return {"n": state["n"] + 1}


def watching(servers: RedisSentinel) -> Sentinel[bytes]:
    """A Sentinel client, configured the way coredis documents it (enter it first)."""
    return Sentinel([TCPLocation("127.0.0.1", servers.port)], stream_timeout=1)


async def test_two_processes_behind_sentinel_share_one_execution(
    sentinel: RedisSentinel, namespace: str
) -> None:
    device = Recorder()
    with trio.fail_after(30):
        async with watching(sentinel) as watcher:
            first = RedisBackend(watcher.primary_for("primary"), namespace=namespace)
            second = RedisBackend(watcher.primary_for("primary"), namespace=namespace)
            async with open_pair(first, second, device) as pair:
                await pair.lead()
                await pair.follow(callers=3)
                device.release.set()
    assert pair.got == ["done"] * 4
    assert device.calls == 1


async def test_after_a_failover_calls_succeed_and_tokens_keep_growing(
    sentinel: RedisSentinel, namespace: str
) -> None:
    tokens: list[int | None] = []

    async def device(base: Any, request: Any) -> Any:
        tokens.append(fencing_token())
        return "ok"

    with trio.fail_after(60):
        async with (
            watching(sentinel) as watcher,
            trio_persist.open_persist(
                device,
                backend=RedisBackend(
                    watcher.primary_for("primary"), namespace=namespace, timeout=1, lease_ttl=1
                ),
            ) as persist,
        ):
            assert await persist.resolve("base", "k") == "ok"
            assert sentinel.primary.process is not None
            sentinel.primary.process.send_signal(signal.SIGKILL)
            sentinel.primary.process.wait()
            sentinel.primary.process = None

            answered: list[Any] = []

            async def attempt() -> bool:
                try:
                    answered.append(await persist.resolve("base", "k"))
                except trio_persist.BackendUnavailable:
                    return False  # not promoted yet: a clear error, in time
                return True

            while not await attempt():  # noqa: ASYNC110 - retrying a call, not polling a flag
                await trio.sleep(0.5)
            await eventually(lambda: answered == ["ok"])
    first, second = tokens
    assert first is not None
    assert second is not None
    assert second > first  # the promoted replica issues tokens above the old primary's


async def test_a_redis_store_behind_sentinel_keeps_records_and_fencing_across_a_failover(
    sentinel: RedisSentinel, namespace: str
) -> None:
    with trio.fail_after(60):
        async with watching(sentinel) as watcher:
            primary = watcher.primary_for("primary")
            async with RedisStore(primary, namespace=namespace, timeout=1) as store:
                await store.save_record("g", StateRecord("new owner", token=7))
                # Replication is asynchronous: wait until the replica has the record.
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", UserWarning)  # coredis prefers a helper
                    while await primary.wait(1, 500) < 1:  # the replica may be syncing
                        pass
                assert sentinel.primary.process is not None
                sentinel.primary.process.send_signal(signal.SIGKILL)
                sentinel.primary.process.wait()
                sentinel.primary.process = None

                async def stale_save() -> bool:
                    try:
                        await store.save_record("g", StateRecord("stale owner", token=3))
                    except trio_persist.BackendUnavailable:
                        return False  # not promoted yet: a clear error, in time
                    return True  # pragma: no cover - the failure this test looks for

                with pytest.raises(trio_persist.StaleOwner):
                    while not await stale_save():  # noqa: ASYNC110 - retrying a call
                        await trio.sleep(0.5)
                assert await store.load("g") == "new owner"


async def test_a_quiet_inbox_behind_sentinel_never_times_out_its_blocking_move(
    sentinel: RedisSentinel, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The client's stream timeout (1 s) bounds the blocking move too: it waits
    # on the server at most half of it, so a quiet inbox never drops its
    # connection on a read timeout (four times in 5 s before).
    caplog.set_level(logging.DEBUG, "trio_persist")
    with trio.fail_after(60):
        async with watching(sentinel) as watcher:
            backend = RedisBackend(
                watcher.primary_for("primary"), namespace=namespace, workers="cluster"
            )
            async with trio_persist.open_persist(Counter(), backend=backend) as persist:
                assert await persist.ask("g", {}, default=lambda: {"n": 0}) == {"n": 1}
                await trio.sleep(3)
    failed = [r for r in caplog.records if "taking from the inbox failed" in r.getMessage()]
    assert failed == []
