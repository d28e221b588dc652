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
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias, TypeVar, cast

import attrs

__all__ = ["NO_DEVICE", "Device", "DeviceHooks", "DeviceLike", "adapt_device"]

ResolveFn = Callable[[Any, Any], Awaitable[Any]]

B = TypeVar("B")
R = TypeVar("R")
T = TypeVar("T")
B_contra = TypeVar("B_contra", contravariant=True)
R_contra = TypeVar("R_contra", contravariant=True)
T_co = TypeVar("T_co", covariant=True)


class Device(Protocol[B_contra, R_contra, T_co]):
    """What a device is: an async `resolve`, and any of the optional hooks below.

    A device is any object with an async ``resolve(base, request)`` method
    (or a plain ``async def resolve(base, request)`` function, which has no
    hooks). It need not subclass this class: type checkers match it by its
    ``resolve`` alone, and trio-persist calls only the hooks the object has.
    Subclassing it is a way to have the hooks' signatures and documentation
    at hand; a hook the subclass does not override is not called.

    Hooks are called on the persist's Trio thread. Each says what happens
    when it raises; ``label``, ``restore``, ``on_idle`` and ``answers`` are
    then also counted in ``statistics().hook_failures`` and logged to the
    ``trio_persist`` logger.
    """

    def resolve(self, base: B_contra, request: R_contra, /) -> Awaitable[T_co]:
        """Resolve *request* against *base*: the work that is deduplicated.

        An async method. Runs in a task of the persist, not the caller's: it
        belongs to no caller, and is cancelled when the last caller waiting
        for it leaves. Its result goes to every caller waiting for it (the
        same object), an `Exception` it raises to each of them. For a worker,
        *base* is the worker's state and the result its next state (unless
        the worker is static).
        """
        ...

    if not TYPE_CHECKING:  # optional: not part of the protocol a type checker matches

        def group(self, base: Any, request: Any) -> Hashable:
            """The group of ``resolve(base, request)``: requests of one group share
            one execution at a time, and one worker.

            Called on every `Persist.resolve`, so it must be quick. *request* is
            None when a worker's state is grouped. Without it, a group is the
            digest of the canonical encoding of ``(base, request)``
            (`default_group`). Raising fails that call only.
            """

        def label(self, base: Any, request: Any) -> str:
            """What an operator sees for a group (the monitor, a `GroupSnapshot`'s ``label``).

            *request* is None for a worker's state. Unlike the default label (a
            short rendering of the request), this text may leave the process:
            Redis heartbeats, the cluster view and OpenTelemetry spans show it,
            so return only what anyone who can read those may see. Cut to 80
            characters and shown literally. If it raises, the default is used.
            """

        async def restore(self, group: Hashable) -> Any:
            """The saved state of *group*, or None: the counterpart of `on_idle`.

            Called when a request arrives for a group whose worker stopped, and
            by `Persist.get_worker`, to start a worker from that state (None: a
            plain execution, or ``default()``). If it raises, the call goes on
            as if nothing was saved.
            """

        async def on_idle(self, group: Hashable, state: Any) -> None:
            """Save *state*: the worker of *group* is stopping (idle timeout,
            eviction, `Worker.stop`, ``error_strategy="throw"``, or the persist
            closing), with a valid state.

            Bounded by ``shutdown_grace`` seconds; the group is freed after it,
            and requests still queued are routed on. Not called after a crash.
            """

        async def serve(self, worker: Worker) -> None:  # noqa: F821 (trio_persist.Worker, above)
            """A custom worker loop, in place of the default one.

            Takes requests with `Worker.receive` (None: stop now) or
            `Worker.receive_nowait`, and answers each exactly once, with
            `Worker.execute` or `WorkerRequest.reply` / `WorkerRequest.fail`.
            When it returns the worker stops (`on_idle` runs); a request it
            leaves unanswered is routed on, never lost. If it raises, the worker
            has crashed: no `on_idle`, its group is freed, its requests routed on.
            """

        def answers(self, waiting: Any, published: Any) -> bool:
            """The custom await: may the result of the request *published*, just
            served by a worker, answer a queued request *waiting* too?

            Each queued request for which it is true gets that result without an
            execution of its own. If it raises, the request is served by its own
            execution.
            """


DeviceLike: TypeAlias = Device[B, R, T] | Callable[[B, R], Awaitable[T]]
"""What `open_persist` takes: a `Device` object, or a plain resolve function."""


def _overrides(device: object, hook: str) -> bool:
    """Whether *device* has *hook* of its own (not `Device`'s documentation stub)."""
    return getattr(type(device), hook, None) is not getattr(Device, hook, None)


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


async def _no_device(base: Any, request: Any) -> Any:
    raise TypeError("this persist has no device")  # pragma: no cover - refused before


NO_DEVICE = DeviceHooks(resolve=_no_device, name="functions", module="trio_persist")
"""The hooks of a persist opened without a device (``open_persist()``): it runs
wrapped functions only, and is named ``functions``."""


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
        if fn is not None and _overrides(device, hook):
            _check_async(fn, f"device.{hook}")
            hooks[hook] = fn
    for hook in ("group", "answers", "label"):
        fn = getattr(device, hook, None)
        if fn is not None and _overrides(device, hook):
            _check_sync(fn, f"device.{hook}")
            hooks[hook] = fn
    kind = type(device)
    return DeviceHooks(resolve=resolve, name=kind.__qualname__, module=kind.__module__, **hooks)
