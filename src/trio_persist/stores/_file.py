"""`FileStore`: one file per group, replaced atomically (write, fsync, rename, fsync).

The blocking calls run in Trio's worker threads; a call that has reached its
thread runs to its end (a thread cannot be cancelled), and the caller's
cancellation is delivered when it returns.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import stat
import threading
import time
from collections.abc import Iterator
from typing import Any, NoReturn, final

import attrs
import trio

from .._exceptions import CorruptResult
from .._state_codec import HEADER_LIMIT
from ._base import StoreBase, stale, too_large

try:
    import fcntl
except ImportError:  # pragma: no cover (not on Windows)
    fcntl = None  # type: ignore[assignment]

__all__ = ["FileStore"]

SUFFIX = ".state"
TEMP_SUFFIX = ".tmp"
STALE_TEMP = 3600.0  # seconds: older temporary files are a crashed save's, removed on open
_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | _CLOEXEC | _NOFOLLOW
# O_NONBLOCK: a FIFO planted under a state's name must not block the open.
_READ = os.O_RDONLY | _CLOEXEC | _NOFOLLOW | getattr(os, "O_NONBLOCK", 0)
_THREAD_LOCK = threading.Lock()  # stands in for flock where there is none

_REMEDIES = {
    errno.ENOSPC: "the disk is full: free some space",
    errno.EDQUOT: "the disk quota is used up: raise it or free some space",
    errno.EFBIG: "the file would be larger than this process may write (ulimit -f)",
    errno.EACCES: "this process may not write there: check the directory's owner and mode",
    errno.EPERM: "this process may not write there: check the directory's owner and mode",
    errno.EROFS: "the directory is on a read-only file system",
    errno.ENOTDIR: "the directory (or a folder above it) is a file, not a directory",
    errno.EISDIR: "the state's file name is taken by a directory: remove it",
    errno.EEXIST: "a file already has the directory's name: choose another directory",
}


def _absolute(directory: Any) -> str:
    path = os.fspath(directory)
    if not isinstance(path, str):
        raise TypeError(f"directory must be a str or a path, got {type(path).__name__}")
    return os.path.abspath(path)


@final
@attrs.define(eq=False, repr=False)
class FileStore(StoreBase):
    """States in files, one per group, in *directory*: ``<digest>.state``, mode 0600.

    A save writes a temporary file in the directory, fsyncs it, renames it over
    the group's file and fsyncs the directory: a crash at any moment leaves
    the old state or the new one, never a torn one, and a save that returned
    survives a power loss. A save that raised left the old state in place
    (unless only the final directory fsync failed: its message says so).
    Temporary files of a crashed save are removed when the store is opened
    (``async with``) once they are an hour old.

    Saves of different groups run concurrently. Several stores (and processes) may
    share a directory: each save replaces a file whole, and fenced saves
    compare tokens under an ``flock`` of the directory's ``.lock`` file.

    Args:
        directory: Where the files live; created (mode 0700, parents too) by
            the first save or by ``async with``. Opening checks that it is a
            writable directory, so a persist fails at its start, not at its
            first save.
        signing_key: Seal states with an HMAC of this key (at least 16 bytes)
            and save them as pickles; without it, states are JSON values that
            read back equal, checked against damage but not forgery.
        namespace: The name states are sealed to: a store with another
            namespace or key refuses them.
        max_bytes: The largest state file it writes or reads.
    """

    directory: str = attrs.field(converter=_absolute)

    def _place(self) -> str:
        return self.directory

    def _path(self, digest: str) -> str:
        return os.path.join(self.directory, digest + SUFFIX)

    async def __aenter__(self) -> FileStore:
        """Check now that the directory can hold states (create it if needed), and
        remove the temporary files of crashed saves."""
        try:
            await trio.to_thread.run_sync(self._open_sync)
        except OSError as exc:
            raise self._failed(exc, f"{self._label()}: cannot keep states here", "") from exc
        return self

    # -- primitives ------------------------------------------------------------

    async def _read(self, digest: str, where: str) -> bytes | None:
        try:
            return await trio.to_thread.run_sync(self._read_sync, self._path(digest), where)
        except OSError as exc:
            raise self._failed(exc, where, "could not be read") from exc

    async def _write(self, digest: str, data: bytes, token: int | None, where: str) -> None:
        try:
            await trio.to_thread.run_sync(self._write_sync, digest, data, token, where)
        except OSError as exc:
            raise self._failed(exc, where, "could not be saved") from exc

    async def _remove(self, digest: str, where: str) -> None:
        try:
            await trio.to_thread.run_sync(self._remove_sync, self._path(digest))
        except OSError as exc:
            raise self._failed(exc, where, "could not be deleted") from exc

    def _failed(self, exc: OSError, where: str, what: str) -> OSError:
        remedy = _REMEDIES.get(exc.errno or 0, f"check {self.directory}")
        intact = "; the previous state is intact" if what == "could not be saved" else ""
        message = f"{where} {what}".rstrip()
        return OSError(exc.errno, f"{message} ({exc.strerror or exc}): {remedy}{intact}")

    # -- in a worker thread ------------------------------------------------------

    def _open_sync(self) -> None:
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        if not os.path.isdir(self.directory):
            raise NotADirectoryError(errno.ENOTDIR, "not a directory")
        probe = os.path.join(self.directory, f".probe.{secrets.token_hex(6)}{TEMP_SUFFIX}")
        os.close(os.open(probe, _CREATE, 0o600))
        os.unlink(probe)
        old = time.time() - STALE_TEMP
        with os.scandir(self.directory) as entries:
            for entry in entries:
                if entry.name.startswith(".") and entry.name.endswith(TEMP_SUFFIX):
                    with contextlib.suppress(OSError):
                        if entry.stat(follow_symlinks=False).st_mtime < old:
                            os.unlink(entry.path)

    def _read_sync(self, path: str, where: str) -> bytes | None:
        try:
            fd = os.open(path, _READ)
        except FileNotFoundError:
            return None
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                _refuse(where, "is a symbolic link")
            raise
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                _refuse(where, "is not a regular file")
            if info.st_size > self.max_bytes:
                too_large(where, info.st_size, self.max_bytes)
            data = _read_all(fd, info.st_size, self.max_bytes)
        finally:
            os.close(fd)
        if len(data) > self.max_bytes:
            too_large(where, len(data), self.max_bytes)
        return data

    def _write_sync(self, digest: str, data: bytes, token: int | None, where: str) -> None:
        path = self._path(digest)
        temp = os.path.join(self.directory, f".{digest}.{secrets.token_hex(6)}{TEMP_SUFFIX}")
        try:
            try:
                fd = os.open(temp, _CREATE, 0o600)
            except FileNotFoundError:
                os.makedirs(self.directory, mode=0o700, exist_ok=True)
                fd = os.open(temp, _CREATE, 0o600)
            try:
                _write_all(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            if token is None:
                os.replace(temp, path)
            else:
                with self._directory_lock():
                    stored = self._stored_token(path)
                    if stored is not None and stored > token:
                        raise stale(where, token, stored)
                    os.replace(temp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(temp)
            raise
        try:
            _sync_directory(self.directory)
        except OSError as exc:
            raise OSError(
                exc.errno, f"the new state is in place, but may not survive a power loss: {exc}"
            ) from exc

    def _remove_sync(self, path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            return
        _sync_directory(self.directory)

    def _stored_token(self, path: str) -> int | None:
        try:
            with open(os.open(path, _READ), "rb") as file:
                head = file.readline(HEADER_LIMIT + 1)
        except OSError:
            return None  # nothing there (or nothing readable): nothing to fence against
        return self._codec.token_of(head)

    @contextlib.contextmanager
    def _directory_lock(self) -> Iterator[None]:
        if fcntl is None:  # pragma: no cover (not on Windows)
            with _THREAD_LOCK:
                yield
            return
        fd = os.open(
            os.path.join(self.directory, ".lock"), os.O_RDWR | os.O_CREAT | _CLOEXEC, 0o600
        )
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # releases the lock


def _refuse(where: str, what: str) -> NoReturn:
    raise CorruptResult(f"{where} {what}: refusing to read it. Remove it")


def _read_all(fd: int, size: int, limit: int) -> bytes:
    chunks = []
    total = 0
    want = size + 1  # one more byte: a file that grew since fstat is seen
    while total <= limit:
        chunk = os.read(fd, min(want, limit + 1 - total, 1 << 30))
        if not chunk:
            break
        chunks.append(chunk)
        total += len(chunk)
        want = 1 << 20
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view[: 1 << 30])
        view = view[written:]


def _sync_directory(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | _CLOEXEC)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # a file system that cannot sync directories
            raise
    finally:
        os.close(fd)
