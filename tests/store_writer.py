"""A process that saves states into a `FileStore`, for tests that kill or constrain it.

    python store_writer.py DIRECTORY stage STAGE   # save "old", then stop inside saving "new"
    python store_writer.py DIRECTORY loop          # save big states one after another
    python store_writer.py DIRECTORY limited BYTES # save under a file size limit
    python store_writer.py DIRECTORY full          # save into a (small) file system
    python store_writer.py DIRECTORY readonly      # try a directory this process cannot write

``stage`` prints STAGE when the save of ``new`` reaches it and then waits for
its end (SIGKILL): ``write`` (half the temporary file written), ``fsync``
(written, not synced), ``replace`` (synced, not renamed) or ``renamed``
(renamed, the directory not synced). ``loop`` prints ``saved N`` after each
save. The others print one JSON line of what happened.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import sys
import time
from typing import Any

import trio

from trio_persist import stores

GROUP = ("cart", "alice")
SIZE = 4_000_000


def big(n: int) -> dict[str, Any]:
    """State number *n*: large, and telling which it is from any part of it."""
    return {"n": n, "blob": str(n % 10) * SIZE}


def announce(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def stop_at(stage: str) -> None:
    """Make the next save stop at *stage* until the process is killed."""
    real_write, real_fsync, real_replace = os.write, os.fsync, os.replace

    def halt() -> None:
        announce(stage)
        time.sleep(3600)

    def write(fd: int, data: Any) -> int:
        if stage == "write" and len(data) > SIZE:
            real_write(fd, data[: len(data) // 2])
            halt()
        return real_write(fd, data)

    def fsync(fd: int) -> None:
        if stage == "fsync":
            halt()
        real_fsync(fd)

    def replace(source: Any, target: Any) -> None:
        if stage == "replace":
            halt()
        real_replace(source, target)
        if stage == "renamed":
            halt()

    os.write, os.fsync, os.replace = write, fsync, replace  # type: ignore[assignment]


async def stage(directory: str, where: str) -> None:
    store = stores.FileStore(directory)
    await store.save(GROUP, big(1))
    announce("old saved")
    stop_at(where)
    await store.save(GROUP, big(2))


async def loop(directory: str) -> None:
    store = stores.FileStore(directory)
    for n in range(1, 10_000):
        await store.save(GROUP, big(n))
        announce(f"saved {n}")


async def limited(directory: str, limit: int | None) -> None:
    """Save a small state, then a big one that cannot be written (a file size
    limit, or a disk too small for it)."""
    store = stores.FileStore(directory)
    await store.save(GROUP, {"n": 0})
    if limit is not None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails with EFBIG instead
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    try:
        await store.save(GROUP, big(1))
        error: dict[str, Any] = {}
    except OSError as exc:
        error = {"type": type(exc).__name__, "errno": exc.errno, "message": str(exc)}
    left = sorted(os.listdir(directory))
    announce(json.dumps({"error": error, "loaded": await store.load(GROUP), "files": left}))


async def readonly(directory: str) -> None:
    store = stores.FileStore(directory)
    outcome: dict[str, Any] = {}
    for name, call in (("open", store.__aenter__), ("save", lambda: store.save(GROUP, 1))):
        try:
            await call()
            outcome[name] = "ok"
        except OSError as exc:
            outcome[name] = f"{type(exc).__name__}: {exc}"
    outcome["loaded"] = await store.load(GROUP)
    announce(json.dumps(outcome))


def main() -> None:
    directory, mode, *rest = sys.argv[1:]
    if mode == "stage":
        trio.run(stage, directory, rest[0])
    elif mode == "loop":
        trio.run(loop, directory)
    elif mode == "limited":
        trio.run(limited, directory, int(rest[0]))
    elif mode == "full":
        trio.run(limited, directory, None)
    else:
        trio.run(readonly, directory)


if __name__ == "__main__":
    main()
