"""Wrapped functions: how `Persist` registers a function it deduplicates, and calls it.

`Wrapping` is a base class of `Persist` (no state of its own: it uses the
persist's), between the facade and `Routing`: a wrapped call is named here
(`WrappedFunction` names it by its function and arguments) and routed as any
other call. `register_function` is what ``@deduplicated`` registers with.
"""

from __future__ import annotations

import types
import weakref
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from .._exceptions import PersistClosed
from ._job import running
from ._routing import Detour, Routing
from ._wrapped import WrappedFunction, function_name

__all__ = ["CallWrapped", "Wrapping", "register_function"]


def _same_function(
    known: WrappedFunction,
    fn: Callable[..., Awaitable[Any]],
    linger: float,
    instance_key: Callable[[Any], Any] | None,
) -> bool:
    """Whether *fn*, wrapped with these options, is what *known* registered (a
    bound method is made anew at each access: the same one is equal)."""
    same = known.fn is fn or (isinstance(fn, types.MethodType) and known.fn == fn)
    return same and known.linger == linger and known.instance_key is instance_key


class Wrapping(Routing):
    """The wrapped functions' half of `Persist`: their registrations and calls."""

    __slots__ = ()

    # Functions wrapped by this persist, by name (`Persist` declares and sets it).
    _wrapped: weakref.WeakValueDictionary[str, WrappedFunction]

    def _register(
        self,
        fn: Callable[..., Awaitable[Any]],
        name: str | None,
        linger: float,
        instance_key: Callable[[Any], Any] | None = None,
    ) -> WrappedFunction:
        """The registration of *fn* under *name* (by default its module and
        qualified name): the one in use, or a new one."""
        label = function_name(fn, name)
        known = self._wrapped.get(label)
        if known is None:
            known = self._wrapped[label] = WrappedFunction(label, fn, linger, instance_key)
        elif not _same_function(known, fn, linger, instance_key):
            raise ValueError(
                f"another function is already wrapped as {label!r} by this persist; "
                "pass name= to tell them apart"
            )
        return known

    async def _call_wrapped(
        self, fn: WrappedFunction, args: Any, kwargs: Any, share: bool, method: bool
    ) -> Any:
        """A call of a wrapped function (*method*: ``args[0]`` is its instance)."""
        core = self._core
        if core.closed:
            raise PersistClosed("this persist is closed: wrapped calls need its block")
        group, key = fn.name_method_call(args, kwargs) if method else fn.name_call(args, kwargs)
        core.counters.requests += 1
        fn.requests += 1
        current = running.get()
        routing = (group, None, args, kwargs, key, share, False, fn)
        route = self._route(current, *routing)
        if not isinstance(route, Detour):
            return await self._listen(route[0], route[1], current, route[2])
        return await self._detour(route, current, *routing)


CallWrapped = Callable[
    [WrappedFunction, tuple[Any, ...], dict[str, Any], bool, bool], Coroutine[Any, Any, Any]
]
"""``(function, args, kwargs, share, method)``: a call of a registered function
(*method*: ``args[0]`` is its instance, grouped as `WrappedFunction.name_method_call`
says)."""


def register_function(
    persist: Wrapping,
    fn: Callable[..., Awaitable[Any]],
    name: str | None,
    linger: float,
    instance_key: Callable[[Any], Any] | None,
) -> tuple[WrappedFunction, CallWrapped]:
    """For ``@deduplicated``: *fn* registered with *persist* (as `Persist.wrap`
    registers it, with its own *linger*), and what calls it.

    Raises:
        ValueError: another function is registered under the name now.
    """
    return persist._register(fn, name, linger, instance_key), persist._call_wrapped
