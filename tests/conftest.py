"""Shared fixtures: devices that record what they execute.

Every async test runs under Trio (``trio_mode = true``); tests about time take
the ``autojump_clock`` fixture and assert exact virtual times. Every async test
is also bounded (`bounded`): a regression that makes it wait for ever fails in
seconds instead of costing pytest-timeout's five minutes.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import ssl
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing

from fault_proxy import FaultProxy
from redis_helpers import open_leading
from redis_server import RedisServer

REAL_BOUND = 120.0  # seconds on the real clock (cross-process tests)
VIRTUAL_BOUND = 1e9  # under a MockClock: a deadlock jumps straight to it


def bounded(test: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """*test* under a deadline of its run's clock.

    Under ``autojump_clock`` a test that waits for ever has nothing else to wait
    for, so the clock jumps to the deadline and it fails at once; on the real
    clock it fails after `REAL_BOUND` seconds.
    """

    @functools.wraps(test)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        virtual = isinstance(trio.lowlevel.current_clock(), trio.testing.MockClock)
        with trio.fail_after(VIRTUAL_BOUND if virtual else REAL_BOUND):
            return await test(*args, **kwargs)

    wrapper.__bounded__ = True  # type: ignore[attr-defined]
    return wrapper


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        test = getattr(item, "obj", None)
        if inspect.iscoroutinefunction(test) and test is not None:
            item.obj = bounded(test)  # type: ignore[attr-defined]


class SlowDevice:
    """Upstream's test device: every request on one base shares one group.

    ``{"path": "slow", "wait": s}`` sleeps *s* seconds and returns a fresh
    token (two executions never return the same one); ``{"path": "self",
    "wait": s}`` sleeps and returns the base.
    """

    def __init__(self) -> None:
        self.executed: list[tuple[Any, Any]] = []
        self._tokens = itertools.count()

    def group(self, base: Any, request: Any) -> Any:
        return ("slow-device", repr(base))

    async def resolve(self, base: Any, request: Any) -> Any:
        self.executed.append((base, request))
        await trio.sleep(request.get("wait", 0))
        if request["path"] == "self":
            return base
        if request["path"] == "fail":
            raise ValueError(f"failed on {base}")
        return {"token": next(self._tokens), "base": base}


class Counting:
    """A plain device function that counts its executions and can be held open.

    It sleeps ``wait`` seconds, or with ``hold`` until ``release`` is set; a
    request ``"fail:<message>"`` raises ``ValueError(<message>)``.
    """

    def __init__(self, wait: float = 1.0) -> None:
        self.calls = 0
        self.wait = wait
        self.release = trio.Event()
        self.hold = False

    async def __call__(self, base: Any, request: Any) -> Any:
        self.calls += 1
        if self.hold:
            await self.release.wait()
        else:
            await trio.sleep(self.wait)
        if isinstance(request, str) and request.startswith("fail:"):
            raise ValueError(request.removeprefix("fail:"))
        return (base, request, self.calls)


class OneGroup:
    """Every request in one group "one": it runs one after another; each takes a second."""

    def __init__(self) -> None:
        self.executed: list[Any] = []

    def group(self, base: Any, request: Any) -> Any:
        return "one"

    async def resolve(self, base: Any, request: Any) -> Any:
        self.executed.append(request)
        await trio.sleep(1)
        return request


@pytest.fixture
def one_group() -> OneGroup:
    return OneGroup()


@pytest.fixture
def slow_device() -> SlowDevice:
    return SlowDevice()


@pytest.fixture
def counting() -> Counting:
    return Counting()


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """One real server for the whole run (tests keep apart by namespace)."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def tls_front(redis_server: RedisServer, tmp_path: Path) -> AsyncIterator[tuple[int, Path]]:
    """A TLS front (certificate for "localhost", from a test CA) to the plain server:
    (its port, the CA's certificate file)."""
    import trustme

    authority = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost").configure_cert(context)
    ca_file = tmp_path / "ca.pem"
    authority.cert_pem.write_to_path(str(ca_file))
    proxy = FaultProxy(redis_server.port, tls=context)
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.serve)
        yield proxy.port, ca_file
        nursery.cancel_scope.cancel()


@pytest.fixture
def redis_url(redis_server: RedisServer) -> str:
    return redis_server.url


@pytest.fixture
def namespace() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


class Sleeper:
    """One group; each request sleeps its own number of seconds."""

    def __init__(self) -> None:
        self.executed: list[Any] = []

    def group(self, base: Any, request: Any) -> Any:
        return "g"

    async def resolve(self, state: Any, request: Any) -> Any:
        self.executed.append(request)
        await trio.sleep(request)
        return request


@pytest.fixture
def leading_call(redis_url: str, namespace: str) -> Callable[..., Any]:
    """``async with leading_call(device, callers=3, lease_ttl=0.6) as leading:`` a
    persist on the suite's server whose callers lead one request
    (`redis_helpers.Leading`)."""
    return functools.partial(open_leading, redis_url, namespace)
