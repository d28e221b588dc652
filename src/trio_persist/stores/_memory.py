"""`MemoryStore`: states kept in this process, sealed exactly as the other stores seal them."""

from __future__ import annotations

from typing import final

import attrs

from ._base import StoreBase, stale

__all__ = ["MemoryStore"]


@final
@attrs.define(eq=False, repr=False)
class MemoryStore(StoreBase):
    """States kept in this process's memory, for tests and for states that need not
    outlive it.

    It holds each state sealed, as bytes, never the live object: a state
    mutated after its save does not change what was saved, and a state the
    other stores would refuse is refused here too. It keeps its states across
    persists (until the process ends), so a test can close a persist and open
    another on the same store.

    Args:
        signing_key: Seal states with an HMAC of this key (at least 16 bytes)
            and save them as pickles; without it, states are JSON values that
            read back equal.
        namespace: The name states are sealed to: a store with another
            namespace or key refuses them.
        max_bytes: The largest sealed state it keeps.
    """

    _data: dict[str, bytes] = attrs.field(init=False, factory=dict)
    _tokens: dict[str, int] = attrs.field(init=False, factory=dict)

    def _place(self) -> str:
        return ""

    def __repr__(self) -> str:
        return super().__repr__()[:-1] + f" {len(self._data)} states>"

    async def _read(self, digest: str, where: str) -> bytes | None:
        return self._data.get(digest)

    async def _write(self, digest: str, data: bytes, token: int | None, where: str) -> None:
        stored = self._tokens.get(digest)
        if token is not None and stored is not None and stored > token:
            raise stale(where, token, stored)
        self._data[digest] = data
        if token is None:
            self._tokens.pop(digest, None)
        else:
            self._tokens[digest] = token

    async def _remove(self, digest: str, where: str) -> None:
        self._data.pop(digest, None)
        self._tokens.pop(digest, None)
