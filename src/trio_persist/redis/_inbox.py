"""Each process's inbox on Redis: requests routed to its workers, and replies to its callers.

One list per process, ``{namespace:n:<node>}:inbox``, whatever the number of
groups it owns: a caller pushes a request to the owner's inbox (refused while
the inbox holds `INBOX_LIMIT` messages: back-pressure, the caller waits for
room within the timeout), and the owner pushes the reply to the caller's inbox
(never refused: a process has as many replies coming as requests out). One
task per process pops its inbox in batches with ``BLMPOP`` on a connection of
its own and dispatches: requests to the placement (`Inbox.serve`), replies
to the callers waiting for them (`Inbox.expect`).

A caller that gives up, or whose owner lost the group, takes its request back
with ``LREM``: it is withdrawn if the owner had not popped it yet. The choice of
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

__all__ = ["INBOX_LIMIT", "PUSH", "Inbox", "Waiter", "inbox_key"]

INBOX_LIMIT = 1024
"""The most messages a process's inbox holds before callers wait for room."""

_BATCH = 64
_BLOCK = 1.0  # at most, seconds one BLMPOP waits on the server (half the link's timeout)

# KEYS: inbox. ARGV: limit ("0": none), message, ttl_ms. 1 if pushed, 0 if full.
# The inbox expires when nobody pops it for ttl (its process is gone).
PUSH = """
if ARGV[1] ~= '0' and redis.call('LLEN', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('LPUSH', KEYS[1], ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
return 1
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
    """This process's inbox: popping it, pushing to others', waiting for replies."""

    link: Link
    namespace: str
    node: str
    ttl: float
    """Seconds an inbox lives without a push (its process gone)."""
    log: Throttle
    waiters: dict[str, Waiter] = attrs.Factory(dict)

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
        (never popped: never started). Shielded, bounded by the timeout."""
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
        """Pop this inbox until cancelled: requests go to *on_request*, answers to
        their waiters. Redis away: tried again, every few hundred milliseconds."""
        task_status.started()
        pause = 0.05
        while True:
            try:
                with trio.fail_after(_BLOCK + self.link.timeout):
                    popped = await self.link.client.blmpop(
                        [self.key], _BLOCK, "RIGHT", count=_BATCH
                    )
            except Exception as exc:  # Redis away or restarting: look again soon
                logger.debug("popping the inbox failed: %r", exc)
                await trio.sleep(pause)
                pause = min(pause * 2, 0.5)
                continue
            pause = 0.05
            for raw in popped[1] if popped else ():
                self._dispatch(raw, on_request)

    def _dispatch(self, raw: Any, on_request: Callable[[dict[str, Any]], None]) -> None:
        try:
            message = json.loads(raw)
            kind, request_id = message["k"], message["id"]
            if not isinstance(request_id, str):
                raise TypeError("id")
        except (ValueError, KeyError, TypeError):
            self.log.log(logging.WARNING, "malformed inbox", "ignored a malformed inbox message")
            return
        if kind == "q":
            on_request(message)
            return
        waiter = self.waiters.get(request_id)
        if waiter is not None:
            waiter.deliver(message)
