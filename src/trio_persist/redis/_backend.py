"""`RedisBackend`: its configuration, its connection's life, the heartbeat, and the
names of executions. The lease protocol each flight runs is `._lease`'s (see the
package docstring for the whole story)."""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import socket
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Literal, final

import attrs
import trio

from .._backend import LocalWorkers, Placement
from .._codec import Seal
from .._grouping import canonical_encoding, default_group, group_digest
from .._monitor import build_frame
from .._stats import Observed
from ._client import open_client, place_of, refuse_a_cluster_node
from ._cluster import BEAT, INDEX, LEAVE, NodeSnapshot, nodes_key, read_nodes, record_key
from ._inbox import Inbox
from ._lease import LEASE_SCRIPTS, Leases
from ._link import Counters, Link
from ._subscriber import Subscriber
from ._workers import WORKER_SCRIPTS, ClusterWorkers

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

__all__ = ["RedisBackend", "RedisBackendStatistics"]


@attrs.frozen
class RedisBackendStatistics:
    """Counters of a `RedisBackend`."""

    led: int
    """Executions this process led (acquired the lease for)."""
    followed: int
    """Flights answered by another process's execution."""
    takeovers: int
    """Times this process took over from a leader that vanished."""
    fenced: int
    """Commits refused because the lease had passed on (a stale leader)."""
    lost: int
    """Executions cancelled because their lease was lost."""
    unavailable: int
    """Steps that found Redis unreachable or too slow."""
    corrupt: int
    """Malformed values met (channel messages ignored, leases replaced, bad results)."""
    round_trips: int
    """Redis commands sent for flights (heartbeats not included)."""
    leading: int
    """Executions leading now."""
    following: int
    """Flights following another process now."""
    subscribed: bool = False
    """Whether the subscription that hears publications is up now (followers poll
    while it is not)."""
    rejected: int = 0
    """Calls refused because ``max_pending`` others were starting on Redis for
    ``timeout / 2`` (each got `~trio_persist.BackendUnavailable`)."""
    routed_out: int = 0
    """Asks this process sent to the process owning their group's worker
    (``workers="cluster"``)."""
    routed_in: int = 0
    """Asks other processes sent to this process's workers."""
    moved: int = 0
    """Routed asks answered "moved" (the worker had left the owner): sent again."""
    worker_failovers: int = 0
    """Routed asks whose owner lost the group's lease while they waited (died,
    stalled or partitioned): taken back if not started, and asked again."""
    owned: int = 0
    """Worker leases this process holds now."""


_MAX_KEY = 200


@final
@attrs.define(eq=False, repr=False)
class RedisBackend:
    """Deduplication across processes on a Redis (or Valkey) server, Cluster or Sentinel.

    Args:
        url: A ``redis://``, ``rediss://`` or ``unix://`` URL, or a coredis
            client configured as coredis documents it (``coredis.Redis``,
            ``coredis.RedisCluster``, or a primary client from
            ``coredis.sentinel.Sentinel``). The backend enters the client's
            ``async with`` itself (coredis clients may be entered again).
            ``rediss://`` checks the certificate and the hostname unless the
            URL says otherwise.
        namespace: Prefix of every key. None (the default) uses
            ``"trio-persist:"`` and the persist's name (the device's qualified
            name), so different devices never share results; set one to share
            results between devices that compute the same thing.
        lease_ttl: Seconds a leader's lease lives without renewal (renewed every
            third of it while the work runs).
        timeout: Seconds any one Redis step may take before callers get
            `~trio_persist.BackendUnavailable`.
        signing_key: Authenticate every result (a MAC over namespace, key,
            token and payload) and send them as pickles; without it, only JSON
            values cross processes and nothing is authenticated.
        fallback: ``"error"`` (default): raise `~trio_persist.BackendUnavailable`
            when Redis cannot be used; ``"local"``: execute locally instead.
        max_takeovers: How many vanished leaders one call survives before
            `~trio_persist.LeaderDied`.
        max_pending: How many calls may be starting on Redis at once (their
            acquire in progress); another waits at most ``timeout / 2`` for
            one of them to finish, then gets `~trio_persist.BackendUnavailable`
            (counted in ``rejected``), whatever ``fallback`` says; and while
            that line is long (its oldest caller waited ``timeout / 4``), new
            calls are refused at once, before anything is built for them: past
            saturation the backend sheds load instead of letting every caller
            time out, and recovers at once (docs/redis.md, "Overload").
        heartbeat: Seconds between cluster heartbeats (a node record lives
            three of them); None writes none (the process is not in the
            cluster view).
        workers: ``"process"`` (default): each process keeps its own workers;
            ``"cluster"``: a virtual worker (`~trio_persist.Persist.ask`) has
            one owner among every process on the namespace, and asks from
            any process are routed to it (docs/redis.md).
    """

    url: Any
    namespace: str | None = None
    lease_ttl: float = 10.0
    timeout: float = 5.0
    signing_key: bytes | None = attrs.field(default=None, repr=False)
    fallback: Literal["error", "local"] = "error"
    max_takeovers: int = 3
    heartbeat: float | None = 1.0
    max_pending: int = 128
    workers: Literal["process", "cluster"] = attrs.field(
        default="process", validator=lambda _s, _a, v: _check_workers(v)
    )
    _node: str = attrs.field(init=False)
    _counters: Counters = attrs.field(factory=Counters, init=False)
    _link: Link = attrs.field(init=False)
    _leases: Leases = attrs.field(init=False)
    _placement: ClusterWorkers | None = attrs.field(default=None, init=False)
    _beat_lock: trio.Lock = attrs.field(factory=trio.Lock, init=False)
    _leaving: bool = attrs.field(default=False, init=False)
    # The group `key_of` named last, and its key: `run`, called next in the same
    # step (no checkpoint between), looks at that group's worker lease.
    _named: tuple[str, Hashable] | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        where = _where(self.url)
        for name in ("lease_ttl", "timeout", "heartbeat"):
            value = getattr(self, name)
            if value is None and name == "heartbeat":
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
            if not value > 0 or math.isinf(value):
                raise ValueError(f"{name} must be a finite number of seconds > 0, got {value!r}")
        if isinstance(self.max_pending, bool) or not isinstance(self.max_pending, int):
            raise TypeError(f"max_pending must be an int, got {type(self.max_pending).__name__}")
        if self.max_pending < 1:
            raise ValueError(f"max_pending must be at least 1, got {self.max_pending}")
        if self.fallback not in ("error", "local"):
            raise ValueError(f"fallback must be 'error' or 'local', got {self.fallback!r}")
        if self.signing_key is not None:
            _check_signing_key(self.signing_key)
        if self.namespace is not None:
            _check_namespace(self.namespace)
        self._node = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._link = Link(where, self.timeout, self._counters, max_pending=self.max_pending)
        self._bind(self.namespace or "trio-persist")

    def _bind(self, namespace: str) -> None:
        self._leases = Leases(
            self._link,
            Seal(namespace, self.signing_key),
            Subscriber(namespace, self.timeout),
            self._counters,
            self.lease_ttl,
            self.fallback,
            self.max_takeovers,
        )
        if self.workers == "cluster":
            local = self._placement.local if self._placement is not None else None
            self._placement = ClusterWorkers(
                self._link,
                self._leases.seal,
                self._leases.renewer,
                Inbox(
                    self._link,
                    namespace,
                    self._node,
                    3 * self.lease_ttl + 2 * self.timeout,
                    self._leases.log,
                ),
                self._counters,
                self.lease_ttl,
                self._leases.log,
                local,
            )

    def __repr__(self) -> str:
        where = self._link.where.removeprefix("Redis at ")
        return f"<trio_persist.redis.RedisBackend {where} namespace={self.namespace!r}>"

    def statistics(self) -> RedisBackendStatistics:
        """Return a frozen snapshot of this backend's counters."""
        return RedisBackendStatistics(
            **attrs.asdict(self._counters),
            subscribed=self._leases.subscriber.up,
            rejected=self._link.admission.rejected,
        )

    # -- the Backend protocol ----------------------------------------------------

    def place_workers(self, local: LocalWorkers) -> Placement | None:
        """With ``workers="cluster"``, the placement of *local*'s virtual workers
        across the processes on the namespace; else None (each process its own)."""
        if self._placement is None:
            return None
        self._placement.local = local
        return self._placement

    def key_of(self, group: Hashable, request: Any, group_is_request: bool) -> str | None:
        """The cluster-wide key of one execution, or None if it cannot be named.

        A string group names its key as it is (readable in Redis) when it is
        short and printable; anything else is hashed.
        """
        try:
            if group_is_request and isinstance(group, str):
                if len(group) <= _MAX_KEY and group.isprintable():
                    key = group
                else:
                    key = "h:" + hashlib.sha256(group.encode("utf-8", "replace")).hexdigest()
            else:
                key = default_group(canonical_encoding(group), request)
        except TypeError:
            return None  # executes locally: nothing stable to agree on across processes
        if self._placement is not None:
            self._named = (key, group)
        return key

    def refusal(self) -> Exception | None:
        """`~trio_persist.BackendUnavailable` for a new call while the line for
        a slot is long (counted in ``rejected``), else None.

        The persist asks before it builds anything for a call that would start
        on Redis: past saturation, refusing at the door costs a few
        microseconds, where a refusal after a wait would cost the capacity
        that the answered calls need.
        """
        if self._link.client is None:
            return None  # not serving: `run` says so (or falls back)
        return self._link.admission.refusal()

    def overloaded(self) -> bool:
        """Whether a new call that would start on Redis is refused at the door
        now (`refusal`'s test: the line for a slot is long), asked without
        refusing, counting or letting in anything.

        Synchronous and O(1), never a checkpoint: what a service's accept loop
        asks before it spends a task on a request
        (`trio_persist.Persist.overloaded` asks it). False while the backend is not serving.
        """
        if self._link.client is None:
            return False
        return self._link.admission.overloaded()

    async def run(
        self,
        key: str,
        base: Any,
        request: Any,
        resolve: Callable[[Any, Any], Awaitable[Any]],
        *,
        linger: float = 0.0,
    ) -> Any:
        """Execute ``resolve(base, request)`` once across the cluster for *key*.

        With *linger*, a successful result committed by any process less than
        *linger* seconds ago answers at once (one round trip), and this
        execution's success lingers as long for the others. With
        ``workers="cluster"``, a group whose worker lives in another process is
        served there (the acquire looks at its worker lease: one round trip).
        """
        placed = None
        named, self._named = self._named, None
        if named is not None and named[0] == key and self._placement is not None:
            placed = self._placement.placed(named[1])
        return await self._leases.run(key, base, request, resolve, linger, placed)

    async def serve(
        self, persist: Observed, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Own the client, the subscriber, lease renewal and heartbeats until cancelled.

        Started by the persist; reports started once subscribed, or after
        ``timeout`` if Redis is away (calls then fail or fall back until it is back).
        """
        if self.namespace is None:
            self.namespace = "trio-persist:" + _clean(persist.qualified_name)
            self._bind(self.namespace)
        client = open_client(self.url, self.timeout) if isinstance(self.url, str) else self.url
        # The client's connections live in a shielded scope, so that however
        # serve is cancelled (the persist closing, or its block cancelled, which
        # tears this task down before the persist's own leave() runs) the
        # backend can still drop the leases of cancelled leaders and remove its
        # record, bounded by the timeout, before the connections close.
        work = trio.CancelScope()
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(self._run_client, client, persist, work)
                try:
                    task_status.started()
                    await trio.sleep_forever()
                finally:
                    work.cancel()
        except BaseExceptionGroup as group:
            # Refused before it started (a Cluster node's URL): the error itself,
            # not the groups of the nurseries it went through.
            sole = _sole_error(group)
            if sole is None or work.cancel_called:
                raise
            raise sole from None

    async def _run_client(
        self,
        client: Any,
        persist: Observed,
        work: trio.CancelScope,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        scripts = {**LEASE_SCRIPTS, **WORKER_SCRIPTS, "beat": BEAT, "leave": LEAVE}
        with trio.CancelScope(shield=True):
            async with client, self._link.attached(client, scripts):
                await self._refuse_a_cluster_node(client)
                with work:
                    async with trio.open_nursery() as nursery:
                        await nursery.start(self._leases.serve)
                        if self._placement is not None:
                            await nursery.start(self._placement.serve)
                        await self._beat(persist)  # in the cluster view from the start
                        task_status.started()
                        while self.heartbeat is not None:
                            await trio.sleep(self.heartbeat)
                            await self._beat(persist)
                await self._leases.wait_unled()
                await self.leave()

    async def _refuse_a_cluster_node(self, client: Any) -> None:
        await refuse_a_cluster_node(client, self._link.where, self.timeout)

    # -- the cluster view --------------------------------------------------------

    async def leave(self) -> None:
        """Remove this process from the cluster view.

        ``serve`` does this when it ends (the persist closing, or its block
        cancelled); call it to leave earlier. Best effort, bounded by the
        timeout: a record left behind expires after three heartbeats anyway.
        Only the first call does anything.
        """
        if self._leaving:
            return
        self._leaving = True
        if self._link.client is None or self.heartbeat is None:
            return
        with trio.move_on_after(self.timeout), contextlib.suppress(Exception):
            async with self._beat_lock:
                await self._link.run_script("leave", self._node_keys(), [self._node])

    def _node_keys(self) -> list[str]:
        namespace = self._leases.seal.namespace
        return [record_key(namespace, self._node), nodes_key(namespace)]

    async def _beat(self, persist: Observed) -> None:
        """Write this process's record: its statistics, and its groups named by
        digests (or by the device's ``label`` hook), never by what they hold."""
        if self.heartbeat is None:
            return
        frame = build_frame(persist, max_groups=50, leaves_process=True)
        record = {
            "node": self._node,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "namespace": self.namespace,
            "statistics": frame["statistics"],
            "workers": [
                group_digest(group.group) for group in persist.snapshot() if group.kind == "worker"
            ],
            "flights": [g["group"] for g in frame["snapshot"] if g["kind"] == "flight"],
            "wall": time.time(),
            "time": frame["time"],
            "snapshot": frame["snapshot"],
        }
        ttl_ms = int(self.heartbeat * 3000)
        with trio.move_on_after(self.timeout), contextlib.suppress(Exception):
            async with self._beat_lock:
                if self._leaving:
                    return
                await self._link.run_script(
                    "beat", self._node_keys(), [json.dumps(record), ttl_ms, self._node]
                )
                await self._link.client.sadd(INDEX, [self._leases.seal.namespace])

    async def cluster(self) -> tuple[NodeSnapshot, ...]:
        """Every live process on this namespace, from their heartbeats."""
        nodes: tuple[NodeSnapshot, ...] = await self._link.step(
            "reading the cluster view", read_nodes, self._link.client, self.namespace
        )
        return nodes


def _where(url: object) -> str:
    """How messages name the server of *url* (a URL or a client), without secrets."""
    return f"Redis at {place_of(url, 'url')}"


_MIN_SIGNING_KEY = 16


def _check_workers(workers: object) -> None:
    if workers not in ("process", "cluster"):
        raise ValueError(f"workers must be 'process' or 'cluster', got {workers!r}")


def _check_signing_key(key: object) -> None:
    # Anyone who can compute the MAC can make every follower load a pickle: a
    # guessable key is code execution for whoever can write to the Redis.
    if not isinstance(key, bytes):
        raise TypeError("signing_key must be bytes")
    if len(key) < _MIN_SIGNING_KEY:
        raise ValueError(
            f"signing_key must be at least {_MIN_SIGNING_KEY} random bytes, got {len(key)}: "
            "make one with os.urandom(32) (or secrets.token_bytes(32)) and share it "
            "between the processes as a secret"
        )


def _check_namespace(namespace: object) -> None:
    if not isinstance(namespace, str):
        raise TypeError(f"namespace must be a str, got {type(namespace).__name__}")
    if not namespace or len(namespace) > _MAX_KEY or not namespace.isprintable():
        raise ValueError("namespace must be 1 to 200 printable characters")
    if "{" in namespace or "}" in namespace:
        raise ValueError("namespace must not contain braces (they are Redis Cluster hash tags)")


def _clean(name: str) -> str:
    cleaned = "".join(c for c in name if c.isprintable() and c not in "{}")
    return cleaned[: _MAX_KEY - 20] or "device"


def _sole_error(group: BaseExceptionGroup[BaseException]) -> Exception | None:
    """The one error inside *group* (through nested groups), or None if it holds more."""
    leaves: list[BaseException] = []
    pending: list[BaseException] = [group]
    while pending:
        error = pending.pop()
        if isinstance(error, BaseExceptionGroup):
            pending.extend(error.exceptions)
        else:
            leaves.append(error)
    if len(leaves) == 1 and isinstance(leaves[0], Exception):
        return leaves[0]
    return None
