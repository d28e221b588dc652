"""Each process's inbox on Redis: requests routed to its workers, and replies to its callers.

One list per process, ``{namespace:n:<node>}:inbox``, whatever the number of
groups it owns: a caller pushes a request to the owner's inbox (refused while
the inbox holds `INBOX_LIMIT` messages: back-pressure, the caller waits for
room within the timeout), and the owner pushes the reply to the caller's inbox
(never refused: a process has as many replies coming as requests out). One
task per process takes its inbox's messages (a blocking ``BLMOVE`` when it is
empty, else batches moved by one script) into a list of its own,
``...:taken``, which it empties only once they are dispatched: requests to the
placement (`Inbox.serve`), replies to the callers waiting for them
(`Inbox.expect`). A take whose answer is lost loses nothing.

A caller that gives up, or whose owner lost the group, takes its request back
with ``LREM``: it is withdrawn if the owner had not taken it yet. The choice of
lists over streams or pub/sub, and its numbers, are in docs/architecture.md.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import attrs
import trio

from .._logging import Throttle, logger
from ._direct import Direct
from ._link import Link

__all__ = ["INBOX_LIMIT", "PAYLOAD_LIMIT", "PUSH", "TAKE", "Inbox", "Waiter", "inbox_key"]

INBOX_LIMIT = 1024
"""The most messages a process's inbox holds before callers wait for room."""

PAYLOAD_LIMIT = 1024 * 1024
"""The most bytes one routed request or reply holds, encoded: a larger one is
refused to the call that sent it (docs/redis.md)."""

# What a message holds beside its payload (an id, a node, a chain of digests):
# a message larger than both is nobody's, and is dropped unread.
_ENVELOPE = 16 * 1024

_BATCH = 64
_BLOCK = 1.0  # at most, seconds one blocking move waits on the server (half the timeout)

# KEYS: inbox. ARGV: limit ("0": none), message, ttl_ms. 1 if pushed, 0 if full.
# The inbox expires when nobody takes from it for ttl (its process is gone).
# Idempotent: a push tried again (a dropped connection) finds its message there.
PUSH = """
if redis.call('LPOS', KEYS[1], ARGV[2]) then return 1 end
if ARGV[1] ~= '0' and redis.call('LLEN', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('LPUSH', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
"""


# KEYS: inbox, taken. ARGV: batch, ttl_ms. Drops the taken messages (dispatched) and
# moves up to a batch from the inbox to the taken list; returns them, oldest first.
# The taken list expires as the inbox does: a process that dies holding a batch
# leaves nothing behind (its callers fail over and send their requests again).
TAKE = """
redis.call('DEL', KEYS[2])
local taken = {}
for _ = 1, tonumber(ARGV[1]) do
  local message = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT')
  if not message then break end
  taken[#taken + 1] = message
end
if #taken > 0 then redis.call('PEXPIRE', KEYS[2], ARGV[2]) end
return taken
"""


def inbox_key(namespace: str, node: str) -> str:
    """The inbox list of the process *node* on *namespace*."""
    return "{" + namespace + ":n:" + node + "}:inbox"


@attrs.define(eq=False)
class Waiter:
    """One request's caller, waiting for the message that answers it."""

    message: dict[str, Any] | None = None
    _event: trio.Event = attrs.Factory(trio.Event)

    def deliver(self, message: dict[str, Any]) -> None:
        if self.message is None:
            self.message = message
            self._event.set()

    async def wait(self, seconds: float) -> dict[str, Any] | None:
        """The answer, or None after *seconds* without one."""
        with trio.move_on_after(seconds):
            await self._event.wait()
        return self.message


@attrs.define(eq=False)
class Inbox:
    """This process's inbox: taking from it, pushing to others', waiting for replies."""

    link: Link
    namespace: str
    node: str
    ttl: float
    """Seconds an inbox lives without a push (its process gone)."""
    log: Throttle
    waiters: dict[str, Waiter] = attrs.Factory(dict)
    direct: Direct = attrs.Factory(Direct)
    """The taking task's own connection (a blocking move holds its connection:
    never the one the flights' scripts share)."""
    # Before the taking task tries again after a failure: nothing after a step
    # that succeeded, then doubling up to half a second.
    _pause: float = 0.0

    @property
    def key(self) -> str:
        return inbox_key(self.namespace, self.node)

    @contextlib.contextmanager
    def expect(self, request_id: str) -> Iterator[Waiter]:
        """Hear the answer to *request_id* inside the block (registered before sending)."""
        waiter = self.waiters[request_id] = Waiter()
        try:
            yield waiter
        finally:
            del self.waiters[request_id]

    async def push(self, node: str, message: str, *, limit: int = 0) -> bool:
        """Push *message* to *node*'s inbox (one round trip); False if it is full."""
        pushed = await self.link.script(
            "push", [inbox_key(self.namespace, node)], [limit, message, int(self.ttl * 1000)]
        )
        return bool(pushed)

    async def withdraw(self, node: str, message: str) -> bool:
        """Take *message* back from *node*'s inbox; True if it was still there
        (never taken: never started). Shielded, bounded by the timeout."""
        key = inbox_key(self.namespace, node)
        with trio.CancelScope(shield=True):
            removed = await self.link.step(
                "withdrawing a request", self.link.call, "lrem", key, 1, message
            )
            return bool(removed)
        raise AssertionError("unreachable: a shielded scope never swallows")  # pragma: no cover

    async def serve(
        self,
        on_request: Callable[[dict[str, Any]], None],
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Take this inbox's messages until cancelled: requests go to *on_request*,
        answers to their waiters. Redis away: tried again, every few hundred ms.

        Messages are moved to a list of their own (``...:taken``) rather than
        popped, and dropped from it only once dispatched (by the next take): a
        take whose answer is lost (a timeout, a pause, a dropped connection)
        loses nothing, its messages are read again from there. A message may
        so be dispatched twice: requests and answers are idempotent by id.

        The blocking moves (and the commands around them) go on a connection
        of this inbox's own that speaks the protocol directly (`Direct`, for a
        plain client; through the client while it is down, and for Cluster
        and Sentinel clients): through the client, each cost as much again.
        """
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self.direct.keep, self.link.client)
            task_status.started()
            await self._take_all(on_request)

    async def _take_all(self, on_request: Callable[[dict[str, Any]], None]) -> None:
        clean = False  # whether everything in the taken list was dispatched
        while True:
            try:
                if not clean:
                    for raw in await self._step("lrange", self.taken, 0, -1):
                        self._dispatch(raw, on_request)
                clean = False
                batch, blocked = await self._take()
                for raw in batch:
                    self._dispatch(raw, on_request)
                clean = True
                if blocked:
                    # As TAKE does, once the message is on its way: its
                    # caller (or owner) does not wait for one more round trip.
                    await self._step("pexpire", self.taken, int(self.ttl * 1000))
            except Exception as exc:  # Redis away or restarting: look again soon
                logger.debug("taking from the inbox failed: %r", exc)
                # The first failure after a step that succeeded is tried again
                # at once: a connection that broke under a blocking move, or
                # a moment after its last use, is found broken only when used
                # (the round starts again from the taken list, so a repeated
                # move loses and doubles nothing).
                await trio.sleep(self._pause)
                self._pause = min(max(2 * self._pause, 0.05), 0.5)

    async def _take(self) -> tuple[list[Any], bool]:
        """Drop what was dispatched and take up to a batch (one script); if the
        inbox is empty, wait for one message on the server (a blocking move).

        Returns the messages, and whether they came by the blocking move
        through the client (their taken list has no expiry yet: `serve` sets
        it once they are dispatched). On the inbox's own connection the move
        and the expiry are sent in one write: the server sets the expiry as
        soon as the move returns, so a process that dies before it dispatches
        leaves nothing behind for ever.
        """
        with trio.fail_after(self.link.timeout):
            batch = await self.link.run_script(
                "take", [self.key, self.taken], [_BATCH, int(self.ttl * 1000)]
            )
        self._pause = 0.0
        if batch:
            return list(batch), False
        block = self._block()
        connection = self.direct.usable()
        if connection is None:
            moved = await self._step("blmove", self.key, self.taken, "RIGHT", "LEFT", block)
            return ([], False) if moved is None else ([moved], True)
        with trio.fail_after(_BLOCK + self.link.timeout):
            moved, expiry = await connection.request_each(
                [
                    ("BLMOVE", self.key, self.taken, "RIGHT", "LEFT", block),
                    ("PEXPIRE", self.taken, int(self.ttl * 1000)),
                ]
            )
        for reply in (moved, expiry):
            if isinstance(reply, Exception):
                raise reply
        self._pause = 0.0
        return ([], False) if moved is None else ([moved], False)

    def _block(self) -> float:
        """Seconds a blocking move may wait on the server: the client gives up on
        a reply after the timeout, and a connection after its read timeout
        (the inbox's own, or the client pool's ``stream_timeout``, Sentinel
        and Cluster included): the server answers first."""
        block = min(_BLOCK, self.link.timeout / 2)
        connection = self.direct.usable()
        if connection is not None and connection.settings.read_timeout:
            block = min(block, connection.settings.read_timeout / 2)
        pool = getattr(self.link.client, "connection_pool", None)
        kwargs = getattr(pool, "connection_kwargs", None)
        read_timeout = kwargs.get("stream_timeout") if isinstance(kwargs, dict) else None
        if isinstance(read_timeout, (int, float)) and read_timeout > 0:
            block = min(block, read_timeout / 2)
        return block

    async def _step(self, command: str, *args: Any) -> Any:
        with trio.fail_after(_BLOCK + self.link.timeout):
            connection = self.direct.usable()
            if connection is not None:
                answer = await connection.request(command.upper(), *args)
            else:
                answer = await getattr(self.link.client, command)(*args)
        self._pause = 0.0
        return answer

    @property
    def taken(self) -> str:
        return self.key.removesuffix(":inbox") + ":taken"

    def _dispatch(self, raw: Any, on_request: Callable[[dict[str, Any]], None]) -> None:
        try:
            if len(raw) > PAYLOAD_LIMIT + _ENVELOPE:
                raise ValueError("too large")  # never sent by a process: not even read
            message = json.loads(raw)
            kind, request_id = message["k"], message["id"]
            if not isinstance(request_id, str):
                raise TypeError("id")
        except (ValueError, KeyError, TypeError):
            self.log.log(logging.WARNING, "malformed inbox", "ignored a malformed inbox message")
            return
        if kind in ("q", "x"):  # a request, or its caller leaving
            on_request(message)
            return
        waiter = self.waiters.get(request_id)
        if waiter is not None:
            waiter.deliver(message)
