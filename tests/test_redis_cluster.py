"""The Redis backend on a real 3-master Redis Cluster (valkey-server or redis-server
with ``--cluster-enabled yes``): keys of one request share a slot, publications
reach followers on any node, and the cluster view reads every node; a
`RedisStore` spreads its groups over the masters, each fenced."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import coredis
import pytest
import trio

import trio_persist
from redis_helpers import Recorder, eventually, open_pair
from redis_server import RedisCluster
from trio_persist.redis import RedisBackend, RedisStore, fencing_token
from trio_persist.stores import StateRecord


def new_client(cluster: RedisCluster) -> Any:
    """A cluster client, configured the way coredis documents it."""
    from coredis.connection import TCPLocation

    return coredis.RedisCluster(startup_nodes=[TCPLocation("127.0.0.1", cluster.ports[0])])


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisCluster]:
    servers = RedisCluster(Path(tmp_path_factory.mktemp("cluster")))
    servers.start()
    try:
        yield servers
    finally:
        servers.stop()


@pytest.fixture
async def cluster_client(cluster: RedisCluster) -> AsyncIterator[Any]:
    client = new_client(cluster)
    async with client:
        yield client


async def test_two_processes_on_a_cluster_share_one_execution_per_key(
    cluster: RedisCluster, namespace: str
) -> None:
    device = Recorder()
    first_client = new_client(cluster)
    second_client = new_client(cluster)
    first = RedisBackend(first_client, namespace=namespace)
    second = RedisBackend(second_client, namespace=namespace)
    got: list[Any] = []
    with trio.fail_after(30):
        async with (
            trio_persist.open_persist(device, backend=first) as a,
            trio_persist.open_persist(device, backend=second) as b,
            trio.open_nursery() as nursery,
        ):

            async def call(persist: trio_persist.Persist, key: int) -> None:
                got.append(await persist.resolve("base", key))

            for key in range(30):  # spread over every master's slots
                nursery.start_soon(call, a, key)
            await eventually(lambda: first.statistics().leading == 30)
            for key in range(30):
                nursery.start_soon(call, b, key)
            await eventually(lambda: second.statistics().following == 30)
            device.release.set()
    assert got == ["done"] * 60
    assert device.calls == 30
    nodes = await _cluster_view(first_client, namespace)
    assert nodes == 0  # both left


async def _cluster_view(client: Any, namespace: str) -> int:
    from trio_persist.redis._cluster import read_nodes

    async with client:
        return len(await read_nodes(client, namespace))


async def test_a_vanished_leader_is_replaced_on_a_cluster(
    cluster: RedisCluster, namespace: str
) -> None:
    device = Recorder("second")
    leader = RedisBackend(new_client(cluster), namespace=namespace)
    follower = RedisBackend(new_client(cluster), namespace=namespace)
    with trio.fail_after(30):
        async with open_pair(leader, follower, device) as pair:
            await pair.lead("k")
            await pair.follow("k")
            pair.lead_scope.cancel()
            await eventually(lambda: follower.statistics().leading == 1)
            device.release.set()
    assert pair.got == ["second"]
    assert follower.statistics().takeovers == 1


async def test_the_cluster_view_reads_every_process_on_a_cluster(
    cluster: RedisCluster, namespace: str, cluster_client: Any
) -> None:
    from trio_persist.redis._cluster import read_nodes

    backends = [RedisBackend(new_client(cluster), namespace=namespace) for _ in range(2)]
    with trio.fail_after(30):
        async with (
            trio_persist.open_persist(Recorder(), backend=backends[0]),
            trio_persist.open_persist(Recorder(), backend=backends[1]),
        ):
            assert len(await backends[0].cluster()) == 2
            assert len(await read_nodes(cluster_client, namespace)) == 2


@pytest.fixture
def cluster_with_replicas(tmp_path: Path) -> Iterator[RedisCluster]:
    servers = RedisCluster(tmp_path, replicas=True)
    servers.start()
    try:
        yield servers
    finally:
        servers.stop()


async def test_after_a_master_dies_its_replica_takes_over_and_every_key_answers_again(
    cluster_with_replicas: RedisCluster, namespace: str
) -> None:
    from coredis.connection import TCPLocation

    servers = cluster_with_replicas
    tokens: dict[int, list[int | None]] = {}

    async def device(base: Any, request: int) -> Any:
        tokens.setdefault(request, []).append(fencing_token())
        return request

    client = coredis.RedisCluster(
        startup_nodes=[TCPLocation("127.0.0.1", port) for port in servers.ports]
    )
    backend = RedisBackend(client, namespace=namespace, timeout=1, lease_ttl=1)
    with trio.fail_after(60):
        async with trio_persist.open_persist(device, backend=backend) as persist:
            for key in range(12):
                assert await persist.resolve("base", key) == key
            servers.kill(servers.ports[1])  # a third of the slots lose their master
            pending = set(range(12))
            while pending:
                for key in sorted(pending):
                    try:
                        assert await persist.resolve("base", key) == key
                    except trio_persist.BackendUnavailable:
                        continue  # not promoted yet: a clear error, in time
                    pending.discard(key)
                await trio.sleep(0.2)
    for key, seen in tokens.items():
        first, second = seen
        assert first is not None
        assert second is not None
        assert second > first, key


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[RedisCluster]:
    """A 3-master cluster of the test's own, without replicas (a killed master stays dead)."""
    servers = RedisCluster(tmp_path)
    servers.start()
    try:
        yield servers
    finally:
        servers.stop()


async def test_a_masters_death_never_crashes_the_persist(
    own_cluster: RedisCluster, namespace: str
) -> None:
    # Leaders on every master renew their leases while one master dies (and,
    # a node timeout later, the cluster says it is down): nothing the client
    # raises reaches the persist. Every call gets its value or a clear error.
    device = Recorder()
    backend = RedisBackend(new_client(own_cluster), namespace=namespace, lease_ttl=1, timeout=1)
    got: dict[int, Any] = {}
    survived = False
    try:
        with trio.fail_after(60):
            async with (
                trio_persist.open_persist(device, backend=backend) as persist,
                trio.open_nursery() as nursery,
            ):

                async def call(key: int) -> None:
                    try:
                        got[key] = await persist.resolve("base", key)
                    except trio_persist.PersistError as exc:
                        got[key] = exc

                for key in range(12):  # on every master
                    nursery.start_soon(call, key)
                await eventually(lambda: backend.statistics().leading == 12)
                own_cluster.kill(own_cluster.ports[1])
                await trio.sleep(2.5)  # more than two TTLs of renewals with a master gone
                device.release.set()
                await eventually(lambda: len(got) == 12)
                with pytest.raises(trio_persist.BackendUnavailable):
                    await persist.resolve("base", "after")  # still serving: a clear error
            survived = True
    finally:
        # A crash of the persist reaches this block as a group of cancellations.
        assert survived, "the persist crashed"
    for value in got.values():
        assert value == "done" or isinstance(value, trio_persist.BackendUnavailable)


async def test_a_plain_url_to_one_node_of_a_cluster_is_refused_saying_what_to_pass(
    cluster: RedisCluster, namespace: str
) -> None:
    backend = RedisBackend(cluster.url, namespace=namespace, fallback="local")
    with (
        trio.fail_after(20),
        pytest.raises(ValueError, match="a node of a Redis Cluster: pass a coredis"),
    ):
        async with trio_persist.open_persist(Recorder(), backend=backend):
            pass  # pragma: no cover - refused before the block runs


# -- RedisStore on a Cluster ------------------------------------------------------------


async def test_a_redis_store_spreads_groups_over_the_masters_and_fences_each(
    cluster: RedisCluster, namespace: str, cluster_client: Any
) -> None:
    groups = [("cart", n) for n in range(30)]
    with trio.fail_after(30):
        async with (
            RedisStore(new_client(cluster), namespace=namespace) as owner,
            RedisStore(new_client(cluster), namespace=namespace) as stale,
        ):
            for group in groups:
                await owner.save_record(group, StateRecord({"n": group[1]}, token=2))
            slots = [await cluster_client.cluster_keyslot(owner.key_of(g)) for g in groups]
            assert len({slot * 3 // 16384 for slot in slots}) == 3  # every master holds some
            assert [await stale.load(g) for g in groups] == [{"n": n} for n in range(30)]
            for group in groups:
                with pytest.raises(trio_persist.StaleOwner):
                    await stale.save_record(group, StateRecord("late", token=1))
            assert stale.statistics().fenced == 30


async def test_a_redis_store_given_one_node_of_a_cluster_is_refused_saying_what_to_pass(
    cluster: RedisCluster, namespace: str
) -> None:
    store = RedisStore(cluster.url, namespace=namespace)
    with (
        trio.fail_after(20),
        pytest.raises(ValueError, match="a node of a Redis Cluster: pass a coredis"),
    ):
        async with store:
            pass  # pragma: no cover - refused before the block runs


async def test_workers_placed_across_processes_route_asks_on_a_cluster(
    cluster: RedisCluster, namespace: str
) -> None:
    async def count(state: Any, request: Any) -> Any:
        return state + request

    backends = [
        RedisBackend(new_client(cluster), namespace=namespace, workers="cluster") for _ in range(2)
    ]
    store = RedisStore(new_client(cluster), namespace=namespace)
    with trio.fail_after(30):
        async with (
            trio_persist.open_persist(count, backend=backends[0], store=store) as a,
            trio_persist.open_persist(count, backend=backends[1], store=store) as b,
        ):
            for group in range(12):  # worker leases and inboxes on every master
                await a.ask(group, 1, default=int)
                assert await b.ask(group, 1) == 2
            # A group nobody owns resolves here (its worker lease looked at on its
            # own: on a Cluster it is in another slot than the flight's keys).
            assert await b.resolve(100, 1) == 101
    assert backends[1].statistics().routed_out == 12
    assert backends[0].statistics().routed_in == 12


async def test_a_master_dying_under_worker_leases_never_makes_two_owners_and_asks_recover(
    cluster_with_replicas: RedisCluster, namespace: str
) -> None:
    # Two processes (a backend each) ask 12 groups whose worker leases and
    # inboxes live on every master; one master is SIGKILLed and its replica
    # promoted. Each execution's span is logged by the process running it: a
    # group's spans in the two processes never overlap (never two owners), every
    # ask ends in a reply or a clear error within its bound, and every group
    # answers again once the replica has taken over.
    servers = cluster_with_replicas
    ttl = 1.0
    bound = ttl + ttl / 3 + 2 * ttl + 5.0  # the failover bound, a push, and a promotion
    spans: dict[int, list[tuple[str, float, float]]] = {}

    def device(name: str) -> Any:
        async def count(state: Any, request: Any) -> Any:
            start = trio.current_time()
            try:
                await trio.sleep(0.01)
            finally:
                spans.setdefault(request, []).append((name, start, trio.current_time()))
            return state + 1

        return count

    def backend() -> RedisBackend:
        return RedisBackend(
            new_client(servers), namespace=namespace, workers="cluster", lease_ttl=ttl, timeout=ttl
        )

    errors: list[Exception] = []

    async def ask(persist: trio_persist.Persist[Any, Any, Any], group: int) -> bool:
        with trio.fail_after(bound):
            try:
                await persist.ask(group, group, default=int)
            except (trio_persist.BackendUnavailable, trio_persist.LeaderDied) as exc:
                errors.append(exc)  # the master is gone: a clear error, in time
                return False
        return True

    async def ask_noting(persist: Any, group: int, answered: set[int]) -> None:
        if await ask(persist, group):
            answered.add(group)

    store = RedisStore(new_client(servers), namespace=namespace + ":states")
    with trio.fail_after(120):
        async with (
            trio_persist.open_persist(device("a"), backend=backend(), store=store) as a,
            trio_persist.open_persist(device("b"), backend=backend(), store=store) as b,
        ):
            for group in range(12):  # leases and inboxes on every master
                assert await ask(a, group)
                assert await ask(b, group)  # routed to a
            servers.kill(servers.ports[1])
            killed = trio.current_time()
            answered: set[int] = set()
            # Past the leases' expiry and the promotion, until every group answers.
            while len(answered) < 12 or trio.current_time() < killed + 3 * ttl + 2.0:
                answered.clear()
                async with trio.open_nursery() as nursery:
                    for group in range(12):
                        for persist in (a, b):
                            nursery.start_soon(ask_noting, persist, group, answered)
                await trio.sleep(0.1)
    for group, seen in spans.items():
        for name, start, end in seen:
            for other, other_start, other_end in seen:
                if other != name:
                    assert end <= other_start or other_end <= start, (group, seen)
