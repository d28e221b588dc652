"""Durations: execution and wait times as bounded histograms, overall and per group."""

from __future__ import annotations

import random
from typing import Any

import pytest
import trio
import trio.lowlevel
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

import trio_persist
from trio_persist._core._histogram import Histogram, recent_quantiles


async def sleepy(base: Any, request: Any) -> Any:
    await trio.sleep(request)
    return request


def close(measured: float, exact: float) -> bool:
    """Within the histogram's precision (its buckets are ~3% wide)."""
    return exact <= measured <= exact * 1.07


async def test_execution_and_wait_times_are_measured(autojump_clock: object) -> None:
    async with trio_persist.open_persist(sleepy) as persist:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(persist.resolve, "b", 2)
            await trio.sleep(0.5)
            nursery.start_soon(persist.resolve, "b", 2)  # joins: waits 1.5 s
            nursery.start_soon(persist.resolve, "b", 1)
            nursery.start_soon(persist.resolve, "b", 3)
        stats = persist.statistics()
    assert stats.execution_max == 3
    assert close(stats.execution_p50, 2)
    assert close(stats.execution_p99, 3)
    assert stats.wait_max == 3  # waits: 2, 1.5 (joined at 0.5), 1 and 3 (own groups)
    assert close(stats.wait_p50, 1.5)


async def test_a_caller_cancelled_as_its_execution_ends_is_counted_once(
    autojump_clock: object,
) -> None:
    async with trio_persist.open_persist(sleepy) as persist:
        with trio.move_on_after(1):  # expires with the device's sleep
            await persist.resolve("b", 1)
        await persist.wait_quiet()
        stats = persist.statistics()
        durations = persist.durations()
    assert (stats.waiters, stats.executions) == (0, 1)
    # Both deadlines fall at t=1, and Trio orders equal deadlines by no rule we
    # control: the device either returned (one execution sampled) or was
    # abandoned with its caller (none). Either way the wait is counted at most
    # once, and never while it still waits.
    assert durations.wait.count <= durations.execution.count <= 1


async def test_the_first_caller_waits_its_execution_and_joiners_less(
    autojump_clock: object,
) -> None:
    async with trio_persist.open_persist(sleepy) as persist:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(persist.resolve, "b", 2)
            await trio.sleep(0.5)
            nursery.start_soon(persist.resolve, "b", 2)
        durations = persist.durations()
        stats = persist.statistics()
    assert (durations.execution.count, durations.wait.count) == (1, 2)
    assert durations.wait.sum == 2 + 1.5
    assert stats.wait_max == stats.execution_max == 2


async def test_a_worker_reports_its_recent_execution_times(autojump_clock: object) -> None:
    async with trio_persist.open_persist(sleepy, static_worker=True) as persist:
        worker = await persist.start_worker("state")
        for seconds in (1, 1, 1, 3):
            await persist.resolve("state", seconds)
        [record] = persist.snapshot()
        assert (record.execution_p50, record.execution_p99) == (1, 3)
        assert worker.statistics().served == 4


def test_the_histogram_keeps_quantiles_in_bounded_memory() -> None:
    rng = random.Random(7)
    samples = [rng.expovariate(10) for _ in range(100_000)]
    histogram = Histogram()
    for sample in samples:
        histogram.record(sample)
    ordered = sorted(samples)
    for q in (0.5, 0.9, 0.99):
        exact = ordered[int(q * len(ordered))]
        assert histogram.quantile(q) == pytest.approx(exact, rel=0.07)
    assert histogram.maximum == max(samples)
    assert histogram.count == 100_000
    assert histogram.buckets < 600  # of a fixed 1,665: memory does not grow with samples


def test_empty_and_tiny_durations_are_handled() -> None:
    histogram = Histogram()
    assert histogram.quantile(0.5) == 0.0
    assert histogram.mean == 0.0
    histogram.record(0.0)
    histogram.record(-1.0)
    histogram.record(1e-15)
    assert histogram.quantile(0.99) <= 1e-15
    assert recent_quantiles(()) == (0.0, 0.0)
    assert recent_quantiles((5.0,)) == (5.0, 5.0)


async def test_the_ninetieth_percentiles_are_those_of_the_samples(autojump_clock: object) -> None:
    async with trio_persist.open_persist(sleepy) as persist:
        async with trio.open_nursery() as nursery:
            for seconds in range(1, 11):  # ten groups, each waited for and run alone
                nursery.start_soon(persist.resolve, "b", seconds)
        stats = persist.statistics()
    assert close(stats.execution_p90, 9)
    assert close(stats.wait_p90, 9)


async def test_an_observer_is_told_how_long_an_abandoned_execution_ran(
    autojump_clock: object,
) -> None:
    ended: list[tuple[str, float]] = []

    class Watcher:
        def execution_started(self, kind: str, group: Any, label: str, job: Any) -> None:
            pass

        def joined(self, kind: str, group: Any, job: Any) -> None:
            pass  # pragma: no cover - nobody joins here

        def execution_ended(
            self, kind: str, group: Any, execution: Any, outcome: str, seconds: float
        ) -> None:
            ended.append((outcome, seconds))

    async with trio_persist.open_persist(sleepy) as persist:
        persist.add_observer(Watcher())
        await trio.sleep(1)  # the clock does not start at zero for the execution
        with trio.move_on_after(3):
            await persist.resolve("b", 60)  # its only caller leaves after 3 s
        await persist.wait_quiet()
    assert ended == [("abandoned", 3)]


async def test_an_observer_is_told_each_execution_that_ends(autojump_clock: object) -> None:
    ended: list[tuple[str, float]] = []

    class Watcher:
        def execution_started(self, kind: str, group: Any, label: str, job: Any) -> None:
            pass

        def joined(self, kind: str, group: Any, job: Any) -> None:
            pass  # pragma: no cover - nobody joins here

        def execution_ended(
            self, kind: str, group: Any, execution: Any, outcome: str, seconds: float
        ) -> None:
            ended.append((outcome, seconds))

    async with trio_persist.open_persist(sleepy) as persist:
        persist.add_observer(Watcher())
        await persist.resolve("b", 2)
    assert ended == [("ok", 2)]


@pytest.mark.parametrize("owner", ["flight", "worker"])
async def test_pending_duration_samples_stay_few_however_many_executions(owner: str) -> None:
    # Samples are appended on the hot path and folded in every few hundred
    # executions, by flights and workers alike: memory stays bounded.
    async with trio_persist.open_persist(echo_after_a_checkpoint, static_worker=True) as persist:
        if owner == "worker":
            await persist.start_worker("state")
        for n in range(1000):
            await persist.resolve("state", n)
        timings = persist._core.timings  # reaching in: nothing public shows unfolded samples
        assert timings.execution.pending < 256
        assert timings.wait.pending < 256
        assert persist.statistics().executions == 1000


async def echo_after_a_checkpoint(base: Any, request: Any) -> Any:
    await trio.lowlevel.checkpoint()
    return request


async def test_a_worker_reports_the_times_of_its_last_sixty_four_requests(
    autojump_clock: object,
) -> None:
    async def device(state: Any, seconds: float) -> Any:
        await trio.sleep(seconds)
        return state

    async with trio_persist.open_persist(device, static_worker=True) as persist:
        await persist.start_worker("s")
        for _ in range(100):  # slow ones first: they roll out of the window
            await persist.resolve("s", 5)
        for _ in range(64):
            await persist.resolve("s", 1)
        [record] = persist.snapshot()
    assert (record.execution_p50, record.execution_p99) == (1, 1)


def test_each_sample_is_folded_into_the_bucket_whose_bounds_hold_it() -> None:
    # Folding counts buckets in bulk; each sample still lands where its
    # bucket's bounds say: below its upper bound, at or above the last.
    from bisect import bisect_right

    from trio_persist._core._histogram import _BUCKETS, _UPPERS

    rng = random.Random(3)
    samples = [rng.lognormvariate(-10, 4) for _ in range(5000)]
    samples += [0.0, -1.0, 1e-300, 2.0**-30, 2.0**-29, 1.0, 2.0**22, 1e300]
    histogram = Histogram()
    for sample in samples:
        histogram.add(sample)
    histogram.settle()
    expected = [0] * _BUCKETS
    for sample in samples:
        expected[0 if sample <= 0 else bisect_right(_UPPERS, sample)] += 1
    assert histogram._counts == expected  # reaching in: the buckets themselves
    assert histogram.total == sum(sample for sample in samples if sample > 0)


async def test_a_flight_reports_each_of_its_execution_times(autojump_clock: object) -> None:
    # A flight's first execution time is kept without a list; the second makes one.
    class OneGroup:
        def group(self, base: Any, request: Any) -> Any:
            return base

        async def resolve(self, base: Any, seconds: float) -> Any:
            await trio.sleep(seconds)
            return seconds

    seen = []
    async with trio_persist.open_persist(OneGroup()) as persist, trio.open_nursery() as nursery:
        for seconds in (1, 3, 2):  # one flight runs them one after another
            nursery.start_soon(persist.resolve, "group", seconds)
            await trio.testing.wait_all_tasks_blocked()
        await trio.sleep(1.5)  # inside the second execution
        [record] = persist.snapshot()
        seen.append((record.execution_p50, record.execution_p99))
        await trio.sleep(3)  # inside the third
        [record] = persist.snapshot()
        seen.append((record.execution_p50, record.execution_p99))
    assert seen == [(1, 1), (1, 3)]


@given(
    st.lists(
        st.one_of(
            st.floats(min_value=-1.0, max_value=1e300),
            st.sampled_from([0.0, 2.0**-30, 1.0, 2.0**22, 5e-6, 5.1e-6, 7e-6]),
        ),
        min_size=1,
        max_size=300,
    )
)
def test_samples_folded_in_bulk_land_where_one_at_a_time_would(samples: list[float]) -> None:
    # Clustered samples are counted a bucket at a time, scattered ones one by
    # one: either way each lands in the bucket whose bounds hold it.
    from bisect import bisect_right

    from trio_persist._core._histogram import _BUCKETS, _UPPERS

    histogram, other = Histogram(), Histogram()
    histogram.fold(samples, other)
    expected = [0] * _BUCKETS
    for sample in samples:
        expected[bisect_right(_UPPERS, sample)] += 1
    for each in (histogram, other):
        assert each._counts == expected
        assert each.total == sum(sample for sample in samples if sample > 0)
        assert each.maximum == max(0.0, *samples)
