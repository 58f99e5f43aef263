"""The near cache's tracking links on a Redis Cluster: one per node, one cache.

Client tracking is per server, so :class:`ClusterLinks` keeps a :class:`Tracker` on
every node the store's ``RedisCluster`` client knows, replicas included, each with
``BCAST PREFIX <prefix>``: a write to a session key is pushed by the node that ran it.
Replicas are linked too because a failover inside the cluster (run by the cluster
itself or by another process) makes a replica the key's primary without this process
hearing of it; its link is already open, so writes there are reported from the first.

The cache serves only while every link is up and the client's node list is the one the
links were made for. A node link that drops, or any change redis-py makes to its node
list (a refresh of the slot map, a ``MOVED`` naming a node it did not know), empties the
cache and turns it off; the links' thread links the new node list and turns it on once
every link is up. A slot migration needs nothing more: ``MIGRATE`` deletes each key on
its old node (pushed there) and writes it on the new one (linked already).

The TTL refreshes sessions send on the link (:meth:`ClusterLinks.execute`) go to the
link of the node that owns the key's slot, as the client's slot map says; a node that
moved the slot answers ``MOVED``, which the session sends again through the client.
"""

from __future__ import annotations

import logging
import select
import threading
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from hashsession.nearcache import NearCache, Tracker

__all__ = ["ClusterLinks"]

log = logging.getLogger("hashsession.nearcache")

#: Seconds between asking redis-py to refresh its slot map while a node cannot be linked
#: (a node that died stays in the client's list until then).
_REFRESH_EVERY = 1.0


class ClusterLinks:
    """Tracking links to every node of a cluster, feeding one :class:`NearCache`.

    ``connect(node)`` makes a new RESP3 redis-py ``Connection`` to a ``ClusterNode``.
    Same surface as :class:`Tracker`: :meth:`drain`, :meth:`execute`, :meth:`close`.
    """

    def __init__(
        self,
        cache: NearCache,
        client: Any,
        connect: Callable[[Any], Any],
        prefix: str,
        *,
        interval: float = 0.05,
    ) -> None:
        self.cache = cache
        self.prefix = prefix
        self.interval = interval
        self._client = client
        self._manager = client.nodes_manager
        self._connect = connect
        self._links: dict[str, Tracker] = {}
        #: The links, as requests read them (replaced whole, never changed in place).
        self._all: tuple[Tracker, ...] = ()
        #: The client's node list the links were made for, and its length then.
        self._nodes: Any = None
        self._count = -1
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._refreshed = 0.0

    @property
    def links(self) -> dict[str, Tracker]:
        """The links by node name (``host:port``), for tests and tools."""
        return dict(self._links)

    def start(self, *, thread: bool = True) -> ClusterLinks:
        """Link every node (raising if one refuses) and, with ``thread``, start the thread
        that drains and relinks (an asyncio store drives :meth:`_healthy` and
        :meth:`_repair` from a task instead: :mod:`hashsession.aionear`)."""
        try:
            if not self._link_all(strict=True):
                raise ConnectionError("the cluster's node list changed while it was linked")
        except BaseException:
            self.close()  # the links opened before the one that failed
            raise
        if thread:
            self._thread = threading.Thread(
                target=self._run, name="hashsession-tracker-cluster", daemon=True
            )
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop the thread, close every link and empty the cache."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            for link in self._links.values():
                link.close()
            self._links.clear()
            self._all = ()
        self.cache.switch(False)

    def drain(self) -> bool:
        """Apply every invalidation received on every link; whether the cache may serve."""
        if not self._current():
            if self.cache.on:
                log.info("near cache: the cluster's node list changed; cache off until linked")
                self.cache.switch(False)
            return False
        links = self._all
        try:
            poll = select.poll()
            for link in links:
                poll.register(link._conn._sock, select.POLLIN)
            readable = {fd for fd, _ in poll.poll(0)}
        except (AttributeError, OSError, ValueError):  # a link went down meanwhile
            readable = None
        # One poll of every socket; only a link with data waiting (or buffered) is read.
        for link in links:
            sock = link.idle_socket()
            due = sock is None or readable is None or sock.fileno() in readable
            if due and not link.drain():
                return False
        return self.cache.on

    def execute(self, *args: Any) -> Any:
        """Send a command naming one key (``EVALSHA sha 1 key ...``) on the link of the
        node owning its slot; through the client if that node has no open link."""
        node = self._client.get_node_from_key(args[3])
        link = self._links.get(node.name) if node is not None else None
        if link is None or not link.up:
            return self._client.execute_command(*args)
        return link.execute(*args)

    # ---------------------------------------------------------------- the driver

    def _current(self) -> bool:
        """Whether the client's node list is the one the links were made for."""
        nodes = self._manager.nodes_cache
        return nodes is self._nodes and len(nodes) == self._count and self._agrees()

    def _agrees(self) -> bool:
        """Whether the clients sessions use know no node beyond the links (here the
        client is that one; an asyncio store checks its own clients)."""
        return True

    def _gate(self, up: bool) -> None:
        """A link went down (``False``): the cache empties and is off; a link coming up
        turns nothing on by itself (:meth:`_link_all` does, once all are up)."""
        if not up:
            self.cache.switch(False)

    def _link_all(self, *, strict: bool = False) -> bool:
        """Link every node of the client's list, drop links to nodes gone from it, and
        turn the cache on if all are up; whether it is on. ``strict``: raise the error
        of a node that refuses its link."""
        with self._lock:
            nodes = self._manager.nodes_cache
            count = len(nodes)
            if nodes is not self._nodes or count != self._count:
                self.cache.switch(False)  # values read off a node not linked yet go
            known = {node.name: node for node in list(nodes.values())}
            for name in set(self._links) - set(known):
                self._links.pop(name).close()
            for name, node in known.items():
                link = self._links.get(name)
                if link is None:
                    link = Tracker(
                        self.cache,
                        partial(self._connect, node),
                        self.prefix,
                        gate=self._gate,
                    )
                    if strict:
                        link.start(thread=False)
                    self._links[name] = link
                link.reopen()
            self._all = tuple(self._links.values())
            if not all(link.up for link in self._all):
                return False
            if self._manager.nodes_cache is not nodes or len(nodes) != count:
                return False  # changed meanwhile: linked again on the next turn
            self._nodes, self._count = nodes, count
            if not self._agrees():
                return False  # the node list is asked again (:meth:`_repair`)
            if not self.cache.on:
                self.cache.switch(True)
                # A link that dropped before the switch left it on: check after it.
                if not all(link.up for link in self._all):
                    self.cache.switch(False)
                    return False
                log.info("near cache: every cluster node linked; cache on")
            return True

    def _healthy(self) -> bool:
        """Drain every link (never blocks); whether the cache is on and current."""
        drained = all([link.drain() for link in self._all])
        return drained and self._current() and self.cache.on

    def _repair(self) -> bool:
        """Link the node list again (blocks while connecting); whether the node list
        should be asked for again (a node stayed unlinked: a dead one stays listed)."""
        if self._link_all():
            return False
        now = time.monotonic()
        if now - self._refreshed < _REFRESH_EVERY:
            return False
        self._refreshed = now
        return True

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                if not self._healthy() and self._repair():
                    self._manager.initialize()
            except Exception as exc:  # the thread must outlive any one failure
                log.debug("near cache: linking the cluster failed: %s", exc)
