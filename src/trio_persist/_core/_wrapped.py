"""Wrapped functions: what `Persist.wrap` and ``@deduplicated`` run instead of the device.

A function is registered with a persist under a name (its module and qualified
name, or the ``name=`` it was given); the registration, a `WrappedFunction`, is
what its jobs run and where its own counts are kept. It lives as long as
something uses it (a wrapper, a job), and the name with it.

Its calls live in a group space of their own. A call's group is a `CallGroup`:
the text ``"w:"`` and the digest of the name and arguments, equal to no other
kind of value, so no group a ``resolve`` call or a device's ``group`` hook makes
(a str, a tuple, ...) is ever the same group; its text is what names it across
processes, where a backend keys it as it is: no default group (a bare digest)
and no hook's group (hashed) lands there. Inside a group, a call's request name
is its registration's token, so a lingering result or a running execution of a
function that was released answers no function registered later under its name.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import attrs

from .._grouping import default_group
from .._stats import BOUNDARIES, DurationHistogram, FunctionStatistics
from ._histogram import Histogram

__all__ = ["CallGroup", "InstanceCallGroup", "InstanceName", "WrappedFunction"]

SETTLE_EVERY = 256
"""Executions between two foldings of a function's pending duration samples."""


class CallGroup(str):
    """The group of a wrapped function's call: ``"w:"`` and a 128-bit digest.

    Equal only to a group of its own class with the same text: never to a
    plain str (what the default grouper and most group hooks return), so no
    other call can join a wrapped call, queue behind it or read its result.
    """

    __slots__ = ()

    across: ClassVar[bool] = True
    """Whether a backend may run it once across processes (its text is its key)."""

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and str.__eq__(self, other)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    __hash__ = str.__hash__


class InstanceCallGroup(CallGroup):
    """A method's call grouped by its instance's identity: its text ends with the
    instance's id, so it means something in this process only, and never goes
    through a backend."""

    __slots__ = ()

    across: ClassVar[bool] = False


@attrs.frozen(eq=False)
class InstanceName:
    """The request name of a method's call grouped by its instance's identity:
    equal for the same registration (its token) and the same instance (never
    hashing the instance, which may not be hashable)."""

    token: object
    instance: Any

    def __eq__(self, other: object) -> bool:
        return (
            type(other) is InstanceName
            and other.token is self.token
            and other.instance is self.instance
        )

    def __hash__(self) -> int:
        return hash((id(self.token), id(self.instance)))


@attrs.define(eq=False, repr=False)
class WrappedFunction:
    """One function registered with one persist: what its jobs run, and its counts.

    Compared by identity: it is the request name of its calls (see the module's
    docstring). Everything here is touched from the persist's Trio thread only.
    """

    name: str
    fn: Callable[..., Awaitable[Any]]
    # Seconds a success keeps answering identical calls (the persist's, for `wrap`).
    linger: float
    # For a method: what names its instance in the group (None: its identity).
    instance_key: Callable[[Any], Any] | None = None
    # The request name of its calls: what a lingering result of theirs keeps
    # (not the registration, so the name is released while it lingers).
    token: object = attrs.field(factory=object)
    requests: int = 0
    executions: int = 0
    remote: int = 0
    deduplicated: int = 0
    failures: int = 0
    crashes: int = 0
    abandoned: int = 0
    durations: Histogram = attrs.field(factory=Histogram)
    unsettled: int = SETTLE_EVERY

    def __repr__(self) -> str:
        return f"<wrapped function {self.name}>"

    def __call__(self, args: Any, kwargs: Any) -> Awaitable[Any]:
        """Run the function: a job's ``(base, request)`` are its arguments."""
        return self.fn(*args, **kwargs)

    # -- naming calls --------------------------------------------------------------

    def name_call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[CallGroup, object]:
        """The group of a call with these arguments, and its request name (this
        registration's token).

        Raises:
            TypeError: an argument cannot be encoded (the message says which).
        """
        return CallGroup("w:" + default_group(self.name, (args, kwargs))), self.token

    def name_method_call(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[CallGroup, object]:
        """The group and request name of a method's call, ``args[0]`` being its
        instance: by the instance's identity, or by what ``instance_key`` returns.

        Raises:
            TypeError: an argument, or the instance's key, cannot be encoded.
        """
        instance, rest = args[0], args[1:]
        key = self.instance_key
        if key is not None:
            group = CallGroup("w:" + default_group(self.name, (key(instance), rest, kwargs)))
            return group, self.token
        digest = default_group(self.name, (rest, kwargs))
        # The request name holds the instance: while a result of its lingers (or
        # runs), no other object can have its id, and so its group.
        return InstanceCallGroup(f"w:{digest}@{id(instance):x}"), InstanceName(self.token, instance)

    # -- counting (the engine calls these) ----------------------------------------------

    def ended(self, seconds: float, failed: bool, crashed: bool) -> None:
        """One of its executions ended after *seconds* (*failed*: with an exception,
        *crashed*: a `BaseException` that is not one)."""
        self.durations.add(seconds)
        self.unsettled -= 1
        if not self.unsettled:
            self.unsettled = SETTLE_EVERY
            self.durations.settle()
        if failed:
            self.failures += 1
            if crashed:
                self.crashes += 1

    def statistics(self) -> FunctionStatistics:
        """Its counts and execution times, as a frozen record."""
        durations = self.durations
        return FunctionStatistics(
            name=self.name,
            requests=self.requests,
            executions=self.executions,
            remote=self.remote,
            deduplicated=self.deduplicated,
            failures=self.failures,
            crashes=self.crashes,
            abandoned=self.abandoned,
            execution_p50=durations.quantile(0.5),
            execution_p99=durations.quantile(0.99),
            execution_max=durations.maximum,
            execution=DurationHistogram(
                count=durations.count,
                sum=durations.total,
                buckets=durations.cumulative(BOUNDARIES),
            ),
        )
