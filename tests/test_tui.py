"""The monitor's drivers: the view, reconnecting, --once, --plain, and the demo.

The last tests run the real ``trio-persist`` programs in a pseudo-terminal and
read what a user would see.
"""

from __future__ import annotations

import io
import os
import pty
import re
import select
import subprocess
import sys
import tempfile
import termios
import time
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from rich.console import Console

import trio_persist
from trio_persist._cli._main import demo, main
from trio_persist._cli._tui import MonitorView, follow, run_once, run_plain


async def slow(base: Any, request: Any) -> Any:
    await trio.sleep(100)
    return request


def test_keys_cycle_the_sort_toggle_pause_and_quit() -> None:
    view = MonitorView()
    assert [view.key("s") or view.sort for _ in range(4)] == ["served", "age", "group", "activity"]
    view.key("p")
    view.feed({"version": 1})
    assert view.paused
    assert view.frame is None  # paused: the screen keeps what it showed
    view.key("p")
    assert view.key("x") is False
    assert view.key("q") is True


async def test_follow_waits_for_a_missing_socket_and_reconnects(
    autojump_clock: object, tmp_path: Path
) -> None:
    path = str(tmp_path / "m.sock")
    view = MonitorView()
    statuses: list[tuple[float, str | None]] = []

    def redraw() -> None:
        statuses.append((trio.current_time(), view.status))

    async with trio_persist.open_persist(slow) as persist, trio.open_nursery() as nursery:
        nursery.start_soon(follow, path, view, redraw)
        await trio.sleep(2.5)
        assert [t for t, _ in statuses] == [0, 1, 2]
        assert "waiting for" in (statuses[0][1] or "")
        assert "no such socket" in (statuses[0][1] or "")
        async with trio.open_nursery() as server:
            await server.start(persist.serve_monitor, path)
            await trio.sleep(3.2)
            assert view.frame is not None
            assert view.status is None
            server.cancel_scope.cancel()
        await trio.sleep(0.5)
        assert "The application is gone" in (view.gone or "")
        nursery.cancel_scope.cancel()


async def test_the_monitor_says_when_the_application_is_gone_and_follows_it_back(
    autojump_clock: object, tmp_path: Path
) -> None:
    path = str(tmp_path / "m.sock")
    view = MonitorView()
    first = time.time()
    async with trio_persist.open_persist(slow) as persist, trio.open_nursery() as nursery:
        nursery.start_soon(follow, path, view, lambda: None)
        async with trio.open_nursery() as app:
            await app.start(persist.serve_monitor, path)
            app.start_soon(persist.resolve, "b", "r")
            await trio.sleep(2.5)
            # The last frame came in between (virtual time: a few real microseconds).
            between = {time.strftime("%H:%M:%S", time.localtime(t)) for t in (first, time.time())}
            app.cancel_scope.cancel()  # the application goes away
        await trio.sleep(5)
        assert view.gone is not None
        assert view.gone.startswith(f"The application is gone: {path} closed.")
        heard = re.search(r"Last heard at (\d\d:\d\d:\d\d)\.", view.gone)
        assert heard is not None
        assert heard[1] in between
        screen = render(view)
        assert "[gone]" in screen
        assert "The application is gone" in screen
        assert "listeners  queued" not in screen  # no frozen table
        async with trio.open_nursery() as app:  # ...and comes back
            await app.start(persist.serve_monitor, path)
            await trio.sleep(1.5)
            assert view.gone is None
            assert "listeners  queued" in render(view)
            app.cancel_scope.cancel()
        nursery.cancel_scope.cancel()


def render(view: MonitorView) -> str:
    out = io.StringIO()
    Console(file=out, width=100, color_system=None).print(view.renderable())
    return out.getvalue()


async def test_once_prints_one_frame(tmp_path: Path) -> None:
    path = str(tmp_path / "m.sock")
    out = io.StringIO()
    console = Console(file=out, width=100, color_system=None)
    async with trio_persist.open_persist(slow) as persist, trio.open_nursery() as nursery:
        await nursery.start(persist.serve_monitor, path)
        nursery.start_soon(persist.resolve, "b", "r")
        await trio.testing.wait_all_tasks_blocked()
        assert await run_once(path, console) == 0
        nursery.cancel_scope.cancel()
    text = out.getvalue()
    assert "trio-persist  slow  1 groups" in text
    assert "flight" in text


async def test_once_on_a_missing_socket_says_so_and_fails(tmp_path: Path) -> None:
    err = io.StringIO()
    assert await run_once(str(tmp_path / "none.sock"), Console(file=io.StringIO()), err) == 1
    assert "cannot connect to" in err.getvalue()
    assert "no such socket" in err.getvalue()
    assert "serve_monitor" in err.getvalue()


async def test_plain_prints_sitrep_lines_and_status_changes(
    autojump_clock: object, tmp_path: Path
) -> None:
    path = str(tmp_path / "m.sock")
    out = io.StringIO()

    async def producer(view: MonitorView, redraw: Any) -> None:
        await follow(path, view, redraw)

    async with trio_persist.open_persist(slow) as persist, trio.open_nursery() as nursery:
        nursery.start_soon(run_plain, MonitorView(), producer, out)
        await trio.sleep(1.5)
        await nursery.start(persist.serve_monitor, path)
        nursery.start_soon(persist.resolve, "b", "r")
        await trio.sleep(3)
        nursery.cancel_scope.cancel()
    lines = out.getvalue().splitlines()
    assert lines[0].startswith(f"waiting for {path}")
    assert len(lines) == 3  # the status once, then one sitrep for the one change
    assert lines[1] == "== Sitrep ==> 1 groups. 1 changes."
    assert lines[2] == "['r': flight] queued: 0 listeners: 1"  # shown by its label


async def test_the_demo_runs_its_workload_and_prints_a_summary(
    autojump_clock: object, tmp_path: Path
) -> None:
    out = io.StringIO()
    path = str(tmp_path / "demo.sock")
    assert await demo(duration=20, plain=True, seed=3, out=out, socket=path) == 0
    text = out.getvalue()
    assert text.splitlines()[0] == f"in another terminal: trio-persist monitor {path}"
    assert "== Sitrep ==>" in text
    summary = text.splitlines()[-1]
    assert summary.startswith("trio-persist demo: ")
    assert "deduplicated" in summary
    assert "timed out" in summary


async def test_a_second_demo_serves_its_monitor_on_a_path_of_its_own(
    autojump_clock: object, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))  # where the default path goes
    first, second = io.StringIO(), io.StringIO()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(demo, 5, True, 1, first))
        await trio.sleep(1)
        await demo(1, True, 1, second)
    shared = tmp_path / "trio-persist-demo.sock"
    assert first.getvalue().splitlines()[0].endswith(f"monitor {shared}")
    own = tmp_path / f"trio-persist-demo-{os.getpid()}.sock"
    assert second.getvalue().splitlines()[0].endswith(f"monitor {own}")
    assert os.listdir(tmp_path) == []  # each removed its socket and lock on leaving


def test_the_demo_refuses_a_taken_socket_path_with_a_message(tmp_path: Path, capsys: Any) -> None:
    taken = tmp_path / "taken"
    taken.write_text("")
    assert main(["demo", "--plain", "--socket", str(taken)]) == 1
    assert f"the monitor socket path is taken: {taken} is already a file" in capsys.readouterr().err


def test_the_command_line_reports_a_missing_socket(tmp_path: Path, capsys: Any) -> None:
    assert main(["monitor", str(tmp_path / "none.sock"), "--once"]) == 1
    assert "cannot connect" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["frobnicate"])


# -- the real programs, in a pseudo-terminal ------------------------------------------


class Terminal:
    """`trio-persist ARGS` running on a pseudo-terminal of COLUMNSx30, read as it runs."""

    def __init__(self, args: list[str], *, columns: int = 100) -> None:
        import fcntl
        import struct

        self.master, self.slave = pty.openpty()
        os.set_blocking(self.master, False)
        fcntl.ioctl(self.slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, columns, 0, 0))
        self.modes_before = termios.tcgetattr(self.slave)
        env = dict(os.environ, TERM="xterm-256color", COLUMNS=str(columns), LINES="30")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "trio_persist", *args],
            stdin=self.slave,
            stdout=self.slave,
            stderr=self.slave,
            env=env,
            start_new_session=True,
        )
        self.output = b""

    def read(self, timeout: float) -> bool:
        """Read what the program wrote within *timeout* seconds; False at its end."""
        ready, _, _ = select.select([self.master], [], [], timeout)
        if not ready:
            return True
        try:
            chunk = os.read(self.master, 65536)
        except OSError:
            return False
        self.output += chunk
        return bool(chunk)

    def wait_for(self, text: str, seconds: float, *others: Terminal) -> bool:
        """Read until *text* is on the screen (True), or *seconds* pass (False).

        Spaces and line breaks do not count: a long line wraps on the screen.
        *others* are read meanwhile (a program nobody reads from stops at its
        next write, once the terminal's buffer is full).
        """
        deadline = time.monotonic() + seconds
        wanted = re.sub(r"\s+", "", text)
        while wanted not in re.sub(r"\s+", "", visible(self.screen)):
            if time.monotonic() > deadline or not self.read(0.05):
                return False
            for other in others:
                other.read(0)
        return True

    @property
    def screen(self) -> str:
        return self.output.decode(errors="replace")

    def finish(self, seconds: float, *, keys: bytes = b"") -> int:
        """Run until it exits (typing *keys* once it shows its key help); its exit code."""
        deadline = time.monotonic() + seconds
        sent = False
        while self.process.poll() is None and time.monotonic() < deadline:
            if not self.read(0.1):
                break
            if keys and not sent and b"q quit" in self.output:
                os.write(self.master, keys)
                sent = True
        try:
            code = self.process.wait(timeout=10)
        finally:
            if self.process.poll() is None:  # pragma: no cover - only if the test fails
                self.process.kill()
        while self.read(0.2) and select.select([self.master], [], [], 0)[0]:
            pass
        self.modes_after = termios.tcgetattr(self.slave)
        os.close(self.master)
        os.close(self.slave)
        return code


def run_in_pty(
    args: list[str], *, seconds: float, keys: bytes = b"", columns: int = 100
) -> tuple[int, str, list[Any]]:
    """Run `trio-persist ARGS` on a pty of COLUMNSx30; return its exit code, screen
    bytes, and the terminal modes before and after."""
    terminal = Terminal(args, columns=columns)
    code = terminal.finish(seconds, keys=keys)
    return code, terminal.screen, [terminal.modes_before, terminal.modes_after]


def visible(screen: str) -> str:
    """What a person reads: the screen's text without styles and cursor moves."""
    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", screen)


def test_the_demo_draws_the_table_live_and_restores_the_terminal() -> None:
    code, screen, (before, after) = run_in_pty(["demo", "--duration", "3"], seconds=30)
    assert code == 0
    text = visible(screen)
    assert "trio-persist  Shop" in text
    assert "listeners  queued  served" in text
    assert "q quit  p pause  s sort: activity  g names  ? legend" in text
    assert "\x1b[?1049h" in screen  # entered the alternate screen...
    assert screen.rindex("\x1b[?1049l") > screen.rindex("q quit")  # ...and left it at the end
    assert "trio-persist demo:" in screen.split("\x1b[?1049l")[-1]  # then the summary
    assert after == before  # echo and line mode are back


def test_the_demo_quits_on_q() -> None:
    code, screen, (before, after) = run_in_pty(["demo"], seconds=30, keys=b"q")
    assert code == 0
    assert "trio-persist demo:" in screen
    assert after == before


def test_the_monitor_on_a_missing_socket_shows_a_message_not_a_traceback(tmp_path: Path) -> None:
    path = str(tmp_path / "missing.sock")
    code, screen, (before, after) = run_in_pty(["monitor", path], seconds=30, keys=b"q")
    assert code == 0
    text = re.sub(r"\s+", "", visible(screen))
    assert re.sub(r"\s+", "", f"waiting for {path}: no such socket") in text
    assert "Traceback" not in text
    assert after == before


async def test_a_terminal_resize_triggers_a_redraw() -> None:
    import signal

    from trio_persist._cli._tui import _resizes

    redrawn = trio.Event()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(_resizes, redrawn.set)
        await trio.testing.wait_all_tasks_blocked()
        os.kill(os.getpid(), signal.SIGWINCH)  # what the terminal sends on a resize
        with trio.fail_after(5):
            await redrawn.wait()
        nursery.cancel_scope.cancel()


def test_the_view_keeps_a_minute_of_history_and_toggles_the_legend() -> None:
    view = MonitorView()
    base = {"version": 1, "time": 0.0, "snapshot": [], "groups_total": 0}
    for second, executions in enumerate((0, 10, 50, 50)):
        stats = {"executions": executions, "requests": executions * 2, "deduplicated": executions}
        view.feed({**base, "wall": float(second), "statistics": stats})
    assert list(view.history) == [(10.0, 0.5), (40.0, 0.5), (0.0, 0.0)]
    view.key("?")
    assert view.legend
    view.key("?")
    assert not view.legend


@pytest.mark.parametrize("columns", [80, 200])
def test_the_live_view_fits_80_and_200_columns_with_labels_and_history(columns: int) -> None:
    code, screen, _ = run_in_pty(["demo", "--duration", "3"], seconds=60, columns=columns)
    assert code == 0
    text = visible(screen)
    assert "page/" in text  # groups by their labels
    assert "history  exec/s" in text  # a burst that came and went stays visible
    assert "? legend" in text
    assert "idle for" in text  # every column still fits


GROUP_NAME = re.compile(r"\b(?:page/\d+|session/u\d+)\b")


def test_a_second_terminal_watches_the_demo_and_sees_when_it_is_gone(tmp_path: Path) -> None:
    path = str(tmp_path / "demo.sock")
    demo = Terminal(["demo", "--socket", path])
    monitor = None
    try:
        # The demo's first screen says how to watch it from elsewhere...
        assert demo.wait_for(f"in another terminal: trio-persist monitor {path}", 60)
        monitor = Terminal(["monitor", path])  # ...and another terminal does
        assert monitor.wait_for("trio-persist  Shop", 60, demo)
        assert monitor.wait_for("session/u", 60, demo)
        assert monitor.wait_for("page/", 60, demo)
        watched = visible(monitor.screen)
        demo.wait_for("never shown", 2, monitor)  # both run on a while...
        demo_code = demo.finish(30, keys=b"q")  # ...then the demo quits
        assert monitor.wait_for("The application is gone", 60)
        assert monitor.wait_for("Last heard at", 60)
        monitor_code = monitor.finish(30, keys=b"q")
    finally:
        for terminal in (demo, monitor):
            if terminal is not None and terminal.process.poll() is None:  # pragma: no cover
                terminal.process.kill()
    assert (demo_code, monitor_code) == (0, 0)
    # The same groups. Each session the monitor showed, the demo showed too (a
    # session lives two seconds past its last request, longer than a frame
    # takes to reach either screen); pages come and go faster: some of them.
    on_demo = set(GROUP_NAME.findall(visible(demo.screen)))
    on_monitor = set(GROUP_NAME.findall(watched))
    sessions = {name for name in on_monitor if name.startswith("session/")}
    assert sessions
    assert sessions <= on_demo
    assert on_monitor - sessions & on_demo
    assert "[gone]" in visible(monitor.screen)
    assert monitor.modes_after == monitor.modes_before
