"""Nothing a user or a remote process writes can drive the operator's terminal.

Group names, labels, error details and node names are shown literally in every
view: never read as Rich markup, control characters replaced, long text cut.
"""

from __future__ import annotations

import io
import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
import trio
import trio.testing
from rich.console import Console

import trio_persist
from trio_persist._cli._render import clean_frame, render_frame, sitrep
from trio_persist._cli._tui import MonitorView, read_frames, run_once
from trio_persist.redis import NodeSnapshot, cluster_frame

HOSTILE = [
    "[/]",
    "[bold red]alarm[/bold red]",
    "\x1b]0;pwned\x07title",
    "\x1b[2Jcleared",
    "ok\n== Sitrep ==> 0 groups. forged",
    "x" * 5000,
]


def frame_of(groups: list[str], **changes: Any) -> dict[str, Any]:
    snapshot = [
        {"group": g, "kind": "flight", "listeners": 1, "queued": 0, "served": 0,
         "started": 0.0, "last_active": 0.0, "busy": True}
        for g in groups
    ]  # fmt: skip
    frame = {"version": 1, "time": 1.0, "wall": 1.0, "device": "Shop",
             "statistics": {"requests": 1}, "groups_total": len(groups),
             "snapshot": snapshot}  # fmt: skip
    frame.update(changes)
    return frame


def show(renderable: Any) -> str:
    out = io.StringIO()
    Console(file=out, width=200, force_terminal=True, color_system=None).print(renderable)
    return out.getvalue()


def test_hostile_group_names_render_literally() -> None:
    clean = clean_frame(frame_of(HOSTILE, device="[/]\x1b[31m"))
    assert clean is not None
    text = show(render_frame(clean, status="\x1b[2J[/]"))
    assert "[/]" in text
    assert "[bold red]alarm[/bold red]" in text
    assert "\x1b]0;" not in text
    assert "\x07" not in text
    assert "\x1b[2J" not in text
    assert "�]0;pwned�title" in text
    assert not any(line.startswith("== Sitrep") for line in text.splitlines())
    assert max(len(line) for line in text.splitlines()) <= 200


def test_sitrep_cannot_be_forged_by_a_newline_in_a_name() -> None:
    clean = clean_frame(frame_of(HOSTILE))
    assert clean is not None
    lines, _ = sitrep(clean, {})
    assert len(lines) == 1 + len(HOSTILE)
    assert sum(line.startswith("== Sitrep") for line in lines) == 1
    assert all("\x1b" not in line and "\n" not in line for line in lines)


@pytest.mark.parametrize(
    "junk",
    [
        {"version": 1, "snapshot": [{"group": 5, "listeners": "many", "busy": "yes"}]},
        {"version": 1, "statistics": {"requests": "x"}, "snapshot": "nope"},
        {"version": 1, "time": None, "wall": float("nan"), "snapshot": [None, 3]},
        {"version": 2},
        ["not", "a", "frame"],
    ],
)
def test_malformed_frames_never_crash_the_view(junk: Any) -> None:
    view = MonitorView()
    view.feed(junk)
    show(view.renderable())


def test_a_cluster_of_hostile_nodes_renders_literally() -> None:
    node = NodeSnapshot(
        node="n1",
        host="\x1b[2Jevil[/]",
        pid=1,
        namespace="ns",
        statistics={"requests": 1},
        workers=(),
        flights=(),
        wall=1.0,
        snapshot=tuple(frame_of(["[/]\x1b]0;x\x07"])["snapshot"]),
    )
    view = MonitorView()
    view.feed(cluster_frame((node,), "\x1b[31mns[/]"))
    text = show(view.renderable())
    assert "\x1b[2J" not in text
    assert "\x1b]0" not in text
    assert "�[2Jevil[/]:1 [/]�]0;x�" in text


async def test_hostile_groups_reach_the_once_view_literally(tmp_path: Path) -> None:
    class Hostile:
        def group(self, base: Any, request: Any) -> Any:
            return request

        async def resolve(self, base: Any, request: Any) -> Any:
            await trio.sleep_forever()

    path = str(tmp_path / "m.sock")
    async with trio_persist.open_persist(Hostile()) as persist, trio.open_nursery() as nursery:
        await nursery.start(persist.serve_monitor, path)
        for name in HOSTILE:
            nursery.start_soon(persist.resolve, "b", name)
        await trio.testing.wait_all_tasks_blocked()
        async with await trio.open_unix_socket(path) as stream:
            raw = await read_frames(stream).__anext__()
        names = {g["group"] for g in raw["snapshot"]}
        assert len(names) == len(HOSTILE)
        assert "[/]" in names  # frames carry names as they are; views make them safe
        with trio.fail_after(60):
            done = await trio.run_process(
                [sys.executable, "-m", "trio_persist", "monitor", path, "--once"],
                capture_stdout=True,
                capture_stderr=True,
                env={**os.environ, "COLUMNS": "200"},  # wide enough for whole names
            )
        nursery.cancel_scope.cancel()
    out = done.stdout.decode()
    assert done.returncode == 0, done.stderr.decode()
    assert "[/]" in out
    assert "[bold red]alarm[/bold red]" in out
    assert "\x1b]0;" not in out
    assert "\x1b[2J" not in out


# -- numbers JSON allows and text that hides itself ----------------------------------

INVISIBLE = [
    "\u202eevil",  # right-to-left override: reverses what follows on screen
    "\u2066isolated\u2069",  # bidi isolates
    "zero\u200bwidth\u200d\ufeffjoined",  # zero-width space, joiner, BOM
    "line\u2028separator\u2029paragraph",  # a line break to many readers
    "lone \ud800 surrogate",  # JSON allows it; a UTF-8 terminal cannot print it
    "\U000e0041tag",  # a tag character
]
JUNK_NUMBERS = (
    b'{"version": 1, "time": Infinity, "wall": NaN, "device": "D", "groups_total": 1e400,'
    b' "statistics": {"requests": Infinity, "executions": -Infinity, "failures": NaN,'
    b' "execution_p50": Infinity, "waiters": ' + b"9" * 4000 + b"},"
    b' "snapshot": [{"group": "g", "kind": "flight", "listeners": Infinity, "queued": NaN,'
    b' "served": 1e400, "started": -Infinity, "last_active": Infinity, "busy": true,'
    b' "execution_p50": NaN, "execution_p99": Infinity}]}\n'
)


def test_every_invisible_or_control_character_is_replaced() -> None:
    import unicodedata

    from trio_persist._text import literal

    unsafe = [
        chr(code)
        for code in range(sys.maxunicode + 1)
        if unicodedata.category(chr(code)) in {"Cc", "Cf", "Cs", "Zl", "Zp"}
    ]
    assert literal("".join(unsafe), len(unsafe)) == "\ufffd" * len(unsafe)
    assert (
        literal("a plain name, ünïcödé, 名前, emoji 🙂") == "a plain name, ünïcödé, 名前, emoji 🙂"
    )


def test_invisible_characters_never_reach_the_view_or_the_sitrep() -> None:
    clean = clean_frame(frame_of(INVISIBLE, device="\u202eShop"))
    assert clean is not None
    shown = show(render_frame(clean, status="\u2028status"))
    lines, _ = sitrep(clean, {})
    for text in (shown, "\n".join(lines)):
        assert not any(char in text for char in "\u202e\u2066\u200b\u200d\ufeff\u2028\u2029")
        assert "\ud800" not in text
        assert "\U000e0041" not in text
        text.encode("utf-8")  # printable on a UTF-8 terminal: no lone surrogate
    assert "�evil" in shown


async def test_infinity_nan_and_huge_numbers_never_crash_the_monitor(tmp_path: Path) -> None:
    path = str(tmp_path / "junk.sock")
    out = io.StringIO()
    async with trio.open_nursery() as nursery:
        raw = socket.socket(socket.AF_UNIX)  # a "server" that sends junk
        raw.bind(path)
        raw.listen()
        listener = trio.SocketListener(trio.socket.from_stdlib_socket(raw))
        nursery.start_soon(
            trio.serve_listeners, lambda stream: stream.send_all(JUNK_NUMBERS), [listener]
        )
        assert await run_once(path, Console(file=out, width=120)) == 0
        nursery.cancel_scope.cancel()
    assert "trio-persist  D  1 groups" in out.getvalue()  # the count shown: the groups sent
    view = MonitorView()
    view.feed(json.loads(JUNK_NUMBERS))
    view.feed(json.loads(JUNK_NUMBERS))  # rates between two junk frames
    show(view.renderable())
    lines, _ = sitrep(view.frame or {}, {})
    assert lines == ["== Sitrep ==> 1 groups. 1 changes.", "[g: flight] queued: 0 listeners: 0"]


def test_infinity_and_nan_in_node_records_never_crash_the_cluster_view() -> None:
    inf, nan = float("inf"), float("nan")
    node = NodeSnapshot(
        node="n1",
        host="h\u202e",
        pid=1,
        namespace="ns",
        statistics={"requests": inf, "executions": nan, "execution_p99": inf, "groups": inf},
        workers=(),
        flights=(),
        wall=inf,
        time=inf,
        snapshot=({**frame_of(["g"])["snapshot"][0], "started": inf, "last_active": nan},),
    )
    view = MonitorView()
    view.feed(cluster_frame((node, node), "ns"))
    text = show(view.renderable())
    assert "h�:1 g" in text
    assert "\u202e" not in text
