"""An owner process for the cluster-worker fault tests.

    python cluster_owner.py URL NAMESPACE LEASE_TTL [DIE_AT [BACKEND_URL [GROUPS]]]

Opens a persist with ``workers="cluster"`` and ``durable=True`` on a shared
`RedisStore` (at URL), activates group ``"g"`` (so it owns it), pushes its pid to
``NAMESPACE:ready`` and serves what is routed to it until killed. With DIE_AT,
it SIGKILLs itself right after saving that count (saved, never answered).
With BACKEND_URL, the backend reaches Redis there (a fault proxy), and the logs
at URL. With GROUPS (the soak), 4 callers also ask random groups of that many
for ever, logging each acknowledged reply (`cluster_helpers.ask_and_log`).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import sys
from typing import Any

import coredis
import trio

import trio_persist
from cluster_helpers import Logged, ask_and_log, fresh
from trio_persist.redis import RedisBackend


async def main(
    url: str,
    namespace: str,
    ttl: float,
    die_at: int,
    backend_url: str,
    groups: int,
) -> None:
    async with coredis.Redis.from_url(url) as control:
        logged = Logged(control, namespace, url, die_at)
        backend = RedisBackend(
            backend_url, namespace=namespace, lease_ttl=ttl, timeout=ttl, workers="cluster"
        )
        async with trio_persist.open_persist(
            logged, backend=backend, store=logged, durable=True, worker_timeout=600
        ) as persist:
            if not groups:
                await persist.ask("g", {"id": f"init-{os.getpid()}"}, default=fresh)
            await control.rpush(f"{namespace}:ready", [str(os.getpid())])
            async with trio.open_nursery() as nursery:
                for caller in range(4 if groups else 0):
                    nursery.start_soon(soak, persist, control, namespace, groups, caller)
                await trio.sleep_forever()


async def soak(persist: Any, control: Any, namespace: str, groups: int, caller: int) -> None:
    for index in itertools.count():
        rid = f"{os.getpid()}-{caller}-{index}"
        with contextlib.suppress(trio_persist.PersistError):
            await ask_and_log(persist, control, namespace, f"s{random.randrange(groups)}", rid)


if __name__ == "__main__":
    die_at = int(sys.argv[4]) if len(sys.argv) > 4 else -1
    backend_url = sys.argv[5] if len(sys.argv) > 5 else sys.argv[1]
    groups = int(sys.argv[6]) if len(sys.argv) > 6 else 0
    trio.run(main, *sys.argv[1:3], float(sys.argv[3]), die_at, backend_url, groups)
