"""What instrumentation sees: an `Observer` told about every execution.

`trio_persist.opentelemetry` is one; `Persist.add_observer` adds another. An
observer gets each execution as an `Execution`: a read-only view of the
engine's own record, the same object from its start to its end (a key for a
span, say).
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Protocol

__all__ = ["Execution", "Observer"]


class Execution(Protocol):
    """One execution, as an `Observer` sees it: the same object from start to end."""

    @property
    def listeners(self) -> int:
        """Callers waiting for its outcome now."""
        ...

    @property
    def error(self) -> BaseException | None:
        """What it failed with, once it has failed (None until then, and on success)."""
        ...

    @property
    def function(self) -> str | None:
        """The name of the wrapped function it runs (`Persist.wrap`,
        `trio_persist.deduplicated`), or None when it runs the device."""
        ...


class Observer(Protocol):
    """Told about every execution of a persist (see `Persist.add_observer`).

    Called synchronously on the persist's Trio thread, in the task that
    starts, joins or ends the execution; it must be quick and must not block.
    One that raises is counted in ``statistics().hook_failures`` and
    skipped: it never fails the execution or its callers.

    Every method gets the execution's *kind* (``"flight"`` or ``"worker"``)
    and its *group* (None for an execution that is not grouped).
    """

    def execution_started(
        self, kind: str, group: Hashable | None, label: str, execution: Execution
    ) -> None:
        """An execution starts.

        *label* is what may name it outside the process: the device's
        ``label`` hook's text, a wrapped function's name, or ``""``; never
        a rendering of the request.
        """

    def joined(self, kind: str, group: Hashable | None, execution: Execution) -> None:
        """A caller joined *execution* instead of starting one (called in the caller's
        task, so the caller's context, a current span say, is at hand). A caller may
        join before the execution has started."""

    def execution_ended(
        self, kind: str, group: Hashable | None, execution: Execution, outcome: str, seconds: float
    ) -> None:
        """*execution* ended after *seconds*: *outcome* is ``"ok"``, ``"failed"`` (an
        `Exception`), ``"crashed"`` (another `BaseException`) or ``"abandoned"``
        (every caller left, and it was cancelled)."""
