"""A connection of the backend's own that the server closed while nobody used it
(killed, timed out, its link dropped, the server restarted) is found closed when
next handed out, and replaced: the next flight or routed ask goes through with
no attempt failed (docs/redis.md, "Connections"). On real servers, each of its
own (a fault here would touch every test's connections).
"""

from __future__ import annotations

import functools
import socket
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import coredis
import pytest
import trio
import trustme
from coredis.tokens import PureToken

import trio_persist
from fault_proxy import FaultProxy
from redis_helpers import eventually
from redis_server import RedisServer
from trio_persist.redis import RedisBackend
from trio_persist.redis._connection import IDLE_CHECK, Connection, Settings
from trio_persist.redis._direct import Direct
from trio_persist.redis._link import Link


@attrs.define
class Scene:
    """A private server, a proxy in front of it (the backends' way there), and
    the server's ids of the connections a fault must close (those the
    backends keep for their scripts)."""

    server: RedisServer
    proxy: FaultProxy
    ids: list[int] = attrs.Factory(list)


async def _gone(scene: Scene, control: coredis.Redis[bytes]) -> None:
    """Until the server lists none of the backends' connections any more."""
    while await control.client_list(identifiers=scene.ids):  # noqa: ASYNC110 - Redis, not a flag
        await trio.sleep(0.05)


async def killed(scene: Scene) -> None:
    async with coredis.Redis.from_url(scene.server.url) as control:
        await control.client_kill(type_=PureToken.NORMAL, skipme=True)
        await _gone(scene, control)


async def timed_out(scene: Scene) -> None:
    async with coredis.Redis.from_url(scene.server.url) as control:
        await control.config_set({"timeout": 1})  # seconds idle; the polls keep this one busy
        await _gone(scene, control)
        await control.config_set({"timeout": 0})


async def cut(scene: Scene) -> None:
    scene.proxy.cut()
    async with coredis.Redis.from_url(scene.server.url) as control:
        await _gone(scene, control)


async def restarted(scene: Scene) -> None:
    await trio.to_thread.run_sync(scene.server.stop)
    await trio.to_thread.run_sync(scene.server.start)


FAULTS = pytest.mark.parametrize("fault", [killed, timed_out, cut, restarted])
Fault = Callable[[Scene], Awaitable[None]]


@asynccontextmanager
async def open_scene() -> AsyncIterator[Scene]:
    server = RedisServer()
    server.start()
    try:
        proxy = FaultProxy(server.port)
        async with trio.open_nursery() as nursery:
            await nursery.start(proxy.serve)
            yield Scene(server, proxy)
            nursery.cancel_scope.cancel()
    finally:
        server.stop()


async def _own_connection(scene: Scene, link: Link) -> Connection:
    """The link's connection for scripts, once made; its id noted."""
    await eventually(lambda: link.direct.usable() is not None)
    connection = link.direct.usable()
    assert connection is not None
    scene.ids.append(await connection.request("CLIENT", "ID"))
    return connection


async def _idle_past_the_check(fault: Fault, scene: Scene) -> None:
    await fault(scene)
    await trio.sleep(2 * IDLE_CHECK)  # unused a while: looked at when next handed out


async def _echo(base: Any, request: Any) -> Any:
    return request


@FAULTS
async def test_the_next_flight_after_a_connection_broke_while_idle_fails_no_attempt(
    fault: Fault, namespace: str
) -> None:
    with trio.fail_after(20):
        async with open_scene() as scene:
            backend = RedisBackend(
                scene.proxy.url, namespace=namespace, timeout=2.0, heartbeat=None
            )
            async with trio_persist.open_persist(_echo, backend=backend) as persist:
                link = backend._link
                first = await _own_connection(scene, link)
                assert await persist.resolve("base", 1) == 1
                sent = first.statistics().requests
                await _idle_past_the_check(fault, scene)
                assert await persist.resolve("base", 2) == 2
                assert link.retried == 0  # its first attempt went through
                assert first.statistics().requests == sent  # nothing was sent on the dead one
                assert first.statistics().found_closed == 1
                await eventually(lambda: link.direct.made == 2)  # and it was replaced


def _routed(url: str, namespace: str) -> RedisBackend:
    return RedisBackend(url, namespace=namespace, timeout=2.0, workers="cluster", heartbeat=None)


async def _count(state: Any, request: Any) -> Any:
    return {"n": state["n"] + 1}


@pytest.mark.parametrize("fault", [killed, cut])
async def test_the_next_routed_ask_after_the_connections_broke_while_idle_fails_no_attempt(
    fault: Fault, namespace: str
) -> None:
    # Two persists on backends of their own stand for two processes. (Their
    # inboxes take every second on the same connection: never idle as long as
    # a server's idle timeout, which counts whole seconds.)
    with trio.fail_after(30):
        async with open_scene() as scene:
            owner_backend = _routed(scene.proxy.url, namespace)
            caller_backend = _routed(scene.proxy.url, namespace)
            async with (
                trio_persist.open_persist(_count, backend=owner_backend) as owner,
                trio_persist.open_persist(_count, backend=caller_backend) as caller,
            ):
                links = [owner_backend._link, caller_backend._link]
                await _own_connection(scene, links[1])  # the owner's may stay busy renewing
                assert await owner.ask("g", {}, default=lambda: {"n": 0}) == {"n": 1}
                assert await caller.ask("g", {}) == {"n": 2}  # routed to the owner
                assert caller_backend.statistics().routed_out == 1
                await _idle_past_the_check(fault, scene)
                assert await caller.ask("g", {}) == {"n": 3}
                assert caller_backend.statistics().routed_out == 2
                assert [link.retried for link in links] == [0, 0]


async def test_a_connection_with_a_reply_nobody_asked_for_is_dropped_before_use(
    autojump_clock: object,
) -> None:
    # A server (a stand-in here) that sends a reply unasked: the connection is
    # out of step, and every reply after would answer the wrong request.
    async def stray(stream: trio.SocketStream) -> None:
        await stream.send_all(b"+PONG\r\n")
        await trio.sleep_forever()

    async with trio.open_nursery() as nursery:
        listeners = await nursery.start(
            functools.partial(trio.serve_tcp, stray, 0, host="127.0.0.1")
        )
        port = listeners[0].socket.getsockname()[1]
        connection = Connection(Settings(host="127.0.0.1", port=port))
        await nursery.start(connection.run)
        direct = Direct(connection)
        assert direct.usable() is connection  # just made: not looked at
        await trio.sleep(IDLE_CHECK)
        assert direct.usable() is None
        assert connection.statistics().found_closed == 1
        nursery.cancel_scope.cancel()


def _tls_server(listener: socket.socket, context: ssl.SSLContext) -> None:
    """Serve one connection as a TLS server on OpenSSL does (session tickets
    sent as soon as the handshake ends), answering each PING."""
    connection, _ = listener.accept()
    with context.wrap_socket(connection, server_side=True) as tls:
        while data := tls.recv(65536):
            tls.sendall(b"+PONG\r\n" * data.count(b"PING"))


async def test_an_idle_tls_connection_is_handed_out_as_it_is() -> None:
    # What TLS sends after its handshake (session tickets) is not a stray reply.
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("localhost").configure_cert(server_context)
    client_context = ssl.create_default_context()
    authority.configure_trust(client_context)
    with socket.create_server(("127.0.0.1", 0)) as listener, trio.fail_after(20):
        port = listener.getsockname()[1]
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, _tls_server, listener, server_context)
            connection = Connection(
                Settings(host="localhost", port=port, ssl_context=client_context)
            )
            await nursery.start(connection.run)
            await trio.sleep(2 * IDLE_CHECK)
            assert Direct(connection).usable() is connection
            assert await connection.request("PING") == b"PONG"
            nursery.cancel_scope.cancel()
