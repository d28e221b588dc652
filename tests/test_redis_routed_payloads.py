"""How large a routed request or reply may be: one message is bounded in bytes.

A request or reply between processes (``RedisBackend(workers="cluster")``)
holds at most `PAYLOAD_LIMIT` bytes encoded (docs/redis.md): a larger request
is refused at its caller before anything is sent, a larger reply fails its
caller after the owner applied the request, and nothing else in flight notices.
Two persists on separate backends stand for two processes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import coredis
import pytest
import trio

import trio_persist
from redis_helpers import eventually
from trio_persist._grouping import group_digest
from trio_persist.redis import RedisBackend
from trio_persist.redis._inbox import PAYLOAD_LIMIT

Persist = trio_persist.Persist[Any, Any, Any]
WITHIN = 30.0  # each test's bound: never reached unless something is wrong


class Sized:
    """A counter whose request may carry padding, ask for a padded reply, or wait
    for the test's gate; a group is its base (``resolve(group, ...)`` goes to it)."""

    def __init__(self) -> None:
        self.gate = trio.Event()
        self.pad = "x"  # what a padded reply is made of

    async def resolve(self, state: Any, request: Any) -> Any:
        if request.get("wait"):
            await self.gate.wait()
        return {"n": state["n"] + 1, "pad": self.pad * request.get("reply", 0)}

    def group(self, base: Any, request: Any) -> Any:
        return base


@asynccontextmanager
async def two_processes(url: str, namespace: str) -> AsyncIterator[tuple[Sized, Persist, Persist]]:
    """The owner of group "g" (its device) and another process."""
    device = Sized()

    def backend() -> RedisBackend:
        return RedisBackend(url, namespace=namespace, workers="cluster", heartbeat=None)

    with trio.fail_after(WITHIN):  # the whole test
        async with (
            trio_persist.open_persist(device, backend=backend()) as owner,
            trio_persist.open_persist(device, backend=backend()) as other,
        ):
            await owner.ask("g", {}, default=lambda: {"n": 0})
            yield device, owner, other


async def test_a_request_over_the_bound_is_refused_at_its_caller_and_nothing_else_is_hurt(
    redis_url: str, namespace: str
) -> None:
    async with (
        two_processes(redis_url, namespace) as (device, owner, other),
        trio.open_nursery() as nursery,
    ):
        replies: list[Any] = []

        async def waiting() -> None:
            replies.append(await other.ask("g", {"wait": True}))

        nursery.start_soon(waiting)  # in flight at the owner meanwhile
        await eventually(lambda: owner.backend.statistics().routed_in == 1)
        large = {"pad": "x" * PAYLOAD_LIMIT}
        with pytest.raises(ValueError, match="more than a request between processes"):
            await other.ask("g", large)
        with pytest.raises(ValueError, match="more than a request between processes"):
            await other.resolve("g", large)
        assert owner.backend.statistics().routed_in == 1  # neither was sent
        device.gate.set()
        await eventually(lambda: bool(replies))
        assert replies[0]["n"] == 2
        assert (await other.ask("g", {"pad": "x" * (PAYLOAD_LIMIT // 2)}))["n"] == 3


async def test_a_reply_over_the_bound_fails_its_caller_once_the_request_is_applied(
    redis_url: str, namespace: str
) -> None:
    async with two_processes(redis_url, namespace) as (_, _, other):
        with pytest.raises(trio_persist.RemoteError, match="more than a reply between") as caught:
            await other.ask("g", {"reply": PAYLOAD_LIMIT})
        assert caught.value.type_name == "ValueError"
        assert (await other.ask("g", {}))["n"] == 3  # it was applied; the owner serves on


async def test_a_message_over_the_bound_in_an_inbox_is_dropped_unread_and_the_owner_serves_on(
    redis_url: str, namespace: str
) -> None:
    async with (
        two_processes(redis_url, namespace) as (_, owner, other),
        coredis.Redis.from_url(redis_url) as control,
    ):
        lease = await control.get("{" + namespace + ":w:" + group_digest("g") + "}:lease")
        inbox = "{" + namespace + ":n:" + lease.decode().split(":", 2)[2] + "}:inbox"
        forged = {"k": "q", "id": "forged", "from": "forger", "g": group_digest("g")}
        await control.lpush(inbox, [json.dumps(forged | {"p": "x" * 2 * PAYLOAD_LIMIT})])
        assert (await other.ask("g", {}))["n"] == 2
        assert owner.backend.statistics().routed_in == 1  # the forged one never reached it


@pytest.mark.parametrize("char", ['"', "\\", "\u00e9", "\x01"])
async def test_a_request_is_measured_as_sent_so_one_escaped_over_the_bound_is_refused_not_lost(
    redis_url: str, namespace: str, char: str
) -> None:
    # Under the bound as raw text, over it once escaped inside its message: the
    # owner would drop the message unread and the caller wait for ever.
    pad = char * ((PAYLOAD_LIMIT - 4096) // len(json.dumps(char)[1:-1]))
    async with two_processes(redis_url, namespace) as (_, owner, other):
        with pytest.raises(ValueError, match="more than a request between processes"):
            await other.ask("g", {"pad": pad})
        assert owner.backend.statistics().routed_in == 0  # nothing was sent


async def test_a_reply_is_measured_as_sent_so_one_escaped_over_the_bound_fails_its_caller(
    redis_url: str, namespace: str
) -> None:
    async with two_processes(redis_url, namespace) as (device, _, other):
        device.pad = '"'
        with pytest.raises(trio_persist.RemoteError, match="more than a reply between"):
            await other.ask("g", {"reply": (PAYLOAD_LIMIT - 4096) // 2})
        assert (await other.ask("g", {}))["n"] == 3  # it was applied; the owner serves on
