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
import termios
import time
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
        assert "went away" in (view.status or "")
        nursery.cancel_scope.cancel()


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


async def test_the_demo_runs_its_workload_and_prints_a_summary(autojump_clock: object) -> None:
    out = io.StringIO()
    assert await demo(duration=20, plain=True, seed=3, out=out) == 0
    text = out.getvalue()
    assert "== Sitrep ==>" in text
    summary = text.splitlines()[-1]
    assert summary.startswith("trio-persist demo: ")
    assert "deduplicated" in summary
    assert "timed out" in summary


def test_the_command_line_reports_a_missing_socket(tmp_path: Path, capsys: Any) -> None:
    assert main(["monitor", str(tmp_path / "none.sock"), "--once"]) == 1
    assert "cannot connect" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["frobnicate"])


# -- the real programs, in a pseudo-terminal ------------------------------------------


def run_in_pty(
    args: list[str], *, seconds: float, keys: bytes = b"", columns: int = 100
) -> tuple[int, str, list[Any]]:
    """Run `trio-persist ARGS` on a pty of COLUMNSx30; return its exit code, screen
    bytes, and the terminal modes before and after."""
    master, slave = pty.openpty()
    os.set_blocking(master, False)
    import fcntl
    import struct

    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 30, columns, 0, 0))
    before = termios.tcgetattr(slave)
    env = dict(os.environ, TERM="xterm-256color", COLUMNS=str(columns), LINES="30")
    process = subprocess.Popen(
        [sys.executable, "-m", "trio_persist", *args],
        stdin=slave,
        stdout=slave,
        stderr=slave,
        env=env,
        start_new_session=True,
    )
    output = b""
    deadline = time.monotonic() + seconds
    sent = False
    while process.poll() is None and time.monotonic() < deadline:
        ready, _, _ = select.select([master], [], [], 0.1)
        if ready:
            try:
                output += os.read(master, 65536)
            except OSError:
                break
        if keys and not sent and b"q quit" in output:
            os.write(master, keys)
            sent = True
    try:
        code = process.wait(timeout=10)
    finally:
        if process.poll() is None:  # pragma: no cover - only if the test fails
            process.kill()
    while True:
        ready, _, _ = select.select([master], [], [], 0.2)
        if not ready:
            break
        try:
            chunk = os.read(master, 65536)
        except OSError:
            break
        if not chunk:
            break
        output += chunk
    after = termios.tcgetattr(slave)
    os.close(master)
    os.close(slave)
    return code, output.decode(errors="replace"), [before, after]


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
