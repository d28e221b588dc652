"""Routed asks on the path between a caller and its group's owner: what each
fault of that path costs the caller, and that no fault leaves it waiting.

Two persists on separate backends stand for two processes (each backend is a
node of its own); the owner reaches Redis through tests/fault_proxy.py.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import coredis
import trio

import trio_persist
from fault_proxy import FaultProxy
from redis_helpers import eventually
from redis_server import RedisServer
from trio_persist._codec import Seal, encode_value
from trio_persist._grouping import group_digest
from trio_persist._logging import Throttle
from trio_persist.redis import RedisBackend, RedisStore
from trio_persist.redis._client import open_client
from trio_persist.redis._inbox import PUSH, TAKE, Inbox, inbox_key
from trio_persist.redis._link import Counters, Link

TTL = 6.0  # long enough that a short cut never costs the owner its lease
TIMEOUT = 0.5


class Slow:
    """A counter whose requests may take a while; says when one started."""

    def __init__(self) -> None:
        self.started = trio.Event()

    async def resolve(self, state: Any, request: Any) -> Any:
        if request.get("slow"):
            self.started.set()
            await trio.sleep(request["slow"])
        return {"n": state["n"] + 1}


def fresh() -> dict[str, Any]:
    return {"n": 0}


def persist_at(
    device: Slow, url: str, store_url: str, namespace: str, timeout: float = TIMEOUT
) -> AbstractAsyncContextManager[trio_persist.Persist[Any, Any, Any]]:
    backend = RedisBackend(
        url, namespace=namespace, lease_ttl=TTL, timeout=timeout, workers="cluster", heartbeat=None
    )
    store = RedisStore(store_url, namespace=namespace + ":states", timeout=TIMEOUT)
    return trio_persist.open_persist(
        device, backend=backend, store=store, durable=True, worker_timeout=600
    )


Persist = trio_persist.Persist[Any, Any, Any]


@asynccontextmanager
async def owner_and_caller(
    server: RedisServer, namespace: str, *, proxied: str, caller_timeout: float = TIMEOUT
) -> AsyncIterator[tuple[Slow, FaultProxy, Persist, Persist]]:
    """An owner of group "g" and a caller in another process; *proxied* ("owner" or
    "caller") reaches Redis through the proxy returned."""
    device, proxy, url = Slow(), FaultProxy(server.port), server.url
    owner_url, caller_url = (proxy.url, url) if proxied == "owner" else (url, proxy.url)
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.serve)
        async with (
            persist_at(device, owner_url, url, namespace) as owner,
            persist_at(device, caller_url, url, namespace, caller_timeout) as caller,
        ):
            assert await owner.ask("g", {}, default=fresh) == {"n": 1}
            yield device, proxy, owner, caller
        nursery.cancel_scope.cancel()


async def test_a_reply_the_owner_could_not_send_for_a_moment_still_reaches_its_caller(
    redis_server: RedisServer, namespace: str
) -> None:
    async with owner_and_caller(redis_server, namespace, proxied="owner") as (
        device,
        proxy,
        _,
        caller,
    ):

        async def cut_while_the_reply_leaves() -> None:
            await device.started.wait()
            proxy.stall()  # the request ends during the stall: its reply is held
            await trio.sleep(1.0 + 2 * TIMEOUT)
            proxy.cut()  # and dropped; the owner keeps its lease (TTL is longer)
            proxy.resume()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(cut_while_the_reply_leaves)
            with trio.fail_after(TTL + TTL / 3 + TIMEOUT + 5):
                assert await caller.ask("g", {"slow": 1.0}) == {"n": 2}
        assert await caller.ask("g", {}) == {"n": 3}  # applied once


async def test_a_caller_cancelled_while_its_request_is_on_its_way_withdraws_it(
    redis_server: RedisServer, namespace: str
) -> None:
    async with owner_and_caller(redis_server, namespace, proxied="caller", caller_timeout=2.0) as (
        device,
        proxy,
        owner,
        caller,
    ):
        assert await caller.ask("g", {}) == {"n": 2}  # it knows the owner now
        proxy.delay = 0.2  # the caller's link: its push lands, its answer is late
        async with trio.open_nursery() as busy:
            busy.start_soon(owner.ask, "g", {"slow": 2.0})  # the worker is busy
            await device.started.wait()
            with trio.move_on_after(0.3):  # after the push landed, before its answer
                await caller.ask("g", {})
                raise AssertionError("answered before the worker was free")
        assert await owner.ask("g", {}) == {"n": 4}  # the cancelled request never ran


async def test_a_forged_request_whose_sender_inbox_is_garbage_costs_the_owner_one_push(
    redis_server: RedisServer, namespace: str
) -> None:
    async with owner_and_caller(redis_server, namespace, proxied="caller") as (_, _, owner, _):
        backend = owner.backend
        assert isinstance(backend, RedisBackend)
        async with coredis.Redis.from_url(redis_server.url) as other_client:
            await other_client.set("{" + namespace + ":n:evil}:inbox", "not a list")
            payload = encode_value(Seal(namespace), "q:forged", {}, 0).decode()
            message = {"k": "q", "id": "forged", "from": "evil", "g": group_digest("g")}
            inbox = "{" + namespace + ":n:" + backend._node + "}:inbox"
            await other_client.lpush(inbox, [json.dumps(message | {"p": payload})])
            with trio.fail_after(10):
                await eventually(lambda: backend.statistics().routed_in == 1)
            await trio.sleep(0.5)  # its reply failed: nothing is tried again
            before = backend.statistics().round_trips
            await trio.sleep(1.0)
            assert backend.statistics().round_trips - before <= 1  # a renewal, at most
        # The owner serves on (the forged request was applied: who writes the namespace asks).
        assert await owner.ask("g", {}) == {"n": 3}


async def test_a_batch_an_owner_took_expires_as_its_inbox_does_if_the_owner_dies(
    redis_server: RedisServer, namespace: str
) -> None:
    inbox, taken = "{" + namespace + ":n:gone}:inbox", "{" + namespace + ":n:gone}:taken"
    async with coredis.Redis.from_url(redis_server.url) as client:
        await client.lpush(inbox, ["first", "second"])
        assert await client.eval(TAKE, [inbox, taken], [64, 5000]) == [b"first", b"second"]
        # The owner dies before its next take: nothing it held stays in Redis for ever.
        assert 0 < await client.pttl(taken) <= 5000


async def test_a_message_moved_while_blocked_expires_if_its_owner_dies_before_dispatching_it(
    redis_server: RedisServer, namespace: str
) -> None:
    # The owner's link stalls as the moved message is dispatched, then the
    # process is gone (cancelled here, as a SIGKILL would): the expiry went
    # out with the move, so nothing stays in Redis for ever.
    proxy = FaultProxy(redis_server.port)
    link = Link("Redis", 2.0, Counters())
    inbox = Inbox(link, namespace, "owner", 30.0, Throttle())
    got: list[dict[str, Any]] = []

    def on_request(message: dict[str, Any]) -> None:
        got.append(message)
        proxy.stall()  # the crash comes before anything else leaves

    with trio.fail_after(30):
        async with trio.open_nursery() as outer:
            await outer.start(proxy.serve)
            async with (
                open_client(proxy.url, 2.0) as client,
                link.attached(client, {"take": TAKE, "push": PUSH}),
                trio.open_nursery() as nursery,
            ):
                await nursery.start(inbox.serve, on_request)
                await eventually(lambda: inbox.direct.usable() is not None)
                await trio.sleep(0.3)  # in its blocking move now
                async with coredis.Redis.from_url(redis_server.url) as control:
                    await control.lpush(inbox_key(namespace, "owner"), ['{"k":"q","id":"1"}'])
                    await eventually(lambda: bool(got))
                    await trio.sleep(0.1)
                nursery.cancel_scope.cancel()
            proxy.resume()
            outer.cancel_scope.cancel()
    async with coredis.Redis.from_url(redis_server.url) as control:
        assert 0 < await control.pttl(inbox.taken) <= 30_000


async def test_routed_asks_go_on_while_the_owners_link_drops_every_150_ms(
    redis_server: RedisServer, namespace: str
) -> None:
    # A connection that broke while idle is found broken only when used: the
    # owner's inbox tries again at once, not after a pause that grows with
    # every drop (answered 15 of 150 in 30 s before).
    async with owner_and_caller(redis_server, namespace, proxied="owner", caller_timeout=2.0) as (
        _,
        proxy,
        _owner,
        caller,
    ):
        answered = 0

        async def ask() -> None:
            nonlocal answered
            await caller.ask("g", {})
            answered += 1

        async def cutter() -> None:
            while True:
                await trio.sleep(0.15)
                proxy.cut()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(cutter)
            with trio.move_on_after(30):
                async with trio.open_nursery() as asks:
                    for _ in range(150):
                        asks.start_soon(ask)
                        await trio.sleep(0.01)
            nursery.cancel_scope.cancel()
        assert answered == 150
