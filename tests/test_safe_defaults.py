"""Safe defaults (issue 13, item 3), each against real servers.

* every client hashsession builds from a URL has a connect and a reply timeout,
  which the URL can override;
* a value read back that is larger than ``max_value_size`` raises
  ``LimitExceededError`` naming the key instead of being decoded;
* sessions get an absolute lifetime unless told ``absolute_ttl=None``;
* cookies are ``Secure`` except on plain http to a loopback host, and a store told
  ``secure=False`` says so in a warning.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

from hashsession import BackendError, LimitExceededError, SessionStore
from hashsession.aio import AsyncSessionStore
from hashsession.asgi import SessionMiddleware as AsgiMiddleware
from hashsession.config import DEFAULT_ABSOLUTE_TTL
from hashsession.cookies import is_plain_local
from hashsession.embedded import EmbeddedRedis
from hashsession.topology import (
    SOCKET_CONNECT_TIMEOUT,
    SOCKET_TIMEOUT,
    async_client,
    is_cluster,
    sync_client,
)
from hashsession.wsgi import SessionMiddleware as WsgiMiddleware

# --------------------------------------------------------------------------- timeouts


def _server_kwargs(client: Any) -> dict[str, Any]:
    """The connection settings a client uses for the Redis servers."""
    if isinstance(client, AsyncRedisCluster):
        return dict(client.get_default_node().connection_kwargs)
    if is_cluster(client):
        node = client.get_default_node()
        return dict(node.redis_connection.connection_pool.connection_kwargs)
    return dict(client.connection_pool.connection_kwargs)


def _sentinel_kwargs(client: Any) -> list[dict[str, Any]]:
    """The connection settings of a Sentinel master client's sentinels (empty otherwise)."""
    pool = getattr(client, "connection_pool", None)
    manager = getattr(pool, "sentinel_manager", None)
    if manager is None:
        return []
    return [dict(s.connection_pool.connection_kwargs) for s in manager.sentinels]


def _timeouts_of(kwargs: dict[str, Any]) -> tuple[Any, Any]:
    return kwargs.get("socket_connect_timeout"), kwargs.get("socket_timeout")


def test_sync_clients_from_urls_have_timeouts(topology: str, topology_url: str) -> None:
    client = sync_client(topology_url)
    try:
        client.ping()
        wanted = (SOCKET_CONNECT_TIMEOUT, SOCKET_TIMEOUT)
        assert _timeouts_of(_server_kwargs(client)) == wanted
        for sentinel in _sentinel_kwargs(client):
            assert _timeouts_of(sentinel) == wanted
        assert len(_sentinel_kwargs(client)) == (3 if topology == "sentinel" else 0)
    finally:
        client.close()


def test_async_clients_from_urls_have_timeouts(topology: str, topology_url: str) -> None:
    async def check() -> None:
        client = async_client(topology_url)
        try:
            await client.ping()
            wanted = (SOCKET_CONNECT_TIMEOUT, SOCKET_TIMEOUT)
            assert _timeouts_of(_server_kwargs(client)) == wanted
            for sentinel in _sentinel_kwargs(client):
                assert _timeouts_of(sentinel) == wanted
        finally:
            await client.aclose()

    asyncio.run(check())


def test_the_url_overrides_the_timeouts(topology: str, topology_url: str) -> None:
    joiner = "&" if "?" in topology_url else "?"
    url = f"{topology_url}{joiner}socket_timeout=2.5&socket_connect_timeout=1.5"
    client = sync_client(url)
    try:
        assert _timeouts_of(_server_kwargs(client)) == (1.5, 2.5)
        for sentinel in _sentinel_kwargs(client):
            assert _timeouts_of(sentinel) == (1.5, 2.5)
    finally:
        client.close()


def test_a_store_built_from_a_url_has_the_timeouts(redis_url: str) -> None:
    store = SessionStore(redis=redis_url)
    try:
        assert _timeouts_of(_server_kwargs(store.client)) == (
            SOCKET_CONNECT_TIMEOUT,
            SOCKET_TIMEOUT,
        )
    finally:
        store.close()


def test_waiting_for_replicas_lengthens_the_reply_timeout(redis_url: str) -> None:
    store = SessionStore(redis=redis_url, wait_for_replicas=1, wait_timeout=30)
    astore = AsyncSessionStore(redis=redis_url, wait_for_replicas=1, wait_timeout=30)
    try:
        assert _server_kwargs(store.client)["socket_timeout"] == 32
        assert _server_kwargs(astore.client)["socket_timeout"] == 32
    finally:
        store.close()


@pytest.fixture
def sleepy(make_server: Any) -> Iterator[EmbeddedRedis]:
    yield make_server()


def test_a_server_that_stops_answering_raises_after_the_timeout(sleepy: EmbeddedRedis) -> None:
    store = SessionStore(redis=f"{sleepy.url}?socket_timeout=0.3", ttl=100)
    admin = redis.Redis.from_url(sleepy.url)
    try:
        session = store.open()
        session["a"] = 1
        # The server holds every client's commands for 1.5 s (CLIENT PAUSE, Redis 6.2 and
        # Valkey alike; DEBUG SLEEP is off by default on Valkey and Redis 7+).
        admin.execute_command("CLIENT", "PAUSE", "1500")
        started = time.monotonic()
        with pytest.raises(BackendError):
            session["b"] = 2
        assert time.monotonic() - started < 1.2
    finally:
        admin.close()
        store.close()


# --------------------------------------------------------------------------- value size read back


def _planted(store: SessionStore, redis_client: redis.Redis, size: int) -> str:
    """A stored session holding ``small`` = 1, plus ``big``: ``size`` bytes planted in Redis."""
    session = store.open()
    session["small"] = 1
    assert session.core.key is not None
    redis_client.hset(session.core.key, "big", b'"' + b"x" * (size - 2) + b'"')
    return store.config.cookie_value(session.id or "")


def test_a_planted_oversized_value_is_not_decoded(
    make_store: Any, redis_client: redis.Redis
) -> None:
    store = make_store(max_value_size=100)
    cookie = _planted(store, redis_client, 101)
    for read in (
        lambda s: s["big"],
        lambda s: s.get("big"),
        lambda s: s.to_dict(),
        lambda s: dict(s),
        lambda s: s.get_many("small", "big"),
        lambda s: s.pop("big"),
        lambda s: s.setdefault("big", 1),
    ):
        key = store.config.key_of(store.config.id_from_cookie(cookie) or "")
        for live in (False, True):
            redis_client.hset(key, "big", b'"' + b"x" * 99 + b'"')  # pop removes it
            session = store.open_id(cookie)
            if live:
                session.get("small")  # the session is live now: the fast paths check too
            with pytest.raises(LimitExceededError) as info:
                read(session)
            assert info.value.key == "big"
            assert "over the 100 limit" in str(info.value)
    assert store.open_id(cookie)["small"] == 1


def test_a_value_of_exactly_the_limit_is_read(make_store: Any, redis_client: redis.Redis) -> None:
    store = make_store(max_value_size=100)
    cookie = _planted(store, redis_client, 100)
    assert store.open_id(cookie)["big"] == "x" * 98


def test_async_reads_check_the_size_too(redis_url: str, redis_client: redis.Redis) -> None:
    async def check() -> None:
        store = AsyncSessionStore(redis=redis_url, ttl=100, max_value_size=100)
        try:
            session = store.open()
            await session.set("small", 1)
            key = session.core.key
            assert key is not None
            redis_client.hset(key, "big", b'"' + b"x" * 200 + b'"')
            cookie = store.config.cookie_value(session.id or "")
            for read in ("get", "to_dict", "pop"):
                fresh = store.open_id(cookie)
                args = () if read == "to_dict" else ("big",)
                with pytest.raises(LimitExceededError) as info:
                    await getattr(fresh, read)(*args)
                assert info.value.key == "big"
        finally:
            await store.aclose()

    asyncio.run(check())


# --------------------------------------------------------------------------- absolute lifetime

DAY = 24 * 3600


def test_the_absolute_lifetime_defaults_to_30_days(make_store: Any) -> None:
    assert DEFAULT_ABSOLUTE_TTL == 30 * DAY
    assert make_store().config.absolute_ms == 30 * DAY * 1000
    assert make_store(ttl=7 * DAY).config.absolute_ms == 30 * DAY * 1000
    # An idle timeout longer than 30 days raises the default cap to it, never below it.
    assert make_store(ttl=90 * DAY).config.absolute_ms == 90 * DAY * 1000
    assert make_store(absolute_ttl=None).config.absolute_ms == 0  # explicitly off
    assert make_store(absolute_ttl=3600).config.absolute_ms == 3600 * 1000


def _age(redis_client: redis.Redis, store: SessionStore, cookie: str, days: float) -> None:
    """Make the session behind ``cookie`` look created ``days`` ago."""
    key = store.config.key_of(store.config.id_from_cookie(cookie) or "")
    born = int((time.time() - days * DAY) * 1000)
    assert redis_client.hset(key, "\x00c", born) == 0  # overwrote the creation time


def test_a_session_older_than_30_days_is_gone_by_default(
    make_store: Any, redis_client: redis.Redis
) -> None:
    store = make_store()
    session = store.open()
    session["a"] = 1
    cookie = store.config.cookie_value(session.id or "")
    _age(redis_client, store, cookie, 29.9)
    assert store.open_id(cookie).get("a") == 1  # still within its lifetime
    _age(redis_client, store, cookie, 30.1)
    later = store.open_id(cookie)
    assert later.get("a") is None
    assert redis_client.dbsize() == 0  # deleted on sight, never resurrected


def test_absolute_ttl_none_keeps_sessions_while_they_are_used(
    make_store: Any, redis_client: redis.Redis
) -> None:
    store = make_store(absolute_ttl=None)
    session = store.open()
    session["a"] = 1
    cookie = store.config.cookie_value(session.id or "")
    _age(redis_client, store, cookie, 400)
    assert store.open_id(cookie).get("a") == 1


def test_pyramid_settings_turn_the_absolute_lifetime_off(redis_url: str) -> None:
    from hashsession.pyramid import store_from_settings

    for text, wanted in (("off", 0), ("", 30 * DAY * 1000), ("3600", 3600 * 1000)):
        settings = {"hashsession.redis": redis_url, "hashsession.absolute_ttl": text}
        store = store_from_settings(settings)
        try:
            assert store.config.absolute_ms == wanted
        finally:
            store.close()


# --------------------------------------------------------------------------- Secure cookies


@pytest.mark.parametrize(
    ("scheme", "host", "local"),
    [
        ("http", "localhost", True),
        ("http", "localhost:8000", True),
        ("http", "LOCALHOST.", True),
        ("http", "app.localhost:5000", True),
        ("http", "127.0.0.1", True),
        ("http", "127.12.0.1:8080", True),
        ("http", "[::1]:8000", True),
        ("http", "::1", True),
        ("http", "testserver", True),
        ("ws", "localhost", True),
        ("https", "localhost", False),
        ("https", "127.0.0.1:8443", False),
        ("http", "example.com", False),
        ("http", "localhost.example.com", False),
        ("http", "127.0.0.1.nip.io", False),
        ("http", "128.0.0.1", False),
        ("http", "10.0.0.1", False),
        ("http", "[::2]:80", False),
        ("http", "", False),
        ("http", None, False),
        (None, "localhost", False),
    ],
)
def test_plain_local_means_plain_http_to_a_loopback_host(
    scheme: str | None, host: str | None, local: bool
) -> None:
    assert is_plain_local(scheme, host) is local


def _wsgi_set_cookie(store: SessionStore, **environ: Any) -> str:
    def app(env: dict[str, Any], start_response: Any) -> list[bytes]:
        env["hashsession"]["a"] = 1
        start_response("200 OK", [])
        return [b""]

    headers: list[tuple[str, str]] = []
    base = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "SERVER_PORT": "80"}
    WsgiMiddleware(app, store=store)({**base, **environ}, lambda s, h, e=None: headers.extend(h))
    (cookie,) = [v for k, v in headers if k == "Set-Cookie"]
    return cookie


@pytest.mark.parametrize(
    ("environ", "secure"),
    [
        ({"wsgi.url_scheme": "http", "HTTP_HOST": "127.0.0.1:8000"}, False),
        ({"wsgi.url_scheme": "http", "SERVER_NAME": "localhost"}, False),
        ({"wsgi.url_scheme": "https", "HTTP_HOST": "localhost"}, True),
        ({"wsgi.url_scheme": "http", "HTTP_HOST": "shop.example"}, True),
        ({"wsgi.url_scheme": "https", "HTTP_HOST": "shop.example"}, True),  # behind a proxy
        ({"HTTP_HOST": "localhost"}, True),  # no scheme: not known to be plain http
    ],
)
def test_wsgi_cookies_are_secure_except_on_plain_local_http(
    make_store: Any, environ: dict[str, Any], secure: bool
) -> None:
    cookie = _wsgi_set_cookie(make_store(), **environ)
    assert ("; Secure" in cookie) is secure
    assert "; Secure" in _wsgi_set_cookie(make_store(cookie={"secure": True}), **environ)
    assert "; Secure" not in _wsgi_set_cookie(make_store(cookie={"secure": False}), **environ)


def test_prefixed_and_samesite_none_cookies_stay_secure_on_local_http(make_store: Any) -> None:
    environ = {"wsgi.url_scheme": "http", "HTTP_HOST": "localhost"}
    for cookie in ({"host_prefix": True}, {"samesite": "None"}, {"name": "__Secure-sid"}):
        assert "; Secure" in _wsgi_set_cookie(make_store(cookie=cookie), **environ)


def test_asgi_cookies_are_secure_except_on_plain_local_http(redis_url: str) -> None:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        await scope["session"].set("a", 1)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    async def cookie_for(scheme: str, host: bytes | None, server: Any = None) -> str:
        store = AsyncSessionStore(redis=redis_url, ttl=100)
        sent: list[Any] = []

        async def send(message: Any) -> None:
            sent.append(message)

        headers = [(b"host", host)] if host is not None else []
        scope = {"type": "http", "scheme": scheme, "path": "/", "headers": headers}
        if server is not None:
            scope["server"] = server
        try:
            await AsgiMiddleware(app, store=store)(scope, None, send)
        finally:
            await store.aclose()
        (cookie,) = [v.decode() for k, v in sent[0]["headers"] if k == b"set-cookie"]
        return cookie

    async def check() -> None:
        assert "; Secure" not in await cookie_for("http", b"localhost:8000")
        assert "; Secure" not in await cookie_for("http", None, ("127.0.0.1", 8000))
        assert "; Secure" in await cookie_for("https", b"localhost:8000")
        assert "; Secure" in await cookie_for("http", b"shop.example")

    asyncio.run(check())


def test_a_store_told_secure_false_warns(redis_url: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level("WARNING", logger="hashsession"):
        SessionStore(redis=redis_url).close()
        SessionStore(redis=redis_url, cookie={"secure": True}).close()
    assert not caplog.records
    with caplog.at_level("WARNING", logger="hashsession"):
        SessionStore(redis=redis_url, cookie={"secure": False}).close()
        asyncio.run(AsyncSessionStore(redis=redis_url, cookie={"secure": False}).aclose())
    assert len(caplog.records) == 2
    assert all("without the Secure attribute" in r.getMessage() for r in caplog.records)


def test_the_embedded_development_server_is_exempt_from_the_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    store = SessionStore(redis=None, cookie={"secure": False})
    try:
        assert not [r for r in caplog.records if "Secure" in r.getMessage()]
    finally:
        store.close()
