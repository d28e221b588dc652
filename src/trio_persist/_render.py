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

from collections.abc import Mapping
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from ._text import literal

__all__ = ["SORTS", "clean_frame", "render_frame", "sitrep"]

Frame = Mapping[str, Any]

SORTS = ("activity", "served", "age", "group")


_GROUP_NUMBERS = ("listeners", "queued", "served")
_GROUP_TIMES = ("started", "last_active")
_GROUP_DURATIONS = ("execution_p50", "execution_p99")
_DURATIONS = ("execution_", "wait_")


def _number(value: Any, default: float = 0) -> Any:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
        return default
    return value


def _clean_group(group: Any) -> dict[str, Any] | None:
    if not isinstance(group, Mapping):
        return None
    clean: dict[str, Any] = {
        "group": literal(group.get("group", "?")),
        "label": literal(group.get("label") or group.get("group", "?")),
        "kind": literal(group.get("kind", "?"), 10),
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
    text.append(f"  dedup {ratio:.0%}")
    text.append(f"  in flight {_stat(frame, 'in_flight')}")
    text.append(f"  listeners {listeners}")
    text.append(f"  workers {_stat(frame, 'workers')}")
    text.append(f"  timeouts {_stat(frame, 'worker_timeouts')}")
    failures = _stat(frame, "failures")
    text.append(f"  failures {failures}", style="red" if failures else "")
    stats = frame["statistics"]
    if "execution_p50" in stats:
        text.append(
            f"\nexec p50 {_duration(stats['execution_p50'])} "
            f"p99 {_duration(stats['execution_p99'])}"
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
    limit: int | None = None,
    names: bool = False,
) -> RenderableType:
    """Render one frame: a title, the totals, and the groups sorted by *sort*.

    *previous* (the frame before) gives the rates. *status* replaces the
    key help on the last line (a connection message, say). Groups are shown
    by their labels, or by their names (digests, say) with *names*.
    """
    now = frame["time"]
    groups = sorted(frame["snapshot"], key=_sort_key(sort, now))
    if limit is not None:
        groups = groups[:limit]
    title = Text()
    title.append("trio-persist", style="bold cyan")
    title.append(f"  {literal(frame.get('device', '?'), 80)}  ")
    title.append(f"{frame['groups_total']} groups")
    if paused:
        title.append("  [paused]", style="bold yellow")
    table = Table(expand=True, box=None, header_style="bold", pad_edge=False)
    table.add_column("group", ratio=1, no_wrap=True, overflow="ellipsis")
    table.add_column("kind")
    table.add_column("listeners", justify="right")
    table.add_column("queued", justify="right")
    table.add_column("served", justify="right")
    table.add_column("age", justify="right")
    table.add_column("idle for", justify="right")
    durations = any(g.get("execution_p50", 0.0) > 0 for g in groups)  # only when known
    if durations:
        table.add_column("p50", justify="right")
        table.add_column("p99", justify="right")
    for g in groups:
        idle = "busy" if g["busy"] else _age(now - g["last_active"])
        extra = (
            (_duration(g.get("execution_p50", 0.0)), _duration(g.get("execution_p99", 0.0)))
            if durations
            else ()
        )
        table.add_row(
            Text(g["group"] if names else g.get("label", g["group"])),  # Text: never markup
            Text(literal(g["kind"], 10)),
            str(g["listeners"]),
            str(g["queued"]),
            str(g["served"]),
            _age(now - g["started"]),
            idle,
            *extra,
        )
    footer = Text(
        literal(status)
        if status is not None
        else f"q quit  p pause  s sort: {sort}  g {'labels' if names else 'names'}",
        style="dim",
    )
    return Group(title, header(frame, previous), Text(""), table, Text(""), footer)


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
