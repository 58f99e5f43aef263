"""The ``near_cache`` store setting on ``AsyncSessionStore`` against real servers (one server).

The asyncio twin of tests/test_near_cache_store.py, held to the same list: round trips
are counted at the client (:class:`AsyncCounter`; the tracking link is a connection of
its own, and the TTL refreshes go through the counted pool); changes come from another
process; the tracking link is killed with CLIENT KILL. No wall-clock assertion: waits are
bounded polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
import redis.asyncio.connection as aioconn
import redis.connection as syncconn

from counting import AsyncCounter
from hashsession import ConfigurationError
from hashsession.aio import AsyncSessionStore
from hashsession.aionear import AsyncTracker, link_settings
from hashsession.embedded import EmbeddedRedis
from hashsession.nearcache import NearCache
from near_writer import Writer


@pytest.fixture
async def counter(redis_url: str) -> AsyncIterator[AsyncCounter]:
    counter = AsyncCounter(redis_url)
    try:
        yield counter
    finally:
        await counter.aclose()


@pytest.fixture
async def near(counter: AsyncCounter) -> AsyncIterator[AsyncSessionStore]:
    store = AsyncSessionStore(redis=counter.client, ttl=100, near_cache=True, user_key="k" * 32)
    try:
        yield store
    finally:
        await store.aclose()


async def new_session(store: AsyncSessionStore, user: str | None = None, **values: Any) -> str:
    session = store.open(None)
    await session.update(values)
    if user is not None:
        await session.login(user)
    return store.response_headers(session)[0][1].split(";")[0]


async def read(store: AsyncSessionStore, cookie: str, key: str = "cart") -> Any:
    return await store.open(cookie).get(key)


def tracking_links(client: redis.Redis) -> list[int]:
    return [c["id"] for c in client.client_list() if "t" in c["flags"]]


async def wait_until(check: Callable[[], bool]) -> bool:
    deadline = time.monotonic() + 10
    while not check() and time.monotonic() < deadline:
        await asyncio.sleep(0.01)
    return check()


async def test_a_read_only_request_on_a_warm_session_costs_no_round_trip(
    near: AsyncSessionStore, counter: AsyncCounter
) -> None:
    cookie = await new_session(near, cart=[1], user_name="ann")
    session = near.open(cookie)  # warms the cache: OPEN_NEAR through the pool, HGETs
    assert await session.get("cart") == [1]
    assert await session.has("user_name") and not await session.has("nothing")
    counter.reset()
    for _ in range(50):
        session = near.open(cookie)
        assert await session.get("cart") == [1]
        assert await session.has("user_name") and not await session.has("nothing")
        assert await session.get("user_name") == "ann"
    assert counter.names == [], (counter.names, near.near_cache.size)


async def test_writes_through_this_process_are_seen_at_once(near: AsyncSessionStore) -> None:
    cookie = await new_session(near, cart=1)
    assert await read(near, cookie) == 1
    for n in range(2, 40):
        session = near.open(cookie)
        await session.set("cart", n)
        assert await session.get("cart") == n
        assert await read(near, cookie) == n
        session = near.open(cookie)
        assert await session.incr("cart") == n + 1
        assert await read(near, cookie) == n + 1
    session = near.open(cookie)
    await session.invalidate()
    session = near.open(cookie)
    assert await session.get("cart") is None
    assert session.new


@pytest.mark.parametrize("op", ["set", "logout", "revoke_user"])
async def test_a_change_in_another_process_is_seen_1_ms_after_its_ack(
    near: AsyncSessionStore, redis_url: str, op: str
) -> None:
    stale = 0
    with Writer(redis_url) as writer:
        for n in range(200):
            user = f"u{n}"
            cookie = await new_session(near, cart=-1, user=user if op == "revoke_user" else None)
            for _ in range(2):  # warm: the next read comes from memory
                assert await read(near, cookie) == -1
            if op == "revoke_user":
                writer.ask(f"revoke {user} 0")  # acknowledged
            else:
                writer.change(op, cookie, n)
            await asyncio.sleep(0.001)
            stale += await read(near, cookie) != (n if op == "set" else None)
    assert stale == 0


async def test_expiry_and_flushall_are_seen(
    near: AsyncSessionStore, redis_client: redis.Redis
) -> None:
    cookie = await new_session(near, cart=1)
    assert await read(near, cookie) == 1 and await read(near, cookie) == 1
    redis_client.flushall()
    await asyncio.sleep(0.001)  # the server writes the push a moment after the reply (docs)
    assert await read(near, cookie) is None
    cookie = await new_session(near, cart=2)
    assert await read(near, cookie) == 2 and await read(near, cookie) == 2
    for key in redis_client.scan_iter("hs:*"):
        redis_client.pexpire(key, 1)
    assert await wait_until(lambda: not redis_client.dbsize())
    assert await read(near, cookie) is None


async def test_a_killed_tracking_link_turns_the_cache_off_until_it_is_back(
    near: AsyncSessionStore, redis_client: redis.Redis, counter: AsyncCounter
) -> None:
    cookie = await new_session(near, cart=1)
    assert await read(near, cookie) == 1 and await read(near, cookie) == 1
    links = tracking_links(redis_client)
    assert len(links) == 1
    redis_client.client_kill_filter(_id=links[0])
    redis_client.hset(next(redis_client.scan_iter("hs:*")), "cart", "2")  # missed by the link
    counter.reset()
    assert await read(near, cookie) == 2  # off: served by Redis
    assert counter.count >= 1
    cache = near.near_cache
    assert cache is not None and not cache.on and cache.size == (0, 0)
    assert await wait_until(lambda: cache.on)  # the link's task brought it back
    assert len(tracking_links(redis_client)) == 1
    assert await read(near, cookie) == 2
    counter.reset()
    assert await read(near, cookie) == 2
    assert counter.names == []


async def test_the_ttl_is_slid_once_per_refresh_share_and_the_session_lives_while_used(
    counter: AsyncCounter, redis_client: redis.Redis
) -> None:
    # As the sync test: idle 2 s, refreshed after a quarter (0.5 s), used for 5 s: Redis
    # asked at most twice per share (OPEN_NEAR slides, then an HMGET checks the session
    # again as the slide comes back).
    store = AsyncSessionStore(
        redis=counter.client, ttl=2, near_cache={"refresh_share": 0.25}, absolute_ttl=None
    )
    try:
        cookie = await new_session(store, cart=1)
        assert await read(store, cookie) == 1  # (OPEN_NEAR loaded on the server, if new)
        counter.reset()
        requests = 0
        end = time.monotonic() + 5
        while time.monotonic() < end:
            assert await read(store, cookie) == 1
            requests += 1
            await asyncio.sleep(0.002)
        refreshes = len(counter.names)
        assert set(counter.names) <= {"EVALSHA", "HMGET"}
        assert 1 <= counter.names.count("EVALSHA") <= 12
        assert refreshes <= 24 and refreshes < requests / 20
        key = next(redis_client.scan_iter("hs:*"))
        assert redis_client.pttl(key) > 2000 * 0.75 - 500  # slid within the last share
    finally:
        await store.aclose()


async def test_the_absolute_deadline_is_honoured(counter: AsyncCounter) -> None:
    store = AsyncSessionStore(redis=counter.client, ttl=10, absolute_ttl=1, near_cache=True)
    try:
        cookie = await new_session(store, cart=1)
        assert await read(store, cookie) == 1 and await read(store, cookie) == 1
        deadline = time.monotonic() + 10
        while await read(store, cookie) is not None and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
        assert await read(store, cookie) is None
    finally:
        await store.aclose()


async def test_aclose_stops_the_link_task_and_closes_the_link(
    redis_url: str, redis_client: redis.Redis
) -> None:
    before = len(tracking_links(redis_client))
    store = AsyncSessionStore(redis=redis_url, ttl=100, near_cache=True)
    cookie = await new_session(store, cart=1)
    assert await read(store, cookie) == 1
    tracker = store._tracker
    assert tracker is not None and tracker.task is not None and not tracker.task.done()
    assert len(tracking_links(redis_client)) == before + 1
    await store.aclose()
    assert tracker.task.done()
    cache = store.near_cache
    assert cache is not None and not cache.on and cache.size == (0, 0)
    assert await wait_until(lambda: len(tracking_links(redis_client)) == before)


def test_one_store_on_one_event_loop_after_another(redis_url: str) -> None:
    # Made outside any loop (at import, say); each asyncio.run() is a new loop, which
    # gets the link's task anew once the previous loop is closed.
    store = AsyncSessionStore(redis=redis_url, ttl=100, near_cache=True)
    tracker = store._tracker
    assert tracker is not None and tracker.task is None

    async def request(cookie: str | None) -> tuple[str, Any, asyncio.Task[None] | None]:
        if cookie is None:
            cookie = await new_session(store, cart=1)
        value = await read(store, cookie)
        value = (value, await read(store, cookie))
        return cookie, value, tracker.task

    try:
        cookie, value, first = asyncio.run(request(None))
        assert value == (1, 1) and first is not None and first.done()
        cookie, value, second = asyncio.run(request(cookie))
        assert value == (1, 1) and second is not None and second is not first
        cache = store.near_cache
        assert cache is not None and cache.on and cache.size[0] == 1
    finally:
        asyncio.run(store.aclose())


# --------------------------------------------------------------------- connection kinds


async def check_link(url: str, admin: redis.Redis, **settings: Any) -> None:
    """A near-cached store on ``url`` serves a warm read from memory and sees a change."""
    counter = AsyncCounter(url)
    store = AsyncSessionStore(redis=counter.client, ttl=100, near_cache=True, **settings)
    try:
        cookie = await new_session(store, cart=1)
        assert await read(store, cookie) == 1
        # The creation's push may come after that read (through a TLS front, later still):
        # wait until none has come for 0.2 s, then warm again.
        cache = store.near_cache
        assert cache is not None
        for _ in range(50):
            seen = cache.stamp()
            await asyncio.sleep(0.2)
            if cache.stamp() == seen:
                break
        assert await read(store, cookie) == 1
        counter.reset()
        assert await read(store, cookie) == 1
        assert counter.count == 0, counter.names
        admin.hset(next(admin.scan_iter("hs:*")), "cart", "2")
        await asyncio.sleep(0.001)
        assert await read(store, cookie) == 2
        assert len(tracking_links(admin)) == 1
    finally:
        await store.aclose()
        await counter.aclose()


async def test_on_a_unix_socket(make_server: Callable[..., EmbeddedRedis], tmp_path: Path) -> None:
    server = make_server(unix_socket=str(tmp_path / "r.sock"))
    admin = server.client()
    try:
        await check_link(server.url, admin)
    finally:
        admin.close()


async def test_with_an_acl_user_and_password(make_server: Callable[..., EmbeddedRedis]) -> None:
    server = make_server()
    admin = server.client()
    try:
        web = {"passwords": ["+s3cret"], "keys": ["*"], "commands": ["+@all"]}
        admin.acl_setuser("web", enabled=True, **web)
        admin.acl_setuser("default", enabled=False)
        admin = redis.Redis(port=server.port, username="web", password="s3cret")
        await check_link(f"redis://web:s3cret@127.0.0.1:{server.port}/0", admin)
    finally:
        admin.close()


def make_certificate(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and its key (needs the openssl command)."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subject = ["-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"]
    files = ["-keyout", str(key), "-out", str(cert)]
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            *subject,
            *files,
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return cert, key


class TLSFront:
    """TLS on 127.0.0.1 in front of a plain server port (the embedded servers are built
    without TLS): each connection is unwrapped and piped to the server by two threads."""

    def __init__(self, port: int, cert: Path, key: Path) -> None:
        self.port = port
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.sockets: list[socket.socket] = [self.listener]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.listener.getsockname()[1]}"

    def _accept(self) -> None:
        while True:
            try:
                raw, _ = self.listener.accept()
                client = self.context.wrap_socket(raw, server_side=True)
            except OSError:
                return
            server = socket.create_connection(("127.0.0.1", self.port))
            self.sockets += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                sink.sendall(data)
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()


async def test_over_tls(make_server: Callable[..., EmbeddedRedis], tmp_path: Path) -> None:
    if shutil.which("openssl") is None:
        pytest.skip("no openssl command to make a certificate with")
    cert, key = make_certificate(tmp_path)
    server = make_server()
    front = TLSFront(server.port, cert, key)
    admin = server.client()
    try:
        await check_link(f"rediss://{front.address}/0?ssl_ca_certs={cert}", admin)
    finally:
        admin.close()
        front.close()


# ----------------------------------------------------------------- settings and places


def test_the_link_is_built_from_the_pool_settings() -> None:
    for url, kind in [
        ("redis://u:p@127.0.0.1:1/2", syncconn.Connection),
        ("rediss://127.0.0.1:1/0?ssl_cert_reqs=none", syncconn.SSLConnection),
        ("unix:///tmp/x.sock?db=3", syncconn.UnixDomainSocketConnection),
    ]:
        pool = aioredis.ConnectionPool.from_url(url)
        twin, settings = link_settings(pool.connection_class, pool.connection_kwargs)
        assert twin is kind and settings["protocol"] == 3
        assert "retry" not in settings and not any(k.startswith("orig_") for k in settings)
        twin(**settings)  # the sync class takes every setting
    pool = aioredis.ConnectionPool.from_url("redis://u:p@127.0.0.1:1/2")
    assert link_settings(pool.connection_class, pool.connection_kwargs)[1]["username"] == "u"
    with pytest.raises(TypeError):
        link_settings(aioconn.AbstractConnection, {})


async def test_a_tracker_needs_a_resp3_connection(redis_url: str) -> None:
    pool = aioredis.ConnectionPool.from_url(redis_url)
    kind, settings = link_settings(pool.connection_class, pool.connection_kwargs)
    settings["protocol"] = 2
    with pytest.raises(ValueError, match="RESP3"):
        AsyncTracker(NearCache(), lambda: kind(**settings), "hs:").start()


@pytest.mark.parametrize(
    "value",
    [1, "yes", {"max_sessions": 0}, {"refresh_share": 0.9}, {"nope": 1}],
)
def test_bad_settings_name_near_cache(redis_url: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match="near_cache"):
        AsyncSessionStore(redis=redis_url, near_cache=value)


async def test_a_read_after_a_write_is_one_plain_hmget(
    near: AsyncSessionStore, counter: AsyncCounter
) -> None:
    # As the sync test: with no slide due, the read after a write checks the session with
    # one HMGET instead of running OPEN_NEAR again; a logout elsewhere is still seen.
    cookie = await new_session(near, cart=0)
    for _ in range(2):
        assert await read(near, cookie) == 0
    session = near.open(cookie)
    assert await session.get("cart") == 0 and await session.incr("cart") == 1
    for n in range(2, 30):
        counter.reset()
        session = near.open(cookie)
        assert await session.get("cart") == n - 1
        assert await session.incr("cart") == n
        assert counter.names == ["HMGET", "EVALSHA"], n
    other = AsyncSessionStore(redis=counter.client, ttl=100)
    try:
        await other.open(cookie).invalidate()
    finally:
        await other.aclose()
    session = near.open(cookie)
    assert await session.get("cart") is None and session.new
