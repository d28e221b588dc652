"""How a persist names its device: shown by its name, told apart by its module."""

from __future__ import annotations

from typing import Any

import trio_persist


def _device_in(module: str) -> Any:
    """A device function named ``resolve``, as if defined in *module*."""

    async def resolve(base: Any, request: Any) -> Any:
        return (base, request)

    resolve.__module__ = module
    resolve.__qualname__ = "resolve"
    return resolve


async def test_two_devices_of_one_name_in_two_modules_have_two_qualified_names() -> None:
    shop, billing = _device_in("shop.pricing"), _device_in("billing.pricing")
    async with (
        trio_persist.open_persist(shop) as first,
        trio_persist.open_persist(billing) as second,
    ):
        assert first.name == second.name == "resolve"  # what the monitor shows
        assert first.qualified_name == "shop.pricing.resolve"
        assert second.qualified_name == "billing.pricing.resolve"


async def test_a_device_object_is_named_by_its_class_and_module() -> None:
    class Pricing:
        async def resolve(self, base: Any, request: Any) -> Any:
            return base

    async with trio_persist.open_persist(Pricing()) as persist:
        assert persist.qualified_name == f"{__name__}.{Pricing.__qualname__}"


async def test_the_default_redis_namespace_tells_two_modules_devices_apart(redis_url: str) -> None:
    from trio_persist.redis import RedisBackend

    backends = [RedisBackend(redis_url, lease_ttl=2), RedisBackend(redis_url, lease_ttl=2)]
    devices = [_device_in("shop.pricing"), _device_in("billing.pricing")]
    for backend, device in zip(backends, devices, strict=True):
        async with trio_persist.open_persist(device, backend=backend):
            pass
    assert [backend.namespace for backend in backends] == [
        "trio-persist:shop.pricing.resolve",
        "trio-persist:billing.pricing.resolve",
    ]
