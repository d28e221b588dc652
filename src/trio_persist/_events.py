"""The event stream: what happens to flights and workers, for whoever listens.

Emitting never blocks and never fails: each subscriber has a bounded memory
channel, and an event that does not fit is dropped for that subscriber and
counted in its `EventSubscription.dropped`. A slow subscriber therefore costs
a flight or a worker nothing but a failed ``send_nowait``. With no
subscribers, emitting is one truth test.
"""

from __future__ import annotations

from collections.abc import Hashable
from types import TracebackType
from typing import Any, final

import attrs
import trio

from ._stats import group_label

__all__ = ["EventHub", "EventSubscription", "PersistEvent"]


@attrs.frozen
class PersistEvent:
    """One thing that happened in a persist."""

    kind: str
    """What happened: one of ``flight.started``, ``flight.joined``,
    ``flight.finished``, ``flight.failed``, ``flight.cancelled``,
    ``worker.started``, ``worker.served``, ``worker.failed``,
    ``worker.cancelled``, ``worker.timed_out``, ``worker.evicted``,
    ``worker.crashed``, ``worker.stopped``."""
    group: Hashable | None
    """The group concerned (None for an ungrouped execution)."""
    time: float
    """`trio.current_time` when it happened."""
    detail: str = ""
    """Extra words: an error's type and message, a stop reason."""

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "group": group_label(self.group),
            "time": self.time,
            "detail": self.detail,
        }


@final
@attrs.define(eq=False, repr=False)
class EventSubscription:
    """A subscriber's end of the event stream. Use it as ``with`` and iterate it.

    Iterating waits for the next event; it ends when the subscription is
    closed (by leaving the ``with`` block, or when the persist closes).
    """

    _hub: EventHub = attrs.field(alias="hub")
    _send: trio.MemorySendChannel[PersistEvent] = attrs.field(alias="send")
    _receive: trio.MemoryReceiveChannel[PersistEvent] = attrs.field(alias="receive")
    dropped: int = 0
    """Events lost because this subscriber's buffer was full."""

    def __enter__(self) -> EventSubscription:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop receiving events. Idempotent."""
        self._hub._drop(self)
        self._send.close()
        self._receive.close()

    def __aiter__(self) -> EventSubscription:
        return self

    async def __anext__(self) -> PersistEvent:
        try:
            return await self._receive.receive()
        except (trio.EndOfChannel, trio.ClosedResourceError):
            raise StopAsyncIteration from None

    async def receive(self) -> PersistEvent:
        """Wait for the next event.

        Raises:
            trio.EndOfChannel: the subscription was closed by the persist.
        """
        return await self._receive.receive()

    def receive_nowait(self) -> PersistEvent:
        """Return the next buffered event, or raise `trio.WouldBlock`."""
        return self._receive.receive_nowait()

    def _offer(self, event: PersistEvent) -> None:
        try:
            self._send.send_nowait(event)
        except trio.WouldBlock:
            self.dropped += 1
        except trio.BrokenResourceError:
            self._hub._drop(self)


@attrs.define(eq=False)
class EventHub:
    """Fans events out to subscribers. Internal to a persist."""

    subscribers: list[EventSubscription] = attrs.field(factory=list)

    def subscribe(self, max_buffer: int) -> EventSubscription:
        if isinstance(max_buffer, bool) or not isinstance(max_buffer, int):
            raise TypeError(f"max_buffer must be an int, got {type(max_buffer).__name__}")
        if max_buffer < 1:
            raise ValueError(f"max_buffer must be >= 1, got {max_buffer}")
        send, receive = trio.open_memory_channel[PersistEvent](max_buffer)
        subscription = EventSubscription(hub=self, send=send, receive=receive)
        self.subscribers.append(subscription)
        return subscription

    def emit(self, kind: str, group: Hashable | None, detail: str = "") -> None:
        if not self.subscribers:
            return
        event = PersistEvent(kind, group, trio.current_time(), detail)
        for subscription in tuple(self.subscribers):
            subscription._offer(event)

    def close(self) -> None:
        for subscription in tuple(self.subscribers):
            subscription._send.close()
        self.subscribers.clear()

    def _drop(self, subscription: EventSubscription) -> None:
        if subscription in self.subscribers:
            self.subscribers.remove(subscription)
