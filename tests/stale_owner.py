"""An owner process whose device logs every execution as it starts.

    python stale_owner.py URL NAMESPACE LEASE_TTL RUNS

Opens a persist with ``workers="cluster"``, not durable and without a store,
activates group ``"g"`` (so it owns it) and serves what is routed to it until
killed. Its device (`Runs`, shared with the test's own process) appends each
execution to the file RUNS before its first checkpoint, with the process and
the token of the worker lease it runs under: a side effect that happened, once
written, whatever cancels the request after. A ``slow`` request pushes the pid
to ``NAMESPACE:started`` and sleeps that many seconds.

Pushes its pid to ``NAMESPACE:ready`` once it owns the group, then
``NAMESPACE:queued`` once the worker holds 3 requests queued behind the one it
serves, then ``NAMESPACE:gone`` once it no longer owns the group.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

import coredis
import trio

import trio_persist
from cluster_helpers import fresh
from redis_helpers import eventually
from trio_persist.redis import RedisBackend


class Runs:
    """A counter device appending every execution it starts to *path*."""

    def __init__(
        self, path: str, backend: RedisBackend, control: Any, namespace: str, *, sleeps: bool = True
    ) -> None:
        self.path = path
        self.sleeps = sleeps  # whether a slow request sleeps here
        self.backend = backend
        self.control = control
        self.namespace = namespace

    def token(self) -> int | None:
        """The token of group "g"'s worker lease here (None: not held)."""
        owned = self.backend._placement.owned.values()  # a test's view
        return next((o.token for o in owned if o.group == "g"), None)

    async def resolve(self, state: Any, request: Any) -> Any:
        entry = {"pid": os.getpid(), "id": request["id"], "token": self.token()}
        with open(self.path, "a") as runs:  # noqa: ASYNC230 - before any checkpoint, on purpose
            runs.write(json.dumps(entry) + "\n")
        if request.get("slow") and self.sleeps:
            await self.control.rpush(f"{self.namespace}:started", [str(os.getpid())])
            await trio.sleep(request["slow"])
        else:
            await trio.lowlevel.checkpoint()
        return {"n": state["n"] + 1, "ids": [*state["ids"], request["id"]]}


def read_runs(path: str) -> list[dict[str, Any]]:
    """The executions logged at *path*, in the order they started."""
    with open(path) as runs:
        return [json.loads(line) for line in runs]


async def main(url: str, namespace: str, ttl: float, path: str) -> None:
    async with coredis.Redis.from_url(url) as control:
        backend = RedisBackend(
            url, namespace=namespace, lease_ttl=ttl, timeout=ttl, workers="cluster"
        )
        device = Runs(path, backend, control, namespace)
        async with trio_persist.open_persist(
            device, backend=backend, worker_timeout=600
        ) as persist:
            await persist.ask("g", {"id": f"init-{os.getpid()}"}, default=fresh)
            await control.rpush(f"{namespace}:ready", [str(os.getpid())])
            await eventually(lambda: any(w.statistics().queued >= 3 for w in persist.workers()))
            await control.rpush(f"{namespace}:queued", [str(os.getpid())])
            await eventually(lambda: not backend.statistics().owned)
            await control.rpush(f"{namespace}:gone", [str(os.getpid())])
            await trio.sleep_forever()


if __name__ == "__main__":
    trio.run(main, sys.argv[1], sys.argv[2], float(sys.argv[3]), sys.argv[4])
