"""Cycles of asks and resolves across processes: refused at once, as in one process.

Groups are owned by real processes (tests/cycle_node.py) and by this one; each
worker's request ``{"then": [group, ...]}`` asks the next group with the rest,
or ``{"via": {group: next}}`` resolves the next group with the same request
(`cycle_node.Chained`). A request routed to another process carries the
digests of the groups waiting for it, and the names of the workers among them
(docs/redis.md), so a cycle raises `InfiniteRecursion` where it closes, be it
by a request sent or by a call joining a flight on its way, and every caller
up the chain gets it.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import coredis
import pytest
import trio
import trio.testing

import trio_persist
from cycle_node import Chained, activate, backend, pass_gate
from trio_persist._backend import CHAIN_LIMIT
from trio_persist._grouping import group_digest

NODE = str(Path(__file__).with_name("cycle_node.py"))
# Much less than the callers would otherwise wait: the cycle waits for ever.
WITHIN = 30.0


@asynccontextmanager
async def nodes(
    url: str, namespace: str, *owned: list[str], allow_infinite: bool = False
) -> AsyncIterator[tuple[Any, trio_persist.Persist[Any, Any, Any]]]:
    """A control client, a process owning the groups of each of *owned* but the
    first, and a persist here owning those of the first (each persist with
    *allow_infinite*)."""
    async with coredis.Redis.from_url(url) as control, trio.open_nursery() as nursery:
        processes = []
        try:
            for groups in owned[1:]:
                command = [sys.executable, NODE, url, namespace, ",".join(groups)]
                command += ["allow_infinite"] if allow_infinite else []
                run = functools.partial(trio.run_process, command, check=False)
                processes.append(await nursery.start(run))
            for _ in owned[1:]:
                with trio.fail_after(WITHIN):
                    assert await control.blpop([f"{namespace}:ready"], timeout=WITHIN)
            device = Chained()
            async with trio_persist.open_persist(
                device,
                backend=backend(url, namespace),
                worker_timeout=600,
                allow_infinite=allow_infinite,
            ) as persist:
                device.persist = persist
                device.gate = functools.partial(pass_gate, control, namespace)
                await activate(persist, owned[0])
                yield control, persist
        finally:
            for process in processes:
                process.kill()


async def ask(
    persist: trio_persist.Persist[Any, Any, Any],
    group: str,
    *then: str,
    resolve: bool = False,
    **request: Any,
) -> int:
    """Ask *group*'s worker ``{"then": then, "resolve": resolve}``, or *request*."""
    with trio.fail_after(WITHIN):
        request = request or {"then": list(then), "resolve": resolve}
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


async def resolve(
    persist: trio_persist.Persist[Any, Any, Any], group: str, request: dict[str, Any]
) -> int:
    with trio.fail_after(WITHIN):
        reply = await persist.resolve(group, request)
    return int(reply["depth"])


async def wait_for(read: Callable[[], int], value: int) -> None:
    """Until ``read()`` reaches *value* (a count of this process's persist)."""
    with trio.fail_after(WITHIN):
        while read() < value:  # noqa: ASYNC110 - a count moved by traffic from Redis
            await trio.sleep(0.01)


async def open_gate(control: Any, namespace: str) -> None:
    """Wait until a device waits at the gate (`cycle_node.pass_gate`)."""
    with trio.fail_after(WITHIN):
        assert await control.blpop([f"{namespace}:at-gate"], timeout=WITHIN)


async def test_a_cycle_of_resolves_closing_by_joining_a_flight_on_its_way_raises(
    redis_url: str, namespace: str
) -> None:
    # f resolves h there, through a flight here standing in for h's worker; h
    # resolves g here, and g resolves h with the same request: it would join
    # that flight, which waits for h's worker, which waits for g.
    cycle = {"via": {"f": "h", "h": "g", "g": "h"}}
    async with nodes(redis_url, namespace, ["f", "g"], ["h"]) as (_, persist):
        with pytest.raises(trio_persist.InfiniteRecursion, match="waiting for this call"):
            await ask(persist, "f", **cycle)
        assert await ask(persist, "f", via={"f": "h", "h": "g"}) == 2  # all serve on


async def test_only_the_call_closing_the_cycle_is_refused_and_the_flight_answers_its_callers(
    redis_url: str, namespace: str
) -> None:
    # g catches the refusal of its join: h's worker, the flight here and f are answered.
    cycle = {"via": {"f": "h", "h": "g", "g": "h"}, "catch": True}
    async with nodes(redis_url, namespace, ["f", "g"], ["h"]) as (_, persist):
        assert await ask(persist, "f", **cycle) == 2


async def test_a_cycle_of_resolves_closing_by_queueing_behind_a_flight_on_its_way_raises(
    redis_url: str, namespace: str
) -> None:
    # As above, but g's request differs from f's: it would queue behind the flight.
    async with nodes(redis_url, namespace, ["f", "g"], ["h"]) as (_, persist):
        with pytest.raises(trio_persist.InfiniteRecursion, match="waiting for this call"):
            await ask(persist, "f", "h", "g", "h", resolve=True)
        assert await ask(persist, "f", "h", "g", resolve=True) == 2


async def test_a_join_of_a_flight_waiting_behind_the_cycle_at_a_worker_elsewhere_raises(
    redis_url: str, namespace: str
) -> None:
    # f asks h there (h waits at the gate); a resolve of h from here is routed
    # by a flight, and waits at h's worker behind f's ask; then h resolves g
    # here, and g resolves h with that resolve's request: it would join the
    # flight, which waits for h's worker, which serves one request at a time.
    request = {"then": [], "resolve": True}
    async with nodes(redis_url, namespace, ["f", "g"], ["h"]) as (control, persist):
        async with trio.open_nursery() as nursery:
            routed = persist.backend.statistics().routed_out

            async def cycle() -> None:
                with pytest.raises(trio_persist.InfiniteRecursion):
                    await ask(persist, "f", "ask:h", "gate", "g", "h", resolve=True)

            async def behind() -> None:
                assert await resolve(persist, "h", request) == 0  # answered once h is free

            nursery.start_soon(cycle)
            await open_gate(control, namespace)
            nursery.start_soon(behind)
            await wait_for(lambda: persist.backend.statistics().routed_out, routed + 2)
            await control.lpush(f"{namespace}:gate", ["open"])


async def test_a_join_from_a_chain_that_does_not_name_the_flights_worker_joins(
    redis_url: str, namespace: str
) -> None:
    # A resolve of h from here waits at h's worker (at the gate); m's worker
    # there resolves g here, which resolves h with the same request: its chain
    # names m and g (and group h is waited for), not h's worker: it joins.
    request = {"then": ["gate"], "resolve": True}
    async with nodes(redis_url, namespace, ["g"], ["h", "m"]) as (control, persist):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(resolve, persist, "h", request)
            await open_gate(control, namespace)
            joined = persist.statistics().deduplicated

            async def joining() -> None:
                assert await ask(persist, "m", "g", "h", "gate", resolve=True) == 2

            nursery.start_soon(joining)
            await wait_for(lambda: persist.statistics().deduplicated, joined + 1)
            await control.lpush(f"{namespace}:gate", ["open"])
        assert persist.statistics().deduplicated == joined + 1


async def test_a_call_of_the_same_group_with_another_request_queues_behind_the_flight(
    redis_url: str, namespace: str
) -> None:
    # As above, but g resolves h with another request: it waits its turn, and is answered.
    async with nodes(redis_url, namespace, ["g"], ["h", "m"]) as (control, persist):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(resolve, persist, "h", {"then": ["gate"], "resolve": True})
            await open_gate(control, namespace)
            requests = persist.statistics().requests

            async def queued() -> None:
                assert await ask(persist, "m", "g", "h", resolve=True) == 2

            nursery.start_soon(queued)
            await wait_for(lambda: persist.statistics().requests, requests + 2)
            await trio.testing.wait_all_tasks_blocked()
            await control.lpush(f"{namespace}:gate", ["open"])


async def test_with_allow_infinite_a_cycle_closing_by_a_join_executes_the_call_directly(
    redis_url: str, namespace: str
) -> None:
    # g's resolve of h executes the device here, on its own base, as in one process.
    async with nodes(redis_url, namespace, ["f", "g"], ["h"], allow_infinite=True) as (_, persist):
        assert await ask(persist, "f", "h", "g", "h", resolve=True) == 3
        with pytest.raises(trio_persist.InfiniteRecursion):  # asks never run directly
            await ask(persist, "f", "h", "g", "ask:h", resolve=True)


async def test_with_allow_infinite_a_cycle_closing_by_a_request_sent_is_refused(
    redis_url: str, namespace: str
) -> None:
    # h's resolve of g, which waits for h: its flight is shared (and would
    # linger), so it never runs the device on the base in place of g's worker.
    async with nodes(redis_url, namespace, ["g"], ["h"], allow_infinite=True) as (_, persist):
        with pytest.raises(trio_persist.InfiniteRecursion):
            await ask(persist, "g", "h", "g", resolve=True)


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
    ("field", "chain", "error"),
    [
        ("c", ["0" * 32] * 1_000, "past the bound"),
        ("c", "not a list", "malformed chain"),
        ("c", [{"a": 1}, "x" * 10_000], "malformed chain"),
        ("c", [group_digest("h")], "a cycle of groups across processes"),
        ("cw", ["0" * 32] * 1_000, "past the bound"),  # the workers it names
        ("cw", ["not a lease id"], "malformed chain"),
    ],
)
async def test_a_forged_chain_is_refused_to_its_sender_and_the_owner_serves_on(
    redis_url: str, namespace: str, field: str, chain: Any, error: str
) -> None:
    async with nodes(redis_url, namespace, ["g"], ["h"]) as (control, persist):
        payload = '0::{"ok":true,"codec":"json","value":{"then":[]}}'
        reply = await forge(control, namespace, "h", {field: chain, "p": payload})
        assert reply["k"] == "a"
        assert error in reply["p"]
        assert await ask(persist, "h", "g") == 1
