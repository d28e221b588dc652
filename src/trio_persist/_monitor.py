"""The monitor socket: newline-delimited JSON frames of a persist, read-only.

`serve_monitor` listens on a Unix socket (mode 0600) and sends each client a
frame as soon as it connects, then one every ``interval`` seconds. The monitor
must never slow the persist it watches, whoever connects:

* a frame is built at most once per interval and the same bytes go to every
  client, so ten clients cost what one does;
* at most ``max_clients`` are served; one more gets a one-line refusal
  (``{"refused": "..."}``) and is closed;
* whatever a client sends is read and thrown away, at most 4 KiB per client per
  interval (a client sending junk only fills its own socket buffer);
* a client that does not read is dropped once its frames have waited
  ``interval * 5`` seconds unread (or, where the unread backlog cannot be
  seen, once a frame has waited that long to go out); the others never
  notice, and idle clients cannot hold every slot.

The path is claimed under a lock file, ``PATH.lock``, held while serving: two
servers starting on one path at once never replace each other's socket. A
socket file left behind by a killed process is detected (nothing accepts on
it) and replaced; a live one is refused. On exit the server removes the socket
file only if it is still the one it created, then its lock file.

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

import array
import contextlib
import errno
import heapq
import json
import math
import os
import socket as stdlib_socket
import stat
import sys
import time
from typing import Any

import attrs
import trio

from ._grouping import group_digest
from ._stats import GroupSnapshot, Observed
from ._text import safe_repr

__all__ = ["FRAME_VERSION", "build_frame", "serve_monitor"]

FRAME_VERSION = 1

# How much a client has left unread: the socket option on macOS (an ioctl on Linux).
_NWRITE: int | None = getattr(
    stdlib_socket, "SO_NWRITE", 0x1024 if sys.platform == "darwin" else None
)

LOCK_SUFFIX = ".lock"
"""A server holds ``PATH.lock`` while it serves ``PATH`` (and removes it when done)."""


def _activity(record: GroupSnapshot) -> tuple[int, int, float]:
    return (-(record.listeners + record.queued), -int(record.busy), -record.last_active)


def build_frame(
    persist: Observed, *, max_groups: int = 200, leaves_process: bool = False
) -> dict[str, Any]:
    """Build one monitor frame (a JSON-ready dict) from *persist* as it is now.

    With *leaves_process* (a Redis heartbeat, which any client of the server
    can read), groups are named by `group_digest` and labelled only by what
    the device's ``label`` hook returned: nothing of a request goes out.
    """
    records = persist.snapshot()
    # The busiest few of possibly very many groups: O(n log k), not a full sort.
    busiest = heapq.nsmallest(max_groups, records, key=_activity)
    if leaves_process:
        shown = [_outside(record) for record in busiest]
    else:
        shown = [record.to_json() for record in busiest]
    return {
        "version": FRAME_VERSION,
        "time": trio.current_time(),
        "wall": time.time(),
        "device": persist.name,
        "statistics": persist.statistics().to_json(),
        "groups_total": len(records),
        "snapshot": shown,
    }


def _outside(record: GroupSnapshot) -> dict[str, Any]:
    data = record.to_json()
    data["group"] = group_digest(record.group)
    data["label"] = record.label if record.label_from_hook else ""
    return data


def encode_frame(frame: dict[str, Any]) -> bytes:
    return json.dumps(frame, separators=(",", ":"), default=safe_repr).encode() + b"\n"


def _check_directory(path: str) -> None:
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise FileNotFoundError(
            errno.ENOENT, f"cannot create the monitor socket: no directory {directory}"
        )
    if not os.access(directory, os.W_OK | os.X_OK):
        raise PermissionError(
            errno.EACCES, f"cannot create the monitor socket: {directory} is not writable"
        )


def _taken(path: str, why: str) -> FileExistsError:
    return FileExistsError(errno.EEXIST, f"the monitor socket path is taken: {path} {why}")


def _lock(path: str) -> int:
    """Hold ``PATH.lock`` for as long as this server serves *path*; its descriptor.

    Two servers claiming one path at the same moment: one holds the lock, the
    other is refused; so no server ever replaces a socket another one serves.
    """
    import fcntl  # here: the package imports on any platform (Unix sockets need Unix)

    lock_path = path + LOCK_SUFFIX
    while True:
        try:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as exc:
            raise _taken(path, f"(cannot open its lock file {lock_path}: {exc.strerror})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            locked = os.fstat(fd)
            now = os.stat(lock_path)
        except BlockingIOError:
            os.close(fd)
            raise _taken(
                path, "is served by another monitor (is another monitor running?)"
            ) from None
        except FileNotFoundError:  # a server that was leaving removed it: try again
            os.close(fd)
            continue
        except BaseException:
            os.close(fd)
            raise
        if (locked.st_dev, locked.st_ino) == (now.st_dev, now.st_ino):
            return fd
        os.close(fd)  # replaced since we opened it: lock the file that is there now


def _unlock(path: str, fd: int) -> None:
    """Remove the lock file (still held, so nobody can be claiming it) and release it."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path + LOCK_SUFFIX)
    os.close(fd)


def _clear_path(path: str) -> None:
    """With the lock held: refuse a file or a live socket, remove a dead socket."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise _taken(path, "is already a file")
    if _is_alive(path):
        raise _taken(path, "is a live socket (is another monitor running?)")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)  # dead: left by a process that is gone


def _is_alive(path: str) -> bool:
    """Whether something accepts connections on the Unix socket at *path*."""
    probe = stdlib_socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    probe.setblocking(False)
    try:
        probe.connect(path)
    except (ConnectionRefusedError, FileNotFoundError):
        return False
    except OSError:
        return True  # busy (EAGAIN) or not ours to judge: never remove it
    finally:
        probe.close()
    return True


def _check_options(interval: object, max_groups: object, max_clients: object) -> float:
    if isinstance(interval, bool) or not isinstance(interval, (int, float)):
        raise TypeError(f"interval must be a number of seconds, got {type(interval).__name__}")
    if not 0 < interval < math.inf:  # NaN fails this too
        raise ValueError(f"interval must be > 0 seconds and finite, got {interval!r}")
    for name, value in (("max_groups", max_groups), ("max_clients", max_clients)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name} must be a positive int, got {type(value).__name__}")
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value!r}")
    return float(interval)


@attrs.define(eq=False)
class _Frames:
    """The latest frame's bytes, rebuilt at most once per interval for all clients."""

    persist: Observed
    interval: float
    max_groups: int
    clients: int = 0
    data: bytes = b""
    built: float = -math.inf

    def current(self) -> bytes:
        if trio.current_time() >= self.built + self.interval or not self.data:
            self.data = encode_frame(build_frame(self.persist, max_groups=self.max_groups))
            self.built = trio.current_time()
        return self.data

    def next_due(self) -> float:
        return self.built + self.interval


async def serve_monitor(
    persist: Observed,
    path: str | os.PathLike[str],
    *,
    interval: float = 1.0,
    max_groups: int = 200,
    max_clients: int = 64,
    task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve *persist*'s frames on a Unix socket at *path* until cancelled.

    Start it with ``await nursery.start(persist.serve_monitor, path)``: it
    returns once the socket accepts connections. While it serves, it holds
    the lock file ``PATH.lock``, so two servers started on one path at the
    same moment never replace each other's socket: one is refused. The socket
    is removed when the server ends, if it is still the one this server
    created, and the lock file with it.

    Raises:
        TypeError, ValueError: an option is wrong (the message names it).
        FileExistsError: *path* is a file, a socket something accepts on, or
            served by another server (which holds its lock).
        FileNotFoundError, PermissionError: its directory is missing or not
            writable.
    """
    seconds = _check_options(interval, max_groups, max_clients)
    path = os.fspath(path)
    _check_directory(path)
    lock = _lock(path)
    try:
        _clear_path(path)
        sock, created = _bind(path)
        try:
            frames = _Frames(persist, seconds, max_groups)
            await trio.lowlevel.checkpoint()
            listener = trio.SocketListener(sock)
            task_status.started(path)

            async def client(stream: trio.SocketStream) -> None:
                await _serve_client(frames, stream, max_clients)

            await trio.serve_listeners(client, [listener])
        finally:
            sock.close()
            _remove_if_ours(path, created)
    finally:
        _unlock(path, lock)


def _bind(path: str) -> tuple[trio.socket.SocketType, os.stat_result]:
    """A listening socket at *path*, born 0600, and the file's identity."""
    raw = stdlib_socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
    # Bound here, synchronously: a local bind is quick, and Trio's own bind would
    # hop to a thread (which also lets a virtual clock jump in tests).
    old_umask = os.umask(0o177)  # born 0600: no window in which others could connect
    try:
        raw.bind(path)
        created = os.stat(path)
        os.chmod(path, 0o600)
        raw.listen(64)
    except BaseException:
        raw.close()
        raise
    finally:
        os.umask(old_umask)
    return trio.socket.from_stdlib_socket(raw), created


def _remove_if_ours(path: str, created: os.stat_result) -> None:
    """Unlink *path* only if it is still the socket this server created."""
    try:
        now = os.lstat(path)
    except FileNotFoundError:
        return
    if (now.st_dev, now.st_ino) == (created.st_dev, created.st_ino):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


async def _serve_client(frames: _Frames, stream: trio.SocketStream, max_clients: int) -> None:
    async with stream:
        if frames.clients >= max_clients:
            refusal = {"refused": f"this monitor serves at most {max_clients} clients"}
            with trio.move_on_after(frames.interval), contextlib.suppress(trio.BrokenResourceError):
                await stream.send_all(json.dumps(refusal).encode() + b"\n")
            return
        frames.clients += 1
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_discard_input, stream, frames.interval, nursery.cancel_scope)
                await _send_frames(frames, stream)
                nursery.cancel_scope.cancel()
        finally:
            frames.clients -= 1


def _unread(sock: trio.socket.SocketType) -> int | None:
    """Bytes sent on *sock* that its peer has not read yet (None: cannot tell here)."""
    try:
        if sys.platform == "linux":  # the queue's size, zero once all is read
            import fcntl  # here: the package imports on any platform
            import termios

            buffer = array.array("i", [0])
            fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, buffer, True)
            return buffer[0]
        if _NWRITE is not None:
            return sock.getsockopt(stdlib_socket.SOL_SOCKET, _NWRITE)
    except OSError:
        pass
    return None


def _never_reads(clean: float, sock: trio.socket.SocketType, patience: float) -> float | None:
    """When the client on *sock* last had read everything, or None to drop it.

    *clean* is when it last had; a client that reads has read the last frame
    by the time the next is due, one whose frames stay unread for *patience*
    seconds never reads. Where the backlog cannot be told, nobody is dropped
    here (a client that never reads is then dropped once its buffer is full).
    """
    now = trio.current_time()
    if not _unread(sock):
        return now
    return None if now - clean >= patience else clean


async def _send_frames(frames: _Frames, stream: trio.SocketStream) -> None:
    patience = frames.interval * 5
    read_all = trio.current_time()
    try:
        while True:
            # A client that never reads would hold its slot for minutes while
            # the socket buffer fills: it is dropped once its frames have waited
            # five intervals unread.
            if (checked := _never_reads(read_all, stream.socket, patience)) is None:
                return
            read_all = checked
            with trio.move_on_after(patience) as slow:
                await stream.send_all(frames.current())
            if slow.cancelled_caught:
                return  # a client that does not read is dropped
            # Every client wakes at the same due time, so the first one up
            # rebuilds the frame and the rest send the same bytes.
            await trio.sleep_until(frames.next_due())
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def _discard_input(
    stream: trio.SocketStream, interval: float, scope: trio.CancelScope
) -> None:
    # Read-only: anything a client sends is read and dropped, at most 4 KiB per
    # interval, so junk costs the persist nearly nothing. Its end of input is no
    # reason to stop sending (it may still read); a broken connection is.
    try:
        while True:
            if not await stream.receive_some(4096):
                return
            await trio.sleep(interval)  # the throttle: nothing to wait for but time
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        scope.cancel()
