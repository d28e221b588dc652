"""Rendering monitor frames: pure functions from frames to text.

Nothing here does I/O or reads a clock: a renderable depends only on the
frames it is given (and the view's sort and pause), so it can be tested on a
capture console and drawn by any driver.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

__all__ = ["SORTS", "render_frame", "sitrep"]

Frame = Mapping[str, Any]

SORTS = ("activity", "served", "age", "group")


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
    change: float = frame["statistics"][key] - previous["statistics"][key]
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
    stats = frame["statistics"]
    rate = _rate(frame, previous, "executions")
    requests = stats["requests"]
    ratio = stats["deduplicated"] / requests if requests else 0.0
    listeners = sum(g["listeners"] for g in frame["snapshot"])
    text = Text()
    text.append(f"executions {stats['executions']}", style="bold")
    text.append(f" ({rate:.1f}/s)" if rate is not None else " (-/s)")
    text.append(f"  dedup {ratio:.0%}")
    text.append(f"  in flight {stats['in_flight']}")
    text.append(f"  listeners {listeners}")
    text.append(f"  workers {stats['workers']}")
    text.append(f"  timeouts {stats['worker_timeouts']}")
    failures = stats["failures"]
    text.append(f"  failures {failures}", style="red" if failures else "")
    return text


def render_frame(
    frame: Frame,
    previous: Frame | None = None,
    *,
    sort: str = "activity",
    paused: bool = False,
    status: str | None = None,
    limit: int | None = None,
) -> RenderableType:
    """Render one frame: a title, the totals, and the groups sorted by *sort*.

    *previous* (the frame before) gives the rates. *status* replaces the
    key help on the last line (a connection message, say).
    """
    now = frame["time"]
    groups = sorted(frame["snapshot"], key=_sort_key(sort, now))
    if limit is not None:
        groups = groups[:limit]
    title = Text()
    title.append("trio-persist", style="bold cyan")
    title.append(f"  {frame.get('device', '?')}  ")
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
    for g in groups:
        idle = "busy" if g["busy"] else _age(now - g["last_active"])
        table.add_row(
            g["group"],
            g["kind"],
            str(g["listeners"]),
            str(g["queued"]),
            str(g["served"]),
            _age(now - g["started"]),
            idle,
        )
    footer = Text(status if status is not None else f"q quit  p pause  s sort: {sort}", style="dim")
    return Group(title, header(frame, previous), Text(""), table, Text(""), footer)


def _view(g: Mapping[str, Any]) -> tuple[str, int, int]:
    return (g["kind"], g["listeners"], g["queued"])


def sitrep(
    frame: Frame, last: Mapping[str, tuple[str, int, int]]
) -> tuple[list[str], dict[str, tuple[str, int, int]]]:
    """Upstream's "sitrep": lines for the groups that changed since *last*.

    Returns the lines (none when nothing changed) and the new state to pass
    next time. Unlike upstream, groups that went away are reported too.
    """
    now = {g["group"]: _view(g) for g in frame["snapshot"]}
    changed = [name for name, view in now.items() if last.get(name) != view]
    gone = [name for name in last if name not in now]
    if not changed and not gone:
        return [], now
    lines = [f"== Sitrep ==> {len(now)} groups. {len(changed) + len(gone)} changes."]
    for name in changed:
        kind, listeners, queued = now[name]
        lines.append(f"[{name}: {kind}] #M: {queued} listeners: {listeners}")
    lines.extend(f"[{name}: gone]" for name in gone)
    return lines, now
