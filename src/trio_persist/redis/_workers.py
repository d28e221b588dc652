"""Workers across the cluster: one owner per group among all processes, and routed asks.

With ``RedisBackend(workers="cluster")`` a virtual worker runs only in the
process that holds its group's **worker lease**, ``{namespace:w:<digest>}:lease``
= ``"<id>:<token>:<node>"``: a random id, a fencing token that never repeats
(as a flight lease's: the server's clock in microseconds, or one more than the
last issued), and the owner's node. It is renewed by the backend's batched
renewal loop while the worker lives and released when it ends; a lease that
is lost (found taken, or its expiry bound passed unconfirmed) stops the worker
at once, cancelled and unsaved, and every save carries the token, so a stale
owner's save is refused by the store once its successor has saved. The worker
also checks the bound itself (`Owned.valid`) before it starts each request: a
process woken from a pause must not start one before its renewal loop runs.

`ClusterWorkers.ask` (the persist's `Placement`) takes a request to its
group's owner: this process, if it holds the lease or wins it (the first ask
activates the worker where it is asked); else the owner's inbox (`._inbox`),
from which the reply comes back. While waiting, the caller looks at the lease
every third of a TTL: if it changed hands (the owner died, stalled past it,
or stopped its worker), the caller takes its request back if not started and
asks again; the group's next owner answers a request a dead owner applied
from the store's record (``durable=True``) rather than running it again.
docs/redis.md states the bound and the guarantees.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import re
import secrets
from collections.abc import Callable, Hashable
from typing import Any

import attrs
import trio

from .._backend import CHAIN_LIMIT, Chain, LocalWorkers, cycle_error
from .._codec import Seal, decode_outcome, encode_error, encode_value
from .._exceptions import (
    BackendUnavailable,
    CorruptResult,
    InfiniteRecursion,
    LeaderDied,
    NoWorker,
    RemoteError,
    WorkerMoved,
)
from .._grouping import canonical_encoding, group_digest
from .._logging import Throttle
from ._inbox import INBOX_LIMIT, PAYLOAD_LIMIT, PUSH, TAKE, Inbox, Waiter
from ._link import Counters, Link
from ._renewal import Held, Renewer
from ._rounds import Answer, Placed
from ._scripts import LUA_HELPERS, RENEW

__all__ = ["WORKER_SCRIPTS", "ClusterWorkers", "Owned"]

# KEYS: lease, fence. ARGV: ttl_ms, lease id, node, fence_ttl_ms.
# {"l", token}: we own the group now (a retried acquire finding its own id
# too); {"o", value}: the live lease of another owner. A malformed, immortal or
# overlong lease is foreign: replaced.
WACQUIRE = (
    LUA_HELPERS
    + """
local current = get(KEYS[1])
if type(current) == 'table' then return current end
if current then
  local id, token = string.match(current, '^(%x+):(%d+):.+$')
  if id ~= nil and #id == 32 and digits(token) then
    if id == ARGV[2] then return {'l', digits(token)} end
    local left = redis.call('PTTL', KEYS[1])
    if left > 0 and left <= tonumber(ARGV[1]) then return {'o', current} end
  end
end
local fence = get(KEYS[2])
if type(fence) == 'table' then return fence end
local token = now_us()
local last = digits(fence)
if last and not before(last, token) and last ~= '9999999999999999' then
  token = increment(last)
end
redis.call('SET', KEYS[2], token, 'PX', ARGV[4])
redis.call('SET', KEYS[1], ARGV[2] .. ':' .. token .. ':' .. ARGV[3], 'PX', ARGV[1])
return {'l', token}
"""
)

# KEYS: lease. ARGV: value. Drops the lease if it is still ours: 1 if dropped.
WRELEASE = """
local ok, value = pcall(redis.call, 'GET', KEYS[1])
if not ok or value ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1])
return 1
"""

WORKER_SCRIPTS = {
    "wacquire": WACQUIRE,
    "wrelease": WRELEASE,
    "renew": RENEW,
    "push": PUSH,
    "take": TAKE,
}
"""The scripts worker placement runs, by name (for `Link.attach`)."""

_FENCE_TTL = 3600.0  # the clock takes over from a forgotten fence
_MAX_ROUNDS = 64  # owners one ask goes through before it gives up
_OWNERS_KEPT = 16384  # groups owned elsewhere whose owner is remembered
# A group digest, as `group_digest` makes them, or a worker's name (its lease id).
_DIGEST = re.compile(r"[0-9a-f]{32}")
_SERVED_KEPT = 4096  # ids of routed requests served, for duplicates delivered late
# What a best-effort step (a reply, a withdrawal, a release) may meet: Redis away, garbage.
_QUIET = functools.partial(contextlib.suppress, BackendUnavailable, CorruptResult)


@attrs.define(eq=False)
class Owned:
    """A group whose worker lease this process holds (a `WorkerLease`)."""

    group: Hashable
    digest: str
    held: Held

    @property
    def token(self) -> int:
        return self.held.token

    @property
    def name(self) -> str:
        """The lease's id: what a chain names this worker by."""
        return _worker_of(self.held.value)

    def valid(self) -> bool:
        return self.held.valid()


@attrs.define(eq=False)
class ClusterWorkers:
    """The persist's `Placement` on a `RedisBackend` with ``workers="cluster"``."""

    link: Link
    seal: Seal
    renewer: Renewer
    inbox: Inbox
    counters: Counters
    lease_ttl: float
    log: Throttle
    local: LocalWorkers | None = None
    owned: dict[str, Owned] = attrs.Factory(dict)
    # The owner last seen for groups owned elsewhere (their lease values): an
    # ask goes straight there, and acquires again only if it finds it gone.
    owners: dict[str, str] = attrs.Factory(dict)
    # Routed requests being served now (cancelled if their caller leaves), and
    # the last ones answered, by id: a copy delivered twice runs once (one
    # answered "moved" is sent again by its caller, and served then).
    serving: dict[str, trio.CancelScope] = attrs.Factory(dict)
    served: dict[str, None] = attrs.Factory(dict)
    _folds: tuple[object, bool] | None = None  # `folds`, for the client it was made for
    _nursery: trio.Nursery | None = None

    @property
    def node(self) -> str:
        return self.inbox.node

    def _keys(self, digest: str) -> list[str]:
        tag = "{" + self.seal.namespace + ":w:" + digest + "}"
        return [tag + ":lease", tag + ":fence"]

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Pop this process's inbox and run what it brings, until cancelled."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self.inbox.serve, self._on_request)
                task_status.started()
        finally:
            self._nursery = None

    # -- asking ----------------------------------------------------------------------

    async def ask(
        self, group: Hashable, request: Any, default: Callable[[], Any] | None, request_id: str
    ) -> Any:
        """Deliver *request* to *group*'s worker wherever it lives; return the reply."""
        assert self.local is not None
        canonical_encoding(group)  # a group every process names alike (TypeError)
        digest = group_digest(group)
        chain = self.local.chain_for(group, digest)  # InfiniteRecursion: a cycle
        for _ in range(_MAX_ROUNDS):
            owned = self.owned.get(digest)
            if owned is not None and owned.valid():
                return await self.local.ask(
                    group, request, default, request_id, owned, routed=False
                )
            found = self.owners.pop(digest, None) or await self._acquire(group, digest)
            if isinstance(found, Owned):
                continue
            if found.endswith(":" + self.node):  # ours, being released: a moment
                await trio.sleep(self.lease_ttl / 30)
                continue
            # The asking owner waits for that worker meanwhile (a request it
            # queues behind there may come back here: `LocalWorkers.standing_in`).
            with self.local.standing_in(_worker_of(found)):
                answer = await self._route(found, digest, request_id, request, chain)
            if answer is not None:
                self._remember(digest, found)
                return answer.unwrap()
        raise LeaderDied(
            f"the worker of group {digest} changed owner {_MAX_ROUNDS} times: giving up"
        )

    async def resolve_elsewhere(
        self,
        group: Hashable,
        request: Any,
        request_id: str,
        *,
        share: bool,
        spawn_worker: bool = False,
    ) -> tuple[Any] | None:
        """A `resolve` of *group*, sent to its worker if another process owns it:
        ``(reply,)``; None if no other process does (resolve here). A shared
        call is left to its flight (None at once): the flight's acquire looks
        at the worker lease in its own round trip (`placed`). Otherwise one
        GET when nobody owns the group; a routed ask's path if another does."""
        if share and not spawn_worker and self.folds:
            return None
        local = self.local
        assert local is not None
        try:
            canonical_encoding(group)
        except TypeError:
            return None  # no other process can name it
        digest = group_digest(group)
        extra = {"r": 1 if share else 2}
        chain: Chain | None = None  # made once it is routed
        for _ in range(_MAX_ROUNDS):
            owned = self.owned.get(digest)
            if owned is not None and owned.valid():
                return None
            current = await self.link.step(
                "looking at a worker lease", self.link.client.get, self._keys(digest)[0]
            )
            lease = None if current is None else _text(current)
            if lease is None or lease.endswith(":" + self.node):
                return None  # nobody's, or ours being released: a flight here
            if chain is None:
                chain = local.chain_for(group, digest)
            # The calling owner waits for that worker meanwhile (a cycle that
            # closes by a join there is found when the worker asks back here).
            with local.standing_in(_worker_of(lease)):
                answer = await self._route(lease, digest, request_id, request, chain, extra)
            if answer is not None:
                return (answer.unwrap(),)
            await trio.sleep(self.lease_ttl / 30)  # its worker ended there: look again
        raise LeaderDied(
            f"the worker of group {digest} changed owner {_MAX_ROUNDS} times: giving up"
        )

    @property
    def folds(self) -> bool:
        """Whether a flight's acquire can look at its group's worker lease (not on
        a Redis Cluster, where the two keys live in different slots)."""
        client = self.link.client
        if client is None:
            return False
        if self._folds is None or self._folds[0] is not client:  # once per client
            from coredis import RedisCluster

            self._folds = (client, not isinstance(client, RedisCluster))
        return self._folds[1]

    def placed(self, group: Hashable) -> Placed | None:
        """How a flight of *group* (a group the backend named: any process can)
        reaches the group's worker in another process (`Leases.run`)."""
        if not self.folds:
            return None
        digest = group_digest(group)
        return Placed(self._keys(digest)[0], self.node, group, digest, self._route_resolve)

    async def _route_resolve(
        self, placed: Placed, lease: str, request_id: str, request: Any
    ) -> Answer | None:
        """A flight's request, sent to the group's worker in the process of *lease*;
        meanwhile the flight stands in for that worker (`LocalWorkers.standing_in`).

        Raises:
            InfiniteRecursion: it would wait for itself. Whatever
                ``allow_infinite`` says: the flight is shared, and a direct
                execution would answer callers outside the cycle too.
        """
        assert self.local is not None
        chain = self.local.chain_for(placed.group, placed.digest)  # the flight's callers'
        with self.local.standing_in(_worker_of(lease)):
            return await self._route(lease, placed.digest, request_id, request, chain, {"r": 1})

    async def claim(self, group: Hashable) -> Owned:
        """*group*'s worker lease for this process: held already, or won now.

        Raises:
            NoWorker: another process owns the group's worker (ask it with
                `~trio_persist.Persist.ask`, or stop it there first).
        """
        canonical_encoding(group)
        digest = group_digest(group)
        owned = self.owned.get(digest)
        if owned is not None and owned.valid():
            return owned
        found = await self._acquire(group, digest)
        if isinstance(found, Owned):
            return found
        raise NoWorker(
            f"the worker of group {digest} lives in another process ({found.split(':', 2)[2]}): "
            "ask it with persist.ask(), or stop it there first"
        )

    def _remember(self, digest: str, lease: str) -> None:
        """*lease*'s process answered for *digest*: go there next time (bounded)."""
        owners = self.owners
        owners[digest] = lease
        if len(owners) > _OWNERS_KEPT:
            del owners[next(iter(owners))]

    async def _acquire(self, group: Hashable, digest: str) -> Owned | str:
        """Own *group* (its worker lease), or learn the owner's lease value."""
        lease_id = secrets.token_hex(16)
        admission = self.link.admission  # new work: it takes a slot, as a flight does
        sent = await admission.enter("a worker lease")
        try:
            reply = await self.link.script(
                "wacquire",
                self._keys(digest),
                [int(self.lease_ttl * 1000), lease_id, self.node, int(_FENCE_TTL * 1000)],
            )
        finally:
            admission.leave()
        kind = _text(reply[0])
        if kind != "l":
            return _text(reply[1])
        token = int(reply[1])
        held = self.renewer.hold(
            self._keys(digest)[0], f"{lease_id}:{token}:{self.node}", token, sent
        )
        owned = Owned(group, digest, held)
        held.on_lost = lambda: self._lost(owned)
        self.owned[digest] = owned
        self.counters.owned += 1
        return owned

    async def _route(
        self,
        lease: str,
        digest: str,
        request_id: str,
        request: Any,
        chain: Chain,
        extra: dict[str, Any] | None = None,
    ) -> Answer | None:
        """Send *request* to the owner named by *lease* and wait for its answer;
        None if the group changed owner meanwhile (ask again). *chain*: the
        groups waiting for it (`LocalWorkers.chain_for`), sealed with it.
        *extra*: fields of a routed resolve (``"r"``: 1 may join an identical
        request, 2 not)."""
        node = lease.split(":", 2)[2]
        payload = encode_value(self.seal, _request_key(request_id, chain), request, 0).decode()
        fields: dict[str, Any] = {"k": "q", "id": request_id, "from": self.node}
        fields |= {"g": digest, "p": payload}
        if chain.groups:
            fields["c"] = list(chain.groups)
        if chain.workers:
            fields["cw"] = list(chain.workers)
        message = json.dumps(fields | (extra or {}))
        # Measured as sent: the payload is escaped again inside the message.
        _check_size("request", len(message))  # refused here, before anything is sent
        with self.inbox.expect(request_id) as waiter:
            await self._push_request(node, message, request_id)
            self.counters.routed_out += 1
            try:
                return await self._wait(waiter, lease, digest, node, message, request_id)
            except BaseException:
                if waiter.message is None:
                    await self._give_up(node, message, request_id)
                raise

    async def _give_up(self, node: str, message: str, request_id: str) -> None:
        """The caller left: take the request back if the owner has not taken it,
        else tell the owner, which drops it if it has not started (shielded, bounded)."""
        with trio.CancelScope(shield=True), trio.move_on_after(self.link.timeout), _QUIET():
            if not await self.inbox.withdraw(node, message):
                await self.inbox.push(node, json.dumps({"k": "x", "id": request_id}))

    async def _push_request(self, node: str, message: str, request_id: str) -> None:
        """Push to *node*'s inbox, waiting for room (back-pressure) within the timeout."""
        deadline = trio.current_time() + self.link.timeout
        pause = 0.005
        while True:
            try:
                if await self.inbox.push(node, message, limit=INBOX_LIMIT):
                    return
            except BaseException:  # cancelled or failed on its way: it may have landed
                await self._give_up(node, message, request_id)
                raise
            if trio.current_time() + pause > deadline:
                raise BackendUnavailable(
                    f"the inbox of the process owning this group holds {INBOX_LIMIT} requests: "
                    "it did not make room within the timeout"
                )
            await trio.sleep(pause)
            pause = min(2 * pause, 0.1)

    async def _wait(
        self, waiter: Waiter, lease: str, digest: str, node: str, message: str, request_id: str
    ) -> Answer | None:
        """The owner's answer; None once its lease is gone (the request withdrawn
        if it had not started). Looks at the lease every third of a TTL."""
        checked = trio.current_time()
        while True:
            answer = await waiter.wait(self.lease_ttl / 3)
            if answer is not None:
                return self._answer(answer, request_id)
            try:
                current = await self.link.step(
                    "looking at a worker lease", self.link.client.get, self._keys(digest)[0]
                )
            except BackendUnavailable:
                if trio.current_time() - checked > self.lease_ttl + self.link.timeout:
                    raise
                continue
            checked = trio.current_time()
            if current is not None and _text(current) == lease:
                continue
            await self.inbox.withdraw(node, message)
            if waiter.message is not None:
                return self._answer(waiter.message, request_id)
            self.counters.worker_failovers += 1
            return None

    def _answer(self, message: dict[str, Any], request_id: str) -> Answer | None:
        if message.get("k") != "a":
            self.counters.moved += 1
            return None
        _, ok, value = decode_outcome(self.seal, "a:" + request_id, message.get("p", ""), "a reply")
        if isinstance(value, RemoteError) and value.type_name == InfiniteRecursion.__name__:
            value = InfiniteRecursion(value.message)  # raised as it is in one process
        return Answer(ok, value)

    # -- serving what others route here ----------------------------------------------

    def _on_request(self, message: dict[str, Any]) -> None:
        request_id = message["id"]
        if message["k"] == "x":  # its caller left: drop it unless it has started
            scope = self.serving.get(request_id)
            if scope is not None:
                scope.cancel()
            return
        self.counters.routed_in += 1
        if request_id in self.serving or request_id in self.served:
            return
        if self._nursery is not None:
            self.serving[request_id] = trio.CancelScope()
            self._nursery.start_soon(self._serve_request, message)

    async def _serve_request(self, message: dict[str, Any]) -> None:
        request_id = message["id"]
        try:
            with self.serving[request_id]:  # cancelled: abandoned, nobody to answer
                await self._answer_request(message)
        finally:
            del self.serving[request_id]

    async def _answer_request(self, message: dict[str, Any]) -> None:
        request_id, sender = message["id"], str(message.get("from", ""))
        reply: dict[str, Any] = {"k": "m", "id": request_id}
        owned = self.owned.get(str(message.get("g", "")))
        if owned is not None and owned.valid() and self.local is not None:
            payload = await self._outcome(owned, message, request_id)
            if payload is not None:
                reply = {"k": "a", "id": request_id, "p": payload.decode()}
        if reply["k"] == "a":  # answered: a copy delivered again is not run again
            self.served[request_id] = None
            if len(self.served) > _SERVED_KEPT:
                del self.served[next(iter(self.served))]
        await self._reply(sender, json.dumps(reply), owned if reply["k"] == "a" else None)

    async def _outcome(
        self, owned: Owned, message: dict[str, Any], request_id: str
    ) -> bytes | None:
        """Serve a routed request for *owned*'s group: the reply's payload (a value
        or an error), or None if the sender is to ask the group's owner again."""
        assert self.local is not None
        try:
            chain = _chain_of(message)
            _, ok, request = decode_outcome(
                self.seal,
                _request_key(request_id, chain),
                str(message.get("p", "")),
                "a routed request",
            )
            if not ok:
                raise CorruptResult("a routed request holds no request")
            if owned.digest in chain.groups:
                raise cycle_error(owned.group)
            resolving = message.get("r")
            value = await self.local.ask(
                *(owned.group, request, None, request_id, owned),
                routed=True,
                resolving=resolving in (1, 2),
                join=resolving == 1,
                chain=chain,
            )
            payload = encode_value(self.seal, "a:" + request_id, value, owned.token)
            _check_size("reply", _sent_size(payload))
        except WorkerMoved:
            return None
        except Exception as exc:
            # Its worker stopped under it with the lease (this persist closing):
            # the sender asks the group's next owner.
            if isinstance(exc, LeaderDied) and self.owned.get(owned.digest) is not owned:
                return None
            payload = encode_error(self.seal, "a:" + request_id, exc, owned.token)
            if _sent_size(payload) > PAYLOAD_LIMIT:  # an error's message as large: said in short
                error = ValueError(f"the reply is a {type(exc).__name__} too large to send")
                payload = encode_error(self.seal, "a:" + request_id, error, owned.token)
        return payload

    async def _reply(self, sender: str, text: str, owned: Owned | None) -> None:
        """Push a reply to *sender*'s inbox. An answer is tried again while this
        process holds the group's lease: its caller waits for it as long as the
        lease lives (once it is gone, the caller asks the next owner)."""
        while True:
            with trio.move_on_after(self.link.timeout), contextlib.suppress(BackendUnavailable):
                with contextlib.suppress(CorruptResult):  # garbage there: never pushable
                    await self.inbox.push(sender, text)
                return
            if owned is None or not owned.valid():
                return
            await trio.sleep(self.lease_ttl / 30)

    # -- leases ------------------------------------------------------------------------

    def ended(self, group: Hashable) -> None:
        """*group*'s worker here ended with no successor: release its lease."""
        try:
            owned = self.owned.pop(group_digest(group), None)
        except TypeError:
            return  # a group no process can name holds no lease
        if owned is None:
            return
        self.counters.owned -= 1
        self.renewer.held.pop(owned.held.value, None)
        if self._nursery is not None and not owned.held.lost:
            self._nursery.start_soon(self._release, owned)

    async def _release(self, owned: Owned) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(self.link.timeout), _QUIET():
            await self.link.script("wrelease", [owned.held.key], [owned.held.value])

    def _lost(self, owned: Owned) -> None:
        """The lease of *owned* was lost: its worker stops now, unsaved."""
        if self.owned.get(owned.digest) is owned:
            del self.owned[owned.digest]
            self.counters.owned -= 1
        self.renewer.held.pop(owned.held.value, None)
        self.log.log(
            logging.WARNING,
            "lost worker lease",
            "lost the worker lease of group %s (token %d): its worker stops, unsaved",
            owned.digest,
            owned.token,
        )
        if self.local is not None:
            self.local.stop_lost(owned.group)


def _sent_size(payload: bytes) -> int:
    """The bytes *payload* takes inside a message (a JSON string, ASCII: each
    quote, backslash, control or non-ASCII character escaped, up to 12 bytes)."""
    if 12 * len(payload) <= PAYLOAD_LIMIT:  # small whatever it holds: not measured
        return len(payload)
    return len(json.dumps(payload.decode()))


def _check_size(what: str, size: int) -> None:
    """Refuse a routed *what* (``"request"``, ``"reply"``) of *size* bytes as
    sent, over `PAYLOAD_LIMIT`: the owner's inbox drops larger messages unread."""
    if size > PAYLOAD_LIMIT:
        raise ValueError(
            f"the {what} is {size:,} bytes encoded, more than a {what} between "
            f"processes may hold ({PAYLOAD_LIMIT:,}): send a smaller value, or a "
            "reference to it (a key, a path)"
        )


def _request_key(request_id: str, chain: Chain) -> str:
    """What a routed request's payload is sealed to: its id and its chain (with
    a signing key, a chain changed on its way is refused as a forgery)."""
    groups = "".join(":" + digest for digest in chain.groups)
    return "q:" + request_id + groups + "".join("/" + name for name in chain.workers)


def _chain_of(message: dict[str, Any]) -> Chain:
    """A routed request's chain, checked before anything else is read: at most
    `CHAIN_LIMIT` digests and as many worker names (`InfiniteRecursion` past
    it), else `CorruptResult`."""
    groups, workers = message.get("c", []), message.get("cw", [])
    for names in (groups, workers):
        if not isinstance(names, list):
            raise CorruptResult("a routed request holds a malformed chain")
        if len(names) > CHAIN_LIMIT:
            raise InfiniteRecursion(
                f"a routed request nests asks across processes {len(names)} groups deep, "
                f"past the bound of {CHAIN_LIMIT}"
            )
        if not all(isinstance(name, str) and _DIGEST.fullmatch(name) for name in names):
            raise CorruptResult("a routed request holds a malformed chain")
    return Chain(tuple(groups), tuple(workers))


def _worker_of(lease: str) -> str:
    """The name of the worker holding the worker lease *lease* (``id:token:node``): its id."""
    return lease.partition(":")[0]


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
