"""Fixtures shared by the whole suite.

Every pytest process (each xdist worker too) starts, the first time a test asks
for it, one private redis-server (``redis_server``), one Sentinel deployment (one
master, one replica, three sentinels: ``sentinel_setup``) and one Cluster (three
masters, three replicas: ``cluster_setup``); see ``tests/topologies.py``.

``redis_url`` (emptied before the test), ``redis_client`` (a plain client that
sees all of it) and ``counted`` (exact round-trip counting) point at the
standalone server. In a module marked ``pytestmark = pytest.mark.all_topologies``
(the core behaviour suite) every test using them runs once per topology, with
ids ending in ``[standalone]``, ``[sentinel]`` and ``[cluster]``, unless it is
marked ``standalone_only``. Tests that choose topologies themselves use
``topology`` (parametrized) and ``topology_url``/``topology_client`` instead.
``make_server`` starts extra servers that are stopped when the test ends.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from counting import Counted
from counting import CountedCluster as CountedCluster  # tests import it from here
from hashsession import SessionStore
from hashsession.embedded import EmbeddedRedis, server_binary
from topologies import (
    TOPOLOGIES,
    ClusterSetup,
    SentinelSetup,
    admin_client,
    start_cluster,
    start_sentinel,
)

# A store with no `redis` setting shares a development server per project
# (hashsession.devserver); the suite's processes keep theirs apart from the developer's.
os.environ.setdefault("HASHSESSION_DEV_DIR", tempfile.mkdtemp(prefix="hashsession-dev-"))

Deployment = EmbeddedRedis | SentinelSetup | ClusterSetup
StoreFactory = Callable[..., SessionStore]


# -- markers ---------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "all_topologies: run each test that uses redis_url, redis_client or counted "
        "on standalone, Sentinel and Cluster",
    )
    config.addinivalue_line(
        "markers", "standalone_only: in an all_topologies module, run on standalone only"
    )


def pytest_report_header(config: pytest.Config) -> str:
    """Name the server binary every fixture starts (``HASHSESSION_SERVER``), in the log."""
    binary = server_binary()
    version = subprocess.run(
        [binary, "--version"], capture_output=True, text=True, check=False, timeout=30
    ).stdout.strip()
    return f"server: {binary}: {version}"


@pytest.hookimpl(trylast=True)  # after @parametrize, so the topology ends the test id
def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    test = metafunc.definition
    if (
        "redis_topology" in metafunc.fixturenames
        and test.get_closest_marker("all_topologies")
        and not test.get_closest_marker("standalone_only")
    ):
        metafunc.parametrize("redis_topology", TOPOLOGIES, indirect=True)


# -- deployments -----------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server() -> Iterator[EmbeddedRedis]:
    """One embedded redis-server per pytest process, stopped at the end of the session."""
    server = EmbeddedRedis().start()
    try:
        yield server
    finally:
        server.stop()


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


def _deployment(request: pytest.FixtureRequest, topology: str) -> Deployment:
    """The running deployment of ``topology`` (started on first use)."""
    fixture = {"standalone": "redis_server", "sentinel": "sentinel_setup"}
    deployment: Deployment = request.getfixturevalue(fixture.get(topology, "cluster_setup"))
    return deployment


def _emptied_url(deployment: Deployment) -> str:
    """The deployment's URL, after FLUSHALL on its server or every master."""
    if isinstance(deployment, EmbeddedRedis):
        admin = deployment.client()
        try:
            admin.flushall()
        finally:
            admin.close()
    else:
        deployment.flushall()
    return deployment.url


# -- the suite's server: standalone, or each topology in turn -----------------


@pytest.fixture
def redis_topology(request: pytest.FixtureRequest) -> str:
    """Where ``redis_url`` points: ``standalone``, or the parameter of an all_topologies test."""
    name: str = getattr(request, "param", "standalone")
    return name


@pytest.fixture
def redis_deployment(request: pytest.FixtureRequest, redis_topology: str) -> Deployment:
    """The servers behind ``redis_url``: an EmbeddedRedis, SentinelSetup or ClusterSetup."""
    return _deployment(request, redis_topology)


@pytest.fixture
def redis_url(redis_deployment: Deployment) -> str:
    """URL of the test's deployment (``redis://``, ``redis+sentinel://`` or
    ``redis+cluster://``), emptied before the test."""
    return _emptied_url(redis_deployment)


@pytest.fixture
def redis_client(
    redis_topology: str, redis_deployment: Deployment, redis_url: str
) -> Iterator[Any]:
    """A plain client (bytes responses) that sees the whole emptied deployment.

    On Sentinel it talks to the master; on a cluster KEYS, DBSIZE and SCAN ask
    every master.
    """
    client = admin_client(redis_topology, redis_deployment)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
def counted(redis_url: str) -> Iterator[Counted]:
    """A :class:`Counted` client of the kind a store makes from ``redis_url``."""
    recorder = Counted(redis_url)
    try:
        yield recorder
    finally:
        recorder.close()


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


# -- topologies chosen by the test ---------------------------------------------


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


@pytest.fixture(scope="module")
def private_sentinel() -> Iterator[SentinelSetup]:
    """A Sentinel deployment of the test module's own, for tests that fail it over."""
    setup = start_sentinel()
    try:
        yield setup
    finally:
        setup.stop()
