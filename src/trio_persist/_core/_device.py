"""Devices: what resolves a request against a base, and its optional hooks.

A device is either a plain ``async def resolve(base, request)`` or an object
with an ``async def resolve(self, base, request)`` method and any of these
hooks (the counterparts of upstream's device ``info`` map):

* ``group(base, request) -> Hashable``: the grouper; ``request`` is ``None``
  when a worker groups its state.
* ``async on_idle(group, state)``: a worker is stopping with a valid state;
  save it.
* ``async restore(group) -> state | None``: the counterpart of ``on_idle``;
  the saved state of a group whose worker stopped, or None.
* ``async serve(worker)``: a custom worker loop, given the `Worker` handle
  (see `Worker.receive`).
* ``answers(waiting, published) -> bool``: the custom await; may the result a
  worker published for request *published* answer a listener waiting on
  request *waiting*?
* ``label(base, request) -> str``: what an operator sees for a group in the
  monitor (``request`` is None for a worker's state); without it, a short safe
  rendering of the request (or the state, or a readable group name).
"""

from __future__ import annotations

import inspect
import types
from collections.abc import Awaitable, Callable, Hashable
from typing import Any, Protocol, TypeAlias, TypeVar, cast

import attrs

__all__ = ["Device", "DeviceHooks", "SupportsResolve", "adapt_device"]

ResolveFn = Callable[[Any, Any], Awaitable[Any]]

B = TypeVar("B")
R = TypeVar("R")
T = TypeVar("T")
B_contra = TypeVar("B_contra", contravariant=True)
R_contra = TypeVar("R_contra", contravariant=True)
T_co = TypeVar("T_co", covariant=True)


class SupportsResolve(Protocol[B_contra, R_contra, T_co]):
    """A device object: an async ``resolve(base, request)`` method (and optional hooks)."""

    def resolve(self, base: B_contra, request: R_contra, /) -> Awaitable[T_co]: ...


Device: TypeAlias = SupportsResolve[B, R, T] | Callable[[B, R], Awaitable[T]]
"""A device resolving requests of type ``R`` against bases of type ``B`` into ``T``."""


@attrs.frozen
class DeviceHooks:
    """The device as trio-persist calls it: ``resolve`` plus the hooks it has."""

    resolve: ResolveFn
    name: str
    module: str = ""
    group: Callable[[Any, Any], Hashable] | None = None
    on_idle: Callable[[Hashable, Any], Awaitable[object]] | None = None
    restore: Callable[[Hashable], Awaitable[Any]] | None = None
    serve: Callable[[Any], Awaitable[object]] | None = None
    answers: Callable[[Any, Any], bool] | None = None
    label: Callable[[Any, Any], str] | None = None


def _check_async(fn: object, what: str, arity: int | None = None) -> None:
    if not callable(fn):
        raise TypeError(f"{what} must be callable, got {type(fn).__name__}")
    plain = isinstance(fn, (types.FunctionType, types.MethodType))
    if plain and not inspect.iscoroutinefunction(fn):
        raise TypeError(f"{what} must be an async function (async def), got a plain function")
    if arity is not None:
        _check_arity(fn, what, arity)


def _check_arity(fn: object, what: str, arity: int) -> None:
    """Refuse a callable that cannot take *arity* positional arguments."""
    try:
        signature = inspect.signature(fn)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return  # a builtin or C callable without a signature: trust it
    try:
        signature.bind(*range(arity))
    except TypeError:
        names = "(base, request)" if arity == 2 else f"{arity} arguments"
        raise TypeError(f"{what} must accept {names}, but its signature is {signature}") from None


def _check_sync(fn: object, what: str) -> None:
    if not callable(fn):
        raise TypeError(f"{what} must be callable, got {type(fn).__name__}")
    if inspect.iscoroutinefunction(fn):
        raise TypeError(f"{what} must be a plain function, not async def")


def adapt_device(device: object) -> DeviceHooks:
    """Check *device* and return its `DeviceHooks`.

    Raises:
        TypeError: *device* is neither an async function nor an object with an
            async ``resolve`` method, or one of its hooks has the wrong kind.
    """
    resolve = getattr(device, "resolve", None)
    if resolve is None:
        if not callable(device):
            raise TypeError(
                "device must be an async function resolve(base, request) or an object "
                f"with an async resolve(base, request) method, got {type(device).__name__}"
            )
        _check_async(device, "device", 2)
        name = getattr(device, "__qualname__", type(device).__name__)
        module = getattr(device, "__module__", None) or type(device).__module__
        return DeviceHooks(resolve=cast("ResolveFn", device), name=name, module=str(module))
    _check_async(resolve, "device.resolve", 2)
    hooks: dict[str, Any] = {}
    for hook in ("on_idle", "restore", "serve"):
        fn = getattr(device, hook, None)
        if fn is not None:
            _check_async(fn, f"device.{hook}")
            hooks[hook] = fn
    for hook in ("group", "answers", "label"):
        fn = getattr(device, hook, None)
        if fn is not None:
            _check_sync(fn, f"device.{hook}")
            hooks[hook] = fn
    kind = type(device)
    return DeviceHooks(resolve=resolve, name=kind.__qualname__, module=kind.__module__, **hooks)
