"""The near cache's tracking links for the asyncio store (issue 17).

redis-py's asyncio client has no client-side caching, so the links are kept here. They
are the sync ones: a :class:`~hashsession.nearcache.Tracker` (one server, or the Sentinel
master, following its switches) or :class:`~hashsession.nearcluster.ClusterLinks` (one
link per node of a cluster), RESP3 connections on plain sockets read without blocking,
so each request's first read still applies every invalidation received with one cheap
sync call (``drain()``, no await). Instead of their thread, a task on the running event
loop drains them every ``interval`` seconds and brings a lost link back, connecting in a
worker thread so the loop never blocks on it; while a link is down the cache is empty
and off.

The TTL refreshes (``OPEN_NEAR``) go through the store's asyncio client (which routes by
slot on a cluster), not the link (a blocking read on the loop): the slide the script
makes comes back on the link as an invalidation, as it does for the sync store, so the
session is read once more after each slide: two round trips per refresh share.

On a cluster the node list the links follow is a sync ``RedisCluster`` of the same
nodes and settings (:func:`cluster_mirror`; it asks for the slot map without blocking
the loop); the asyncio clients sessions use learn of a node on their own (a ``MOVED``),
and one naming a node without a link turns the cache off until the node list is asked
again and the node linked (:meth:`AsyncClusterLinks._agrees`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from typing import Any

import redis
import redis.asyncio.connection as aioconn
import redis.connection as syncconn
from redis.cluster import ClusterNode

from hashsession.nearcache import NearCache, Tracker
from hashsession.nearcluster import ClusterLinks

__all__ = ["AsyncClusterLinks", "AsyncTracker", "cluster_mirror", "link_settings"]

log = logging.getLogger("hashsession.nearcache")

#: Pool settings that only make sense for asyncio connections (awaitable hooks, an
#: asyncio retry policy) or for redis-py's per-pool machinery; the link goes without them.
_ASYNC_ONLY = ("retry", "redis_connect_func", "encoder_class")
_MACHINERY = ("maint_notifications", "orig_", "himport")


def link_settings(kind: type[Any], kwargs: dict[str, Any]) -> tuple[type[Any], dict[str, Any]]:
    """The sync connection class and settings of a tracking link to the server an asyncio
    pool (``connection_class``, ``connection_kwargs``) talks to: the same address (TCP or
    unix socket), TLS, credentials and timeouts, on RESP3."""
    if issubclass(kind, aioconn.SSLConnection):
        twin: type[Any] = syncconn.SSLConnection
    elif issubclass(kind, aioconn.UnixDomainSocketConnection):
        twin = syncconn.UnixDomainSocketConnection
    elif issubclass(kind, aioconn.Connection):
        twin = syncconn.Connection
    else:
        raise TypeError(f"no tracking link for connections of kind {kind.__name__}")
    settings = {
        k: v for k, v in kwargs.items() if k not in _ASYNC_ONLY and not k.startswith(_MACHINERY)
    }
    settings["protocol"] = 3
    return twin, settings


def cluster_mirror(client: Any) -> tuple[Any, Callable[[Any], Any]]:
    """For an asyncio ``RedisCluster``: a sync ``RedisCluster`` of the same startup nodes
    and settings (its node list is the one the links follow; it serves no session), and
    how to make a tracking link to one of its nodes."""
    startup = list(client.nodes_manager.startup_nodes.values())
    if not startup:
        raise TypeError("the cluster client names no startup node")
    kind, settings = link_settings(startup[0].connection_class, startup[0].connection_kwargs)
    settings.pop("connection_class", None)
    plain = {k: v for k, v in settings.items() if k not in ("host", "port", "protocol")}
    if issubclass(kind, syncconn.SSLConnection):
        plain["ssl"] = True
    nodes = [ClusterNode(node.host, node.port) for node in startup]  # type: ignore[no-untyped-call]
    mirror = redis.RedisCluster(startup_nodes=nodes, **plain)  # asks for the slot map now

    def connect(node: Any) -> Any:
        return kind(**{**settings, "host": node.host, "port": node.port})

    return mirror, connect


class _LoopDriven:
    """The task that keeps a link (or a cluster's links) on the running event loop.

    It starts on the loop of the first request that drains, and again on a later loop
    once that one is closed; :meth:`_cancel` stops it from any thread.
    """

    _stop: Any  # the link's threading.Event: set once closed
    _task: asyncio.Task[None] | None = None

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The task that drains and reconnects the link(s), once a loop has run it."""
        return self._task

    def _ensure_task(self) -> None:
        task = self._task
        if task is None or task.done() or task.get_loop().is_closed():
            self._watch()

    def _watch(self) -> None:
        if self._stop.is_set():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop yet (the store is made at import): at first use
            return
        self._task = loop.create_task(self._keep(), name="hashsession-tracker")

    async def _keep(self) -> None:
        raise NotImplementedError

    def _cancel(self) -> None:
        task = self._task
        if task is not None and not task.done():
            loop = task.get_loop()
            if not loop.is_closed():
                loop.call_soon_threadsafe(task.cancel)

    async def _await_task(self) -> None:
        """Wait for the task once cancelled, if it runs on this loop."""
        task = self._task
        if task is not None and task.get_loop() is asyncio.get_running_loop():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


class AsyncTracker(_LoopDriven, Tracker):
    """A :class:`~hashsession.nearcache.Tracker` kept by an asyncio task, not a thread.

    :meth:`start` opens the link at once (a blocking connect, once, as the store is made;
    it raises if the server refuses tracking). On Sentinel (``fence``), a switch of the
    master drops the link at the next drain (the cache empties) and the task links the
    new master. :meth:`aclose` stops the task.
    """

    def start(self, *, thread: bool = False) -> AsyncTracker:
        """Open the link (raising if the server refuses it); the task starts on first use
        (never a thread: ``thread`` is there for the signature of :meth:`Tracker.start`)."""
        super().start(thread=False)
        self._watch()
        return self

    def drain(self) -> bool:
        """Apply every invalidation received so far (sync, never blocks); whether the link
        is up. Starts the link's task on the running loop if none runs."""
        self._ensure_task()
        return super().drain()

    async def _keep(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            await asyncio.sleep(self.interval)
            if Tracker.drain(self) or self._stop.is_set():
                continue
            try:
                await loop.run_in_executor(None, self._relink)
                log.info("near cache: tracking link back; cache on")
            except Exception as exc:
                log.debug("near cache: reconnecting the tracking link failed: %s", exc)

    def _relink(self) -> None:
        """Open the link again (in a worker thread: connecting blocks). Requests drain
        the old one meanwhile under the lock; this one is installed whole or not at all."""
        self._open()
        if self._stop.is_set():  # closed while connecting
            with self._lock:
                self._drop()

    def close(self) -> None:
        """Stop the task (from any thread), close the link and empty the cache."""
        self._stop.set()
        self._cancel()
        super().close()

    async def aclose(self) -> None:
        """:meth:`close`, then wait for the task if it runs on this loop."""
        self.close()
        await self._await_task()


class AsyncClusterLinks(_LoopDriven, ClusterLinks):
    """:class:`~hashsession.nearcluster.ClusterLinks` kept by an asyncio task.

    ``client`` is the sync mirror of :func:`cluster_mirror`; ``clients()`` yields the
    asyncio cluster clients sessions use (one per event loop for a URL): a node one of
    them knows and no link serves turns the cache off until it is linked.
    """

    def __init__(
        self,
        cache: NearCache,
        client: Any,
        connect: Callable[[Any], Any],
        prefix: str,
        *,
        clients: Callable[[], Iterable[Any]],
        interval: float = 0.05,
    ) -> None:
        super().__init__(cache, client, connect, prefix, interval=interval)
        self._clients = clients
        #: Per client's node manager (by id): the node count last seen to agree.
        self._agreed: dict[int, int] = {}

    def start(self, *, thread: bool = False) -> AsyncClusterLinks:
        """Link every node (raising if one refuses); the task starts on first use."""
        super().start(thread=False)
        self._watch()
        return self

    def drain(self) -> bool:
        """Apply every invalidation received on every link (sync, never blocks); whether
        the cache may serve. Starts the links' task on the running loop if none runs."""
        self._ensure_task()
        return super().drain()

    def _agrees(self) -> bool:
        links = self._links
        for client in self._clients():
            manager = client.nodes_manager
            nodes = manager.nodes_cache
            count = len(nodes)
            if self._agreed.get(id(manager)) == count:
                continue  # names are compared only when the count moves
            if not set(list(nodes)) <= set(links):
                return False
            self._agreed[id(manager)] = count
        return True

    async def _keep(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stop.is_set():
            await asyncio.sleep(self.interval)
            try:
                if self._healthy() or self._stop.is_set():
                    continue
                if await loop.run_in_executor(None, self._repair):
                    await loop.run_in_executor(None, self._manager.initialize)
            except Exception as exc:  # the task must outlive any one failure
                log.debug("near cache: linking the cluster failed: %s", exc)

    def close(self) -> None:
        """Stop the task (from any thread), close every link and empty the cache."""
        self._stop.set()
        self._cancel()
        super().close()
        with contextlib.suppress(Exception):
            self._client.close()  # the mirror

    async def aclose(self) -> None:
        """:meth:`close`, then wait for the task if it runs on this loop."""
        self.close()
        await self._await_task()
