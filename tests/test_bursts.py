"""Bursts never fail for want of a connection (``connection_wait_timeout``).

redis-py 8's default connection pool holds at most 100 connections and raises
``MaxConnectionsError`` when all are busy. A command refused that way was never
sent, so hashsession waits for a free connection and sends it then. These tests
drive user-built clients with redis-py's defaults (or tiny pools, so the pool is
certainly exhausted) through real servers: uvicorn, a threaded WSGI server, and
store-level bursts on one server, Sentinel and Cluster, sync and asyncio. The
last ones hold a pool's only connection to show a command waits, then runs, or
gives up after the setting's wait without ever reaching Redis.
"""

from __future__ import annotations

import asyncio
import http.cookies
import logging
import math
import ssl
import threading
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import urlsplit
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import httpx
import pytest
import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.cluster import RedisCluster
from redis.exceptions import MaxConnectionsError
from redis.sentinel import Sentinel
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from hashsession import BackendError, ConfigurationError, Session, SessionStore
from hashsession.aio import AsyncSessionStore
from hashsession.asgi import SessionMiddleware as AsgiMiddleware
from hashsession.wsgi import SessionMiddleware as WsgiMiddleware
from test_asgi import serve
from topologies import HOST

WAITED = "Redis connection pool full"

#: Per-user features (login, sessions_of, revoke_user) need a key for user digests.
USER_KEY = "a user key for the burst tests"


def address(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None
    return parts.hostname, parts.port


def waits(caplog: pytest.LogCaptureFixture) -> int:
    """How many commands (or pipelines) found their pool full and waited."""
    return sum(1 for r in caplog.records if r.getMessage().startswith(WAITED))


@pytest.fixture
def wait_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG, logger="hashsession.transport")
    return caplog


def cookie_value(set_cookie: str) -> str:
    jar: http.cookies.SimpleCookie = http.cookies.SimpleCookie()
    jar.load(set_cookie)
    return jar["session"].value


def calls(admin: redis.Redis) -> dict[str, int]:
    """Commands the server has run so far, by name (INFO commandstats), INFO itself aside."""
    stats = admin.info("commandstats")
    return {k: int(v["calls"]) for k, v in stats.items() if k != "cmdstat_info"}


# --------------------------------------------------------------------------- asgi


class Gate:
    """Holds requests until ``expected`` have arrived, then lets them all go at once."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.arrived = 0
        self.event: asyncio.Event | None = None

    async def arrive(self) -> None:
        if self.event is None:
            self.event = asyncio.Event()
        self.arrived += 1
        if self.arrived == self.expected:
            self.event.set()
        await asyncio.wait_for(self.event.wait(), 60)


async def start(request: Any) -> Response:
    request.app.state.loop = asyncio.get_running_loop()
    await request.session.set("started", True)
    return PlainTextResponse("ok")


async def burst(request: Any) -> Response:
    i = int(request.path_params["i"])
    session = request.session
    await request.app.state.gate.arrive()  # then every request's commands go at once
    await session.incr("counter")
    await session.set(f"k{i}", i)
    return PlainTextResponse("ok")


async def test_asgi_burst_of_500_on_a_default_asyncio_client(
    redis_url: str, redis_client: redis.Redis, wait_log: pytest.LogCaptureFixture
) -> None:
    host, port = address(redis_url)
    client = aioredis.Redis(host=host, port=port)  # as users write it
    assert client.connection_pool.max_connections == 100  # redis-py's default, raising
    store = AsyncSessionStore(redis=client, ttl=100)
    app = Starlette(
        routes=[Route("/start", start), Route("/burst/{i}", burst)],
        middleware=[Middleware(AsgiMiddleware, store=store)],
    )
    app.state.gate = Gate(500)
    # One new client (so one new connection) per request, as in test_asgi.py, sharing one
    # TLS context (none is used; making 500 costs seconds).
    tls = ssl.create_default_context()

    async def request(path: str, cookie: str | None = None) -> httpx.Response:
        cookies = {"session": cookie} if cookie else None
        async with httpx.AsyncClient(
            base_url=base_url, timeout=60, verify=tls, cookies=cookies
        ) as http:
            return await http.get(path)

    async with serve(app) as base_url:
        first = await request("/start")
        assert first.status_code == 200
        cookie = first.cookies["session"]
        responses = await asyncio.gather(*(request(f"/burst/{i}", cookie) for i in range(500)))
        fut = asyncio.run_coroutine_threadsafe(client.aclose(), app.state.loop)
        await asyncio.wrap_future(fut)
    statuses = [r.status_code for r in responses]
    assert statuses == [200] * 500, {s: statuses.count(s) for s in set(statuses)}
    assert waits(wait_log) > 0, "no command found the pool full: the burst proved nothing"
    session_id = store.config.id_from_cookie(cookie)
    assert session_id is not None
    stored = redis_client.hgetall(store.config.key_of(session_id))
    assert stored[b"counter"] == b"500"
    missing = [i for i in range(500) if stored.get(f"k{i}".encode()) != str(i).encode()]
    assert missing == []
    assert redis_client.dbsize() == 1


# --------------------------------------------------------------------------- wsgi


class ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    request_queue_size = 512  # every request of the burst connects at once


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def wsgi_burst(redis_url: str) -> Iterator[tuple[SessionStore, threading.Barrier, str]]:
    """A threaded WSGI server on a store whose client is ``redis.Redis(host=, port=)``."""
    host, port = address(redis_url)
    client = redis.Redis(host=host, port=port)
    assert client.connection_pool.max_connections == 100
    store = SessionStore(redis=client, ttl=100)
    admin = redis.Redis(host=host, port=port)

    def pause_redis() -> None:
        # While Redis is paused every connection taken stays busy, so the threads
        # released by the barrier certainly find the pool full.
        admin.execute_command("CLIENT", "PAUSE", 300, "ALL")

    gate = threading.Barrier(200, action=pause_redis, timeout=60)

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        session: Session = environ["hashsession"]
        path = environ["PATH_INFO"]
        if path == "/start":
            session["started"] = True
        else:
            i = int(path.rsplit("/", 1)[1])
            gate.wait()
            session.incr("counter")
            session[f"k{i}"] = i
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"ok"]

    server = make_server(
        "127.0.0.1",
        0,
        WsgiMiddleware(app, store=store),
        server_class=ThreadingServer,
        handler_class=QuietHandler,
    )
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield store, gate, f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
        client.close()
        admin.close()


def test_wsgi_burst_of_200_threads_on_a_default_client(
    wsgi_burst: tuple[SessionStore, threading.Barrier, str],
    redis_client: redis.Redis,
    wait_log: pytest.LogCaptureFixture,
) -> None:
    store, _, base = wsgi_burst
    with urllib.request.urlopen(f"{base}/start", timeout=30) as first:
        assert first.status == 200
        cookie = cookie_value(first.headers["Set-Cookie"])

    def get(i: int) -> int | str:
        request = urllib.request.Request(
            f"{base}/burst/{i}", headers={"Cookie": f"session={cookie}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=60) as response:
                return int(response.status)
        except Exception as exc:  # an HTTP 500 or a dropped connection: counted as failed
            return repr(exc)

    with ThreadPoolExecutor(max_workers=200) as pool:
        results = list(pool.map(get, range(200)))
    failed = [r for r in results if r != 200]
    assert failed == [], failed[:5]
    assert waits(wait_log) > 0, "no command found the pool full: the burst proved nothing"
    session_id = store.config.id_from_cookie(cookie)
    assert session_id is not None
    stored = redis_client.hgetall(store.config.key_of(session_id))
    assert stored[b"counter"] == b"200"
    assert [i for i in range(200) if stored.get(f"k{i}".encode()) != str(i).encode()] == []


# --------------------------------------------------------------------------- every topology


def user_sync_client(topology: str, deployment: Any, max_connections: int) -> Any:
    """The client a user would build for ``topology``, its pools capped at ``max_connections``."""
    if topology == "standalone":
        host, port = address(deployment.url)
        return redis.Redis(host=host, port=port, max_connections=max_connections)
    if topology == "sentinel":
        sentinel = Sentinel([(HOST, s.port) for s in deployment.sentinels])
        return sentinel.master_for(deployment.service, max_connections=max_connections)
    return RedisCluster(host=HOST, port=deployment.masters[0].port, max_connections=max_connections)


def user_async_client(topology: str, deployment: Any, max_connections: int) -> Any:
    """The asyncio twin of :func:`user_sync_client`."""
    if topology == "standalone":
        host, port = address(deployment.url)
        return aioredis.Redis(host=host, port=port, max_connections=max_connections)
    if topology == "sentinel":
        sentinel = AsyncSentinel([(HOST, s.port) for s in deployment.sentinels])
        return sentinel.master_for(deployment.service, max_connections=max_connections)
    return AsyncRedisCluster(
        host=HOST, port=deployment.masters[0].port, max_connections=max_connections
    )


USERS = 10


@pytest.mark.parametrize("topology", ["standalone", "sentinel", "cluster"])
def test_sync_burst_on_a_pool_of_5(
    topology: str,
    topology_deployment: Any,
    topology_url: str,
    wait_log: pytest.LogCaptureFixture,
) -> None:
    # 200 threads at once, each: an increment and a key of its own on one shared session,
    # then a session of its own logged in, and its user's sessions listed (a pipeline,
    # split per node on a cluster).
    client = user_sync_client(topology, topology_deployment, 5)
    # 200 callers on 5 connections: the wait is generous so a loaded CI machine cannot
    # turn a slow queue into a failure (the default's behaviour is the 500/200 bursts').
    store = SessionStore(redis=client, ttl=100, user_key=USER_KEY, connection_wait_timeout=120)
    shared = store.open(None)
    shared["started"] = True
    cookie = store.config.cookie_value(shared.id)
    go = threading.Barrier(200, timeout=60)

    def work(i: int) -> None:
        go.wait()
        s = store.open_id(cookie)
        s.incr("counter")
        s[f"k{i}"] = i
        own = store.open(None)
        own["n"] = i
        own.login(f"u{i % USERS}")
        assert store.sessions_of(f"u{i % USERS}")

    try:
        with ThreadPoolExecutor(max_workers=200) as pool:
            errors = [f.exception() for f in [pool.submit(work, i) for i in range(200)]]
        assert [e for e in errors if e is not None] == []
        assert waits(wait_log) > 0
        check = store.open_id(cookie)
        assert check.get("counter") == 200
        assert check.get_many(*(f"k{i}" for i in range(200))) == list(range(200))
        assert [len(store.sessions_of(f"u{u}")) for u in range(USERS)] == [20] * USERS
        with ThreadPoolExecutor(max_workers=USERS) as pool:
            revoked = list(pool.map(store.revoke_user, [f"u{u}" for u in range(USERS)]))
        assert revoked == [20] * USERS
        assert [store.sessions_of(f"u{u}") for u in range(USERS)] == [[]] * USERS
    finally:
        client.close()
        if topology != "cluster":
            client.connection_pool.disconnect()


@pytest.mark.parametrize("topology", ["standalone", "sentinel", "cluster"])
async def test_async_burst_on_a_pool_of_5(
    topology: str,
    topology_deployment: Any,
    topology_url: str,
    wait_log: pytest.LogCaptureFixture,
) -> None:
    client = user_async_client(topology, topology_deployment, 5)
    store = AsyncSessionStore(redis=client, ttl=100, user_key=USER_KEY, connection_wait_timeout=120)

    async def work(i: int) -> None:
        s = store.open_id(cookie)
        await s.incr("counter")
        await s.set(f"k{i}", i)
        own = store.open(None)
        await own.set("n", i)
        await own.login(f"u{i % USERS}")
        assert await store.sessions_of(f"u{i % USERS}")

    try:
        shared = store.open(None)
        await shared.set("started", True)
        cookie = store.config.cookie_value(shared.id)
        results = await asyncio.gather(*(work(i) for i in range(500)), return_exceptions=True)
        assert [r for r in results if r is not None] == []
        assert waits(wait_log) > 0
        check = store.open_id(cookie)
        assert await check.get("counter") == 500
        assert await check.get_many(*(f"k{i}" for i in range(500))) == list(range(500))
        users = [f"u{u}" for u in range(USERS)]
        listed = await asyncio.gather(*(store.sessions_of(u) for u in users))
        assert [len(infos) for infos in listed] == [50] * USERS
        revoked = await asyncio.gather(*(store.revoke_user(u) for u in users))
        assert revoked == [50] * USERS
        assert await asyncio.gather(*(store.sessions_of(u) for u in users)) == [[]] * USERS
    finally:
        await client.aclose()
        if topology != "cluster":
            await client.connection_pool.disconnect()


# --------------------------------------------------------------------------- one connection


class CountingPool(redis.ConnectionPool):
    """redis-py's pool, counting the times it refused a connection because it was full."""

    refused = 0

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().get_connection(*args, **kwargs)
        except MaxConnectionsError:
            self.refused += 1
            raise


class AsyncCountingPool(aioredis.ConnectionPool):
    """The asyncio twin of :class:`CountingPool`."""

    refused = 0

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return await super().get_connection(*args, **kwargs)
        except MaxConnectionsError:
            self.refused += 1
            raise


@pytest.fixture
def one_connection(redis_url: str) -> Iterator[CountingPool]:
    host, port = address(redis_url)
    pool = CountingPool(host=host, port=port, max_connections=1)
    yield pool
    pool.disconnect()


@pytest.fixture
async def async_one_connection(redis_url: str) -> AsyncIterator[AsyncCountingPool]:
    host, port = address(redis_url)
    pool = AsyncCountingPool(host=host, port=port, max_connections=1)
    yield pool
    await pool.disconnect()


def test_a_command_waits_for_the_connection_then_runs(
    one_connection: CountingPool, redis_client: redis.Redis
) -> None:
    store = SessionStore(redis=redis.Redis(connection_pool=one_connection), ttl=100)
    s = store.open(None)
    s["n"] = 1
    held = one_connection.get_connection()  # the pool's only connection
    outcome: list[object] = []
    worker = threading.Thread(target=lambda: outcome.append(s.incr("n")))
    worker.start()
    for _ in range(10_000):  # until the command has been refused a few times
        if one_connection.refused >= 3 or not worker.is_alive():
            break
        threading.Event().wait(0.001)
    assert one_connection.refused >= 3
    assert outcome == []  # still waiting
    one_connection.release(held)
    worker.join(30)
    assert outcome == [2]
    assert redis_client.hget(store.config.key_of(s.id), "n") == b"2"


def test_a_command_gives_up_after_connection_wait_timeout_unsent(
    one_connection: CountingPool, redis_client: redis.Redis
) -> None:
    store = SessionStore(
        redis=redis.Redis(connection_pool=one_connection),
        ttl=100,
        user_key=USER_KEY,
        connection_wait_timeout=0.2,
    )
    s = store.open(None)
    s["a"] = 1
    key = store.config.key_of(s.id)
    held = one_connection.get_connection()
    try:
        before = calls(redis_client)
        with pytest.raises(BackendError, match="connection_wait_timeout") as caught:
            s["b"] = 2
        assert "stayed exhausted" in str(caught.value)
        assert "max_connections=1" in str(caught.value)
        assert isinstance(caught.value.__cause__, MaxConnectionsError)
        assert one_connection.refused >= 2  # it waited and tried again before giving up
        with pytest.raises(BackendError, match="connection_wait_timeout"):
            store.revoke_user("alice")  # a store-level request, too
        assert calls(redis_client) == before  # nothing reached Redis
    finally:
        one_connection.release(held)
    assert redis_client.hgetall(key).keys() >= {b"a"}
    assert redis_client.hget(key, "b") is None


def test_no_wait_at_all_with_a_timeout_of_0(
    one_connection: CountingPool, redis_client: redis.Redis
) -> None:
    store = SessionStore(
        redis=redis.Redis(connection_pool=one_connection), ttl=100, connection_wait_timeout=0
    )
    s = store.open(None)
    s["a"] = 1
    held = one_connection.get_connection()
    try:
        refused = one_connection.refused
        with pytest.raises(BackendError, match="for 0 s"):
            s.get("a")
        assert one_connection.refused == refused + 1
    finally:
        one_connection.release(held)


async def test_an_async_command_waits_for_the_connection_then_runs(
    async_one_connection: AsyncCountingPool, redis_client: redis.Redis
) -> None:
    client = aioredis.Redis(connection_pool=async_one_connection)
    store = AsyncSessionStore(redis=client, ttl=100)
    s = store.open(None)
    await s.set("n", 1)
    held = await async_one_connection.get_connection()
    task = asyncio.create_task(s.incr("n"))
    for _ in range(10_000):  # until the command has been refused a few times
        if async_one_connection.refused >= 3 or task.done():
            break
        await asyncio.sleep(0.001)
    assert async_one_connection.refused >= 3
    assert not task.done()
    await async_one_connection.release(held)
    assert await asyncio.wait_for(task, 30) == 2
    assert redis_client.hget(store.config.key_of(s.id), "n") == b"2"


async def test_an_async_command_gives_up_after_connection_wait_timeout_unsent(
    async_one_connection: AsyncCountingPool, redis_client: redis.Redis
) -> None:
    client = aioredis.Redis(connection_pool=async_one_connection)
    store = AsyncSessionStore(
        redis=client, ttl=100, user_key=USER_KEY, connection_wait_timeout=timedelta(seconds=0.2)
    )
    s = store.open(None)
    await s.set("a", 1)
    key = store.config.key_of(s.id)
    held = await async_one_connection.get_connection()
    try:
        before = calls(redis_client)
        with pytest.raises(BackendError, match="connection_wait_timeout"):
            await s.incr("n")
        assert async_one_connection.refused >= 2
        with pytest.raises(BackendError, match="connection_wait_timeout"):
            await store.sessions_of("alice")
        assert calls(redis_client) == before
    finally:
        await async_one_connection.release(held)
    assert redis_client.hget(key, "n") is None


@pytest.mark.parametrize("topology", ["cluster"])
async def test_async_cluster_pipeline_resends_only_the_node_that_was_full(
    topology: str, topology_deployment: Any, topology_url: str, topology_client: Any
) -> None:
    # redis-py's asyncio cluster pipeline sends to each node in its own task: with one
    # node's pool full the others run their part. revoke_user's DELs span the nodes; the
    # count it returns is exact only if no part ran twice.
    client = AsyncRedisCluster(
        host=HOST, port=topology_deployment.masters[0].port, max_connections=1
    )
    store = AsyncSessionStore(redis=client, ttl=100, user_key=USER_KEY)
    try:
        await client.initialize()
        keys: list[str] = []
        while len({client.get_node_from_key(k).name for k in keys}) < 3 or len(keys) < 6:
            s = store.open(None)
            await s.set("n", 1)
            await s.login("alice")
            keys.append(store.config.key_of(s.id))
        index_node = client.get_node_from_key(store.config.index_key("alice"))
        full = next(
            node
            for node in (client.get_node_from_key(k) for k in keys)
            if node.name != index_node.name
        )
        on_full = [k for k in keys if client.get_node_from_key(k).name == full.name]
        elsewhere = [k for k in keys if k not in on_full]
        held = full.acquire_connection()
        task = asyncio.create_task(store.revoke_user("alice"))
        try:
            for _ in range(30_000):  # until the other nodes' parts have run
                if topology_client.exists(*elsewhere) == 0:
                    break
                await asyncio.sleep(0.001)
            assert topology_client.exists(*elsewhere) == 0
            assert topology_client.exists(*on_full) == len(on_full)  # waiting for its turn
            assert not task.done()
        finally:
            full.release(held)
        assert await asyncio.wait_for(task, 30) == len(keys)
        assert topology_client.exists(*keys) == 0
    finally:
        await client.aclose()


# --------------------------------------------------------------------------- the setting


def test_connection_wait_timeout_is_checked(redis_url: str) -> None:
    for bad in (-1, "10", True, math.nan, math.inf, 3601, None, timedelta(hours=2)):
        with pytest.raises(ConfigurationError, match="connection_wait_timeout"):
            SessionStore(redis=redis_url, connection_wait_timeout=bad)
    for given, seconds in ((None, 10.0), (0, 0.0), (timedelta(milliseconds=1500), 1.5)):
        settings = {} if given is None else {"connection_wait_timeout": given}
        store = SessionStore(redis=redis_url, **settings)
        assert store.config.connection_wait == seconds
        store.close()
