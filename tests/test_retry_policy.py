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
import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Literal

import pytest
import redis
import redis.asyncio as aioredis

from hashsession import BackendError, SessionStore
from hashsession.aio import AsyncSessionStore
from hashsession.embedded import EmbeddedRedis
from hashsession.scripts import CREATE, INDEX, LIVE, LOGIN, OPEN, REVOKE

Loss = Literal["drop", "withhold"]
LOSSES: tuple[Loss, ...] = ("drop", "withhold")
# Short, so a withheld reply costs the test half a second.
SOCKET_TIMEOUT = 0.5
_JOIN_TIMEOUT = 5.0


class _Link:
    """One client connection through the proxy, paired with its own connection to the server."""

    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.client = client
        self.server = server
        #: How this link loses the reply to the command it carries next, once armed.
        self.loss: Loss | None = None
        self.threads: list[threading.Thread] = []

    def close(self) -> None:
        """Close both sides; shutting down first wakes a pump blocked in ``recv``."""
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class LossyProxy:
    """A TCP proxy on 127.0.0.1 that forwards everything, or loses one reply when armed.

    After :meth:`lose_next`, the next bytes any client sends are forwarded to the
    server and the server's reply is read, so the command has run, but never
    passed on: ``"drop"`` then closes the client's connection, ``"withhold"``
    keeps it open and silent until the client gives up. Each client connection
    gets its own connection to the server and two daemon threads pumping bytes.
    """

    def __init__(self, host: str, port: int) -> None:
        self._target = (host, port)
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._armed: Loss | None = None
        self._links: list[_Link] = []
        self._closed = False
        #: How many client connections the proxy has accepted.
        self.connections = 0
        #: The replies the server sent that the proxy did not pass on.
        self.lost_replies: list[bytes] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def url(self, **options: float) -> str:
        """A ``redis://`` URL through the proxy, with connection options in the query."""
        query = "&".join(f"{name}={value}" for name, value in options.items())
        return f"redis://127.0.0.1:{self.port}/0" + (f"?{query}" if query else "")

    def lose_next(self, loss: Loss) -> None:
        """Lose the reply to the next command any client sends, in the way ``loss`` says."""
        with self._lock:
            self._armed = loss

    def drop_all(self) -> None:
        """Close every open connection (as a server restart would) and keep listening."""
        with self._lock:
            links, self._links = self._links, []
        self._stop(links)

    def close(self) -> None:
        """Stop listening, close every connection and wait for the threads to end."""
        with self._lock:
            self._closed = True
            links, self._links = self._links, []
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._acceptor.join(_JOIN_TIMEOUT)
        self._stop(links)

    @staticmethod
    def _stop(links: list[_Link]) -> None:
        for link in links:
            link.close()
        for link in links:
            for thread in link.threads:
                thread.join(_JOIN_TIMEOUT)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self._target)
            except OSError:
                client.close()
                continue
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = _Link(client, server)
            for pump in (self._upstream, self._downstream):
                thread = threading.Thread(target=pump, args=(link,), daemon=True)
                link.threads.append(thread)
                thread.start()
            with self._lock:
                closed = self._closed
                if not closed:
                    self._links.append(link)
                    self.connections += 1
            if closed:
                link.close()
                return

    def _upstream(self, link: _Link) -> None:
        """Client to server; the first command after arming marks its link as losing."""
        try:
            while data := link.client.recv(65536):
                with self._lock:
                    if self._armed is not None and link.loss is None:
                        link.loss, self._armed = self._armed, None
                link.server.sendall(data)
        except OSError:
            pass
        finally:
            link.close()

    def _downstream(self, link: _Link) -> None:
        """Server to client; on a losing link, replies are kept here instead."""
        try:
            while data := link.server.recv(65536):
                if link.loss is None:
                    link.client.sendall(data)
                    continue
                with self._lock:
                    self.lost_replies.append(data)
                if link.loss == "drop":
                    break
        except OSError:
            pass
        finally:
            link.close()


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
    for script in (*LIVE.values(), OPEN, CREATE, LOGIN, REVOKE, INDEX):
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
