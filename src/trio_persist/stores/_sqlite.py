"""`SqliteStore`: states in one SQLite database, through one connection in write-ahead mode.

Every statement runs in a Trio worker thread holding the store's one-slot
`trio.CapacityLimiter`: one statement at a time on the one connection, in
call order. Waiting for the slot is cancellable (and then nothing happened);
a statement that has started runs to its end (a thread cannot be cancelled),
and the caller's cancellation is delivered when it returns.
"""

from __future__ import annotations

import contextlib
import errno
import os
import sqlite3
from collections.abc import Callable
from typing import Any, TypeVar, final

import attrs
import trio

from .._exceptions import CorruptResult
from ._base import StoreBase, stale, too_large

__all__ = ["SqliteStore"]

T = TypeVar("T")

_TABLE = "trio_persist_states"
_SCHEMA = f"""
CREATE TABLE IF NOT EXISTS {_TABLE} (
    namespace TEXT NOT NULL,
    digest TEXT NOT NULL,
    token INTEGER,
    data BLOB NOT NULL,
    PRIMARY KEY (namespace, digest)
)"""
# SQLite's primary result codes (the low byte of an extended code).
_ERRORS = {
    3: (errno.EACCES, "this process may not write the database: check its owner and mode"),
    5: (errno.EBUSY, "another connection held the database for longer than timeout"),
    6: (errno.EBUSY, "another connection held the database for longer than timeout"),
    8: (errno.EACCES, "the database is read-only to this process: check its owner and mode"),
    10: (errno.EIO, "the disk failed to read or write: check the device"),
    13: (errno.ENOSPC, "the disk is full: free some space"),
    14: (errno.ENOENT, "the database file cannot be opened: does its directory exist?"),
    18: (errno.EFBIG, "the state is larger than SQLite allows"),
}
_BROKEN = (11, 26)  # SQLITE_CORRUPT, SQLITE_NOTADB


def _database(path: Any) -> str:
    path = os.fspath(path)
    if not isinstance(path, str):
        raise TypeError(f"path must be a str or a path, got {type(path).__name__}")
    if path in ("", ":memory:") or path.startswith("file:"):
        raise ValueError(
            f"path must name a database file, got {path!r}: for states kept in memory, "
            "use trio_persist.stores.MemoryStore"
        )
    return os.path.abspath(path)


def _check_timeout(_store: object, _attribute: object, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"timeout must be a number of seconds, got {type(value).__name__}")
    if not 0 <= value < 1e6:
        raise ValueError(f"timeout must be between 0 and 1e6 seconds, got {value!r}")


@final
@attrs.define(eq=False, repr=False)
class SqliteStore(StoreBase):
    """States in a SQLite database file: a table ``trio_persist_states``, a row per group.

    The store opens one connection, in write-ahead-log mode with
    ``synchronous=FULL`` (a save that returned survives a power loss), on
    first use or when entered, and closes it when the last ``async with``
    leaves or on `aclose`. A persist given the store enters it while it is
    open, so a path that is not a usable database fails when the persist
    opens. Using the store after it closed opens it again.

    Each save is one transaction: the old state or the new one, never a torn
    one, across processes too (other processes may use the same database
    through their own store). Statements run one at a time, in call order.

    Args:
        path: The database file; created (mode 0600) if missing, its
            directory must exist.
        signing_key: Seal states with an HMAC of this key (at least 16 bytes)
            and save them as pickles; without it, states are JSON values that
            read back equal, checked against damage but not forgery.
        namespace: The name states are sealed to, and the rows are keyed by:
            stores with other namespaces share a database without meeting.
        max_bytes: The largest state it writes or reads.
        timeout: Seconds a statement waits for another connection's write
            before it fails.
    """

    path: str = attrs.field(converter=_database)
    timeout: float = attrs.field(default=5.0, kw_only=True, validator=_check_timeout)
    _connection: sqlite3.Connection | None = attrs.field(init=False, default=None)
    _limiter: trio.CapacityLimiter = attrs.field(
        init=False, factory=lambda: trio.CapacityLimiter(1)
    )
    _users: int = attrs.field(init=False, default=0)

    def _place(self) -> str:
        return self.path

    def __repr__(self) -> str:
        state = "open" if self._connection is not None else "closed"
        return super().__repr__()[:-1] + f" {state}>"

    async def __aenter__(self) -> SqliteStore:
        """Open the connection now (if it is not open), and count this user."""
        self._users += 1
        try:
            await self._run(self._label(), "could not be opened", lambda connection: None)
        except BaseException:
            self._users -= 1
            raise
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        """Close the connection if this was its last user."""
        self._users -= 1
        if not self._users:
            await self.aclose()

    async def aclose(self) -> None:
        """Close the connection now (after the statement running, if any).

        Not interrupted by cancellation. Using the store again reopens it.
        """
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(self._close_sync, limiter=self._limiter)

    # -- primitives ------------------------------------------------------------

    async def _read(self, digest: str, where: str) -> bytes | None:
        row = await self._run(where, "could not be read", self._select, digest)
        if row is None:
            return None
        data, size = row
        if data is None:
            too_large(where, size, self.max_bytes)
        return bytes(data)

    async def _write(self, digest: str, data: bytes, token: int | None, where: str) -> None:
        await self._run(where, "could not be saved", self._replace, digest, data, token, where)

    async def _remove(self, digest: str, where: str) -> None:
        await self._run(where, "could not be deleted", self._delete, digest)

    async def _run(self, where: str, what: str, statement: Callable[..., T], *args: Any) -> T:
        try:
            return await trio.to_thread.run_sync(
                self._call, statement, *args, limiter=self._limiter
            )
        except sqlite3.Error as exc:
            raise self._failed(exc, where, what) from exc

    def _failed(self, exc: sqlite3.Error, where: str, what: str) -> Exception:
        code = getattr(exc, "sqlite_errorcode", None)
        primary = None if code is None else code & 0xFF
        text = str(exc)
        if primary in _BROKEN or (
            primary is None and ("not a database" in text or "malformed" in text)
        ):
            return CorruptResult(
                f"{where} {what}: {self.path} is not a healthy SQLite database ({exc}): "
                "refusing to use it. Restore it from a backup, or move it away"
            )
        number, remedy = _ERRORS.get(primary or 0, (errno.EIO, f"check {self.path}"))
        intact = "; the previous state is intact" if what == "could not be saved" else ""
        return OSError(number, f"{where} {what} ({exc}): {remedy}{intact}")

    # -- in the worker thread, one at a time ---------------------------------------

    def _call(self, statement: Callable[..., T], *args: Any) -> T:
        if self._connection is None:
            self._connection = self._connect()
        return statement(self._connection, *args)

    def _connect(self) -> sqlite3.Connection:
        try:  # created here, so that it (and its -wal and -shm files) is private
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        except FileExistsError:
            pass
        except OSError as exc:
            raise sqlite3.OperationalError(f"cannot create {self.path}: {exc.strerror}") from exc
        connection = sqlite3.connect(
            self.path, timeout=self.timeout, isolation_level=None, check_same_thread=False
        )
        try:
            mode = connection.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode != "wal":
                raise sqlite3.OperationalError(f"cannot use write-ahead logging (mode {mode})")
            connection.execute("PRAGMA synchronous=FULL")
            connection.execute(_SCHEMA)
        except BaseException:
            connection.close()
            raise
        return connection

    def _close_sync(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.close()

    def _select(self, connection: sqlite3.Connection, digest: str) -> tuple[Any, int] | None:
        row: tuple[Any, int] | None = connection.execute(
            f"SELECT CASE WHEN length(data) > ? THEN NULL ELSE data END, length(data) "
            f"FROM {_TABLE} WHERE namespace = ? AND digest = ?",
            (self.max_bytes, self.namespace, digest),
        ).fetchone()
        return row

    def _replace(
        self,
        connection: sqlite3.Connection,
        digest: str,
        data: bytes,
        token: int | None,
        where: str,
    ) -> None:
        connection.execute("BEGIN IMMEDIATE")
        try:
            if token is not None:
                row = connection.execute(
                    f"SELECT token FROM {_TABLE} WHERE namespace = ? AND digest = ?",
                    (self.namespace, digest),
                ).fetchone()
                if row is not None and row[0] is not None and row[0] > token:
                    raise stale(where, token, row[0])
            connection.execute(
                f"INSERT OR REPLACE INTO {_TABLE} (namespace, digest, token, data) "
                "VALUES (?, ?, ?, ?)",
                (self.namespace, digest, token, data),
            )
            connection.execute("COMMIT")
        except BaseException:
            if connection.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    connection.execute("ROLLBACK")
            raise

    def _delete(self, connection: sqlite3.Connection, digest: str) -> None:
        connection.execute(
            f"DELETE FROM {_TABLE} WHERE namespace = ? AND digest = ?", (self.namespace, digest)
        )
