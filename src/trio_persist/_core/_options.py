"""The options of `open_persist`, checked once when the block opens."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any, Literal

import attrs

__all__ = ["PersistOptions", "check_duration", "check_linger"]

AwaitMode = Literal[True, False, "named"]
ErrorStrategy = Literal["ignore", "throw"]


def _number(name: str, value: object, *, allow_none: bool) -> float:
    if value is None and allow_none:
        return math.inf
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        accepted = "a number of seconds or None" if allow_none else "a number of seconds"
        raise TypeError(f"{name} must be {accepted}, got {type(value).__name__}")
    if math.isnan(value) or value <= 0:
        raise ValueError(f"{name} must be > 0 seconds, got {value!r}")
    return float(value)


def _flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False, got {type(value).__name__}")
    return value


@attrs.frozen
class PersistOptions:
    """The checked options of a persist (see `open_persist` for their meaning)."""

    await_inprogress: AwaitMode
    """True, ``"named"`` or False: which calls are deduplicated."""
    worker_timeout: float
    """Seconds a worker waits for a request before it stops (``inf``: never)."""
    static_worker: bool
    """Whether workers keep their state rather than advance it."""
    error_strategy: ErrorStrategy
    """``"ignore"`` or ``"throw"``: whether a worker stops after a failed request."""
    allow_infinite: bool
    """Whether a recursive resolve executes directly instead of raising."""
    max_workers: int | None
    """The most workers alive at once (None: no limit)."""
    worker_inbox: int
    """Requests a worker's inbox holds before callers wait."""
    shutdown_grace: float
    """Seconds each ``on_idle`` may take (``inf``: no bound)."""
    ignore_keys: frozenset[Any] = frozenset()
    """Top-level mapping keys the default grouper leaves out."""
    linger: float = 0.0
    """Seconds a successful result keeps answering identical calls (0: not at all)."""
    checkpoint_interval: float | None = None
    """Seconds between saves of a worker's changed state while it lives (None: only
    when it stops); needs a store."""
    durable: bool = False
    """Whether a worker replies only once the state its request made is saved;
    needs a store."""

    @classmethod
    def check(
        cls,
        *,
        await_inprogress: object,
        worker_timeout: object,
        static_worker: object,
        error_strategy: object,
        allow_infinite: object,
        max_workers: object,
        worker_inbox: object,
        shutdown_grace: object,
        ignore_keys: object = (),
        linger: object = 0.0,
        checkpoint_interval: object = None,
        durable: object = False,
        has_store: bool = False,
    ) -> PersistOptions:
        """Check every option; raise `TypeError` or `ValueError` naming the first bad one."""
        if not isinstance(await_inprogress, (bool, str)):
            raise TypeError(
                "await_inprogress must be True, False or 'named', "
                f"got {type(await_inprogress).__name__}"
            )
        if isinstance(await_inprogress, str) and await_inprogress != "named":
            raise ValueError(
                f"await_inprogress must be True, False or 'named', got {await_inprogress!r}"
            )
        if not isinstance(error_strategy, str):
            raise TypeError(
                f"error_strategy must be 'ignore' or 'throw', got {type(error_strategy).__name__}"
            )
        if error_strategy not in ("ignore", "throw"):
            raise ValueError(f"error_strategy must be 'ignore' or 'throw', got {error_strategy!r}")
        checked_max = _count("max_workers", max_workers, allow_none=True)
        checked_inbox = _count("worker_inbox", worker_inbox, allow_none=False)
        assert checked_inbox is not None  # refused above when not a positive int
        mode: Any = await_inprogress
        strategy: Any = error_strategy
        return cls(
            await_inprogress=mode,
            worker_timeout=_number("worker_timeout", worker_timeout, allow_none=True),
            static_worker=_flag("static_worker", static_worker),
            error_strategy=strategy,
            allow_infinite=_flag("allow_infinite", allow_infinite),
            max_workers=checked_max,
            worker_inbox=checked_inbox,
            shutdown_grace=_number("shutdown_grace", shutdown_grace, allow_none=True),
            ignore_keys=_keys("ignore_keys", ignore_keys),
            linger=check_linger(linger),
            **_saving(checkpoint_interval, durable, has_store),
        )


def _count(name: str, value: object, *, allow_none: bool) -> int | None:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        accepted = "a positive int or None" if allow_none else "a positive int"
        raise TypeError(f"{name} must be {accepted}, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value!r}")
    return value


def check_linger(value: object) -> float:
    """Check a linger window: a finite number of seconds >= 0."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"linger must be a number of seconds, got {type(value).__name__}")
    if not 0 <= value < math.inf:  # NaN fails this too
        raise ValueError(f"linger must be >= 0 seconds and finite, got {value!r}")
    return float(value)


def _saving(checkpoint_interval: object, durable: object, has_store: bool) -> dict[str, Any]:
    """The options that save states: each needs a store to save to."""
    seconds = _number("checkpoint_interval", checkpoint_interval, allow_none=True)
    interval = None if seconds == math.inf else seconds
    checked = _flag("durable", durable)
    for name, used in (("checkpoint_interval", interval is not None), ("durable", checked)):
        if used and not has_store:
            raise ValueError(
                f"{name} saves workers' states through a store: pass store= too, "
                "such as trio_persist.stores.FileStore(directory)"
            )
    return {"checkpoint_interval": interval, "durable": checked}


def _keys(name: str, value: object) -> frozenset[Any]:
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(
            f"{name} must be a collection of mapping keys, such as ('priv',), "
            f"got {type(value).__name__}"
        )
    try:
        return frozenset(value)
    except TypeError:
        raise TypeError(f"{name} must hold hashable mapping keys") from None


def check_duration(name: str, value: object) -> float:
    """Check a duration argument: a positive number of seconds."""
    return _number(name, value, allow_none=False)
