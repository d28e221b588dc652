"""What a flight's rounds through the lease protocol find, and end with.

Typed records, one per answer a step can give (`._lease` runs the rounds):
an acquire finds `Lead`, `Follow`, `Found` or `Elsewhere`; a round ends with
an `Answer` for the flight's callers, or says why to go round again
(`Vanished`, `Again`); a commit's reply is read as a `Verdict` (or what to
answer with instead). `Call` is what one flight's rounds share.
"""

from __future__ import annotations

import enum
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

import attrs

from ._scripts import Keys
from ._subscriber import Watch

__all__ = [
    "Again",
    "Answer",
    "Call",
    "Elsewhere",
    "Follow",
    "Found",
    "Lead",
    "Placed",
    "Resolve",
    "Vanished",
    "Verdict",
    "text_of",
    "verdict_of",
]

Resolve = Callable[[Any, Any], Awaitable[Any]]


# -- what a round ends with ---------------------------------------------------------


@attrs.frozen
class Answer:
    """An outcome for the flight's callers: a value (*ok*) or an exception to raise."""

    ok: bool
    value: Any

    def unwrap(self) -> Any:
        if self.ok:
            return self.value
        raise self.value


@attrs.frozen
class Vanished:
    """The leader we followed (token *token*) vanished: take over from it."""

    token: int


@attrs.frozen
class Again:
    """Our own lease passed on: ask again, accepting results at or after *token*."""

    token: int


# -- what an acquire (or a refused commit) finds ------------------------------------


@attrs.frozen
class Lead:
    """We lead, with fencing token *token*; *value* is our lease (``"<id>:<token>"``),
    acquired by a command sent at *sent* (our clock)."""

    token: int
    value: str
    sent: float = 0.0


@attrs.frozen
class Follow:
    """Another process leads with token *token*: wait for its outcome."""

    token: int


@attrs.frozen
class Elsewhere:
    """The group's worker lives in another process (*lease*: its worker lease's value)."""

    lease: str


@attrs.frozen
class Placed:
    """A flight whose group may have a worker in another process (``workers="cluster"``):
    its acquire looks at the group's worker lease (*key*) too, and a request
    found owned elsewhere is sent there by *route* (the owner's answer; None if
    the group changed owner meanwhile: look again)."""

    key: str
    node: str
    group: Hashable
    digest: str
    route: Callable[[Placed, str, str, Any], Awaitable[Answer | None]]
    """``route(placed, lease, request_id, request)``."""


@attrs.frozen
class Found:
    """A result that answers us already: committed after a vanished leader, or
    (*lingering*) a success committed less than our linger ago."""

    payload: bytes
    lingering: bool = False


class Verdict(enum.Enum):
    """A commit's answer when no record is needed."""

    COMMITTED = "committed"
    ALONE = "refused, with no winner to answer with"


@attrs.define(eq=False)
class Call:
    """One flight's passage through the protocol: what its rounds share."""

    keys: Keys
    watch: Watch
    base: Any = None
    request: Any = None
    resolve: Resolve | None = None
    linger: float = 0.0
    vanished: int = 0
    """Leaders that vanished under this call (it gives up past ``max_takeovers``)."""
    vanished_token: int = 0
    """Accept a result committed at or after this token (0: any lingering one only)."""
    read_linger: bool = True
    """Whether a lingering success may answer (not after one was found unusable)."""
    placed: Placed | None = None
    """The group's worker lease to look at first (``workers="cluster"``)."""
    moved: int = 0
    """Times the group's worker was found gone from the process it was sent to."""
    request_id: str = ""
    """The request's id once it is routed (the same to every owner it is sent to)."""


def verdict_of(reply: Any) -> Verdict | Found | Follow:
    """What a commit's reply says (see `Verdict`)."""
    kind = text_of(reply[0])
    if kind == "c":
        return Verdict.COMMITTED
    if kind == "r":
        return Found(reply[1])
    if kind == "f":
        return Follow(int(reply[1]))
    return Verdict.ALONE


def text_of(value: Any) -> str:
    """A script's reply as text."""
    return value.decode() if isinstance(value, bytes) else str(value)
