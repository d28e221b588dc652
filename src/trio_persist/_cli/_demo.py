"""``trio-persist demo``: an embedded persist under a realistic workload.

A small web shop: bursts of visitors ask for the same product pages at once
(deduplicated flights, some of which fail), and each signed-in user has a
session worker that keeps the user's state in memory, times out when the user
goes quiet, saves its state, and is restored when the user comes back.
``max_workers`` keeps the number of sessions bounded (evicting the least
recently used).
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Hashable
from typing import Any

import trio

from .._core._persist import Persist

__all__ = ["Shop", "workload"]

PAGES = 12
USERS = 8


class Shop:
    """The demo's device: product pages and per-user sessions."""

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.saved: dict[Hashable, Any] = {}

    def group(self, base: Any, request: Any) -> Hashable:
        if isinstance(base, dict):  # a session state
            return f"session/{base['user']}"
        if base == "session":
            return f"session/{request['user']}"
        return f"page/{request}"

    async def resolve(self, base: Any, request: Any) -> Any:
        if isinstance(base, dict):  # a session worker serving its user
            await trio.sleep(self.rng.uniform(0.02, 0.1))
            return {**base, "views": base["views"] + 1, "last": request["page"]}
        await trio.sleep(self.rng.uniform(0.3, 0.9))  # render a product page
        if self.rng.random() < 0.05:
            raise TimeoutError(f"inventory service timed out for page {request}")
        return f"<html>product {request}</html>"

    async def on_idle(self, group: Hashable, state: Any) -> None:
        self.saved[group] = state

    async def restore(self, group: Hashable) -> Any:
        return self.saved.get(group)


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
        group = f"session/u{user}"
        # The session's worker: live, restored from its saved state, or fresh.
        await persist.get_worker(
            group, default=lambda: {"user": f"u{user}", "views": 0, "last": None}
        )
        await persist.resolve("session", {"user": f"u{user}", "page": rng.randint(1, PAGES)})

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
