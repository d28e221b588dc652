"""A separate process for the cycle tests with static workers: it owns some groups' STATIC workers.

    python scripted_node.py URL NAMESPACE GROUPS

Like cycle_node.py, but its workers are static (identical routed resolves join
one execution) and its device, `Scripted`, follows a small script in the request:

* ``{"op": "gate", "then": R}``: wait for the test to open the gate, then do R;
* ``{"op": "ask", "group": G, "req": R}``: ask G's worker R;
* ``{"op": "resolve", "group": G, "req": R, "spawn": bool}``: resolve G with R;
* anything else: ``{"done": True}``.
"""

from __future__ import annotations

import functools
import os
import sys
from typing import Any

import coredis
import trio

import trio_persist
from cycle_node import backend, pass_gate


class Scripted:
    def __init__(self) -> None:
        self.persist: trio_persist.Persist[Any, Any, Any] | None = None
        self.gate: Any = None

    def group(self, base: Any, request: Any) -> Any:
        return base

    async def resolve(self, state: Any, request: Any) -> Any:
        assert self.persist is not None
        reply = await self._run(state, request)
        # Where it ran: at the group's worker (its state), or directly on a base.
        return reply | {"ran": "on-base" if isinstance(state, str) else "at-worker"}

    async def _run(self, state: Any, request: Any) -> Any:
        assert self.persist is not None
        op = request.get("op")
        if op == "gate":
            await self.gate()
            return await self._run(state, request["then"])
        if op == "ask":
            reply = await self.persist.ask(request["group"], request["req"], default=dict)
            return {"ok": reply}
        if op == "resolve":
            reply = await self.persist.resolve(
                request["group"], request["req"], spawn_worker=bool(request.get("spawn"))
            )
            return {"ok": reply}
        return {"done": True}


def open_scripted(url: str, namespace: str, control: Any, **options: Any) -> Any:
    device = Scripted()
    device.gate = functools.partial(pass_gate, control, namespace)
    options = {"worker_timeout": 600, "static_worker": True} | options
    persist = trio_persist.open_persist(device, backend=backend(url, namespace), **options)
    return device, persist


async def main(url: str, namespace: str, groups: str, *flags: str) -> None:
    async with coredis.Redis.from_url(url) as control:
        options = {"allow_infinite": True} if "allow_infinite" in flags else {}
        device, opening = open_scripted(url, namespace, control, **options)
        async with opening as persist:
            device.persist = persist
            for group in groups.split(","):
                await persist.ask(group, {"op": "done"}, default=dict)
            await control.rpush(f"{namespace}:ready", [str(os.getpid())])
            await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main, *sys.argv[1:])
