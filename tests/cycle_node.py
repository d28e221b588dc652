"""A separate process for the cross-process cycle tests: it owns some groups' workers.

    python cycle_node.py URL NAMESPACE GROUPS

Opens a persist with ``workers="cluster"`` whose device is `Chained`, activates
each of GROUPS (comma-separated) so that it owns their workers, pushes its pid
to ``NAMESPACE:ready`` and serves what is routed to it until killed.
"""

from __future__ import annotations

import os
import sys
from typing import Any

import coredis
import trio

import trio_persist
from trio_persist.redis import RedisBackend

TTL = 2.0  # the lease TTL and the step timeout, in the nodes and the test


class Chained:
    """A device whose request ``{"then": [group, ...]}`` asks the first group with
    the rest (resolves it with ``"resolve": True``), and replies with how deep the
    chain went from here. A group is its base: ``resolve(group, ...)`` is served by
    the group's worker."""

    def __init__(self) -> None:
        self.persist: trio_persist.Persist[Any, Any, Any] | None = None

    async def resolve(self, state: Any, request: Any) -> Any:
        then = request["then"]
        if not then:
            return {"depth": 0}
        assert self.persist is not None
        ask = self.persist.resolve if request.get("resolve") else self._ask
        reply = await ask(then[0], request | {"then": then[1:]})
        return {"depth": reply["depth"] + 1}

    async def _ask(self, group: str, request: Any) -> Any:
        assert self.persist is not None
        return await self.persist.ask(group, request, default=dict)

    def group(self, base: Any, request: Any) -> Any:
        return base


def backend(url: str, namespace: str) -> RedisBackend:
    return RedisBackend(url, namespace=namespace, lease_ttl=TTL, timeout=TTL, workers="cluster")


async def main(url: str, namespace: str, groups: str) -> None:
    device = Chained()
    async with (
        coredis.Redis.from_url(url) as control,
        trio_persist.open_persist(
            device, backend=backend(url, namespace), worker_timeout=600
        ) as persist,
    ):
        device.persist = persist
        for group in groups.split(","):
            await persist.ask(group, {"then": []}, default=dict)
        await control.rpush(f"{namespace}:ready", [str(os.getpid())])
        await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main, *sys.argv[1:4])
