"""The backend's own Redis connection: the protocol reader alone, then the
connection on real servers (pipelining, cancellation, restarts, TLS, a
password, a unix socket). See docs/architecture.md, "The Redis backend"."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import coredis
import pytest
import trio
import trio.testing
from coredis.exceptions import ConnectionError as RedisConnectionError
from coredis.exceptions import NoScriptError, ResponseError, WrongTypeError
from hypothesis import given
from hypothesis import strategies as st

import trio_persist
from fault_proxy import FaultProxy
from redis_helpers import eventually
from redis_server import RedisServer
from trio_persist.redis._client import classify, open_client
from trio_persist.redis._connection import Connection, Settings
from trio_persist.redis._direct import Direct, settings_of
from trio_persist.redis._resp import (
    INCOMPLETE,
    ErrorReply,
    ProtocolViolation,
    Reader,
    error_of,
    pack,
)
from trio_persist.redis._subscriber import Subscriber

# -- the reader ----------------------------------------------------------------------------

_line = st.binary(max_size=20).filter(lambda b: b"\r" not in b and b"\n" not in b)


def _encoded(value: Any, simple: bool) -> bytes:
    """*value* as a server sends it (bytes as a simple string when *simple* allows)."""
    if value is None:
        return b"$-1\r\n"
    if isinstance(value, ErrorReply):
        return b"-" + value.message + b"\r\n"
    if isinstance(value, int):
        return b":%d\r\n" % value
    if isinstance(value, bytes):
        if simple and b"\r" not in value and b"\n" not in value:
            return b"+" + value + b"\r\n"
        return b"$%d\r\n%s\r\n" % (len(value), value)
    return b"*%d\r\n" % len(value) + b"".join(_encoded(item, simple) for item in value)


replies = st.recursive(
    st.none() | st.integers() | st.binary(max_size=40) | _line.map(ErrorReply),
    lambda inner: st.lists(inner, max_size=5),
    max_leaves=20,
)


def _read_all(reader: Reader) -> list[Any]:
    values = []
    while (value := reader.gets()) is not INCOMPLETE:
        values.append(value)
    return values


@given(st.lists(replies, min_size=1, max_size=4), st.booleans())
def test_replies_read_back_as_sent_however_the_bytes_are_split(
    values: list[Any], simple: bool
) -> None:
    data = b"".join(_encoded(value, simple) for value in values)
    for split in range(len(data) + 1):
        reader = Reader()
        reader.feed(data[:split])
        first = _read_all(reader)
        reader.feed(data[split:])
        assert first + _read_all(reader) == values


@given(replies)
def test_a_reply_fed_one_byte_at_a_time_is_read_once_whole(value: Any) -> None:
    reader = Reader()
    data = _encoded(value, simple=False)
    for index in range(len(data) - 1):
        reader.feed(data[index : index + 1])
        assert reader.gets() is INCOMPLETE
    reader.feed(data[-1:])
    assert reader.gets() == value
    assert reader.gets() is INCOMPLETE


@given(st.lists(st.binary() | st.text() | st.integers(), min_size=1, max_size=8))
def test_a_packed_command_reads_back_as_its_arguments(args: list[bytes | str | int]) -> None:
    reader = Reader()
    reader.feed(pack(args))
    expected = [a if isinstance(a, bytes) else str(a).encode() for a in args]
    assert reader.gets() == expected


def test_a_null_array_and_a_float_argument_read_as_redis_means_them() -> None:
    reader = Reader()
    reader.feed(b"*-1\r\n*2\r\n*0\r\n$0\r\n\r\n")
    assert _read_all(reader) == [None, [[], b""]]
    assert pack([1.5]) == b"*1\r\n$3\r\n1.5\r\n"
    with pytest.raises(TypeError, match="bytes, str, int or float"):
        pack([None])  # type: ignore[list-item]


@pytest.mark.parametrize(
    "data", [b"?what\r\n", b":12x\r\n", b"$3\r\nabcde\r\n", b"$-2\r\n", b"*-5\r\n"]
)
def test_bytes_that_are_not_the_protocol_are_refused(data: bytes) -> None:
    reader = Reader()
    reader.feed(data)
    with pytest.raises(ProtocolViolation):
        reader.gets()


def test_error_replies_are_corediss_own_exceptions() -> None:
    assert isinstance(error_of(ErrorReply(b"NOSCRIPT No matching script")), NoScriptError)
    assert isinstance(error_of(ErrorReply(b"WRONGTYPE Operation against")), WrongTypeError)
    other = error_of(ErrorReply(b"ERR something"))
    assert type(other) is ResponseError
    assert "something" in str(other)


# -- on a real server ------------------------------------------------------------------------


@pytest.fixture
async def connection(redis_server: RedisServer) -> AsyncIterator[Connection]:
    connection = Connection(Settings(host="127.0.0.1", port=redis_server.port, read_timeout=10))
    async with trio.open_nursery() as nursery:
        await nursery.start(connection.run)
        yield connection
        nursery.cancel_scope.cancel()


async def test_many_tasks_share_the_connection_and_each_gets_its_own_reply(
    connection: Connection,
) -> None:
    answers: dict[int, Any] = {}

    async def one(index: int) -> None:
        answers[index] = await connection.request("ECHO", b"%d" % index)

    async with trio.open_nursery() as nursery:
        for index in range(200):
            nursery.start_soon(one, index)
    assert answers == {index: b"%d" % index for index in range(200)}
    each = await connection.request_each([["ECHO", "a"], ["NOSUCHCOMMAND"], ["ECHO", "b"]])
    assert each[0::2] == [b"a", b"b"]
    assert isinstance(each[1], ResponseError)


async def test_a_command_larger_than_the_socket_takes_at_once_is_written_whole(
    connection: Connection, namespace: str
) -> None:
    # 16 MB: more than a socket's send buffer, so the write that cannot wait
    # leaves a rest, which the shielded write sends; the commands queued
    # meanwhile follow it on the wire, whole and in order.
    value = bytes(range(256)) * 65536
    key = f"{namespace}:big"
    answers: dict[int, Any] = {}

    async def echo(index: int) -> None:
        answers[index] = await connection.request("ECHO", b"%d" % index)

    with trio.fail_after(30):
        async with trio.open_nursery() as nursery:
            nursery.start_soon(connection.request, "SET", key, value)
            for index in range(20):
                nursery.start_soon(echo, index)
        assert await connection.request("GET", key) == value
    assert answers == {index: b"%d" % index for index in range(20)}


async def test_a_command_sent_at_once_is_written_whole_before_its_answer_is_read(
    connection: Connection, namespace: str
) -> None:
    value = bytes(range(256)) * 65536  # more than the socket takes at once
    key = f"{namespace}:big"
    with trio.fail_after(30):
        sent = connection.send_at_once(pack(["SET", key, value]))
        after = connection.send_at_once(pack(["ECHO", "after"]))  # queued behind the rest
        assert sent is not None
        assert after is not None
        assert await sent.reply() == b"OK"
        assert await after.reply() == b"after"
        assert await connection.request("GET", key) == value


async def test_a_request_cancelled_while_its_reply_is_on_its_way_leaves_the_next_replies_right(
    connection: Connection, redis_url: str, namespace: str
) -> None:
    # BLPOP holds the connection's queue on the server: the ECHO behind it waits,
    # the BLPOP's caller (the one reading) is cancelled, and its reply comes later.
    key = f"{namespace}:list"
    with trio.move_on_after(0.2) as blocked:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(connection.request, "BLPOP", key, 10)
            await trio.testing.wait_all_tasks_blocked()
            echoed: list[Any] = []

            async def echo() -> None:
                echoed.append(await connection.request("ECHO", "after"))
                blocked.cancel()

            nursery.start_soon(echo)
            await trio.testing.wait_all_tasks_blocked()
            async with coredis.Redis.from_url(redis_url) as control:
                await control.rpush(key, ["x"])
            await trio.sleep_forever()
    assert echoed == [b"after"]
    assert await connection.request("ECHO", "next") == b"next"
    assert connection.statistics().dropped_replies == 0  # the ECHO's caller read it


async def test_a_reply_whose_caller_gave_up_is_read_and_dropped(
    connection: Connection, redis_url: str, namespace: str
) -> None:
    key = f"{namespace}:list"
    with trio.move_on_after(0.05):
        await connection.request("BLPOP", key, 10)
    async with coredis.Redis.from_url(redis_url) as control:
        await control.rpush(key, ["x"])
    assert await connection.request("ECHO", "mine") == b"mine"
    assert connection.statistics().dropped_replies == 1


async def test_a_server_restart_fails_every_request_in_flight_as_a_drop(
    tmp_path: Path, namespace: str
) -> None:
    server = RedisServer()
    server.start()
    try:
        connection = Connection(Settings(host="127.0.0.1", port=server.port, read_timeout=10))
        failures: list[BaseException] = []

        async def blocked() -> None:
            try:
                await connection.request("BLPOP", f"{namespace}:never", 10)
            except RedisConnectionError as exc:
                failures.append(exc)

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                await nursery.start(connection.run)
                for _ in range(3):
                    nursery.start_soon(blocked)
                await trio.testing.wait_all_tasks_blocked()
                await trio.to_thread.run_sync(server.stop)
                server.start()
        assert len(failures) == 3
        assert not connection.usable
        translated = classify(failures[0], "Redis at x")
        assert isinstance(translated, trio_persist.BackendUnavailable)
        with pytest.raises(RedisConnectionError):
            await connection.request("PING")
    finally:
        server.stop()


async def test_the_backends_connection_is_remade_after_a_restart_and_used_meanwhile_not(
    namespace: str,
) -> None:
    server = RedisServer()
    server.start()
    try:
        direct = Direct()
        async with coredis.Redis.from_url(server.url) as client, trio.open_nursery() as nursery:
            nursery.start_soon(direct.keep, client)
            await eventually(lambda: direct.usable() is not None)
            first = direct.usable()
            assert first is not None
            await trio.to_thread.run_sync(server.stop)
            with pytest.raises(RedisConnectionError):
                await first.request("PING")
            assert direct.usable() is None  # scripts go through the client meanwhile
            server.start()
            await eventually(lambda: direct.made == 2 and direct.usable() is not None)
            again = direct.usable()
            assert again is not None
            assert await again.request("PING") == b"PONG"
            nursery.cancel_scope.cancel()
    finally:
        server.stop()


async def test_tls_uses_the_clients_context_and_checks_the_hostname(
    tls_front: tuple[int, Path],
) -> None:
    port, ca_file = tls_front
    # As the backend makes its client from a URL (certificate and hostname checked).
    right = open_client(f"rediss://localhost:{port}/0?ssl_ca_certs={ca_file}", 5)
    wrong = open_client(f"rediss://127.0.0.1:{port}/0?ssl_ca_certs={ca_file}", 5)
    settings, refused = settings_of(right), settings_of(wrong)
    assert settings is not None
    assert settings.ssl_context is not None
    assert refused is not None
    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            connection = Connection(settings)
            await nursery.start(connection.run)
            assert await connection.request("PING") == b"PONG"
            nursery.cancel_scope.cancel()
        with pytest.raises(trio.BrokenResourceError) as caught:
            await Connection(refused).run()
        assert "CERTIFICATE_VERIFY_FAILED" in repr(caught.value.__cause__)


async def test_a_password_a_database_and_a_unix_socket_come_from_the_clients_pool(
    tmp_path: Path, namespace: str
) -> None:
    socket = tmp_path / "redis.sock"
    server = RedisServer(extra=("--requirepass", "s3cret", "--unixsocket", str(socket)))
    server.start()
    try:
        urls = [
            f"redis://:s3cret@127.0.0.1:{server.port}/3",
            f"unix://{socket}?db=3&password=s3cret",
        ]
        with trio.fail_after(20):
            for url in urls:
                async with coredis.Redis.from_url(url) as client, trio.open_nursery() as nursery:
                    settings = settings_of(client)
                    assert settings is not None
                    assert settings.db == 3
                    connection = Connection(settings)
                    await nursery.start(connection.run)
                    await connection.request("SET", f"{namespace}:k", url)
                    assert await client.get(f"{namespace}:k") == url.encode()  # same database
                    nursery.cancel_scope.cancel()
            no_password = Settings(host="127.0.0.1", port=server.port, password="wrong")
            with pytest.raises(ResponseError, match="password"):
                await Connection(no_password).run()
    finally:
        server.stop()


async def test_only_a_plain_client_with_a_basic_pool_gets_a_connection_of_its_own() -> None:
    assert settings_of(coredis.Redis(decode_responses=True)) is None
    assert settings_of(coredis.RedisCluster(startup_nodes=[])) is None
    assert settings_of(object()) is None
    assert settings_of(coredis.Redis(host="h", port=1, db=2)) == Settings(host="h", port=1, db=2)


async def test_a_backends_flights_run_their_scripts_on_its_own_connection(
    redis_url: str, namespace: str
) -> None:
    from trio_persist.redis import RedisBackend

    async def device(base: Any, request: Any) -> Any:
        return request

    backend = RedisBackend(redis_url, namespace=namespace)
    async with trio_persist.open_persist(device, backend=backend) as persist:
        await eventually(lambda: backend._link.direct.usable() is not None)
        for index in range(5):
            assert await persist.resolve("base", index) == index
        connection = backend._link.direct.usable()
        assert connection is not None
        assert connection.statistics().requests >= 10  # acquire and commit, each


async def test_a_leader_whose_server_forgot_the_scripts_meanwhile_still_commits(
    redis_url: str, namespace: str
) -> None:
    from trio_persist.redis import RedisBackend

    release = trio.Event()

    async def device(base: Any, request: Any) -> Any:
        await release.wait()
        return request

    backend = RedisBackend(redis_url, namespace=namespace)
    with trio.fail_after(20):
        async with (
            trio_persist.open_persist(device, backend=backend) as persist,
            coredis.Redis.from_url(redis_url) as control,
        ):
            await eventually(lambda: backend._link.direct.usable() is not None)
            async with trio.open_nursery() as nursery:
                nursery.start_soon(persist.resolve, "base", "value")
                await eventually(lambda: backend.statistics().leading == 1)
                # Its commit was packed as it began leading; the server forgets it now.
                await control.script_flush()
                release.set()
            assert backend.statistics().led == 1
            assert [key async for key in control.scan_iter(f"{{{namespace}:*}}:result")]


# -- the subscription on a connection of its own ------------------------------------------


async def _publish(port: int, namespace: str, data: bytes) -> None:
    async with coredis.Redis(host="127.0.0.1", port=port) as control:
        await control.publish(f"{{{namespace}:k}}:done", data)


async def test_the_subscription_resubscribes_after_a_restart_and_pokes_its_followers(
    namespace: str,
) -> None:
    server = RedisServer()
    server.start()
    try:
        subscriber = Subscriber(namespace, timeout=2.0)
        async with coredis.Redis.from_url(server.url) as client, trio.open_nursery() as nursery:
            with subscriber.watch("k") as watch, trio.fail_after(30):
                await nursery.start(subscriber.run, client)
                assert subscriber.up
                await _publish(server.port, namespace, b"one")
                await watch.wait(10)
                assert watch.inbox == [b"one"]
                await trio.to_thread.run_sync(server.stop)
                await eventually(lambda: not subscriber.up)
                assert watch.poked  # the follower looks for itself meanwhile
                await watch.wait(0)
                server.start()
                await eventually(lambda: subscriber.up)
                assert watch.poked  # and once more: what was published while away
                await _publish(server.port, namespace, b"two")
                await eventually(lambda: b"two" in watch.inbox)
            nursery.cancel_scope.cancel()
    finally:
        server.stop()


async def test_once_caught_up_the_subscription_has_handed_on_everything_published_before(
    redis_server: RedisServer, namespace: str
) -> None:
    # What a follower relies on before it concludes that its leader vanished:
    # the leader's outcome, published first, may still wait unread. Published
    # here on a blocking socket, so that no task runs until the server has
    # answered (its publication is in the subscription's socket by then).
    subscriber = Subscriber(namespace, timeout=5.0)
    publisher = socket.create_connection(("127.0.0.1", redis_server.port), timeout=5)
    async with (
        coredis.Redis.from_url(redis_server.url) as client,
        trio.open_nursery() as nursery,
    ):
        with publisher, subscriber.watch("k") as watch, trio.fail_after(20):
            await subscriber.caught_up()  # none up yet: at once
            await nursery.start(subscriber.run, client)
            for index in range(20):
                sent = [b"%d:%d" % (index, each) for each in range(3)]
                publisher.sendall(
                    b"".join(pack(["PUBLISH", f"{{{namespace}:k}}:done", data]) for data in sent)
                )
                answers = b""
                while answers.count(b"\r\n") < len(sent):
                    answers += publisher.recv(4096)
                await subscriber.caught_up()
                assert watch.inbox == sent
                watch.inbox.clear()
        nursery.cancel_scope.cancel()


async def test_a_silent_subscription_is_pinged_and_dropped_when_the_ping_goes_unanswered(
    redis_server: RedisServer, namespace: str
) -> None:
    proxy = FaultProxy(redis_server.port)
    subscriber = Subscriber(namespace, timeout=0.5)  # pinged after 1 s of quiet
    async with (
        trio.open_nursery() as nursery,
        coredis.Redis.from_url(proxy.url) as client,
    ):
        await nursery.start(proxy.serve)
        with trio.fail_after(30):
            await nursery.start(subscriber.run, client)
            assert subscriber.up
            proxy.stall()
            await eventually(lambda: not subscriber.up)
            proxy.resume()
            await eventually(lambda: subscriber.up)
        nursery.cancel_scope.cancel()
