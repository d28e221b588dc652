"""The Redis backend is safe to trust: fencing survives restarts, results are
sealed to their key, malformed data never hangs or doubles a leader, secrets
stay secret. Each test failed on the backend before its redesign.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import coredis
import pytest
import trio

import trio_persist
from redis_helpers import (
    SIGNING_KEY,
    Recorder,
    call_for,
    eventually,
    fake_leader,
    names_for,
    open_leases,
    open_pair,
)
from redis_server import RedisServer
from trio_persist._codec import Seal
from trio_persist.redis import RedisBackend, fencing_token
from trio_persist.redis._lease import Held, Leases
from trio_persist.redis._link import Counters, Link
from trio_persist.redis._rounds import Answer, Follow, Lead
from trio_persist.redis._scripts import Keys
from trio_persist.redis._subscriber import Subscriber, Watch


async def test_tokens_keep_growing_after_redis_restarts_empty(namespace: str) -> None:
    server = RedisServer()  # no persistence: a restart forgets every key
    server.start()
    try:
        with trio.fail_after(30):
            async with (
                open_leases(server.url, namespace, step_timeout=2) as a,
                open_leases(server.url, namespace, step_timeout=2) as b,
            ):
                old = await a.acquire(call_for(a, "key"))
                assert isinstance(old, Lead)
                server.stop()
                server.start()
                await eventually(lambda: a.subscriber.up and b.subscriber.up)
                new = await b.acquire(call_for(b, "key"))
                assert isinstance(new, Lead)
                assert new.token > old.token  # never reissued, although the counter was lost
                assert old.value.split(":")[0] != new.value.split(":")[0]
    finally:
        server.stop()


async def test_a_stale_commit_after_a_restart_is_refused_and_answered_with_the_new_leader(
    redis_url: str, namespace: str
) -> None:
    names = Keys.of(namespace, "key")
    with trio.fail_after(20):
        async with (
            open_leases(redis_url, namespace) as a,
            open_leases(redis_url, namespace) as b,
            coredis.Redis.from_url(redis_url) as control,
        ):
            old = await a.acquire(call_for(a, "key"))
            assert isinstance(old, Lead)
            # A restart without persistence: every key of the request is gone.
            await control.delete([names.lease, names.fence])
            new = await b.acquire(call_for(b, "key"))
            assert isinstance(new, Lead)
            stale = Held(names.lease, old.value, old.token, trio.CancelScope(), 0.0, 0.0)
            payload = Seal(namespace).wrap(
                names.result, old.token, {"ok": True, "codec": "json", "value": 1}
            )
            assert await a.commit(names, stale, payload, 0.0) == Follow(new.token)
            assert await control.get(names.result) is None  # nothing stale stored
            assert (await control.get(names.lease)).endswith(b":%d" % new.token)  # B's lives


async def test_a_device_can_fence_its_own_writes_with_its_token(
    redis_url: str, namespace: str
) -> None:
    seen: list[int | None] = []

    async def device(base: Any, request: Any) -> Any:
        seen.append(fencing_token())
        return request

    backend = RedisBackend(redis_url, namespace=namespace)
    with trio.fail_after(20):
        async with trio_persist.open_persist(device, backend=backend) as persist:
            await persist.resolve("base", 1)
            await persist.resolve("base", 1)
    assert fencing_token() is None
    first, second = seen
    assert first is not None
    assert second is not None
    assert second > first  # one key, two rounds: the token only grows


@pytest.mark.parametrize(
    ("planted", "why"),
    [
        ("ab" * 16 + ":5", "a lease with no expiry"),
        ("-7", "a negative lease"),
        ("not a lease", "a foreign value"),
    ],
)
async def test_a_malformed_lease_is_replaced_not_followed(
    redis_url: str, namespace: str, planted: str, why: str
) -> None:
    device = Recorder("fresh")
    device.release.set()
    backend = RedisBackend(redis_url, namespace=namespace, lease_ttl=30)
    with trio.fail_after(10):  # following a never-expiring lease would hang for ever
        async with (
            trio_persist.open_persist(device, backend=backend) as persist,
            coredis.Redis.from_url(redis_url) as control,
        ):
            names = names_for(persist, "k")
            await control.set(names.lease, planted)  # no PX: immortal
            assert await persist.resolve("base", "k") == "fresh", why
    assert device.calls == 1
    assert backend.statistics().corrupt == 1


async def test_a_key_of_the_wrong_type_is_a_clear_error_or_a_local_execution(
    redis_url: str, namespace: str
) -> None:
    device = Recorder("local")
    device.release.set()
    strict = RedisBackend(redis_url, namespace=namespace)
    lenient = RedisBackend(redis_url, namespace=namespace, fallback="local")
    with trio.fail_after(20):
        async with (
            trio_persist.open_persist(device, backend=strict) as a,
            trio_persist.open_persist(device, backend=lenient) as b,
            coredis.Redis.from_url(redis_url) as control,
        ):
            await control.hset(names_for(a, "k").lease, {"field": "value"})
            with pytest.raises(trio_persist.CorruptResult, match="holds a foreign value"):
                await a.resolve("base", "k")
            assert await b.resolve("base", "k") == "local"


async def test_a_signed_result_replayed_into_another_key_is_refused(
    redis_url: str, namespace: str
) -> None:
    device = Recorder("x")
    device.release.set()
    backend = RedisBackend(redis_url, namespace=namespace, signing_key=SIGNING_KEY, lease_ttl=0.6)
    with trio.fail_after(20):
        async with (
            trio_persist.open_persist(device, backend=backend) as persist,
            coredis.Redis.from_url(redis_url) as control,
        ):
            assert await persist.resolve("base", "a") == "x"
            genuine = await control.get(names_for(persist, "a").result)
            target = names_for(persist, "b")
            await control.set(target.result, genuine)  # a real MAC, for key "a"
            async with fake_leader(control, target, 999999999999999, 0.6):
                with pytest.raises(trio_persist.CorruptResult, match="signature does not match"):
                    await persist.resolve("base", "b")


async def test_unsigned_json_and_errors_are_refused_by_a_signing_backend(
    redis_url: str, namespace: str
) -> None:
    backend = RedisBackend(redis_url, namespace=namespace, signing_key=SIGNING_KEY, lease_ttl=0.6)
    with trio.fail_after(20):
        async with (
            trio_persist.open_persist(Recorder(), backend=backend) as persist,
            coredis.Redis.from_url(redis_url) as control,
        ):
            names = names_for(persist, "c")
            unsigned = Seal(namespace).wrap(
                names.result, 999999999999999, {"ok": False, "type": "X", "message": "forged"}
            )
            await control.set(names.result, unsigned)
            async with fake_leader(control, names, 999999999999999, 0.6):
                with pytest.raises(trio_persist.CorruptResult, match="signature does not match"):
                    await persist.resolve("base", "c")


async def test_a_malformed_channel_message_is_ignored_and_the_followers_still_answered(
    redis_url: str, namespace: str
) -> None:
    device = Recorder("real")
    leader = RedisBackend(redis_url, namespace=namespace)
    follower = RedisBackend(redis_url, namespace=namespace)
    with trio.fail_after(20):
        async with (
            open_pair(leader, follower, device) as pair,
            coredis.Redis.from_url(redis_url) as control,
        ):
            await pair.lead("m")
            await pair.follow("m", callers=3)
            channel = names_for(pair.a, "m").channel
            await control.publish(channel, b"\x00garbage")
            await control.publish(channel, b"99999999999999:zz:{}")
            await eventually(lambda: follower.statistics().corrupt >= 2)
            device.release.set()
    assert pair.got == ["real"] * 4
    assert follower.statistics().corrupt == 2  # each counted once


async def test_a_flood_of_garbage_publications_is_counted_and_logged_once(
    redis_url: str, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    device = Recorder("real")
    leader = RedisBackend(redis_url, namespace=namespace)
    follower = RedisBackend(redis_url, namespace=namespace)
    with trio.fail_after(30):
        async with (
            open_pair(leader, follower, device) as pair,
            coredis.Redis.from_url(redis_url) as control,
        ):
            await pair.lead()
            await pair.follow()
            channel = names_for(pair.a, "r").channel
            async with control.pipeline(transaction=False) as pipe:
                for n in range(2000):
                    pipe.publish(channel, b"garbage %d" % n)
            await eventually(lambda: follower.statistics().corrupt == 2000)
            device.release.set()
    assert pair.got == ["real"] * 2
    logged = [r for r in caplog.records if "malformed message" in r.getMessage()]
    _, summary = logged  # the first in full; the rest summed up when it closed
    assert "1999 more, not logged one by one" in summary.getMessage()


async def test_json_refuses_what_would_not_read_back_equal(redis_url: str, namespace: str) -> None:
    value = {"pair": (1, 2), 3: "int key"}
    device = Recorder(value)
    first = RedisBackend(redis_url, namespace=namespace)
    second = RedisBackend(redis_url, namespace=namespace)
    with trio.fail_after(20):
        async with open_pair(first, second, device) as pair:
            await pair.lead()
            await pair.follow()
            device.release.set()
    leader_got, follower_got = pair.leader_and_follower_got
    assert leader_got is value  # the leader's callers keep their value
    assert isinstance(follower_got, trio_persist.RemoteError)
    assert "would not read back equal" in str(follower_got)


async def test_the_default_namespace_keeps_different_devices_apart(redis_url: str) -> None:
    async def one(base: Any, request: Any) -> Any:
        return "one"

    async def two(base: Any, request: Any) -> Any:
        return "two"

    first, second = RedisBackend(redis_url), RedisBackend(redis_url)
    with trio.fail_after(20):
        async with (
            trio_persist.open_persist(one, backend=first, linger=60) as a,
            trio_persist.open_persist(two, backend=second, linger=60) as b,
        ):
            assert await a.resolve("base", "same") == "one"
            assert await b.resolve("base", "same") == "two"  # not one's lingering result
    assert first.namespace != second.namespace
    assert first.namespace is not None
    assert first.namespace.startswith("trio-persist:")
    assert "one" in first.namespace


@pytest.mark.parametrize("key", [b"", b"k", b"fifteen bytes!!"])
def test_a_signing_key_shorter_than_16_bytes_is_refused(key: bytes) -> None:
    # Anyone able to compute its MAC could make every follower load a pickle.
    with pytest.raises(ValueError, match="signing_key must be at least 16 random bytes"):
        RedisBackend("redis://x", signing_key=key)
    RedisBackend("redis://x", signing_key=key.ljust(16, b"."))  # 16 bytes: accepted


@pytest.mark.parametrize("char", ["/", "#", "?"])
async def test_a_password_with_an_unencoded_slash_hash_or_question_mark_is_refused_unseen(
    char: str,
) -> None:
    url = f"redis://user:hun{char}ter2@127.0.0.1:1/0"
    with pytest.raises(ValueError, match="percent-encode it") as caught:
        RedisBackend(url)
    assert "ter2" not in str(caught.value)
    done = await trio.run_process(
        [sys.executable, "-m", "trio_persist", "monitor", "--once", "--redis", url],
        capture_stderr=True,
        check=False,
    )
    assert done.returncode == 1
    assert "percent-encode it" in done.stderr.decode()
    assert "ter2" not in done.stderr.decode()
    assert "Traceback" not in done.stderr.decode()


def test_the_password_never_shows() -> None:
    backend = RedisBackend("redis://user:hunter2@127.0.0.1:1/0?password=hunter3")
    assert "hunter" not in repr(backend)
    assert "user:***@127.0.0.1:1" in repr(backend)


async def test_an_unreachable_servers_errors_do_not_show_the_password(namespace: str) -> None:
    server = RedisServer()  # never started
    url = server.url.replace("redis://", "redis://:hunter2@")
    backend = RedisBackend(url, namespace=namespace, timeout=1)
    with trio.fail_after(20):
        async with trio_persist.open_persist(Recorder(), backend=backend) as persist:
            with pytest.raises(trio_persist.BackendUnavailable) as caught:
                await persist.resolve("base", "x")
    assert "hunter2" not in str(caught.value)
    assert ":***@" in str(caught.value)


async def test_the_monitor_reads_the_url_from_the_environment_and_never_shows_it() -> None:
    server = RedisServer()  # never started
    url = server.url.replace("redis://", "redis://:hunter2@")
    done = await trio.run_process(
        [sys.executable, "-m", "trio_persist", "monitor", "--once", "--redis"],
        capture_stderr=True,
        check=False,
        env={**os.environ, "TRIO_PERSIST_REDIS_URL": url},
    )
    assert done.returncode == 1
    err = done.stderr.decode()
    assert "cannot read the cluster" in err
    assert "hunter2" not in err


def test_rediss_urls_check_the_certificate_and_its_hostname_by_default() -> None:
    from trio_persist.redis._client import secure_url

    assert "ssl_check_hostname=true" in secure_url("rediss://h:1/0")
    assert "ssl_cert_reqs=required" in secure_url("rediss://h:1/0")
    assert "ssl_check_hostname=false" in secure_url("rediss://h:1/0?ssl_check_hostname=false")
    assert secure_url("redis://h:1/0") == "redis://h:1/0"


async def test_remote_answers_are_not_counted_as_executions(redis_url: str, namespace: str) -> None:
    device = Recorder()
    first = RedisBackend(redis_url, namespace=namespace)
    second = RedisBackend(redis_url, namespace=namespace)
    with trio.fail_after(20):
        async with open_pair(first, second, device) as pair:
            await pair.lead()
            await pair.follow()
            device.release.set()
    a, b = pair.a.statistics(), pair.b.statistics()
    assert (a.executions, a.remote) == (1, 0)
    assert (b.executions, b.remote) == (0, 1)
    assert json.dumps(b.to_json())


async def test_rediss_refuses_a_certificate_for_another_host_and_says_why(
    tls_front: tuple[int, Path], namespace: str
) -> None:
    port, ca_file = tls_front
    device = Recorder("over tls")
    device.release.set()
    wrong_host = RedisBackend(
        f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca_file}", namespace=namespace, timeout=2
    )
    right_host = RedisBackend(
        f"rediss://localhost:{port}/0?ssl_ca_certs={ca_file}", namespace=namespace, timeout=2
    )
    with trio.fail_after(20):
        async with trio_persist.open_persist(device, backend=wrong_host) as persist:
            with pytest.raises(
                trio_persist.BackendUnavailable, match="TLS certificate verification failed"
            ):
                await persist.resolve("base", "r")
        async with trio_persist.open_persist(device, backend=right_host) as persist:
            assert await persist.resolve("base", "r") == "over tls"


async def test_rediss_with_certificate_checks_turned_off_connects_and_says_so(
    tls_front: tuple[int, Path], namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    port, _ = tls_front
    device = Recorder("unchecked")
    device.release.set()
    url = f"rediss://127.0.0.1:{port}/0?ssl_cert_reqs=none"
    backend = RedisBackend(url, namespace=namespace, timeout=2)
    with trio.fail_after(20):
        async with trio_persist.open_persist(device, backend=backend) as persist:
            assert await persist.resolve("base", "r") == "unchecked"
    assert any("certificate is not checked" in r.getMessage() for r in caplog.records)


async def test_a_follower_never_answers_with_an_older_rounds_result(
    redis_url: str, namespace: str
) -> None:
    backend = RedisBackend(redis_url, namespace=namespace, lease_ttl=0.3)  # looks every 0.1 s
    with trio.fail_after(20):
        async with (
            trio_persist.open_persist(Recorder(), backend=backend) as persist,
            coredis.Redis.from_url(redis_url) as control,
            trio.open_nursery() as nursery,
        ):
            names = names_for(persist, "r")
            seal = Seal(namespace)
            old = seal.wrap(names.result, 5, {"ok": True, "codec": "json", "value": "old"})
            new = seal.wrap(names.result, 900, {"ok": True, "codec": "json", "value": "new"})
            await control.set(names.result, old)  # the last round's result
            got: list[Any] = []

            async def call() -> None:
                got.append(await persist.resolve("base", "r"))

            async with fake_leader(control, names, 900, 0.3):  # this round's leader
                nursery.start_soon(call)
                await eventually(lambda: backend.statistics().following == 1)
                await control.publish(names.channel, old)  # old news on the channel too
                await eventually(lambda: backend.statistics().round_trips >= 4)  # looked twice
                assert got == []
                await control.set(names.result, new)
                await control.delete([names.lease])
            await eventually(lambda: got == ["new"])


async def test_a_result_outlives_its_commit_by_the_stated_rule(
    redis_url: str, namespace: str
) -> None:
    # max(3 x lease_ttl, lease_ttl + 2 x timeout, 1 s): every follower looks again
    # within a third of the TTL, each look taking up to the timeout.
    for lease_ttl, timeout, kept in ((2.0, 0.5, 6.0), (1.0, 2.0, 5.0), (0.2, 0.1, 1.0)):
        device = Recorder("v")
        device.release.set()
        backend = RedisBackend(redis_url, namespace=namespace, lease_ttl=lease_ttl, timeout=timeout)
        with trio.fail_after(20):
            async with (
                trio_persist.open_persist(device, backend=backend) as persist,
                coredis.Redis.from_url(redis_url) as control,
            ):
                request = f"{lease_ttl}-{timeout}"
                await persist.resolve("base", request)
                names = names_for(persist, request)
                pttl = await control.pttl(names.result)
                fence = await control.pttl(names.fence)  # the token outlives both
        assert kept * 1000 - 1000 < pttl <= kept * 1000, (lease_ttl, timeout, pttl)
        assert (kept + lease_ttl) * 1000 - 1000 < fence <= (kept + lease_ttl) * 1000


async def test_a_refused_commit_with_no_winner_answers_with_its_own_outcome(
    leading_call: Any, redis_url: str, namespace: str
) -> None:
    # Its lease was taken, and the taker went away without a result: nobody has
    # an outcome to answer with but this leader.
    device = Recorder("own")
    with trio.fail_after(20):
        async with (
            leading_call(device, lease_ttl=30) as stale,
            open_leases(redis_url, namespace) as taker,
        ):
            await stale.control.delete([stale.keys.lease])  # expired while it stalled
            taken = await taker.acquire(call_for(taker, stale.key))
            assert isinstance(taken, Lead)
            await stale.control.delete([stale.keys.lease])  # and the taker went away
            device.release.set()
    assert stale.got == ["own"]
    assert stale.backend.statistics().fenced == 1


async def test_a_lease_lives_its_ttl(redis_url: str, namespace: str) -> None:
    device = Recorder()
    backend = RedisBackend(redis_url, namespace=namespace, lease_ttl=1000)
    with trio.fail_after(20):
        async with (
            trio_persist.open_persist(device, backend=backend) as persist,
            coredis.Redis.from_url(redis_url) as control,
            trio.open_nursery() as nursery,
        ):
            nursery.start_soon(persist.resolve, "base", "r")
            await eventually(lambda: backend.statistics().leading == 1)
            pttl = await control.pttl(names_for(persist, "r").lease)
            device.release.set()
    assert 999_500 < pttl <= 1_000_000  # half a second of slack for a loaded machine


async def test_a_long_or_unprintable_string_group_is_hashed_and_still_shared(
    redis_url: str, namespace: str
) -> None:
    class ByName:
        def group(self, base: Any, request: Any) -> Any:
            return request  # the request names its group

        async def resolve(self, base: Any, request: Any) -> Any:
            await device.release.wait()
            device.calls += 1
            return "shared"

    device = Recorder()
    for name in ("x" * 500, "line\nbreak"):
        first = RedisBackend(redis_url, namespace=namespace)
        second = RedisBackend(redis_url, namespace=namespace)
        assert first.key_of(name, name, True) == "h:" + hashlib.sha256(name.encode()).hexdigest()
        device.release = trio.Event()
        with trio.fail_after(20):
            async with open_pair(first, second, ByName()) as pair:
                await pair.lead(name)
                await pair.follow(name)
                device.release.set()
        assert pair.got == ["shared", "shared"]
    assert device.calls == 2  # once per name: each shared across the two processes


def test_backends_are_distinct_objects() -> None:
    one, two = RedisBackend("redis://x"), RedisBackend("redis://x")
    assert one != two
    assert len({one, two}) == 2  # hashable: usable as keys


async def test_under_a_group_hook_different_requests_of_one_group_never_share_a_result(
    redis_url: str, namespace: str
) -> None:
    class OneGroup:
        def group(self, base: Any, request: Any) -> Any:
            return "g"  # a string group: still not the cross-process key on its own

        async def resolve(self, base: Any, request: Any) -> Any:
            await device.release.wait()
            return request

    device = Recorder()
    first = RedisBackend(redis_url, namespace=namespace)
    second = RedisBackend(redis_url, namespace=namespace)
    with trio.fail_after(20):
        async with open_pair(first, second, OneGroup()) as pair:
            await pair.lead("one")
            pair.nursery.start_soon(pair.b.resolve, "base", "two")
            await eventually(lambda: second.statistics().leading == 1)  # its own, not a follower
            device.release.set()
    assert pair.got == ["one"]
    assert (first.statistics().followed, second.statistics().followed) == (0, 0)


def test_a_follower_reads_past_malformed_messages_to_its_outcome() -> None:
    counters = Counters()
    leases = Leases(Link("Redis at x", 1, counters), Seal("ns"), Subscriber("ns", 1), counters, 10)
    names = Keys.of("ns", "k")
    watch = Watch("k")
    watch.deliver(b"\x00garbage")
    watch.deliver(Seal("ns").wrap(names.result, 7, {"ok": True, "codec": "json", "value": 1}))
    assert leases.heard(names, 7, watch) == Answer(True, 1)
    assert counters.corrupt == 1


async def test_a_persist_that_does_not_linger_never_takes_anothers_lingering_result(
    redis_url: str, namespace: str
) -> None:
    lingering, strict = Recorder("a"), Recorder("b")
    lingering.release.set()
    strict.release.set()
    with trio.fail_after(20):
        async with (
            trio_persist.open_persist(
                lingering, backend=RedisBackend(redis_url, namespace=namespace), linger=60
            ) as a,
            trio_persist.open_persist(
                strict, backend=RedisBackend(redis_url, namespace=namespace)
            ) as b,
        ):
            assert await a.resolve("base", "r") == "a"
            assert await b.resolve("base", "r") == "b"  # runs its own: it asked for no linger
    assert (lingering.calls, strict.calls) == (1, 1)


async def test_a_value_that_cannot_cross_does_not_linger_as_an_error(
    redis_url: str, namespace: str
) -> None:
    odd = object()
    first, second = Recorder(odd), Recorder("fine")
    first.release.set()
    second.release.set()
    with trio.fail_after(20):
        async with (
            trio_persist.open_persist(
                first, backend=RedisBackend(redis_url, namespace=namespace), linger=60
            ) as a,
            trio_persist.open_persist(
                second, backend=RedisBackend(redis_url, namespace=namespace), linger=60
            ) as b,
        ):
            assert await a.resolve("base", "r") is odd  # its own callers keep it
            assert await b.resolve("base", "r") == "fine"  # not a lingering RemoteError


async def test_a_fenced_leader_whose_successor_still_runs_follows_it(leading_call: Any) -> None:
    device = Recorder("stale")
    with trio.fail_after(20):
        async with leading_call(device, lease_ttl=30) as stale:  # no renewal meanwhile
            token = await stale.take_over()  # taken over while it stalled
            device.release.set()  # its commit is refused: it follows the successor
            await eventually(lambda: stale.backend.statistics().following == 1)
            await stale.commit_as(token, "successor's")
    assert stale.got == ["successor's"]
    assert (stale.backend.statistics().fenced, stale.backend.statistics().lost) == (1, 0)


async def test_an_old_result_written_back_to_the_linger_key_answers_no_longer_than_its_window(
    redis_url: str, namespace: str
) -> None:
    device = Recorder("fresh")
    device.release.set()
    backend = RedisBackend(redis_url, namespace=namespace)
    with trio.fail_after(20):
        async with (
            trio_persist.open_persist(device, backend=backend, linger=1.0) as persist,
            coredis.Redis.from_url(redis_url) as control,
        ):
            await persist.resolve("base", "r")
            names = names_for(persist, "r")
            entry = await control.get(names.linger)
            await control.set(names.linger, entry)  # written back, with no expiry
            await persist.resolve("base", "r")  # within its window: answered
            await trio.sleep(1.1)  # real time: the server's clock measures the window
            await persist.resolve("base", "r")  # past it: executed again
    assert device.calls == 2


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        (b"garbage", "not an entry"),
        (b"{now}:garbage", "not a payload"),
        (b"{now}:5::{{not json", "a payload that does not decode"),
        (b"{future}:5::{{}}", "committed in the future"),
    ],
)
async def test_garbage_in_the_linger_key_is_ignored(
    redis_url: str, namespace: str, entry: bytes, why: str
) -> None:
    device = Recorder("fresh")
    device.release.set()
    backend = RedisBackend(redis_url, namespace=namespace)
    with trio.fail_after(20):
        async with (
            trio_persist.open_persist(device, backend=backend, linger=60) as persist,
            coredis.Redis.from_url(redis_url) as control,
        ):
            now = int(time.time() * 1e6)
            entry = entry.decode().format(now=now, future=now + 10**9).encode()
            await control.set(names_for(persist, "r").linger, entry)  # no expiry
            assert await persist.resolve("base", "r") == "fresh", why
    assert device.calls == 1


async def test_a_failure_written_into_the_linger_key_never_answers(
    redis_url: str, namespace: str
) -> None:
    device = Recorder("fresh")
    device.release.set()
    backend = RedisBackend(redis_url, namespace=namespace)
    with trio.fail_after(20):
        async with (
            trio_persist.open_persist(device, backend=backend, linger=60) as persist,
            coredis.Redis.from_url(redis_url) as control,
        ):
            names = names_for(persist, "r")
            now = int(time.time() * 1e6)
            failure = Seal(namespace).wrap(
                names.result, now - 10, {"ok": False, "type": "KeyError", "message": "old"}
            )
            await control.set(names.linger, b"%d:%s" % (now, failure))
            assert await persist.resolve("base", "r") == "fresh"
    assert backend.statistics().corrupt == 1


async def test_a_foreign_lease_longer_than_ours_is_replaced_not_waited_for(
    redis_url: str, namespace: str
) -> None:
    device = Recorder("fresh")
    device.release.set()
    backend = RedisBackend(redis_url, namespace=namespace, lease_ttl=10)
    with trio.fail_after(20):
        async with (
            trio_persist.open_persist(device, backend=backend) as persist,
            coredis.Redis.from_url(redis_url) as control,
        ):
            names = names_for(persist, "k")
            await control.set(names.lease, "ab" * 16 + ":5", px=3_600_000)  # an hour
            with trio.fail_after(5):  # not an hour, nor even our own TTL
                assert await persist.resolve("base", "k") == "fresh"
    assert backend.statistics().corrupt == 1


async def test_tokens_stay_exact_past_two_to_the_53(redis_url: str, namespace: str) -> None:
    names = Keys.of(namespace, "key")
    with trio.fail_after(20):
        async with (
            open_leases(redis_url, namespace) as leases,
            coredis.Redis.from_url(redis_url) as control,
        ):
            await control.set(names.fence, str(2**53))  # where doubles stop counting
            tokens = []
            for _ in range(3):
                lead = await leases.acquire(call_for(leases, "key"))
                assert isinstance(lead, Lead)
                tokens.append(lead.token)
                await control.delete([names.lease])
    assert tokens == [2**53 + 1, 2**53 + 2, 2**53 + 3]
