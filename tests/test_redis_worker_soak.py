"""A soak of workers across the cluster: member processes ask random groups while
they are SIGKILLed (and restarted) and SIGSTOPped past their leases, at random.

Skipped unless ``TRIO_PERSIST_SOAK=SECONDS`` is set (the fault tests in
tests/test_redis_worker_faults.py cover each fault in the suite). At the end,
each group's stored state (which lists every request it applied) and the log
of acknowledged replies say that no acknowledged change was lost and that no
request was applied twice; the checker's own asks end within the bound. (The
order of the logged saves is not checked here: a process can be paused or
killed between a save and its log line.)
"""

from __future__ import annotations

import os
import random
import signal
import sys
from pathlib import Path
from typing import Any

import coredis
import pytest
import trio

import trio_persist
from cluster_helpers import Logged, ask_and_log, fresh, logs, state_store
from trio_persist.redis import RedisBackend

SECONDS = float(os.environ.get("TRIO_PERSIST_SOAK", "0"))
OWNER = str(Path(__file__).with_name("cluster_owner.py"))
TTL = 1.0
GROUPS = 8
MEMBERS = 3

pytestmark = pytest.mark.skipif(not SECONDS, reason="set TRIO_PERSIST_SOAK=SECONDS to run")


async def member(url: str, namespace: str) -> trio.Process:
    return await trio.lowlevel.open_process(
        [sys.executable, OWNER, url, namespace, str(TTL), "-1", url, str(GROUPS)]
    )


@pytest.mark.timeout(SECONDS + 180)
def test_workers_across_the_cluster_under_kills_and_pauses(redis_url: str, namespace: str) -> None:
    # Synchronous, running its own Trio loop: the suite's per-test deadline of
    # two minutes would cut a long soak short.
    trio.run(soak, redis_url, namespace)


async def soak(redis_url: str, namespace: str) -> None:
    rng = random.Random(os.environ.get("TRIO_PERSIST_SOAK_SEED", "1"))
    faults = {"kill": 0, "pause": 0}
    with trio.fail_after(SECONDS + 120):
        async with coredis.Redis.from_url(redis_url) as control:
            members = [await member(redis_url, namespace) for _ in range(MEMBERS)]
            try:
                logged = Logged(control, namespace, redis_url, owner=False)
                backend = RedisBackend(
                    redis_url, namespace=namespace, lease_ttl=TTL, timeout=TTL, workers="cluster"
                )
                async with trio_persist.open_persist(
                    logged, backend=backend, store=logged, durable=True, worker_timeout=600
                ) as persist:
                    end = trio.current_time() + SECONDS
                    index = 0
                    while trio.current_time() < end:
                        victim = rng.randrange(MEMBERS)
                        if rng.random() < 0.5:
                            members[victim].kill()
                            await members[victim].wait()
                            members[victim] = await member(redis_url, namespace)
                            faults["kill"] += 1
                        else:
                            os.kill(members[victim].pid, signal.SIGSTOP)
                            await trio.sleep(1.5 * TTL)
                            os.kill(members[victim].pid, signal.SIGCONT)
                            faults["pause"] += 1
                        for _ in range(3):  # the checker's asks: each within the bound
                            index += 1
                            group = f"s{rng.randrange(GROUPS)}"
                            with trio.fail_after(2 * TTL + TTL / 3 + 5.0):
                                await ask_and_log(persist, control, namespace, group, f"c-{index}")
                        await trio.sleep(rng.uniform(0, TTL))
            finally:
                for process in members:
                    with trio.CancelScope(shield=True):
                        os.kill(process.pid, signal.SIGCONT)
                        process.kill()
                        await process.wait()
            acked = await logs(control, namespace, "acked")
            saves = await logs(control, namespace, "saves")
            runs = await logs(control, namespace, "runs")
    async with state_store(redis_url, namespace) as store:
        states = {f"s{i}": await store.load(f"s{i}") or fresh() for i in range(GROUPS)}
    for group, state in states.items():
        twice = sorted({i for i in state["ids"] if state["ids"].count(i) > 1})
        for rid in twice:  # what the logs say about it (shown on failure)
            at = [i for i, s in enumerate(saves) if s["group"] == group and s["last"] == rid]
            print("TWICE", rid, [r for r in runs if r["id"] == rid])
            for i in at:
                print([s for s in saves[max(0, i - 3) : i + 3] if s["group"] == group])
        assert (twice, len(state["ids"])) == ([], state["n"]), group  # each applied once
    for reply in acked:  # every acknowledged change is in the state, at its place
        assert state_of(states, reply)["ids"][reply["n"] - 1] == reply["id"], reply
    print(f"soak: {SECONDS:.0f} s, {faults}, {len(acked)} acknowledged")
    assert faults["kill"] + faults["pause"] > 0


def state_of(states: dict[str, Any], reply: dict[str, Any]) -> Any:
    return states[reply["group"]]
