"""A quart-trio service on trio-persist: the recipe of docs/recipes.md, runnable.

* ``GET /price/<sku>``: an expensive lookup, deduplicated (a burst of identical
  requests costs one backend call), bounded by a per-call timeout.
* ``POST /cart/<user>/add/<book>``: each cart is a virtual worker
  (`Persist.ask`): activated from its saved state on first use, kept in
  memory while the user shops, saved in a `FileStore` (one file per cart)
  every few seconds, when idle, and on shutdown.
* ``GET /stats``: the persist's statistics, as JSON.
* the monitor socket, for ``trio-persist monitor PATH``.

Run it (``pip install trio-persist quart-trio hypercorn``)::

    python docs/recipes/quart_service.py --port 8000 --monitor /tmp/shop.sock --states carts/

Run one process per ``--states`` directory (no ``--workers`` of a process
manager): each process would keep its own copy of a cart, and their saves would
overwrite each other's (docs/virtual-workers.md, "One persist per store").

SIGINT or SIGTERM shuts it down gracefully: requests in flight finish, every
cart is saved, then the process exits 0.
"""

from __future__ import annotations

import argparse
import signal
from pathlib import Path
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from quart_trio import QuartTrio

import trio_persist
from trio_persist.stores import FileStore

PRICE_TIMEOUT = 1.0  # seconds a caller waits for a price before giving up


class Shop:
    """The device: prices from a slow backend, and carts."""

    def group(self, base: Any, request: Any) -> Any:
        return f"price/{request}"  # carts are addressed by ask(), by their own group

    async def resolve(self, base: Any, request: Any) -> Any:
        if base == "price":
            await trio.sleep(5 if request.startswith("slow") else 0.2)  # the backend call
            return {"sku": request, "price": 9.99}
        return {**base, "books": [*base["books"], request["book"]]}  # the cart's next state


def create_app(persist: trio_persist.Persist[Any, Any, Any]) -> QuartTrio:
    app = QuartTrio(__name__)

    @app.get("/price/<sku>")
    async def price(sku: str) -> Any:
        with trio.move_on_after(PRICE_TIMEOUT):
            return await persist.resolve("price", sku)
        # This caller gave up; the lookup goes on for any other caller waiting.
        return {"error": f"no price within {PRICE_TIMEOUT} s"}, 504

    @app.post("/cart/<user>/add/<book>")
    async def add(user: str, book: str) -> Any:
        # The cart's worker: live, activated from its file, or a new cart.
        cart = await persist.ask(
            f"cart/{user}", {"book": book}, default=lambda: {"user": user, "books": []}
        )
        return cart["books"]

    @app.get("/stats")
    async def stats() -> Any:
        return persist.statistics().to_json()

    return app


async def main(
    port: int,
    monitor: str,
    states: Path,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    async with (
        trio_persist.open_persist(
            Shop(),
            worker_timeout=60,  # a cart idle for a minute is saved and leaves memory
            max_workers=10_000,  # at most this many carts in memory
            store=FileStore(states),
            checkpoint_interval=5,  # a crash loses at most 5 s of a cart's changes
        ) as persist,
        trio.open_nursery() as nursery,
    ):
        await nursery.start(persist.serve_monitor, monitor)
        shutdown = trio.Event()

        async def on_signals() -> None:
            with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    shutdown.set()
                    return

        nursery.start_soon(on_signals)
        config = Config()
        config.bind = [f"127.0.0.1:{port}"]
        config.graceful_timeout = 5
        # Returns once a signal has come and the requests in flight have finished.
        await serve(
            create_app(persist), config, shutdown_trigger=shutdown.wait, task_status=task_status
        )
        # Then the monitor stops, and leaving the persist's block stops every
        # cart's worker: each is saved before the process exits.
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--monitor", default="/tmp/trio-persist-shop.sock")
    parser.add_argument("--states", type=Path, default=Path("shop-states"))
    args = parser.parse_args()
    trio.run(main, args.port, args.monitor, args.states)
    print("shut down; carts saved", flush=True)
