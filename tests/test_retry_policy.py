"""A write whose reply is lost is never sent twice by a store built from a URL.

A ``redis.Redis(host=..., port=...)`` resends a command after a
``ConnectionError`` or ``TimeoutError`` (ten times in redis-py 8.1), but the
server may have run it already: only its reply was lost. For ``incr`` that
counts twice. A store that builds its client from a URL
(``topology.sync_client`` / ``async_client``) gets no command retries: the lost
reply surfaces as :class:`~hashsession.BackendError` and the counter moved
exactly once. A client the user passes in keeps its own policy; the controls
below show redis-py's default one applying the increment twice, which is what
makes the first tests able to fail. (A client from ``Redis.from_url`` gets no
retries in redis-py 8.1, so it would not do as a control.)

Replies are lost by :class:`LossyProxy`, a real TCP proxy in front of the
shared redis-server: the server runs the command and the proxy swallows its
reply, then drops the client's connection or stays silent past the client's
socket timeout. The counter is read straight from the server, not through the
proxy.

Not covered: a Cluster. Its client learns the nodes' own addresses from the
slot map and connects to them directly, so losing a reply there would take a
proxy per node plus rewriting the slot map.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import redis
import redis.asyncio as aioredis

from hashsession import BackendError, SessionStore
from hashsession.aio import AsyncSessionStore
from hashsession.embedded import EmbeddedRedis
from hashsession.scripts import EVERY
from lossy_proxy import LOSSES, Loss, LossyProxy

# Short, so a withheld reply costs the test half a second.
SOCKET_TIMEOUT = 0.5


@pytest.fixture
def proxy(redis_server: EmbeddedRedis) -> Iterator[LossyProxy]:
    """A :class:`LossyProxy` in front of the shared server; stopped after the test."""
    assert redis_server.port is not None
    lossy = LossyProxy("127.0.0.1", redis_server.port)
    try:
        yield lossy
    finally:
        lossy.close()


@pytest.fixture
def direct(redis_server: EmbeddedRedis) -> Iterator[SessionStore]:
    """A store talking straight to the server, with every script already loaded there.

    Loading the scripts first means the command whose reply is lost is the
    increment itself, never an ``EVALSHA`` refused with ``NOSCRIPT``.
    """
    store = SessionStore(redis=redis_server.url, ttl=100)
    for script in EVERY:
        store.client.script_load(script.source)
    try:
        yield store
    finally:
        store.close()


def new_counter(direct: SessionStore) -> str:
    """The cookie value of a new session whose counter ``n`` is 1."""
    session = direct.open()
    assert session.incr("n") == 1
    assert session.id is not None
    return direct.config.cookie_value(session.id)


def counter(direct: SessionStore, cookie: str) -> int:
    """The counter ``n`` as the server has it."""
    value = direct.open_id(cookie)["n"]
    assert isinstance(value, int)
    return value


# -- a store built from a URL: the lost write is reported, applied once --------


@pytest.mark.parametrize("loss", LOSSES)
def test_url_store_reports_a_lost_reply_and_counts_once(
    loss: Loss, proxy: LossyProxy, direct: SessionStore
) -> None:
    cookie = new_counter(direct)
    store = SessionStore(redis=proxy.url(socket_timeout=SOCKET_TIMEOUT), ttl=100)
    try:
        session = store.open_id(cookie)
        assert session["n"] == 1  # connected and opened, through the proxy
        proxy.lose_next(loss)
        with pytest.raises(BackendError):
            session.incr("n")
        assert proxy.lost_replies == [b":2\r\n"]
        assert counter(direct, cookie) == 2
        # The store is not stuck: the next command goes out on a fresh connection.
        assert session.incr("n") == 3
    finally:
        store.close()
    assert counter(direct, cookie) == 3


@pytest.mark.parametrize("loss", LOSSES)
async def test_async_url_store_reports_a_lost_reply_and_counts_once(
    loss: Loss, proxy: LossyProxy, direct: SessionStore
) -> None:
    cookie = new_counter(direct)
    store = AsyncSessionStore(redis=proxy.url(socket_timeout=SOCKET_TIMEOUT), ttl=100)
    try:
        session = store.open_id(cookie)
        assert await session.get("n") == 1
        proxy.lose_next(loss)
        with pytest.raises(BackendError):
            await session.incr("n")
        assert proxy.lost_replies == [b":2\r\n"]
        assert counter(direct, cookie) == 2
        assert await session.incr("n") == 3
    finally:
        await store.aclose()
    assert counter(direct, cookie) == 3


# -- controls: a client with redis-py's default retries counts twice -----------


@pytest.mark.parametrize("loss", LOSSES)
def test_client_with_default_retries_counts_a_lost_write_twice(
    loss: Loss, proxy: LossyProxy, direct: SessionStore
) -> None:
    cookie = new_counter(direct)
    # Built from host and port: that is how redis-py gives the default retries (a
    # client from from_url() or from a pool built from a URL gets none).
    client = redis.Redis(host="127.0.0.1", port=proxy.port, socket_timeout=SOCKET_TIMEOUT)
    store = SessionStore(redis=client, ttl=100)
    try:
        session = store.open_id(cookie)
        assert session["n"] == 1
        proxy.lose_next(loss)
        assert session.incr("n") == 3  # the resent command's reply
        assert proxy.lost_replies == [b":2\r\n"]
    finally:
        store.close()
        client.close()
    assert counter(direct, cookie) == 3


@pytest.mark.parametrize("loss", LOSSES)
async def test_async_client_with_default_retries_counts_a_lost_write_twice(
    loss: Loss, proxy: LossyProxy, direct: SessionStore
) -> None:
    cookie = new_counter(direct)
    client = aioredis.Redis(host="127.0.0.1", port=proxy.port, socket_timeout=SOCKET_TIMEOUT)
    store = AsyncSessionStore(redis=client, ttl=100)
    try:
        session = store.open_id(cookie)
        assert await session.get("n") == 1
        proxy.lose_next(loss)
        assert await session.incr("n") == 3
        assert proxy.lost_replies == [b":2\r\n"]
    finally:
        await client.aclose()
    assert counter(direct, cookie) == 3


# -- without retries, a dropped idle connection is still replaced ---------------


async def let_loop_see_closes() -> None:
    """Let the event loop read the end of the dropped connections, as it does between requests.

    An asyncio pool spots a dead connection from what the loop has already read;
    one it has not read yet fails the command that takes it (there is no resend).
    """
    await asyncio.sleep(0.01)


def test_url_store_recovers_after_its_idle_connection_drops(
    proxy: LossyProxy, direct: SessionStore
) -> None:
    cookie = new_counter(direct)
    store = SessionStore(redis=proxy.url(socket_timeout=SOCKET_TIMEOUT), ttl=100)
    try:
        session = store.open_id(cookie)
        assert session["n"] == 1
        proxy.drop_all()  # as a Redis restart or an idle timeout on the way would
        assert session["n"] == 1
        proxy.drop_all()
        assert session.incr("n") == 2
    finally:
        store.close()
    assert proxy.connections == 3
    assert counter(direct, cookie) == 2


async def test_async_url_store_recovers_after_its_idle_connection_drops(
    proxy: LossyProxy, direct: SessionStore
) -> None:
    cookie = new_counter(direct)
    store = AsyncSessionStore(redis=proxy.url(socket_timeout=SOCKET_TIMEOUT), ttl=100)
    try:
        session = store.open_id(cookie)
        assert await session.get("n") == 1
        proxy.drop_all()
        await let_loop_see_closes()
        assert await session.get("n") == 1
        proxy.drop_all()
        await let_loop_see_closes()
        assert await session.incr("n") == 2
    finally:
        await store.aclose()
    assert proxy.connections == 3
    assert counter(direct, cookie) == 2
