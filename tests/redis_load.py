"""A load process for the soak test: callers looping over shared requests, every
call and every execution logged as JSON lines.

    python redis_load.py URL NAMESPACE SECONDS KEYS CALLERS LOG

A request is ``k<n>:<epoch>`` with a 100 ms epoch, so processes meet on the same
requests at the same time. The device sleeps 20 ms and returns its fencing
token and pid; each execution logs its start, and its end or cancellation.
"""

from __future__ import annotations

import json
import os
import random
import sys
import time
from typing import Any, TextIO

import trio

import trio_persist
from trio_persist.redis import RedisBackend, fencing_token


async def main(
    url: str, namespace: str, seconds: float, keys: int, callers: int, log: TextIO
) -> None:
    pid = os.getpid()

    def write(**record: Any) -> None:
        log.write(json.dumps({"pid": pid, **record}) + "\n")
        log.flush()

    async def device(base: Any, request: str) -> Any:
        token = fencing_token()
        write(kind="exec", phase="start", request=request, token=token, at=time.time())
        try:
            await trio.sleep(0.02)
        except BaseException:
            write(kind="exec", phase="cancelled", request=request, token=token, at=time.time())
            raise
        write(kind="exec", phase="end", request=request, token=token, at=time.time())
        return {"token": token, "pid": pid}

    backend = RedisBackend(url, namespace=namespace, lease_ttl=0.6, timeout=0.5)
    rng = random.Random(pid)
    deadline = time.time() + seconds
    async with trio_persist.open_persist(device, backend=backend) as persist:

        async def caller() -> None:
            while time.time() < deadline:
                request = f"k{rng.randrange(keys)}:{int(time.time() * 10)}"
                start = time.time()
                try:
                    value = await persist.resolve("base", request)
                    outcome: Any = {"value": value}
                except trio_persist.PersistError as exc:
                    outcome = {"error": type(exc).__name__}
                write(kind="call", request=request, start=start, end=time.time(), **outcome)

        async with trio.open_nursery() as nursery:
            for _ in range(callers):
                nursery.start_soon(caller)
    write(kind="done", at=time.time())


if __name__ == "__main__":
    url, namespace, seconds, keys, callers, path = sys.argv[1:7]
    with open(path, "w") as out:
        trio.run(main, url, namespace, float(seconds), int(keys), int(callers), out)
