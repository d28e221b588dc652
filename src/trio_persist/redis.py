"""The Redis backend: deduplication and a cluster view across processes and hosts.

``pip install trio-persist[redis]``, then::

    backend = trio_persist.redis.RedisBackend("redis://127.0.0.1:6379/0")
    async with trio_persist.open_persist(device, backend=backend) as persist:
        ...

Within a process nothing changes: identical calls join the local flight, and
only that flight talks to Redis. Across processes, a flight first tries to
become the leader of its key with one Lua script (an ``INCR`` fencing token and
a ``SET NX PX`` lease, atomically):

* The **leader** runs the device, renews its lease every third of the TTL, and
  commits the outcome with one Lua script that checks its token, stores the
  result, publishes it and drops the lease. A leader whose lease has passed to
  someone else can never commit: its token is fenced. Two round trips in all.
* A **follower** subscribes to the key's channel first, then reads the result
  key, so no publication can be missed; it accepts only outcomes at least as
  new as the leader it saw. If the lease disappears with no outcome (the leader
  died), one follower takes over: acquiring is atomic, so exactly one wins,
  within two lease TTLs. After ``max_takeovers`` vanished leaders, `~trio_persist.LeaderDied`.

Outcomes cross processes through a codec (JSON-like values by default; signed
pickles with ``signing_key``). A remote failure is `~trio_persist.RemoteError` with the
original type name and message; garbage is `~trio_persist.CorruptResult`. If Redis does not
answer within ``timeout``, callers get `~trio_persist.BackendUnavailable` (or, with
``fallback="local"``, the call executes locally); the client reconnects by
itself when Redis is back.

Each persist also publishes a heartbeat record (its statistics and workers,
with a TTL, so a dead process disappears): see `RedisBackend.cluster` and
``trio-persist monitor --redis URL``.
"""

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
from collections.abc import Awaitable, Callable, Hashable, Iterator
from typing import TYPE_CHECKING, Any, final

import attrs
import trio

from ._cluster import NodeSnapshot as NodeSnapshot
from ._cluster import cluster_frame as cluster_frame
from ._cluster import read_nodes
from ._cluster import watch_cluster as watch_cluster
from ._codec import JsonCodec, PickleCodec, decode_outcome, encode_error, encode_value
from ._exceptions import BackendUnavailable, LeaderDied
from ._grouping import canonical_encoding, default_group
from ._logging import logger
from ._monitor import build_frame
from ._stats import Observed, group_label

if sys.version_info < (3, 11):  # pragma: no cover
    from exceptiongroup import BaseExceptionGroup

if TYPE_CHECKING:
    import coredis

__all__ = [
    "NodeSnapshot",
    "RedisBackend",
    "RedisBackendStatistics",
    "cluster_frame",
    "watch_cluster",
]

# KEYS: lease, fence, linger, result. ARGV: ttl_ms, "1" to honour a lingering
# result, the token a follower saw vanish ("0" on a first acquire).
# Returns a payload (a lingering result, or on a takeover a result committed at
# or after the vanished token: someone else took over and finished first), else
# token (we lead) or -token (we follow it): one integer is the cheapest reply.
_ACQUIRE = """
if ARGV[2] == '1' then
  local lingering = redis.call('GET', KEYS[3])
  if lingering then return lingering end
end
if ARGV[3] ~= '0' then
  local committed = redis.call('GET', KEYS[4])
  if committed then
    local ok, envelope = pcall(cjson.decode, committed)
    if ok and type(envelope) == 'table' and tonumber(envelope['token'])
        and tonumber(envelope['token']) >= tonumber(ARGV[3]) then
      return committed
    end
  end
end
local current = redis.call('GET', KEYS[1])
if current then return -tonumber(current) end
local token = redis.call('INCR', KEYS[2])
redis.call('SET', KEYS[1], token, 'PX', ARGV[1])
return token
"""
# KEYS: lease. ARGV: token, ttl_ms. 1 if still ours (renewed), else 0.
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""
# KEYS: lease, result, linger. ARGV: token, payload, channel, result_ttl_ms,
# linger_ms (0: a failure, or no linger). 1 if committed.
_COMMIT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[4])
if ARGV[5] ~= '0' then redis.call('SET', KEYS[3], ARGV[2], 'PX', ARGV[5]) end
redis.call('PUBLISH', ARGV[3], ARGV[2])
redis.call('DEL', KEYS[1])
return 1
"""
# KEYS: lease. ARGV: token. Drops the lease if it is still ours (an abandoned execution).
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


_SCRIPTS = {"acquire": _ACQUIRE, "renew": _RENEW, "commit": _COMMIT, "release": _RELEASE}
_SHAS = {name: hashlib.sha1(source.encode()).hexdigest() for name, source in _SCRIPTS.items()}


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
    unavailable: int
    """Calls that found Redis unreachable."""
    round_trips: int
    """Redis commands sent for flights (heartbeats not included)."""
    leading: int
    """Executions leading now."""
    following: int
    """Flights following another process now."""


@final
@attrs.define(eq=False, repr=False)
class RedisBackend:
    """Deduplication across processes on a Redis (or Valkey) server.

    Args:
        url: ``redis://host:port/db``.
        namespace: Prefix of every key; persists on different namespaces never
            meet.
        lease_ttl: Seconds a leader's lease lives without renewal (renewed every
            third of it while the work runs).
        timeout: Seconds any Redis command may take before callers get
            `~trio_persist.BackendUnavailable`.
        signing_key: Send results as pickles signed with this HMAC key; without
            it only JSON-like values cross processes.
        fallback: ``"error"`` (default): raise `~trio_persist.BackendUnavailable` when Redis
            is unreachable; ``"local"``: execute locally instead.
        max_takeovers: How many vanished leaders one call survives before
            `~trio_persist.LeaderDied`.
        heartbeat: Seconds between cluster heartbeats (a node record lives
            three of them).
    """

    url: str
    namespace: str = "trio-persist"
    lease_ttl: float = 10.0
    timeout: float = 5.0
    signing_key: bytes | None = attrs.field(default=None, repr=False)
    fallback: str = "error"
    max_takeovers: int = 3
    heartbeat: float = 1.0
    _client: coredis.Redis[bytes] | None = attrs.field(default=None, init=False)
    _codec: JsonCodec | PickleCodec = attrs.field(init=False)
    _node: str = attrs.field(init=False)
    _counts: dict[str, int] = attrs.field(init=False)
    _persist: Observed | None = attrs.field(default=None, init=False)
    # Leases held now, renewed together by one loop: a task per flight would cost
    # more than the flight's own bookkeeping.
    _leases: dict[tuple[str, int], None] = attrs.field(factory=dict, init=False)
    # A heartbeat must never land after leave() removed the record.
    _beat_lock: trio.Lock = attrs.field(factory=trio.Lock, init=False)
    _leaving: bool = attrs.field(default=False, init=False)
    _down: bool = attrs.field(default=False, init=False)

    def __attrs_post_init__(self) -> None:
        if not str(self.url).startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"url must be a redis:// URL, got {self.url!r}")
        for name in ("lease_ttl", "timeout", "heartbeat"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"{name} must be a number of seconds, got {type(value).__name__}")
            if not value > 0 or math.isinf(value):
                raise ValueError(f"{name} must be a finite number of seconds > 0, got {value!r}")
        if self.fallback not in ("error", "local"):
            raise ValueError(f"fallback must be 'error' or 'local', got {self.fallback!r}")
        if self.signing_key is not None and not isinstance(self.signing_key, bytes):
            raise TypeError("signing_key must be bytes")
        self._codec = PickleCodec(self.signing_key) if self.signing_key else JsonCodec()
        self._node = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._counts = dict.fromkeys(
            (
                "led",
                "followed",
                "takeovers",
                "fenced",
                "unavailable",
                "round_trips",
                "leading",
                "following",
            ),
            0,
        )

    def __repr__(self) -> str:
        return f"<trio_persist.redis.RedisBackend {self.url} namespace={self.namespace!r}>"

    def statistics(self) -> RedisBackendStatistics:
        """Return a frozen snapshot of this backend's counters."""
        return RedisBackendStatistics(**self._counts)

    # -- keys --------------------------------------------------------------------

    def key_of(self, group: Hashable, request: Any, group_is_request: bool) -> str | None:
        """The cluster-wide key of one execution, or None if it cannot be named."""
        try:
            if group_is_request and isinstance(group, str):
                return group
            return default_group(canonical_encoding(group), request)
        except TypeError:
            return None  # executes locally: nothing stable to agree on across processes

    def _k(self, kind: str, key: str) -> str:
        return f"{self.namespace}:{kind}:{key}"

    # -- life cycle --------------------------------------------------------------

    async def serve(
        self, persist: Observed, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Own the Redis client and send heartbeats until cancelled. Started by the persist."""
        import coredis

        self._persist = persist
        client: coredis.Redis[bytes] = coredis.Redis.from_url(
            self.url, connect_timeout=self.timeout, stream_timeout=self.timeout
        )
        async with client:
            with contextlib.suppress(Exception):  # Redis away: loaded on first use instead
                await self._load_scripts(client)
            try:
                async with trio.open_nursery() as nursery:
                    self._client = client
                    await self._beat(persist)  # in the cluster view from the start
                    nursery.start_soon(self._renew_leases)
                    task_status.started()
                    while True:
                        await trio.sleep(self.heartbeat)
                        await self._beat(persist)
            finally:
                self._client = None

    async def leave(self) -> None:
        """Remove this process from the cluster view (the persist is closing).

        Best effort, bounded by the timeout: a record left behind expires after
        three heartbeats anyway.
        """
        self._leaving = True
        client = self._client
        if client is None:
            return
        with trio.move_on_after(self.timeout), contextlib.suppress(Exception):
            async with self._beat_lock:
                await client.delete([self._k("node", self._node)])

    async def _beat(self, persist: Observed) -> None:
        frame = build_frame(persist, max_groups=50)
        record = {
            "node": self._node,
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "namespace": self.namespace,
            "statistics": persist.statistics().to_json(),
            "workers": [
                group_label(record.group)
                for record in persist.snapshot()
                if record.kind == "worker"
            ],
            "flights": [g["group"] for g in frame["snapshot"] if g["kind"] == "flight"],
            "wall": time.time(),
            "time": frame["time"],
            "snapshot": frame["snapshot"],
        }
        assert self._client is not None
        try:
            with trio.fail_after(self.timeout):
                async with self._beat_lock:
                    if self._leaving:
                        return
                    await self._client.set(
                        self._k("node", self._node),
                        json.dumps(record),
                        px=int(self.heartbeat * 3000),
                    )
        except (Exception, trio.TooSlowError):
            pass  # Redis away: the record simply expires; the next beat tries again

    async def cluster(self) -> tuple[NodeSnapshot, ...]:
        """Every live process on this namespace, from their heartbeats."""
        with trio.fail_after(self.timeout):
            return await read_nodes(self._require(), self.namespace)

    def _require(self) -> coredis.Redis[bytes]:
        if self._client is None:
            raise BackendUnavailable(f"the Redis backend at {self.url} is not running")
        return self._client

    # -- flights ------------------------------------------------------------------

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
        execution's success lingers as long for the others.
        """
        vanished = 0
        vanished_token = 0
        while True:
            try:
                acquired = await self._acquire(key, linger, vanished_token)
            except BackendUnavailable:
                if self.fallback == "local":
                    return await resolve(base, request)
                raise
            if isinstance(acquired, bytes):  # lingering, or committed by another taker
                _, ok, value = decode_outcome(self._codec, acquired, self._k("result", key))
                self._counts["followed"] += 1
                if ok:
                    return value
                raise value
            leader, token = acquired
            if leader:
                if vanished:
                    self._counts["takeovers"] += 1
                    logger.warning(
                        "took over %s from a leader that vanished (token %d)", key, vanished_token
                    )
                return await self._lead(key, token, base, request, resolve, linger)
            outcome = await self._follow(key, token)
            if outcome is not None:
                ok, value = outcome
                if ok:
                    return value
                raise value
            vanished += 1
            vanished_token = token
            if vanished > self.max_takeovers:
                raise LeaderDied(f"the remote leader of {key} vanished {vanished} times; giving up")

    def _went_down(self, error: BaseException) -> None:
        """Log an outage once, when it starts (not once per call)."""
        if not self._down:
            self._down = True
            logger.warning("Redis at %s is unreachable: %s", self.url, error)

    def _came_back(self) -> None:
        if self._down:
            self._down = False
            logger.warning("Redis at %s answers again", self.url)

    async def _load_scripts(self, client: coredis.Redis[bytes]) -> None:
        for source in _SCRIPTS.values():
            await client.script_load(source)

    async def _script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        """Run one of our Lua scripts: one round trip (two after a server restart)."""
        client = self._require()
        self._counts["round_trips"] += 1
        try:
            try:
                answer = await client.evalsha(_SHAS[name], keys=keys, args=args)
                self._came_back()
                return answer
            except _no_script_error():  # the server restarted and forgot our scripts
                await self._load_scripts(client)
                return await client.evalsha(_SHAS[name], keys=keys, args=args)
        except Exception as exc:
            raise self._unavailable(exc) from exc

    async def _call(self, what: Callable[[], Awaitable[Any]]) -> Any:
        # Bounded by the client's own connect and stream timeouts (self.timeout).
        self._counts["round_trips"] += 1
        try:
            return await what()
        except Exception as exc:
            raise self._unavailable(exc) from exc

    def _unavailable(self, exc: Exception) -> Exception:
        """A connection failure becomes `~trio_persist.BackendUnavailable`; others stay."""
        if not _is_connection_error(exc):
            return exc
        self._counts["unavailable"] += 1
        self._went_down(exc)
        return BackendUnavailable(f"Redis at {self.url} is unreachable: {exc}")

    async def _acquire(
        self, key: str, linger: float = 0.0, vanished_token: int = 0
    ) -> tuple[bool, int] | bytes:
        """Lead (True, token) or follow (False, token) *key*; or a result's payload.

        On a takeover (*vanished_token*: the token of the leader that vanished)
        a result committed at or after it is returned instead of the lease, so
        two followers of one vanished leader never both execute.
        """
        signed = await self._script(
            "acquire",
            [
                self._k("lease", key),
                self._k("fence", "counter"),
                self._k("linger", key),
                self._k("result", key),
            ],
            [int(self.lease_ttl * 1000), "1" if linger > 0 else "0", vanished_token],
        )
        if isinstance(signed, (bytes, str)):
            return signed.encode() if isinstance(signed, str) else signed
        return signed > 0, abs(int(signed))

    async def _lead(
        self,
        key: str,
        token: int,
        base: Any,
        request: Any,
        resolve: Callable[[Any, Any], Awaitable[Any]],
        linger: float = 0.0,
    ) -> Any:
        self._counts["led"] += 1
        self._counts["leading"] += 1
        committed = False
        lease = (key, token)
        self._leases[lease] = None
        try:
            try:
                value = await resolve(base, request)
            except Exception as exc:
                committed = await self._commit_quietly(key, token, encode_error(exc, token))
                raise
            try:
                payload = encode_value(self._codec, value, token)
            except TypeError as exc:
                payload = encode_error(exc, token)  # other processes get the reason
                linger = 0.0  # a failure for the others: it must not linger
            committed = await self._commit_quietly(key, token, payload, linger)
            return value
        finally:
            del self._leases[lease]
            self._counts["leading"] -= 1
            if not committed:
                # Abandoned, crashed or cancelled: drop the lease so a follower
                # takes over at once instead of after the TTL.
                with (
                    trio.CancelScope(shield=True),
                    trio.move_on_after(self.timeout),
                    contextlib.suppress(Exception),  # the lease expires anyway
                ):
                    await self._release(key, token)

    async def _renew_leases(self) -> None:
        """Every third of the TTL, renew each lease held now (a lease younger than
        that is fresh enough), until cancelled."""
        ttl_ms = int(self.lease_ttl * 1000)
        while True:
            await trio.sleep(self.lease_ttl / 3)
            for key, token in list(self._leases):
                # Redis away: keep trying; the commit will tell whether the lease held.
                with contextlib.suppress(BackendUnavailable):
                    await self._script("renew", [self._k("lease", key)], [token, ttl_ms])

    async def commit(self, key: str, token: int, payload: bytes, linger: float = 0.0) -> bool:
        """Store, publish and release in one step, if *token* still holds the lease.

        With *linger*, the payload (a success) also answers acquires for that long.
        """
        done = await self._script(
            "commit",
            [self._k("lease", key), self._k("result", key), self._k("linger", key)],
            [
                token,
                payload,
                self._k("channel", key),
                int(max(self.lease_ttl, 1) * 1000),
                int(linger * 1000),
            ],
        )
        if not done:
            self._counts["fenced"] += 1
            logger.warning(
                "a stale commit of %s was refused: its lease (token %d) had passed on", key, token
            )
        return bool(done)

    async def _commit_quietly(
        self, key: str, token: int, payload: bytes, linger: float = 0.0
    ) -> bool:
        with trio.CancelScope(shield=True):
            try:
                return await self.commit(key, token, payload, linger)
            except BackendUnavailable:
                pass  # our callers have their outcome; followers will take over
        return False

    async def _release(self, key: str, token: int) -> None:
        await self._script("release", [self._k("lease", key)], [token])

    async def _follow(self, key: str, token: int) -> tuple[bool, Any] | None:
        """Wait for *token*'s outcome (or a newer one); None if its leader vanished."""
        client = self._require()
        self._counts["following"] += 1
        self._counts["round_trips"] += 1
        outcome: tuple[bool, Any] | None = None
        error: Exception | None = None
        leaving = trio.CancelScope()
        try:
            with leaving:
                # Nothing may be raised inside the pubsub block: coredis's nursery
                # would wrap it in an exception group. Capture, leave, then raise.
                async with client.pubsub(channels=[self._k("channel", key)]) as pubsub:
                    try:
                        outcome = await self._await_outcome(pubsub, client, key, token)
                    except Exception as exc:
                        error = exc
                    # Unsubscribing from a dead server could wait forever: bound it.
                    leaving.deadline = trio.current_time() + self.timeout
        except Exception as exc:  # the subscription itself failed
            error = error or exc
        finally:
            self._counts["following"] -= 1
        if leaving.cancelled_caught and error is None and outcome is None:
            error = BackendUnavailable(f"Redis at {self.url} stopped answering")
        if error is not None:
            raise self._translate(error)
        if outcome is not None:
            self._counts["followed"] += 1
        return outcome

    async def _await_outcome(
        self, pubsub: Any, client: Any, key: str, token: int
    ) -> tuple[bool, Any] | None:
        where = f"Redis key {self._k('result', key)}"
        # Subscribed first, then read: a commit in between is in the key.
        found = await self._read_result(key, token, where)
        if found is not None:
            return found
        while True:
            with trio.move_on_after(self.lease_ttl / 3):
                async for message in pubsub:
                    data = message["data"]
                    if message["type"] != "message" or not isinstance(data, (bytes, str)):
                        continue
                    got, ok, value = decode_outcome(self._codec, data, where)
                    if got >= token:
                        return ok, value
            # Quiet for a third of the TTL: is the leader still there?
            lease = await self._call(lambda: client.get(self._k("lease", key)))
            found = await self._read_result(key, token, where)
            if found is not None:
                return found
            if lease is None:
                return None  # vanished: take over

    def _translate(self, error: Exception) -> Exception:
        leaves = list(_leaves(error))
        if leaves and all(
            _is_connection_error(e) or isinstance(e, trio.TooSlowError) for e in leaves
        ):
            self._counts["unavailable"] += 1
            self._went_down(leaves[0])
            return BackendUnavailable(f"Redis at {self.url} failed while following: {leaves[0]}")
        if len(leaves) == 1:
            return leaves[0]
        return error

    async def _read_result(self, key: str, token: int, where: str) -> tuple[bool, Any] | None:
        client = self._require()
        payload = await self._call(lambda: client.get(self._k("result", key)))
        if payload is None:
            return None
        got, ok, value = decode_outcome(self._codec, payload, where)
        return (ok, value) if got >= token else None


def _leaves(error: BaseException) -> Iterator[Exception]:
    if isinstance(error, BaseExceptionGroup):
        for inner in error.exceptions:
            yield from _leaves(inner)
    elif isinstance(error, Exception):
        yield error


def _no_script_error() -> type[Exception]:
    from coredis.exceptions import NoScriptError

    return NoScriptError


def _is_connection_error(exc: BaseException) -> bool:
    try:
        from coredis.exceptions import ConnectionError as RedisConnectionError
    except ImportError:  # pragma: no cover
        return isinstance(exc, (ConnectionError, TimeoutError))
    return isinstance(exc, (RedisConnectionError, ConnectionError, TimeoutError))
