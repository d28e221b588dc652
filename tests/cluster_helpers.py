"""What the cluster-worker tests and their owner processes share: a durable
counter device and a store (a `RedisStore`) that logs every save it made (and
can die there).

Every execution and every successful save is appended to Redis lists, so a
test checks from the logs that one group never had two owners saving at once
(tokens never go back), that nothing acknowledged was lost and nothing applied
twice.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
from collections.abc import Hashable
from typing import Any

import trio

from trio_persist.redis import RedisStore
from trio_persist.stores import StateRecord


def fresh() -> dict[str, Any]:
    return {"n": 0, "ids": []}


def state_store(url: str, namespace: str) -> RedisStore:
    """Where the states live: a `RedisStore` on the logs' server (which the fault
    tests never restart: the deployment's store keeps its data, docs/stores.md)."""
    return RedisStore(url, namespace=namespace + ":states")


class Logged:
    """A device and a store for one process, logging to Redis lists under *namespace*."""

    def __init__(
        self, control: Any, namespace: str, url: str, die_at: int = -1, owner: bool = True
    ) -> None:
        self.owner = owner  # only the owner process sleeps on a slow request
        self.control = control
        self.namespace = namespace
        self.store = state_store(url, namespace)
        self.die_at = die_at  # SIGKILL this process right after saving this count

    async def resolve(self, state: Any, request: Any) -> Any:
        await self.control.rpush(
            f"{self.namespace}:runs", [json.dumps({"pid": os.getpid(), "id": request["id"]})]
        )
        if request.get("slow") and self.owner:
            await self.control.rpush(f"{self.namespace}:started", [str(os.getpid())])
            await trio.sleep(request["slow"])
        return {"n": state["n"] + 1, "ids": [*state["ids"], request["id"]]}

    def group(self, base: Any, request: Any) -> Any:
        """``resolve(group, request)`` is the group's worker's (routed like an ask)."""
        return base

    # -- the store, delegated and logged ---------------------------------------------

    async def __aenter__(self) -> Logged:
        await self.store.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.store.__aexit__(*exc)

    async def load(self, group: Hashable) -> Any:
        return await self.store.load(group)

    async def save(self, group: Hashable, state: Any) -> None:
        await self.store.save(group, state)

    async def delete(self, group: Hashable) -> None:
        await self.store.delete(group)

    async def load_record(self, group: Hashable) -> StateRecord | None:
        return await self.store.load_record(group)

    async def save_record(self, group: Hashable, record: StateRecord) -> None:
        await self.store.save_record(group, record)
        ids = record.state["ids"]
        entry = {
            "pid": os.getpid(),
            "token": record.token,
            "n": record.state["n"],
            "group": group,
            "last": ids[-1] if ids else None,
        }
        await self.control.rpush(f"{self.namespace}:saves", [json.dumps(entry)])
        if record.state["n"] == self.die_at:
            os.kill(os.getpid(), signal.SIGKILL)  # saved, never answered


async def logs(control: Any, namespace: str, name: str) -> list[dict[str, Any]]:
    return [json.loads(raw) for raw in await control.lrange(f"{namespace}:{name}", 0, -1)]


async def check_history(control: Any, namespace: str) -> list[dict[str, Any]]:
    """The saves, checked per group: tokens never go back (never two owners
    saving at once), each save adds at most one request to the last (nothing
    lost), and no request is applied by two saves (nothing applied twice)."""
    saves = await logs(control, namespace, "saves")
    for group in {s["group"] for s in saves}:
        mine = [s for s in saves if s["group"] == group]
        applied: dict[Any, int] = {}
        for before, after in itertools.pairwise(mine):
            assert after["token"] >= before["token"], (before, after)
            assert after["n"] in (before["n"], before["n"] + 1), (before, after)
        for save in mine:
            assert applied.setdefault(save["last"], save["n"]) == save["n"], save
    return saves


async def ask_and_log(persist: Any, control: Any, namespace: str, group: str, rid: str) -> None:
    """Ask *group* for request *rid* and log the acknowledged count."""
    reply = await persist.ask(group, {"id": rid}, default=fresh)
    entry = {"group": group, "id": rid, "n": reply["n"]}
    await control.rpush(f"{namespace}:acked", [json.dumps(entry)])
