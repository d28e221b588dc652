"""A connection of the backend's own, for the scripts its flights run.

coredis's client takes a connection out of its pool for every command, under a
deadline and a lock of its own: on loopback that is about half of what a
command costs (a `GET` through the client, ~170 us of CPU here; the same
request on a connection, ~95 us). A flight's scripts go instead on one
connection the backend keeps open itself, made as the pool makes its own (from
the pool's connection class and settings: TLS, credentials, database,
timeouts), on which coredis multiplexes requests exactly as on a pooled one.

Only for a plain ``coredis.Redis`` client with a basic pool: Cluster and
Sentinel clients choose a node per command, and a client-side cache must see
every write. While the connection is down (being made, or Redis away), scripts
go through the client as before, and it is made again in the background.
"""

from __future__ import annotations

from typing import Any

import attrs
import trio

from .._logging import logger

__all__ = ["Direct"]


@attrs.define(eq=False)
class _Started:
    """What ``connection.run`` reports to once its handshake is done."""

    direct: Direct
    connection: Any

    def started(self, value: object = None) -> None:
        self.direct.connection = self.connection
        self.direct.made += 1


@attrs.define(eq=False)
class Direct:
    """The connection while it is up (None otherwise); `keep` keeps it up."""

    connection: Any = None
    made: int = 0
    """Connections opened so far (the first, then one after each drop)."""

    def usable(self) -> Any:
        """The connection, if it can take a request now; else None."""
        connection = self.connection
        if connection is not None and connection.usable:
            return connection
        return None

    async def keep(self, client: Any) -> None:
        """Keep a connection to *client*'s server open until cancelled; remade
        after a drop (at once, then backing off to once a second while it fails).

        Returns at once for a client this does not apply to.
        """
        pool = _plain_pool(client)
        if pool is None:
            return
        pause = 0.0
        while True:
            connection = pool.connection_class(pool.location, **pool.connection_kwargs)
            try:
                await connection.run(task_status=_Started(self, connection))
            except Exception as exc:  # refused, unreachable: the client path says why
                logger.debug("the backend's own Redis connection failed: %r", exc)
            finally:
                if self.connection is connection:  # it was up: remake it at once
                    self.connection = None
                    pause = 0.0
            await trio.sleep(pause)
            pause = min(max(2 * pause, 0.05), 1.0)


def _plain_pool(client: Any) -> Any:
    """The basic pool of a plain ``coredis.Redis`` client without a cache, or None."""
    import coredis

    pool = getattr(client, "connection_pool", None)
    if type(client) is not coredis.Redis or type(pool) is not coredis.ConnectionPool:
        return None
    if getattr(pool, "cache", None) is not None:
        return None
    return pool
