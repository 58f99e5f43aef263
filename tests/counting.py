"""Exact round-trip counting clients, sync and asyncio, for every topology.

:class:`Counted` (redis-py) and :class:`AsyncCounter` (``redis.asyncio``) take
any URL ``hashsession.topology`` reads: one server, ``redis+sentinel://`` (a
Sentinel-managed master client) or ``redis+cluster://`` (a cluster client). They
give the real client kind a store gets, with a connection class that records
every ``send_packed_command``: one call is one round trip, a single command or a
whole pipeline sent to one node. The handshake of a new connection (HELLO,
CLIENT SETINFO, SELECT, ...) is not counted, so counts do not depend on whether
a pool already had a connection.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterator
from contextlib import contextmanager
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.sentinel import Sentinel as AsyncSentinel
from redis.asyncio.sentinel import SentinelManagedConnection as AsyncSentinelConnection
from redis.cluster import ClusterNode, RedisCluster
from redis.connection import Connection
from redis.sentinel import Sentinel, SentinelManagedConnection

from hashsession.topology import is_cluster, parse
from topologies import ClusterSetup

__all__ = ["AsyncCounter", "Counted", "CountedCluster", "wire_command_names"]


def wire_command_names(packed: object) -> list[str]:
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


def _nodes_holding(client: Any, keys: Collection[str | bytes]) -> int:
    """How many round trips one pipeline over ``keys`` costs on ``client``.

    A pipeline is one write to one server; a cluster client splits it into one
    write per node that owns any of the keys.
    """
    if not keys:
        return 0
    if not is_cluster(client):
        return 1
    return len({client.get_node_from_key(key).name for key in keys})


# --------------------------------------------------------------------------- sync


class Counted:
    """A redis-py client for ``url`` whose every write to Redis is recorded.

    ``count`` is the number of round trips since the last ``reset()``,
    ``commands`` the command names sent (upper-case, in order) and ``batches``
    the same names grouped by round trip. Keyword arguments go to the client.
    """

    def __init__(self, url: str, **kwargs: Any) -> None:
        self.count = 0
        self.batches: list[list[str]] = []
        self._lock = threading.Lock()
        self._sentinel: Sentinel | None = None
        self.client: Any = self._connect(url, kwargs)
        self.reset()  # a cluster client reads the slot map as it is made

    def _connect(self, url: str, kwargs: dict[str, Any]) -> Any:
        topology = parse(url)
        options = {**topology.options, **kwargs}
        if topology.kind == "sentinel":
            self._sentinel = Sentinel(  # type: ignore[no-untyped-call]
                list(topology.nodes), sentinel_kwargs=dict(topology.sentinel_options)
            )
            return self._sentinel.master_for(  # type: ignore[no-untyped-call]
                topology.service,
                connection_class=self._counting(SentinelManagedConnection),
                **options,
            )
        if topology.kind == "cluster":
            # Only a cluster client given a URL passes connection_class on to every node.
            (host, port), *others = topology.nodes
            return RedisCluster(
                url=f"redis://{host}:{port}",
                startup_nodes=[ClusterNode(h, p) for h, p in others],  # type: ignore[no-untyped-call]
                connection_class=self._counting(Connection),
                **options,
            )
        pool = redis.ConnectionPool.from_url(url, **kwargs)
        pool.connection_class = self._counting(pool.connection_class)  # TCP, TLS or socket
        return redis.Redis.from_pool(pool)

    def _counting(self, base: type[Any]) -> type[Any]:
        recorder = self

        class CountingConnection(base):  # type: ignore[misc]
            _handshaking = 0

            def connect_check_health(self, *args: Any, **kwargs: Any) -> Any:
                self._handshaking += 1
                try:
                    return super().connect_check_health(*args, **kwargs)
                finally:
                    self._handshaking -= 1

            def send_packed_command(self, command: Any, check_health: bool = True) -> None:
                if not self._handshaking:
                    recorder._record(wire_command_names(command))
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

    def pipeline_cost(self, keys: Collection[str | bytes]) -> int:
        """Round trips of one pipeline over ``keys``: 1, or one per node on a Cluster."""
        return _nodes_holding(self.client, keys)

    @contextmanager
    def expect(self, n: int) -> Iterator[Counted]:
        """Reset, run the block, then assert it made exactly ``n`` round trips."""
        self.reset()
        yield self
        assert self.count == n, f"expected {n} round trip(s), got {self.count}: {self.describe()}"

    def close(self) -> None:
        self.client.close()
        if self._sentinel is not None:
            for sentinel in self._sentinel.sentinels:
                sentinel.close()


class CountedCluster(Counted):
    """:class:`Counted` on a cluster deployment (``setup.url`` names its masters)."""

    def __init__(self, setup: ClusterSetup, **kwargs: Any) -> None:
        super().__init__(setup.url, **kwargs)


# --------------------------------------------------------------------------- asyncio


class AsyncCounter:
    """A ``redis.asyncio`` client for ``url`` whose round trips are counted.

    ``count`` is the number of round trips since the last ``reset()`` and
    ``names`` the first command name of each. A cluster client reads its slot
    map on first use: ``await counter.ready()`` does that before counting starts.
    """

    def __init__(self, url: str) -> None:
        self.count = 0
        self.names: list[str] = []
        self._sentinel: AsyncSentinel | None = None
        topology = parse(url)
        if topology.kind == "sentinel":
            self._sentinel = AsyncSentinel(  # type: ignore[no-untyped-call]
                list(topology.nodes), sentinel_kwargs=dict(topology.sentinel_options)
            )
            self.client: Any = self._sentinel.master_for(
                topology.service or "",
                connection_class=self._counting(AsyncSentinelConnection),
                **topology.options,
            )
        elif topology.kind == "cluster":
            nodes = [AsyncClusterNode(host, port) for host, port in topology.nodes]
            self.client = AsyncRedisCluster(startup_nodes=nodes, **topology.options)
            # The asyncio cluster client takes no connection_class: set it on the seed
            # nodes and in the settings every node found later is made from.
            counting = self._counting(aioredis.Connection)
            self.client.connection_kwargs["connection_class"] = counting
            for node in self.client.startup_nodes:
                node.connection_class = counting
        else:
            pool = aioredis.ConnectionPool.from_url(url)
            pool.connection_class = self._counting(pool.connection_class)
            self.client = aioredis.Redis.from_pool(pool)

    def _counting(self, base: type[Any]) -> type[Any]:
        recorder = self

        class CountingConnection(base):  # type: ignore[misc]
            _handshaking = 0

            async def connect_check_health(self, *args: Any, **kwargs: Any) -> Any:
                self._handshaking += 1
                try:
                    return await super().connect_check_health(*args, **kwargs)
                finally:
                    self._handshaking -= 1

            async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
                if not self._handshaking:
                    recorder.count += 1
                    recorder.names.append(wire_command_names(command)[0])
                await super().send_packed_command(command, check_health)

        return CountingConnection

    async def ready(self) -> AsyncCounter:
        """Make the client read a cluster's slot map and command table now, then reset."""
        if isinstance(self.client, AsyncRedisCluster):
            await self.client.initialize()
        self.reset()
        return self

    def reset(self) -> None:
        self.count = 0
        self.names = []

    def pipeline_cost(self, keys: Collection[str | bytes]) -> int:
        """Round trips of one pipeline over ``keys``: 1, or one per node on a Cluster."""
        return _nodes_holding(self.client, keys)

    def expect(self, n: int) -> _Expect:
        return _Expect(self, n)

    async def aclose(self) -> None:
        await self.client.aclose()
        if self._sentinel is not None:
            for sentinel in self._sentinel.sentinels:
                await sentinel.aclose()


class _Expect:
    """``with counter.expect(n):`` resets the count and checks it on the way out."""

    def __init__(self, counter: AsyncCounter, n: int) -> None:
        self.counter = counter
        self.n = n

    def __enter__(self) -> AsyncCounter:
        self.counter.reset()
        return self.counter

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        if exc_type is None:
            got = self.counter.count
            assert got == self.n, (
                f"expected {self.n} round trip(s), got {got}: {self.counter.names}"
            )
