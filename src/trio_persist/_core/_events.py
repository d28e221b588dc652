"""The event stream: what happens to flights and workers, for whoever listens.

Emitting never blocks and never fails: each subscriber has a bounded buffer,
and an event that does not fit is dropped for that subscriber and counted in
its `EventSubscription.dropped`. A slow subscriber therefore costs a flight or
a worker one length test per event. Subscriptions are held weakly, so one that
is dropped without being closed costs nothing either. With no subscribers,
emitting is one truth test.
"""

from __future__ import annotations

import weakref
from collections import deque
from collections.abc import Hashable
from types import TracebackType
from typing import Any, final

import attrs
import trio

from .._stats import group_label

__all__ = ["EventHub", "EventSubscription", "PersistEvent"]


@attrs.frozen
class PersistEvent:
    """One thing that happened in a persist."""

    kind: str
    """What happened: one of ``flight.started``, ``flight.joined``,
    ``flight.finished``, ``flight.failed``, ``flight.cancelled``,
    ``worker.started``, ``worker.served``, ``worker.failed``,
    ``worker.cancelled``, ``worker.timed_out``, ``worker.evicted``,
    ``worker.crashed``, ``worker.stopped``, ``worker.activating``,
    ``worker.activated``, ``worker.activation_failed``, ``worker.saved``,
    ``worker.save_failed``, ``hook.failed``."""
    group: Hashable | None
    """The group concerned (None for an ungrouped execution)."""
    time: float
    """`trio.current_time` when it happened."""
    detail: str = ""
    """Extra words: an error's type and message, a stop reason."""

    def to_json(self) -> dict[str, Any]:
        """The event as a JSON-ready dict, the group as text."""
        return {
            "kind": self.kind,
            "group": group_label(self.group),
            "time": self.time,
            "detail": self.detail,
        }


@final
@attrs.define(eq=False, repr=False, weakref_slot=True)
class EventSubscription:
    """A subscriber's end of the event stream. Use it as ``with`` and iterate it.

    Iterating waits for the next event; it ends when the subscription is
    closed (by leaving the ``with`` block, or when the persist closes; events
    already buffered are still delivered then). The persist holds a
    subscription only weakly: one that nobody references any more is gone,
    and costs nothing, even if it was never closed.
    """

    _max_buffer: int = attrs.field(alias="max_buffer")
    _buffer: deque[PersistEvent] = attrs.field(factory=deque, init=False)
    _lot: trio.lowlevel.ParkingLot = attrs.field(factory=trio.lowlevel.ParkingLot, init=False)
    _ended: bool = attrs.field(default=False, init=False)
    _hub: EventHub | None = attrs.field(default=None, init=False)
    dropped: int = attrs.field(default=0, init=False)
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
        """Stop receiving events and drop those buffered. Idempotent."""
        if self._hub is not None:
            self._hub.drop(self)
            self._hub = None
        self._buffer.clear()
        self._end()

    def __aiter__(self) -> EventSubscription:
        return self

    async def __anext__(self) -> PersistEvent:
        try:
            return await self.receive()
        except trio.EndOfChannel:
            raise StopAsyncIteration from None

    async def receive(self) -> PersistEvent:
        """Wait for the next event. Always a checkpoint.

        Raises:
            trio.EndOfChannel: the subscription was closed (by the persist
                closing, once every buffered event was received, or by `close`).
        """
        while True:
            if self._buffer:
                await trio.lowlevel.checkpoint()
                if self._buffer:
                    return self._buffer.popleft()
            elif self._ended:
                await trio.lowlevel.checkpoint()
                raise trio.EndOfChannel
            else:
                await self._lot.park()

    def receive_nowait(self) -> PersistEvent:
        """Return the next buffered event.

        Raises:
            trio.WouldBlock: nothing is buffered now.
            trio.EndOfChannel: nothing is buffered and the subscription is closed.
        """
        if self._buffer:
            return self._buffer.popleft()
        if self._ended:
            raise trio.EndOfChannel
        raise trio.WouldBlock

    def _offer(self, event: PersistEvent) -> None:
        # O(1) whatever the subscriber does: no channel, no exception raised.
        if len(self._buffer) >= self._max_buffer:
            self.dropped += 1
            return
        self._buffer.append(event)
        if self._lot:
            self._lot.unpark()

    def _end(self) -> None:
        self._ended = True
        self._lot.unpark_all()


@attrs.define(eq=False)
class EventHub:
    """Fans events out to subscribers, held weakly. Internal to a persist."""

    # The subscriptions, held weakly, by id: empty when nobody listens (a hot
    # path checks it before building an event's arguments).
    listening: dict[int, weakref.ref[EventSubscription]] = attrs.field(factory=dict)
    _closed: bool = False

    @property
    def subscribers(self) -> int:
        """Subscriptions alive now."""
        return len(self.listening)

    def subscribe(self, max_buffer: int) -> EventSubscription:
        if isinstance(max_buffer, bool) or not isinstance(max_buffer, int):
            raise TypeError(f"max_buffer must be an int, got {type(max_buffer).__name__}")
        if max_buffer < 1:
            raise ValueError(f"max_buffer must be >= 1, got {max_buffer}")
        subscription = EventSubscription(max_buffer=max_buffer)
        if self._closed:
            subscription._end()
            return subscription
        key = id(subscription)
        refs = self.listening

        def forget(_: object) -> None:  # the subscription was collected
            refs.pop(key, None)

        refs[key] = weakref.ref(subscription, forget)
        subscription._hub = self
        return subscription

    def emit(self, kind: str, group: Hashable | None, detail: str = "") -> None:
        if not self.listening:
            return
        event = PersistEvent(kind, group, trio.current_time(), detail)
        for ref in tuple(self.listening.values()):
            subscription = ref()
            if subscription is not None:
                subscription._offer(event)

    def drop(self, subscription: EventSubscription) -> None:
        self.listening.pop(id(subscription), None)

    def close(self) -> None:
        self._closed = True
        for ref in tuple(self.listening.values()):
            subscription = ref()
            if subscription is not None:
                subscription._end()
        self.listening.clear()
