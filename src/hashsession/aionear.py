"""The near cache's tracking link for the asyncio store (issue 17).

redis-py's asyncio client has no client-side caching, so :class:`AsyncTracker` keeps the
link itself. The link is the sync :class:`~hashsession.nearcache.Tracker`'s: one RESP3
connection on a plain socket, read without blocking, so each request's first read still
applies every invalidation received with one cheap sync call (:meth:`Tracker.drain`, no
await). A task on the running event loop drains it every ``interval`` seconds too and
brings a lost link back, connecting in a worker thread so the loop never blocks on it;
while the link is down the cache is empty and off.

The TTL refreshes (``OPEN_NEAR``) go through the store's asyncio pool, not the link (a
blocking read on the loop): the slide the script makes comes back on the link as an
invalidation, as it does for the sync store, so the session is read once more after each
slide: two round trips per refresh share.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import redis.asyncio.connection as aioconn
import redis.connection as syncconn

from hashsession.nearcache import Tracker

__all__ = ["AsyncTracker", "link_settings"]

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


class AsyncTracker(Tracker):
    """A :class:`~hashsession.nearcache.Tracker` kept by an asyncio task, not a thread.

    :meth:`start` opens the link at once (a blocking connect, once, as the store is made;
    it raises if the server refuses tracking). The task starts on the event loop of the
    first request that drains the link, and again on a later loop once that one is
    closed. :meth:`aclose` stops it.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._task: asyncio.Task[None] | None = None

    def start(self, *, thread: bool = False) -> AsyncTracker:
        """Open the link (raising if the server refuses it); the task starts on first use
        (never a thread: ``thread`` is there for the signature of :meth:`Tracker.start`)."""
        super().start(thread=False)
        self._watch()
        return self

    @property
    def task(self) -> asyncio.Task[None] | None:
        """The task that drains and reconnects the link, once a loop has run it."""
        return self._task

    def drain(self) -> bool:
        """Apply every invalidation received so far (sync, never blocks); whether the link
        is up. Starts the link's task on the running loop if none runs."""
        task = self._task
        if task is None or task.done() or task.get_loop().is_closed():
            self._watch()
        return super().drain()

    def _watch(self) -> None:
        if self._stop.is_set():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:  # no loop yet (the store is made at import): at first use
            return
        self._task = loop.create_task(self._keep(), name="hashsession-tracker")

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
        task = self._task
        if task is not None and not task.done():
            loop = task.get_loop()
            if not loop.is_closed():
                loop.call_soon_threadsafe(task.cancel)
        with self._lock:
            self._drop()

    async def aclose(self) -> None:
        """:meth:`close`, then wait for the task if it runs on this loop."""
        self.close()
        task = self._task
        if task is not None and task.get_loop() is asyncio.get_running_loop():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
