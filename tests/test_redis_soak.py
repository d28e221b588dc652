"""A soak under faults, checked from the logs of every call and every execution.

Three processes loop over shared requests while one is SIGSTOPped past its
lease and another is SIGKILLed. From their logs: no call outlived its bound,
every call got a value or a clear error, every value came from an execution
that finished, and no two executions of one request that handed out values
ran at the same time (one leader at a time: nothing stale was accepted).

It runs for a few seconds in CI; ``TRIO_PERSIST_SOAK=SECONDS`` runs it longer.
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

import trio

LOAD = str(Path(__file__).with_name("redis_load.py"))
SECONDS = float(os.environ.get("TRIO_PERSIST_SOAK", "4"))
CLEAR_ERRORS = {"BackendUnavailable", "LeaderDied"}
# timeout 0.5, lease 0.6: a follower's look every 0.2 s, each bounded by 0.5 s;
# a takeover within a TTL and a look; the device 20 ms; generous for a loaded CI.
BOUND = 5.0


def read(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


async def test_under_kills_and_pauses_every_call_ends_in_bound_with_one_leader_at_a_time(
    redis_url: str, namespace: str, tmp_path: Path
) -> None:
    logs = [tmp_path / f"load-{n}.jsonl" for n in range(3)]
    with trio.fail_after(SECONDS + 60):
        procs = [
            await trio.lowlevel.open_process(
                [sys.executable, LOAD, redis_url, namespace, str(SECONDS), "8", "10", str(log)]
            )
            for log in logs
        ]
        paused, killed, _ = procs
        await trio.sleep(SECONDS / 4)
        os.kill(paused.pid, signal.SIGSTOP)  # past its lease: others take over
        await trio.sleep(1.5)
        os.kill(paused.pid, signal.SIGCONT)
        await trio.sleep(SECONDS / 4)
        killed.kill()
        for proc in procs:
            await proc.wait()
    assert paused.returncode == 0
    assert procs[2].returncode == 0
    records = [r for log in logs for r in read(log)]
    calls = [r for r in records if r["kind"] == "call"]
    execs = [r for r in records if r["kind"] == "exec"]
    assert len(calls) > 100  # a real load

    # Every call got a value or a clear error, within its bound (a pause adds its length).
    for call in calls:
        assert "value" in call or call.get("error") in CLEAR_ERRORS, call
        allowed = BOUND + (1.5 if call["pid"] == paused.pid else 0)
        assert call["end"] - call["start"] < allowed, call

    # Every value handed out came from an execution that finished.
    finished = {(e["request"], e["token"]): e for e in execs if e["phase"] == "end"}
    started = {(e["request"], e["token"]): e for e in execs if e["phase"] == "start"}
    handed = {(c["request"], c["value"]["token"]) for c in calls if "value" in c}
    for request, token in handed:
        assert (request, token) in finished, (request, token)

    # One leader at a time: executions of one request whose values were handed
    # out never overlapped, and their tokens grow in the order they started.
    by_request: dict[str, list[tuple[float, float, int]]] = {}
    for request, token in handed:
        begin = started[(request, token)]["at"]
        by_request.setdefault(request, []).append((begin, finished[(request, token)]["at"], token))
    for request, runs in by_request.items():
        runs.sort()
        for (_, end, token), (begin, _, later) in itertools.pairwise(runs):
            assert end <= begin, (request, runs)
            assert later > token, (request, runs)
