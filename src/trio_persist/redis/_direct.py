"""A connection of the backend's own, for the scripts its flights run.

coredis's client takes a connection out of its pool for every command, under a
deadline and a lock of its own, and its connection object adds as much again
(on loopback: a ``GET`` through the client ~170 us of CPU here, on a coredis
connection ~95 us, as raw protocol on a Trio stream ~60 us). A flight's
scripts go instead on one lean connection the backend keeps open itself
(`~._resp.Connection`: the protocol spoken directly, many requests in flight
at once), made from the client's pool settings: TCP or unix socket, TLS with
the pool's SSL context (and its hostname check), user name and password (or
credential provider), database, client name, connect and read timeouts.

Only for a plain ``coredis.Redis`` client with a basic pool that returns bytes
and waits for replies: Cluster and Sentinel clients choose a node per command,
and a client-side cache must see every write. While the connection is down
(being made, or Redis away), scripts go through the client as before, and it
is made again in the background. One the server closed while it sat unused
is found so before it is handed out (`Connection.ready`), and counts as down.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import attrs
import trio

from .._logging import logger
from ._connection import Connection, Settings
from ._resp import INCOMPLETE, ErrorReply, Reader, error_of, greet, pack, read_reply

__all__ = ["Direct", "Pings", "listen", "settings_of"]


@attrs.define(eq=False)
class _Started:
    """What ``connection.run`` reports to once its handshake is done."""

    direct: Direct
    connection: Connection

    def started(self, value: object = None) -> None:
        self.direct.connection = self.connection
        self.direct.made += 1


@attrs.define(eq=False)
class Direct:
    """The connection while it is up (None otherwise); `keep` keeps it up."""

    connection: Connection | None = None
    made: int = 0
    """Connections opened so far (the first, then one after each drop)."""

    def usable(self) -> Connection | None:
        """The connection, if it can take a request now; else None.

        One that went unused for a while is looked at first
        (`Connection.ready`): found closed by the server meanwhile, or out of
        step, it is dropped (and made again in the background), and this
        returns None: the request goes through the client, not to a
        connection that would fail it.
        """
        connection = self.connection
        if connection is not None and connection.ready():
            return connection
        return None

    async def keep(self, client: Any) -> None:
        """Keep a connection to *client*'s server open until cancelled; remade
        after a drop (at once, then backing off to once a second while it fails).

        Returns at once for a client this does not apply to.
        """
        settings = settings_of(client)
        if settings is None:
            return
        pause = 0.0
        while True:
            connection = Connection(settings)
            try:
                await connection.run(task_status=_Started(self, connection))
            except Exception as exc:  # refused, unreachable: the client path says why
                logger.debug("the backend's own Redis connection failed: %r", exc)
            finally:
                if self.connection is connection:  # it was up: remake it at once
                    self.connection = None
                    pause = 0.0
            await trio.sleep(pause)
            pause = min(max(2 * pause, 0.05), 1.0)


def settings_of(client: Any) -> Settings | None:
    """How to connect as *client*'s pool does, or None if the client is not a
    plain ``coredis.Redis`` with a basic pool, no cache, bytes replies."""
    import coredis
    from coredis.connection import TCPConnection, UnixDomainSocketConnection

    pool = getattr(client, "connection_pool", None)
    if type(client) is not coredis.Redis or type(pool) is not coredis.ConnectionPool:
        return None
    kwargs: dict[str, Any] = dict(pool.connection_kwargs)
    if getattr(pool, "cache", None) is not None or kwargs.get("noreply"):
        return None
    if kwargs.get("decode_responses"):
        return None
    common = _common(kwargs)
    location: Any = pool.location
    if issubclass(pool.connection_class, UnixDomainSocketConnection):
        return Settings(path=location.path, **common)
    if issubclass(pool.connection_class, TCPConnection):
        return Settings(
            host=location.host,
            port=location.port,
            ssl_context=kwargs.get("ssl_context"),
            keepalive=bool(kwargs.get("socket_keepalive")),
            **common,
        )
    return None


@attrs.frozen
class _Provided:
    """Credentials asked of a coredis credential provider at each connect."""

    provider: Any

    async def __call__(self) -> tuple[str | None, str | None]:
        given = await self.provider.get_credentials()
        return given.username, given.password


def _common(kwargs: dict[str, Any]) -> dict[str, Any]:
    provider = kwargs.get("credential_provider")
    return {
        "username": kwargs.get("username"),
        "password": kwargs.get("password"),
        "credentials": _Provided(provider) if provider is not None else None,
        "db": int(kwargs.get("db") or 0),
        "client_name": kwargs.get("client_name"),
        "connect_timeout": kwargs.get("connect_timeout"),
        "read_timeout": kwargs.get("stream_timeout"),
    }


async def listen(
    settings: Settings,
    pattern: str,
    deliver: Callable[[bytes, bytes], bool],
    idle: float,
    answer_within: float,
    subscribed: Callable[[], None],
    pings: Pings,
) -> None:
    """Subscribe to *pattern* on a lean connection made from *settings*, call
    *subscribed* once it is, then call ``deliver(channel, data)`` for each
    publication, in order, until cancelled. ``deliver`` says whether it woke
    anyone: then the woken tasks run before this reads again.

    The caller bounds the connect and the subscription. Quiet for *idle*
    seconds, or asked by *pings* (`Pings.catch_up`), it sends a ``PING``: no
    answer within *answer_within* seconds is a drop.

    Raises:
        coredis.exceptions.ConnectionError: the connection broke.
        TimeoutError: the server did not answer a ``PING`` in time.
        Whatever connecting raised (`OSError`, TLS errors, an error reply).
    """
    stream = await settings.open_stream()
    try:
        reader = Reader()
        commands = await settings.greeting()
        commands.append(["PSUBSCRIBE", pattern])
        await greet(stream, reader, commands)
        pings.live = True
        subscribed()
        while True:
            await _until_quiet(stream, reader, deliver, idle, pings)
            pings.sending()
            await stream.send_all(pack(["PING"]))
            with trio.fail_after(answer_within):
                _hand_on(await read_reply(stream, reader), deliver, pings)
    finally:
        pings.end()
        await trio.aclose_forcefully(stream)


async def _until_quiet(
    stream: trio.abc.Stream,
    reader: Reader,
    deliver: Callable[[bytes, bytes], bool],
    idle: float,
    pings: Pings,
) -> None:
    """Hand on replies until *idle* seconds pass without one, or a ``PING`` is
    asked for (`Pings.catch_up`).

    One cancel scope per quiet period, not per reply: a reply only notes the
    time (a scope costs a few microseconds, on the path of every publication
    to its follower); the scope ends at the first deadline, and is made again
    for what is left of the quiet period if a reply came meanwhile.

    Once the replies read are all handed on, if they woke a follower, three
    passes of Trio's scheduler go by before the next receive: that receive
    (one that finds nothing, then a wait registered with epoll) would otherwise
    come first in the next pass half the time, on the way of the follower and
    then of the caller it answers.
    """
    heard = trio.current_time()
    woke = False
    while not pings.asked:
        with trio.move_on_at(heard + idle) as pings.quiet:
            while True:
                reply = reader.gets()
                if reply is INCOMPLETE:
                    if woke:
                        woke = False
                        for _ in range(3):
                            await trio.lowlevel.cancel_shielded_checkpoint()
                    reply = await read_reply(stream, reader)
                woke |= _hand_on(reply, deliver, pings)
                heard = trio.current_time()
        pings.quiet = None
        if trio.current_time() >= heard + idle:
            return


def _hand_on(reply: Any, deliver: Callable[[bytes, bytes], bool], pings: Pings) -> bool:
    if isinstance(reply, ErrorReply):
        raise error_of(reply)
    if isinstance(reply, list) and len(reply) == 4 and reply[0] == b"pmessage":
        return deliver(reply[2], reply[3])
    if reply == _PONG:
        pings.answered()
    return False


_PONG = [b"pong", b""]  # a PING's answer on a subscribed connection


@attrs.define(eq=False)
class Pings:
    """The ``PING`` s of a subscription (`listen`), and their answers: once a
    ``PING``'s answer is read, so is everything the server sent before it."""

    live: bool = False
    """Whether a subscription sends and reads them now."""
    asked: bool = False
    """A ``PING`` is wanted at once (`catch_up`)."""
    quiet: trio.CancelScope | None = None
    """The subscription's wait for replies, while it waits (ended by `catch_up`)."""
    sent: int = 0
    read: int = 0
    _answer: trio.Event = attrs.Factory(trio.Event)

    async def catch_up(self, seconds: float) -> None:
        """Return once the subscription has read everything the server sent it
        before this call: the answer to a ``PING`` sent after it is read.
        Waits at most *seconds*; returns at once while no subscription is up
        (its followers look for themselves then)."""
        if not self.live:
            await trio.lowlevel.checkpoint()
            return
        wanted = self.sent + 1
        self.asked = True
        if self.quiet is not None:
            self.quiet.cancel()
        with trio.move_on_after(seconds):
            while not self._past(wanted):
                await self._answer.wait()

    def _past(self, wanted: int) -> bool:
        """Whether the answer to ``PING`` number *wanted* was read, or will never be."""
        return not self.live or self.read >= wanted

    def sending(self) -> None:
        """The subscription sends a ``PING`` now."""
        self.asked = False
        self.sent += 1

    def answered(self) -> None:
        """The subscription read a ``PING``'s answer."""
        self.read += 1
        self._answer.set()
        self._answer = trio.Event()

    def end(self) -> None:
        """The subscription is gone: nothing is waited for on it any longer."""
        self.live = self.asked = False
        self.quiet = None
        self.sent = self.read = 0
        self._answer.set()
        self._answer = trio.Event()
