"""Cycles of asks across processes: the chain of groups a routed request carries.

In one process, recursion is found on the wait-for graph (`Persist._awaiting`):
which owners each owner's execution waits for. A request routed to another
process leaves that graph, so it carries a *chain* instead: the digests
(`group_digest`, never the groups) of the groups waiting for it. The owner
that serves it keeps the chain on the job (`AskJob.chain`), so the asks its
execution makes carry it on, and a request for one of those groups is
refused (`InfiniteRecursion`) where it is sent, or where it arrives if the
group's worker there waits for one of them. A chain names at most
`CHAIN_LIMIT` groups: deeper nesting is refused too. docs/redis.md states it.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable

from .._backend import CHAIN_LIMIT, cycle_error
from .._exceptions import InfiniteRecursion
from .._grouping import group_digest
from .._text import safe_repr
from ._job import AskJob, Owner
from ._worker import WorkerTask

__all__ = ["serving_chain", "waits_on_chain"]


def serving_chain(
    current: Owner | None, awaiting: dict[Owner, list[Owner]], group: Hashable, digest: str
) -> tuple[str, ...]:
    """The chain a request to *group* (digest *digest*) sent from *current*'s
    execution carries: *current*'s group, those of the owners here waiting for
    it (transitively), and the chains their requests came with.

    Raises:
        InfiniteRecursion: *group* is one of them, or they are more than `CHAIN_LIMIT`.
    """
    if current is None:
        return ()
    waiters: dict[int, list[Owner]] = {}  # the graph reversed: who waits for whom
    for waiter, awaited in awaiting.items():
        for owner in awaited:
            waiters.setdefault(id(owner), []).append(waiter)
    chain: dict[str, None] = {}
    stack, seen = [current], {id(current)}
    while stack:
        owner = stack.pop()
        if owner.group is not None:
            name = group_digest(owner.group)
            if owner is not current or name != digest:  # (a flight sending its own request)
                chain[name] = None
        chain.update(dict.fromkeys(_carried(owner)))
        for waiter in waiters.get(id(owner), ()):
            if id(waiter) not in seen:
                seen.add(id(waiter))
                stack.append(waiter)
    if digest in chain:
        raise cycle_error(group)
    if len(chain) > CHAIN_LIMIT:
        raise InfiniteRecursion(
            f"asking group {safe_repr(group)} would nest asks across processes "
            f"{len(chain) + 1} groups deep, past the bound of {CHAIN_LIMIT}"
        )
    return tuple(chain)


def waits_on_chain(owner: Owner, awaiting: dict[Owner, list[Owner]], chain: Iterable[str]) -> bool:
    """Whether *owner* is, or waits here (transitively) for, an owner of one of
    the groups in *chain*: then a request carrying *chain* would wait for itself."""
    names = set(chain)
    stack, seen = [owner], {id(owner)}
    while stack:
        node = stack.pop()
        if node.group is not None and group_digest(node.group) in names:
            return True
        for awaited in awaiting.get(node, ()):
            if id(awaited) not in seen:
                seen.add(id(awaited))
                stack.append(awaited)
    return False


def _carried(owner: Owner) -> tuple[str, ...]:
    """The chain *owner*'s current request came with from another process."""
    job = owner.current if isinstance(owner, WorkerTask) else None
    return job.chain if isinstance(job, AskJob) else ()
