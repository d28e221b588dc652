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
from ._link import Link

__all__ = ["INBOX_LIMIT", "PUSH", "TAKE", "Inbox", "Waiter", "inbox_key"]

INBOX_LIMIT = 1024
"""The most messages a process's inbox holds before callers wait for room."""

_BATCH = 64
_BLOCK = 1.0  # at most, seconds one blocking move waits on the server (half the timeout)

# KEYS: inbox. ARGV: ttl_ms, then a limit ("0": none) and a message for each message.
# A flag for each: 1 if pushed, 0 if the inbox was full (it holds `limit` messages).
# The inbox expires when nobody takes from it for ttl (its process is gone). A
# request (a limit) is pushed idempotently: tried again (a dropped connection),
# it finds itself there; a reply tried again is heard once by its waiter.
PUSH = """
local flags = {}
local length = redis.call('LLEN', KEYS[1])
for i = 2, #ARGV, 2 do
  local limit, message = tonumber(ARGV[i]), ARGV[i + 1]
  if limit ~= 0 and redis.call('LPOS', KEYS[1], message) then
    flags[#flags + 1] = 1
  elseif limit ~= 0 and length >= limit then
    flags[#flags + 1] = 0
  else
    redis.call('LPUSH', KEYS[1], message)
    length = length + 1
    flags[#flags + 1] = 1
  end
end
redis.call('PEXPIRE', KEYS[1], ARGV[1])
return flags
"""


# KEYS: inbox, taken. ARGV: batch. Drops the taken messages (dispatched) and moves
# up to a batch from the inbox to the taken list; returns them, oldest first.
TAKE = """
redis.call('DEL', KEYS[2])
local taken = {}
for _ = 1, tonumber(ARGV[1]) do
  local message = redis.call('LMOVE', KEYS[1], KEYS[2], 'RIGHT', 'LEFT')
  if not message then break end
  taken[#taken + 1] = message
end
return taken
"""


def inbox_key(namespace: str, node: str) -> str:
    """The inbox list of the process *node* on *namespace*."""
    return "{" + namespace + ":n:" + node + "}:inbox"


@attrs.define(eq=False)
class _Batch:
    """Messages for one inbox, pushed together: ``(limit, message)``, None once withdrawn."""

    messages: list[tuple[int, str] | None] = attrs.Factory(list)
    sent: bool = False
    done: trio.Event = attrs.Factory(trio.Event)
    flags: list[bool] = attrs.Factory(list)
    error: Exception | None = None


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
    # Per inbox pushed to: the messages gathered for its next push, and the
    # push on its way (set when it is done).
    _gathering: dict[str, _Batch] = attrs.Factory(dict)
    _sending: dict[str, trio.Event] = attrs.Factory(dict)

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
        """Push *message* to *node*'s inbox; False if it holds *limit* messages.

        One push per inbox is on its way at a time: messages for it that come
        meanwhile go together in the next one (one round trip for all of them,
        a lone message at once). A caller cancelled before its message left
        takes it out; once it has left, the push is finished for everyone in
        it (shielded, bounded by the timeout).
        """
        batch = self._gathering.get(node)
        if batch is None:
            batch = self._gathering[node] = _Batch()
        index = len(batch.messages)
        batch.messages.append((limit, message))
        while not batch.done.is_set():
            sending = self._sending.get(node)
            if sending is None:
                await self._send(node, batch)
                break
            try:
                await sending.wait()
            except BaseException:
                if not batch.sent:
                    batch.messages[index] = None  # never left: nobody gets it
                raise
        if batch.error is not None:
            raise batch.error
        return batch.flags[index]

    async def _send(self, node: str, batch: _Batch) -> None:
        """Send *batch* to *node*'s inbox (one script), whoever's messages it holds."""
        if self._gathering.get(node) is batch:
            del self._gathering[node]
        batch.sent = True
        self._sending[node] = sending = trio.Event()
        args: list[Any] = [int(self.ttl * 1000)]
        kept = [index for index, item in enumerate(batch.messages) if item is not None]
        for index in kept:
            args.extend(batch.messages[index] or ())
        batch.flags = [False] * len(batch.messages)
        try:
            if not kept:
                return  # every message in it was taken out
            with trio.CancelScope(shield=True):
                flags = await self.link.script("push", [inbox_key(self.namespace, node)], args)
            for index, flag in zip(kept, flags, strict=True):
                batch.flags[index] = bool(flag)
        except Exception as exc:
            batch.error = exc
        finally:
            del self._sending[node]
            sending.set()
            batch.done.set()

    async def withdraw(self, node: str, message: str) -> bool:
        """Take *message* back from *node*'s inbox; True if it was still there
        (never taken: never started). Shielded, bounded by the timeout."""
        key = inbox_key(self.namespace, node)
        with trio.CancelScope(shield=True):
            removed = await self.link.step(
                "withdrawing a request", self.link.client.lrem, key, 1, message
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
        """
        task_status.started()
        pause = 0.05
        clean = False  # whether everything in the taken list was dispatched
        while True:
            try:
                if not clean:
                    for raw in await self._step("lrange", self.taken, 0, -1):
                        self._dispatch(raw, on_request)
                clean = False
                batch = await self._take()
                for raw in batch:
                    self._dispatch(raw, on_request)
                clean = True
            except Exception as exc:  # Redis away or restarting: look again soon
                logger.debug("taking from the inbox failed: %r", exc)
                await trio.sleep(pause)
                pause = min(pause * 2, 0.5)
                continue
            pause = 0.05

    async def _take(self) -> list[Any]:
        """Drop what was dispatched and take up to a batch (one script); if the
        inbox is empty, wait for one message on the server (a blocking move)."""
        with trio.fail_after(self.link.timeout):
            batch = await self.link.run_script("take", [self.key, self.taken], [_BATCH])
        if batch:
            return list(batch)
        # The client gives up on a reply after the timeout: the server answers first.
        block = min(_BLOCK, self.link.timeout / 2)
        moved = await self._step("blmove", self.key, self.taken, "RIGHT", "LEFT", block)
        return [] if moved is None else [moved]

    async def _step(self, command: str, *args: Any, **kwargs: Any) -> Any:
        with trio.fail_after(_BLOCK + self.link.timeout):
            return await getattr(self.link.client, command)(*args, **kwargs)

    @property
    def taken(self) -> str:
        return self.key.removesuffix(":inbox") + ":taken"

    def _dispatch(self, raw: Any, on_request: Callable[[dict[str, Any]], None]) -> None:
        try:
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
