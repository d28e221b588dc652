"""State stores: where virtual workers' states live between activations.

A store keeps one state per group, named by the group's digest, sealed to the
store's namespace and group (authenticated with a ``signing_key``)::

    async with trio_persist.stores.SqliteStore("states.db") as store:
        await store.save(("cart", "alice"), {"items": ["book"]})
        assert await store.load(("cart", "alice")) == {"items": ["book"]}

* `MemoryStore`: in this process, for tests and throwaway states;
* `FileStore`: one file per group, replaced atomically;
* `SqliteStore`: one SQLite database, one connection, write-ahead log.

States cross a store through its codec: JSON values that read back equal by
default, pickles only with a signing key. Every store follows the `Store`
protocol (``load``, ``save``, ``delete``), keeps fenced records
(`StateRecord`: ``load_record``, ``save_record``) and counts what it does
(``statistics()``). docs/stores.md tells the whole story.
"""

from .._store import (
    MAX_APPLIED,
    MAX_REQUEST_ID,
    RecordStore,
    StateRecord,
    Store,
    StoreStatistics,
    check_store,
)
from ._base import DEFAULT_MAX_BYTES
from ._file import FileStore
from ._memory import MemoryStore
from ._sqlite import SqliteStore

__all__ = [
    "DEFAULT_MAX_BYTES",
    "MAX_APPLIED",
    "MAX_REQUEST_ID",
    "FileStore",
    "MemoryStore",
    "RecordStore",
    "SqliteStore",
    "StateRecord",
    "Store",
    "StoreStatistics",
    "check_store",
]


def _claim(names: list[str]) -> None:
    # As trio does: reprs and the reference say trio_persist.stores.X.
    for public in map(globals().__getitem__, names):
        if callable(public) and public.__module__.startswith("trio_persist."):
            public.__module__ = __name__


_claim(__all__)
del _claim
