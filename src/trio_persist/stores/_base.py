"""What every shipped store shares: naming groups, the codec, counting, checkpoints.

A store subclasses `StoreBase` and writes three primitives on sealed bytes
(``_read``, ``_write``, ``_remove``); the public methods here name the group,
seal or open the state, count, and make each call a Trio checkpoint whose
cancellation is clean: a call that raises `trio.Cancelled` did nothing.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Hashable, Iterator
from typing import Any, NoReturn, TypeVar

import attrs
import trio

from .._exceptions import CorruptResult, StaleOwner
from .._grouping import canonical_encoding, group_digest
from .._state_codec import StateCodec
from .._store import StateRecord, StoreStatistics

__all__ = ["DEFAULT_MAX_BYTES", "StoreBase", "stale", "too_large"]

S = TypeVar("S", bound="StoreBase")

DEFAULT_MAX_BYTES = 256 * 1024 * 1024
"""The largest sealed state a store writes or reads, unless told otherwise."""


def _check_max_bytes(_store: object, _attribute: object, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"max_bytes must be an int, got {type(value).__name__}")
    if value < 1024:
        raise ValueError(f"max_bytes must be at least 1024, got {value}")


@attrs.define
class _Counts:
    loads: int = 0
    found: int = 0
    saves: int = 0
    deletes: int = 0
    failures: int = 0
    corrupt: int = 0
    fenced: int = 0
    bytes_loaded: int = 0
    bytes_saved: int = 0
    largest: int = 0
    load_seconds: float = 0.0
    save_seconds: float = 0.0


def stale(where: str, token: int, stored: int) -> StaleOwner:
    """The error of a save fenced out by a newer owner's token."""
    return StaleOwner(
        f"{where} was saved by a newer owner (token {stored}) than this save's "
        f"(token {token}): refusing it. This process no longer owns the group; "
        "drop its copy of the state",
        token,
        stored,
    )


@attrs.define(eq=False, repr=False)
class StoreBase:
    """The shared half of a store (see the subclasses for the arguments)."""

    signing_key: bytes | None = attrs.field(default=None, kw_only=True, repr=False)
    namespace: str = attrs.field(default="trio-persist", kw_only=True)
    max_bytes: int = attrs.field(
        default=DEFAULT_MAX_BYTES, kw_only=True, validator=_check_max_bytes
    )
    _codec: StateCodec = attrs.field(
        init=False,
        default=attrs.Factory(lambda self: StateCodec(self.namespace, self.signing_key), True),
    )
    _counts: _Counts = attrs.field(init=False, factory=_Counts)
    _locks: dict[str, tuple[trio.Lock, list[int]]] = attrs.field(init=False, factory=dict)

    # -- what a subclass writes ------------------------------------------------

    def _place(self) -> str:
        """Where the states live, for messages (never a secret)."""
        raise NotImplementedError

    async def _read(self, digest: str, where: str) -> bytes | None:
        raise NotImplementedError

    async def _write(self, digest: str, data: bytes, token: int | None, where: str) -> None:
        """Replace the group's sealed state; refuse (`stale`) a token below the stored one."""
        raise NotImplementedError

    async def _remove(self, digest: str, where: str) -> None:
        raise NotImplementedError

    # -- naming ----------------------------------------------------------------

    def __repr__(self) -> str:
        sealed = "signed" if self.signing_key is not None else "unsigned"
        return f"<trio_persist.stores.{self._label()} namespace={self.namespace!r} {sealed}>"

    def _label(self) -> str:
        return f"{type(self).__name__}({self._place()!r})" if self._place() else type(self).__name__

    def _name(self, group: Hashable) -> str:
        try:
            canonical_encoding(group)
        except TypeError as exc:
            reason = str(exc).split(": the default grouper", 1)[0].replace(" at value", " at group")
            raise TypeError(
                f"{self._label()} cannot name this group: {reason}. A store names each "
                "group by a digest of its canonical encoding, the same in every process; "
                "use groups made of None, bool, int, float, str, bytes, tuples, lists, "
                "dicts and sets"
            ) from None
        return group_digest(group)

    def _where(self, digest: str) -> str:
        return f"{self._label()}: the state of group {digest}"

    # -- the protocol ----------------------------------------------------------

    async def load(self, group: Hashable) -> Any | None:
        """The state last saved for *group*, or None if there is none.

        Raises:
            trio_persist.CorruptResult: what is stored is not a state this store
                sealed for *group* (damaged, forged, moved, over ``max_bytes``,
                or sealed with another key or namespace).
            TypeError: *group* cannot be named (see `trio_persist.canonical_encoding`).
            OSError: the storage failed; the message says what to do.
        """
        record = await self.load_record(group)
        return None if record is None else record.state

    async def save(self, group: Hashable, state: Any) -> None:
        """Replace *group*'s state with *state*, whole.

        *state* is encoded before the first checkpoint: mutating it once
        ``save`` has been called does not change what is saved. If ``save``
        returns, the state is saved; if it raises (`trio.Cancelled` included),
        the previous state is intact. Saves and deletes of one group through
        one store apply in call order. A save without a token (this one)
        clears the stored token.

        Raises:
            TypeError: *state* cannot be carried faithfully (not JSON that reads
                back equal, without a signing key; not picklable, with one).
            ValueError: the sealed state would be larger than ``max_bytes``.
            OSError: the storage failed; the message says what to do.
        """
        await self._save(group, StateRecord(state))

    async def delete(self, group: Hashable) -> None:
        """Forget *group*'s state and token (nothing happens if there is none)."""
        digest = self._name(group)
        await trio.lowlevel.checkpoint_if_cancelled()
        with self._counting():
            async with self._group_lock(digest):
                await self._remove(digest, self._where(digest))
        self._counts.deletes += 1
        await trio.lowlevel.cancel_shielded_checkpoint()

    async def load_record(self, group: Hashable) -> StateRecord | None:
        """The record last saved for *group* (by `save` or `save_record`), or None.

        Raises what `load` raises.
        """
        digest = self._name(group)
        where = self._where(digest)
        await trio.lowlevel.checkpoint_if_cancelled()
        started = time.perf_counter()
        with self._counting():
            data = await self._read(digest, where)
            record = None if data is None else await self._open(digest, data, where)
        counts = self._counts
        counts.loads += 1
        counts.load_seconds += time.perf_counter() - started
        if data is not None:
            counts.found += 1
            counts.bytes_loaded += len(data)
            counts.largest = max(counts.largest, len(data))
        await trio.lowlevel.cancel_shielded_checkpoint()
        return record

    async def save_record(self, group: Hashable, record: StateRecord) -> None:
        """Replace *group*'s record with *record*, whole, in one step.

        As `save`, and fenced: a save whose token is lower than the stored
        record's is refused (a save without a token is never refused).

        Raises:
            trio_persist.StaleOwner: a newer owner saved since; nothing is written.
        """
        if not isinstance(record, StateRecord):
            raise TypeError(f"record must be a StateRecord, got {type(record).__name__}")
        await self._save(group, record)

    def statistics(self) -> StoreStatistics:
        """Return a frozen snapshot of this store's counters."""
        return StoreStatistics(**attrs.asdict(self._counts))

    async def __aenter__(self: S) -> S:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    # -- the steps -------------------------------------------------------------

    async def _save(self, group: Hashable, record: StateRecord) -> None:
        digest = self._name(group)
        where = self._where(digest)
        await trio.lowlevel.checkpoint_if_cancelled()
        started = time.perf_counter()
        with self._counting():
            encoded = self._codec.encode(record.state, where, reply=record.reply)
            # Queued before any checkpoint: one group's saves apply in call order.
            async with self._group_lock(digest):
                data = await self._codec.seal(
                    digest, encoded, token=record.token, applied=record.applied
                )
                if len(data) > self.max_bytes:
                    raise ValueError(
                        f"{where} would take {len(data):,} bytes, more than this store's "
                        f"max_bytes ({self.max_bytes:,}): nothing was saved. Keep states "
                        "smaller, or give the store a larger max_bytes"
                    )
                await self._write(digest, data, record.token, where)
        counts = self._counts
        counts.saves += 1
        counts.save_seconds += time.perf_counter() - started
        counts.bytes_saved += len(data)
        counts.largest = max(counts.largest, len(data))
        await trio.lowlevel.cancel_shielded_checkpoint()

    @contextlib.asynccontextmanager
    async def _group_lock(self, digest: str) -> AsyncIterator[None]:
        # A fair lock per group, dropped when its last user leaves: the dict
        # holds only the groups being written now.
        entry = self._locks.get(digest)
        if entry is None:
            entry = self._locks[digest] = (trio.Lock(), [0])
        lock, users = entry
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._locks[digest]

    async def _open(self, digest: str, data: bytes, where: str) -> StateRecord:
        if len(data) > self.max_bytes:
            too_large(where, len(data), self.max_bytes)
        state, token, applied, reply = await self._codec.open(digest, data, where)
        try:
            return StateRecord(state, token, applied, reply)
        except (TypeError, ValueError) as exc:
            raise CorruptResult(f"{where} holds a malformed record ({exc}): refusing it") from None

    @contextlib.contextmanager
    def _counting(self) -> Iterator[None]:
        counts = self._counts
        try:
            yield
        except CorruptResult:
            counts.corrupt += 1
            counts.failures += 1
            raise
        except StaleOwner:
            counts.fenced += 1
            counts.failures += 1
            raise
        except Exception:
            counts.failures += 1
            raise


def too_large(where: str, size: int, limit: int) -> NoReturn:
    """Refuse to read a stored state larger than the store's ``max_bytes``."""
    raise CorruptResult(
        f"{where} is {size:,} bytes, more than this store's max_bytes ({limit:,}): "
        "refusing to read it. Give the store a larger max_bytes if it is yours"
    )
