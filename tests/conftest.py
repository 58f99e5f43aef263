"""Fixtures shared by the whole suite.

Every pytest process (each xdist worker too) starts one private redis-server
(``redis_server``) and empties it before each test that asks for ``redis_url``
or a client. ``counted`` gives a client that counts round trips exactly, and
``make_server`` starts extra servers (sentinels, cluster nodes, ...) that are
stopped when the test ends.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pytest
import redis
from redis.connection import (
    Connection,
    SSLConnection,
    UnixDomainSocketConnection,
)

from hashsession import SessionStore
from hashsession.embedded import EmbeddedRedis

# -- the shared server -----------------------------------------------------


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """One embedded redis-server per pytest process, stopped at the end of the session."""
    server = EmbeddedRedis().start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    """URL of the shared server, emptied (FLUSHALL) before the test."""
    admin = redis_server.client()
    try:
        admin.flushall()
    finally:
        admin.close()
    return redis_server.url


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[redis.Redis]:
    """A plain client (bytes responses) on the emptied shared server."""
    client = redis.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        client.close()


# -- counting round trips --------------------------------------------------

_ConnectionClass = type[Connection | UnixDomainSocketConnection]


def _wire_command_names(packed: object) -> list[str]:
    """Names (upper-case) of the commands in one packed RESP write."""
    if isinstance(packed, str):
        data = packed.encode()
    elif isinstance(packed, (bytes, bytearray, memoryview)):
        data = bytes(packed)
    else:
        data = b"".join(bytes(chunk) for chunk in packed)  # type: ignore[attr-defined]
    names: list[str] = []
    pos = 0
    while pos < len(data):
        if data[pos : pos + 1] != b"*":
            raise AssertionError(f"unexpected bytes on the wire at {pos}: {data[pos : pos + 40]!r}")
        end = data.index(b"\r\n", pos)
        count = int(data[pos + 1 : end])
        pos = end + 2
        for index in range(count):
            end = data.index(b"\r\n", pos)
            length = int(data[pos + 1 : end])
            pos = end + 2
            if index == 0:
                names.append(data[pos : pos + length].decode("utf-8", "replace").upper())
            pos += length + 2
    return names


class Counted:
    """A client whose every write to Redis is recorded.

    One call of ``send_packed_command`` is one round trip: a single command, or a
    whole pipeline (MULTI/EXEC included). The handshake a new connection makes
    (HELLO, CLIENT SETINFO, SELECT, ...) is not counted, so results do not depend
    on whether the pool already had a connection.

    ``count`` is the number of round trips since the last ``reset()``,
    ``commands`` the command names sent (upper-case, in order) and ``batches``
    the same names grouped by round trip.
    """

    def __init__(self, url: str, **kwargs: Any) -> None:
        self.count = 0
        self.batches: list[list[str]] = []
        self._lock = threading.Lock()
        base: _ConnectionClass = Connection
        if url.startswith("unix://"):
            base = UnixDomainSocketConnection
        elif url.startswith("rediss://"):
            base = SSLConnection
        self.client: redis.Redis = redis.Redis.from_url(
            url, connection_class=self._connection_class(base), **kwargs
        )

    def _connection_class(self, base: _ConnectionClass) -> _ConnectionClass:
        recorder = self

        class CountingConnection(base):  # type: ignore[valid-type,misc]
            _handshaking = 0

            def connect_check_health(self, *args: Any, **kwargs: Any) -> Any:
                self._handshaking += 1
                try:
                    return super().connect_check_health(*args, **kwargs)
                finally:
                    self._handshaking -= 1

            def send_packed_command(self, command: Any, check_health: bool = True) -> None:
                if not self._handshaking:
                    recorder._record(_wire_command_names(command))
                super().send_packed_command(command, check_health)

        return CountingConnection

    def _record(self, names: list[str]) -> None:
        with self._lock:
            self.count += 1
            self.batches.append(names)

    @property
    def commands(self) -> list[str]:
        with self._lock:
            return [name for batch in self.batches for name in batch]

    def reset(self) -> None:
        with self._lock:
            self.count = 0
            self.batches = []

    def describe(self) -> str:
        with self._lock:
            batches = list(self.batches)
        if not batches:
            return "no round trips"
        return "; ".join(f"#{n}: {' '.join(batch)}" for n, batch in enumerate(batches, 1))

    @contextmanager
    def expect(self, n: int) -> Iterator[Counted]:
        """Reset, run the block, then assert it made exactly ``n`` round trips."""
        self.reset()
        yield self
        assert self.count == n, f"expected {n} round trip(s), got {self.count}: {self.describe()}"

    def close(self) -> None:
        self.client.close()


@pytest.fixture
def counted(redis_url: str) -> Iterator[Counted]:
    """A :class:`Counted` client on the emptied shared server."""
    recorder = Counted(redis_url)
    try:
        yield recorder
    finally:
        recorder.close()


# -- extra servers ---------------------------------------------------------


@pytest.fixture
def make_server() -> Iterator[Callable[..., EmbeddedRedis]]:
    """Factory: ``make_server(*args, **kwargs)`` starts ``EmbeddedRedis(args=args, **kwargs)``.

    Every server it started is stopped when the test ends.
    """
    servers: list[EmbeddedRedis] = []

    def make(*args: str, **kwargs: Any) -> EmbeddedRedis:
        extra = tuple(kwargs.pop("args", ()))
        server = EmbeddedRedis(args=(*args, *extra), **kwargs)
        servers.append(server)
        return server.start()

    try:
        yield make
    finally:
        for server in reversed(servers):
            server.stop()


StoreFactory = Callable[..., SessionStore]


@pytest.fixture
def make_store(redis_url: str) -> Iterator[StoreFactory]:
    """Build sync stores on the test's server (ttl 100 s unless given); closed afterwards."""
    stores: list[SessionStore] = []

    def make(**kwargs: Any) -> SessionStore:
        kwargs.setdefault("redis", redis_url)
        kwargs.setdefault("ttl", 100)
        store = SessionStore(**kwargs)
        stores.append(store)
        return store

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def store(make_store: StoreFactory) -> SessionStore:
    """A sync store with the default settings and a 100 s idle timeout."""
    return make_store()


# == topologies: Sentinel and Cluster =======================================
# Added for issue 7 (see tests/topologies.py and docs/topologies.md); nothing above
# changes. `sentinel_setup` and `cluster_setup` start each deployment once per pytest
# process, only when a test asks for it. `topology` runs a test once per topology;
# `topology_url` is that topology's URL, emptied before the test, and
# `topology_client` a plain client that sees all of it.
#
# HASHSESSION_TOPOLOGY=sentinel (or cluster) re-points the suite's `redis_url`,
# `redis_client` and `counted` at that topology, so the whole suite can be run on it;
# unset (or "standalone"), the fixtures above are the ones in force.

from topologies import (  # noqa: E402
    TOPOLOGIES,
    ClusterSetup,
    SentinelSetup,
    admin_client,
    start_cluster,
    start_sentinel,
    topology_from_env,
)

TOPOLOGY = topology_from_env()


@pytest.fixture(scope="session")
def sentinel_setup() -> Iterator[SentinelSetup]:
    """One master, one replica and three sentinels for this pytest process."""
    setup = start_sentinel()
    try:
        yield setup
    finally:
        setup.stop()


@pytest.fixture(scope="session")
def cluster_setup() -> Iterator[ClusterSetup]:
    """A cluster of three masters with one replica each for this pytest process."""
    setup = start_cluster()
    try:
        yield setup
    finally:
        setup.stop()


Deployment = EmbeddedRedis | SentinelSetup | ClusterSetup


def _deployment(request: pytest.FixtureRequest, topology: str) -> Deployment:
    """The running deployment of ``topology`` (started on first use)."""
    fixture = {"standalone": "redis_server", "sentinel": "sentinel_setup"}
    deployment: Deployment = request.getfixturevalue(fixture.get(topology, "cluster_setup"))
    return deployment


def _emptied_url(deployment: Deployment) -> str:
    if isinstance(deployment, EmbeddedRedis):
        admin = deployment.client()
        try:
            admin.flushall()
        finally:
            admin.close()
    else:
        deployment.flushall()
    return deployment.url


@pytest.fixture(params=TOPOLOGIES)
def topology(request: pytest.FixtureRequest) -> str:
    """Each topology in turn: standalone, sentinel, cluster."""
    name: str = request.param
    return name


@pytest.fixture
def topology_deployment(request: pytest.FixtureRequest, topology: str) -> Deployment:
    """The servers of the topology under test: an EmbeddedRedis, SentinelSetup or ClusterSetup."""
    return _deployment(request, topology)


@pytest.fixture
def topology_url(topology_deployment: Deployment) -> str:
    """URL of the topology under test, emptied (every master) before the test."""
    return _emptied_url(topology_deployment)


@pytest.fixture
def topology_client(
    topology: str, topology_deployment: Deployment, topology_url: str
) -> Iterator[Any]:
    """A plain client on the topology under test (on a cluster, KEYS asks every master)."""
    client = admin_client(topology, topology_deployment)
    try:
        yield client
    finally:
        client.close()


class CountedCluster(Counted):
    """:class:`Counted` over a ``RedisCluster``: one send to one node is one round trip."""

    def __init__(self, setup: ClusterSetup) -> None:
        from redis.cluster import ClusterNode, RedisCluster

        self.count = 0
        self.batches = []
        self._lock = threading.Lock()
        first, *others = setup.masters
        # Only a cluster client made from a URL passes connection_class on to its nodes.
        self.client = RedisCluster(  # type: ignore[assignment]
            url=first.url,
            startup_nodes=[ClusterNode("127.0.0.1", server.port) for server in others],
            connection_class=self._connection_class(Connection),
        )


def _env_redis_url(request: pytest.FixtureRequest) -> str:
    return _emptied_url(_deployment(request, TOPOLOGY))


def _env_redis_client(request: pytest.FixtureRequest, redis_url: str) -> Iterator[Any]:
    client = admin_client(TOPOLOGY, _deployment(request, TOPOLOGY))
    try:
        yield client
    finally:
        client.close()


def _env_counted(request: pytest.FixtureRequest, redis_url: str) -> Iterator[Counted]:
    deployment = _deployment(request, TOPOLOGY)
    if isinstance(deployment, ClusterSetup):
        recorder: Counted = CountedCluster(deployment)
    else:
        assert isinstance(deployment, SentinelSetup)
        recorder = Counted(deployment.master().url)
    try:
        yield recorder
    finally:
        recorder.close()


if TOPOLOGY != "standalone":
    # Rebinding the names replaces the standalone fixtures for this run.
    redis_url = pytest.fixture(_env_redis_url, name="redis_url")
    redis_client = pytest.fixture(_env_redis_client, name="redis_client")
    counted = pytest.fixture(_env_counted, name="counted")
