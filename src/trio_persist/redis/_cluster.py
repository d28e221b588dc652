"""The cluster view: heartbeat records of every process on a Redis namespace.

Each persist on a `RedisBackend` writes a record (its statistics, workers and
busiest groups, named by digests or by the device's ``label`` hook: nothing of
a request) with a TTL of three heartbeats, in its namespace's own keys; these
read them back, and merge them into one monitor frame for ``trio-persist
monitor --redis``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import attrs
import trio

from .._monitor import FRAME_VERSION
from .._stats import PersistStatistics

__all__ = [
    "NodeSnapshot",
    "cluster_frame",
    "nodes_key",
    "read_nodes",
    "record_key",
    "watch_cluster",
]


@attrs.frozen
class NodeSnapshot:
    """One process of the cluster, as its last heartbeat described it."""

    node: str
    """The process's id on the cluster (random, one per backend)."""
    host: str
    """Its host's name."""
    pid: int
    """Its process id."""
    namespace: str
    """The namespace its persist uses."""
    statistics: dict[str, int]
    """Its persist's statistics, as a monitor frame has them."""
    workers: tuple[str, ...]
    """Its live workers' groups, as the heartbeat names them."""
    flights: tuple[str, ...]
    """Its running flights' groups, as the heartbeat names them."""
    wall: float
    """Unix time of the heartbeat."""
    time: float = 0.0
    """Its persist's `trio.current_time` at the heartbeat (the clock of the snapshot)."""
    snapshot: tuple[dict[str, Any], ...] = ()
    """Its busiest groups, as records of a monitor frame."""


INDEX = "{trio-persist:namespaces}"
"""The names of namespaces that have live processes (names only, nothing of their
records): how a view of every namespace finds them."""


def nodes_key(namespace: str) -> str:
    """The set of live processes' ids on *namespace* (in the namespace's own keys)."""
    return "{" + namespace + ":}:nodes"


def record_key(namespace: str, node: str) -> str:
    """Where process *node* keeps its heartbeat record (one hash slot with the set)."""
    return "{" + namespace + ":}:node:" + node


# KEYS: record, set. ARGV: record, ttl_ms, node id. The set lives as long as its
# longest-lived member could (PEXPIRE GT only ever extends it).
BEAT = """
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('SADD', KEYS[2], ARGV[3])
if redis.call('PTTL', KEYS[2]) == -1 then
  redis.call('PEXPIRE', KEYS[2], ARGV[2])
else
  redis.call('PEXPIRE', KEYS[2], ARGV[2], 'GT')
end
return 1
"""
# KEYS: record, set. ARGV: node id.
LEAVE = """
redis.call('DEL', KEYS[1])
redis.call('SREM', KEYS[2], ARGV[1])
return 1
"""


async def read_nodes(client: Any, namespace: str | None) -> tuple[NodeSnapshot, ...]:
    """Read the heartbeat records of every live process on *namespace* (None: on
    every namespace).

    Records of processes that died expire; their ids are pruned from the set,
    and namespaces left without a process from the index.
    """
    if namespace is not None:
        return await _read_namespace(client, namespace)
    nodes: list[NodeSnapshot] = []
    for name in sorted(_text(n) for n in await client.smembers(INDEX)):
        found = await _read_namespace(client, name)
        if not found:
            await client.srem(INDEX, [name])  # a live process adds it again at its beat
        nodes.extend(found)
    return tuple(nodes)


async def _read_namespace(client: Any, namespace: str) -> tuple[NodeSnapshot, ...]:
    ids = sorted(_text(i) for i in await client.smembers(nodes_key(namespace)))
    values = await client.mget([record_key(namespace, i) for i in ids]) if ids else []
    gone = [i for i, value in zip(ids, values, strict=True) if value is None]
    if gone:
        await client.srem(nodes_key(namespace), gone)
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


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def watch_cluster(
    url: str,
    namespace: str | None,
    on_frame: Callable[[dict[str, Any]], None],
    on_status: Callable[[str | None], None],
    *,
    interval: float = 1.0,
) -> None:
    """Call *on_frame* with a cluster frame every *interval* seconds, until cancelled.

    *namespace* None shows every namespace. When Redis cannot be reached,
    *on_status* gets a message (the URL's password redacted) and the watch
    goes on trying; it gets None once frames flow again.
    """
    from ._client import check_url, classify, open_client, redact

    try:
        check_url(url)
    except ValueError as exc:
        on_status(f"cannot read the cluster: {exc}")
        await trio.sleep_forever()
    client = open_client(url, interval * 5)
    shown = redact(url)
    async with client:
        while True:
            try:
                with trio.fail_after(interval * 5):
                    nodes = await read_nodes(client, namespace)
            except (Exception, trio.TooSlowError) as exc:
                reason = classify(exc, f"Redis at {shown}") or exc
                on_status(f"cannot read the cluster: {reason} (retrying; q quits)")
            else:
                on_status(None)
                on_frame(cluster_frame(nodes, namespace))
            await trio.sleep(interval)


def cluster_frame(nodes: tuple[NodeSnapshot, ...], namespace: str | None) -> dict[str, Any]:
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
        "device": f"cluster {namespace or 'all namespaces'!r}, {len(nodes)} processes",
        "statistics": totals,
        "groups_total": totals["groups"],
        "snapshot": snapshot,
    }


_STAT_NAMES = [field.name for field in attrs.fields(PersistStatistics)]
