"""``trio-persist demo``: an embedded persist under a realistic workload.

A small web shop: bursts of visitors ask for the same product pages at once
(deduplicated flights, some of which fail), and each signed-in user has a
session: a virtual worker (`Persist.ask`) that keeps the user's state in
memory, times out when the user goes quiet, is saved in the persist's store,
and is activated from it when the user comes back. ``max_workers`` keeps the
number of sessions in memory bounded (evicting the least recently used).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Hashable
from typing import Any

import trio

from .._core._persist import Persist

__all__ = ["Shop", "session_group", "workload"]

PAGES = 12
USERS = 8


class Shop:
    """The demo's device: product pages, and per-user sessions (virtual workers)."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def group(self, base: Any, request: Any) -> Hashable:
        return f"page/{request}"  # sessions are asked for by their own group

    async def resolve(self, base: Any, request: Any) -> Any:
        if isinstance(base, dict):  # a session worker serving its user
            await trio.sleep(self.rng.uniform(0.02, 0.1))
            return {**base, "views": base["views"] + 1, "last": request["page"]}
        await trio.sleep(self.rng.uniform(0.3, 0.9))  # render a product page
        if self.rng.random() < 0.05:
            raise TimeoutError(f"inventory service timed out for page {request}")
        return f"<html>product {request}</html>"


def session_group(user: str) -> str:
    """The group of *user*'s session."""
    return f"session/{user}"


async def _visitors(persist: Persist[Any, Any, Any], rng: random.Random) -> None:
    async def visit(page: int) -> None:
        with contextlib.suppress(TimeoutError):  # a failed page is part of the show
            await persist.resolve("page", page)

    async with trio.open_nursery() as nursery:
        while True:
            page = min(int(rng.paretovariate(1.2)), PAGES)  # a few pages are hot
            for _ in range(rng.randint(5, 30)):
                nursery.start_soon(visit, page)
            await trio.sleep(rng.uniform(0.1, 0.4))


async def _sessions(persist: Persist[Any, Any, Any], shop: Shop) -> None:
    rng = shop.rng

    async def browse(user: int) -> None:
        name = f"u{user}"
        # The session's worker: live, activated from the store, or a new session.
        await persist.ask(
            session_group(name),
            {"page": rng.randint(1, PAGES)},
            default=lambda: {"user": name, "views": 0, "last": None},
        )

    async with trio.open_nursery() as nursery:
        while True:
            user = min(int(rng.expovariate(0.5)), USERS - 1)  # some users rarely come back
            nursery.start_soon(browse, user)
            await trio.sleep(rng.uniform(0.05, 0.3))


async def workload(persist: Persist[Any, Any, Any], shop: Shop) -> None:
    """Run the demo's visitors and sessions against *persist* (opened on *shop*)."""
    async with trio.open_nursery() as nursery:
        nursery.start_soon(_visitors, persist, shop.rng)
        nursery.start_soon(_sessions, persist, shop)
