"""Following a Sentinel failover at once: one listener per process and service.

redis-py's Sentinel clients ask the sentinels where the master is only when they
open a connection, so after a failover their pooled connections go on writing to
the old master until it is demoted (about ten seconds after a ``SENTINEL
FAILOVER``), and the failover discards those writes. A :class:`Watch` listens on
every sentinel's pub/sub instead (one daemon thread per process and service,
shared by every store and event loop) and moves the store at once:

- when the elected sentinel sends ``REPLICAOF NO ONE`` to the chosen replica
  (``+failover-state-wait-promotion``), the listener asks that replica ``ROLE``
  every few milliseconds and switches the moment it answers ``master``; the
  sentinels' own announcement (``+promoted-slave``, ``+switch-master``) is the
  fallback, a failover they abort (``-failover-abort-*``) switches back;
- a switch bumps :attr:`Watch.epoch`: the pools built from URLs
  (:mod:`hashsession.topology`) reconnect a connection made before it when it is
  next taken from the pool, and a reply that arrives on such a connection after
  the switch raises instead of being acknowledged (the command reached the old
  master, whose writes the failover drops);
- it keeps the sentinels' count of healthy replicas (:meth:`Watch.wanted`), so
  ``wait_for_replicas="auto"`` waits for one replica exactly when there is one
  a failover could promote.

The listener costs nothing per command (an integer compare), survives sentinels
going away (it listens on all of them and reconnects), and stops when the last
store using it is closed.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
import time
import weakref
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.connection import SSLConnection as AsyncSSLConnection
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.asyncio.sentinel import SentinelConnectionPool as AsyncSentinelPool
from redis.asyncio.sentinel import SentinelManagedConnection as AsyncSentinelConnection
from redis.backoff import NoBackoff
from redis.connection import SSLConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.retry import Retry
from redis.sentinel import Sentinel, SentinelConnectionPool, SentinelManagedConnection

from hashsession.direct import AsyncDirectRedis, DirectRedis

__all__ = ["CHANNELS", "Watch", "follow", "master_client", "watch"]

log = logging.getLogger("hashsession")

#: The sentinels' pub/sub channels the listener subscribes to.
CHANNELS = (
    "+switch-master",
    "+failover-state-wait-promotion",
    "+promoted-slave",
    "-failover-abort-not-elected",
    "-failover-abort-no-good-slave",
    "-failover-abort-slave-timeout",
    "+slave",
    "+sdown",
    "-sdown",
    "+convert-to-slave",
)
# Seconds between checks of a sentinel that went away, and between views of the replicas.
_RECONNECT = 0.5
_REFRESH = 5.0
# How long the listener polls a replica being promoted, and how often.
_PROMOTION_WAIT = 5.0
_PROMOTION_POLL = 0.002
# Seconds the listener trusts a promotion it saw itself over sentinels that disagree.
_AHEAD_LIMIT = 30.0

Address = tuple[str, int]


class Watch:
    """The master of one Sentinel service as this process follows it, kept by a thread."""

    def __init__(
        self,
        sentinels: Sequence[Address],
        service: str,
        sentinel_options: Mapping[str, Any],
        server_options: Mapping[str, Any],
    ) -> None:
        self.sentinels = list(sentinels)
        self.service = service
        self._sentinel_options = {
            **sentinel_options,
            "retry": Retry(NoBackoff(), 0),
            "socket_timeout": min(float(sentinel_options.get("socket_timeout") or 2.0), 2.0),
            "socket_connect_timeout": min(
                float(sentinel_options.get("socket_connect_timeout") or 2.0), 2.0
            ),
        }
        self._server_options = {
            k: v
            for k, v in server_options.items()
            if k in ("username", "password", "ssl", "ssl_cert_reqs", "ssl_ca_certs")
            or k.startswith("ssl_")
        }
        #: Bumped at every switch: connections made before it must not be used again.
        self.epoch = 0
        #: Bumped at every switch and when the sentinels confirm one the listener saw
        #: first: a near cache's tracking link made before it is dropped (see
        #: :mod:`hashsession.nearcache`), as a ready client's pool moves only then.
        self.changes = 0
        #: The master this process writes to, once known (from the listener).
        self.master: Address | None = None
        #: A promoted replica the listener switched to before the sentinels announced it.
        self.ahead: Address | None = None
        #: Healthy replicas the sentinels know of (``None``: not known yet).
        self.replicas: int | None = None
        #: Switches followed (for tests and the benchmark), and when the last one happened.
        self.switches = 0
        self.switched_at = 0.0
        self._callbacks: list[Callable[[Address, bool], None]] = []
        self._users = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._waker: socket.socket | None = None  # the write end of the thread's wake pair

    def __repr__(self) -> str:
        return f"<Watch service={self.service!r} master={self.master} epoch={self.epoch}>"

    # ------------------------------------------------------------ the stores' side

    def wanted(self, asked: int = 1) -> int:
        """Replicas a critical write must wait for under ``"auto"``: ``asked`` unless the
        sentinels know no healthy replica (then nothing can be promoted: 0)."""
        return 0 if self.replicas == 0 else asked

    def acquire(self) -> None:
        """One more store uses this watch; the first starts the listener thread."""
        with self._lock:
            self._users += 1
            if self._thread is None:
                self._stop.clear()
                # A byte on this pair wakes the listener from its wait, so a release
                # stops it at once instead of at its next timeout.
                wake, self._waker = socket.socketpair()
                self._thread = threading.Thread(
                    target=self._run,
                    args=(wake,),
                    name=f"hashsession-sentinel-{self.service}",
                    daemon=True,
                )
                self._thread.start()

    def release(self) -> None:
        """One store less; the last one stops the thread (and waits for it, briefly)."""
        with self._lock:
            self._users -= 1
            if self._users > 0 or self._thread is None:
                return
            thread, self._thread = self._thread, None
            self._stop.set()
            waker, self._waker = self._waker, None
            if waker is not None:
                with contextlib.suppress(OSError):
                    waker.send(b"x")
            with _registry_lock:
                if _watches.get(self._key()) is self:
                    del _watches[self._key()]
        if thread is not threading.current_thread():
            thread.join(5.0)
        if waker is not None:
            waker.close()

    def locate(self) -> Address:
        """The master as this process follows it now (asking the sentinels if the
        listener has not heard yet); a near cache's tracking link connects there."""
        with self._lock:
            known = self.ahead or self.master
        if known is not None:
            return known
        for address in self.sentinels:
            client = self._client(address)
            try:
                host, port = client.sentinel_get_master_addr_by_name(self.service)  # type: ignore[misc]
                return _text(host), int(port)
            except (redis.RedisError, OSError, TypeError, ValueError):
                continue
            finally:
                client.close()
        raise RedisConnectionError(f"no sentinel names the master of {self.service!r}")

    def on_switch(self, callback: Callable[[Address, bool], None]) -> None:
        """Call ``callback(new_master, ahead)`` (in the listener thread) at every switch;
        ``ahead``: the sentinels have not announced it yet."""
        self._callbacks.append(callback)

    def _key(self) -> tuple[Any, ...]:
        return (tuple(self.sentinels), self.service)

    # ------------------------------------------------------------ the listener

    def switch(self, address: Address, *, ahead: bool = False) -> None:
        """Make ``address`` the master: connections made before now are dropped.

        ``ahead``: seen promoted by the listener itself, not announced by the sentinels
        yet (the callbacks hear of it again, with ``ahead=False``, once they do).
        """
        replicas = self._replicas_of(address) if address != self.master else None
        with self._lock:
            if replicas is not None and self.master is not None:
                self.replicas = replicas
            confirmed = not ahead and self.ahead == address
            self.ahead = address if ahead else None
            old = self.master
            if address == old and not confirmed:
                return
            self.master = address
            if old is None:  # the first view, not a switch
                return
            self.changes += 1
            if address != old:
                self.epoch += 1
                self.switches += 1
                self.switched_at = time.monotonic()
                log.warning(
                    "hashsession: Sentinel service %r switched master from %s:%s to %s:%s%s",
                    self.service,
                    *old,
                    *address,
                    " (promotion seen before the sentinels announced it)" if ahead else "",
                )
        for callback in list(self._callbacks):
            try:
                callback(address, ahead)
            except Exception:  # a pool's own trouble must not stop the listener
                log.exception("hashsession: a Sentinel switch callback failed")

    def _run(self, wake: socket.socket) -> None:
        subscribed: dict[Address, Any] = {}
        tried: dict[Address, float] = {}
        next_refresh = 0.0
        try:
            while not self._stop.is_set():
                now = time.monotonic()
                for address in self.sentinels:
                    if address not in subscribed and now - tried.get(address, 0.0) >= _RECONNECT:
                        tried[address] = now
                        pubsub = self._subscribe(address)
                        if pubsub is not None:
                            subscribed[address] = pubsub
                            next_refresh = 0.0  # it may have missed a switch meanwhile
                if now >= next_refresh:
                    next_refresh = now + (_REFRESH if self._refresh() else _RECONNECT)
                self._read(subscribed, wake)
        finally:
            for pubsub in subscribed.values():
                _close(pubsub)
            wake.close()

    def _client(self, address: Address) -> redis.Redis:
        return redis.Redis(host=address[0], port=address[1], **self._sentinel_options)

    def _subscribe(self, address: Address) -> Any:
        client = self._client(address)
        pubsub = client.pubsub()
        try:
            pubsub.subscribe(*CHANNELS)
        except (redis.RedisError, OSError):
            _close(pubsub)
            client.close()
            return None
        return pubsub

    def _refresh(self) -> bool:
        """Ask the sentinels for the master and its healthy replicas; whether one answered."""
        for address in self.sentinels:
            client = self._client(address)
            try:
                named: Any = client.sentinel_get_master_addr_by_name(self.service)
                host, port = named
                replicas: Any = client.sentinel_slaves(self.service)
            except (redis.RedisError, OSError, TypeError, ValueError):
                continue
            finally:
                client.close()
            self.replicas = sum(1 for r in replicas if _healthy(r))
            master = (_text(host), int(port))
            stale = time.monotonic() - self.switched_at > _AHEAD_LIMIT
            if self.ahead is None or master == self.ahead or stale:
                self.switch(master)
            return True
        return False

    def _read(self, subscribed: dict[Address, Any], wake: socket.socket) -> None:
        """Handle every message waiting, then wait a little for more (or a wake-up)."""
        socks: dict[Any, Address | None] = {wake: None}
        for address, pubsub in list(subscribed.items()):
            try:
                while (message := pubsub.get_message(timeout=0)) is not None:
                    self._handle(message)
                sock = getattr(pubsub.connection, "_sock", None)
            except (redis.RedisError, OSError, ValueError, AttributeError):
                sock = None
            if sock is None:
                _close(subscribed.pop(address))
                continue
            socks[sock] = address
        with contextlib.suppress(OSError, ValueError):
            select.select(list(socks), [], [], _RECONNECT)

    def _handle(self, message: Mapping[str, Any]) -> None:
        if message.get("type") != "message":
            return
        channel = _text(message.get("channel"))
        words = _text(message.get("data")).split()
        if channel == "+switch-master":
            if len(words) == 5 and words[0] == self.service:
                self.switch((words[3], int(words[4])))
                self.replicas = None  # asked again below
                self._refresh()
            return
        # Instance events: <type> <name> <ip> <port> [@ <master-name> <ip> <port>]
        if len(words) < 4:
            return
        master_name = words[5] if len(words) >= 8 and words[4] == "@" else words[1]
        if master_name != self.service:
            return
        if channel == "+failover-state-wait-promotion" and words[0] == "slave":
            self._await_promotion((words[2], int(words[3])))
        elif channel == "+promoted-slave" and words[0] == "slave":
            self.switch((words[2], int(words[3])), ahead=True)
        elif channel.startswith("-failover-abort"):
            self.ahead = None
            self._refresh()
        else:  # a replica came, went or changed: count them again
            self._refresh()

    def _server(self, address: Address) -> redis.Redis:
        return redis.Redis(
            host=address[0],
            port=address[1],
            socket_timeout=0.5,
            socket_connect_timeout=0.5,
            retry=Retry(NoBackoff(), 0),
            **self._server_options,
        )

    def _replicas_of(self, address: Address) -> int | None:
        """How many replicas the master at ``address`` has connected (``ROLE``), if it says."""
        client = self._server(address)
        try:
            role: Any = client.execute_command("ROLE")  # type: ignore[no-untyped-call]
            return len(role[2]) if _text(role[0]) == "master" else None
        except (redis.RedisError, OSError, IndexError, TypeError):
            return None
        finally:
            client.close()

    def _await_promotion(self, candidate: Address) -> None:
        """Poll ``candidate`` (being promoted) and switch to it once it is a master."""
        client = self._server(candidate)
        deadline = time.monotonic() + _PROMOTION_WAIT
        try:
            while time.monotonic() < deadline and not self._stop.is_set():
                try:
                    role: Any = client.execute_command("ROLE")  # type: ignore[no-untyped-call]
                    if _text(role[0]) == "master":
                        self.switch(candidate, ahead=True)
                        return
                except (redis.RedisError, OSError, IndexError):
                    pass
                time.sleep(_PROMOTION_POLL)
        finally:
            client.close()


def _healthy(replica: Mapping[str, Any]) -> bool:
    """Whether the sentinels see ``replica`` up: one they may promote. Its link to the
    master need not be "ok" yet (a replica still syncing can be promoted too), so a store
    that met it early waits for it rather than acknowledging what a failover could undo."""
    return not (
        replica.get("is_sdown") or replica.get("is_odown") or replica.get("is_disconnected")
    )


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _close(pubsub: Any) -> None:
    with contextlib.suppress(redis.RedisError, OSError):
        pubsub.close()


_watches: dict[tuple[Any, ...], Watch] = {}
_registry_lock = threading.Lock()


def watch(
    sentinels: Sequence[Address],
    service: str,
    sentinel_options: Mapping[str, Any],
    server_options: Mapping[str, Any],
) -> Watch:
    """The process's watch for ``service`` on these sentinels, acquired once more
    (call :meth:`Watch.release` when done)."""
    key = (tuple((str(h), int(p)) for h, p in sentinels), service)
    with _registry_lock:
        found = _watches.get(key)
        if found is None:
            found = _watches[key] = Watch(key[0], service, sentinel_options, server_options)
    found.acquire()
    return found


# --------------------------------------------------------------------------- pools


class _WatchedSentinel(Sentinel):
    """redis-py's Sentinel client, naming a promotion the listener saw before the sentinels."""

    watch: Watch | None = None

    def discover_master(self, service_name: str) -> Any:
        watch = self.watch
        if watch is not None and watch.ahead is not None:
            return watch.ahead
        return super().discover_master(service_name)


class _AsyncWatchedSentinel(AsyncSentinel):
    """The asyncio twin of :class:`_WatchedSentinel`."""

    watch: Watch | None = None

    async def discover_master(self, service_name: str) -> Any:
        watch = self.watch
        if watch is not None and watch.ahead is not None:
            return watch.ahead
        return await super().discover_master(service_name)


_MOVED = "the Sentinel master changed while the command was in flight (it reached the old master)"
_CLOSED = "the connection to the master closed while its reply was awaited"


class _FencedConnection(SentinelManagedConnection):
    """A connection to the master that raises for a reply arriving after a switch."""

    _watch: Watch | None = None
    _epoch = 0

    def connect(self) -> Any:
        if self._sock:
            return None
        watch = getattr(self.connection_pool.connection_pool_ref(), "watch", None)
        epoch = 0 if watch is None else watch.epoch
        self._watch = None  # the handshake's replies are not fenced
        out = super().connect()  # type: ignore[no-untyped-call]
        self._watch, self._epoch = watch, epoch
        return out

    def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            reply = super().read_response(*args, **kwargs)
        except AttributeError as exc:  # its parser was torn down: the connection closed
            self.disconnect()  # type: ignore[no-untyped-call]
            raise RedisConnectionError(_CLOSED) from exc
        watch = self._watch
        if watch is not None and watch.epoch != self._epoch:
            self.disconnect()  # type: ignore[no-untyped-call]
            raise RedisConnectionError(_MOVED)
        return reply


class _FencedSSLConnection(_FencedConnection, SSLConnection):
    """:class:`_FencedConnection` over TLS."""


class _BlockingSentinelPool(SentinelConnectionPool, redis.BlockingConnectionPool):
    """Sentinel's pool for the master, waiting for a free connection instead of failing,
    and never handing out a connection made before the last switch."""

    watch: Watch | None = None
    unwatch: Callable[[], Any] | None = None

    def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        connection = super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        watch = self.watch
        if watch is not None and connection._epoch != watch.epoch:
            connection.disconnect()
            try:
                self.ensure_connection(connection)
            except BaseException:
                self.release(connection)  # type: ignore[no-untyped-call]
                raise
        return connection


class _AsyncFencedConnection(AsyncSentinelConnection):
    """The asyncio twin of :class:`_FencedConnection`."""

    _watch: Watch | None = None
    _epoch = 0

    async def connect(self) -> Any:
        if self._reader:
            return None
        watch = getattr(self.connection_pool, "watch", None)
        epoch = 0 if watch is None else watch.epoch
        self._watch = None  # the handshake's replies are not fenced
        out = await super().connect()  # type: ignore[no-untyped-call]
        self._watch, self._epoch = watch, epoch
        return out

    async def read_response(self, *args: Any, **kwargs: Any) -> Any:
        try:
            reply = await super().read_response(*args, **kwargs)
        except AttributeError as exc:  # its reader was torn down: the connection closed
            await self.disconnect()
            raise RedisConnectionError(_CLOSED) from exc
        watch = self._watch
        if watch is not None and watch.epoch != self._epoch:
            await self.disconnect()
            raise RedisConnectionError(_MOVED)
        return reply


class _AsyncFencedSSLConnection(_AsyncFencedConnection, AsyncSSLConnection):
    """:class:`_AsyncFencedConnection` over TLS."""


class _AsyncBlockingSentinelPool(AsyncSentinelPool, aioredis.BlockingConnectionPool):
    """The asyncio twin of :class:`_BlockingSentinelPool`."""

    watch: Watch | None = None
    unwatch: Callable[[], Any] | None = None

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        connection = await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        watch = self.watch
        if watch is not None and connection._epoch != watch.epoch:
            await connection.disconnect()
            try:
                await self.ensure_connection(connection)
            except BaseException:
                await self.release(connection)
                raise
        return connection


def master_client(
    flavour: str,
    sentinels: Sequence[Address],
    service: str,
    sentinel_options: Mapping[str, Any],
    server_options: Mapping[str, Any],
) -> Any:
    """A client for ``service``'s master (``flavour`` ``"sync"`` or ``"asyncio"``) whose pool
    follows the process's :class:`Watch` of the service."""
    options = dict(server_options)
    ssl = bool(options.pop("ssl", False))
    if flavour == "sync":
        manager: Any = _WatchedSentinel(list(sentinels), sentinel_kwargs=dict(sentinel_options))
        pool_class: Any = _BlockingSentinelPool
        connection_class: Any = _FencedSSLConnection if ssl else _FencedConnection
        client_class: Any = DirectRedis
    else:
        manager = _AsyncWatchedSentinel(list(sentinels), sentinel_kwargs=dict(sentinel_options))
        pool_class = _AsyncBlockingSentinelPool
        connection_class = _AsyncFencedSSLConnection if ssl else _AsyncFencedConnection
        client_class = AsyncDirectRedis
    client = manager.master_for(
        service,
        redis_class=client_class,
        connection_pool_class=pool_class,
        connection_class=connection_class,
        **options,
    )
    found = watch(sentinels, service, sentinel_options, server_options)
    manager.watch = found
    pool = client.connection_pool
    pool.watch = found
    pool.unwatch = weakref.finalize(pool, found.release)
    return client


def follow(client: Any) -> tuple[Watch | None, Callable[[], Any]]:
    """The :class:`Watch` ``client`` follows, and what to call when done with it.

    A client built by :func:`master_client` has one already. A ready client from
    ``Sentinel(...).master_for(...)`` gets one too, acting only on switches the
    sentinels announced: its idle connections are closed (sync), and connections in
    use are dropped when they return to the pool. Any other client: ``(None, noop)``.
    """
    pool = getattr(client, "connection_pool", None)
    own = getattr(pool, "watch", None)
    if isinstance(own, Watch):
        unwatch = getattr(pool, "unwatch", None)
        return own, (unwatch if unwatch is not None else _noop)
    if not isinstance(pool, (SentinelConnectionPool, AsyncSentinelPool)) or not pool.is_master:
        return None, _noop
    manager = pool.sentinel_manager
    sentinels = [
        (str(kwargs["host"]), int(kwargs["port"]))
        for kwargs in (s.connection_pool.connection_kwargs for s in manager.sentinels)
    ]
    found = watch(sentinels, pool.service_name, manager.sentinel_kwargs, pool.connection_kwargs)
    found.on_switch(partial(_ready_switch, weakref.ref(pool)))
    return found, weakref.finalize(client, found.release)


def _ready_switch(pool_ref: Callable[[], Any], address: Address, ahead: bool) -> None:
    pool = pool_ref()
    if pool is None or ahead:
        return
    if isinstance(pool, SentinelConnectionPool):
        pool.proxy.master_address = address  # connections to the old one are dropped on release
        pool.disconnect(inuse_connections=False)
    else:  # asyncio: nothing can be awaited from this thread
        pool.master_address = address


def _noop() -> None:
    return None
