"""The registry: which owner (a flight or a worker) holds each group.

This is upstream's ``hb_name`` without its weaknesses (docs/guarantees.md lists
them): registering is one atomic register-if-absent, only the owner can remove
its entry, an entry never outlives its owner (flights and workers release theirs
when they end, in a ``finally``; `Registry.hold` does the same for a ``with``
block), and there is no lazily-cleaned stale row to block anyone.

Everything here is synchronous and never checkpoints, so on Trio's single thread
each call is atomic: no lock is needed, and none of these can be interrupted.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, Generic, TypeVar, final

import attrs

from .._exceptions import GroupTaken

__all__ = ["Registry", "RegistryStatistics", "RegistryView"]

OwnerT = TypeVar("OwnerT")
ShownT = TypeVar("ShownT")
_FREE = object()


@attrs.frozen
class RegistryStatistics:
    """A snapshot of a `Registry`'s counters."""

    groups: int
    """Groups registered now."""
    registrations: int
    """Successful registrations since the registry was made."""
    refused: int
    """Registrations refused because the group already had an owner."""
    foreign_removals_refused: int
    """Removals refused because the caller was not the owner (upstream allowed them)."""


@final
@attrs.define(eq=False, repr=False)
class Registry(Generic[OwnerT]):
    """A map of group -> owner with atomic, owner-checked updates.

    A persist has one (``persist.registry`` is a read-only view of it). It can
    also be used on its own, for example with `hold` around a task's work.
    """

    _owners: dict[Hashable, OwnerT] = attrs.field(factory=dict, init=False)
    _registrations: int = attrs.field(default=0, init=False)
    _refused: int = attrs.field(default=0, init=False)
    _foreign_refused: int = attrs.field(default=0, init=False)

    def __repr__(self) -> str:
        return f"<trio_persist.Registry with {len(self._owners)} groups at {id(self):#x}>"

    def register(self, group: Hashable, owner: OwnerT) -> bool:
        """Make *owner* the owner of *group* if it has none.

        Returns:
            True if *owner* now owns *group*; False if another owner (or *owner*
            itself) already did, in which case nothing changes.
        """
        if group in self._owners:
            self._refused += 1
            return False
        self._owners[group] = owner
        self._registrations += 1
        return True

    def unregister(self, group: Hashable, owner: OwnerT) -> bool:
        """Remove *group* if, and only if, *owner* owns it.

        A group whose hash changed after it was registered is still found (by
        identity) and removed: an entry never outlives its owner.

        Returns:
            True if the entry was removed; False if *group* was free or owned by
            someone else (their entry is left alone).
        """
        owners = self._owners
        try:
            held = owners.get(group, _FREE)
        except Exception:  # a group whose hash (or ==) raises now: found by identity
            held = _FREE
        if held is owner:
            del owners[group]
            return True
        if held is not _FREE:
            self._foreign_refused += 1
            return False
        # Not found: free, or a group whose hash changed (or raises) since it was
        # registered (a mutable group from a hook). The second must not leak.
        return self._drop(group, owner)

    def _drop(self, group: Hashable, owner: OwnerT) -> bool:
        """Find *group*'s entry by identity and rebuild the map without it, never
        hashing *group*. Rare, so O(n) is fine; in place, so views stay live."""
        owners = self._owners
        if not any(key is group and value is owner for key, value in owners.items()):
            return False
        kept = [(k, v) for k, v in owners.items() if not (k is group and v is owner)]
        owners.clear()
        owners.update(kept)
        return True

    def replace(self, group: Hashable, owner: OwnerT, successor: OwnerT) -> bool:
        """Hand *group* from *owner* to *successor* in one step, if *owner* owns it.

        Used when a flight becomes a worker: nobody can slip in between.
        """
        try:
            held = self._owners.get(group)
        except Exception:  # a group whose hash (or ==) raises now cannot move
            return False
        if held is not owner:
            return False
        self._owners[group] = successor
        return True

    def as_mapping(self) -> Mapping[Hashable, OwnerT]:
        """Return the live group -> owner mapping, read-only.

        It follows every later change (no copy is made); change it only through
        the registry's methods.
        """
        return self._owners

    def lookup(self, group: Hashable) -> OwnerT | None:
        """Return the owner of *group*, or None if it is free."""
        return self._owners.get(group)

    def items(self) -> tuple[tuple[Hashable, OwnerT], ...]:
        """Return every ``(group, owner)`` pair, in registration order."""
        return tuple(self._owners.items())

    def __len__(self) -> int:
        return len(self._owners)

    def __contains__(self, group: object) -> bool:
        return group in self._owners

    @contextmanager
    def hold(self, group: Hashable, owner: OwnerT) -> Iterator[None]:
        """Register *group* for *owner* for the duration of a ``with`` block.

        The entry is removed however the block ends (return, exception or
        cancellation) unless it was handed on with `replace`.

        Raises:
            GroupTaken: *group* already has an owner; nothing is changed.
        """
        if not self.register(group, owner):
            raise GroupTaken(f"group {group!r} is already registered to {self._owners[group]!r}")
        try:
            yield
        finally:
            self.unregister(group, owner)

    def statistics(self) -> RegistryStatistics:
        """Return a frozen snapshot of this registry's counters."""
        return RegistryStatistics(
            groups=len(self._owners),
            registrations=self._registrations,
            refused=self._refused,
            foreign_removals_refused=self._foreign_refused,
        )


@final
@attrs.frozen
class RegistryView(Generic[ShownT]):
    """A read-only view of a `Registry`, each owner shown as *face* makes it.

    ``persist.registry`` is one: it shows a worker as its `Worker` handle.
    """

    _registry: Registry[Any] = attrs.field(alias="registry")
    _face: Callable[[Any], ShownT] = attrs.field(alias="face")

    def lookup(self, group: Hashable) -> ShownT | None:
        """Return the owner of *group*, or None if it is free."""
        owner = self._registry.lookup(group)
        return None if owner is None else self._face(owner)

    def items(self) -> tuple[tuple[Hashable, ShownT], ...]:
        """Return every ``(group, owner)`` pair, in registration order."""
        return tuple((group, self._face(owner)) for group, owner in self._registry.items())

    def __len__(self) -> int:
        return len(self._registry)

    def __contains__(self, group: object) -> bool:
        return group in self._registry

    def statistics(self) -> RegistryStatistics:
        """Return a frozen snapshot of the registry's counters."""
        return self._registry.statistics()
