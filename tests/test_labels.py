"""Readable groups: labels from a hook, or a short safe rendering of the request."""

from __future__ import annotations

import logging
from typing import Any

import pytest
import trio
import trio.testing

import trio_persist
from trio_persist.testing import RecordingDevice


async def test_a_digest_group_is_labelled_by_its_request(autojump_clock: object) -> None:
    async def slow(base: Any, request: Any) -> Any:
        await trio.sleep(10)

    async with trio_persist.open_persist(slow) as persist, trio.open_nursery() as nursery:
        nursery.start_soon(persist.resolve, "db", {"user": "ann"})
        await trio.testing.wait_all_tasks_blocked()
        [record] = persist.snapshot()
        assert len(str(record.group)) == 32  # a digest...
        assert record.label == "{'user': 'ann'}"  # ...shown by what it asks
        nursery.cancel_scope.cancel()


async def test_a_label_hook_names_groups_and_a_failing_one_is_counted(
    autojump_clock: object,
) -> None:
    class Labelled:
        async def resolve(self, base: Any, request: Any) -> Any:
            await trio.sleep(10)

        def label(self, base: Any, request: Any) -> str:
            if request == "bad":
                raise KeyError("no label")
            return f"user {request} \x1b[2J"

    async with trio_persist.open_persist(Labelled()) as persist, trio.open_nursery() as nursery:
        nursery.start_soon(persist.resolve, "db", "ann")
        nursery.start_soon(persist.resolve, "db", "bad")
        await trio.testing.wait_all_tasks_blocked()
        labels = sorted(record.label for record in persist.snapshot())
        assert labels == ["'bad'", "user ann �[2J"]  # literal, and the default for "bad"
        assert persist.statistics().hook_failures == 1
        nursery.cancel_scope.cancel()


async def test_workers_and_wrapped_functions_have_readable_labels(autojump_clock: object) -> None:
    async def lookup(sku: str, *, region: str = "eu") -> str:
        await trio.sleep(10)
        return sku

    class Sessions:
        def group(self, base: Any, request: Any) -> Any:
            return f"session/{base['user']}" if request is None else f"session/{request}"

        async def resolve(self, base: Any, request: Any) -> Any:
            return base  # pragma: no cover

    async with trio_persist.open_persist(Sessions()) as persist, trio.open_nursery() as nursery:
        await persist.start_worker({"user": "ann"})
        nursery.start_soon(persist.wrap(lookup, name="lookup"), "book-1")
        await trio.testing.wait_all_tasks_blocked()
        labels = {record.kind: record.label for record in persist.snapshot()}
        assert labels == {"worker": "session/ann", "flight": "lookup('book-1')"}
        nursery.cancel_scope.cancel()


async def test_labels_reach_the_frames(tmp_path: Any) -> None:
    device = RecordingDevice()
    path = str(tmp_path / "m.sock")
    async with trio_persist.open_persist(device) as persist, trio.open_nursery() as nursery:
        device.block()
        nursery.start_soon(persist.resolve, "db", "alice")
        await device.wait_running()
        await nursery.start(persist.serve_monitor, path)
        from trio_persist._cli._tui import read_frames

        async with await trio.open_unix_socket(path) as stream:
            frame = await read_frames(stream).__anext__()
        assert frame["snapshot"][0]["label"] == "'alice'"
        device.release()
        nursery.cancel_scope.cancel()


async def test_a_label_costs_a_few_members_whatever_the_value(autojump_clock: object) -> None:
    # The label is built once per group, from a handful of members: a snapshot
    # (the monitor takes one a second) never renders a whole large value.
    rendered = 0

    class Item:
        def __repr__(self) -> str:
            nonlocal rendered
            rendered += 1
            return "item"

    async with trio_persist.open_persist(RecordingDevice(), static_worker=True) as persist:
        await persist.start_worker([Item() for _ in range(10_000)], group=("big", 1))
        for _ in range(3):
            [record] = persist.snapshot()
        assert record.label.startswith("[item, item")
        assert len(record.label) <= 80
    assert rendered <= 10


async def test_a_failing_label_hook_is_counted_each_time_and_logged_once(
    autojump_clock: object, caplog: pytest.LogCaptureFixture
) -> None:
    class Device(RecordingDevice):
        def label(self, base: Any, request: Any) -> str:
            raise ValueError("no label today")

    device = Device()
    device.block()
    async with trio_persist.open_persist(device) as persist, trio.open_nursery() as nursery:
        for n in range(50):
            nursery.start_soon(persist.resolve, "db", n)
        await trio.testing.wait_all_tasks_blocked()
        for _ in range(3):
            assert len(persist.snapshot()) == 50
        assert persist.statistics().hook_failures == 50  # once per group: then kept
        device.release()
    logged = [r for r in caplog.records if r.name == "trio_persist" and r.levelno >= logging.ERROR]
    assert len(logged) == 2  # the first, in full; then one summary when the persist closed
    assert logged[0].exc_info is not None
    assert "49 more" in logged[1].getMessage()


def test_a_printable_label_is_already_safe_so_it_is_shown_as_the_hook_wrote_it() -> None:
    # Why a short label for which `str.isprintable` is true skips the rendering
    # that makes text safe: that rendering changes no printable character.
    from trio_persist._text import literal

    changed = (code for code in range(0x110000) if literal(chr(code)) != chr(code))
    unsafe = [code for code in changed if chr(code).isprintable()]
    assert unsafe == []


class LabelEars:
    """An observer that keeps the label of each execution it is told starts."""

    def __init__(self) -> None:
        self.labels: list[str] = []

    def execution_started(self, kind: str, group: Any, label: str, job: Any) -> None:
        self.labels.append(label)

    def joined(self, *args: Any) -> None:
        pass  # pragma: no cover

    def execution_ended(self, *args: Any) -> None:
        pass


async def test_an_observer_is_told_a_label_made_safe(autojump_clock: object) -> None:

    class Labelled(RecordingDevice):
        def label(self, base: Any, request: Any) -> str:
            return request

    async with trio_persist.open_persist(Labelled()) as persist:
        told = LabelEars()
        persist.add_observer(told)
        for request in ("plain", "bell\x07", "x" * 500):
            await persist.resolve("b", request)
    assert told.labels[0] == "plain"
    assert told.labels[1] == "bell\ufffd"
    assert len(told.labels[2]) < 500


async def test_an_observer_is_told_each_label_made_safe_however_often_the_hook_repeats_it(
    autojump_clock: object,
) -> None:
    unsafe = "bell\x07"  # the same object each time: made safe each time

    class Labelled(RecordingDevice):
        def label(self, base: Any, request: Any) -> Any:
            return {"plain": "plain", "unsafe": unsafe, "number": 7}[request[:-1]]

    async with trio_persist.open_persist(Labelled()) as persist:
        told = LabelEars()
        persist.add_observer(told)
        for request in ("plain1", "plain2", "unsafe1", "unsafe2", "number1", "plain3"):
            await persist.resolve("b", request)
        # A hook that returns no str is a failing hook: counted, and no label told.
        assert persist.statistics().hook_failures == 1
    assert told.labels == ["plain", "plain", "bell\ufffd", "bell\ufffd", "", "plain"]


class Hostile(str):
    """A str whose own methods raise: a label hook's return value is user code."""

    def __len__(self) -> int:
        raise RuntimeError("len")

    def __getitem__(self, index: Any) -> Any:
        raise RuntimeError("getitem")


async def test_a_label_that_is_a_str_subclass_is_shown_as_its_plain_text_and_harms_nothing(
    autojump_clock: object,
) -> None:
    class Labelled(RecordingDevice):
        def label(self, base: Any, request: Any) -> str:
            return Hostile(request)

    device = Labelled()
    async with trio_persist.open_persist(device) as persist:
        told = LabelEars()
        persist.add_observer(told)
        assert await persist.resolve("b", "r1") is not None
        device.block()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(persist.resolve, "b", "slow")
            await trio.testing.wait_all_tasks_blocked()
            [record] = persist.snapshot()  # the flight's label made for the operator
            assert (record.label, type(record.label)) == ("slow", str)
            nursery.cancel_scope.cancel()
    assert told.labels == ["r1", "slow"]
    assert all(type(label) is str for label in told.labels)


async def test_an_observer_is_told_no_label_when_the_hook_raises_and_the_call_is_answered(
    autojump_clock: object,
) -> None:
    class Labelled(RecordingDevice):
        def label(self, base: Any, request: Any) -> str:
            if request == "bad":
                raise KeyError("no label")
            return str(request)

    async with trio_persist.open_persist(Labelled()) as persist:
        told = LabelEars()
        persist.add_observer(told)
        for request in ("ok", "bad", "ok"):
            assert await persist.resolve("b", request) is not None
        assert persist.statistics().hook_failures == 1
    assert told.labels == ["ok", "", "ok"]


async def test_an_observer_that_raises_as_a_labelled_execution_starts_is_counted_each_time(
    autojump_clock: object,
) -> None:
    class Labelled(RecordingDevice):
        def label(self, base: Any, request: Any) -> str:
            return "labelled"

    class Broken(LabelEars):
        def execution_started(self, kind: str, group: Any, label: str, job: Any) -> None:
            super().execution_started(kind, group, label, job)
            raise RuntimeError("started")

    async with trio_persist.open_persist(Labelled()) as persist:
        told = Broken()
        persist.add_observer(told)
        for request in ("x", "y"):
            assert await persist.resolve("b", request) == ("b", request)
        assert persist.statistics().hook_failures == 2
    assert told.labels == ["labelled", "labelled"]


async def test_each_queued_execution_is_named_by_its_own_label_whether_or_not_a_snapshot_was_taken(
    autojump_clock: object,
) -> None:
    class OneGroup:
        async def resolve(self, base: Any, request: Any) -> Any:
            await trio.sleep(1)
            return request

        def group(self, base: Any, request: Any) -> str:
            return "g"

        def label(self, base: Any, request: Any) -> str:
            return f"req {request}"

    async with trio_persist.open_persist(OneGroup()) as persist:
        told = LabelEars()
        persist.add_observer(told)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(persist.resolve, "b", "one")
            await trio.testing.wait_all_tasks_blocked()
            nursery.start_soon(persist.resolve, "b", "two")
            await trio.testing.wait_all_tasks_blocked()
            assert [record.label for record in persist.snapshot()] == ["req one"]
            await trio.sleep(1.5)
            assert [record.label for record in persist.snapshot()] == ["req two"]
    assert told.labels == ["req one", "req two"]
