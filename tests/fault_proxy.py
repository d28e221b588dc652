"""A small TCP proxy for fault injection: one process's traffic to Redis, stalled,
delayed or cut at will, in the test's own Trio run."""

from __future__ import annotations

import contextlib
import math
import socket
import ssl

import trio


class FaultProxy:
    """Forward 127.0.0.1:<port> to *target_port*; `stalled` holds every byte, `delay`
    adds latency to every chunk (each leaves `delay` after it arrived), `cut` drops
    every connection."""

    def __init__(self, target_port: int, tls: ssl.SSLContext | None = None) -> None:
        self.target_port = target_port
        self.tls = tls  # terminate TLS here (a TLS front for a plain server)
        self.delay = 0.0
        self.stalled = False
        self._resumed = trio.Event()
        self._open: set[trio.CancelScope] = set()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = int(probe.getsockname()[1])

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def stall(self) -> None:
        self.stalled = True
        self._resumed = trio.Event()

    def resume(self) -> None:
        self.stalled = False
        self._resumed.set()

    def cut(self) -> None:
        """Drop every open connection (new ones are accepted)."""
        for scope in self._open:
            scope.cancel()

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        listeners = await trio.open_tcp_listeners(self.port, host="127.0.0.1")
        async with trio.open_nursery() as nursery:
            task_status.started()
            await trio.serve_listeners(self._handle, listeners, handler_nursery=nursery)

    async def _handle(self, client: trio.abc.Stream) -> None:
        scope = trio.CancelScope()
        self._open.add(scope)
        with scope:
            try:
                server = await trio.open_tcp_stream("127.0.0.1", self.target_port)
            except OSError:
                await client.aclose()
                return
            if self.tls is not None:
                client = trio.SSLStream(client, self.tls, server_side=True)
            async with client, server, trio.open_nursery() as nursery:
                nursery.start_soon(self._pump, client, server, nursery.cancel_scope)
                nursery.start_soon(self._pump, server, client, nursery.cancel_scope)
        self._open.discard(scope)

    async def _pump(
        self, source: trio.abc.Stream, sink: trio.abc.Stream, both: trio.CancelScope
    ) -> None:
        # Latency, not bandwidth: each chunk leaves `delay` after it arrived,
        # however many are on their way (a reader and a writer, in order).
        send, receive = trio.open_memory_channel[tuple[float, bytes]](math.inf)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._forward, receive, sink, both)
            with contextlib.suppress(*_DROPPED):
                async with send:
                    async for chunk in source:
                        send.send_nowait((trio.current_time() + self.delay, chunk))
        both.cancel()  # one side closed: close the other

    async def _forward(
        self,
        receive: trio.MemoryReceiveChannel[tuple[float, bytes]],
        sink: trio.abc.Stream,
        both: trio.CancelScope,
    ) -> None:
        with contextlib.suppress(*_DROPPED):
            async with receive:
                async for due, chunk in receive:
                    while self.stalled:
                        await self._resumed.wait()
                    await trio.sleep_until(due)
                    await sink.send_all(chunk)
        both.cancel()


_DROPPED = (trio.BrokenResourceError, trio.ClosedResourceError, ssl.SSLError)
