"""RESP2, the protocol: commands packed, replies parsed, a connection greeted.

What the backend's own connections speak (`_connection.Connection` for its
scripts and single commands; `greet` and `read_reply` for its subscription,
see ``_direct.py``): the protocol's second version, whose replies are all a
script returns: simple strings, errors, integers, bulk strings (or null) and
arrays of those (or null), nested.

Errors are coredis's own classes (the rest of the backend classifies them):
an error reply is the exception coredis would raise for it (``NOSCRIPT`` is
`~coredis.exceptions.NoScriptError`, ``WRONGTYPE`` a
`~coredis.exceptions.WrongTypeError`, ...); a connection that breaks is
`~coredis.exceptions.ConnectionError` (`dropped_error`).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Any, Final

import attrs
import trio

__all__ = [
    "INCOMPLETE",
    "Arg",
    "ErrorReply",
    "ProtocolViolation",
    "Reader",
    "drop_class",
    "dropped_error",
    "error_of",
    "greet",
    "no_script_class",
    "pack",
    "pack_head",
    "pack_more",
    "read_reply",
]

Arg = bytes | str | int | float
INCOMPLETE: Final = object()
"""`Reader.gets`'s answer while the buffer does not hold a whole reply yet."""


@attrs.frozen
class ErrorReply:
    """An error reply, as `Reader` reads it (``message`` without the ``-``)."""

    message: bytes


def pack(args: Sequence[Arg]) -> bytes:
    """One command as the server reads it: an array of bulk strings.

    Text is UTF-8; integers and floats are their decimal text (``repr`` for a
    float, as coredis sends them). Anything else is a `TypeError`.
    """
    return pack_head(args, 0)


def pack_head(args: Sequence[Arg], more: int) -> bytes:
    """The start of a command of ``len(args) + more`` arguments, *args* packed
    (as `pack` packs them): `pack_more` packs the *more* others when known."""
    return b"*%d\r\n" % (len(args) + more) + pack_more(args)


def pack_more(args: Sequence[Arg]) -> bytes:
    """*args* packed, to follow a `pack_head` that counted them."""
    out: list[bytes] = []
    append = out.append
    for arg in args:
        # The exact types first: this runs for every argument of every script.
        if type(arg) is bytes:
            data = arg
        elif type(arg) is str:
            data = arg.encode()
        elif type(arg) is int:
            data = b"%d" % arg
        else:
            data = _other(arg)
        append(b"$%d\r\n" % len(data))
        append(data)
        append(b"\r\n")
    return b"".join(out)


def _other(arg: object) -> bytes:
    if isinstance(arg, bytes | bytearray | memoryview):
        return bytes(arg)
    if isinstance(arg, str):
        return arg.encode()
    if isinstance(arg, int):
        return b"%d" % arg
    if isinstance(arg, float):
        return repr(arg).encode()
    raise TypeError(f"a Redis argument must be bytes, str, int or float, not {arg!r}")


class ProtocolViolation(ValueError):
    """The server sent bytes that are not RESP2 (the connection cannot go on)."""


@attrs.define(eq=False)
class Reader:
    """An incremental RESP2 reader: `feed` it bytes as they come, `gets` replies.

    Bulk strings are `bytes`, simple strings too, integers `int`, a null bulk
    string or array `None`, arrays `list`, errors `ErrorReply` (at any depth).
    """

    _buffer: bytearray = attrs.Factory(bytearray)
    _start: int = 0

    def feed(self, data: bytes | bytearray) -> None:
        """Append *data* (any slice of the stream, split anywhere)."""
        if self._start and self._start == len(self._buffer):
            self._buffer.clear()
            self._start = 0
        self._buffer += data

    @property
    def pending(self) -> int:
        """Bytes fed and not yet read as replies (a reply in part, or more)."""
        return len(self._buffer) - self._start

    def gets(self) -> Any:
        """The next whole reply, or `INCOMPLETE` until more is fed.

        Raises:
            ProtocolViolation: the bytes are not RESP2.
        """
        parsed = self._parse(self._start)
        if parsed is None:
            return INCOMPLETE
        value, self._start = parsed
        if self._start > 4096 and self._start * 2 > len(self._buffer):
            del self._buffer[: self._start]
            self._start = 0
        return value

    def _parse(self, at: int) -> tuple[Any, int] | None:
        buffer = self._buffer
        end = buffer.find(b"\r\n", at)
        if end < 0:
            return None
        kind, line = buffer[at : at + 1], bytes(buffer[at + 1 : end])
        after = end + 2
        if kind == b"$":
            size = _length(line)
            if size < 0:
                return None, after
            if len(buffer) < after + size + 2:
                return None
            if buffer[after + size : after + size + 2] != b"\r\n":
                raise ProtocolViolation("a bulk string not followed by CRLF")
            return bytes(buffer[after : after + size]), after + size + 2
        if kind == b"*":
            return self._array(_length(line), after)
        if kind == b":":
            return _integer(line), after
        if kind == b"+":
            return line, after
        if kind == b"-":
            return ErrorReply(line), after
        raise ProtocolViolation(f"not a RESP2 reply: {bytes(buffer[at : at + 16])!r}")

    def _array(self, count: int, at: int) -> tuple[Any, int] | None:
        if count < 0:
            return None, at
        items: list[Any] = []
        for _ in range(count):
            parsed = self._parse(at)
            if parsed is None:
                return None
            item, at = parsed
            items.append(item)
        return items, at


async def read_reply(stream: trio.abc.ReceiveStream, reader: Reader) -> Any:
    """The next reply from *stream*, through *reader* (which may hold more).

    Raises:
        coredis.exceptions.ConnectionError: the stream ended.
        ProtocolViolation: the bytes are not RESP2.
    """
    while (reply := reader.gets()) is INCOMPLETE:
        data = await stream.receive_some(65536)
        if not data:
            raise dropped_error("the Redis server closed the connection")
        reader.feed(data)
    return reply


async def greet(stream: trio.abc.Stream, reader: Reader, commands: list[list[Arg]]) -> None:
    """Send *commands* at once and read their replies; an error reply is raised
    (as coredis's exception: a wrong password, an unknown database)."""
    if not commands:
        return
    await stream.send_all(b"".join(pack(command) for command in commands))
    for _ in commands:
        reply = await read_reply(stream, reader)
        if isinstance(reply, ErrorReply):
            raise error_of(reply)


def _length(line: bytes) -> int:
    """A bulk string's or an array's length: -1 (null) or more."""
    length = _integer(line)
    if length < -1:
        raise ProtocolViolation(f"not a length: {length}")
    return length


def _integer(line: bytes) -> int:
    try:
        return int(line)
    except ValueError:
        raise ProtocolViolation(f"not an integer: {line[:20]!r}") from None


@functools.cache
def _error_parser() -> Any:
    from coredis.parser import Parser

    return Parser()


def error_of(reply: ErrorReply) -> Exception:
    """The exception coredis raises for *reply* (same class, same message)."""
    error: Exception = _error_parser().parse_error(reply.message.decode(errors="replace"))
    return error


def dropped_error(message: str) -> Exception:
    """coredis's `~coredis.exceptions.ConnectionError` saying *message*: a broken connection."""
    return drop_class()(message)


@functools.cache
def drop_class() -> type[Exception]:
    """coredis's `~coredis.exceptions.ConnectionError` (imported when first needed)."""
    from coredis.exceptions import ConnectionError as RedisConnectionError

    return RedisConnectionError


@functools.cache
def no_script_class() -> type[Exception]:
    """coredis's `~coredis.exceptions.NoScriptError`: a server that does not know a script."""
    from coredis.exceptions import NoScriptError

    return NoScriptError
