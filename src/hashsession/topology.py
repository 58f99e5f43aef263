"""Redis topologies by URL: one server, Sentinel or Cluster, for both flavours.

A store's ``redis=`` setting names where sessions live. Besides a ready
redis-py client, it takes one of these URLs (see ``docs/topologies.md``)::

    redis://[[user]:password@]host[:6379][/db][?option=value&...]
    rediss://...                                   (TLS)
    unix://[[user]:password@]/path/to/redis.sock[?db=N&...]
    redis+sentinel://[[user]:password@]host[:26379][,host[:26379]...]/service[/db][?...]
    rediss+sentinel://...                          (TLS to sentinels and servers)
    redis+cluster://[[user]:password@]host[:6379][,host[:6379]...][/0][?...]
    rediss+cluster://...                           (TLS)

The query string holds redis-py connection options (``socket_timeout``,
``socket_connect_timeout``, ``health_check_interval``, ``client_name``, ...),
cast the way redis-py casts them. Sentinel URLs also take ``sentinel_username``
and ``sentinel_password`` for sentinels that require a login of their own.

Every session operation names exactly one key (two in one slot for
``regenerate()``), so sessions work unchanged on a Cluster: redis-py routes
each command to the node owning its key.

Every client built here has explicit timeouts, so a server that stops answering
costs a request seconds, not forever (redis-py's own default): at most
:data:`SOCKET_CONNECT_TIMEOUT` (5 s) to connect to a server or sentinel and
:data:`SOCKET_TIMEOUT` (10 s) for a reply (longer when ``wait_timeout`` needs it).
The URL's ``socket_connect_timeout`` and ``socket_timeout`` override them.

Clients built here never resend a command whose reply was lost: redis-py
retries on a dropped connection or a socket timeout by default, and a resent
increment would count twice. A failed command raises (as ``BackendError``
through a store) and the caller decides. A cluster client still follows
``MOVED``/``ASK`` redirects and retries ``CLUSTERDOWN``: refusals, where
nothing ran.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias
from urllib.parse import unquote, urlsplit

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.connection import parse_url as parse_redis_url
from redis.exceptions import (
    ClusterDownError,
    RedisClusterException,
    RedisError,
    SlotNotCoveredError,
)
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.maint_notifications import MaintNotificationsConfig
from redis.retry import Retry

from hashsession.direct import AsyncDirectRedis, DirectRedis
from hashsession.errors import BackendError, ConfigurationError
from hashsession.failover import master_client

__all__ = [
    "SOCKET_CONNECT_TIMEOUT",
    "SOCKET_TIMEOUT",
    "AsyncClient",
    "SyncClient",
    "Topology",
    "async_client",
    "is_cluster",
    "parse",
    "sync_client",
]

#: What a sync store talks through: one server's (or Sentinel's master's) client, or a cluster's.
SyncClient: TypeAlias = redis.Redis | RedisCluster
#: The asyncio twin of :data:`SyncClient`.
AsyncClient: TypeAlias = aioredis.Redis | AsyncRedisCluster

Kind = Literal["standalone", "sentinel", "cluster"]

_SCHEMES: dict[str, tuple[str, Kind]] = {
    "redis": ("redis", "standalone"),
    "rediss": ("rediss", "standalone"),
    "unix": ("unix", "standalone"),
    "redis+sentinel": ("redis", "sentinel"),
    "rediss+sentinel": ("rediss", "sentinel"),
    "redis+cluster": ("redis", "cluster"),
    "rediss+cluster": ("rediss", "cluster"),
}
_DEFAULT_PORT: dict[Kind, int] = {"standalone": 6379, "sentinel": 26379, "cluster": 6379}
# Options for the sentinels' own connections, taken out of the query string.
_SENTINEL_AUTH = {"sentinel_username": "username", "sentinel_password": "password"}
# A burst of concurrent requests waits up to this long for one of this many connections.
_MAX_CONNECTIONS = 200
_POOL_TIMEOUT = 20
# One server named by a plain URL gets redis-py's own pool, which costs less per command
# than the blocking one (about 1 us sync, 10 us asyncio, measured by bench/run-core and
# bench/run-async), with room for this many connections: a process never needs so many
# commands in flight, and the server's own limit (maxclients) is 10,000.
_SERVER_CONNECTIONS = 10_000
#: Seconds a client built from a URL waits to connect to a server or a sentinel.
SOCKET_CONNECT_TIMEOUT = 5.0
#: Seconds a client built from a URL waits for a reply before it raises (nothing is resent).
SOCKET_TIMEOUT = 10.0


# Errors after which a cluster client may resend a command: the cluster refused it.
_REFUSALS = (ClusterDownError, SlotNotCoveredError)


class _Cluster(RedisCluster):
    """redis-py's cluster client, resending a command only after the cluster refused it.

    When a node dies, redis-py drops every connection to it, including ones other
    threads are reading from; those threads then get a ``ValueError`` or
    ``AttributeError`` from the closed socket (seen in bench/run-faults). They are
    lost replies like any other, so they surface as ``ConnectionError``.
    """

    ERRORS_ALLOW_RETRY = _REFUSALS  # type: ignore[assignment]

    def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return super().execute_command(*args, **kwargs)  # type: ignore[no-untyped-call]
        except (ValueError, AttributeError) as exc:
            raise RedisConnectionError(f"connection closed under the command: {exc!r}") from exc


class _BoundedAsyncCluster(AsyncRedisCluster):
    """redis-py's asyncio cluster client, made safe for a burst of first commands.

    redis-py's raises ``MaxConnectionsError`` as soon as a node's ``max_connections``
    connections are all busy; here at most that many commands are in flight at once,
    and the others wait up to ``timeout`` seconds for a turn. And commands sent
    while it has not read the slot map yet are routed as if they had no key (MOVED,
    then a re-read of the map that drops connections in use, then retries that can
    run a write twice), so every command waits for the slot map first. Like
    :class:`_Cluster`, it resends a command only after the cluster refused it.
    """

    ERRORS_ALLOW_RETRY = _REFUSALS  # type: ignore[assignment]

    def __init__(self, timeout: float | None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._turns = asyncio.Semaphore(int(kwargs["max_connections"]))
        self._turn_timeout = timeout

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        try:
            await asyncio.wait_for(self._turns.acquire(), self._turn_timeout)
        except asyncio.TimeoutError:
            raise RedisConnectionError("No connection available.") from None
        try:
            if self._initialize:
                await self.initialize()
            return await super().execute_command(*args, **kwargs)
        finally:
            self._turns.release()


def _timeouts(options: Mapping[str, Any], socket_timeout: float) -> dict[str, Any]:
    """``options`` with the connect and reply timeouts set where the URL left them out."""
    return {
        "socket_connect_timeout": SOCKET_CONNECT_TIMEOUT,
        "socket_timeout": socket_timeout,
        **options,
    }


def _pool_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """Connection options plus the pool limits plain URLs get (the URL may override them)."""
    return {"max_connections": _MAX_CONNECTIONS, "timeout": _POOL_TIMEOUT, **options}


def _sync_connection_options() -> dict[str, Any]:
    """Connection options every sync client we build gets: no resend of a lost reply."""
    return {"retry": Retry(NoBackoff(), 0)}


def _async_connection_options() -> dict[str, Any]:
    """The asyncio twin of :func:`_sync_connection_options`, plus a pool that checks a
    pooled connection is alive before handing it out.

    redis-py 8's asyncio pool skips that check while maintenance notifications are on
    (the default with RESP3), so without resends every connection the server dropped
    while idle would fail one request; the check makes it reconnect instead.
    """
    return {
        "retry": AsyncRetry(NoBackoff(), 0),
        "maint_notifications_config": MaintNotificationsConfig(enabled=False),
    }


@dataclass(frozen=True)
class Topology:
    """A parsed URL: what kind of deployment, which nodes, and the connection options."""

    kind: Kind
    #: The URL as given (it may hold a password, so the repr leaves it out, as the options).
    url: str = field(repr=False)
    #: Sentinels (for ``sentinel``) or seed nodes (for ``cluster``); empty for ``standalone``.
    nodes: tuple[tuple[str, int], ...] = ()
    #: The Sentinel service (master) name.
    service: str | None = None
    #: redis-py keyword arguments for connections to the Redis servers.
    options: Mapping[str, Any] = field(default_factory=dict, repr=False)
    #: redis-py keyword arguments for connections to the sentinels.
    sentinel_options: Mapping[str, Any] = field(default_factory=dict, repr=False)


def _bad(message: str) -> ConfigurationError:
    return ConfigurationError("redis", f"bad Redis URL: {message}")


def _node(text: str, default_port: int) -> tuple[str, int]:
    if text.startswith("["):  # [IPv6]:port
        host, _, rest = text[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise _bad(f"cannot read the host {text!r}")
        port_text = rest[1:]
    else:
        host, _, port_text = text.partition(":")
    if not host:
        raise _bad("a host is missing in the host list")
    if not port_text:
        return unquote(host), default_port
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise _bad(f"port {port_text!r} is not a number from 1 to 65535")
    return unquote(host), int(port_text)


def _options(base: str, query: str, userinfo: str) -> dict[str, Any]:
    """Connection keyword arguments from the query string, cast as redis-py casts them."""
    stand_in = f"{base}://localhost/?{query}"
    try:
        options: dict[str, Any] = parse_redis_url(stand_in)  # type: ignore[no-untyped-call]
    except ValueError as exc:
        raise _bad(str(exc)) from None
    options.pop("host", None)
    options.pop("port", None)
    if options.pop("connection_class", None) is not None:  # rediss: TLS
        options["ssl"] = True
    if userinfo:
        username, has_password, password = userinfo.partition(":")
        if username:
            options["username"] = unquote(username)
        if has_password and password:
            options["password"] = unquote(password)
    return options


def parse(url: str) -> Topology:
    """Read a Redis URL of any supported form; :class:`ConfigurationError` if it is malformed."""
    if not isinstance(url, str):
        raise ConfigurationError("redis", f"expected a URL string, not {type(url).__name__}")
    scheme, sep, _ = url.partition("://")
    if not sep or scheme.lower() not in _SCHEMES:
        known = ", ".join(f"{name}://" for name in _SCHEMES)
        raise _bad(f"the scheme must be one of {known}")
    base, kind = _SCHEMES[scheme.lower()]
    if kind == "standalone":
        return Topology(kind, url)
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        raise _bad(str(exc)) from None
    userinfo, _, hostlist = parts.netloc.rpartition("@")
    if not hostlist:
        raise _bad(f"a {kind} URL needs at least one host")
    nodes = tuple(_node(text, _DEFAULT_PORT[kind]) for text in hostlist.split(","))
    options = _options(base, parts.query, userinfo)
    segments = [unquote(s) for s in parts.path.split("/") if s]
    if kind == "cluster":
        if segments not in ([], ["0"]) or options.pop("db", 0) != 0:
            raise _bad("a Redis Cluster has only database 0")
        return Topology(kind, url, nodes, options=options)
    if not segments or len(segments) > 2:
        raise _bad("a Sentinel URL's path is /service_name or /service_name/db")
    if len(segments) == 2:
        if not segments[1].isdigit():
            raise _bad(f"database {segments[1]!r} is not a number")
        options.setdefault("db", int(segments[1]))
    sentinel_options = {k: v for k, v in options.items() if k.startswith("socket_")}
    if options.get("ssl"):
        sentinel_options.update((k, v) for k, v in options.items() if k.startswith("ssl"))
    for name, key in _SENTINEL_AUTH.items():
        if name in options:
            sentinel_options[key] = options.pop(name)
    return Topology(kind, url, nodes, segments[0], options, sentinel_options)


def sync_client(url: str, *, socket_timeout: float = SOCKET_TIMEOUT) -> SyncClient:
    """A new redis-py client for ``url``, with the timeouts above (``socket_timeout`` is
    the reply timeout used unless the URL sets one).

    One server gets redis-py's connection pool with room for 10,000 connections
    (a burst never fails for want of one); the Sentinel master and each cluster
    node get a blocking pool of at most 200 connections, where a burst waits up
    to 20 s for one instead of failing. The URL's ``max_connections`` (and
    ``timeout``) change that. A cluster client reads the slot map now, so an unreachable cluster
    raises :class:`BackendError` here.
    """
    topology = parse(url)
    if topology.kind == "standalone":
        try:  # the URL's own options win over these keyword arguments
            pool = redis.ConnectionPool.from_url(
                url,
                max_connections=_SERVER_CONNECTIONS,
                **_timeouts({}, socket_timeout),
                **_sync_connection_options(),
            )
        except ValueError as exc:
            raise _bad(str(exc)) from exc
        return DirectRedis(connection_pool=pool)
    if topology.kind == "sentinel":
        assert topology.service is not None
        master: redis.Redis = master_client(
            "sync",
            topology.nodes,
            topology.service,
            _timeouts(topology.sentinel_options, socket_timeout),
            {
                **_sync_connection_options(),
                **_pool_options(_timeouts(topology.options, socket_timeout)),
            },
        )
        return master
    # Only a cluster client given a URL hands each node the pool class we ask for, so
    # the first seed goes in as a URL (TLS by its scheme) and the others as nodes.
    (host, port), *others = topology.nodes
    options = _pool_options(_timeouts(topology.options, socket_timeout))
    scheme = "rediss" if options.pop("ssl", False) else "redis"
    seed = f"{scheme}://[{host}]:{port}" if ":" in host else f"{scheme}://{host}:{port}"
    nodes = [ClusterNode(h, p) for h, p in others]  # type: ignore[no-untyped-call]
    try:
        return _Cluster(
            url=seed,
            startup_nodes=nodes,
            connection_pool_class=redis.BlockingConnectionPool,
            **options,
        )
    except TypeError as exc:
        raise _bad(str(exc)) from None
    except (RedisError, RedisClusterException) as exc:
        raise BackendError(f"cannot read the cluster's slot map: {exc}") from exc


def async_client(url: str, *, socket_timeout: float = SOCKET_TIMEOUT) -> AsyncClient:
    """A new ``redis.asyncio`` client for ``url`` (no I/O until its first command).

    As :func:`sync_client`; an asyncio cluster client has at most
    ``max_connections`` commands in flight and makes the others wait.
    """
    topology = parse(url)
    if topology.kind == "standalone":
        try:  # the URL's own options win over these keyword arguments
            pool = aioredis.ConnectionPool.from_url(
                url,
                max_connections=_SERVER_CONNECTIONS,
                **_timeouts({}, socket_timeout),
                **_async_connection_options(),
            )
        except ValueError as exc:
            raise _bad(str(exc)) from exc
        return AsyncDirectRedis(connection_pool=pool)
    if topology.kind == "sentinel":
        assert topology.service is not None
        master: aioredis.Redis = master_client(
            "asyncio",
            topology.nodes,
            topology.service,
            _timeouts(topology.sentinel_options, socket_timeout),
            {
                **_async_connection_options(),
                **_pool_options(_timeouts(topology.options, socket_timeout)),
            },
        )
        return master
    options = {
        "max_connections": _MAX_CONNECTIONS,
        **_timeouts(topology.options, socket_timeout),
    }
    timeout = options.pop("timeout", _POOL_TIMEOUT)
    nodes = [AsyncClusterNode(host, port) for host, port in topology.nodes]
    try:
        return _BoundedAsyncCluster(timeout, startup_nodes=nodes, **options)
    except TypeError as exc:
        raise _bad(str(exc)) from None
    except (RedisError, RedisClusterException) as exc:
        raise BackendError(f"cannot set up the cluster client: {exc}") from exc


def is_cluster(client: object) -> bool:
    """Whether ``client`` is a redis-py Redis Cluster client (sync or asyncio)."""
    return isinstance(client, (RedisCluster, AsyncRedisCluster))
