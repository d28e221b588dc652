"""Cycles of calls across processes: the chain a routed request carries.

In one process, recursion is found on the wait-for graph (`Persist._awaiting`):
which owners each owner's execution waits for. A request routed to another
process leaves that graph, so it carries a *chain* instead (`Chain`): the
digests (`group_digest`, never the groups) of the groups waiting for it, and
the names of the workers among them (their worker lease's id). The owner
that serves it keeps the chain on the job (`AskJob.chain`), so the calls its
execution makes carry it on, and:

* a request for one of those groups is refused (`InfiniteRecursion`) where
  it is sent, or where it arrives if the group's worker there waits for one
  of them (`waits_on_chain`);
* a call that would join or queue behind an owner here that waits for one of
  those *workers* is refused (`joins_across`): a flight standing in here for
  a worker elsewhere (its request routed there, `Here.standing_in`) waits for
  whatever that worker serves, one request at a time. Workers, not groups:
  flights of one group run side by side in several processes, and a join of
  one that waits for nobody in the chain must join.

A chain names at most `CHAIN_LIMIT` groups: deeper nesting is refused too.
docs/redis.md states it.
"""

from __future__ import annotations

from collections.abc import Collection, Hashable

from .._backend import CHAIN_LIMIT, NO_CHAIN, Chain, cycle_error
from .._exceptions import InfiniteRecursion
from .._grouping import group_digest
from .._text import safe_repr
from ._job import AskJob, Owner
from ._worker import WorkerTask

__all__ = ["joins_across", "serving_chain", "waits_on_chain"]


def serving_chain(
    current: Owner | None, awaiting: dict[Owner, list[Owner]], group: Hashable, digest: str
) -> Chain:
    """The chain a request to *group* (digest *digest*) sent from *current*'s
    execution carries: *current*, the owners here waiting for it (transitively),
    and the chains their requests came with.

    Raises:
        InfiniteRecursion: *group* is one of them, or they are more than `CHAIN_LIMIT`.
    """
    if current is None:
        return NO_CHAIN
    groups: dict[str, None] = {}
    workers: dict[str, None] = {}
    for owner in _waiting_for(current, awaiting):
        if owner.group is not None:
            name = group_digest(owner.group)
            if owner is not current or name != digest:  # (a flight sending its own request)
                groups[name] = None
        if isinstance(owner, WorkerTask):
            if owner.lease is not None:
                workers[owner.lease.name] = None
            carried = _carried(owner)
            groups.update(dict.fromkeys(carried.groups))
            workers.update(dict.fromkeys(carried.workers))
    if digest in groups:
        raise cycle_error(group)
    if len(groups) > CHAIN_LIMIT or len(workers) > CHAIN_LIMIT:
        raise InfiniteRecursion(
            f"asking group {safe_repr(group)} would send a chain of {len(groups) + 1} "
            "groups waiting for it across processes (asks nested that deep, or that "
            f"many groups waiting for one request), past the bound of {CHAIN_LIMIT}"
        )
    return Chain(tuple(groups), tuple(workers))


def waits_on_chain(
    owner: Owner,
    awaiting: dict[Owner, list[Owner]],
    chain: Chain,
    stand_ins: dict[Owner, list[str]],
) -> bool:
    """Whether *owner* is, or waits here (transitively) for, an owner of one of
    the groups in *chain*, or a worker it names: then a request carrying *chain*
    would wait for itself."""
    names = set(chain.groups)
    for node in _awaited_by(owner, awaiting):
        if node.group is not None and group_digest(node.group) in names:
            return True
    return bool(chain.workers) and _waits_on_workers(owner, awaiting, chain.workers, stand_ins)


def joins_across(
    owner: Owner,
    current: Owner,
    awaiting: dict[Owner, list[Owner]],
    stand_ins: dict[Owner, list[str]],
) -> bool:
    """Whether a call from *current*'s execution that joins or queues behind
    *owner* here would wait for itself through other processes: *owner* is, or
    waits here for, a worker named in *current*'s chain, or a flight standing
    in for one. (Cycles within this process are the wait-for graph's: the
    caller looks for them first.) A walk of the graph: call it only when some
    request served here came with workers in its chain."""
    workers: set[str] = set()
    for waiter in _waiting_for(current, awaiting):
        if isinstance(waiter, WorkerTask):
            workers.update(_carried(waiter).workers)
    return bool(workers) and _waits_on_workers(owner, awaiting, workers, stand_ins)


def _waits_on_workers(
    owner: Owner,
    awaiting: dict[Owner, list[Owner]],
    workers: Collection[str],
    stand_ins: dict[Owner, list[str]],
) -> bool:
    """Whether *owner* is, or waits here for, a worker named in *workers*, or an
    owner whose request is routed to one (*stand_ins*: owner -> workers)."""
    for node in _awaited_by(owner, awaiting):
        if any(name in workers for name in stand_ins.get(node, ())):
            return True
        lease = node.lease if isinstance(node, WorkerTask) else None
        if lease is not None and lease.name in workers:
            return True
    return False


def _awaited_by(owner: Owner, awaiting: dict[Owner, list[Owner]]) -> list[Owner]:
    """*owner* and the owners it waits for here, transitively."""
    found, seen = [owner], {id(owner)}
    for node in found:  # grows as it is walked
        for awaited in awaiting.get(node, ()):
            if id(awaited) not in seen:
                seen.add(id(awaited))
                found.append(awaited)
    return found


def _waiting_for(current: Owner, awaiting: dict[Owner, list[Owner]]) -> list[Owner]:
    """*current* and the owners here waiting for it, transitively."""
    waiters: dict[int, list[Owner]] = {}  # the graph reversed: who waits for whom
    for waiter, awaited in awaiting.items():
        for owner in awaited:
            waiters.setdefault(id(owner), []).append(waiter)
    found, seen = [current], {id(current)}
    for owner in found:  # grows as it is walked
        for waiter in waiters.get(id(owner), ()):
            if id(waiter) not in seen:
                seen.add(id(waiter))
                found.append(waiter)
    return found


def _carried(owner: WorkerTask) -> Chain:
    """The chain *owner*'s current request came with from another process."""
    job = owner.current
    return job.chain if isinstance(job, AskJob) else NO_CHAIN
