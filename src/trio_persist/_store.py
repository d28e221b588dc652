"""What a state store is: the protocol a persist calls to save and restore workers' states.

A store (`trio_persist.stores` ships three) names each group by its digest and
keeps one state per group. Everything a persist needs is three methods,
``load``, ``save`` and ``delete``. Two optional parts let the engine do more
with a store that has them, found by `record_store` and `open_store`:

* **Records** (`RecordStore`): ``load_record``/``save_record`` carry a
  `StateRecord`, a state with the fencing token of the owner that saved it and
  the ids of the requests it applied (and the reply to the last one), written
  in one step. A save whose token is lower than the stored one is refused with
  `~trio_persist.StaleOwner`. This is what a durable worker across processes
  needs: a stale owner cannot overwrite its successor, and a request the dead
  owner applied but never answered is answered from the record.
* **A life cycle**: a store that is an async context manager is entered when
  the persist opens (so a store that cannot work fails there, not at the first
  save) and exited after the persist's last save. Entering is counted: one
  store may serve several persists at once.

The user's docs are docs/stores.md.
"""

from __future__ import annotations

import contextlib
import inspect
from collections.abc import AsyncIterator, Hashable
from typing import Any, Protocol

import attrs

__all__ = [
    "RecordStore",
    "StateRecord",
    "Store",
    "StoreStatistics",
    "check_store",
    "open_store",
    "record_store",
]

_METHODS = ("load", "save", "delete")
_RECORD_METHODS = ("load_record", "save_record")

MAX_APPLIED = 1024
"""The most request ids one `StateRecord` carries."""
MAX_REQUEST_ID = 256
"""The longest request id, in characters."""


class Store(Protocol):
    """The methods a persist calls on its ``store=``.

    A store names a group by its digest; a group that cannot be named (see
    `trio_persist.canonical_encoding`) is a `TypeError` at the call. A state
    that the store cannot carry faithfully is a `TypeError` at ``save``, and
    nothing is written. A state of None reads back as None: no state.
    """

    async def load(self, group: Hashable) -> Any | None:
        """The state last saved for *group*, or None if there is none."""

    async def save(self, group: Hashable, state: Any) -> None:
        """Replace *group*'s state with *state*, whole: never a torn state."""

    async def delete(self, group: Hashable) -> None:
        """Forget *group*'s state (nothing happens if there is none)."""


def _check_token(_record: object, _attribute: object, token: Any) -> None:
    if token is not None and (isinstance(token, bool) or not isinstance(token, int)):
        raise TypeError(f"token must be None or an int, got {type(token).__name__}")
    if token is not None and not 0 <= token < 2**63:
        raise ValueError(f"token must be >= 0 and < 2**63, got {token}")


def _check_applied(_record: object, _attribute: object, applied: Any) -> None:
    if not isinstance(applied, tuple) or not all(isinstance(i, str) for i in applied):
        raise TypeError("applied must be a tuple of request ids (str)")
    if len(applied) > MAX_APPLIED:
        raise ValueError(f"applied holds {len(applied)} request ids, more than {MAX_APPLIED}")
    if any(len(i) > MAX_REQUEST_ID for i in applied):
        raise ValueError(f"a request id is longer than {MAX_REQUEST_ID} characters")


@attrs.frozen
class StateRecord:
    """A state as a store keeps it: with who saved it and what it applied.

    Written and read whole, in one step, by `RecordStore.save_record` and
    `RecordStore.load_record`.
    """

    state: Any
    """The group's state."""
    token: int | None = attrs.field(default=None, validator=_check_token)
    """The fencing token of the owner that saved it (None: not fenced). A store
    refuses a save whose token is lower than the stored one."""
    applied: tuple[str, ...] = attrs.field(default=(), validator=_check_applied)
    """Ids of the last requests this state applied, oldest first (at most
    `MAX_APPLIED`): the saver keeps the window it needs."""
    reply: Any = None
    """The reply to ``applied[-1]``. When it is the state itself (an advancing
    worker's reply is its new state), it is stored once and read back as the
    same object."""


class RecordStore(Store, Protocol):
    """A store that also keeps `StateRecord` s, fenced (optional; the shipped stores do)."""

    async def load_record(self, group: Hashable) -> StateRecord | None:
        """The record last saved for *group* (by either save), or None."""

    async def save_record(self, group: Hashable, record: StateRecord) -> None:
        """Replace *group*'s record with *record*, whole, in one step.

        Raises:
            trio_persist.StaleOwner: *record*'s token is lower than the stored
                record's: a newer owner saved since. Nothing is written.
        """


@attrs.frozen
class StoreStatistics:
    """Counters of a store, as its ``statistics()`` returns them.

    ``failures`` counts every operation that raised; ``corrupt`` and
    ``fenced`` are the loads and saves among them refused for those reasons.
    """

    loads: int
    """Loads that completed (a state found or not)."""
    found: int
    """Loads that found a state."""
    saves: int
    """Saves that completed."""
    deletes: int
    """Deletes that completed."""
    failures: int
    """Operations that raised (refused values, I/O errors, corrupt states, fenced saves)."""
    corrupt: int
    """Loads refused: damaged, forged, moved, oversized or foreign states."""
    fenced: int
    """Saves refused because a newer owner had saved (`~trio_persist.StaleOwner`)."""
    bytes_loaded: int
    """Bytes read by loads, sealed form."""
    bytes_saved: int
    """Bytes written by saves, sealed form."""
    largest: int
    """The largest sealed state saved or loaded, in bytes."""
    load_seconds: float
    """Seconds spent in loads that completed (divide by ``loads`` for the mean)."""
    save_seconds: float
    """Seconds spent in saves that completed."""

    def to_json(self) -> dict[str, Any]:
        """The counters as a JSON object."""
        return attrs.asdict(self)


def _missing(store: object, names: tuple[str, ...]) -> list[str]:
    missing = []
    for name in names:
        method = getattr(store, name, None)
        if not callable(method):
            missing.append(name)
        elif inspect.isroutine(method) and not inspect.iscoroutinefunction(method):
            missing.append(f"{name} (it must be async: async def {name}(...))")
    return missing


def check_store(store: object, *, records: bool = False) -> Store | None:
    """Return *store* typed as a `Store`, or raise a clear `TypeError`.

    With *records*, the store must also keep records (`RecordStore`): what
    durable workers across processes need.
    """
    if store is None:
        return None
    if isinstance(store, type):  # its methods exist, unbound: it would fail at first use
        raise TypeError(
            f"store must be a store, got the class {store.__name__}: make one, such as "
            f"{store.__name__}(...)"
        )
    missing = _missing(store, _METHODS)
    if missing:
        raise TypeError(
            "store must be None or a trio-persist store such as "
            f"trio_persist.stores.FileStore, got {type(store).__name__} "
            f"(it has no {', '.join(missing)})"
        )
    missing = _missing(store, _RECORD_METHODS) if records else []
    if missing:
        raise TypeError(
            f"durable workers across processes need a store that keeps records "
            f"(a fencing token and the requests each state applied, saved in one step), "
            f"such as trio_persist.stores.SqliteStore; {type(store).__name__} has no "
            f"{', '.join(missing)}"
        )
    return store  # type: ignore[return-value]


def record_store(store: Store) -> RecordStore | None:
    """*store* typed as a `RecordStore` if it keeps records, else None."""
    if _missing(store, _RECORD_METHODS):
        return None
    return store  # type: ignore[return-value]


@contextlib.asynccontextmanager
async def open_store(store: Store) -> AsyncIterator[Store]:
    """Enter *store* if it is an async context manager (else use it as it is).

    A persist holds its store open this way for its whole life: a store that
    cannot work (an unwritable directory, a file that is not a database) fails
    here, and the store closes only after the persist's last save.
    """
    if callable(getattr(store, "__aenter__", None)) and callable(getattr(store, "__aexit__", None)):
        async with store:  # type: ignore[attr-defined]
            yield store
    else:
        yield store
