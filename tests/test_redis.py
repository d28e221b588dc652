"""The Redis backend, against a real server the suite starts itself.

Cross-process behaviour needs real processes and the server's real clock, so
these tests use short lease TTLs instead of a virtual clock; every wait is
bounded by a ``fail_after`` guard so a regression fails instead of hanging.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import coredis
import pytest
import trio
import trio.testing

import trio_persist
from redis_helpers import (
    SIGNING_KEY,
    Recorder,
    call_for,
    eventually,
    fake_leader,
    open_leases,
    open_pair,
)
from redis_server import RedisServer
from trio_persist._codec import Seal
from trio_persist.redis import RedisBackend
from trio_persist.redis._rounds import Follow, Found, Lead
from trio_persist.redis._scripts import Keys

WORKER = str(Path(__file__).with_name("redis_worker.py"))


async def test_two_persists_on_one_namespace_share_one_execution(
    redis_url: str, namespace: str
) -> None:
    device = Recorder({"answer": 42})
    first = RedisBackend(redis_url, namespace=namespace, lease_ttl=2)
    second = RedisBackend(redis_url, namespace=namespace, lease_ttl=2)
    results: list[Any] = []
    with trio.fail_after(20):
        async with (
            trio_persist.open_persist(device, backend=first) as a,
            trio_persist.open_persist(device, backend=second) as b,
        ):

            async def call(persist: trio_persist.Persist) -> None:
                results.append(await persist.resolve("base", "req"))

            async with trio.open_nursery() as nursery:
                for _ in range(5):
                    nursery.start_soon(call, a)
                    nursery.start_soon(call, b)
                await eventually(
                    lambda: first.statistics().leading + second.statistics().leading != 0
                )
                await eventually(
                    lambda: first.statistics().following + second.statistics().following != 0
                )
                device.release.set()
    assert device.calls == 1
    assert results == [{"answer": 42}] * 10
    stats = [first.statistics(), second.statistics()]
    assert sorted((s.led, s.followed) for s in stats) == [(0, 1), (1, 0)]
    assert [s.takeovers for s in stats] == [0, 0]  # a plain lead is no takeover
    leader = next(s for s in stats if s.led)
    assert leader.round_trips == 2  # acquire, then commit-and-publish


async def lead_and_follow(
    url: str, namespace: str, device: Recorder, **options: Any
) -> tuple[Any, Any]:
    """One call in a persist that leads, one in another that follows it; then release.

    Returns what each call got: its value, or the exception it raised.
    """
    first = RedisBackend(url, namespace=namespace, **options)
    second = RedisBackend(url, namespace=namespace, **options)
    with trio.fail_after(20):
        async with open_pair(first, second, device) as pair:
            await pair.lead("req")
            await pair.follow("req")
            device.release.set()
    assert device.calls == 1
    leader, follower = pair.leader_and_follower_got
    return leader, follower


async def test_a_remote_failure_is_a_remote_error_with_type_and_message(
    redis_url: str, namespace: str
) -> None:
    local, remote = await lead_and_follow(redis_url, namespace, Recorder(ValueError("bad input")))
    assert isinstance(local, ValueError)  # the leader's own callers get the real thing
    assert isinstance(remote, trio_persist.RemoteError)
    assert str(remote) == "ValueError: bad input"


async def test_namespaces_never_meet(redis_url: str, namespace: str) -> None:
    device = Recorder()
    device.release.set()
    with trio.fail_after(20):
        async with (
            trio_persist.open_persist(
                device, backend=RedisBackend(redis_url, namespace=namespace + "-a")
            ) as a,
            trio_persist.open_persist(
                device, backend=RedisBackend(redis_url, namespace=namespace + "-b")
            ) as b,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(a.resolve, "base", "req")
            nursery.start_soon(b.resolve, "base", "req")
    assert device.calls == 2


async def test_many_processes_with_many_callers_cause_exactly_one_execution(
    redis_url: str, namespace: str
) -> None:
    processes = [
        await trio.lowlevel.open_process(
            [sys.executable, WORKER, redis_url, namespace, "callers", "20"],
            stdout=subprocess.PIPE,
        )
        for _ in range(3)
    ]
    async with coredis.Redis.from_url(redis_url) as control:
        with trio.fail_after(60):
            for _ in processes:
                assert await control.blpop([f"{namespace}:ready"], timeout=50) is not None
            await control.rpush(f"{namespace}:go", ["go"])
            outputs = []
            for process in processes:
                assert process.stdout is not None
                data = b""
                while chunk := await process.stdout.receive_some():
                    data += chunk
                assert await process.wait() == 0
                outputs.append(json.loads(data))
            executions = int(await control.get(f"{namespace}:executions") or 0)
    assert executions == 1
    results = [result for output in outputs for result in output]
    assert len(results) == 60
    assert all(result == results[0] for result in results)


async def test_a_leader_killed_mid_flight_is_replaced_by_one_follower(
    redis_url: str, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    leader = await trio.lowlevel.open_process(
        [sys.executable, WORKER, redis_url, namespace, "hang", "1"]
    )
    device_calls = 0

    async def device(base: Any, request: Any) -> Any:
        nonlocal device_calls
        device_calls += 1
        return "taken over"

    backends = [RedisBackend(redis_url, namespace=namespace, lease_ttl=1.0) for _ in range(3)]
    results: list[Any] = []
    async with coredis.Redis.from_url(redis_url) as control:
        with trio.fail_after(30):
            assert await control.blpop([f"{namespace}:leading"], timeout=25) is not None
            async with trio.open_nursery() as nursery:
                for backend in backends:

                    async def follow(backend: RedisBackend = backend) -> None:
                        async with trio_persist.open_persist(device, backend=backend) as p:
                            results.append(await p.resolve("shared-base", "shared-request"))

                    nursery.start_soon(follow)
                await eventually(lambda: sum(b.statistics().following for b in backends) >= 3)
                os.kill(leader.pid, signal.SIGKILL)
            await leader.wait()
            executions = int(await control.get(f"{namespace}:executions") or 0)
    assert executions == 1  # the killed leader's
    assert device_calls == 1  # exactly one follower took over
    assert results == ["taken over"] * 3
    assert sum(b.statistics().takeovers for b in backends) == 1
    assert sum("took over" in r.getMessage() for r in caplog.records) == 1  # at WARNING


async def test_a_fenced_leader_answers_its_callers_with_the_winners_result(
    leading_call: Any, redis_url: str, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    # The stale leader's lease is taken (as after a pause past its TTL); another
    # process leads and commits. The stale one's commit is refused, and its
    # callers get the committed result, not their own stale value.
    stale_device, fresh_device = Recorder("stale"), Recorder("fresh")
    fresh_device.release.set()
    fresh = RedisBackend(redis_url, namespace=namespace, lease_ttl=30)
    with trio.fail_after(20):
        async with (
            leading_call(stale_device, callers=3, lease_ttl=30) as stale,
            trio_persist.open_persist(fresh_device, backend=fresh) as other,
        ):
            await stale.control.delete([stale.keys.lease])  # it ran out while it stalled
            assert await other.resolve("base", "r") == "fresh"
            stale_device.release.set()
    assert stale.got == ["fresh"] * 3
    assert stale.backend.statistics().fenced == 1
    assert any("stale commit" in r.getMessage() for r in caplog.records)


async def test_a_leader_whose_lease_expired_unclaimed_still_commits(
    redis_url: str, namespace: str
) -> None:
    import time

    async def stalling(base: Any, request: Any) -> Any:
        time.sleep(1.5)  # noqa: ASYNC251 - a real stall: no renewal can run meanwhile
        return "late"

    backend = RedisBackend(redis_url, namespace=namespace, lease_ttl=0.5)
    with trio.fail_after(20):
        async with (
            trio_persist.open_persist(stalling, backend=backend) as persist,
            coredis.Redis.from_url(redis_url) as control,
        ):
            assert await persist.resolve("base", "req") == "late"
            [result] = await control.keys(f"{{{namespace}:*}}:result")
            assert (await control.get(result)).endswith(b'"value":"late"}')
    assert backend.statistics().fenced == 0


async def test_redis_going_away_gives_a_clear_error_in_time_and_it_reconnects(
    namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    server = RedisServer()
    server.start()
    try:
        device = Recorder()
        device.release.set()
        backend = RedisBackend(server.url, namespace=namespace, timeout=1.0, lease_ttl=1.0)
        with trio.fail_after(30):
            async with trio_persist.open_persist(device, backend=backend) as persist:
                assert await persist.resolve("base", 1) == "done"
                assert backend.statistics().subscribed
                server.stop()
                with pytest.raises(trio_persist.BackendUnavailable, match="unreachable"):
                    await persist.resolve("base", 2)
                await eventually(lambda: not backend.statistics().subscribed)
                server.start()
                assert await persist.resolve("base", 3) == "done"
                await eventually(lambda: backend.statistics().subscribed)
                assert backend.statistics().unavailable >= 1
    finally:
        server.stop()
    # The outage is logged when it starts and when it ends, not once per call.
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert sum("is unreachable" in message for message in warnings) == 1
    assert sum("answers again" in message for message in warnings) == 1


async def test_redis_stopped_mid_flight_leaves_nobody_hanging(namespace: str) -> None:
    server = RedisServer()
    server.start()
    try:
        device = Recorder()
        backend = RedisBackend(server.url, namespace=namespace, timeout=1.0, lease_ttl=1.0)
        with trio.fail_after(30):
            async with trio_persist.open_persist(device, backend=backend) as persist:
                async with trio.open_nursery() as nursery:

                    async def call() -> None:
                        # Its commit fails: the value is not handed out (another
                        # process may execute the round meanwhile).
                        with pytest.raises(trio_persist.BackendUnavailable, match="not handed"):
                            await persist.resolve("base", "req")

                    nursery.start_soon(call)
                    await eventually(lambda: backend.statistics().leading != 0)
                    server.stop()
                    device.release.set()
    finally:
        server.stop()


async def test_with_fallback_local_a_call_executes_locally_while_redis_is_away(
    namespace: str,
) -> None:
    server = RedisServer()  # never started: nothing listens on its port
    device = Recorder("local")
    device.release.set()
    backend = RedisBackend(server.url, namespace=namespace, timeout=1.0, fallback="local")
    with trio.fail_after(20):
        async with trio_persist.open_persist(device, backend=backend) as persist:
            assert await persist.resolve("base", "req") == "local"


@contextlib.asynccontextmanager
async def planted(url: str, namespace: str, key: str, payload: bytes) -> AsyncIterator[None]:
    """A fake leader holds *key* (lease TTL 0.6 s) and left *payload* as its result."""
    names = Keys.of(namespace, key)
    async with (
        coredis.Redis.from_url(url) as control,
        fake_leader(control, names, 999999999, 0.6),
    ):
        await control.set(names.result, payload, px=30000)
        yield


def sealed(namespace: str, key: str, token: int, body: dict[str, Any], key_: bytes | None) -> bytes:
    """A payload as a backend with signing key *key_* would write it for *key*."""
    return Seal(namespace, key_).wrap(Keys.of(namespace, key).result, token, body)


PICKLED_X = {"ok": True, "codec": "pickle", "value": "gASVBQAAAAAAAACMAXiULg=="}


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        (b"\x00\xffnot json", "holds garbage, not a trio-persist result"),
        (b"999999999::[1]", "signature does not match"),  # unsigned, to a signing backend
        (b"999999999::" + json.dumps(PICKLED_X).encode(), "signature does not match"),
        (b"999999999:00:" + json.dumps(PICKLED_X).encode(), "signature does not match"),
        (b"99999999999999999999:00:{}", "holds garbage"),  # a token no clock makes
    ],
)
async def test_garbage_unsigned_or_tampered_results_are_refused(
    redis_url: str, namespace: str, payload: bytes, message: str
) -> None:
    async def device(base: Any, request: Any) -> Any:
        return "unused"  # pragma: no cover

    backend = RedisBackend(redis_url, namespace=namespace, signing_key=SIGNING_KEY, lease_ttl=0.6)
    with trio.fail_after(20):
        async with trio_persist.open_persist(device, backend=backend) as persist:
            key = backend.key_of(persist.group("base", "req"), "req", True)
            assert key is not None
            async with planted(redis_url, namespace, key, payload):
                with pytest.raises(trio_persist.CorruptResult, match=message) as caught:
                    await persist.resolve("base", "req")
    assert type(caught.value) is trio_persist.CorruptResult  # the public type itself


async def test_a_json_backend_refuses_a_pickled_result(redis_url: str, namespace: str) -> None:
    async def device(base: Any, request: Any) -> Any:
        return "unused"  # pragma: no cover

    backend = RedisBackend(redis_url, namespace=namespace, lease_ttl=0.6)
    with trio.fail_after(20):
        async with trio_persist.open_persist(device, backend=backend) as persist:
            key = backend.key_of(persist.group("b", "r"), "r", True)
            assert key is not None
            pickled = b"999999999::" + json.dumps(PICKLED_X).encode()
            async with planted(redis_url, namespace, key, pickled):
                with pytest.raises(trio_persist.CorruptResult, match="no signing key"):
                    await persist.resolve("b", "r")


async def test_signed_pickles_carry_any_picklable_value(redis_url: str, namespace: str) -> None:
    got = await lead_and_follow(redis_url, namespace, Recorder({1, 2, 3}), signing_key=SIGNING_KEY)
    assert got == ({1, 2, 3}, {1, 2, 3})  # a set: not JSON


async def test_a_result_the_json_codec_cannot_carry_reaches_followers_as_an_error(
    redis_url: str, namespace: str
) -> None:
    value = object()
    local, remote = await lead_and_follow(redis_url, namespace, Recorder(value))
    assert local is value
    assert isinstance(remote, trio_persist.RemoteError)
    assert str(remote).startswith("TypeError: cannot send a object across processes")


class Touchy(dict):  # type: ignore[type-arg]
    """A result that JSON encodes, whose ``==`` raises."""

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("never compare me")

    __hash__ = None  # type: ignore[assignment]


async def test_a_result_whose_equality_raises_reaches_the_leaders_callers_and_runs_once(
    redis_url: str, namespace: str
) -> None:
    value = Touchy(a=1)
    local, remote = await lead_and_follow(redis_url, namespace, Recorder(value))
    assert local is value
    assert isinstance(remote, trio_persist.RemoteError)
    assert "a value of type Touchy" in str(remote)


async def test_the_cluster_view_lists_every_live_process_and_its_workers(
    redis_url: str, namespace: str
) -> None:
    async def device(base: Any, request: Any) -> Any:
        return base

    one = RedisBackend(redis_url, namespace=namespace, heartbeat=0.2)
    two = RedisBackend(redis_url, namespace=namespace, heartbeat=0.2)
    with trio.fail_after(20):
        async with (
            trio_persist.open_persist(device, backend=one) as a,
            trio_persist.open_persist(device, backend=two),
        ):
            worker = await a.start_worker("state")
            await trio.sleep(0.5)  # a heartbeat or two
            nodes = await one.cluster()
            assert len(nodes) == 2
            assert {n.pid for n in nodes} == {os.getpid()}
            [with_worker] = [n for n in nodes if n.workers]
            assert with_worker.workers == (worker.group,)
            assert with_worker.statistics["workers"] == 1
        async with trio_persist.open_persist(
            device, backend=RedisBackend(redis_url, namespace=namespace)
        ):
            pass
    async with trio_persist.open_persist(
        device, backend=(watcher := RedisBackend(redis_url, namespace=namespace))
    ):
        assert len(await watcher.cluster()) == 1  # the closed ones removed their records


def test_backend_options_are_checked() -> None:
    with pytest.raises(ValueError, match="url must be a redis://, rediss:// or unix:// URL"):
        RedisBackend("http://x")
    with pytest.raises(ValueError, match="lease_ttl must be a finite number of seconds > 0"):
        RedisBackend("redis://x", lease_ttl=0)
    with pytest.raises(TypeError, match="timeout must be a number of seconds"):
        RedisBackend("redis://x", timeout="1")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="fallback must be 'error' or 'local'"):
        RedisBackend("redis://x", fallback="ignore")
    with pytest.raises(TypeError, match="signing_key must be bytes"):
        RedisBackend("redis://x", signing_key="text")  # type: ignore[arg-type]
    assert "namespace='ns'" in repr(RedisBackend("redis://x", namespace="ns"))
    defaults = RedisBackend("redis://x")
    assert (defaults.lease_ttl, defaults.timeout, defaults.heartbeat) == (10.0, 5.0, 1.0)
    assert (defaults.fallback, defaults.max_takeovers, defaults.namespace) == ("error", 3, None)
    with pytest.raises(TypeError, match="namespace must be a str"):
        RedisBackend("redis://x", namespace=b"ns")  # type: ignore[arg-type]
    for bad in ("", "x" * 201, "tab\there"):
        with pytest.raises(ValueError, match="namespace must be 1 to 200 printable characters"):
            RedisBackend("redis://x", namespace=bad)
    RedisBackend("redis://x", namespace="x" * 200)  # the longest accepted
    with pytest.raises(ValueError, match="must not contain braces"):
        RedisBackend("redis://x", namespace="a{b}")
    with pytest.raises(TypeError, match="a Redis URL or a coredis client"):
        RedisBackend(42)


async def test_the_cluster_monitor_shows_every_process_in_one_frame(
    redis_url: str, namespace: str
) -> None:
    async def device(base: Any, request: Any) -> Any:
        await trio.sleep_forever()

    with trio.fail_after(30):
        async with (
            trio_persist.open_persist(
                device, backend=RedisBackend(redis_url, namespace=namespace, heartbeat=0.1)
            ) as a,
            trio_persist.open_persist(
                device, backend=RedisBackend(redis_url, namespace=namespace, heartbeat=0.1)
            ) as b,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(a.resolve, "base", "in-a")
            nursery.start_soon(b.resolve, "base", "in-b")
            await trio.sleep(0.3)
            done = await trio.run_process(
                [sys.executable, "-m", "trio_persist", "monitor", "--once",
                 "--redis", redis_url, "--namespace", namespace],
                capture_stdout=True,
            )  # fmt: skip
            nursery.cancel_scope.cancel()
    text = done.stdout.decode()
    assert f"cluster '{namespace}', 2 processes  2 groups" in text
    rows = [line for line in text.splitlines() if line.startswith(f"{socket.gethostname()}:")]
    assert len(rows) == 2
    assert all(f":{os.getpid()} " in row and " flight " in row for row in rows)


async def test_the_cluster_monitor_says_when_redis_cannot_be_reached(namespace: str) -> None:
    server = RedisServer()  # never started
    done = await trio.run_process(
        [sys.executable, "-m", "trio_persist", "monitor", "--once", "--redis", server.url],
        capture_stderr=True,
        check=False,
    )
    assert done.returncode == 1
    assert "cannot read the cluster" in done.stderr.decode()


async def test_a_follower_waiting_when_redis_stops_gets_a_clear_error_and_recovers(
    namespace: str,
) -> None:
    server = RedisServer()
    server.start()
    try:
        device = Recorder()
        options = {"namespace": namespace, "timeout": 1.0, "lease_ttl": 1.0}
        first = RedisBackend(server.url, **options)  # type: ignore[arg-type]
        second = RedisBackend(server.url, **options)  # type: ignore[arg-type]
        got: dict[str, Any] = {}
        with trio.fail_after(30):
            async with (
                trio_persist.open_persist(device, backend=first) as a,
                trio_persist.open_persist(device, backend=second) as b,
            ):

                async def call(name: str, persist: trio_persist.Persist) -> None:
                    try:
                        got[name] = await persist.resolve("base", "req")
                    except Exception as exc:
                        got[name] = exc

                async with trio.open_nursery() as nursery:
                    nursery.start_soon(call, "leader", a)
                    await eventually(lambda: first.statistics().leading != 0)
                    nursery.start_soon(call, "follower", b)
                    await eventually(lambda: second.statistics().following != 0)
                    server.stop()
                    await eventually(lambda: "follower" in got)
                    device.release.set()
                assert isinstance(got["follower"], trio_persist.BackendUnavailable)
                assert isinstance(got["leader"], trio_persist.BackendUnavailable)  # no commit
                server.start()
                assert await b.resolve("base", "again") == "done"
    finally:
        server.stop()


async def test_a_follower_taking_over_after_another_already_finished_gets_that_result(
    redis_url: str, namespace: str
) -> None:
    # The race behind a rare double execution, made deterministic: two followers
    # see one leader vanish; the first takes over and commits before the second
    # tries. The second must get that result, not lead a second execution.
    names = Keys.of(namespace, "key")
    with trio.fail_after(20):
        async with (
            open_leases(redis_url, namespace) as leader,
            open_leases(redis_url, namespace) as first,
            open_leases(redis_url, namespace) as second,
            coredis.Redis.from_url(redis_url) as control,
        ):
            lead = await leader.acquire(call_for(leader, "key"))
            assert isinstance(lead, Lead)
            assert await first.acquire(call_for(first, "key")) == Follow(lead.token)
            assert await second.acquire(call_for(second, "key")) == Follow(lead.token)
            await control.delete([names.lease])  # the leader dies
            taken = await first.acquire(call_for(first, "key", lead.token))  # takes over...
            assert isinstance(taken, Lead)
            payload = sealed(
                namespace, "key", taken.token, {"ok": True, "codec": "json", "value": "first"}, None
            )
            await control.set(names.result, payload)  # ...and commits...
            late = await second.acquire(call_for(second, "key", lead.token))  # ...before it tries
            assert late == Found(payload)
