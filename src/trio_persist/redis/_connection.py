"""The backend's own connection to a plain server: RESP2 (`_resp`) on a Trio
stream, many requests in flight.

A request costs about a third of what it costs through coredis on loopback,
where the client's own bookkeeping, not the server, is most of a round trip.
Requests are pipelined with no reader task: the first waiting caller reads
for all. A connection that breaks fails every request in flight with
`~coredis.exceptions.ConnectionError`; one that does not answer within its
read timeout is closed and its requests fail with `TimeoutError`.

A connection the server closed while nobody used it (a restart, an idle
timeout, ``CLIENT KILL``, a proxy that dropped it) is found so when it is
next handed out, if it sat unused for `IDLE_CHECK` seconds: `Connection.ready`
then looks, without waiting, for anything to read on it (end-of-file, or a
reply nobody asked for: out of step), and fails it if there is. A connection
in use is never looked at: one clock read per request, no system call.
"""

from __future__ import annotations

import collections
import os
import select
import ssl
from collections.abc import Callable, Sequence
from typing import Any

import attrs
import trio

from ._resp import (
    INCOMPLETE,
    Arg,
    ErrorReply,
    ProtocolViolation,
    Reader,
    drop_class,
    dropped_error,
    error_of,
    greet,
    pack,
    read_reply,
)

__all__ = ["IDLE_CHECK", "Connection", "ConnectionStatistics", "Sent", "Settings"]

IDLE_CHECK = 0.1
"""Seconds a connection goes unused before `Connection.ready` looks at it: a
connection in use stays unchecked (a look is a system call), one that paused
is looked at once (a look costs about a microsecond)."""


@attrs.frozen
class Settings:
    """Where and how to connect: a TCP address (with TLS if *ssl_context*) or a
    unix socket *path*; credentials, database and name as the handshake sends them.

    ``credentials``, if given, is called for ``(username, password)`` at each
    connect (a coredis credential provider's, for one).
    """

    host: str | None = None
    port: int = 6379
    path: str | None = None
    ssl_context: ssl.SSLContext | None = None
    username: str | None = attrs.field(default=None, repr=False)
    password: str | None = attrs.field(default=None, repr=False)
    credentials: Any = attrs.field(default=None, repr=False)
    db: int = 0
    client_name: str | None = None
    connect_timeout: float | None = None
    read_timeout: float | None = None
    keepalive: bool = False

    async def open_stream(self) -> trio.abc.Stream:
        """A connected stream (TLS handshake done), not yet greeted."""
        if self.path is not None:
            return await trio.open_unix_socket(self.path)
        assert self.host is not None
        tcp = await trio.open_tcp_stream(self.host, self.port)
        if self.keepalive:
            import socket

            tcp.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        if self.ssl_context is None:
            return tcp
        stream = trio.SSLStream(tcp, self.ssl_context, server_hostname=self.host)
        try:
            await stream.do_handshake()
        except BaseException:
            await trio.aclose_forcefully(tcp)
            raise
        return stream

    async def greeting(self) -> list[list[Arg]]:
        """The handshake's commands: AUTH, SELECT, CLIENT SETNAME, as configured."""
        username, password = self.username, self.password
        if self.credentials is not None:
            username, password = await self.credentials()
        commands: list[list[Arg]] = []
        if password or username:
            commands.append(["AUTH", *([username] if username else []), password or ""])
        if self.db:
            commands.append(["SELECT", self.db])
        if self.client_name is not None:
            commands.append(["CLIENT", "SETNAME", self.client_name])
        return commands


@attrs.define(eq=False)
class _Request:
    """One request in flight: its reply (once read), its task (None once the
    caller gave up: the reply is dropped), and whether that task is parked."""

    task: trio.lowlevel.Task | None
    reply: Any = INCOMPLETE
    parked: bool = False


@attrs.frozen
class ConnectionStatistics:
    """A snapshot of `Connection`'s counters."""

    requests: int
    in_flight: int
    dropped_replies: int
    broken: bool
    found_closed: int
    """Times `Connection.ready` found it closed or out of step (0 or 1)."""


@attrs.define(eq=False)
class Connection:
    """A pipelined connection: any number of tasks send requests at once, and
    the replies are matched to them in order.

    A request is written at once by the task that makes it (or, if a write is
    under way, by that writer right after): on a plain socket that takes it
    all, without waiting; else shielded and bounded by the read timeout, so a
    cancelled caller never leaves half a command on the wire.
    Replies are read by one waiting caller at a time, which hands each on and
    passes the reading to the next waiting caller once its own has come (no
    task of its own reads: a lone request costs no extra task switch). A
    caller cancelled before its reply came leaves the request in flight: its
    reply is read and dropped, and the replies of the others stay in step.
    When the connection breaks (noticed by a write or a read), every request
    in flight fails, and `run` returns.
    """

    settings: Settings
    stream: trio.abc.Stream | None = None
    failure: Exception | None = None
    """Why the connection is down, once it is (None while it is usable)."""
    _reader: Reader = attrs.Factory(Reader)
    _waiting: collections.deque[_Request] = attrs.Factory(collections.deque)
    _out: bytearray = attrs.Factory(bytearray)
    _writing: bool = False
    _fd: int = -1  # the socket's descriptor while `_write_now` may use it
    _reading: bool = False
    _scope: trio.CancelScope = attrs.Factory(trio.CancelScope)
    _requests: int = 0
    _dropped: int = 0
    _used: float = 0.0
    _readable: Callable[[], bool] | None = None
    _found_closed: int = 0

    @property
    def usable(self) -> bool:
        """Whether the connection is up and can take a request."""
        return self.stream is not None and self.failure is None

    def ready(self) -> bool:
        """Whether the connection can take a request now: `usable`, and, if it
        went unused for `IDLE_CHECK` seconds, with nothing to read on it.

        Anything there while no request is in flight means the connection
        is gone (end-of-file, a reset) or out of step (a reply nobody asked
        for): it is failed (`run` returns, and whoever keeps it makes
        another) and this returns False. Never waits; one clock read, and a
        non-blocking poll only after a pause.
        """
        if self.stream is None or self.failure is not None:
            return False
        now = trio.current_time()
        paused = now - self._used >= IDLE_CHECK
        self._used = now
        if paused and not self._waiting and self._stray():
            self._found_closed += 1
            self._fail(dropped_error("the Redis server closed the connection while it was idle"))
            return False
        return True

    def _stray(self) -> bool:
        """Whether anything waits to be read (no request being in flight)."""
        return self._reader.pending > 0 or (self._readable is not None and self._readable())

    def statistics(self) -> ConnectionStatistics:
        return ConnectionStatistics(
            requests=self._requests,
            in_flight=len(self._waiting),
            dropped_replies=self._dropped,
            broken=self.failure is not None,
            found_closed=self._found_closed,
        )

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Connect and greet (within the connect timeout), report started, then
        wait until the connection breaks (returns, the stream closed) or this is
        cancelled (every request still in flight fails).

        Raises:
            Whatever connecting or greeting raised (an `OSError`, a TLS error,
            the greeting's error reply as coredis's exception).
        """
        try:
            with self._scope:
                with trio.fail_after(self.settings.connect_timeout or float("inf")):
                    self.stream = await self.settings.open_stream()
                    self._fd = _descriptor_of(self.stream)
                    commands = await self.settings.greeting()
                    if isinstance(self.stream, trio.SSLStream):
                        # A TLS server sends session tickets once its handshake
                        # ends: read before the PONG, never left on the socket
                        # for `ready` to take for a stray reply.
                        commands.append(["PING"])
                    await greet(self.stream, self._reader, commands)
                self._readable = readable_check(self.stream)
                self._used = trio.current_time()
                task_status.started()
                await trio.sleep_forever()
        finally:
            self._fail(None)
            if self.stream is not None:
                await trio.aclose_forcefully(self.stream)

    def _fail(self, error: BaseException | None) -> None:
        """Mark the connection down (the first cause is kept), fail what is in
        flight, and end `run` (which closes the stream)."""
        self._fd = -1  # closed soon: its number may name another file then
        if self.failure is None:
            if isinstance(error, (trio.TooSlowError, TimeoutError)):
                self.failure = TimeoutError("the Redis server did not answer in time")
            elif isinstance(error, Exception):
                self.failure = error
            else:  # closed on purpose: cancelled, or ended
                self.failure = _Closed("the backend's Redis connection closed")
        self._scope.cancel()
        while self._waiting:
            self._deliver(_Broken())

    def _deliver(self, reply: Any) -> None:
        if not self._waiting:
            raise ProtocolViolation("a reply to no request")
        request = self._waiting.popleft()
        request.reply = reply
        if request.parked:
            request.parked = False
            assert request.task is not None
            trio.lowlevel.reschedule(request.task)
        elif request.task is None:
            self._dropped += 1

    async def request(self, *args: Arg) -> Any:
        """Send one command and return its reply; an error reply is raised.

        Checkpoints. Cancelled before its reply came, the request stays in
        flight (its reply will be dropped).

        Raises:
            coredis.exceptions.ConnectionError: the connection is down or broke.
            TimeoutError: the server did not answer within the read timeout.
            coredis.exceptions.ResponseError: an error reply (its subclass).
        """
        reply = (await self._send([pack(args)]))[-1].reply
        if isinstance(reply, (ErrorReply, _Broken)):
            raise self._error_of(reply)
        return reply

    async def request_packed(self, command: bytes) -> Any:
        """`request` for one *command* packed already (`~._resp.pack`)."""
        reply = (await self._send([command]))[-1].reply
        if isinstance(reply, (ErrorReply, _Broken)):
            raise self._error_of(reply)
        return reply

    async def request_each(self, commands: Sequence[Sequence[Arg]]) -> list[Any]:
        """Send *commands* at once (one write) and return their replies in order:
        each the reply, or the exception its error reply (or a broken
        connection) stands for. Checkpoints; cancellation as in `request`.
        """
        if not commands:
            await trio.lowlevel.checkpoint()
            return []
        requests = await self._send([pack(command) for command in commands])
        return [
            self._error_of(r.reply) if isinstance(r.reply, (ErrorReply, _Broken)) else r.reply
            for r in requests
        ]

    def _error_of(self, reply: ErrorReply | _Broken) -> Exception:
        if isinstance(reply, ErrorReply):
            return error_of(reply)
        failure = self.failure
        if isinstance(failure, TimeoutError):
            return TimeoutError(str(failure))
        return dropped_error(f"the backend's Redis connection broke: {failure!r}")

    def send_at_once(self, command: bytes) -> Sent | None:
        """Queue one packed *command* and write it now (the bytes leave before
        anything else is done for it: see `Sent.reply`, which writes what the
        socket did not take); None, with nothing queued, while the connection
        is down or another write is under way. Never a checkpoint.
        """
        if not self.usable or self._writing:
            return None
        request = self._queue([command])[0]
        self._write_now()
        return Sent(self, request)

    def _queue(self, packed: list[bytes]) -> list[_Request]:
        task = trio.lowlevel.current_task()
        requests = [_Request(task) for _ in packed]
        self._waiting.extend(requests)
        for data in packed:
            self._out += data
        self._requests += len(packed)
        return requests

    async def _send(self, packed: list[bytes]) -> list[_Request]:
        if not self.usable:
            await trio.lowlevel.checkpoint()
            raise self._error_of(_Broken())
        requests = self._queue(packed)
        try:
            if not self._writing and not self._write_now():
                await self._write()
            await self._wait_for(requests[-1])
        except BaseException:
            for request in requests:
                request.task = None  # its reply will be read and dropped
            raise
        return requests

    async def _reply_to(self, request: _Request) -> Any:
        """The reply of a request `send_at_once` queued (see `Sent.reply`)."""
        try:
            if self._out and not self._writing:
                await self._write()
            await self._wait_for(request)
        except BaseException:
            request.task = None  # its reply will be read and dropped
            raise
        reply = request.reply
        if isinstance(reply, (ErrorReply, _Broken)):
            raise self._error_of(reply)
        return reply

    async def _wait_for(self, last: _Request) -> None:
        """Until *last* is answered: read replies (handing each on) if no one
        else reads, else park until answered or asked to read."""
        if last.reply is not INCOMPLETE:
            await trio.lowlevel.cancel_shielded_checkpoint()
            return
        while last.reply is INCOMPLETE:
            if self._reading:
                last.parked = True

                def abort(_: Any) -> trio.lowlevel.Abort:
                    last.parked = False
                    return trio.lowlevel.Abort.SUCCEEDED

                await trio.lowlevel.wait_task_rescheduled(abort)
                continue
            self._reading = True
            try:
                await self._read_until(last)
            finally:
                self._reading = False
                self._pass_reading_on()

    async def _read_until(self, last: _Request) -> None:
        try:
            while last.reply is INCOMPLETE:
                assert self.stream is not None
                with trio.fail_after(self.settings.read_timeout or float("inf")):
                    self._deliver(await read_reply(self.stream, self._reader))
                while (reply := self._reader.gets()) is not INCOMPLETE:
                    self._deliver(reply)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.TooSlowError) as exc:
            self._fail(exc)
        except (OSError, ProtocolViolation, drop_class()) as exc:
            self._fail(exc)

    def _pass_reading_on(self) -> None:
        """Wake the first parked caller, to read for itself and those after it."""
        for request in self._waiting:
            if request.parked:
                request.parked = False
                assert request.task is not None
                trio.lowlevel.reschedule(request.task)
                return

    def _write_now(self) -> bool:
        """Write what is queued without waiting, on a plain socket that takes it
        all (as it does a command, on a connection that keeps up): no cancel
        scope, no checkpoint, none of the stream's layers before the bytes
        leave. Returns whether nothing is left to write (or the write failed
        the connection); else `_write` writes the rest."""
        if self._fd < 0:
            return False
        try:
            sent = os.write(self._fd, self._out)
        except BlockingIOError:
            return False
        except OSError as exc:
            self._fail(exc)
            return True
        del self._out[:sent]
        return not self._out

    async def _write(self) -> None:
        """Write what is queued, then what was queued meanwhile (shielded: a
        command is never cut; bounded by the read timeout)."""
        assert self.stream is not None
        self._writing = True
        try:
            with trio.CancelScope(shield=True) as scope:
                if self.settings.read_timeout:
                    scope.deadline = trio.current_time() + self.settings.read_timeout
                while self._out and self.failure is None:
                    data = bytes(self._out)
                    self._out.clear()
                    await self.stream.send_all(data)
            if scope.cancelled_caught:
                self._fail(TimeoutError())
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
            self._fail(exc)
        finally:
            self._writing = False


def _descriptor_of(stream: trio.abc.Stream) -> int:
    """The descriptor of a plain socket stream, for writes at once (-1: none,
    for TLS, or on Windows, where a socket is not written as a file)."""
    if os.name == "posix" and type(stream) is trio.SocketStream:
        return stream.socket.fileno()
    return -1


@attrs.frozen
class Sent:
    """A request `Connection.send_at_once` sent."""

    connection: Connection
    request: _Request

    async def reply(self) -> Any:
        """Its reply, as `Connection.request` returns it (awaited by the task that
        sent it; cancelled, the reply is dropped). Writes first what the socket
        did not take at once (shielded, bounded by the read timeout)."""
        return await self.connection._reply_to(self.request)


def readable_check(stream: trio.abc.Stream) -> Callable[[], bool] | None:
    """A function that says, without waiting, whether *stream*'s socket has
    anything to read (bytes, end-of-file, an error); None if it has no socket.

    On a TLS stream, the socket below it: an idle TLS connection carries no
    records either (its session tickets were read with the greeting; a record
    sent later, a key update, only costs a new connection).
    """
    while isinstance(stream, trio.SSLStream):
        stream = stream.transport_stream
    if not isinstance(stream, trio.SocketStream):
        return None
    fd = stream.socket.fileno()
    if hasattr(select, "poll"):
        poller = select.poll()
        poller.register(fd, select.POLLIN | select.POLLPRI)
        return lambda: bool(poller.poll(0))
    return lambda: bool(select.select([fd], [], [fd], 0)[0])  # pragma: no cover - Windows


class _Closed(Exception):
    """The connection was closed on purpose (cancelled), not broken."""


@attrs.frozen
class _Broken:
    """The reply of a request that the connection's failure answered."""
