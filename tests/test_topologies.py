"""Sessions on one server, on Sentinel and on Redis Cluster, sync and asyncio.

The URL forms are checked without a server. The behaviour tests run once per
topology (the ``topology`` fixture): standalone, Sentinel (one master, one
replica, three sentinels) and Cluster (three masters, three replicas), all
started from the embedded binary by ``tests/topologies.py``. After each of them,
every key left in Redis must carry a TTL.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot
from redis.sentinel import Sentinel

from conftest import Counted, CountedCluster
from hashsession import (
    MISSING,
    BackendError,
    ConfigurationError,
    LimitExceededError,
    Session,
    SessionStore,
)
from hashsession.aio import AsyncSession, AsyncSessionStore
from hashsession.compat import drsession
from hashsession.embedded import EmbeddedRedis, free_port
from hashsession.scripts import CREATE, EVERY, LIVE, OPEN
from hashsession.topology import async_client, is_cluster, parse, sync_client
from topologies import HOST, ClusterSetup, SentinelSetup, wait_for

# --------------------------------------------------------------------------- URL forms


def test_plain_urls_are_standalone() -> None:
    for url in ("redis://h:1/0", "rediss://h", "unix:///tmp/r.sock?db=2", "REDIS://h"):
        topology = parse(url)
        assert topology.kind == "standalone"
        assert topology.url == url
        assert topology.nodes == ()


def test_sentinel_url() -> None:
    topology = parse(
        "redis+sentinel://user:p%40ss@s1:26380,s2,[::1]:26381/my-master/3"
        "?socket_timeout=0.5&sentinel_password=sp&client_name=web"
    )
    assert topology.kind == "sentinel"
    assert topology.nodes == (("s1", 26380), ("s2", 26379), ("::1", 26381))
    assert topology.service == "my-master"
    assert topology.options == {
        "username": "user",
        "password": "p@ss",
        "db": 3,
        "socket_timeout": 0.5,
        "client_name": "web",
    }
    # Sentinels get the socket options and their own password, never the master's.
    assert topology.sentinel_options == {"socket_timeout": 0.5, "password": "sp"}


def test_sentinel_url_defaults_and_tls() -> None:
    topology = parse("rediss+sentinel://:secret@s1/svc?ssl_cert_reqs=none")
    assert topology.nodes == (("s1", 26379),)
    assert topology.options == {"password": "secret", "ssl": True, "ssl_cert_reqs": "none"}
    assert topology.sentinel_options == {"ssl": True, "ssl_cert_reqs": "none"}


def test_cluster_url() -> None:
    topology = parse("redis+cluster://:pw@n1:7000,n2:7001,n3?socket_connect_timeout=2")
    assert topology.kind == "cluster"
    assert topology.nodes == (("n1", 7000), ("n2", 7001), ("n3", 6379))
    assert topology.service is None
    assert topology.options == {"password": "pw", "socket_connect_timeout": 2.0}
    assert parse("rediss+cluster://n1:7000/0").options == {"ssl": True}


@pytest.mark.parametrize(
    ("url", "complaint"),
    [
        ("http://h:1", "scheme"),
        ("h:6379", "scheme"),
        ("redis+sentinel:///svc", "at least one host"),
        ("redis+sentinel://s1:26379", "service_name"),
        ("redis+sentinel://s1:26379/svc/0/extra", "service_name"),
        ("redis+sentinel://s1:26379/svc/zero", "not a number"),
        ("redis+sentinel://s1:99999/svc", "1 to 65535"),
        ("redis+sentinel://s1:port/svc", "1 to 65535"),
        ("redis+cluster://n1,,n2", "host is missing"),
        ("redis+cluster://n1:7000/1", "only database 0"),
        ("redis+cluster://n1:7000?db=2", "only database 0"),
        ("redis+cluster://n1:7000?socket_timeout=soon", "socket_timeout"),
        ("redis://h:1/0?socket_timeout=soon", "socket_timeout"),
    ],
)
def test_bad_urls_name_the_setting(url: str, complaint: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        SessionStore(redis=url)
    assert caught.value.setting == "redis"
    assert complaint in str(caught.value)
    with pytest.raises(ConfigurationError, match=complaint):
        AsyncSessionStore(redis=url)


def test_a_password_never_shows_in_errors_or_reprs() -> None:
    with pytest.raises(ConfigurationError) as caught:
        SessionStore(redis="redis+cluster://:hunter2@n1:7000/5")
    assert "hunter2" not in str(caught.value)
    assert "hunter2" not in repr(parse("redis+sentinel://:hunter2@s1/svc"))


def test_an_unreachable_cluster_is_a_backend_error() -> None:
    url = f"redis+cluster://{HOST}:{free_port()}?socket_connect_timeout=0.2"
    with pytest.raises(BackendError) as caught:
        SessionStore(redis=url)  # a sync cluster client reads the slot map at once
    assert caught.value.__cause__ is not None
    AsyncSessionStore(redis=url)  # an asyncio one waits for its first command


# --------------------------------------------------------------------------- clients


def test_each_url_gets_its_kind_of_client(
    sentinel_setup: SentinelSetup, cluster_setup: ClusterSetup, redis_server: EmbeddedRedis
) -> None:
    standalone = sync_client(redis_server.url)
    assert type(standalone.connection_pool) is redis.ConnectionPool
    assert standalone.connection_pool.max_connections == 10_000
    sentinel = sync_client(sentinel_setup.url)
    assert isinstance(sentinel, redis.Redis)
    assert sentinel.connection_pool.service_name == sentinel_setup.service  # type: ignore[attr-defined]
    assert sentinel.ping() is True
    cluster = sync_client(cluster_setup.url)
    assert is_cluster(cluster)
    assert len(cluster.get_primaries()) == 3  # type: ignore[union-attr]
    assert not is_cluster(sentinel)
    for client in (standalone, sentinel, cluster):
        client.close()


async def test_each_url_gets_its_kind_of_async_client(
    sentinel_setup: SentinelSetup, cluster_setup: ClusterSetup, redis_server: EmbeddedRedis
) -> None:
    standalone = async_client(redis_server.url)
    assert type(standalone.connection_pool) is aioredis.ConnectionPool  # type: ignore[union-attr]
    sentinel = async_client(sentinel_setup.url)
    assert await sentinel.ping() is True
    cluster = async_client(cluster_setup.url)
    assert isinstance(cluster, AsyncRedisCluster)
    assert await cluster.ping() is True
    for client in (standalone, sentinel, cluster):
        await client.aclose()


def test_ready_sentinel_and_cluster_clients_are_taken(
    sentinel_setup: SentinelSetup, cluster_setup: ClusterSetup
) -> None:
    sentinels = Sentinel([(HOST, s.port) for s in sentinel_setup.sentinels])
    master = sentinels.master_for(sentinel_setup.service)
    cluster = RedisCluster(startup_nodes=[ClusterNode(HOST, s.port) for s in cluster_setup.masters])
    for client in (master, cluster):
        store = SessionStore(redis=client, ttl=100)
        assert store.client is client
        session = store.open()
        session["who"] = "ready client"
        again = store.open_id(store.config.cookie_value(session.id or ""))
        assert again["who"] == "ready client"
        again.invalidate()
        store.close()


@pytest.mark.parametrize("topology", ["sentinel", "cluster"])
def test_clients_decoding_responses_are_refused(
    topology: str, sentinel_setup: SentinelSetup, cluster_setup: ClusterSetup
) -> None:
    client: Any
    if topology == "sentinel":
        sentinels = Sentinel([(HOST, s.port) for s in sentinel_setup.sentinels])
        client = sentinels.master_for(sentinel_setup.service, decode_responses=True)
    else:
        nodes = [ClusterNode(HOST, s.port) for s in cluster_setup.masters]
        client = RedisCluster(startup_nodes=nodes, decode_responses=True)
    with pytest.raises(ConfigurationError, match="decode_responses"):
        SessionStore(redis=client)
    client.close()
    url = (sentinel_setup if topology == "sentinel" else cluster_setup).url
    with pytest.raises(ConfigurationError, match="decode_responses"):
        SessionStore(redis=url + "?decode_responses=True")


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def admin(topology_client: Any) -> Iterator[Any]:
    """The topology's plain client; afterwards, every key left must have a TTL."""
    yield topology_client
    for key in topology_client.scan_iter():
        assert topology_client.pttl(key) > 0, f"{key!r} was left without a TTL"


@pytest.fixture
def store(topology_url: str, admin: Any) -> Iterator[SessionStore]:
    made = SessionStore(redis=topology_url, ttl=100)
    yield made
    made.close()


@pytest.fixture
async def astore(topology_url: str, admin: Any) -> AsyncIterator[AsyncSessionStore]:
    made = AsyncSessionStore(redis=topology_url, ttl=100)
    yield made
    await made.aclose()


def reopen(store: SessionStore, session: Session) -> Session:
    """The same session as the next request sees it."""
    assert session.id is not None
    return store.open_id(store.config.cookie_value(session.id))


def areopen(store: AsyncSessionStore, session: AsyncSession) -> AsyncSession:
    assert session.id is not None
    return store.open_id(store.config.cookie_value(session.id))


def key_of(store: SessionStore | AsyncSessionStore, session: Session | AsyncSession) -> str:
    assert session.id is not None
    return store.config.key_of(session.id)


# ------------------------------------------------------------------ behaviour, sync


def test_first_write_creates_the_session(store: SessionStore, admin: Any) -> None:
    session = store.open()
    assert session.get("a") is None  # a brand-new session costs nothing to read
    assert admin.keys() == []
    session["a"] = 1
    assert session.new is True
    key = key_of(store, session)
    assert admin.keys() == [key.encode()]
    assert 0 < admin.pttl(key) <= 100_000


def test_mapping_operations(store: SessionStore) -> None:
    session = store.open()
    session["a"] = 1
    session.set("b", "two")
    session.update({"c": [1, 2]}, d={"x": None})
    later = reopen(store, session)
    assert later["a"] == 1
    assert "b" in later
    assert "zz" not in later
    assert len(later) == 4
    assert sorted(later) == ["a", "b", "c", "d"]
    assert dict(later.items()) == {"a": 1, "b": "two", "c": [1, 2], "d": {"x": None}}
    assert later.get_many("a", "zz", "c") == [1, None, [1, 2]]
    del later["a"]
    assert later.delete("a") is False
    assert dict(reopen(store, session)) == {"b": "two", "c": [1, 2], "d": {"x": None}}


def test_atomic_operations(store: SessionStore) -> None:
    session = store.open()
    assert session.incr("n") == 1
    later = reopen(store, session)
    assert later.incr("n", 4) == 5
    assert later.incr_float("f", 0.5) == 0.5
    assert later.setdefault("s", "first") == "first"
    assert later.setdefault("s", "second") == "first"
    assert later.pop("s") == "first"
    assert later.pop("s", "gone") == "gone"
    assert later.compare_and_set({"n": 5}, {"n": 6, "m": "new"}) is True
    assert later.compare_and_set({"n": 5}, {"n": 7}) is False
    assert later.compare_and_set({"m": "new", "absent": MISSING}, {"m": MISSING}) is True
    assert dict(reopen(store, session)) == {"n": 6, "f": 0.5}
    later.clear()
    assert dict(reopen(store, session)) == {}
    assert later.id is None  # clear ends the session


def test_edit_apply_and_metadata(store: SessionStore) -> None:
    session = store.open()
    with session.edit("cart", []) as cart:
        cart.append(1)
    with reopen(store, session).edit("cart", []) as cart:
        cart.append(2)
    assert reopen(store, session).apply("cart", lambda c: [*c, 3]) == [1, 2, 3]
    session.meta_set("owner", "ann")
    assert session.meta_push("flash", "hi") is True
    assert session.meta_push("flash", "hi", unique=True) is False
    later = reopen(store, session)
    assert later["cart"] == [1, 2, 3]
    assert later.meta_get("owner") == "ann"
    assert len(later) == 1  # metadata is hidden


def test_limits_hold(topology_url: str, admin: Any) -> None:
    store = SessionStore(redis=topology_url, ttl=100, max_keys=2)
    session = store.open()
    session.update(a=1, b=2)
    with pytest.raises(LimitExceededError):
        reopen(store, session)["c"] = 3
    assert dict(reopen(store, session)) == {"a": 1, "b": 2}
    store.close()


def test_touch_and_adjust_timeout(store: SessionStore, admin: Any) -> None:
    session = store.open()
    session["a"] = 1
    key = key_of(store, session)
    admin.pexpire(key, 5_000)
    reopen(store, session).touch()
    assert admin.pttl(key) > 90_000
    reopen(store, session).adjust_timeout(1000)
    assert 500_000 < admin.pttl(key) <= 1_000_000
    reopen(store, session)["b"] = 2  # the session's own timeout sticks
    assert admin.pttl(key) > 500_000


def test_regenerate_moves_the_data_within_one_slot(store: SessionStore, admin: Any) -> None:
    session = store.open()
    session.update(a=1, b=[2])
    old_id, old_key = session.id, key_of(store, session)
    later = reopen(store, session)
    later.regenerate()  # the request's first command
    later.regenerate()  # and a live one
    assert later.id != old_id
    new_key = key_of(store, later)
    assert admin.keys() == [new_key.encode()]
    if is_cluster(admin):
        assert admin.keyslot(old_key) == admin.keyslot(new_key)
    assert dict(reopen(store, later)) == {"a": 1, "b": [2]}
    stale = store.open_id(store.config.cookie_value(old_id or ""))
    assert stale.get("a") is None
    assert admin.pttl(new_key) > 90_000


def test_invalidate_and_expiry_start_afresh(store: SessionStore, admin: Any) -> None:
    session = store.open()
    session["a"] = 1
    first_id = session.id
    session.invalidate()
    assert admin.keys() == []
    session["b"] = 2
    assert session.id not in (None, first_id)
    key = key_of(store, session)
    admin.pexpire(key, 1)
    wait_for("the session to expire", lambda: not admin.exists(key), timeout=5)
    later = reopen(store, session)
    later["c"] = 3  # a write after expiry never resurrects the old id
    assert later.id != session.id
    assert dict(reopen(store, later)) == {"c": 3}
    assert admin.keys() == [key_of(store, later).encode()]


def test_noscript_falls_back_to_eval(store: SessionStore, admin: Any) -> None:
    session = store.open()
    session["a"] = 1
    admin.script_flush()  # on a cluster: every master
    assert admin.script_exists(CREATE.sha, OPEN.sha, LIVE["set"].sha) == [False] * 3
    later = reopen(store, session)
    later["b"] = 2  # OPEN meets NOSCRIPT, then runs as EVAL
    later["c"] = 3  # the live "set" script, the same
    fresh = store.open()
    fresh["x"] = 0  # CREATE, on whichever node owns the new key
    assert dict(reopen(store, session)) == {"a": 1, "b": 2, "c": 3}
    assert reopen(store, fresh)["x"] == 0


def test_concurrent_writes_from_threads(store: SessionStore) -> None:
    session = store.open()
    session["n"] = 0
    cookie = store.config.cookie_value(session.id or "")
    errors: list[BaseException] = []

    def worker(index: int) -> None:
        try:
            for step in range(20):
                mine = store.open_id(cookie)
                mine.incr("n")
                mine[f"t{index}-{step}"] = step
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    data = dict(reopen(store, session))
    assert data["n"] == 160
    assert len(data) == 161


def test_a_burst_of_threads_waits_for_connections(store: SessionStore) -> None:
    """More threads than redis-py's default pool size (100) at once: none fails."""
    session = store.open()
    session["n"] = 0
    cookie = store.config.cookie_value(session.id or "")
    barrier = threading.Barrier(150)
    errors: list[BaseException] = []

    def bump() -> None:
        barrier.wait()
        try:
            store.open_id(cookie).incr("n")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=bump) for _ in range(150)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert reopen(store, session)["n"] == 150


@pytest.mark.parametrize("topology", ["cluster"])
def test_sessions_spread_over_every_master(
    store: SessionStore, cluster_setup: ClusterSetup
) -> None:
    for n in range(30):
        store.open()["n"] = n
    per_master = []
    for server in cluster_setup.masters:
        client = server.client()
        per_master.append(client.dbsize())
        client.close()
    assert sum(per_master) == 30
    assert all(per_master), per_master


@pytest.fixture
def topology_counted(topology_deployment: Any, topology_url: str) -> Iterator[Counted]:
    """Counts round trips on the topology under test (on Sentinel: at the master)."""
    deployment = topology_deployment
    if isinstance(deployment, ClusterSetup):
        recorder: Counted = CountedCluster(deployment)
    elif isinstance(deployment, SentinelSetup):
        recorder = Counted(deployment.master().url)
    else:
        recorder = Counted(deployment.url)
    for script in EVERY:
        recorder.client.script_load(script.source)
    yield recorder
    recorder.close()


def test_round_trip_budget_holds(topology_counted: Counted, admin: Any) -> None:
    store = SessionStore(redis=topology_counted.client, ttl=100)
    with topology_counted.expect(1):
        session = store.open()
        session.update(a=1, b=2)
    with topology_counted.expect(0):
        later = reopen(store, session)
        assert later.accessed is False
    with topology_counted.expect(3):
        assert later["a"] == 1
        later["c"] = 3
        assert later.incr("a") == 2
    with topology_counted.expect(1):
        assert dict(reopen(store, session)) == {"a": 2, "b": 2, "c": 3}
    with topology_counted.expect(1):
        reopen(store, session).regenerate()


# ---------------------------------------------------------------- behaviour, asyncio


async def test_async_operations(astore: AsyncSessionStore, admin: Any) -> None:
    session = astore.open()
    assert await session.get("a") is None
    await session.set("a", 1)
    await session.update({"b": "two"}, c=[1])
    later = areopen(astore, session)
    assert await later.has("a") is True
    assert await later.length() == 3
    assert sorted(await later.keys()) == ["a", "b", "c"]
    assert await later.incr("a", 2) == 3
    assert await later.incr_float("f", 1.5) == 1.5
    assert await later.setdefault("s", 1) == 1
    assert await later.pop("s") == 1
    assert await later.delete("b") is True
    assert await later.compare_and_set({"a": 3}, {"a": 4}) is True
    async with later.edit("c", []) as c:
        c.append(2)
    assert await areopen(astore, session).to_dict() == {"a": 4, "c": [1, 2], "f": 1.5}
    await later.touch(500)
    assert admin.pttl(key_of(astore, later)) > 400_000
    await later.clear()
    assert await areopen(astore, session).to_dict() == {}


async def test_async_regenerate_invalidate_and_expiry(
    astore: AsyncSessionStore, admin: Any
) -> None:
    session = astore.open()
    await session.set("a", 1)
    old_id = session.id
    later = areopen(astore, session)
    await later.regenerate()
    assert later.id != old_id
    assert admin.keys() == [key_of(astore, later).encode()]
    assert await areopen(astore, later).get("a") == 1
    key = key_of(astore, later)
    admin.pexpire(key, 1)
    wait_for("the session to expire", lambda: not admin.exists(key), timeout=5)
    after = areopen(astore, later)
    await after.set("b", 2)
    assert after.id != later.id
    await after.invalidate()
    assert admin.keys() == []


async def test_async_noscript_and_concurrent_tasks(astore: AsyncSessionStore, admin: Any) -> None:
    session = astore.open()
    await session.set("n", 0)
    admin.script_flush()
    cookie = astore.config.cookie_value(session.id or "")

    async def worker(index: int) -> None:
        for step in range(10):
            mine = astore.open_id(cookie)
            await mine.incr("n")
            await mine.set(f"t{index}-{step}", step)

    await asyncio.gather(*(worker(i) for i in range(8)))
    data = await areopen(astore, session).to_dict()
    assert data["n"] == 80
    assert len(data) == 81


async def test_async_burst_waits_for_connections(astore: AsyncSessionStore) -> None:
    """300 commands in flight at once, more than any pool holds: every one succeeds."""
    session = astore.open()
    await session.set("n", 0)
    cookie = astore.config.cookie_value(session.id or "")
    results = await asyncio.gather(*(astore.open_id(cookie).incr("n") for _ in range(300)))
    assert sorted(results) == list(range(1, 301))


async def test_first_writes_of_a_fresh_async_client_each_run_once(
    topology_url: str, admin: Any
) -> None:
    """100 new sessions written at once by a client that has not sent a command yet."""
    store = AsyncSessionStore(redis=topology_url, ttl=100)
    sessions = [store.open() for _ in range(100)]
    await asyncio.gather(*(s.set("n", i) for i, s in enumerate(sessions)))
    assert len({s.id for s in sessions}) == 100
    assert len(admin.keys()) == 100  # no write ran twice under another id
    await store.aclose()


# ---------------------------------------------------------------- raw key layout


def test_drsession_regenerate(topology: str, topology_url: str, admin: Any) -> None:
    client = sync_client(topology_url)
    middleware = drsession.SessionMiddleware(lambda e, s: [], redis_server=client)
    session = middleware.store.open()
    session["user"] = "ann"
    old = session.id
    assert old is not None
    session.regenerate()
    assert session.id not in (None, old)
    later = middleware.store.open_id(session.id)
    assert later["user"] == "ann"
    assert admin.keys() == [f"drsession:{session.id}".encode()]
    # On a cluster the new raw key sits in the old one's slot (a hash tag in the id);
    # elsewhere the id keeps the plain shape of the id factory.
    same_slot = key_slot(f"drsession:{session.id}".encode()) == key_slot(
        f"drsession:{old}".encode()
    )
    assert same_slot or topology != "cluster"
    assert session.id.startswith("{") == (topology == "cluster")
    middleware.store.close()


@pytest.mark.parametrize("factory", [None, lambda: "custom-" + secrets.token_hex(16)])
def test_raw_layout_regenerate_and_login_keep_the_slot(
    topology: str, topology_url: str, admin: Any, factory: Any
) -> None:
    store = SessionStore(
        redis=sync_client(topology_url),
        key_layout="raw",
        prefix="app:",
        id_factory=factory,
        user_key="a user key for the tests",
    )
    session = store.open()
    session["n"] = 1
    first = session.id
    assert first is not None
    session.regenerate()
    session.login("ann")
    session.regenerate()  # an id already carrying a tag keeps it
    assert session.id not in (None, first)
    assert store.open_id(store.config.cookie_value(session.id))["n"] == 1
    assert [info.current for info in store.sessions_of("ann", current=session)] == [True]
    stored = [k for k in admin.keys("app:*") if not k.startswith(b"app:u:")]
    assert stored == [f"app:{session.id}".encode()]
    assert key_slot(stored[0]) == key_slot(f"app:{first}".encode()) or topology != "cluster"
    if factory is not None:
        assert "custom-" in session.id
    store.close()


async def test_async_raw_layout_regenerate_and_login(
    topology: str, topology_url: str, admin: Any
) -> None:
    store = AsyncSessionStore(
        redis=topology_url, key_layout="raw", prefix="app:", user_key="a user key for the tests"
    )
    session = store.open()
    await session.set("n", 1)
    first = session.id
    await session.regenerate()
    await session.login("ann")
    assert session.id not in (None, first)
    again = store.open_id(store.config.cookie_value(session.id))
    assert await again.get("n") == 1
    same_slot = key_slot(f"app:{session.id}".encode()) == key_slot(f"app:{first}".encode())
    assert same_slot or topology != "cluster"
    assert session.id.startswith("{") == (topology == "cluster")
    await store.aclose()


# ---------------------------------------------------------------- Sentinel failover


def _write_through_failover(
    setup: SentinelSetup, store: SessionStore, cookie: str, old: tuple[str, int]
) -> tuple[list[str], int]:
    """Write one new key per request until 10 writes in a row land on a new master.

    Returns the keys whose write was acknowledged and how many writes raised
    :class:`BackendError`; any other exception fails the test.
    """
    acknowledged: list[str] = []
    refused = streak = n = 0
    deadline = time.monotonic() + 30
    while streak < 10:
        assert time.monotonic() < deadline, "no usable master 30 s into the failover"
        n += 1
        try:
            store.open_id(cookie)[f"k{n}"] = n
        except BackendError:
            refused += 1
            streak = 0
            time.sleep(0.05)
            continue
        acknowledged.append(f"k{n}")
        streak = streak + 1 if setup.master_address() != old else 0
        time.sleep(0.01)
    return acknowledged, refused


def _assert_nothing_lost(
    setup: SentinelSetup, store: SessionStore, cookie: str, acknowledged: list[str]
) -> None:
    """Every acknowledged key is on the new master once the old one has become its replica.

    (Read straight from the new master: the store's pooled connections may still
    reach the old one, which would show writes that the failover is about to drop.)
    """
    _wait_replica_follows(setup)
    session_id = store.config.id_from_cookie(cookie)
    assert session_id is not None
    client = setup.master().client()
    try:
        fields = client.hkeys(store.config.key_of(session_id))
    finally:
        client.close()
    stored = {name.decode() for name in fields}
    assert "before" in stored
    lost = [key for key in acknowledged if key not in stored]
    assert lost == [], f"{len(lost)} acknowledged writes were lost, such as {lost[:5]}"


def _wait_replica_follows(setup: SentinelSetup) -> None:
    master = setup.master()
    for server in setup.servers:
        if server is not master:
            wait_for(f"{server!r} to follow the new master", lambda s=server: _following(s, master))


def _following(replica: EmbeddedRedis, master: EmbeddedRedis) -> bool:
    client = replica.client()
    try:
        info = client.info("replication")
    finally:
        client.close()
    return info.get("master_link_status") == "up" and int(info["master_port"]) == master.port


def test_sessions_survive_the_master_dying(sentinel_setup: SentinelSetup) -> None:
    """While no master is known, writes raise BackendError; afterwards they reach the new one."""
    setup = sentinel_setup
    setup.flushall()
    setup.ready_for_failover()
    # A key per write (at most one per 10 ms): the store reaches the new master before the
    # sentinels name it (hashsession.failover), and the loop writes on until they do.
    store = SessionStore(redis=setup.url + "?socket_connect_timeout=0.5", ttl=100, max_keys=3000)
    session = store.open()
    session["before"] = 1
    cookie = store.config.cookie_value(session.id or "")
    dying = setup.master()
    client = dying.client()
    assert client.wait(1, 5000) == 1  # the replica has every write so far
    client.close()
    old = setup.master_address()
    dying.stop()  # by pid
    try:
        acknowledged, _ = _write_through_failover(setup, store, cookie, old)
        assert setup.master_address() != old
    finally:
        store.close()
        # Bring the dead server back, on its port, as a replica of the new master.
        index = setup.servers.index(dying)
        new_master = setup.master()
        setup.servers[index] = EmbeddedRedis(
            port=old[1], args=("--replicaof", HOST, str(new_master.port))
        ).start()
    _assert_nothing_lost(setup, store, cookie, acknowledged)


def test_confirmed_logouts_survive_a_sentinel_failover(sentinel_setup: SentinelSetup) -> None:
    """SENTINEL FAILOVER with the old master alive, under ``wait_for_replicas=1``.

    Until the sentinels demote it, the old master goes on accepting writes that the
    failover then discards (docs/reliability.md measures how many). An ``invalidate()``
    that *returned* had a replica confirm it, so it is in force on the new master;
    one that did not get a confirmation raised (``NotReplicatedError``, or another
    ``BackendError``). Without the setting, most logouts in that window come back.
    """
    setup = sentinel_setup
    setup.flushall()
    setup.ready_for_failover()
    store = SessionStore(redis=setup.url, ttl=100, wait_for_replicas=1, wait_timeout=0.2)
    sessions = [store.open() for _ in range(400)]
    for session in sessions:
        session["n"] = 1
    sessions[-1].regenerate()  # its WAIT confirms every write before it
    ids = [s.id or "" for s in sessions]
    old = setup.master_address()
    sentinel = setup.sentinels[0].client()
    confirmed: list[str] = []
    unconfirmed = streak = 0
    deadline = time.monotonic() + 30
    try:
        assert sentinel.sentinel_failover(setup.service)
        for session_id in ids:
            if streak >= 10:
                break
            assert time.monotonic() < deadline, "no usable master 30 s into the failover"
            try:
                store.open_id(store.config.cookie_value(session_id)).invalidate()
            except BackendError:  # NotReplicatedError included: the old master is alone
                unconfirmed += 1
                streak = 0
                time.sleep(0.02)
                continue
            confirmed.append(session_id)
            streak = streak + 1 if setup.master_address() != old else 0
        assert streak >= 10, "ran out of sessions before 10 logouts landed on the new master"
        _wait_replica_follows(setup)
        client = setup.master().client()
        try:
            back = [i for i in confirmed if client.exists(store.config.key_of(i))]
        finally:
            client.close()
        assert back == [], f"{len(back)} confirmed logouts were undone by the failover"
    finally:
        sentinel.close()
        store.close()
