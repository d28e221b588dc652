"""Wrapped functions: what `Persist.wrap` and ``@deduplicated`` run instead of the device.

A function is registered with a persist under a name (its module and qualified
name, or the ``name=`` it was given); the registration, a `WrappedFunction`, is
what its jobs run and where its own counts are kept. It lives as long as
something uses it (a wrapper, a job), and the name with it.

Its calls live in a group space of their own. A call's group is a `CallGroup`:
the text ``"w:"`` and the digest of the name and arguments, beside a private
mark, so no group a ``resolve`` call or a device's ``group`` hook makes (a str,
a tuple, ...) is ever the same group; its text is what names it across
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

__all__ = [
    "CallGroup",
    "InstanceCallGroup",
    "InstanceName",
    "WrappedFunction",
    "call_group",
    "function_name",
]

SETTLE_EVERY = 256
"""Executions between two foldings of a function's pending duration samples."""


class _Mark:
    """What makes a `CallGroup` unforgeable: no value from outside can hold it."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<a wrapped call>"


_MARK = _Mark()


class CallGroup(tuple[_Mark, str]):
    """The group of a wrapped function's call: its text, ``"w:"`` and a 128-bit
    digest, beside a private mark.

    Hashed and compared as the tuple it is (at C speed), and equal to nothing
    but a group made here: no group a ``resolve`` call or a device's ``group``
    hook makes can hold the mark, so no other call can join a wrapped call,
    queue behind it or read its result. Shown, and named outside the process,
    by its text.
    """

    __slots__ = ()

    across: ClassVar[bool] = True
    """Whether a backend may run it once across processes (its text is its key)."""

    def __new__(cls, text: str) -> CallGroup:
        return tuple.__new__(cls, (_MARK, text))

    @property
    def text(self) -> str:
        """``"w:"`` and the digest of the function's name and arguments."""
        return self[1]

    def __repr__(self) -> str:
        return self[1]


class InstanceCallGroup(CallGroup):
    """A method's call grouped by its instance's identity: its text ends with the
    instance's id, so it means something in this process only, and never goes
    through a backend."""

    __slots__ = ()

    across: ClassVar[bool] = False


def call_group(text: str, _new: Any = tuple.__new__, _mark: _Mark = _MARK) -> CallGroup:
    """``CallGroup(text)``, made the quickest way (the hot path of every wrapped call)."""
    group: CallGroup = _new(CallGroup, (_mark, text))
    return group


def function_name(fn: object, name: str | None) -> str:
    """*name*, or *fn*'s module and qualified name: what its calls are grouped under.

    Raises:
        TypeError: *name* is None and *fn* has no qualified name (a
            ``functools.partial``, say).
    """
    if name is not None:
        return name
    qualname = getattr(fn, "__qualname__", None)
    if not isinstance(qualname, str):
        raise TypeError(f"{fn!r} has no qualified name to group its calls under: pass name=")
    return f"{getattr(fn, '__module__', None)}.{qualname}"


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

    def digest(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """The default group of a call's arguments under this function's name.

        Positional arguments alone are hashed when there is no keyword one (the
        common case, and a third of the cost of encoding both); with keywords,
        both, under another base, so the two forms never name one group.

        Raises:
            TypeError: an argument cannot be encoded (the message says which).
        """
        if kwargs:
            return default_group((self.name, "**"), (args, kwargs))
        return default_group(self.name, args)

    def name_call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[CallGroup, object]:
        """The group of a call with these arguments, and its request name (this
        registration's token).

        Raises:
            TypeError: an argument cannot be encoded (the message says which).
        """
        return call_group("w:" + self.digest(args, kwargs)), self.token

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
            digest = default_group((self.name, "self"), (key(instance), rest, kwargs))
            return call_group("w:" + digest), self.token
        digest = self.digest(rest, kwargs)
        # The request name holds the instance: while a result of its lingers (or
        # runs), no other object can have its id, and so its group.
        return InstanceCallGroup(f"w:{digest}@{id(instance):x}"), InstanceName(self.token, instance)

    # -- counting (the engine calls these) ----------------------------------------------

    def ended(self, seconds: float) -> None:
        """One of its executions ended after *seconds* (failures are counted by
        the engine, where it counts its own)."""
        self.durations.add(seconds)
        self.unsettled -= 1
        if not self.unsettled:
            self.unsettled = SETTLE_EVERY
            self.durations.settle()

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
