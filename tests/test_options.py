"""Options and devices are checked when the block opens, with messages that name them."""

from __future__ import annotations

from typing import Any

import pytest

import trio_persist


async def device(base: Any, request: Any) -> Any:
    return request


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        (
            {"await_inprogress": "yes"},
            ValueError,
            "await_inprogress must be True, False or 'named'",
        ),
        ({"await_inprogress": 1}, TypeError, "await_inprogress must be True, False or 'named'"),
        ({"worker_timeout": "10"}, TypeError, "worker_timeout must be a number of seconds or None"),
        ({"worker_timeout": 0}, ValueError, "worker_timeout must be > 0 seconds, got 0"),
        ({"worker_timeout": float("nan")}, ValueError, "worker_timeout must be > 0"),
        ({"worker_timeout": True}, TypeError, "worker_timeout"),
        ({"static_worker": 1}, TypeError, "static_worker must be True or False, got int"),
        ({"error_strategy": "crash"}, ValueError, "error_strategy must be 'ignore' or 'throw'"),
        ({"error_strategy": None}, TypeError, "error_strategy must be 'ignore' or 'throw'"),
        ({"allow_infinite": "no"}, TypeError, "allow_infinite must be True or False"),
        ({"max_workers": 0}, ValueError, "max_workers must be >= 1, got 0"),
        ({"max_workers": 2.5}, TypeError, "max_workers must be a positive int or None"),
        ({"worker_inbox": None}, TypeError, "worker_inbox must be a positive int"),
        ({"shutdown_grace": -1}, ValueError, "shutdown_grace must be > 0 seconds"),
        ({"backend": "redis://"}, TypeError, "backend must be None or a trio-persist backend"),
    ],
)
async def test_a_bad_option_is_refused_when_the_block_opens(
    options: dict[str, Any], error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        async with trio_persist.open_persist(device, **options):
            pytest.fail("the block must not open")  # pragma: no cover


async def test_good_options_are_kept_as_checked_values() -> None:
    async with trio_persist.open_persist(
        device, worker_timeout=None, max_workers=3, await_inprogress="named"
    ) as persist:
        assert persist.options.worker_timeout == float("inf")
        assert persist.options.max_workers == 3
        assert persist.options.await_inprogress == "named"


def plain_function(base: Any, request: Any) -> Any:
    return request  # pragma: no cover


class NoResolve:
    pass


class SyncResolve:
    def resolve(self, base: Any, request: Any) -> Any:
        return request  # pragma: no cover


class AsyncGroup:
    async def resolve(self, base: Any, request: Any) -> Any:
        return request  # pragma: no cover

    async def group(self, base: Any, request: Any) -> Any:
        return base  # pragma: no cover


class SyncOnIdle:
    async def resolve(self, base: Any, request: Any) -> Any:
        return request  # pragma: no cover

    def on_idle(self, group: Any, state: Any) -> None:
        pass  # pragma: no cover


class BadHook:
    async def resolve(self, base: Any, request: Any) -> Any:
        return request  # pragma: no cover

    answers = 42


async def one_argument(base: Any) -> Any:
    return base  # pragma: no cover


class ThreeArguments:
    async def resolve(self, base: Any, request: Any, extra: Any) -> Any:
        return base  # pragma: no cover


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        (plain_function, "device must be an async function"),
        (NoResolve(), "device must be an async function resolve\\(base, request\\) or an object"),
        (SyncResolve(), "device.resolve must be an async function"),
        (AsyncGroup(), "device.group must be a plain function, not async def"),
        (SyncOnIdle(), "device.on_idle must be an async function"),
        (BadHook(), "device.answers must be callable, got int"),
        (one_argument, r"device must accept \(base, request\), but its signature is \(base:"),
        (ThreeArguments(), r"device.resolve must accept \(base, request\)"),
    ],
)
async def test_a_device_of_the_wrong_shape_is_refused_with_what_was_wrong(
    bad: object, message: str
) -> None:
    with pytest.raises(TypeError, match=message):
        async with trio_persist.open_persist(bad):
            pytest.fail("the block must not open")  # pragma: no cover


@pytest.mark.parametrize(("flags", "name"), [({"spawn_worker": 0}, "spawn_worker"),
                                             ({"share": 1}, "share")])  # fmt: skip
async def test_flags_must_be_true_or_false_not_merely_falsy_or_truthy(
    flags: dict[str, Any], name: str
) -> None:
    async def device(base: Any, request: Any) -> Any:
        return request  # pragma: no cover

    async with trio_persist.open_persist(device) as persist:
        with pytest.raises(TypeError, match=f"{name} must be True or False"):
            await persist.resolve("base", "r", **flags)


async def test_a_bad_error_strategy_is_refused_up_front() -> None:
    async def device(base: Any, request: Any) -> Any:
        return base  # pragma: no cover

    with pytest.raises(ValueError, match="error_strategy"):
        async with trio_persist.open_persist(device, error_strategy="crash"):  # type: ignore[arg-type]
            pass  # pragma: no cover
