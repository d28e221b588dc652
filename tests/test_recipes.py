"""The recipes run: a real quart-trio service under hypercorn, real HTTP clients, signals.

The service (docs/recipes/quart_service.py) runs in its own process, on the
real clock; every wait is bounded.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import trio

from trio_persist.stores import FileStore

ROOT = Path(__file__).resolve().parent.parent
SERVICE = ROOT / "docs" / "recipes" / "quart_service.py"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


class Service:
    """The recipe's service in a subprocess."""

    def __init__(self, tmp: Path) -> None:
        self.port = free_port()
        self.monitor = str(tmp / "shop.sock")
        self.states = tmp / "states"
        self.url = f"http://127.0.0.1:{self.port}"
        self.process: trio.Process | None = None

    async def start(self, nursery: trio.Nursery) -> None:
        args = [sys.executable, str(SERVICE), "--port", str(self.port)]
        args += ["--monitor", self.monitor, "--states", str(self.states)]
        self.process = await nursery.start(
            partial(trio.run_process, args, check=False, stdout=subprocess.DEVNULL)
        )
        async with httpx.AsyncClient() as client:
            with trio.fail_after(30):
                while True:
                    try:
                        await client.get(f"{self.url}/stats")
                        return
                    except httpx.TransportError:
                        await trio.sleep(0.05)

    async def stop(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        with trio.fail_after(30):
            return await self.process.wait()


async def test_a_burst_of_identical_requests_costs_one_backend_call(tmp_path: Path) -> None:
    service = Service(tmp_path)
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=20) as client:
        await service.start(nursery)
        bodies: list[Any] = []

        async def get() -> None:
            response = await client.get(f"{service.url}/price/book-42")
            assert response.status_code == 200
            bodies.append(response.json())

        with trio.fail_after(30):
            async with trio.open_nursery() as burst:
                for _ in range(50):
                    burst.start_soon(get)
        assert bodies == [{"sku": "book-42", "price": 9.99}] * 50
        stats = (await client.get(f"{service.url}/stats")).json()
        assert stats["executions"] == 1
        assert stats["deduplicated"] == 49
        assert await service.stop() == 0


async def test_a_per_call_timeout_answers_504_and_carts_survive_a_restart(
    tmp_path: Path,
) -> None:
    service = Service(tmp_path)
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=20) as client:
        await service.start(nursery)
        slow = await client.get(f"{service.url}/price/slow-1")
        assert slow.status_code == 504
        with trio.fail_after(30):
            async with trio.open_nursery() as burst:
                for _ in range(20):  # identical writes: twenty books, none lost
                    burst.start_soon(client.post, f"{service.url}/cart/ann/add/dune")
        monitor = await trio.run_process(
            [sys.executable, "-m", "trio_persist", "monitor", service.monitor, "--once"],
            capture_stdout=True,
        )
        assert "cart/ann" in monitor.stdout.decode()
        assert await service.stop() == 0  # SIGTERM: graceful, carts saved
        async with FileStore(service.states) as store:
            assert (await store.load("cart/ann"))["books"] == ["dune"] * 20

        await service.start(nursery)  # a restart: the cart is restored
        books = (await client.post(f"{service.url}/cart/ann/add/emma")).json()
        assert books == ["dune"] * 20 + ["emma"]
        assert await service.stop() == 0


async def test_a_shutdown_with_fifty_live_carts_leaves_every_cart_restorable(
    tmp_path: Path,
) -> None:
    service = Service(tmp_path)
    users = [f"user{n}" for n in range(50)]
    async with trio.open_nursery() as nursery, httpx.AsyncClient(timeout=20) as client:
        await service.start(nursery)

        async def shop(user: str) -> None:
            for book in ("dune", "emma", user):
                response = await client.post(f"{service.url}/cart/{user}/add/{book}")
                assert response.status_code == 200

        with trio.fail_after(60):
            async with trio.open_nursery() as shoppers:
                for user in users:
                    shoppers.start_soon(shop, user)
        stats = (await client.get(f"{service.url}/stats")).json()
        assert (stats["workers"], stats["activations"]) == (50, 50)  # all live at shutdown
        assert await service.stop() == 0
    async with FileStore(service.states) as store:
        for user in users:
            cart = await store.load(f"cart/{user}")
            assert cart == {"user": user, "books": ["dune", "emma", user]}


@pytest.mark.parametrize("path", [SERVICE], ids=lambda p: p.name)
def test_the_recipe_is_documented(path: Path) -> None:
    page = (ROOT / "docs" / "recipes.md").read_text()
    assert f"recipes/{path.name}" in page
