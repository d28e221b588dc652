"""A quart-trio service on trio-persist: the recipe of docs/recipes.md, runnable.

* ``GET /price/<sku>``: an expensive lookup, deduplicated (a burst of identical
  requests costs one backend call), bounded by a per-call timeout.
* ``POST /cart/<user>/add/<book>``: a per-user session worker keeps the cart in
  memory, restores it after a restart and saves it when idle or on shutdown.
* ``GET /stats``: the persist's statistics, as JSON.
* the monitor socket, for ``trio-persist monitor PATH``.

Run it (``pip install trio-persist quart-trio hypercorn``)::

    python docs/recipes/quart_service.py --port 8000 --monitor /tmp/shop.sock --saved carts.json

SIGINT or SIGTERM shuts it down gracefully: requests in flight finish, every
worker saves its cart, then the process exits 0.
"""

from __future__ import annotations

import argparse
import json
import signal
from pathlib import Path
from typing import Any

import trio
from hypercorn.config import Config
from hypercorn.trio import serve
from quart_trio import QuartTrio

import trio_persist

PRICE_TIMEOUT = 1.0  # seconds a caller waits for a price before giving up


class Shop:
    """The device: prices from a slow backend; carts as session workers."""

    def __init__(self, saved: Path) -> None:
        self.saved = saved
        self.carts: dict[str, Any] = json.loads(saved.read_text()) if saved.exists() else {}

    def group(self, base: Any, request: Any) -> Any:
        if request is None:  # a cart worker naming its state (a new cart)
            return f"cart/{base['user']}"
        if base == "cart":
            return f"cart/{request['user']}"
        return f"price/{request}"

    async def resolve(self, base: Any, request: Any) -> Any:
        if base == "price":
            await trio.sleep(5 if request.startswith("slow") else 0.2)  # the backend call
            return {"sku": request, "price": 9.99}
        return {**base, "books": [*base["books"], request["book"]]}  # the new cart

    async def restore(self, group: Any) -> Any:
        return self.carts.get(group)

    async def on_idle(self, group: Any, cart: Any) -> None:
        self.carts[group] = cart
        await trio.Path(self.saved).write_text(json.dumps(self.carts))


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
        fresh = {"user": user, "books": []}
        await persist.get_worker(f"cart/{user}", default=lambda: fresh)  # live, restored, new
        cart = await persist.resolve("cart", {"user": user, "book": book})
        return cart["books"]

    @app.get("/stats")
    async def stats() -> Any:
        return persist.statistics().to_json()

    return app


async def main(
    port: int,
    monitor: str,
    saved: Path,
    *,
    task_status: trio.TaskStatus[list[str]] = trio.TASK_STATUS_IGNORED,
) -> None:
    shop = Shop(saved)
    async with (
        trio_persist.open_persist(shop, worker_timeout=60) as persist,
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
        # worker: each saves its cart (on_idle) before the process exits.
        nursery.cancel_scope.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--monitor", default="/tmp/trio-persist-shop.sock")
    parser.add_argument("--saved", type=Path, default=Path("carts.json"))
    args = parser.parse_args()
    trio.run(main, args.port, args.monitor, args.saved)
    print("shut down; carts saved", flush=True)
