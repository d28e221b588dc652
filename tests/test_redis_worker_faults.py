"""Workers across the cluster under faults, with real owner processes.

An owner process (tests/cluster_owner.py) holds group ``"g"``'s worker; this
process asks it through the Redis backend, and the owner is SIGKILLed or
SIGSTOPped mid-request or between requests. Every run checks from the logs of
saves (tests/cluster_helpers.py) that tokens never went back (never two owners
saving at once), that nothing acknowledged was lost and nothing applied twice,
and that the caller was answered within the bound docs/redis.md states:
``lease_ttl + lease_ttl / 3 + timeout``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import coredis
import pytest
import trio

import trio_persist
from cluster_helpers import Logged, check_history, fresh, logs
from fault_proxy import FaultProxy
from redis_server import RedisServer
from stale_owner import Runs, read_runs
from trio_persist.redis import RedisBackend

OWNER = str(Path(__file__).with_name("cluster_owner.py"))
TTL = 1.0  # lease_ttl and timeout, in the owner and here
BOUND = TTL + TTL / 3 + TTL
SLACK = 2.0  # scheduling on a loaded machine: never a reason to fail
STALE_OWNER = str(Path(__file__).with_name("stale_owner.py"))
SLOW = 3.0  # a request the owner serves when it is paused: its sleep ends while paused


@asynccontextmanager
async def cluster(
    url: str,
    namespace: str,
    die_at: int = -1,
    owner_url: str | None = None,
    backend_url: str | None = None,
) -> AsyncIterator[tuple[Any, trio.Process, trio_persist.Persist[Any, Any, Any]]]:
    """A control client (logs at *url*), an owner process holding "g" (its backend
    at *owner_url*, else *backend_url*), and a persist here (at *backend_url*;
    both default to *url*)."""
    backend_url = backend_url or url
    with trio.fail_after(60):
        async with coredis.Redis.from_url(url) as control:
            owner = await trio.lowlevel.open_process(
                [sys.executable, OWNER, url, namespace, str(TTL), str(die_at),
                 owner_url or backend_url]
            )  # fmt: skip
            try:
                assert await control.blpop([f"{namespace}:ready"], timeout=30) is not None
                logged = Logged(control, namespace, url, owner=False)
                backend = RedisBackend(
                    backend_url, namespace=namespace, lease_ttl=TTL, timeout=TTL, workers="cluster"
                )
                async with trio_persist.open_persist(
                    logged, backend=backend, store=logged, durable=True, worker_timeout=600
                ) as persist:
                    yield control, owner, persist
            finally:
                with trio.CancelScope(shield=True):
                    if owner.returncode is None:
                        os.kill(owner.pid, signal.SIGCONT)
                        owner.kill()
                    await owner.wait()


async def ask_while(
    persist: trio_persist.Persist[Any, Any, Any],
    control: Any,
    namespace: str,
    fault: signal.Signals,
) -> tuple[Any, float]:
    """Ask a slow request, hit the owner with *fault* once it started; return the
    reply and the seconds from the fault to it."""
    got: dict[str, Any] = {}

    async def slow() -> None:
        got["reply"] = await persist.ask("g", {"id": "slow", "slow": 30}, default=fresh)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(slow)
        raw = await control.blpop([f"{namespace}:started"], timeout=30)
        assert raw is not None
        os.kill(int(raw[1]), fault)
        hit = trio.current_time()
    return got["reply"], trio.current_time() - hit


async def test_an_owner_killed_mid_request_is_replaced_within_the_bound(
    redis_url: str, namespace: str
) -> None:
    async with cluster(redis_url, namespace) as (control, _, persist):
        assert (await persist.ask("g", {"id": "a1"}))["n"] == 2  # served by the owner
        assert not persist.workers()
        reply, elapsed = await ask_while(persist, control, namespace, signal.SIGKILL)
        assert reply["n"] == 3
        assert reply["ids"][-2:] == ["a1", "slow"]
        assert elapsed < BOUND + SLACK
        assert persist.backend.statistics().worker_failovers == 1
        assert len(persist.workers()) == 1  # activated here, from the store
        saves = await check_history(control, namespace)
        assert [s["n"] for s in saves] == [1, 2, 3]


async def test_an_owner_paused_mid_request_is_replaced_and_never_saves_over_its_successor(
    redis_url: str, namespace: str
) -> None:
    async with cluster(redis_url, namespace) as (control, owner, persist):
        reply, elapsed = await ask_while(persist, control, namespace, signal.SIGSTOP)
        assert reply["n"] == 2
        assert elapsed < BOUND + SLACK
        os.kill(owner.pid, signal.SIGCONT)  # it wakes without its lease: stops, unsaved
        await trio.sleep(TTL)
        assert (await persist.ask("g", {"id": "after"}))["n"] == 3
        saves = await check_history(control, namespace)
        assert [s["n"] for s in saves] == [1, 2, 3]
        assert {s["pid"] for s in saves[1:]} == {os.getpid()}


async def test_an_owner_killed_between_requests_loses_no_queued_request(
    redis_url: str, namespace: str
) -> None:
    async with cluster(redis_url, namespace) as (control, owner, persist):
        assert (await persist.ask("g", {"id": "a1"}))["n"] == 2
        owner.kill()
        replies: list[int] = []

        async def ask(index: int) -> None:
            replies.append((await persist.ask("g", {"id": f"b{index}"}))["n"])

        with trio.fail_after(BOUND + SLACK):
            async with trio.open_nursery() as nursery:
                for index in range(3):
                    nursery.start_soon(ask, index)
        assert sorted(replies) == [3, 4, 5]
        await check_history(control, namespace)


async def test_a_request_applied_by_an_owner_that_died_before_answering_is_answered_from_the_store(
    redis_url: str, namespace: str
) -> None:
    async with cluster(redis_url, namespace, die_at=2) as (control, _, persist):
        with trio.fail_after(BOUND + SLACK):
            reply = await persist.ask("g", {"id": "once"})
        assert reply["n"] == 2
        assert reply["ids"][-1] == "once"
        assert (await persist.ask("g", {"id": "next"}))["n"] == 3
        runs = [r["id"] for r in await logs(control, namespace, "runs")]
        assert runs.count("once") == 1  # never applied twice
        await check_history(control, namespace)


async def test_an_owner_cut_off_from_redis_is_replaced_and_its_late_traffic_changes_nothing(
    redis_server: RedisServer, namespace: str
) -> None:
    proxy = FaultProxy(redis_server.port)
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.serve)
        async with cluster(redis_server.url, namespace, owner_url=proxy.url) as (
            control,
            _,
            persist,
        ):
            assert (await persist.ask("g", {"id": "a1"}))["n"] == 2
            proxy.stall()  # partitioned: every byte to and from the owner held
            with trio.fail_after(BOUND + SLACK):
                reply = await persist.ask("g", {"id": "b1"})
            assert reply["n"] == 3
            proxy.resume()  # its held traffic arrives late: a lost lease, nothing saved
            await trio.sleep(TTL)
            assert (await persist.ask("g", {"id": "b2"}))["n"] == 4
            saves = await check_history(control, namespace)
            assert [s["n"] for s in saves] == [1, 2, 3, 4]
            runs = [r["id"] for r in await logs(control, namespace, "runs")]
            assert runs.count("b1") == 1
        nursery.cancel_scope.cancel()


async def test_after_a_redis_restart_the_group_has_one_new_owner_and_no_acknowledged_change_lost(
    redis_url: str, namespace: str
) -> None:
    server = RedisServer()  # the backends' (the logs stay on the suite's server)
    server.start()
    try:
        async with cluster(redis_url, namespace, backend_url=server.url) as (
            control,
            _,
            persist,
        ):
            assert (await persist.ask("g", {"id": "a1"}))["n"] == 2
            server.stop()
            server.start()  # empty: every lease forgotten
            with trio.fail_after(BOUND + SLACK):
                reply = await persist.ask("g", {"id": "b1"})
            assert reply["n"] == 3  # from the store: a1's change kept
            saves = await check_history(control, namespace)
            assert [s["n"] for s in saves] == [1, 2, 3]
    finally:
        server.stop()


async def test_after_a_redis_restart_with_its_append_only_file_no_acknowledged_change_is_lost(
    redis_url: str, namespace: str, tmp_path: Path
) -> None:
    data = tmp_path / "aof"
    data.mkdir()
    server = RedisServer(data_dir=data)  # every write on disk before it is answered
    server.start()
    try:
        async with cluster(redis_url, namespace, backend_url=server.url) as (
            control,
            _,
            persist,
        ):
            assert (await persist.ask("g", {"id": "a1"}))["n"] == 2
            server.stop()
            # Back with its leases: the owner keeps the group if it renews in time,
            # else the group moves here, from the store; never two owners.
            server.start()
            with trio.fail_after(BOUND + SLACK):
                reply = await persist.ask("g", {"id": "b1"})
            assert reply["n"] == 3
            saves = await check_history(control, namespace)
            assert [s["n"] for s in saves] == [1, 2, 3]
    finally:
        server.stop()


async def test_a_resolve_reaches_the_owner_process_and_start_worker_names_it(
    redis_url: str, namespace: str
) -> None:
    async with cluster(redis_url, namespace) as (control, owner, persist):
        reply = await persist.resolve("g", {"id": "r1"})  # routed: the owner's state
        assert reply["ids"][-1] == "r1"
        assert reply["n"] == 2
        assert not persist.workers()
        with pytest.raises(trio_persist.NoWorker, match=f":{owner.pid}:"):
            await persist.start_worker(fresh(), "g")
        runs = [json.loads(raw) for raw in await control.lrange(f"{namespace}:runs", 0, -1)]
        assert {run["pid"] for run in runs} == {owner.pid}  # ran in the owner alone
        saves = await check_history(control, namespace)
        assert [s["n"] for s in saves] == [1, 2]


async def test_an_owner_woken_past_its_lease_never_starts_the_requests_it_had_queued(
    redis_url: str, namespace: str, tmp_path: Path
) -> None:
    # The owner serves a slow request with 3 more queued behind it, and is paused
    # until the slow one's sleep is over and another process took the group over
    # and served all 4. Woken, its worker would go on to the next queued request
    # at once, before its renewal task could tell it the lease was lost.
    path = str(tmp_path / "runs.jsonl")
    async with coredis.Redis.from_url(redis_url) as control:
        owner = await trio.lowlevel.open_process(
            [sys.executable, STALE_OWNER, redis_url, namespace, str(TTL), path]
        )
        try:
            assert await control.blpop([f"{namespace}:ready"], timeout=30) is not None
            backend = RedisBackend(
                redis_url, namespace=namespace, lease_ttl=TTL, timeout=TTL, workers="cluster"
            )
            device = Runs(path, backend, control, namespace, sleeps=False)
            async with trio_persist.open_persist(device, backend=backend) as persist:
                replies: dict[str, int] = {}

                async def ask(rid: str, slow: float = 0.0) -> None:
                    request = {"id": rid, "slow": slow}
                    replies[rid] = (await persist.ask("g", request, default=fresh))["n"]

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(ask, "slow", SLOW)
                    assert await control.blpop([f"{namespace}:started"], timeout=30) is not None
                    started = trio.current_time()
                    for rid in ("b0", "b1", "b2"):
                        nursery.start_soon(ask, rid)
                    assert await control.blpop([f"{namespace}:queued"], timeout=30) is not None
                    os.kill(owner.pid, signal.SIGSTOP)
                    paused = trio.current_time()
                    assert paused < started + SLOW  # mid-request
                assert trio.current_time() - paused < BOUND + SLACK
                assert sorted(replies.values()) == [1, 2, 3, 4]  # all served here, once
                await trio.sleep_until(started + SLOW + TTL / 2)  # its sleep is over
                os.kill(owner.pid, signal.SIGCONT)
                assert await control.blpop([f"{namespace}:gone"], timeout=30) is not None
                assert (await persist.ask("g", {"id": "after"}))["n"] == 5
        finally:
            with trio.CancelScope(shield=True):
                os.kill(owner.pid, signal.SIGCONT)
                owner.kill()
                await owner.wait()
    runs = read_runs(path)
    here = next(i for i, run in enumerate(runs) if run["pid"] == os.getpid())
    assert [run["id"] for run in runs[:here]] == [f"init-{owner.pid}", "slow"]
    assert runs[here]["token"] > runs[0]["token"]  # the group's new owner
    assert [run for run in runs[here:] if run["pid"] == owner.pid] == []  # nothing stale
