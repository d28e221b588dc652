"""`RedisBackend`: its configuration, connections, heartbeat and the lease protocol
it runs for each flight (see the package docstring for the whole story)."""

from __future__ import annotations

import contextlib
import contextvars
import hashlib
import json
import math
import os
import secrets
import socket
import time
import uuid
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, final

import attrs
import trio

from .._codec import ABANDONED, Seal, decode_outcome, encode_error, encode_value
from .._exceptions import BackendUnavailable, CorruptResult, LeaderDied
from .._grouping import canonical_encoding, default_group
from .._logging import logger
from .._monitor import build_frame
from .._stats import Observed, group_label
from ._cluster import BEAT, LEAVE, NODES, read_nodes
from ._cluster import NodeSnapshot as NodeSnapshot
from ._cluster import cluster_frame as cluster_frame
from ._cluster import watch_cluster as watch_cluster
from ._link import Subscriber, Watch, classify, describe, open_client, redact
from ._scripts import ACQUIRE, COMMIT, PEEK, RELEASE, RENEW, keys_of

__all__ = [
    "NodeSnapshot",
    "RedisBackend",
    "RedisBackendStatistics",
    "cluster_frame",
    "fencing_token",
    "watch_cluster",
]

_token: contextvars.ContextVar[int | None] = contextvars.ContextVar(
    "trio_persist_fencing_token", default=None
)


def fencing_token() -> int | None:
    """The fencing token of the execution running in this task, if it leads through Redis.

    Tokens of one key only grow, across leaders and Redis restarts: a store the
    device writes to can refuse a write whose token is lower than one it has
    already seen, so a leader that lost its lease (paused, partitioned) cannot
    overwrite its successor. None outside an execution led through a
    `RedisBackend`.
    """
    return _token.get()


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


@attrs.define(eq=False)
class _Lease:
    key: str
    value: str
    token: int
    scope: trio.CancelScope
    renewed: float
    lost: bool = False


_COUNTERS = (
    "led",
    "followed",
    "takeovers",
    "fenced",
    "lost",
    "unavailable",
    "corrupt",
    "round_trips",
    "leading",
    "following",
)
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
        heartbeat: Seconds between cluster heartbeats (a node record lives
            three of them).
    """

    url: Any
    namespace: str | None = None
    lease_ttl: float = 10.0
    timeout: float = 5.0
    signing_key: bytes | None = attrs.field(default=None, repr=False)
    fallback: str = "error"
    max_takeovers: int = 3
    heartbeat: float = 1.0
    _client: Any = attrs.field(default=None, init=False)
    _where: str = attrs.field(init=False)
    _seal: Seal = attrs.field(init=False)
    _node: str = attrs.field(init=False)
    _counts: dict[str, int] = attrs.field(init=False)
    _subscriber: Subscriber = attrs.field(init=False)
    # Leases held now, renewed together by one loop: a task per flight would cost
    # more than the flight's own bookkeeping.
    _leases: dict[str, _Lease] = attrs.field(factory=dict, init=False)
    _beat_lock: trio.Lock = attrs.field(factory=trio.Lock, init=False)
    _leaving: bool = attrs.field(default=False, init=False)
    _down: bool = attrs.field(default=False, init=False)
    _scripts: dict[str, Any] = attrs.field(factory=dict, init=False)
    _unled: trio.Event | None = attrs.field(default=None, init=False)  # set: none leading

    def __attrs_post_init__(self) -> None:
        if isinstance(self.url, str):
            if not self.url.startswith(("redis://", "rediss://", "unix://")):
                raise ValueError(
                    f"url must be a redis://, rediss:// or unix:// URL, or a coredis client; "
                    f"got {redact(self.url)!r}"
                )
            self._where = f"Redis at {redact(self.url)}"
        elif callable(getattr(self.url, "evalsha", None)):
            self._where = f"Redis at {describe(self.url)}"
        else:
            raise TypeError(
                f"url must be a Redis URL or a coredis client, got {type(self.url).__name__}"
            )
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
        if self.namespace is not None:
            _check_namespace(self.namespace)
        self._node = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._counts = dict.fromkeys(_COUNTERS, 0)
        self._bind(self.namespace or "trio-persist")

    def _bind(self, namespace: str) -> None:
        self._seal = Seal(namespace, self.signing_key)
        self._subscriber = Subscriber(namespace, self.timeout)

    def __repr__(self) -> str:
        return f"<trio_persist.redis.RedisBackend {self._where[9:]} namespace={self.namespace!r}>"

    def statistics(self) -> RedisBackendStatistics:
        """Return a frozen snapshot of this backend's counters."""
        return RedisBackendStatistics(**self._counts, subscribed=self._subscriber.up)

    # -- keys --------------------------------------------------------------------

    def key_of(self, group: Hashable, request: Any, group_is_request: bool) -> str | None:
        """The cluster-wide key of one execution, or None if it cannot be named.

        A string group names its key as it is (readable in Redis) when it is
        short and printable; anything else is hashed.
        """
        try:
            if group_is_request and isinstance(group, str):
                if len(group) <= _MAX_KEY and group.isprintable():
                    return group
                return "h:" + hashlib.sha256(group.encode("utf-8", "replace")).hexdigest()
            return default_group(canonical_encoding(group), request)
        except TypeError:
            return None  # executes locally: nothing stable to agree on across processes

    # -- life cycle --------------------------------------------------------------

    async def serve(
        self, persist: Observed, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Own the client, the subscriber, lease renewal and heartbeats until cancelled.

        Started by the persist; reports started once subscribed, or after
        ``timeout`` if Redis is away (calls then fail or fall back until it is back).
        """
        from coredis.commands.script import Script

        if self.namespace is None:
            self.namespace = "trio-persist:" + _clean(persist.qualified_name)
            self._bind(self.namespace)
        client = open_client(self.url, self.timeout) if isinstance(self.url, str) else self.url
        for name, source in (
            ("acquire", ACQUIRE),
            ("renew", RENEW),
            ("commit", COMMIT),
            ("release", RELEASE),
            ("peek", PEEK),
            ("beat", BEAT),
            ("leave", LEAVE),
        ):
            self._scripts[name] = Script(script=source)
        # The client's connections live in a shielded scope, so that however
        # serve is cancelled (the persist closing, or its block cancelled, which
        # tears this task down before the persist's own leave() runs) the
        # backend can still drop the leases of cancelled leaders and remove its
        # record, bounded by the timeout, before the connections close.
        work = trio.CancelScope()
        async with trio.open_nursery() as nursery:
            await nursery.start(self._run_client, client, persist, work)
            try:
                task_status.started()
                await trio.sleep_forever()
            finally:
                work.cancel()

    async def _run_client(
        self,
        client: Any,
        persist: Observed,
        work: trio.CancelScope,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        with trio.CancelScope(shield=True):
            async with client:
                self._client = client
                try:
                    with work:
                        async with trio.open_nursery() as nursery:
                            await nursery.start(self._subscriber.run, client)
                            await self._beat(persist)  # in the cluster view from the start
                            nursery.start_soon(self._renew_leases)
                            task_status.started()
                            while True:
                                await trio.sleep(self.heartbeat)
                                await self._beat(persist)
                    if self._counts["leading"]:
                        # Cancelled leaders are dropping their leases (shielded).
                        self._unled = trio.Event()
                        with trio.move_on_after(self.timeout):
                            await self._unled.wait()
                    await self.leave()
                finally:
                    self._client = None

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
        if self._client is None:
            return
        with trio.move_on_after(self.timeout), contextlib.suppress(Exception):
            async with self._beat_lock:
                await self._scripts["leave"](
                    keys=[NODES + ":" + self._node, NODES], args=[self._node], client=self._client
                )

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
        with trio.move_on_after(self.timeout), contextlib.suppress(Exception):
            async with self._beat_lock:
                if self._leaving:
                    return
                await self._scripts["beat"](
                    keys=[NODES + ":" + self._node, NODES],
                    args=[json.dumps(record), int(self.heartbeat * 3000), self._node],
                    client=self._client,
                )

    async def cluster(self) -> tuple[NodeSnapshot, ...]:
        """Every live process on this namespace, from their heartbeats."""
        nodes: tuple[NodeSnapshot, ...] = await self._step(
            "reading the cluster view", read_nodes, self._client, self.namespace
        )
        return nodes

    # -- one bounded step ---------------------------------------------------------

    async def _step(self, what: str, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Run one Redis step under the deadline; failures become clear errors.

        A step whose connection broke is tried once more within the same
        deadline (a pooled connection may have died with a server restart):
        every script is idempotent, so a repeat never acts twice.
        """
        if self._client is None:
            raise BackendUnavailable(f"{self._where}: the backend is not running")
        from coredis.exceptions import ConnectionError as RedisConnectionError

        self._counts["round_trips"] += 1
        try:
            with trio.fail_after(self.timeout):
                try:
                    answer = await fn(*args)
                except RedisConnectionError:
                    answer = await fn(*args)
        except BaseException as exc:
            translated = classify(exc, f"{self._where} ({what})")
            if translated is None:
                raise
            if isinstance(translated, BackendUnavailable):
                self._counts["unavailable"] += 1
                if not self._down:
                    self._down = True
                    logger.warning("%s", translated)
            else:
                self._counts["corrupt"] += 1
            raise translated from None
        if self._down:
            self._down = False
            logger.warning("%s answers again", self._where)
        return answer

    async def _script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        return await self._step(name, self._run_script, name, keys, args)

    async def _run_script(self, name: str, keys: list[str], args: list[Any]) -> Any:
        # EVALSHA directly (coredis's Script wrapper costs ~30 us a call); a
        # server that forgot the script (restarted) gets it loaded, then again.
        from coredis.exceptions import NoScriptError

        script = self._scripts[name]
        try:
            return await self._client.evalsha(script.sha, keys=keys, args=args)
        except NoScriptError:
            await self._client.script_load(script.script)
            return await self._client.evalsha(script.sha, keys=keys, args=args)

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
        keys = keys_of(self._seal.namespace, key)
        vanished = 0
        vanished_token = 0
        with self._subscriber.watch(key) as watch:
            while True:
                try:
                    outcome = await self._round(
                        keys, linger, vanished_token, watch, base, request, resolve, vanished
                    )
                except (BackendUnavailable, CorruptResult) as exc:
                    if self.fallback != "local" or isinstance(exc, _Undecodable):
                        raise
                    logger.info("executing %s locally: %s", key, exc)
                    return await resolve(base, request)
                if isinstance(outcome, _Again):
                    vanished_token = outcome.token
                    continue
                if not isinstance(outcome, int):
                    ok, value = outcome
                    if ok:
                        return value
                    raise value
                vanished += 1
                vanished_token = outcome
                if vanished > self.max_takeovers:
                    raise LeaderDied(
                        f"the remote leader of {key} vanished {vanished} times; giving up"
                    )

    async def _round(
        self,
        keys: dict[str, str],
        linger: float,
        vanished_token: int,
        watch: Watch,
        base: Any,
        request: Any,
        resolve: Callable[[Any, Any], Awaitable[Any]],
        vanished: int,
    ) -> tuple[bool, Any] | int | _Again:
        """One acquire and what follows: ``(ok, value)``, the token of a leader that
        vanished, or `_Again` when our own lease passed on."""
        kind, token, payload = await self._acquire(keys, linger, vanished_token)
        if kind == "r":
            self._counts["followed"] += 1
            return self._decode(keys, payload)
        if kind == "l":
            if vanished:
                self._counts["takeovers"] += 1
                logger.warning(
                    "took over %s from a leader that vanished (token %d)",
                    keys["lease"],
                    vanished_token,
                )
            led = await self._lead(keys, token, payload, base, request, resolve, linger)
            if isinstance(led, int):
                # Our lease passed on: ask again (as a follower, so the winner
                # publishes to us), accepting any result at or after our token.
                return _Again(led)
            return led
        outcome = await self._follow(keys, token, watch)
        if outcome is None:
            return token
        self._counts["followed"] += 1
        return outcome

    def _decode(self, keys: dict[str, str], payload: Any) -> tuple[bool, Any]:
        try:
            _, ok, value = decode_outcome(self._seal, keys["result"], payload, keys["result"])
        except CorruptResult as exc:
            self._counts["corrupt"] += 1
            raise _Undecodable(str(exc)) from None
        if value is ABANDONED:
            raise _Undecodable(f"{keys['result']} holds an abandonment, not a result")
        return ok, value

    async def _acquire(
        self, keys: dict[str, str], linger: float, vanished_token: int
    ) -> tuple[str, int, Any]:
        """("l", token, lease value) to lead, ("f", token, None) to follow, ("r", 0, payload)."""
        lease_id = secrets.token_hex(16)
        reply = await self._script(
            "acquire",
            [keys["lease"], keys["fence"], keys["linger"], keys["result"], keys["waiting"]],
            [
                int(self.lease_ttl * 1000),
                "1" if linger > 0 else "0",
                vanished_token,
                lease_id,
                int(self._result_ttl() * 1000) + int(self.lease_ttl * 1000),
            ],
        )
        kind = _text(reply[0])
        if kind == "r":
            return "r", 0, reply[1]
        token = int(reply[1])
        if kind == "l":
            if int(reply[2]):
                self._counts["corrupt"] += 1
                logger.warning("replaced a malformed lease at %s", keys["lease"])
            return "l", token, f"{lease_id}:{token}"
        return "f", token, None

    def _result_ttl(self) -> float:
        """How long a result outlives its commit: a follower looks at least every
        third of the TTL, and each look may take ``timeout``."""
        return max(3 * self.lease_ttl, self.lease_ttl + 2 * self.timeout, 1.0)

    async def _lead(
        self,
        keys: dict[str, str],
        token: int,
        lease_value: str,
        base: Any,
        request: Any,
        resolve: Callable[[Any, Any], Awaitable[Any]],
        linger: float,
    ) -> tuple[bool, Any] | int:
        """Run the device as the leader: ``(ok, value)``, or a token to follow instead."""
        self._counts["led"] += 1
        self._counts["leading"] += 1
        lease = _Lease(keys["lease"], lease_value, token, trio.CancelScope(), trio.current_time())
        self._leases[lease_value] = lease
        settled = False
        reset = _token.set(token)
        try:
            outcome: tuple[bool, Any] | None = None
            payload = b""
            with lease.scope:
                try:
                    value = await resolve(base, request)
                except Exception as exc:
                    outcome = (False, exc)
                    payload = encode_error(self._seal, keys["result"], exc, token)
                    linger = 0.0
                else:
                    outcome = (True, value)
                    try:
                        payload = encode_value(self._seal, keys["result"], value, token)
                    except TypeError as exc:
                        payload = encode_error(self._seal, keys["result"], exc, token)
                        linger = 0.0  # a failure for the others: it must not linger
            if lease.lost or outcome is None:
                settled = True  # lost: the lease is someone else's now
                return token
            settled, reply = await self._commit(keys, lease, payload, linger)
            if reply is None:
                return outcome
            kind = _text(reply[0])
            self._counts["fenced"] += 1
            logger.warning(
                "a stale commit of %s was refused (token %d): answering with the winner's outcome",
                keys["lease"],
                token,
            )
            if kind == "r":
                return self._decode(keys, reply[1])
            if kind == "f":
                return int(reply[1])
            return outcome  # no winner to answer with: ours is the only outcome
        finally:
            _token.reset(reset)
            del self._leases[lease_value]
            if not settled:
                # Abandoned, crashed or cancelled: drop the lease and say so, so a
                # follower takes over at once instead of after the TTL.
                with trio.CancelScope(shield=True), contextlib.suppress(Exception):
                    await self._script(
                        "release",
                        [keys["lease"], keys["waiting"]],
                        [
                            lease_value,
                            keys["channel"],
                            self._seal.wrap(keys["result"], token, {"abandoned": True}),
                            "0",
                        ],
                    )
            self._counts["leading"] -= 1
            if not self._counts["leading"] and self._unled is not None:
                self._unled.set()

    async def _commit(
        self, keys: dict[str, str], lease: _Lease, payload: bytes, linger: float
    ) -> tuple[bool, Any]:
        """Commit; (settled, None) if done (or Redis is away), (True, reply) if refused."""
        with trio.CancelScope(shield=True):  # the value is ready: publish it
            try:
                reply = await self._script(
                    "commit",
                    [
                        keys["lease"],
                        keys["result"],
                        keys["linger"],
                        keys["fence"],
                        keys["waiting"],
                    ],
                    [
                        lease.value,
                        lease.token,
                        payload,
                        keys["channel"],
                        int(self._result_ttl() * 1000),
                        int(linger * 1000),
                        "0",
                    ],
                )
            except (BackendUnavailable, CorruptResult):
                # Our callers have their outcome; followers look again and take over.
                return False, None
            if _text(reply[0]) == "c":
                return True, None
            return True, reply
        raise AssertionError("unreachable: a shielded scope never swallows")  # pragma: no cover

    async def _renew_leases(self) -> None:
        """Every third of the TTL, renew every lease held now in one pipeline; cancel
        the executions whose lease is lost (or unrenewed for a whole TTL)."""
        ttl_ms = int(self.lease_ttl * 1000)
        while True:
            await trio.sleep(self.lease_ttl / 3)
            leases = list(self._leases.values())
            if not leases:
                continue
            try:
                answers = await self._step("renewing leases", self._renew, leases, ttl_ms)
            except (BackendUnavailable, CorruptResult):
                answers = None
            now = trio.current_time()
            for lease, answer in zip(leases, answers or [None] * len(leases), strict=True):
                if answer == 1:
                    lease.renewed = now
                elif answer == 0 or now - lease.renewed >= self.lease_ttl:
                    self._lose(lease)

    async def _renew(self, leases: list[_Lease], ttl_ms: int) -> list[Any]:
        script = self._scripts["renew"]
        async with self._client.pipeline(transaction=False, raise_on_error=False) as pipe:
            requests = [
                script(keys=[lease.key], args=[lease.value, ttl_ms], client=pipe)
                for lease in leases
            ]
        return [await request for request in requests]

    def _lose(self, lease: _Lease) -> None:
        if not lease.lost:
            lease.lost = True
            self._counts["lost"] += 1
            logger.warning(
                "lost the lease of %s (token %d): cancelling its execution", lease.key, lease.token
            )
            lease.scope.cancel()

    async def _follow(
        self, keys: dict[str, str], token: int, watch: Watch
    ) -> tuple[bool, Any] | None:
        """Wait for *token*'s outcome (or a newer one); None if its leader vanished."""
        self._counts["following"] += 1
        try:
            while True:
                heard = self._heard(keys, token, watch)
                if heard is not None:
                    return None if heard is ABANDONED else heard
                await watch.wait(self.lease_ttl / 3)
                if watch.inbox:
                    continue
                # Quiet (or poked after a reconnect): is the leader still there?
                lease, result = await self._script("peek", [keys["lease"], keys["result"]], [])
                if result:
                    found_token = _payload_token(result)
                    if found_token is None or found_token >= token:  # garbage: say so
                        return self._decode(keys, result)
                heard = self._heard(keys, token, watch)  # what arrived meanwhile
                if heard is not None:
                    return None if heard is ABANDONED else heard
                if _text(lease) in ("", "bad"):
                    return None  # vanished (or corrupt): take over
        finally:
            self._counts["following"] -= 1

    def _heard(self, keys: dict[str, str], token: int, watch: Watch) -> Any:
        """The outcome in *watch*'s inbox for *token* or newer (`ABANDONED`), else None."""
        while watch.inbox:
            data = watch.inbox.pop(0)
            try:
                got, ok, value = decode_outcome(self._seal, keys["result"], data, keys["channel"])
            except CorruptResult as exc:
                self._counts["corrupt"] += 1
                logger.warning("ignored a malformed message: %s", exc)
                continue
            if got < token:
                continue  # an older round's news
            if value is ABANDONED:
                return ABANDONED
            return ok, value
        return None


@attrs.frozen
class _Again:
    """Acquire again, accepting results at or after *token* (not a vanished leader)."""

    token: int


class _Undecodable(CorruptResult):
    """A result that was read but cannot be trusted: never a reason to run locally."""


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _payload_token(payload: Any) -> int | None:
    head = (payload if isinstance(payload, bytes) else str(payload).encode()).split(b":", 1)[0]
    return int(head) if head.isdigit() and len(head) <= 16 else None


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
