"""The Redis backend: deduplication and a cluster view across processes and hosts.

``pip install trio-persist[redis]``, then::

    backend = trio_persist.redis.RedisBackend("redis://127.0.0.1:6379/0")
    async with trio_persist.open_persist(device, backend=backend) as persist:
        ...

Within a process nothing changes: identical calls join the local flight, and
only that flight talks to Redis. Across processes, a flight first tries to
become the leader of its key with one Lua script (a new fencing token and a
lease, atomically):

* The **leader** runs the device while one loop keeps the process's leases
  alive, each renewed on its own schedule; a lease that is lost (taken over,
  or its expiry passed unconfirmed) cancels its execution, whose callers then
  follow the new leader. It commits the outcome with one script that checks
  the lease, stores the result, publishes it and drops the lease. Its callers
  get its value only once the commit is accepted: a refused commit answers
  with the winner's outcome, one that cannot be made with
  `~trio_persist.BackendUnavailable`. `fencing_token()` tells a device its
  token, to fence its own writes.
* A **follower** is registered with the process's one subscriber before it
  asks, so it hears the leader's publication without a round trip of its own;
  when it has heard nothing for a third of the TTL it looks at the lease and
  the result. A leader that vanishes (crashed, or cancelled: it says so) is
  replaced by exactly one follower; after ``max_takeovers`` vanished leaders,
  `~trio_persist.LeaderDied`.

Every step is bounded by ``timeout``, and at most ``max_pending`` calls
start on Redis at once: callers get their value, or
`~trio_persist.BackendUnavailable` (with ``fallback="local"``, a local
execution) within the bounds the Redis page of the docs states. Nothing a
server or its client does crashes the persist. Outcomes cross
processes sealed to their namespace, key and token (authenticated with
``signing_key``).

Each persist also publishes a heartbeat record (its statistics and workers,
with a TTL, so a dead process disappears): see `RedisBackend.cluster` and
``trio-persist monitor --redis URL``.

`RedisStore` keeps virtual workers' states on the same servers: one hash per
group, every save fenced by its owner's token in one script (docs/stores.md).
"""

from ._backend import RedisBackend, RedisBackendStatistics
from ._cluster import NodeSnapshot, cluster_frame, watch_cluster
from ._lease import fencing_token
from ._store import RedisStore

__all__ = [
    "NodeSnapshot",
    "RedisBackend",
    "RedisBackendStatistics",
    "RedisStore",
    "cluster_frame",
    "fencing_token",
    "watch_cluster",
]


def _fixup_module_metadata() -> None:
    # As trio does: reprs and the reference say trio_persist.redis.X.
    for name in __all__:
        obj = globals()[name]
        if getattr(obj, "__module__", "").startswith("trio_persist.redis."):
            obj.__module__ = __name__


_fixup_module_metadata()
del _fixup_module_metadata
