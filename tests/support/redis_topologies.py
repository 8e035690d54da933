"""The Redis topologies operators run, made of Debian's `redis-server` on free ports: TLS
with a CA made here, a primary and replica watched by three Sentinels, and a Cluster of
three primaries (and their replicas, when asked) made by `redis-cli --cluster create`."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import redis
from redis.crc import key_slot

from .redis import RedisServer, running_redis
from .service import free_port

SENTINEL_SERVICE = "chatprimary"


# TLS -----------------------------------------------------------------------------------


def make_ca(directory: Path, name: str) -> tuple[Path, Path]:
    """A throwaway certificate authority: its certificate and key."""
    cert, key = directory / f"{name}.crt", directory / f"{name}.key"
    _openssl(
        "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", f"/CN={name}", "-keyout", str(key), "-out", str(cert),
    )  # fmt: skip
    return cert, key


def make_server_cert(directory: Path, ca: tuple[Path, Path]) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1, signed by `ca`."""
    cert, key, request = directory / "server.crt", directory / "server.key", directory / "s.csr"
    extensions = directory / "san.cnf"
    extensions.write_text("subjectAltName=IP:127.0.0.1\n")
    _openssl(
        "req", "-newkey", "rsa:2048", "-nodes", "-subj", "/CN=127.0.0.1",
        "-keyout", str(key), "-out", str(request),
    )  # fmt: skip
    _openssl(
        "x509", "-req", "-in", str(request), "-CA", str(ca[0]), "-CAkey", str(ca[1]),
        "-CAcreateserial", "-days", "2", "-out", str(cert), "-extfile", str(extensions),
    )  # fmt: skip
    return cert, key


def _openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True, timeout=60)


class TlsRedis:
    """redis-server speaking only TLS, with a certificate from `ca_file`'s CA; `other_ca`
    signed nothing it shows."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="chat-test-tls-"))
        ca = make_ca(self.dir, "test-ca")
        self.ca_file = str(ca[0])
        self.other_ca_file = str(make_ca(self.dir, "other-ca")[0])
        cert, key = make_server_cert(self.dir, ca)
        port = free_port()
        # fmt: off
        arguments = [
            "--port", "0", "--tls-port", str(port),
            "--tls-cert-file", str(cert), "--tls-key-file", str(key),
            "--tls-ca-cert-file", self.ca_file, "--tls-auth-clients", "no",
        ]
        # fmt: on
        self.server = RedisServer(arguments)
        self.server.port = port
        self.url = f"rediss://127.0.0.1:{port}/0"

    def start(self) -> None:
        self.server.start()

    def stop(self) -> None:
        self.server.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@contextmanager
def running_tls_redis() -> Iterator[TlsRedis]:
    tls = TlsRedis()
    tls.start()
    try:
        yield tls
    finally:
        tls.stop()


# Sentinel ------------------------------------------------------------------------------


class SentinelGroup:
    """A primary, a replica and three Sentinels that fail over after 1 s of silence."""

    def __init__(self) -> None:
        self.primary = RedisServer()
        self.replica: RedisServer | None = None
        self.sentinels: list[RedisServer] = []
        self.dir = Path(tempfile.mkdtemp(prefix="chat-test-sentinel-"))

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{SENTINEL_SERVICE}/0"

    def start(self) -> None:
        self.primary.start()
        self.replica = RedisServer(["--replicaof", "127.0.0.1", str(self.primary.port)])
        self.replica.start()
        _wait(lambda: _role_ok(self.replica), "the replica to sync")  # type: ignore[arg-type]
        for n in range(3):
            port = free_port()
            config = self.dir / f"sentinel-{n}.conf"
            config.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {self.dir}\n"
                f"sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {self.primary.port} 2\n"
                f"sentinel down-after-milliseconds {SENTINEL_SERVICE} 1000\n"
                f"sentinel failover-timeout {SENTINEL_SERVICE} 5000\n"
            )
            sentinel = _SentinelServer(config, port)
            sentinel.start()
            self.sentinels.append(sentinel)
        _wait(self._all_see_the_replica, "the sentinels to find the replica")

    def _all_see_the_replica(self) -> bool:
        for sentinel in self.sentinels:
            client = redis.Redis(port=sentinel.port, socket_timeout=1)
            try:
                replicas = client.sentinel_slaves(SENTINEL_SERVICE)
                peers = client.sentinel_sentinels(SENTINEL_SERVICE)
            except redis.RedisError:
                return False
            finally:
                client.close()
            if not replicas or len(peers) < 2:
                return False
        return True

    def primary_port(self) -> int:
        client = redis.Redis(port=self.sentinels[0].port, socket_timeout=1)
        try:
            _host, port = client.sentinel_get_master_addr_by_name(SENTINEL_SERVICE)
        finally:
            client.close()
        return int(port)

    def stop(self) -> None:
        for server in [*self.sentinels, self.replica, self.primary]:
            if server is not None:
                server.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class _SentinelServer(RedisServer):
    def __init__(self, config: Path, port: int) -> None:
        super().__init__(ready="Sentinel ID is")
        self.port = port
        self.config = config

    def command(self) -> list[str]:
        binary = shutil.which("redis-server") or "/usr/bin/redis-server"
        return [binary, str(self.config), "--sentinel"]


def _role_ok(server: RedisServer) -> bool:
    client = redis.Redis(port=server.port, socket_timeout=1)
    try:
        info = client.info("replication")
    finally:
        client.close()
    return info.get("master_link_status") == "up"


@contextmanager
def running_sentinel_group() -> Iterator[SentinelGroup]:
    group = SentinelGroup()
    try:
        group.start()
        yield group
    finally:
        group.stop()


# Cluster -------------------------------------------------------------------------------


class RedisCluster:
    """Three primaries, every slot assigned; with `replicas`, that many replicas of each,
    which take over a primary that has been silent for the node timeout."""

    def __init__(self, replicas: int = 0) -> None:
        cluster_mode = ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
        cluster_mode += ["--cluster-node-timeout", "1000" if replicas else "2000"]
        self.replicas = replicas
        # The bus port is explicit: the default (port + 10000) fails above 55535.
        self.nodes = [
            RedisServer([*cluster_mode, "--cluster-port", str(free_port())])
            for _ in range(3 * (1 + replicas))
        ]

    @property
    def url(self) -> str:
        return "redis+cluster://" + ",".join(f"127.0.0.1:{n.port}" for n in self.nodes)

    def start(self) -> None:
        for node in self.nodes:
            node.start()
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip
        _wait(self._ok, "the cluster to agree")

    def _ok(self) -> bool:
        for node in self.nodes:
            client = redis.Redis(port=node.port, socket_timeout=1)
            try:
                if client.cluster("info").get("cluster_state") != "ok":
                    return False
                info = client.info("replication")
                if info["role"] == "slave" and info.get("master_link_status") != "up":
                    return False  # a replica still syncing could not take over yet
            finally:
                client.close()
        return True

    def serving(self, key: str) -> RedisServer:
        """The node serving `key`'s slot, as the first live node sees it."""
        slot = key_slot(key.encode())
        for node in self.nodes:
            if node.proc is None or node.proc.poll() is not None:
                continue
            client = redis.Redis(port=node.port, socket_timeout=1)
            try:
                for start, end, primary, *_ in client.execute_command("CLUSTER SLOTS"):
                    if start <= slot <= end:
                        return next(n for n in self.nodes if n.port == int(primary[1]))
            finally:
                client.close()
        raise LookupError(f"no live node knows slot {slot}")

    def client(self) -> redis.RedisCluster:
        return redis.RedisCluster(host="127.0.0.1", port=self.nodes[0].port)

    def keys(self, pattern: str) -> list[bytes]:
        """From every node."""
        return [key for node in self.nodes for key in node.keys(pattern)]

    def freeze(self) -> None:
        for node in self.nodes:
            node.freeze()

    def thaw(self) -> None:
        for node in self.nodes:
            node.thaw()

    def flush(self) -> None:
        """Every node emptied, so a test starts from nothing."""
        for node in self.nodes:
            client = redis.Redis(port=node.port, socket_timeout=5)
            try:
                client.flushall()
            finally:
                client.close()

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


@contextmanager
def running_cluster(replicas: int = 0) -> Iterator[RedisCluster]:
    cluster = RedisCluster(replicas)
    with ExitStack() as stack:
        stack.callback(cluster.stop)
        cluster.start()
        yield cluster


@contextmanager
def redis_of_kind(request: Any, kind: str) -> Iterator[RedisServer | RedisCluster | None]:
    """For a test parametrised by where state lives: None for "memory", a redis-server of
    its own for "redis", the session's Cluster (its `cluster` fixture), emptied, for
    "cluster". `request` is the test's pytest request."""
    if kind == "memory":
        yield None
    elif kind == "cluster":
        cluster: RedisCluster = request.getfixturevalue("cluster")
        cluster.flush()
        yield cluster
    else:
        with running_redis() as server:
            yield server


def _wait(ready: object, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if ready():  # type: ignore[operator]
                return
        except redis.RedisError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.1)
