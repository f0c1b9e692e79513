"""A real Redis Cluster for tests: six Debian ``redis-server`` processes on loopback,
three masters with a replica each, joined by ``redis-cli --cluster create``."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import redis
from redis.cluster import RedisCluster

NODES = 6
BUS_OFFSET = 10000  # a cluster node's bus listens this far above its port
MAX_PORT = 65535 - BUS_OFFSET
# Long enough that a busy shared machine is not taken for a dead node, short enough that a
# failover (node timeout, then the replica's election) takes a few seconds.
NODE_TIMEOUT_MS = 2000
START_WAIT = 60.0  # seconds for the cluster to form, or a killed master's replica to take over


def _binary(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        raise RuntimeError(f"{name} is missing: the test command installs Debian's redis-server")
    return path


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_ports(count: int) -> list[int]:
    """``count`` ports at most ``MAX_PORT`` whose bus ports are free too: an ephemeral port
    from the kernel is often above it."""
    ports: list[int] = []
    for _ in range(1000):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port > MAX_PORT:
            port = 20000 + port % (MAX_PORT - 20000)
        if port not in ports and _free(port) and _free(port + BUS_OFFSET):
            ports.append(port)
            if len(ports) == count:
                return ports
    raise RuntimeError("no free ports for a Redis Cluster")


class Cluster:
    """Six nodes in ``directory``; ``url`` names one of them, as a user's ``redis_url`` would."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.ports = cluster_ports(NODES)
        self.procs: dict[int, subprocess.Popen[bytes]] = {}

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.ports[0]}/0"

    def start(self) -> Cluster:
        try:
            for port in self.ports:
                self.start_node(port)
            for port in self.ports:
                self._wait_ping(port)
            subprocess.run(
                [
                    _binary("redis-cli"),
                    "--cluster",
                    "create",
                    *(f"127.0.0.1:{port}" for port in self.ports),
                    "--cluster-replicas",
                    "1",
                    "--cluster-yes",
                ],
                check=True,
                capture_output=True,
                timeout=START_WAIT,
            )
            self.wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def start_node(self, port: int) -> None:
        """Start (or restart, with its saved cluster state) the node on ``port``."""
        where = self.directory / str(port)
        where.mkdir(parents=True, exist_ok=True)
        self.procs[port] = subprocess.Popen(
            [
                _binary("redis-server"),
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(where),
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
                "--cluster-node-timeout",
                str(NODE_TIMEOUT_MS),
                # a replica takes over however long it was cut off from its master
                "--cluster-replica-validity-factor",
                "0",
                # A replica is listed in CLUSTER SLOTS (which wait_healthy reads) once its
                # replication offset is not 0; an idle master moves it only by its pings to
                # its replicas, every 10 s by default: a cluster took 11 s to start.
                "--repl-ping-replica-period",
                "1",
                # and the first sync starts at once, not after 5 s of waiting for more replicas
                "--repl-diskless-sync-delay",
                "0",
                "--save",
                "",
                "--appendonly",
                "no",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    def _wait_ping(self, port: int) -> None:
        deadline = time.monotonic() + START_WAIT
        with redis.Redis(port=port, socket_timeout=2) as client:
            while True:
                try:
                    client.ping()
                    return
                except redis.ConnectionError:
                    if time.monotonic() > deadline or self.procs[port].poll() is not None:
                        raise RuntimeError(f"redis-server on port {port} did not start") from None
                    time.sleep(0.05)

    def masters(self) -> list[int]:
        """Ports of the live masters, as the live nodes see them."""
        for port in self.live():
            with redis.Redis(port=port, socket_timeout=2) as client:
                nodes = client.cluster("nodes")
            return sorted(
                int(address.split(":")[1].split("@")[0])
                for address, node in nodes.items()
                if "master" in node["flags"] and "fail" not in node["flags"]
            )
        return []

    def live(self) -> list[int]:
        return [port for port, proc in self.procs.items() if proc.poll() is None]

    def wait_healthy(self) -> None:
        """Until every live node reports all slots served, three masters, and each master
        a replica in sync (so that a killed master can fail over)."""
        deadline = time.monotonic() + START_WAIT
        while not self._healthy():
            if time.monotonic() > deadline:
                raise RuntimeError("the Redis Cluster did not become healthy")
            time.sleep(0.1)

    def _healthy(self) -> bool:
        try:
            for port in self.live():
                with redis.Redis(port=port, socket_timeout=2) as client:
                    info = client.cluster("info")
                    if info["cluster_state"] != "ok" or int(info["cluster_slots_ok"]) != 16384:
                        return False
                    replication = client.info("replication")
                    if replication["role"] == "slave" and (
                        replication["master_link_status"] != "up"
                    ):
                        return False
                    # every slot range: its master and a replica, all three masters
                    ranges = client.execute_command("CLUSTER SLOTS")
                    if len(ranges) != NODES // 2 or any(len(r) < 4 for r in ranges):
                        return False
            return len(self.live()) == NODES
        except redis.RedisError:
            return False

    def master_of(self, key: str) -> int:
        """The port of the master that holds ``key``'s slot."""
        with RedisCluster(host="127.0.0.1", port=self.live()[0]) as client:
            return client.get_node_from_key(key).port

    def wait_replicated(self) -> None:
        """Until every replica has caught up with what its master had written when this
        was called (its offset then: a master's pings to its replicas move it on)."""
        deadline = time.monotonic() + START_WAIT
        for port in self.masters():
            with redis.Redis(port=port, socket_timeout=2) as client:
                written = client.info("replication")["master_repl_offset"]
                while True:
                    info = client.info("replication")
                    offsets = [
                        value["offset"]
                        for name, value in info.items()
                        if name.startswith("slave") and isinstance(value, dict)
                    ]
                    if offsets and min(offsets) >= written:
                        break
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"the replicas of {port} did not catch up")
                    time.sleep(0.05)

    def wait_failed_over(self) -> None:
        """Until a replica of each dead master has taken over: every slot served again."""
        deadline = time.monotonic() + START_WAIT
        while True:
            masters = self.masters()  # a dead master is listed until the others agree
            if (
                len(masters) == NODES // 2
                and set(masters) <= set(self.live())
                and all(self._state(port) == "ok" for port in self.live())
            ):
                return
            if time.monotonic() > deadline:
                raise RuntimeError("no replica took over from the killed master")
            time.sleep(0.1)

    @staticmethod
    def _state(port: int) -> str:
        try:
            with redis.Redis(port=port, socket_timeout=2) as client:
                return str(client.cluster("info")["cluster_state"])
        except redis.RedisError:
            return "unreachable"

    def flush(self) -> None:
        with RedisCluster(host="127.0.0.1", port=self.live()[0]) as client:
            client.flushall(target_nodes=RedisCluster.PRIMARIES)

    def kill(self, port: int) -> None:
        """SIGKILL the node on ``port``: no goodbye to its clients or peers."""
        proc = self.procs[port]
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
