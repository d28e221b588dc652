"""The cluster view: heartbeat records of every process on a Redis namespace.

Each persist on a `RedisBackend` writes a record (its statistics, workers and
busiest groups) with a TTL of three heartbeats; these read them back, and
merge them into one monitor frame for ``trio-persist monitor --redis``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import attrs
import trio

from ._monitor import FRAME_VERSION
from ._stats import PersistStatistics

if TYPE_CHECKING:
    import coredis

__all__ = ["NodeSnapshot", "cluster_frame", "read_nodes", "watch_cluster"]


@attrs.frozen
class NodeSnapshot:
    """One process of the cluster, as its last heartbeat described it."""

    node: str
    host: str
    pid: int
    namespace: str
    statistics: dict[str, int]
    workers: tuple[str, ...]
    flights: tuple[str, ...]
    wall: float
    time: float = 0.0
    snapshot: tuple[dict[str, Any], ...] = ()


async def read_nodes(client: coredis.Redis[bytes], namespace: str) -> tuple[NodeSnapshot, ...]:
    """Read the heartbeat records of every live process on *namespace*."""
    keys = [key async for key in client.scan_iter(match=f"{namespace}:node:*")]
    values = await client.mget(keys) if keys else []
    records = []
    for value in values:
        if value is None:
            continue
        try:
            data = json.loads(value)
            records.append(
                NodeSnapshot(
                    node=data["node"],
                    host=data["host"],
                    pid=data["pid"],
                    namespace=data["namespace"],
                    statistics=data["statistics"],
                    workers=tuple(data["workers"]),
                    flights=tuple(data["flights"]),
                    wall=data["wall"],
                    time=data.get("time", 0.0),
                    snapshot=tuple(data.get("snapshot", ())),
                )
            )
        except (ValueError, KeyError, TypeError):
            continue  # not a heartbeat of ours
    return tuple(sorted(records, key=lambda n: n.node))


async def watch_cluster(
    url: str,
    namespace: str,
    on_frame: Callable[[dict[str, Any]], None],
    on_status: Callable[[str | None], None],
    *,
    interval: float = 1.0,
) -> None:
    """Call *on_frame* with a cluster frame every *interval* seconds, until cancelled.

    When Redis cannot be reached, *on_status* gets a message and the watch
    goes on trying; it gets None once frames flow again.
    """
    import coredis

    client: coredis.Redis[bytes] = coredis.Redis.from_url(
        url, connect_timeout=interval * 5, stream_timeout=interval * 5
    )
    async with client:
        while True:
            try:
                with trio.fail_after(interval * 5):
                    nodes = await read_nodes(client, namespace)
            except (Exception, trio.TooSlowError) as exc:
                on_status(f"cannot read the cluster at {url}: {exc} (retrying; q quits)")
            else:
                on_status(None)
                on_frame(cluster_frame(nodes, namespace))
            await trio.sleep(interval)


def cluster_frame(nodes: tuple[NodeSnapshot, ...], namespace: str) -> dict[str, Any]:
    """One monitor frame for a whole cluster: summed statistics, every node's groups.

    Each group is labelled ``host:pid group``; its times are rebased so that
    ages read the same as on its own node.
    """
    totals: dict[str, float] = dict.fromkeys(_STAT_NAMES, 0)
    snapshot = []
    for node in nodes:
        for name, value in node.statistics.items():
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue  # a record written by someone else: skipped, not fatal
            if isinstance(value, float):
                # Durations do not add up: the slowest node's figure bounds them.
                totals[name] = max(totals.get(name, 0.0), value)
            else:
                totals[name] = totals.get(name, 0) + value
        for record in node.snapshot:
            rebased = dict(record)
            rebased["group"] = f"{node.host}:{node.pid} {record['group']}"
            rebased["label"] = f"{node.host}:{node.pid} {record.get('label') or record['group']}"
            rebased["started"] = record["started"] - node.time
            rebased["last_active"] = record["last_active"] - node.time
            snapshot.append(rebased)
    return {
        "version": FRAME_VERSION,
        "time": 0.0,
        "wall": time.time(),
        "device": f"cluster {namespace!r}, {len(nodes)} processes",
        "statistics": totals,
        "groups_total": totals["groups"],
        "snapshot": snapshot,
    }


_STAT_NAMES = [field.name for field in attrs.fields(PersistStatistics)]
