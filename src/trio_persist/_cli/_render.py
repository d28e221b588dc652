"""Rendering monitor frames: pure functions from frames to text.

Nothing here does I/O or reads a clock: a renderable depends only on the
frames it is given (and the view's sort and pause), so it can be tested on a
capture console and drawn by any driver.

Frames come from outside (a socket, other processes through Redis), so
`clean_frame` checks and coerces every field first, and every text is shown
literally: never read as Rich markup, control characters replaced, long text
cut. A group named ``[/]`` or carrying escape sequences is shown as written.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from .._text import cut, literal

__all__ = ["SORTS", "clean_frame", "render_frame", "render_gone", "sitrep"]

Frame = Mapping[str, Any]

SORTS = ("activity", "served", "age", "group")


_GROUP_NUMBERS = ("listeners", "queued", "served")
_GROUP_TIMES = ("started", "last_active")
_GROUP_DURATIONS = ("execution_p50", "execution_p99")
_DURATIONS = ("execution_", "wait_")


_LARGEST = 1e15
"""Figures beyond this (a count, a time, an age) are junk, not data: shown as the default."""


def _number(value: Any, default: float = 0) -> Any:
    # JSON gives Infinity, NaN and integers of any size; none may reach int()/float().
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return default
    if not -_LARGEST <= value <= _LARGEST:  # NaN fails this too
        return default
    return value


def _clean_group(group: Any) -> dict[str, Any] | None:
    if not isinstance(group, Mapping):
        return None
    clean: dict[str, Any] = {
        "group": literal(group.get("group", "?")),
        "label": literal(group.get("label") or group.get("group", "?")),
        "kind": literal(_kind(group), 10),
        "busy": group.get("busy") is True,
    }
    for name in _GROUP_NUMBERS:
        clean[name] = int(_number(group.get(name)))
    for name in _GROUP_TIMES:
        clean[name] = float(_number(group.get(name)))
    for name in _GROUP_DURATIONS:
        if name in group:  # frames from older servers have none
            clean[name] = float(_number(group.get(name)))
    return clean


def _kind(group: Mapping[str, Any]) -> Any:
    """A virtual worker shows as one (and as activating while it loads its state)."""
    if group.get("kind") == "worker" and group.get("activating") is True:
        return "activating"
    if group.get("kind") == "worker" and group.get("virtual") is True:
        return "virtual"
    return group.get("kind", "?")


def clean_frame(frame: Any) -> dict[str, Any] | None:
    """A frame safe to render: every field present and of its type, every text literal.

    Returns None for something that is not a version-1 frame at all.
    """
    if not isinstance(frame, Mapping) or frame.get("version") != 1:
        return None
    raw_stats = frame.get("statistics")
    stats = raw_stats if isinstance(raw_stats, Mapping) else {}
    raw_groups = frame.get("snapshot")
    groups = [
        clean
        for clean in map(_clean_group, raw_groups if isinstance(raw_groups, list) else [])
        if clean is not None
    ]
    return {
        "version": 1,
        "time": float(_number(frame.get("time"))),
        "wall": float(_number(frame.get("wall"))),
        "device": literal(frame.get("device", "?"), 80),
        "statistics": {
            literal(name, 40): (
                float(_number(value)) if name.startswith(_DURATIONS) else int(_number(value))
            )
            for name, value in stats.items()
        },
        "groups_total": int(_number(frame.get("groups_total"), len(groups))),
        "snapshot": groups,
    }


def _stat(frame: Frame, name: str) -> int:
    value: int = frame["statistics"].get(name, 0)
    return value


def _age(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f}s"
    if seconds < 3600:
        return f"{seconds / 60:.1f}m"
    return f"{seconds / 3600:.1f}h"


def _rate(frame: Frame, previous: Frame | None, key: str) -> float | None:
    if previous is None:
        return None
    elapsed: float = frame["wall"] - previous["wall"]
    if elapsed <= 0:
        return None
    change: float = _stat(frame, key) - _stat(previous, key)
    return change / elapsed


def _sort_key(sort: str, now: float) -> Any:
    if sort == "served":
        return lambda g: (-g["served"], g["group"])
    if sort == "age":
        return lambda g: (g["started"], g["group"])
    if sort == "group":
        return lambda g: g["group"]
    return lambda g: (-(g["listeners"] + g["queued"]), not g["busy"], now - g["last_active"])


def header(frame: Frame, previous: Frame | None) -> Text:
    """The totals line: executions and their rate, deduplication, load, trouble."""
    rate = _rate(frame, previous, "executions")
    requests = _stat(frame, "requests")
    ratio = _stat(frame, "deduplicated") / requests if requests > 0 else 0.0
    listeners = sum(g["listeners"] for g in frame["snapshot"])
    text = Text()
    text.append(f"executions {_stat(frame, 'executions')}", style="bold")
    text.append(f" ({rate:.1f}/s)" if rate is not None else " (-/s)")
    remote = _stat(frame, "remote")
    if remote:  # answered by another process through the backend
        text.append(f"  remote {remote}")
    text.append(f"  dedup {ratio:.0%}")
    text.append(f"  in flight {_stat(frame, 'in_flight')}")
    text.append(f"  listeners {listeners}")
    text.append(f"  workers {_stat(frame, 'workers')}")
    if _stat(frame, "activations") or _stat(frame, "saves"):  # virtual workers and a store
        text.append(f"\nactivated {_stat(frame, 'activations')}")
        text.append(f"  saves {_stat(frame, 'saves')}")
        trouble = _stat(frame, "activation_failures") + _stat(frame, "save_failures")
        text.append(f"  load/save failures {trouble}", style="red" if trouble else "")
    # A second line, so that the first fits 80 columns whatever the counts.
    text.append(f"\nidle timeouts {_stat(frame, 'worker_timeouts')}")
    failures = _stat(frame, "failures")
    text.append(f"  failures {failures}", style="red" if failures else "")
    stats = frame["statistics"]
    if "execution_p50" in stats:
        text.append(
            f"  exec p50 {_duration(stats['execution_p50'])} "
            f"p99 {_duration(stats.get('execution_p99', 0.0))}"
            f"  wait p99 {_duration(stats.get('wait_p99', 0.0))}"
        )
    return text


def _duration(seconds: float) -> str:
    if seconds <= 0:
        return "-"
    if seconds < 1e-3:
        return f"{seconds * 1e6:.0f}us"
    if seconds < 1:
        return f"{seconds * 1e3:.0f}ms"
    return _age(seconds)


def render_frame(
    frame: Frame,
    previous: Frame | None = None,
    *,
    sort: str = "activity",
    paused: bool = False,
    status: str | None = None,
    height: int | None = None,
    names: bool = False,
    history: Sequence[tuple[float, float]] = (),
    width: int | None = None,
    legend: bool = False,
    hint: str | None = None,
) -> RenderableType:
    """Render one frame: a title, the totals, and the groups sorted by *sort*.

    *previous* (the frame before) gives the rates. *status* replaces the
    key help on the last line (a connection message, say). Groups are shown
    by their labels, or by their names (digests, say) with *names*, cut in
    the middle to fit *width* columns; as many as fit in *height* lines, and
    a line says how many more there are (those the server left out of the
    frame included). *history* (executions per second and deduplicated share
    of each recent interval, oldest first) draws the recent-history line;
    *hint* is a line under the totals (how to watch from elsewhere, say);
    *legend* shows what every column means instead of the groups.
    """
    top: list[RenderableType] = [_title(frame, paused), header(frame, previous)]
    footer = _footer(status, sort, names)
    if legend:
        return Group(*top, Text(""), LEGEND, Text(""), footer)
    # Two sparklines on one line: as many recent intervals as the width allows.
    history_line = _history_line(history[-max(10, (width or 100) // 2 - 20) :])
    if history_line is not None:
        top.append(history_line)
    if hint:
        top.append(Text(literal(hint), style="bold"))
    groups = sorted(frame["snapshot"], key=_sort_key(sort, frame["time"]))
    total = max(frame["groups_total"], len(groups))
    # Lines besides the rows: the top (its totals take two), a blank, the
    # table's header, a blank, the footer.
    room = None if height is None else height - (len(top) + 1) - 4
    shown = _fitting(len(groups), total, room)
    parts = [*top, Text(""), _table(groups[:shown], frame["time"], names, width)]
    if total > shown:
        parts.append(
            Text(f"... {total - shown} more groups not shown ({total} in all)", style="dim")
        )
    return Group(*parts, Text(""), footer)


def render_gone(
    frame: Frame, message: str, *, sort: str = "activity", names: bool = False
) -> RenderableType:
    """The last totals of an application that went away, and *message* instead of its groups."""
    title = _title(frame, paused=False)
    title.append("  [gone]", style="bold red")
    return Group(
        title,
        header(frame, None),
        Text(""),
        Text(literal(message, 400), style="bold red"),
        Text(""),
        _footer(None, sort, names),
    )


def _title(frame: Frame, paused: bool) -> Text:
    title = Text()
    title.append("trio-persist", style="bold cyan")
    title.append(f"  {literal(frame.get('device', '?'), 80)}  ")
    title.append(f"{frame['groups_total']} groups")
    if paused:
        title.append("  [paused]", style="bold yellow")
    return title


def _fitting(count: int, total: int, room: int | None) -> int:
    """How many of *count* groups to show in *room* rows, keeping one row to say
    how many are hidden when some of the *total* are."""
    if room is None:
        return count
    room = max(room, 1)
    if count <= room and total <= count:
        return count
    return max(min(count, room - 1), 0)


def _table(
    groups: Sequence[Mapping[str, Any]], now: float, names: bool, width: int | None
) -> Table:
    table = Table(expand=True, box=None, header_style="bold", pad_edge=False)
    table.add_column("group", ratio=1, no_wrap=True, overflow="ellipsis")
    table.add_column("kind")
    for column in ("listeners", "queued", "served", "age", "idle for"):
        table.add_column(column, justify="right")
    durations = any(g.get("execution_p50", 0.0) > 0 for g in groups)  # only when known
    if durations:
        table.add_column("p50", justify="right")
        table.add_column("p99", justify="right")
    for g in groups:
        extra = (
            (_duration(g.get("execution_p50", 0.0)), _duration(g.get("execution_p99", 0.0)))
            if durations
            else ()
        )
        shown = g["group"] if names else g.get("label", g["group"])
        if width is not None:
            shown = cut(shown, max(12, width - (74 if durations else 60)))  # the middle goes
        table.add_row(
            Text(shown),  # a Text: never parsed as markup
            Text(literal(_kind(g), 10)),
            str(g["listeners"]),
            str(g["queued"]),
            str(g["served"]),
            _age(now - g["started"]),
            "busy" if g["busy"] else _age(now - g["last_active"]),
            *extra,
        )
    return table


def _footer(status: str | None, sort: str, names: bool) -> Text:
    return Text(
        literal(status)
        if status is not None
        else f"q quit  p pause  s sort: {sort}  g {'labels' if names else 'names'}  ? legend",
        style="dim",
    )


_SPARKS = "▁▂▃▄▅▆▇█"

LEGEND = Text(
    "group        the group's label (g: its name, a digest for default groups)\n"
    "kind         flight: an execution and the calls queued behind it; worker: a\n"
    "             persistent worker holding the group's state; virtual: a worker\n"
    "             asked for by its group (ask), saved by the store; activating: one\n"
    "             loading its state, requests queued\n"
    "listeners    callers waiting on the group now\n"
    "queued       requests waiting behind the one executing (sitrep lines say the same)\n"
    "served       executions this flight or worker has finished\n"
    "age          how long the flight or worker has existed\n"
    "idle for     time since its last execution started or ended (busy: one runs now)\n"
    "p50 p99      its recent executions' median and 99th-percentile times\n"
    "executions   device calls so far (per second since the last frame)\n"
    "remote       executions another process answered (through the backend)\n"
    "dedup        share of calls answered by an execution another call started\n"
    "idle timeouts workers that stopped after their idle timeout\n"
    "activated    virtual workers activated (store, restore or default); saves: states\n"
    "             saved through the store; load/save failures: those that failed\n"
    "exec / wait  execution times, and callers' waits from arrival to answer\n"
    "history      executions per second and dedup share, over the last minute"
)
"""What every column and figure means (the ``?`` key)."""


def _spark(values: Sequence[float]) -> str:
    top = max(values, default=0.0)
    if top <= 0:
        return _SPARKS[0] * len(values)
    return "".join(_SPARKS[min(7, int(value / top * 7.999))] for value in values)


def _history_line(history: Sequence[tuple[float, float]]) -> Text | None:
    """Recent rates as sparklines: a burst that came and went stays visible."""
    if len(history) < 2:
        return None
    rates = [rate for rate, _ in history]
    shares = [share for _, share in history]
    text = Text("history  ", style="dim")
    text.append(f"exec/s {_spark(rates)} (max {max(rates):.1f})")
    text.append(f"  dedup {_spark(shares)}")
    return text


SitrepState = dict[str, tuple[str, str, int, int]]


def _view(g: Mapping[str, Any]) -> tuple[str, str, int, int]:
    return (literal(g.get("label", g["group"])), g["kind"], g["listeners"], g["queued"])


def sitrep(
    frame: Frame, last: Mapping[str, tuple[str, str, int, int]]
) -> tuple[list[str], SitrepState]:
    """Upstream's "sitrep": lines for the groups that changed since *last*.

    Returns the lines (none when nothing changed) and the new state to pass
    next time. Groups are shown by their labels; unlike upstream, groups that
    went away are reported too, and the queue is called what it is.
    """
    now = {literal(g["group"]): _view(g) for g in frame["snapshot"]}
    changed = [name for name, view in now.items() if last.get(name) != view]
    gone = [name for name in last if name not in now]
    if not changed and not gone:
        return [], now
    lines = [f"== Sitrep ==> {len(now)} groups. {len(changed) + len(gone)} changes."]
    for name in changed:
        label, kind, listeners, queued = now[name]
        lines.append(f"[{label}: {kind}] queued: {queued} listeners: {listeners}")
    lines.extend(f"[{last[name][0]}: gone]" for name in gone)
    return lines, now
