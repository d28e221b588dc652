"""One subscription per backend, and what each following flight hears through it.

Every followed key is served by *one* subscriber connection per backend, a
pattern subscription to all of the namespace's channels: following a key costs
no subscribe or unsubscribe round trip, and publications are dispatched in
process to the flights that wait for them (`Subscriber.watch`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import attrs
import trio

from .._logging import logger
from ._client import exception_leaves
from ._direct import Pings, listen, settings_of
from ._scripts import key_of_channel, pattern_of

if TYPE_CHECKING:
    from ._connection import Settings

__all__ = ["Subscriber", "Watch"]


@attrs.define(eq=False)
class Watch:
    """What one following flight hears about its key: payloads, and pokes to look again."""

    key: str
    inbox: list[bytes] = attrs.Factory(list)
    poked: bool = False
    _event: trio.Event = attrs.Factory(trio.Event)

    def deliver(self, data: bytes) -> None:
        self.inbox.append(data)
        self._event.set()

    def poke(self) -> None:
        """Ask the follower to check the key now (a reconnect may have lost messages)."""
        self.poked = True
        self._event.set()

    async def wait(self, seconds: float) -> None:
        """Wait until something arrives or *seconds* pass; checkpoints."""
        if not self.inbox and not self.poked:
            with trio.move_on_after(seconds):
                await self._event.wait()
        else:
            await trio.lowlevel.checkpoint()
        self._event = trio.Event()
        self.poked = False


@attrs.define(eq=False)
class Subscriber:
    """One pattern subscription per backend, dispatching publications to `Watch` es."""

    namespace: str
    timeout: float
    watches: dict[str, set[Watch]] = attrs.Factory(dict)
    up: bool = False
    pings: Pings = attrs.Factory(Pings)
    _pause: float = 0.05

    async def caught_up(self) -> None:
        """Return once the subscription has read (and handed on) everything the
        server published to it before this call: what a follower waits for
        before it concludes from a look that its leader vanished, since the
        leader's outcome may have been sent first, and be still unread.

        Costs a round trip on the subscription's connection (at most the
        timeout); returns at once on a client whose subscription is coredis's
        (a Cluster, a Sentinel), or while none is up.
        """
        await self.pings.catch_up(self.timeout)

    @contextlib.contextmanager
    def watch(self, key: str) -> Iterator[Watch]:
        """Hear about *key* inside the block (registered before anything is sent)."""
        watch = Watch(key)
        watchers = self.watches.setdefault(key, set())
        watchers.add(watch)
        try:
            yield watch
        finally:
            watchers.discard(watch)
            if not watchers:
                del self.watches[key]

    def _on_message(self, message: Any) -> None:
        self._dispatch(message.get("channel"), message.get("data"))

    def _dispatch(self, channel: Any, data: Any) -> bool:
        # Runs inside the subscription's reader: must never raise. The pattern only
        # matches this namespace's channels, so every message names a key; what
        # it carries is checked by the follower that reads it (and counted there).
        # Returns whether a follower here waits for it (it was woken).
        key = key_of_channel(self.namespace, channel)
        if isinstance(data, str):
            data = data.encode()
        watches = self.watches.get(key, ()) if key is not None else ()
        if watches and isinstance(data, bytes):
            for watch in watches:
                watch.deliver(data)
            return True
        return False

    def _poke_all(self) -> None:
        for watchers in self.watches.values():
            for watch in watchers:
                watch.poke()

    def _now_up(self, connecting: trio.CancelScope) -> None:
        connecting.deadline = float("inf")
        self.up = True
        self._pause = 0.05
        self._poke_all()  # what was published while we were away

    async def _hold(
        self, client: Any, settings: Settings | None, pattern: str, up: Callable[[], None]
    ) -> None:
        """Subscribe, call *up* once subscribed, then dispatch publications until
        the connection drops (raises) or this is cancelled."""
        if settings is not None:
            idle = max(self.timeout, 1.0)
            await listen(settings, pattern, self._dispatch, idle, self.timeout, up, self.pings)
            return  # pragma: no cover - listen returns only by raising
        async with client.pubsub(
            pattern_handlers={pattern: self._on_message},
            ignore_subscribe_messages=True,
            retry_policy=None,
            subscription_timeout=self.timeout,
            max_idle_seconds=max(self.timeout, 1.0),
        ):
            up()
            await trio.sleep_forever()

    async def run(
        self, client: Any, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
    ) -> None:
        """Keep the subscription up, reconnecting, until cancelled.

        Reports started once subscribed, or after ``timeout`` if Redis is away
        (followers then poll until it is back). On a plain client, the
        subscription is a lean connection of the backend's own (`listen`),
        made from the client's settings as `Direct` makes its own.
        """
        pattern = pattern_of(self.namespace)
        settings = settings_of(client)
        started = False
        self._pause = 0.05
        while True:
            failure: BaseException | None = None
            try:
                with trio.fail_after(self.timeout) as connecting:

                    def up(connecting: trio.CancelScope = connecting) -> None:
                        nonlocal started
                        self._now_up(connecting)
                        if not started:
                            started = True
                            task_status.started()

                    await self._hold(client, settings, pattern, up)
            except BaseException as exc:
                # A dropped connection, or coredis tearing down under cancellation
                # (then the checkpoint below raises our own Cancelled).
                # Whatever the client raises is a drop: only an exit of the
                # program (KeyboardInterrupt, SystemExit) goes through.
                allowed = (trio.Cancelled, Exception)
                if not all(isinstance(leaf, allowed) for leaf in exception_leaves(exc)):
                    raise
                failure = exc
            self.up = False
            self._poke_all()
            logger.debug("the Redis subscription dropped: %r", failure)
            if not started:
                started = True
                task_status.started()
            await trio.sleep(self._pause)
            self._pause = min(self._pause * 2, 1.0)
