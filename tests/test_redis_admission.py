"""The Redis backend's admission control, alone (docs/redis.md, "Overload"):
slots for new calls, a line for them, and the refusal at the door."""

from __future__ import annotations

import random

import pytest
import trio
import trio.testing

import trio_persist
from trio_persist.redis._admission import Admission, Overloaded


async def enter(admission: Admission) -> float:
    assert admission.refusal() is None
    return await admission.enter("acquire")


async def test_calls_are_let_in_while_a_slot_is_free(autojump_clock: object) -> None:
    admission = Admission(limit=2, budget=1.0)
    for _ in range(2):
        with trio.testing.assert_no_checkpoints():
            assert admission.refusal() is None
            await admission.enter("acquire")
    assert admission.taken == 2
    admission.leave()
    assert admission.taken == 1
    assert admission.rejected == 0


async def test_a_new_call_is_refused_at_the_door_once_the_line_waited_half_the_budget(
    autojump_clock: object,
) -> None:
    # One slot, held; a caller waits for it. While the first in line has waited
    # less than half the budget (0.25 s of 0.5 s) a new call is let in to wait
    # too; after that it is refused at once, counted, naming max_pending.
    admission = Admission(limit=1, budget=0.5, where="Redis at here")
    await enter(admission)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(enter, admission)
        await trio.sleep(0.25)
        assert admission.waiting == 1
        assert admission.refusal() is None
        nursery.start_soon(admission.enter, "acquire")
        await trio.sleep(0.001)
        refusal = admission.refusal()
        assert isinstance(refusal, trio_persist.BackendUnavailable)
        assert not isinstance(refusal, Overloaded)  # never a reason to run locally either
        assert "Redis at here: 1 calls starting on Redis (max_pending)" in str(refusal)
        assert admission.rejected == 1
        admission.leave()  # the first in line gets the slot, and the line is short again
        await trio.testing.wait_all_tasks_blocked()
        assert admission.refusal() is None
        nursery.cancel_scope.cancel()


async def test_a_full_line_refuses_at_once(autojump_clock: object) -> None:
    admission = Admission(limit=1, budget=10.0)
    await enter(admission)
    async with trio.open_nursery() as nursery:
        for _ in range(8):  # 8 x max_pending callers in line
            nursery.start_soon(enter, admission)
        await trio.testing.wait_all_tasks_blocked()
        assert admission.waiting == 8
        assert admission.overloaded()
        assert isinstance(admission.refusal(), trio_persist.BackendUnavailable)
        nursery.cancel_scope.cancel()


async def test_a_caller_in_line_waits_at_most_the_budget(autojump_clock: object) -> None:
    admission = Admission(limit=1, budget=0.5)
    await enter(admission)
    start = trio.current_time()
    with pytest.raises(Overloaded, match=r"none freed within 0\.5 s"):
        await enter(admission)
    assert trio.current_time() - start == 0.5
    assert admission.rejected == 1
    assert admission.waiting == 0


async def test_calls_let_in_that_never_start_stop_counting_after_the_budget(
    autojump_clock: object,
) -> None:
    # Let in at the door, then abandoned before they asked for a slot: they
    # count as ahead of new calls for a budget at most, never for ever.
    admission = Admission(limit=1, budget=0.5)
    await enter(admission)
    for _ in range(8):
        assert admission.refusal() is None
    assert isinstance(admission.refusal(), trio_persist.BackendUnavailable)
    await trio.sleep(0.6)
    assert admission.refusal() is None
    assert admission.promised == 1


async def test_the_door_check_reads_the_line_without_counting_or_letting_anyone_in(
    autojump_clock: object,
) -> None:
    # It says what `refusal` would say, and leaves no trace: asked a thousand
    # times, nothing is counted and no call is expected.
    admission = Admission(limit=1, budget=0.5)
    assert not admission.overloaded()  # a slot is free
    await enter(admission)
    async with trio.open_nursery() as nursery:
        nursery.start_soon(enter, admission)
        await trio.sleep(0.25)
        assert not admission.overloaded()  # the first in line waited half the budget, no more
        await trio.sleep(0.001)
        with trio.testing.assert_no_checkpoints():
            assert all(admission.overloaded() for _ in range(1000))
        assert (admission.rejected, admission.promised, admission.waiting) == (0, 0, 1)
        assert admission.refusal() is not None
        admission.leave()
        await trio.testing.wait_all_tasks_blocked()
        assert not admission.overloaded()
        assert admission.refusal() is None
        nursery.cancel_scope.cancel()


async def test_the_door_check_forgets_calls_let_in_that_never_started_as_the_refusal_does(
    autojump_clock: object,
) -> None:
    admission = Admission(limit=1, budget=0.5)
    await enter(admission)
    for _ in range(8):
        assert admission.refusal() is None
    assert admission.overloaded()  # eight let in ahead: a full line
    await trio.sleep(0.6)
    assert not admission.overloaded()
    assert admission.promised == 8  # only `refusal` lets them go


async def test_the_door_check_always_says_what_the_next_refusal_does(
    autojump_clock: object,
) -> None:
    # Random let-ins, cancellations, slots given back and pauses: the check
    # and the refusal that follows it never disagree.
    rnd = random.Random(7)
    admission = Admission(limit=2, budget=0.5)
    held: list[None] = []
    scopes: list[trio.CancelScope] = []
    disagreements = []

    async def enter(scope: trio.CancelScope) -> None:
        with scope:
            try:
                await admission.enter("x")
            except trio_persist.BackendUnavailable:
                return
            held.append(None)

    async with trio.open_nursery() as nursery:
        for step in range(3000):
            draw = rnd.random()
            if draw < 0.35:
                said, refused = admission.overloaded(), admission.refusal() is not None
                if said != refused:
                    disagreements.append((step, said, refused))
                if not refused and rnd.random() < 0.7:
                    scopes.append(scope := trio.CancelScope())
                    nursery.start_soon(enter, scope)
            elif draw < 0.5 and held:
                held.pop()
                admission.leave()
            elif draw < 0.6 and scopes:
                scopes.pop(rnd.randrange(len(scopes))).cancel()
            else:
                await trio.sleep(rnd.choice([0, 0.01, 0.1, 0.3]))
        nursery.cancel_scope.cancel()
    assert disagreements == []
