"""Hooks that fail are seen: counted in statistics and logged to ``trio_persist``.

Operator events (hook failures, crashes) are logged at ERROR with their
traceback; an ordinary request error, which its callers receive, never goes
above DEBUG. The library installs no handler of its own.
"""

from __future__ import annotations

import logging
import subprocess
import sys
from typing import Any

import pytest
import trio
import trio.testing

import trio_persist


class Saving:
    """A device whose hooks fail."""

    def __init__(self) -> None:
        self.served: list[Any] = []

    def group(self, base: Any, request: Any) -> Any:
        return "g"

    async def resolve(self, base: Any, request: Any) -> Any:
        if request == "crash":
            raise GeneratorExit  # a BaseException: a crash
        if request == "fail":
            raise ValueError("an ordinary error")
        await trio.sleep(1)
        return base

    async def on_idle(self, group: Any, state: Any) -> None:
        raise OSError("disk full")

    async def restore(self, group: Any) -> Any:
        raise OSError("cannot read the save")

    def answers(self, waiting: Any, published: Any) -> bool:
        raise KeyError("no such slot")


def errors(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == "trio_persist" and r.levelno >= logging.ERROR]


def test_the_library_installs_no_handler() -> None:
    # In a fresh interpreter: the docs' examples configure this logger in this one.
    code = "import logging, trio_persist; print(logging.getLogger('trio_persist').handlers)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert done.stdout.decode().strip() == "[]"


async def test_a_failing_on_idle_is_counted_and_logged_with_its_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with trio_persist.open_persist(Saving()) as persist:
        worker = await persist.start_worker("state")
        await worker.stop()  # returns normally: the failure is reported, not raised
        assert persist.statistics().hook_failures == 1
    [record] = errors(caplog)
    assert record.getMessage() == "the device's on_idle hook failed for group g: OSError: disk full"
    assert record.exc_info is not None
    assert isinstance(record.exc_info[1], OSError)


async def test_a_failing_restore_is_counted_and_the_request_still_served(
    autojump_clock: object, caplog: pytest.LogCaptureFixture
) -> None:
    device = Saving()
    async with trio_persist.open_persist(device, worker_timeout=1) as persist:
        worker = await persist.start_worker("state")
        await worker.stop()  # its group may now be restored
        assert await persist.resolve("base", "r") == "base"  # restore failed: a flight
        assert persist.statistics().hook_failures == 2  # on_idle, then restore
    assert (
        "restore hook failed for group g: OSError: cannot read the save"
        in [r.getMessage().replace("the device's ", "") for r in errors(caplog)][1]
    )


async def test_a_failing_answers_hook_answers_nobody_and_the_worker_goes_on(
    autojump_clock: object, caplog: pytest.LogCaptureFixture
) -> None:
    async with trio_persist.open_persist(Saving(), static_worker=True) as persist:
        await persist.start_worker("state")
        async with trio.open_nursery() as nursery:
            for request in ("a", "b"):
                nursery.start_soon(persist.resolve, "state", request)
        assert persist.statistics().executions == 2  # each served by its own execution
        assert persist.statistics().hook_failures == 1
    assert "answers hook failed" in errors(caplog)[0].getMessage()


async def test_a_worker_crash_is_logged_and_an_ordinary_error_is_not(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="trio_persist")
    async with trio_persist.open_persist(Saving()) as persist:
        with pytest.raises(ValueError, match="an ordinary error"):
            await persist.resolve("b", "fail")
        assert errors(caplog) == []
        assert [r.levelno for r in caplog.records] == [logging.DEBUG]
        await persist.start_worker("state")
        with pytest.raises(trio_persist.LeaderDied):
            await persist.resolve("state", "crash")
    messages = [r.getMessage() for r in errors(caplog)]
    assert (
        messages[0] == "a worker of group g crashed: LeaderDied: the device crashed: GeneratorExit"
    )
    assert isinstance(errors(caplog)[0].exc_info[1], GeneratorExit)  # type: ignore[index]
