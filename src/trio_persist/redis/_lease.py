"""The lease protocol: how one flight leads or follows its key across processes.

A flight's `Call` goes through rounds (`Leases.run`). Each round starts with
one acquire script, which answers `Lead` (we hold the key's lease and a fresh
fencing token), `Follow` (another process leads: wait for its outcome) or
`Found` (a result that answers us already). A round ends with an `Answer` for
the flight's callers, or says why to go round again: the leader we followed
`Vanished`, or our own lease passed on (`Again`).

Leases held now are renewed by one loop (`._renewal`), each on its own
schedule and in batches: a task per flight would cost more than the flight's
own bookkeeping. A lease found taken, or whose expiry passes without a
confirmed renewal, cancels its execution.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import trio

from .._codec import ABANDONED, Seal, decode_outcome, encode_error, encode_value
from .._exceptions import BackendUnavailable, CorruptResult, LeaderDied
from .._logging import Throttle
from ._admission import Overloaded
from ._link import Counters, Link, Prepared
from ._renewal import Held, Renewer
from ._rounds import (
    Again,
    Answer,
    Call,
    Elsewhere,
    Follow,
    Found,
    Lead,
    Placed,
    Resolve,
    Vanished,
    Verdict,
    text_of,
    verdict_of,
)
from ._scripts import ACQUIRE, COMMIT, PEEK, RELEASE, RENEW, Keys
from ._subscriber import Subscriber, Watch

__all__ = ["LEASE_SCRIPTS", "Leases", "fencing_token"]

LEASE_SCRIPTS = {
    "acquire": ACQUIRE,
    "renew": RENEW,
    "commit": COMMIT,
    "release": RELEASE,
    "peek": PEEK,
}
"""The scripts the protocol runs, by name (for `Link.attach`)."""

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


class _Undecodable(CorruptResult):
    """A result that was read but cannot be trusted: never a reason to run locally."""


class _Routed(Exception):
    """A request sent to the group's worker elsewhere failed on its way: never run
    locally (it may have landed there); its error is raised as it is."""

    def __init__(self, error: Exception) -> None:
        super().__init__(str(error))
        self.error = error


_MAX_MOVES = 64  # owners one request follows before it gives up (as a routed ask)


@attrs.define(eq=False)
class Leases:
    """The lease protocol of one backend: its rounds, and the leases it holds.

    Args:
        link: How to reach Redis (every step bounded by its timeout).
        seal: Seals and checks payloads for the namespace.
        subscriber: Hears the namespace's publications for waiting followers.
        counters: Where to count (shared with the backend's statistics).
        lease_ttl: Seconds a lease lives without renewal.
        fallback: ``"local"`` to execute locally when Redis cannot be used.
        max_takeovers: Vanished leaders one call survives.
    """

    link: Link
    seal: Seal
    subscriber: Subscriber
    counters: Counters
    lease_ttl: float
    fallback: str = "error"
    max_takeovers: int = 3
    log: Throttle = attrs.Factory(Throttle)
    """Events that can repeat at the rate of requests (garbage, faults), throttled."""
    renewer: Renewer = attrs.field(init=False)
    _unled: trio.Event | None = None  # set once nothing leads (while closing)
    _nursery: trio.Nursery | None = None  # for background work (releases), while serving

    def __attrs_post_init__(self) -> None:
        self.renewer = Renewer(self.link, self.lease_ttl, self.counters, self.log)

    @property
    def result_ttl(self) -> float:
        """How long a result outlives its commit: a follower looks at least every
        third of the TTL, and each look may take the timeout."""
        return max(3 * self.lease_ttl, self.lease_ttl + 2 * self.link.timeout, 1.0)

    # -- life cycle ----------------------------------------------------------------

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Keep the subscription up and renew the leases held, until cancelled.

        Reports started once subscribed, or after the timeout if Redis is away.
        """
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await nursery.start(self.subscriber.run, self.link.client)
                nursery.start_soon(self.renewer.run)
                task_status.started()
        finally:
            self._nursery = None
            self.log.flush()

    async def wait_unled(self) -> None:
        """Wait (at most the timeout) until no execution leads: cancelled leaders
        are dropping their leases, shielded, and need the client for it."""
        if self.counters.leading:
            self._unled = trio.Event()
            with trio.move_on_after(self.link.timeout):
                await self._unled.wait()

    # -- rounds --------------------------------------------------------------------

    async def run(
        self,
        key: str,
        base: Any,
        request: Any,
        resolve: Resolve,
        linger: float,
        placed: Placed | None = None,
    ) -> Any:
        """Execute ``resolve(base, request)`` once across processes for *key*;
        with *placed*, at the group's worker if another process owns it."""
        keys = Keys.of(self.seal.namespace, key)
        with self.subscriber.watch(key) as watch:
            call = Call(keys, watch, base, request, resolve, linger, placed=placed)
            while True:
                try:
                    outcome = await self.round(call)
                except _Routed as exc:
                    raise exc.error from None
                except _Undecodable as exc:
                    raise CorruptResult(str(exc)) from None  # the public type, never ours
                except Overloaded as exc:
                    raise BackendUnavailable(str(exc)) from None  # shed: never run here
                except (BackendUnavailable, CorruptResult) as exc:
                    if self.fallback != "local":
                        raise
                    self.log.log(
                        logging.INFO, "local execution", "executing %s locally: %s", key, exc
                    )
                    return await resolve(base, request)
                if isinstance(outcome, Answer):
                    return outcome.unwrap()
                call.vanished_token = outcome.token
                if isinstance(outcome, Vanished):
                    call.vanished += 1
                    if call.vanished > self.max_takeovers:
                        raise LeaderDied(
                            f"the remote leader of {key} vanished {call.vanished} times; giving up"
                        )

    async def round(self, call: Call) -> Answer | Vanished | Again:
        """One acquire and what follows it."""
        found = await self.acquire(call)
        if isinstance(found, Elsewhere):
            return await self._elsewhere(call, found)
        if isinstance(found, Found):
            answer = self._lingering(call, found) if found.lingering else None
            if answer is None and found.lingering:
                return Again(call.vanished_token)  # ask again, without the linger
            self.counters.followed += 1
            return answer or self.decode(call.keys, found.payload)
        if isinstance(found, Lead):
            if call.vanished:
                self.counters.takeovers += 1
                self.log.log(
                    logging.WARNING,
                    "takeover",
                    "took over %s from a leader that vanished (token %d)",
                    call.keys.lease,
                    call.vanished_token,
                )
            return await self._lead(call, found)
        outcome = await self._follow(call, found.token)
        if isinstance(outcome, Answer):
            self.counters.followed += 1
        return outcome

    async def _elsewhere(self, call: Call, found: Elsewhere) -> Answer | Again:
        """Send *call*'s request to the group's worker in another process."""
        placed = call.placed
        assert placed is not None
        call.request_id = call.request_id or secrets.token_hex(16)
        try:
            answer = await placed.route(placed, found.lease, call.request_id, call.request)
        except (BackendUnavailable, CorruptResult) as exc:
            raise _Routed(exc) from None
        if answer is not None:
            return answer
        call.moved += 1
        if call.moved >= _MAX_MOVES:
            raise LeaderDied(
                f"the worker of {call.keys.lease}'s group changed owner {_MAX_MOVES} times: "
                "giving up"
            )
        await trio.sleep(self.lease_ttl / 30)  # its worker ended there: look again
        return Again(call.vanished_token)

    async def acquire(self, call: Call) -> Lead | Follow | Found | Elsewhere:
        """Lead *call*'s key, or learn who does (one script, one round trip).

        New work first takes an admission slot (`Admission.enter`): it may wait
        for one, or be refused (`Overloaded`). A call whose callers all left
        meanwhile sends nothing.
        """
        admission = self.link.admission
        admitted = not (call.vanished or call.vanished_token)  # new work only
        sent = await admission.enter("acquire") if admitted else trio.current_time()
        try:
            await trio.lowlevel.checkpoint_if_cancelled()  # abandoned: never sent
            lease_id = secrets.token_hex(16)
            reply = await self._send_acquire(call, lease_id, sent)
        finally:
            if admitted:
                admission.leave()
        kind = text_of(reply[0])
        if kind == "w":
            return Elsewhere(text_of(reply[1]))
        if kind in ("r", "g"):
            return Found(reply[1], lingering=kind == "g")
        token = int(reply[1])
        if kind == "f":
            return Follow(token)
        if int(reply[2]):
            self.counters.corrupt += 1
            self.log.log(
                logging.WARNING,
                "malformed lease",
                "replaced a malformed lease at %s",
                call.keys.lease,
            )
        return Lead(token, f"{lease_id}:{token}", sent)

    async def _send_acquire(self, call: Call, lease_id: str, sent: float) -> Any:
        keys, placed = call.keys, call.placed
        names = [keys.lease, keys.fence, keys.linger, keys.result, keys.waiting]
        args: list[Any] = [
            int(self.lease_ttl * 1000),
            _ms(call.linger) if call.read_linger else 0,
            call.vanished_token,
            lease_id,
            int(self.result_ttl * 1000) + int(self.lease_ttl * 1000),
        ]
        if placed is not None:
            names.append(placed.key)
            args.append(":" + placed.node)
        try:
            return await self.link.script("acquire", names, args)
        except BaseException:
            # Unanswered (timed out, broken, cancelled): it may still reach Redis
            # and take the lease, which nobody would renew or release.
            self._soon(self._drop_orphan, keys, lease_id, sent)
            raise

    def _lingering(self, call: Call, found: Found) -> Answer | None:
        """The success a lingering entry holds; None (counted) if it holds anything
        else: garbage or a failure there is never an answer."""
        try:
            answer = self.decode(call.keys, found.payload)
        except CorruptResult as exc:
            reason = str(exc)
        else:
            if answer.ok:
                return answer
            self.counters.corrupt += 1
            reason = "a failure, which never lingers"
        call.read_linger = False
        self.log.log(
            logging.WARNING,
            "malformed linger",
            "ignored the lingering entry of %s: %s",
            call.keys.linger,
            reason,
        )
        return None

    def decode(self, keys: Keys, payload: Any) -> Answer:
        """The outcome a stored result holds; `CorruptResult` if it holds none."""
        try:
            _, ok, value = decode_outcome(self.seal, keys.result, payload, keys.result)
        except CorruptResult as exc:
            self.counters.corrupt += 1
            raise _Undecodable(str(exc)) from None
        if value is ABANDONED:
            raise _Undecodable(f"{keys.result} holds an abandonment, not a result")
        return Answer(ok, value)

    # -- leading -------------------------------------------------------------------

    async def _lead(self, call: Call, lead: Lead) -> Answer | Again:
        """Run the device as the leader and commit its outcome.

        Returns the callers' answer, or `Again` to follow whoever holds the key
        now (the lease was lost, or the commit refused with a live successor).
        A leader that does not settle (abandoned, crashed, cancelled, or Redis
        away at the commit) drops its lease and says so, shielded, so that a
        follower takes over at once instead of after the TTL.
        """
        self.counters.led += 1
        self.counters.leading += 1
        held = self.renewer.hold(call.keys.lease, lead.value, lead.token, lead.sent)
        prepared = self.prepare_commit(call.keys, held)
        settled = False
        reset = _token.set(lead.token)
        try:
            # The commit is sent from inside the lease's scope, whose exit then
            # comes after it (off the way of the followers): once settling,
            # losing the lease cancels nothing, and the commit is shielded.
            with held.scope:
                answer, payload, linger = await self._execute(call, lead.token)
                held.settling = True
                if not held.lost:
                    try:
                        verdict = await self.commit(call.keys, held, payload, linger, prepared)
                    except (BackendUnavailable, CorruptResult) as exc:
                        settled = True  # dropped in the background: our callers wait no longer
                        self._release_soon(call.keys, held)
                        return self._uncommitted(answer, exc)
                    settled = True
                    return self._after_commit(call, held, answer, verdict)
            settled = True  # lost: the lease is someone else's now
            return Again(lead.token)
        finally:
            _token.reset(reset)
            self.renewer.drop(held)
            if not settled:
                await self._release(call.keys, held.value, held.token)
            self.counters.leading -= 1
            if not self.counters.leading and self._unled is not None:
                self._unled.set()

    async def _execute(self, call: Call, token: int) -> tuple[Answer, bytes, float]:
        """Run the device (in the lease's scope: cancelled if the lease is lost):
        its answer, the payload for the other processes, and how long it lingers."""
        assert call.resolve is not None
        keys = call.keys
        try:
            value = await call.resolve(call.base, call.request)
        except Exception as exc:
            return Answer(False, exc), encode_error(self.seal, keys.result, exc, token), 0.0
        try:
            payload = encode_value(self.seal, keys.result, value, token)
        except Exception as exc:
            # A failure for the others: it must not linger.
            return Answer(True, value), encode_error(self.seal, keys.result, exc, token), 0.0
        return Answer(True, value), payload, call.linger

    async def commit(
        self,
        keys: Keys,
        held: Held,
        payload: bytes,
        linger: float,
        prepared: Prepared | None = None,
    ) -> Verdict | Found | Follow:
        """Store, publish and drop the lease, if it is still ours (or expired unclaimed).

        Shielded: the value is ready, and the others wait for it. A refused
        commit says what to answer with instead: the winner's result (`Found`),
        the live successor to follow (`Follow`), or nobody (`Verdict.ALONE`).
        *prepared*: the call as `prepare_commit` made it for *held*.
        """
        prepared = prepared or self.prepare_commit(keys, held)
        reply = await self.link.script_prepared(prepared, [_ms(linger), payload], shield=True)
        return verdict_of(reply)

    def prepare_commit(self, keys: Keys, held: Held) -> Prepared:
        """The commit of *held* with all but its linger and payload, packed now:
        made before the device runs, so that its outcome leaves at once."""
        return self.link.prepare(
            "commit",
            [keys.lease, keys.result, keys.linger, keys.fence, keys.waiting],
            [held.value, held.token, keys.channel, int(self.result_ttl * 1000), "0"],
            2,
        )

    def _after_commit(
        self, call: Call, held: Held, answer: Answer, verdict: Verdict | Found | Follow
    ) -> Answer | Again:
        if verdict is Verdict.COMMITTED:
            return answer
        self.counters.fenced += 1
        self.log.log(
            logging.WARNING,
            "stale commit",
            "a stale commit of %s was refused (token %d): answering with the winner's outcome",
            call.keys.lease,
            held.token,
        )
        if isinstance(verdict, Found):
            return self.decode(call.keys, verdict.payload)
        if isinstance(verdict, Follow):
            return Again(verdict.token)
        return answer  # no winner to answer with: ours is the only outcome

    def _uncommitted(self, answer: Answer, failure: Exception) -> Answer:
        """What the callers of an execution whose commit failed get: a clear error,
        since another process may execute the round meanwhile (with
        ``fallback="local"``, the value: a local execution's, as documented)."""
        if self.fallback == "local":
            return answer
        error = BackendUnavailable(
            f"{failure}; the execution's outcome could not be committed, so it is not "
            "handed out (another process may execute this round)"
        )
        error.__cause__ = failure
        return Answer(False, error)

    def _soon(self, work: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Run *work* in the background while serving (else a lease expires by itself)."""
        if self._nursery is not None:
            self._nursery.start_soon(work, *args)

    def _release_soon(self, keys: Keys, held: Held) -> None:
        self._soon(self._release, keys, held.value, held.token)

    async def _release(self, keys: Keys, value: str, token: int) -> None:
        """Drop the lease *value* if it is still ours, and say so to followers."""
        with contextlib.suppress(Exception):
            await self.link.script(
                "release",
                [keys.lease, keys.waiting],
                [
                    value,
                    keys.channel,
                    self.seal.wrap(keys.result, token, {"abandoned": True}),
                    "0",
                ],
                shield=True,
            )

    async def _drop_orphan(self, keys: Keys, lease_id: str, sent: float) -> None:
        """Release the lease an unanswered acquire may take, should it reach Redis
        before the lease would expire anyway: look a few times until then."""
        give_up = sent + self.lease_ttl
        while trio.current_time() < give_up:
            with contextlib.suppress(BackendUnavailable, CorruptResult):
                value = text_of(
                    await self.link.step(
                        "looking for an orphan lease", self.link.client.get, keys.lease
                    )
                    or b""
                )
                head, _, token = value.partition(":")
                if head == lease_id and token.isdigit():
                    await self._release(keys, value, int(token))
                    return
            await trio.sleep(max(self.lease_ttl / 6, 0.05))

    # -- following -----------------------------------------------------------------

    async def _follow(self, call: Call, token: int) -> Answer | Vanished:
        """Wait for *token*'s outcome (or a newer one), or learn that its leader vanished."""
        self.counters.following += 1
        try:
            while True:
                heard = self.heard(call.keys, token, call.watch)
                if heard is not None:
                    return heard
                await call.watch.wait(self.lease_ttl / 3)
                if call.watch.inbox:
                    continue
                looked = await self._look(call, token)
                if looked is not None:
                    return looked
        finally:
            self.counters.following -= 1

    async def _look(self, call: Call, token: int) -> Answer | Vanished | None:
        """Quiet (or poked after a reconnect): is the leader still there?"""
        keys = call.keys
        lease, result = await self.link.script(
            "peek", [keys.lease, keys.result], [int(self.lease_ttl * 1000)]
        )
        if result:
            found_token = _payload_token(result)
            if found_token is None or found_token >= token:  # garbage: say so
                return self.decode(keys, result)
        heard = self.heard(keys, token, call.watch)  # what arrived meanwhile
        if heard is not None:
            return heard
        if text_of(lease) in ("", "bad"):
            # Vanished (or corrupt), unless its outcome reached us before this
            # answer did, and waits unread in the subscription's connection.
            await self.subscriber.caught_up()
            heard = self.heard(keys, token, call.watch)
            return Vanished(token) if heard is None else heard  # else: take over
        return None

    def heard(self, keys: Keys, token: int, watch: Watch) -> Answer | Vanished | None:
        """The outcome in *watch*'s inbox for *token* or newer; `Vanished` for an
        abandonment; None if nothing there answers."""
        while watch.inbox:
            data = watch.inbox.pop(0)
            try:
                got, ok, value = decode_outcome(self.seal, keys.result, data, keys.channel)
            except CorruptResult as exc:
                self.counters.corrupt += 1
                self.log.log(
                    logging.WARNING, "malformed message", "ignored a malformed message: %s", exc
                )
                continue
            if got < token:
                continue  # an older round's news
            if value is ABANDONED:
                return Vanished(token)
            return Answer(ok, value)
        return None


def _ms(seconds: float) -> int:
    """Milliseconds for a script; any positive time is at least one."""
    return max(1, round(seconds * 1000)) if seconds > 0 else 0


def _payload_token(payload: Any) -> int | None:
    head = (payload if isinstance(payload, bytes) else str(payload).encode()).split(b":", 1)[0]
    return int(head) if head.isdigit() and len(head) <= 16 else None
