"""Cycles of asks across processes: refused at once, as in one process.

Groups are owned by real processes (tests/cycle_node.py) and by this one; each
worker's request ``{"then": [group, ...]}`` asks the next group with the rest
(`cycle_node.Chained`). A request routed to another process carries the
digests of the groups waiting for it (docs/redis.md), so a cycle raises
`InfiniteRecursion` where it closes, and every caller up the chain gets it.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import coredis
import pytest
import trio

import trio_persist
from cycle_node import Chained, backend
from trio_persist._backend import CHAIN_LIMIT
from trio_persist._grouping import group_digest

NODE = str(Path(__file__).with_name("cycle_node.py"))
# Much less than the callers would otherwise wait: the cycle waits for ever.
WITHIN = 30.0


@asynccontextmanager
async def nodes(
    url: str, namespace: str, *owned: list[str]
) -> AsyncIterator[tuple[Any, trio_persist.Persist[Any, Any, Any]]]:
    """A control client, a process owning the groups of each of *owned* but the
    first, and a persist here owning those of the first."""
    async with coredis.Redis.from_url(url) as control, trio.open_nursery() as nursery:
        processes = []
        try:
            for groups in owned[1:]:
                command = [sys.executable, NODE, url, namespace, ",".join(groups)]
                run = functools.partial(trio.run_process, command, check=False)
                processes.append(await nursery.start(run))
            for _ in owned[1:]:
                with trio.fail_after(WITHIN):
                    assert await control.blpop([f"{namespace}:ready"], timeout=WITHIN)
            device = Chained()
            async with trio_persist.open_persist(
                device, backend=backend(url, namespace), worker_timeout=600
            ) as persist:
                device.persist = persist
                for group in owned[0]:
                    await persist.ask(group, {"then": []}, default=dict)
                yield control, persist
        finally:
            for process in processes:
                process.kill()


async def ask(
    persist: trio_persist.Persist[Any, Any, Any], group: str, *then: str, resolve: bool = False
) -> int:
    with trio.fail_after(WITHIN):
        request = {"then": list(then), "resolve": resolve}
        reply = await persist.ask(group, request, default=dict)
    return int(reply["depth"])


async def test_a_cycle_through_two_processes_raises_infinite_recursion_and_both_serve_on(
    redis_url: str, namespace: str
) -> None:
    async with nodes(redis_url, namespace, ["g"], ["h"]) as (_, persist):
        with pytest.raises(trio_persist.InfiniteRecursion, match="a cycle of groups across"):
            await ask(persist, "g", "h", "g")
        assert await ask(persist, "g", "h") == 1  # both workers serve on
        assert await ask(persist, "h", "g") == 1
        assert persist.backend.statistics().owned == 1


async def test_a_cycle_of_resolves_through_two_processes_raises_infinite_recursion(
    redis_url: str, namespace: str
) -> None:
    # Each resolve is routed to the group's worker by a flight standing in for it.
    async with nodes(redis_url, namespace, ["g"], ["h"]) as (_, persist):
        with pytest.raises(trio_persist.InfiniteRecursion, match="a cycle of groups across"):
            await ask(persist, "g", "h", "g", resolve=True)
        assert await ask(persist, "g", "h", resolve=True) == 1


async def test_a_cycle_closing_at_a_group_waiting_in_its_own_process_is_refused_there(
    redis_url: str, namespace: str
) -> None:
    # f asks g here, g asks h there, h asks f: f's worker waits for g, here.
    async with nodes(redis_url, namespace, ["f", "g"], ["h"]) as (_, persist):
        with pytest.raises(trio_persist.InfiniteRecursion):
            await ask(persist, "f", "g", "h", "f")
        assert await ask(persist, "f", "g", "h") == 2


async def test_a_chain_through_three_processes_without_a_cycle_is_answered(
    redis_url: str, namespace: str
) -> None:
    async with nodes(redis_url, namespace, ["g", "f"], ["h"], ["k"]) as (_, persist):
        assert await ask(persist, "g", "h", "k", "f") == 3  # back here, to another group
        with pytest.raises(trio_persist.InfiniteRecursion):
            await ask(persist, "g", "h", "k", "g")


async def test_a_chain_as_deep_as_the_bound_is_answered_and_a_deeper_one_refused(
    redis_url: str, namespace: str
) -> None:
    groups = [f"d{index}" for index in range(CHAIN_LIMIT + 2)]
    async with nodes(redis_url, namespace, groups[::2], groups[1::2]) as (_, persist):
        assert await ask(persist, *groups[: CHAIN_LIMIT + 1]) == CHAIN_LIMIT
        with pytest.raises(trio_persist.InfiniteRecursion, match=f"bound of {CHAIN_LIMIT}"):
            await ask(persist, *groups)
        assert await ask(persist, "d1", "d2") == 1


async def forge(control: Any, namespace: str, group: str, fields: dict[str, Any]) -> Any:
    """Push a request for *group* to its owner's inbox as no process would (its
    reply goes to a node of nobody's); return the reply."""
    lease = (await control.get("{" + namespace + ":w:" + group_digest(group) + "}:lease")).decode()
    inbox = "{" + namespace + ":n:" + lease.split(":", 2)[2] + "}:inbox"
    request_id = fields.get("id", "forged")
    message = {"k": "q", "id": request_id, "from": "forger", "g": group_digest(group)} | fields
    await control.lpush(inbox, [json.dumps(message)])
    with trio.fail_after(WITHIN):
        _, raw = await control.blpop(["{" + namespace + ":n:forger}:inbox"], timeout=WITHIN)
    return json.loads(raw)


@pytest.mark.parametrize(
    ("chain", "error"),
    [
        (["0" * 32] * 1_000, "past the bound"),
        ("not a list", "malformed chain"),
        ([{"a": 1}, "x" * 10_000], "malformed chain"),
        ([group_digest("h")], "a cycle of groups across processes"),
    ],
)
async def test_a_forged_chain_is_refused_to_its_sender_and_the_owner_serves_on(
    redis_url: str, namespace: str, chain: Any, error: str
) -> None:
    async with nodes(redis_url, namespace, ["g"], ["h"]) as (control, persist):
        payload = '0::{"ok":true,"codec":"json","value":{"then":[]}}'
        reply = await forge(control, namespace, "h", {"c": chain, "p": payload})
        assert reply["k"] == "a"
        assert error in reply["p"]
        assert await ask(persist, "h", "g") == 1
