"""The monitor's drivers: the live TUI, ``--once`` and ``--plain``.

Everything runs in Trio tasks on one thread: frames arrive from a socket (or,
for the demo, straight from an in-process persist), a `MonitorView` keeps the
latest two, and the live driver redraws ``Live(auto_refresh=False)`` when a
frame arrives, a key is pressed, or the terminal is resized. Rendering itself
is the pure `render_frame`.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import stat
import sys
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TextIO

import attrs
import trio
from rich.console import Console, RenderableType
from rich.live import Live
from rich.text import Text

from .._text import literal
from ._render import SORTS, SitrepState, clean_frame, render_frame, render_gone, sitrep

MAX_LINE = 4 * 1024 * 1024
"""The longest frame line the monitor keeps (a 200-group frame is ~50 KB)."""


def _interval(before: Frame, after: Frame) -> tuple[float, float]:
    """Executions per second and deduplicated share between two frames."""
    elapsed = after["wall"] - before["wall"]
    stats, old = after["statistics"], before["statistics"]
    executions = stats.get("executions", 0) - old.get("executions", 0)
    requests = stats.get("requests", 0) - old.get("requests", 0)
    deduplicated = stats.get("deduplicated", 0) - old.get("deduplicated", 0)
    rate = executions / elapsed if elapsed > 0 else 0.0
    share = deduplicated / requests if requests > 0 else 0.0
    return max(rate, 0.0), min(max(share, 0.0), 1.0)


class MonitorRefused(Exception):
    """The monitor server refused this client (it has too many)."""


async def _connect(path: str) -> trio.SocketStream:
    """Connect to the monitor socket at *path*, refusing anything but a socket."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "no such socket", path) from None
    if not stat.S_ISSOCK(mode):
        raise OSError(errno.ENOTSOCK, "not a socket (is the path right?)", path)
    return await trio.open_unix_socket(path)


def _reason(exc: OSError) -> str:
    return literal(exc.strerror or str(exc), 120)


__all__ = ["MonitorView", "follow", "read_frames", "run_live", "run_once", "run_plain"]

Frame = dict[str, Any]
Producer = Callable[["MonitorView", Callable[[], None]], Awaitable[None]]


@attrs.define
class MonitorView:
    """What the monitor shows: the latest frames, the sort, pause, and a status line."""

    frame: Frame | None = None
    previous: Frame | None = None
    sort: str = "activity"
    paused: bool = False
    status: str | None = None
    frames_seen: int = 0
    names: bool = False  # show group names (digests) instead of labels
    legend: bool = False  # show what the columns mean instead of the groups
    hint: str | None = None  # a line under the totals (how to watch from elsewhere)
    # Set when the application went away: what to say instead of its groups.
    gone: str | None = None
    # (executions/s, deduplicated share) of each recent interval, for the history line.
    history: deque[tuple[float, float]] = attrs.field(factory=lambda: deque(maxlen=60))

    def feed(self, frame: Frame) -> None:
        """Take a frame from outside (checked and made literal first; junk is ignored)."""
        clean = clean_frame(frame)
        if clean is None:
            return
        self.frames_seen += 1
        back, self.gone = self.gone is not None, None
        if not self.paused:
            # Back after going away: its counters may have started again from zero.
            self.previous, self.frame = (None if back else self.frame), clean
            if self.previous is not None:
                self.history.append(_interval(self.previous, clean))

    def key(self, key: str) -> bool:
        """Apply a key press; True means quit."""
        if key in ("q", "Q", "\x03"):
            return True
        if key in ("p", "P", " "):
            self.paused = not self.paused
        elif key in ("s", "S"):
            self.sort = SORTS[(SORTS.index(self.sort) + 1) % len(SORTS)]
        elif key in ("g", "G"):
            self.names = not self.names
        elif key == "?":
            self.legend = not self.legend
        return False

    def renderable(self, height: int | None = None, width: int | None = None) -> RenderableType:
        """The screen: *height* lines (None: as many as the groups need), *width* columns."""
        if self.frame is None:
            return Text(self.gone or self.status or "waiting for the first frame...")
        if self.gone is not None:
            return render_gone(self.frame, self.gone, sort=self.sort, names=self.names)
        return render_frame(
            self.frame,
            self.previous,
            sort=self.sort,
            paused=self.paused,
            status=self.status,
            height=height,
            names=self.names,
            history=tuple(self.history),
            width=width,
            legend=self.legend,
            hint=self.hint,
        )


@attrs.define
class read_frames:  # used like a function: ``async for frame in read_frames(stream)``
    """The JSON frames of a monitor stream, as an async iterator.

    Lines that are not version-1 frames are skipped. A line longer than
    `MAX_LINE` bytes is dropped as it arrives, so a hostile socket cannot make
    the monitor buffer without bound. A server's refusal (too many clients)
    raises `MonitorRefused` with its words.

    A class rather than an async generator, so breaking out of the loop early
    leaves nothing to finalise.
    """

    _stream: trio.abc.ReceiveStream
    _lines: list[bytes] = attrs.field(factory=list)
    _buffer: bytes = b""
    _skipping: bool = False

    def __aiter__(self) -> read_frames:
        return self

    async def __anext__(self) -> Frame:
        while True:
            while self._lines:
                try:
                    frame = json.loads(self._lines.pop(0))
                except ValueError:
                    continue
                if isinstance(frame, dict) and isinstance(frame.get("refused"), str):
                    raise MonitorRefused(literal(frame["refused"]))
                if isinstance(frame, dict) and frame.get("version") == 1:
                    return frame
            data = await self._stream.receive_some(65536)
            if not data:
                raise StopAsyncIteration
            *lines, rest = (self._buffer + data).split(b"\n")
            if self._skipping and lines:
                lines.pop(0)  # the end of an over-long line
                self._skipping = False
            if len(rest) > MAX_LINE:
                rest, self._skipping = b"", True
            self._buffer = rest
            self._lines.extend(line for line in lines if len(line) <= MAX_LINE)


async def follow(
    path: str, view: MonitorView, redraw: Callable[[], None], *, retry: float = 1.0
) -> None:
    """Feed *view* from the socket at *path*, reconnecting whenever it is missing or gone.

    When the application goes away after sending frames, *view* says so (and
    when it was last heard) instead of showing its last groups, until it is back.
    """
    heard: float | None = None  # Unix time of the last frame
    while True:
        try:
            stream = await _connect(path)
        except OSError as exc:
            if heard is None:
                view.status = f"waiting for {path}: {_reason(exc)} (retrying; q quits)"
                redraw()
            await trio.sleep(retry)
            continue
        view.status = None
        refused = None
        async with stream:
            try:
                async for frame in read_frames(stream):
                    heard = time.time()
                    view.feed(frame)
                    redraw()
            except trio.BrokenResourceError:
                pass
            except MonitorRefused as exc:
                refused = f"{path} refused this monitor: {exc} (retrying; q quits)"
        if refused is not None or heard is None:
            view.status = refused or f"{path} closed before sending a frame (retrying; q quits)"
        else:
            view.gone = _gone_message(path, heard)
        redraw()
        await trio.sleep(retry)


def _gone_message(path: str, heard: float) -> str:
    at = time.strftime("%H:%M:%S", time.localtime(heard))
    return (
        f"The application is gone: {path} closed. Last heard at {at}. "
        "Waiting for it to come back (q quits)."
    )


@contextlib.contextmanager
def _cbreak(fd: int) -> Iterator[bool]:
    """Keys without Enter; the terminal's modes are restored however we leave."""
    try:
        import termios
        import tty

        saved = termios.tcgetattr(fd)
    except (ImportError, OSError):
        yield False
        return
    tty.setcbreak(fd)
    try:
        yield True
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


async def _keys(
    fd: int, view: MonitorView, redraw: Callable[[], None], quit_: trio.CancelScope
) -> None:
    stream = trio.lowlevel.FdStream(os.dup(fd))  # restores the fd's blocking mode on close
    async with stream:
        while data := await stream.receive_some(64):
            for key in data.decode(errors="replace"):
                if view.key(key):
                    quit_.cancel()
                    return
            redraw()


async def _resizes(redraw: Callable[[], None]) -> None:
    with trio.open_signal_receiver(signal.SIGWINCH) as signals:
        async for _ in signals:
            redraw()


async def run_live(
    console: Console,
    view: MonitorView,
    producer: Producer,
    *,
    keys_fd: int | None = None,
    duration: float | None = None,
) -> None:
    """Show *view* live until the user quits (q), *duration* passes, or *producer* ends.

    The display is redrawn by this task only (``auto_refresh=False``): when
    the producer delivers a frame, on a key, and on SIGWINCH.
    """
    with Live(
        view.renderable(), console=console, auto_refresh=False, screen=True, transient=False
    ) as live:

        def redraw() -> None:
            size = console.size
            live.update(view.renderable(height=size.height, width=size.width), refresh=True)

        with contextlib.ExitStack() as stack:
            interactive = keys_fd is not None and stack.enter_context(_cbreak(keys_fd))
            with trio.move_on_after(duration if duration is not None else float("inf")):
                async with trio.open_nursery() as nursery:
                    if interactive:
                        assert keys_fd is not None
                        nursery.start_soon(_keys, keys_fd, view, redraw, nursery.cancel_scope)
                    if hasattr(signal, "SIGWINCH"):
                        nursery.start_soon(_resizes, redraw)
                    await producer(view, redraw)
                    nursery.cancel_scope.cancel()


async def run_plain(
    view: MonitorView,
    producer: Producer,
    out: TextIO,
    *,
    duration: float | None = None,
) -> None:
    """Print sitrep lines whenever a group changes, and status changes, to *out*.

    *view*'s hint, if any, is printed first.
    """
    state: SitrepState = {}
    last_status: list[str | None] = [None]
    if view.hint:
        print(view.hint, file=out, flush=True)

    def redraw() -> None:
        nonlocal state
        message = view.gone or view.status
        if message != last_status[0]:
            last_status[0] = message
            if message is not None:
                print(message, file=out, flush=True)
        if view.frame is not None and view.frames_seen:
            lines, state = sitrep(view.frame, state)
            for line in lines:
                print(line, file=out, flush=True)

    with trio.move_on_after(duration if duration is not None else float("inf")):
        await producer(view, redraw)


async def run_once(path: str, console: Console, err: TextIO | None = None) -> int:
    """Print one frame of the monitor at *path*; 1 with a message if there is none."""
    err = err if err is not None else sys.stderr
    try:
        stream = await _connect(path)
    except OSError as exc:
        reason = _reason(exc)
        print(
            f"trio-persist monitor: cannot connect to {path}: {reason}. Is the application "
            "running with `await nursery.start(persist.serve_monitor, path)`?",
            file=err,
        )
        return 1
    async with stream:
        try:
            async for frame in read_frames(stream):
                clean = clean_frame(frame)
                if clean is not None:
                    console.print(render_frame(clean, status="", width=console.width))
                    return 0
        except MonitorRefused as exc:
            print(f"trio-persist monitor: {path} refused: {exc}", file=err)
            return 1
    print(f"trio-persist monitor: {path} closed before sending a frame", file=err)
    return 1
