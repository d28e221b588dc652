"""Lingering results: a success that keeps answering identical calls for a while.

Bounded twice: entries expire ``linger`` seconds after their execution ended,
and the estimated size of what lingers is capped (`LINGER_BYTES`): past it the
oldest go first, and a result larger than the whole cap never lingers. Sizes
are estimated by a walk that stops after `SIZE_NODES` objects, so measuring a
huge result costs no more than measuring a small one.
"""

from __future__ import annotations

import sys
from collections.abc import Hashable, Iterator
from itertools import chain, islice
from typing import Any

import attrs
import trio

__all__ = ["LINGER_BYTES", "MISS", "Linger", "estimated_size"]

LINGER_BYTES = 64 * 1024 * 1024
"""The most bytes (estimated) of results that linger at once."""

SIZE_NODES = 4096
"""Objects the size estimate visits at most; past that it extrapolates."""

MISS: Any = object()
"""No lingering result."""

_ATOMS = (str, bytes, bytearray, int, float, bool, type(None), complex)


def estimated_size(value: object) -> int:
    """Bytes *value* holds, roughly: `sys.getsizeof` over its containers' members.

    Visits at most `SIZE_NODES` objects (each once); when it stops early it
    scales what it saw by what was left, so a large value is never cheap.
    Never raises: an object that cannot be measured counts as 64 bytes.
    """
    total = visited = left = 0  # left: members known but not visited
    seen: set[int] = set()
    stack = [value]
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        visited += 1
        try:
            total += sys.getsizeof(item, 64)
            members, count = _members(item)
            taken = list(islice(members, max(0, SIZE_NODES - visited - len(stack))))
        except Exception:
            continue
        stack.extend(taken)
        left += count - len(taken)
    if left > 0:
        total += left * (total // visited)
    return total


def _members(item: object) -> tuple[Iterator[Any], int]:
    if isinstance(item, _ATOMS):
        return iter(()), 0
    if isinstance(item, dict):
        return chain.from_iterable(item.items()), 2 * len(item)
    if isinstance(item, (list, tuple, set, frozenset)):
        return iter(item), len(item)
    return iter(()), 0  # any other object: its own size only


@attrs.define(eq=False)
class Linger:
    """Results that answer identical calls until they expire; everything is O(1)
    but the bounded size estimate on `put`.

    *seconds* is the persist's window; a wrapped function may have its own
    (see `put`).
    """

    seconds: float
    # group -> (key, value, expiry, size), in order of insertion: of expiry too
    # while every window is the persist's. An entry behind a longer-lived one may
    # outlive its expiry in memory until that one goes (`get` never serves it).
    entries: dict[Hashable, tuple[object, Any, float, int]] = attrs.field(factory=dict)
    size: int = 0
    limit: int = attrs.field(factory=lambda: LINGER_BYTES)

    def put(self, group: Hashable, key: object, value: Any, seconds: float) -> None:
        """Let *value*, the result of the request named *key*, answer identical
        calls for *seconds* (0: not at all)."""
        if not seconds:
            return
        try:
            self.drop(group)  # re-inserted last: the order stays by expiry
        except Exception:  # a group whose hash raises now: it does not linger
            return
        size = estimated_size(value)
        if size > self.limit:
            return
        now = trio.current_time()
        try:
            self.entries[group] = (key, value, now + seconds, size)
        except Exception:  # a group whose hash raises now: it does not linger
            return
        self.size += size
        self._trim(now)

    def _trim(self, now: float) -> None:
        # Expired entries go now, and the oldest while over the byte cap.
        entries = self.entries
        while entries:
            first = next(iter(entries))
            entry = entries[first]
            if entry[2] > now and self.size <= self.limit:
                return
            del entries[first]
            self.size -= entry[3]

    def get(self, group: Hashable, key: object) -> Any:
        """The result still lingering for *group* and the request named *key*, or `MISS`."""
        entry = self.entries.get(group)
        if entry is None:
            return MISS
        if entry[2] <= trio.current_time():
            self.drop(group)
            return MISS
        if entry[0] != key:
            return MISS
        return entry[1]

    def drop(self, group: Hashable) -> bool:
        """Forget *group*'s lingering result; whether there was one."""
        entry = self.entries.pop(group, None)
        if entry is None:
            return False
        self.size -= entry[3]
        return True
