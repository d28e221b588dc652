"""What the Redis tests share: a controllable device, a bounded polling wait, a
pair of persists, one persist leading a call (the ``leading_call`` fixture) and
the lease protocol on its own (`open_leases`)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import attrs
import coredis
import trio

import trio_persist
from trio_persist._codec import Seal
from trio_persist.redis import RedisBackend
from trio_persist.redis._client import open_client
from trio_persist.redis._lease import LEASE_SCRIPTS, Leases
from trio_persist.redis._link import Counters, Link
from trio_persist.redis._rounds import Call
from trio_persist.redis._scripts import Keys
from trio_persist.redis._subscriber import Subscriber, Watch

SIGNING_KEY = b"a test key, 32 bytes long at least"  # os.urandom(32) in real life


async def eventually(predicate: Callable[[], bool]) -> None:
    """Wait (on the real clock, in small steps) until *predicate* holds.

    Callers bound it with ``trio.fail_after``.
    """
    while True:
        if predicate():
            return
        await trio.sleep(0.01)


class Recorder:
    """A device that counts executions and can be held open."""

    def __init__(self, result: Any = "done") -> None:
        self.calls = 0
        self.release = trio.Event()
        self.result = result

    async def __call__(self, base: Any, request: Any) -> Any:
        self.calls += 1
        await self.release.wait()
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


def key_for(persist: trio_persist.Persist, request: Any, base: Any = "base") -> str:
    """The backend's key of the execution ``persist.resolve(base, request)`` would lead."""
    key = persist.backend.key_of(persist.group(base, request), request, True)
    assert isinstance(key, str)
    return key


def names_for(persist: trio_persist.Persist, request: Any, base: Any = "base") -> Keys:
    """The Redis keys of the execution ``persist.resolve(base, request)`` would lead."""
    return Keys.of(persist.backend.namespace, key_for(persist, request, base))


@attrs.define
class Pair:
    """Two persists on one namespace, standing for two processes: ``a`` leads, ``b`` follows.

    Each caller's outcome (its value, or the exception it raised) lands in ``got``.
    """

    a: trio_persist.Persist
    b: trio_persist.Persist
    nursery: trio.Nursery
    got: list[Any] = attrs.Factory(list)
    lead_scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    by_persist: dict[int, list[Any]] = attrs.Factory(dict)

    @property
    def leader_and_follower_got(self) -> tuple[Any, Any]:
        """The first outcome in ``a`` and in ``b`` (they may come in either order:
        the follower can hear the publication before the leader reads its commit)."""
        return self.by_persist[id(self.a)][0], self.by_persist[id(self.b)][0]

    @property
    def leader(self) -> RedisBackend:
        return self.a.backend  # type: ignore[no-any-return]

    @property
    def follower(self) -> RedisBackend:
        return self.b.backend  # type: ignore[no-any-return]

    async def _call(self, persist: trio_persist.Persist, request: Any) -> None:
        try:
            outcome = await persist.resolve("base", request)
        except Exception as exc:
            outcome = exc
        self.got.append(outcome)
        self.by_persist.setdefault(id(persist), []).append(outcome)

    async def lead(self, request: Any = "r") -> None:
        """Start one caller in ``a`` (cancelled by ``lead_scope``) and wait until it leads."""

        async def lead() -> None:
            with self.lead_scope:
                await self._call(self.a, request)

        self.nursery.start_soon(lead)
        await eventually(lambda: self.leader.statistics().leading == 1)

    async def follow(self, request: Any = "r", callers: int = 1) -> None:
        """Start *callers* in ``b`` and wait until its flight follows."""
        for _ in range(callers):
            self.nursery.start_soon(self._call, self.b, request)
        await eventually(lambda: self.follower.statistics().following == 1)


@contextlib.asynccontextmanager
async def open_pair(
    leader: RedisBackend, follower: RedisBackend, device: Any, other_device: Any = None
) -> AsyncIterator[Pair]:
    """Open both persists and a nursery for their callers; the block waits for them all."""
    async with (
        trio_persist.open_persist(device, backend=leader) as a,
        trio_persist.open_persist(other_device or device, backend=follower) as b,
        trio.open_nursery() as nursery,
    ):
        yield Pair(a, b, nursery)


FAKE_LEASE_ID = "cd" * 16


async def keep_lease(control: Any, keys: Keys, value: str, ttl: float) -> None:
    """Renew the lease *value* every third of *ttl*, as its leader would, while it holds."""
    while await control.get(keys.lease) == value.encode():
        await control.pexpire(keys.lease, int(ttl * 1000))
        await trio.sleep(ttl / 3)


@contextlib.asynccontextmanager
async def fake_leader(control: Any, keys: Keys, token: int, ttl: float) -> AsyncIterator[str]:
    """Another process leading *keys* with *token* while the block runs (its lease,
    renewed as a live leader's is); yields the lease's value."""
    value = f"{FAKE_LEASE_ID}:{token}"
    await control.set(keys.lease, value, px=int(ttl * 1000))
    async with trio.open_nursery() as nursery:
        nursery.start_soon(keep_lease, control, keys, value, ttl)
        yield value
        nursery.cancel_scope.cancel()


@attrs.define
class Leading:
    """A persist on Redis whose callers lead one request, and a client to meddle with
    its keys as another process would. Each caller's outcome lands in ``got``."""

    persist: trio_persist.Persist
    backend: RedisBackend
    namespace: str
    key: str
    keys: Keys
    control: Any
    nursery: trio.Nursery
    got: list[Any] = attrs.Factory(list)

    async def take_over(self) -> int:
        """Give the lease to another process (a token above ours), which renews it
        until it commits (`commit_as`); return its token."""
        token = int(time.time() * 1e6) + 10**9
        value = f"{FAKE_LEASE_ID}:{token}"
        await self.control.set(self.keys.lease, value, px=int(self.backend.lease_ttl * 1000))
        self.nursery.start_soon(keep_lease, self.control, self.keys, value, self.backend.lease_ttl)
        return token

    async def commit_as(self, token: int, value: Any) -> None:
        """Commit *value* as the leader with *token* would: store, drop, publish."""
        payload = Seal(self.namespace).wrap(
            self.keys.result, token, {"ok": True, "codec": "json", "value": value}
        )
        await self.control.set(self.keys.result, payload)
        await self.control.delete([self.keys.lease])
        await self.control.publish(self.keys.channel, payload)


@contextlib.asynccontextmanager
async def open_leading(
    url: str,
    namespace: str,
    device: Any,
    *,
    request: Any = "r",
    callers: int = 1,
    **options: Any,
) -> AsyncIterator[Leading]:
    """Open a persist on *url*, start *callers* of ``resolve("base", request)`` and wait
    until they lead; the block waits for them all when it ends."""
    backend = RedisBackend(url, namespace=namespace, **options)
    async with (
        trio_persist.open_persist(device, backend=backend) as persist,
        coredis.Redis.from_url(url) as control,
        trio.open_nursery() as nursery,
    ):
        key = key_for(persist, request)
        keys = Keys.of(namespace, key)
        leading = Leading(persist, backend, namespace, key, keys, control, nursery)

        async def call() -> None:
            try:
                leading.got.append(await persist.resolve("base", request))
            except Exception as exc:
                leading.got.append(exc)

        for _ in range(callers):
            nursery.start_soon(call)
        await eventually(lambda: backend.statistics().leading == 1)
        yield leading


@contextlib.asynccontextmanager
async def open_leases(
    url: str, namespace: str, *, lease_ttl: float = 30.0, step_timeout: float = 5.0
) -> AsyncIterator[Leases]:
    """The lease protocol alone on *url* (no persist): its own client, subscriber and
    renewals, for tests that take its steps one at a time."""
    link = Link(f"Redis at {url}", step_timeout, Counters())
    leases = Leases(
        link, Seal(namespace), Subscriber(namespace, step_timeout), link.counters, lease_ttl
    )
    async with (
        open_client(url, step_timeout) as client,
        link.attached(client, LEASE_SCRIPTS),
        trio.open_nursery() as nursery,
    ):
        await nursery.start(leases.serve)
        yield leases
        nursery.cancel_scope.cancel()


def call_for(leases: Leases, key: str, vanished_token: int = 0) -> Call:
    """A bare call on *key* (no device): enough to take protocol steps with."""
    return Call(Keys.of(leases.seal.namespace, key), Watch(key), vanished_token=vanished_token)
