"""The cluster view's heartbeats: what a process writes to Redis about itself.

A record lives three heartbeats and lists the busiest groups, named by digests
(or by the device's ``label`` hook), never by what a request holds; it lives in
the namespace's own keys; ``heartbeat=None`` writes none.
"""

from __future__ import annotations

from typing import Any

import coredis
import trio

import trio_persist
from redis_helpers import Recorder, eventually
from redis_server import RedisServer
from trio_persist.redis import RedisBackend
from trio_persist.redis._cluster import INDEX, record_key

SECRET = "sk-live-0123456789abcdef"


async def test_the_heartbeat_record_lives_three_heartbeats_and_lists_the_busiest_fifty(
    redis_url: str, namespace: str
) -> None:
    device = Recorder()
    backend = RedisBackend(redis_url, namespace=namespace, heartbeat=10)
    with trio.fail_after(20):
        async with (
            trio_persist.open_persist(device, backend=backend) as persist,
            coredis.Redis.from_url(redis_url) as control,
            trio.open_nursery() as nursery,
        ):
            for n in range(60):
                nursery.start_soon(persist.resolve, "base", n)
            await eventually(lambda: backend.statistics().leading == 60)
            await backend._beat(persist)  # reaching in: one heartbeat now
            [node] = await backend.cluster()
            pttl = await control.pttl(record_key(namespace, node.node))
            device.release.set()
    assert len(node.snapshot) == 50
    assert 29_000 < pttl <= 30_000


class Sessions:
    """Groups by the user's session, which holds an API key; no ``label`` hook."""

    def __init__(self) -> None:
        self.release = trio.Event()

    def group(self, base: Any, request: Any) -> Any:
        return ("session", request["user"], request["priv"]["api_key"])

    async def resolve(self, base: Any, request: Any) -> Any:
        await self.release.wait()
        return "ok"


async def test_the_heartbeat_carries_nothing_of_a_request_or_a_workers_state(
    redis_url: str, namespace: str
) -> None:
    device = Sessions()
    backend = RedisBackend(redis_url, namespace=namespace, heartbeat=0.1)
    request = {"user": "alice", "priv": {"api_key": SECRET}}
    with trio.fail_after(20):
        async with (
            trio_persist.open_persist(device, backend=backend) as persist,
            coredis.Redis.from_url(redis_url) as control,
            trio.open_nursery() as nursery,
        ):
            await persist.start_worker({"token": SECRET}, group=("worker", SECRET))
            nursery.start_soon(persist.resolve, "base", request)
            await eventually(lambda: backend.statistics().leading == 1)
            [node] = await backend.cluster()
            while not (node.flights and node.workers):  # the next heartbeat shows both
                await trio.sleep(0.05)
                [node] = await backend.cluster()
            raw = await control.get(record_key(namespace, node.node))
            device.release.set()
    assert SECRET.encode() not in raw
    assert b"alice" not in raw
    assert all(len(name) == 32 for name in (*node.flights, *node.workers))  # digests


async def test_everything_a_process_writes_lives_in_its_namespace(namespace: str) -> None:
    # With Redis ACLs a client can be confined to its namespace's keys; only the
    # index of namespace names (for a view of all of them) is shared.
    server = RedisServer()
    server.start()
    try:
        device = Recorder()
        device.release.set()
        backend = RedisBackend(server.url, namespace=namespace, heartbeat=0.1)
        with trio.fail_after(20):
            async with (
                trio_persist.open_persist(device, backend=backend, linger=60) as persist,
                coredis.Redis.from_url(server.url, decode_responses=True) as control,
            ):
                await persist.resolve("base", "r")
                while not await backend.cluster():  # noqa: ASYNC110 - Redis, not a flag
                    await trio.sleep(0.01)
                keys = set(await control.keys("*"))
                index = await control.smembers(INDEX)
        assert keys - {INDEX}
        assert all(key.startswith("{" + namespace + ":") for key in keys - {INDEX})
        assert index == {namespace}  # a name, nothing of any record
    finally:
        server.stop()


async def test_with_heartbeat_none_a_process_writes_no_record(
    redis_url: str, namespace: str
) -> None:
    device = Recorder()
    device.release.set()
    silent = RedisBackend(redis_url, namespace=namespace, heartbeat=None)
    watcher = RedisBackend(redis_url, namespace=namespace)
    with trio.fail_after(20):
        async with (
            trio_persist.open_persist(device, backend=silent) as persist,
            trio_persist.open_persist(device, backend=watcher),
        ):
            assert await persist.resolve("base", "r") == "done"  # deduplication still works
            assert [node.node for node in await watcher.cluster()] == [watcher._node]
