"""Virtual worker invariants under random schedules (Hypothesis, virtual time).

Asks and resolves to a few groups under ``max_workers=2`` (so workers are
evicted all the time), mixed with ``stop()``, ``forget``, idle timeouts,
failing and crashing requests, cancelled callers, and loads and saves that
start and stop failing. Whatever the order:

* no ask runs without its worker: the device always gets its group's state,
  never a flight's base;
* with ``durable=True``, no request runs against any state but the one last
  saved, and each group's saved state is the fold of its acknowledged
  requests, in order;
* every call ends with exactly one outcome, none hangs (the clock would jump
  to the test's bound), and nothing is left registered when all is quiet.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Hashable
from typing import Any

import attrs
import trio
import trio.testing
from hypothesis import given, settings
from hypothesis import strategies as st

import trio_persist
from virtual_helpers import Boom, Crash, Scripted


@attrs.frozen
class Op:
    at: float
    kind: str  # ask, resolve, stop, forget, break_load, fix_load, break_save, fix_save
    group: int
    behaviour: str  # ok, fail, crash
    sleep: float
    cancel_after: float | None


ops = st.lists(
    st.builds(
        Op,
        at=st.sampled_from([0, 0.5, 1, 2, 3, 5, 8]),
        kind=st.sampled_from(
            ["ask"] * 6
            + ["resolve", "stop", "forget", "break_load", "fix_load", "break_save", "fix_save"]
        ),
        group=st.integers(0, 3),
        behaviour=st.sampled_from(["ok", "ok", "ok", "ok", "fail", "crash"]),
        sleep=st.sampled_from([0, 0.5, 1]),
        cancel_after=st.none() | st.sampled_from([0, 0.25, 0.75, 1.5]),
    ),
    min_size=4,
    max_size=40,
)


class Ledger:
    """Each state is its group and the ids of the requests applied to it, in order."""

    def __init__(self, store: Scripted, durable: bool) -> None:
        self.store = store
        self.durable = durable
        self.violations: list[str] = []

    def group(self, base: Any, request: Any) -> Hashable:
        return request["g"]

    async def resolve(self, state: Any, request: Any) -> Any:
        if not (isinstance(state, dict) and state.get("g") == request["g"]):
            if request["via"] == "ask":
                self.violations.append(f"ask {request['id']} ran without its worker: {state!r}")
            await trio.sleep(request["sleep"])
            return {"flight": request["id"]}
        if self.durable:
            saved = self.store.latest.get(request["g"], {"ids": []})["ids"]
            if state["ids"] != saved:
                self.violations.append(f"{request['id']} ran on {state['ids']}, saved {saved}")
        await trio.sleep(request["sleep"])
        if request["behaviour"] == "fail":
            raise Boom("failed")
        if request["behaviour"] == "crash":
            raise Crash()
        return {"g": state["g"], "ids": [*state["ids"], request["id"]]}


@settings(deadline=None, max_examples=int(os.environ.get("TRIO_PERSIST_EXAMPLES", "1000")))
@given(ops, st.booleans(), st.sampled_from([None, 1.0]))
def test_asks_run_only_at_their_worker_and_durable_states_fold_acknowledged_requests(
    schedule: list[Op], durable: bool, checkpoint_interval: float | None
) -> None:
    store = Scripted()
    device = Ledger(store, durable)
    outcomes: dict[int, list[str]] = {}
    # The ids each group's acknowledged transitions hold, in order of their replies.
    acknowledged: dict[int, list[list[int]]] = {}

    async def call(persist: trio_persist.Persist[Any, Any, Any], index: int, op: Op) -> None:
        got = outcomes.setdefault(index, [])
        request = {"g": op.group, "id": index, "via": op.kind}
        request |= {"behaviour": op.behaviour, "sleep": op.sleep}
        with trio.CancelScope() as scope:
            if op.cancel_after is not None:
                scope.deadline = trio.current_time() + op.cancel_after
            try:
                if op.kind == "ask":
                    reply = await persist.ask(op.group, request, default=lambda: fresh(op.group))
                else:
                    reply = await persist.resolve(None, request, share=False)
                if "ids" in reply:
                    acknowledged.setdefault(op.group, []).append(reply["ids"])
                got.append("reply")
            except (Boom, trio_persist.ActivationFailed, trio_persist.SaveFailed):
                got.append("error")
            except trio_persist.LeaderDied as exc:
                got.append("crashed" if isinstance(exc.__cause__, Crash) else "lost")
        if scope.cancelled_caught:
            got.append("cancelled")

    async def operate(persist: trio_persist.Persist[Any, Any, Any], index: int, op: Op) -> None:
        await trio.sleep(op.at)
        if op.kind in ("ask", "resolve"):
            await call(persist, index, op)
        elif op.kind == "stop":
            owner = persist.registry.lookup(op.group)
            if isinstance(owner, trio_persist.Worker):
                await owner.stop()
        elif op.kind == "forget":
            persist.forget(op.group)
        else:
            failing = store.failing_loads if "load" in op.kind else store.failing_saves
            (failing.add if op.kind.startswith("break") else failing.discard)(op.group)

    async def scenario() -> None:
        async with trio_persist.open_persist(
            device,
            worker_timeout=4,
            max_workers=2,
            store=store,
            durable=durable,
            checkpoint_interval=checkpoint_interval,
        ) as persist:
            async with trio.open_nursery() as nursery:
                for index, op in enumerate(schedule):
                    nursery.start_soon(operate, persist, index, op)
            store.failing_saves.clear()
            await trio.sleep(10)  # every worker idles out
            assert persist.workers() == ()
            assert len(persist.registry) == 0
            stats = persist.statistics()
            assert (stats.in_flight, stats.waiters, stats.workers) == (0, 0, 0)
            # Reaching in: no public call counts the tasks of the persist's nursery.
            assert len(persist._core.nursery.child_tasks) == persist._runners.idle

    async def main() -> None:
        # Virtual time: a call left hanging makes the clock jump here and fail.
        with trio.fail_after(3600):
            await scenario()

    trio.run(main, clock=trio.testing.MockClock(autojump_threshold=0))
    assert device.violations == []
    assert all(len(got) == 1 for got in outcomes.values()), outcomes
    assert not any("lost" in got for got in outcomes.values()), outcomes
    if durable:
        for group, chain in acknowledged.items():
            assert store.latest[group]["ids"] == chain[-1]  # the fold, saved
            for before, after in itertools.pairwise(chain):
                assert after[: len(before)] == before
                assert len(after) == len(before) + 1


def fresh(group: int) -> dict[str, Any]:
    return {"g": group, "ids": []}
