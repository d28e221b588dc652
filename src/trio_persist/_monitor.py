"""The monitor socket: newline-delimited JSON frames of a persist, read-only.

`serve_monitor` listens on a Unix socket (mode 0600) and sends each client a
frame as soon as it connects, then one every ``interval`` seconds. Whatever a
client sends is read and thrown away: nothing a client does can change the
persist or crash the server. A client that stops reading is dropped once a
frame has waited ``interval * 5`` seconds to go out; the others never notice.

A frame (version 1) is one JSON object per line::

    {"version": 1, "time": 12.5, "wall": 1764355200.0, "device": "Ledger",
     "statistics": {"requests": 10, "executions": 3, ...},
     "groups_total": 2,
     "snapshot": [{"group": "...", "kind": "worker", "listeners": 1, "queued": 0,
                   "served": 4, "started": 1.0, "last_active": 12.0, "busy": true}]}

``time`` is the persist's `trio.current_time` (the clock of ``started`` and
``last_active``), ``wall`` the Unix time the frame was built. ``snapshot``
holds at most ``max_groups`` groups, the busiest first; ``groups_total``
says how many there are.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import socket as stdlib_socket
import stat
import time
from typing import Any

import trio

from ._stats import GroupSnapshot, Observed

__all__ = ["FRAME_VERSION", "build_frame", "serve_monitor"]

FRAME_VERSION = 1


def _activity(record: GroupSnapshot) -> tuple[int, int, float]:
    return (-(record.listeners + record.queued), -int(record.busy), -record.last_active)


def build_frame(persist: Observed, *, max_groups: int = 200) -> dict[str, Any]:
    """Build one monitor frame (a JSON-ready dict) from *persist* as it is now."""
    records = persist.snapshot()
    busiest = sorted(records, key=_activity)[:max_groups]
    return {
        "version": FRAME_VERSION,
        "time": trio.current_time(),
        "wall": time.time(),
        "device": persist.name,
        "statistics": persist.statistics().to_json(),
        "groups_total": len(records),
        "snapshot": [record.to_json() for record in busiest],
    }


def encode_frame(frame: dict[str, Any]) -> bytes:
    return json.dumps(frame, separators=(",", ":"), default=repr).encode() + b"\n"


def _claim_path(path: str) -> None:
    """Refuse a path that is taken or that we cannot create, with a clear error."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        pass
    else:
        what = "a socket (is another monitor running?)" if stat.S_ISSOCK(mode) else "a file"
        raise FileExistsError(
            errno.EEXIST, f"the monitor socket path is taken: {path} is already {what}"
        )
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            errno.ENOENT, f"cannot create the monitor socket: no directory {directory}"
        )
    if not os.access(directory, os.W_OK | os.X_OK):
        raise PermissionError(
            errno.EACCES, f"cannot create the monitor socket: {directory} is not writable"
        )


async def serve_monitor(
    persist: Observed,
    path: str | os.PathLike[str],
    *,
    interval: float = 1.0,
    max_groups: int = 200,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve *persist*'s frames on a Unix socket at *path* until cancelled.

    Start it with ``await nursery.start(persist.serve_monitor, path)``: it
    returns once the socket accepts connections. The socket is removed when
    the server ends.

    Raises:
        FileExistsError: *path* exists already.
        FileNotFoundError, PermissionError: its directory is missing or not
            writable.
    """
    if interval <= 0:
        raise ValueError(f"interval must be > 0 seconds, got {interval!r}")
    path = os.fspath(path)
    _claim_path(path)
    raw = stdlib_socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    # Bound here, synchronously: a local bind is quick, and Trio's own bind would
    # hop to a thread (which also lets a virtual clock jump in tests).
    old_umask = os.umask(0o177)  # born 0600: no window in which others could connect
    try:
        raw.bind(path)
    except BaseException:
        raw.close()
        raise
    finally:
        os.umask(old_umask)
    sock = trio.socket.from_stdlib_socket(raw)
    try:
        await trio.lowlevel.checkpoint()
        os.chmod(path, 0o600)
        sock.listen(64)
        listener = trio.SocketListener(sock)
        task_status.started(path)

        async def client(stream: trio.SocketStream) -> None:
            await _serve_client(persist, stream, interval, max_groups)

        await trio.serve_listeners(client, [listener])
    finally:
        sock.close()
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


async def _serve_client(
    persist: Observed, stream: trio.SocketStream, interval: float, max_groups: int
) -> None:
    async with stream, trio.open_nursery() as nursery:
        nursery.start_soon(_discard_input, stream, nursery.cancel_scope)
        try:
            while True:
                frame = encode_frame(build_frame(persist, max_groups=max_groups))
                with trio.move_on_after(interval * 5) as slow:
                    await stream.send_all(frame)
                if slow.cancelled_caught:
                    break  # a client that does not read is dropped
                await trio.sleep(interval)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        nursery.cancel_scope.cancel()


async def _discard_input(stream: trio.SocketStream, scope: trio.CancelScope) -> None:
    # Read-only: anything a client sends is read and dropped. Its end of input
    # is no reason to stop sending (it may still read); a broken connection is.
    try:
        while await stream.receive_some(4096):
            pass
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        scope.cancel()
