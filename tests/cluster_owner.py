"""An owner process for the cluster-worker fault tests.

    python cluster_owner.py URL NAMESPACE DIRECTORY LEASE_TTL [DIE_AT [BACKEND_URL]]

Opens a persist with ``workers="cluster"`` and ``durable=True`` on a shared
`FileStore`, activates group ``"g"`` (so it owns it), pushes its pid to
``NAMESPACE:ready`` and serves what is routed to it until killed. With DIE_AT,
it SIGKILLs itself right after saving that count (saved, never answered).
With BACKEND_URL, the backend reaches Redis there (a fault proxy), and the logs
at URL.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import coredis
import trio

import trio_persist
from cluster_helpers import Logged, fresh
from trio_persist.redis import RedisBackend


async def main(
    url: str, namespace: str, directory: str, ttl: float, die_at: int, backend_url: str
) -> None:
    async with coredis.Redis.from_url(url) as control:
        logged = Logged(control, namespace, Path(directory), die_at)
        backend = RedisBackend(
            backend_url, namespace=namespace, lease_ttl=ttl, timeout=ttl, workers="cluster"
        )
        async with trio_persist.open_persist(
            logged, backend=backend, store=logged, durable=True, worker_timeout=600
        ) as persist:
            await persist.ask("g", {"id": f"init-{os.getpid()}"}, default=fresh)
            await control.rpush(f"{namespace}:ready", [str(os.getpid())])
            await trio.sleep_forever()


if __name__ == "__main__":
    die_at = int(sys.argv[5]) if len(sys.argv) > 5 else -1
    backend_url = sys.argv[6] if len(sys.argv) > 6 else sys.argv[1]
    trio.run(main, *sys.argv[1:4], float(sys.argv[4]), die_at, backend_url)
