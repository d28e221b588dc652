"""A separate process for the cross-process cycle tests: it owns some groups' workers.

    python cycle_node.py URL NAMESPACE GROUPS [allow_infinite]

Opens a persist with ``workers="cluster"`` whose device is `Chained`, activates
each of GROUPS (comma-separated) so that it owns their workers, pushes its pid
to ``NAMESPACE:ready`` and serves what is routed to it until killed.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import coredis
import trio

import trio_persist
from trio_persist.redis import RedisBackend

TTL = 2.0  # the lease TTL and the step timeout, in the nodes and the test


class Chained:
    """A device whose request ``{"then": [group, ...]}`` asks the first group with
    the rest (resolves it with ``"resolve": True``, unless it is ``"ask:<group>"``),
    and replies with how deep the chain went from here; a ``"gate"`` in the list
    first waits for the test to open the gate (`pass_gate`). A request
    ``{"via": {group: next}}`` resolves the next group of its own, with the same
    request, until a group has none. With ``"catch"``, an `InfiniteRecursion`
    is answered as depth 0. A group is its base: ``resolve(group, ...)`` is
    served by the group's worker, whose state (the last reply: workers advance)
    names it."""

    def __init__(self) -> None:
        self.persist: trio_persist.Persist[Any, Any, Any] | None = None
        self.gate: Callable[[], Awaitable[None]] | None = None

    async def resolve(self, state: Any, request: Any) -> Any:
        group = state if isinstance(state, str) else state["group"]  # (a base: run directly)
        try:
            if "via" in request:
                reply = await self._via(group, request)
            else:
                reply = await self._then(request)
        except trio_persist.InfiniteRecursion:
            if not request.get("catch"):
                raise
            reply = {"depth": 0}
        return reply | {"group": group}

    async def _then(self, request: Any) -> Any:
        then = request["then"]
        if then[:1] == ["gate"]:
            assert self.gate is not None
            await self.gate()
            then = then[1:]
        if not then:
            return {"depth": 0}
        assert self.persist is not None
        group = then[0].removeprefix("ask:")
        resolving = request.get("resolve") and group == then[0]
        ask = self.persist.resolve if resolving else self._ask
        reply = await ask(group, request | {"then": then[1:]})
        return {"depth": reply["depth"] + 1}

    async def _via(self, group: str, request: Any) -> Any:
        assert self.persist is not None
        after = request["via"].get(group)
        if after is None:
            return {"depth": 0}
        reply = await self.persist.resolve(after, request)
        return {"depth": reply["depth"] + 1}

    async def _ask(self, group: str, request: Any) -> Any:
        assert self.persist is not None
        return await self.persist.ask(group, request, default=dict)

    def group(self, base: Any, request: Any) -> Any:
        return base


async def pass_gate(control: Any, namespace: str) -> None:
    """Say the gate is reached (``NAMESPACE:at-gate``), then wait until the test
    opens it (``NAMESPACE:gate``)."""
    await control.rpush(f"{namespace}:at-gate", ["1"])
    assert await control.blpop([f"{namespace}:gate"], timeout=60)


def backend(url: str, namespace: str) -> RedisBackend:
    return RedisBackend(url, namespace=namespace, lease_ttl=TTL, timeout=TTL, workers="cluster")


async def activate(persist: trio_persist.Persist[Any, Any, Any], groups: list[str]) -> None:
    """Own the workers of *groups* here, each state naming its group."""
    for group in groups:
        await persist.ask(group, {"then": []}, default=functools.partial(dict, group=group))


async def main(url: str, namespace: str, groups: str, *options: str) -> None:
    device = Chained()
    async with (
        coredis.Redis.from_url(url) as control,
        trio_persist.open_persist(
            device,
            backend=backend(url, namespace),
            worker_timeout=600,
            allow_infinite="allow_infinite" in options,
        ) as persist,
    ):
        device.persist = persist
        device.gate = functools.partial(pass_gate, control, namespace)
        await activate(persist, groups.split(","))
        await control.rpush(f"{namespace}:ready", [str(os.getpid())])
        await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main, *sys.argv[1:])
