"""Rendering is a pure function of frames: exact output on rich's capture console."""

from __future__ import annotations

import re
from typing import Any

from rich.console import Console

from trio_persist._cli._render import render_frame, render_gone, sitrep


def frame(executions: int = 10, wall: float = 1002.0, **changes: Any) -> dict[str, Any]:
    snapshot = [
        {"group": "session/u1", "kind": "worker", "listeners": 0, "queued": 0, "served": 12,
         "started": 10.0, "last_active": 95.5, "busy": False},
        {"group": "page/7", "kind": "flight", "listeners": 4, "queued": 1, "served": 0,
         "started": 99.0, "last_active": 99.0, "busy": True},
        {"group": "session/u2", "kind": "worker", "listeners": 1, "queued": 0, "served": 3,
         "started": 40.0, "last_active": 99.9, "busy": True},
    ]  # fmt: skip
    stats = {
        "requests": 40, "executions": executions, "deduplicated": 30, "failures": 2,
        "crashes": 0, "abandoned": 0, "worker_timeouts": 1, "evictions": 0,
        "workers_started": 2, "in_flight": 1, "waiters": 5, "workers": 2, "groups": 3,
    }  # fmt: skip
    result = {"version": 1, "time": 100.0, "wall": wall, "device": "Shop",
              "statistics": stats, "groups_total": 3, "snapshot": snapshot}  # fmt: skip
    result.update(changes)
    return result


def show(renderable: Any, width: int = 100) -> str:
    console = Console(width=width, force_terminal=True, color_system=None, legacy_windows=False)
    with console.capture() as capture:
        console.print(renderable)
    return capture.get()


def test_a_frame_renders_totals_rates_and_groups_by_activity() -> None:
    assert show(render_frame(frame(10, 1002.0), frame(6, 1000.0))) == (
        "trio-persist  Shop  3 groups\n"
        "executions 10 (2.0/s)  dedup 75%  in flight 1  listeners 5  workers 2\n"
        "idle timeouts 1  failures 2\n"
        "\n"
        "group                                              kind    listeners  queued  served   age  idle for\n"
        "page/7                                             flight          4       1       0  1.0s      busy\n"
        "session/u2                                         worker          1       0       3  1.0m      busy\n"
        "session/u1                                         worker          0       0      12  1.5m      4.5s\n"
        "\n"
        "q quit  p pause  s sort: activity  g names  ? legend\n"
    )  # fmt: skip


def test_virtual_workers_show_as_such_and_the_store_work_is_counted() -> None:
    shown = frame()
    shown["snapshot"][0] |= {"virtual": True}
    shown["snapshot"][2] |= {"virtual": True, "activating": True}
    shown["statistics"] |= {"activations": 7, "saves": 5, "save_failures": 1}
    text = show(render_frame(shown))
    assert "activated 7  saves 5  load/save failures 1\n" in text
    assert re.search(r"session/u1 +virtual ", text)
    assert re.search(r"session/u2 +activating ", text)


def test_without_a_previous_frame_there_is_no_rate_yet() -> None:
    assert "executions 10 (-/s)" in show(render_frame(frame()))


def test_the_groups_follow_the_chosen_sort() -> None:
    def order(sort: str) -> list[str]:
        lines = show(render_frame(frame(), sort=sort)).splitlines()
        return [line.split()[0] for line in lines if line.startswith(("page/", "session/"))]

    assert order("served") == ["session/u1", "session/u2", "page/7"]
    assert order("age") == ["session/u1", "session/u2", "page/7"]
    assert order("group") == ["page/7", "session/u1", "session/u2"]


def test_pause_and_status_show_on_screen() -> None:
    text = show(render_frame(frame(), paused=True, status="connecting to m.sock"))
    assert "[paused]" in text
    assert text.rstrip().endswith("connecting to m.sock")


def test_groups_that_do_not_fit_the_height_say_how_many_are_hidden() -> None:
    for height in (20, 10):  # room for all three groups
        assert "not shown" not in show(render_frame(frame(), height=height))
    text = show(render_frame(frame(), height=9))
    assert len(text.splitlines()) == 9
    assert "page/7" in text  # the busiest, and a line for the other two
    assert "session/" not in text
    assert "... 2 more groups not shown (3 in all)" in text
    assert text.rstrip().endswith("? legend")  # the footer still fits


def test_groups_the_server_left_out_of_the_frame_are_counted_too() -> None:
    text = show(render_frame(frame(groups_total=250)))  # a frame holds the busiest 200
    assert "... 247 more groups not shown (250 in all)" in text
    text = show(render_frame(frame(groups_total=250), height=10))
    assert "session/u1" not in text
    assert "... 248 more groups not shown (250 in all)" in text


def test_an_application_that_went_away_shows_its_last_totals_and_no_table() -> None:
    text = show(render_gone(frame(), "the application is gone: last heard at 12:00:01"))
    assert text.splitlines()[0] == "trio-persist  Shop  3 groups  [gone]"
    assert "executions 10" in text
    assert "the application is gone: last heard at 12:00:01" in text
    assert "page/7" not in text
    assert "idle for" not in text


def test_durations_read_in_seconds_minutes_and_hours() -> None:
    old = frame(snapshot=[{"group": "g", "kind": "worker", "listeners": 0, "queued": 0,
                           "served": 1, "started": -7100.0, "last_active": 100.0,
                           "busy": False}])  # fmt: skip
    assert "2.0h      0.0s" in show(render_frame(old))


def test_a_sitrep_lists_changed_and_vanished_groups_only() -> None:
    lines, state = sitrep(frame(), {})
    assert lines == [
        "== Sitrep ==> 3 groups. 3 changes.",
        "[session/u1: worker] queued: 0 listeners: 0",
        "[page/7: flight] queued: 1 listeners: 4",
        "[session/u2: worker] queued: 0 listeners: 1",
    ]
    assert sitrep(frame(), state)[0] == []  # nothing changed, nothing printed
    later = frame(snapshot=[dict(frame()["snapshot"][0], queued=2)])
    assert sitrep(later, state)[0] == [
        "== Sitrep ==> 1 groups. 3 changes.",
        "[session/u1: worker] queued: 2 listeners: 0",
        "[page/7: gone]",
        "[session/u2: gone]",
    ]


def test_durations_show_in_the_header_and_per_group_when_known() -> None:
    timed = frame(
        statistics={**frame()["statistics"], "execution_p50": 0.012, "execution_p99": 0.04,
                    "wait_p99": 1.5},
        snapshot=[dict(frame()["snapshot"][0], execution_p50=0.0004, execution_p99=2.0)],
    )  # fmt: skip
    text = show(render_frame(timed))
    assert "\nidle timeouts 1  failures 2  exec p50 12ms p99 40ms  wait p99 1.5s\n" in text
    [row] = [line for line in text.splitlines() if line.startswith("session/u1")]
    assert row.split()[-2:] == ["400us", "2.0s"]


def test_the_legend_explains_every_column() -> None:
    text = show(render_frame(frame(), legend=True), width=100)
    for word in ("listeners", "queued", "served", "idle for", "p50 p99", "dedup", "history"):
        assert f"\n{word}" in text
    assert "session/u1" not in text  # the legend replaces the groups


def test_recent_history_shows_as_sparklines() -> None:
    history = [(0.0, 0.0), (10.0, 0.5), (40.0, 0.9), (5.0, 0.0)]
    text = show(render_frame(frame(), history=history))
    assert "history  exec/s ▁▂█▁ (max 40.0)  dedup ▁▅█▁" in text
    assert "history" not in show(render_frame(frame(), history=history[:1]))


def test_long_labels_are_cut_in_the_middle_to_fit_the_width() -> None:
    long = "tenant-0042/" + "x" * 100 + "/report-7"
    wide = frame(snapshot=[dict(frame()["snapshot"][0], group=long, label=long)])
    narrow_text = show(render_frame(wide, width=80), width=80)
    [row] = [line for line in narrow_text.splitlines() if line.startswith("tenant")]
    assert "…" in row
    assert row.split()[0].endswith("/report-7")  # both ends stay readable
    wide_text = show(render_frame(wide, width=200), width=200)
    assert long in wide_text


def test_answers_from_other_processes_show_beside_the_executions_run_here() -> None:
    remote = frame(10, 1002.0)
    remote["statistics"]["remote"] = 7
    assert "executions 10 (2.0/s)  remote 7  dedup 75%" in show(
        render_frame(remote, frame(6, 1000.0))
    )
    assert "remote" not in show(render_frame(frame(10, 1002.0), frame(6, 1000.0)))
