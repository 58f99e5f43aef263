"""A near cache of session fields, kept true by Redis's client-side tracking (issue 17).

Enabled by the store setting ``near_cache`` (sync and asyncio stores on one server, Sentinel and
Cluster; the asyncio links are kept by :mod:`hashsession.aionear`; see
docs/near-cache.md; on Sentinel the link follows the master, on a Cluster
:mod:`hashsession.nearcluster` keeps one per node). :class:`NearCache` is a bounded LRU
of session keys, each holding the raw values of the fields this process read and until
when the session may be served without asking Redis. :class:`Tracker` keeps one
dedicated RESP3 connection on which Redis's server-assisted client tracking is on in
broadcast mode for the store's prefix
(``CLIENT TRACKING on BCAST PREFIX <prefix> NOLOOP``, Redis 6.0+ and Valkey): every
change to a session key made by any other connection (a write, a delete, an expiry,
``FLUSHALL``) pushes its key (or nil for a flush) there, and the cache forgets it. On a
plain TCP or unix socket the tracker reads those pushes itself (:func:`invalidations`;
10 µs for a drain that finds one, against 23 µs through redis-py's parser); a TLS link
goes through redis-py. The
sessions' TTL refreshes are sent on that same link (:meth:`Tracker.execute`). ``NOLOOP``
spares plain commands sent there; a script's writes still come back (the server runs
them as its own script client), so the slide a refresh makes invalidates the session
once and the next request reads it again: two round trips per refresh share. An
invalidation drops a session's values but not when its next slide is due
(:meth:`NearCache.slide_due`): the read after it checks with one ``HMGET`` that a plain
session still lives, instead of running the script again.

Never stale: a reader calls :meth:`Tracker.drain` before it answers from the cache,
which applies every invalidation already received; Redis queues the invalidation
before the reply to the write that caused it, so a change acknowledged before a request
starts is seen by it. While the link is down (killed, server restarted, failed over)
the cache is empty and off (:meth:`NearCache.stamp` is ``None``) until the link is back.
Values read before an invalidation cannot land in the cache after it: a reader takes a
:meth:`~NearCache.stamp` before sending its read and :meth:`~NearCache.put` drops the
value if any invalidation (or an outage) came in between.
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from redis.exceptions import ConnectionError, NoScriptError, ResponseError

from hashsession.scripts import with_source

__all__ = [
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_ENTRIES",
    "DEFAULT_REFRESH_SHARE",
    "Fence",
    "NearCache",
    "NearLink",
    "Tracker",
    "TrackingLink",
    "invalidations",
]

log = logging.getLogger("hashsession.nearcache")

#: Sessions kept at most (least recently used dropped first).
DEFAULT_MAX_ENTRIES = 10_000
#: Bytes of field names and values kept at most, counted as their lengths plus
#: :data:`_ENTRY_COST` per session and :data:`_FIELD_COST` per field.
DEFAULT_MAX_BYTES = 16 * 1024 * 1024
#: The share of the idle timeout after which a request slides the TTL again.
DEFAULT_REFRESH_SHARE = 0.25
_ENTRY_COST = 200
_FIELD_COST = 80


#: How much one read of a tracking link's socket takes at the most.
_CHUNK = 65536


def invalidations(data: bytes) -> tuple[list[list[bytes] | None], int] | None:
    """The RESP3 invalidation pushes at the start of ``data`` (each a list of keys, or
    ``None`` for a flush) and where the complete ones end; ``None`` if ``data`` holds
    anything else. What tracking sends: ``>2 $10 invalidate`` then ``*N`` bulk keys, or
    ``_`` (nil)."""
    pushes: list[list[bytes] | None] = []
    at, size = 0, len(data)
    head = b">2\r\n$10\r\ninvalidate\r\n"
    while at < size:
        if not data.startswith(head, at):
            if head.startswith(data[at : at + len(head)]):
                return pushes, at  # a push cut short: the rest comes with the next read
            return None
        pos = at + len(head)
        line = data.find(b"\r\n", pos)
        if line < 0:
            return pushes, at
        kind = data[pos : pos + 1]
        if kind == b"_" and line == pos + 1:
            pushes.append(None)
            at = line + 2
            continue
        if kind != b"*":
            return None
        try:
            count = int(data[pos + 1 : line])
        except ValueError:
            return None
        keys: list[bytes] = []
        pos = line + 2
        for _ in range(count):
            line = data.find(b"\r\n", pos)
            if line < 0:
                return pushes, at
            if data[pos : pos + 1] != b"$":
                return None
            try:
                length = int(data[pos + 1 : line])
            except ValueError:
                return None
            start, pos = line + 2, line + 4 + length
            if pos > size:
                return pushes, at
            if data[pos - 2 : pos] != b"\r\n":
                return None
            keys.append(data[start : pos - 2])
        pushes.append(keys)
        at = pos
    return pushes, at


class NearCache:
    """Raw field values of session keys, least recently used dropped past the bounds.

    Thread-safe. ``get`` answers ``(True, raw)`` for a cached field (``raw`` is ``None``
    when the field is known to be missing) and ``(False, None)`` otherwise.
    """

    def __init__(
        self, max_entries: int = DEFAULT_MAX_ENTRIES, max_bytes: int = DEFAULT_MAX_BYTES
    ) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("max_entries and max_bytes must be positive")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, dict[str, bytes | None]] = OrderedDict()
        self._sizes: dict[str, int] = {}
        #: Per session: until when (ms since the epoch, this host's clock) it may be
        #: served without a round trip, and its own cookie lifetime (or ``None``).
        self._until: dict[str, tuple[int, int | None]] = {}
        self._bytes = 0
        #: Plain sessions (no owner, own timeout or cookie lifetime) and until when their
        #: TTL needs no slide. Kept when a session's values are invalidated: a read that
        #: finds it still live and plain may serve it again without sliding it.
        self._slides: dict[str, int] = {}
        #: Bumped by every invalidation and outage; a put carries the value it read before.
        self._generation = 0
        self._on = False

    @property
    def on(self) -> bool:
        """Whether the cache serves and takes values (the tracking link is up)."""
        return self._on

    @property
    def size(self) -> tuple[int, int]:
        """Sessions held and the bytes they are counted as."""
        with self._lock:
            return len(self._entries), self._bytes

    def stamp(self) -> int | None:
        """Taken before sending a read whose reply may be cached; ``None`` while off."""
        return self._generation if self._on else None

    def get(self, key: str, field: str) -> tuple[bool, bytes | None]:
        if not self._on:
            return False, None
        with self._lock:
            fields = self._entries.get(key)
            if fields is None or field not in fields:
                return False, None
            self._entries.move_to_end(key)
            return True, fields[field]

    def serving(self, key: str, now_ms: int) -> tuple[int, int | None] | None:
        """``(until, lifetime)`` if the session ``key`` may be served from here at
        ``now_ms`` (alive, no TTL refresh due), else ``None``."""
        if not self._on:
            return None
        with self._lock:
            until = self._until.get(key)
            if until is None or until[0] <= now_ms:
                return None
            self._entries.move_to_end(key)
            return until

    def opened(
        self,
        key: str,
        until_ms: int,
        lifetime: int | None,
        stamp: int | None,
        *,
        plain: bool = False,
    ) -> bool:
        """Note that ``key`` may be served until ``until_ms`` (for a ``plain`` session,
        that no slide is due before then), unless the cache changed since ``stamp``
        (taken before the command that told so was sent); whether kept."""
        with self._lock:
            if stamp is None or stamp != self._generation or not self._on:
                return False
            if plain:
                if len(self._slides) >= self.max_entries:
                    self._slides.clear()
                self._slides[key] = until_ms
            if key not in self._entries:
                self._entries[key] = {}
                self._sizes[key] = _ENTRY_COST
                self._bytes += _ENTRY_COST
                self._evict()
            if key in self._entries:
                self._until[key] = (until_ms, lifetime)
            return True

    def slide_due(self, key: str, now_ms: int) -> int | None:
        """For a plain session: until when no slide is due, if that is after ``now_ms``
        (then a read need only check that it still lives and is plain), else ``None``."""
        until = self._slides.get(key)
        return until if until is not None and until > now_ms and self._on else None

    def not_plain(self, key: str) -> None:
        """Forget that ``key`` was a plain session (a read found it gone or changed)."""
        self._slides.pop(key, None)

    def drop(self, key: str) -> None:
        """Forget one session at once (a write through this process changed it)."""
        self.forget([key.encode("utf-8", "surrogateescape")])

    def put(self, key: str, field: str, raw: bytes | None, stamp: int | None) -> bool:
        """Keep ``raw`` for ``field`` unless the cache changed since ``stamp``; whether kept."""
        cost = len(field) + (len(raw) if raw is not None else 0) + _FIELD_COST
        with self._lock:
            if stamp is None or stamp != self._generation or not self._on:
                return False
            fields = self._entries.get(key)
            if fields is None:
                fields = self._entries[key] = {}
                self._sizes[key] = _ENTRY_COST
                self._bytes += _ENTRY_COST
            else:
                self._entries.move_to_end(key)
                old = fields.get(field)
                if field in fields:
                    cost -= len(field) + (len(old) if old is not None else 0) + _FIELD_COST
            fields[field] = raw
            self._sizes[key] += cost
            self._bytes += cost
            self._evict()
            return True

    def _evict(self) -> None:
        while len(self._entries) > self.max_entries or (
            self._bytes > self.max_bytes and len(self._entries) > 1
        ):
            gone, _ = self._entries.popitem(last=False)
            self._bytes -= self._sizes.pop(gone)
            self._until.pop(gone, None)

    def forget(self, keys: list[bytes] | None) -> None:
        """Drop ``keys`` (``None``: everything, as after ``FLUSHALL``)."""
        with self._lock:
            self._generation += 1
            if keys is None:
                self._drop_all()
                return
            for raw in keys:
                key = raw.decode("utf-8", "surrogateescape")
                if self._entries.pop(key, None) is not None:
                    self._bytes -= self._sizes.pop(key)
                    self._until.pop(key, None)

    def switch(self, on: bool) -> None:
        """Turn the cache on (the link is up) or off (it is down: empty it)."""
        with self._lock:
            self._generation += 1
            self._on = on
            if not on:
                self._drop_all()

    def _drop_all(self) -> None:
        self._slides.clear()
        self._entries.clear()
        self._sizes.clear()
        self._until.clear()
        self._bytes = 0


def _buffered(conn: Any) -> bool:
    """Whether redis-py holds bytes it read from ``conn`` and has not parsed yet (pushes
    that came after a reply), or cannot tell: then the next drain reads through it."""
    buffer = getattr(conn._parser, "_buffer", None)
    try:
        return buffer is None or buffer.unread_bytes() > 0
    except Exception:
        return True


class Tracker:
    """The tracking link of one server: invalidations in, :class:`NearCache` kept true.

    ``connect`` makes a new RESP3 (``protocol=3``) redis-py ``Connection`` to the server
    (any auth or TLS it needs included). :meth:`drain` applies what arrived, without
    blocking; a daemon thread drains every ``interval`` seconds too, and reconnects a
    lost link. :meth:`execute` sends a command on the link (the sessions' TTL refreshes).
    """

    def __init__(
        self,
        cache: NearCache,
        connect: Callable[[], Any],
        prefix: str,
        *,
        interval: float = 0.05,
        fence: Fence | None = None,
        gate: Callable[[bool], None] | None = None,
    ) -> None:
        self.cache = cache
        self.prefix = prefix
        self.interval = interval
        self._connect = connect
        self._conn: Any = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        #: Sentinel: the store's :class:`~hashsession.failover.Watch`; the link is dropped
        #: when its ``changes`` moves on from the value read before the link was opened.
        self._fence = fence
        self._seen = 0
        #: Whether nothing is buffered on the link: the last drain emptied it and nothing
        #: was read since (then a poll of its socket tells whether a drain is due).
        self._clean = False
        #: The socket ``_poller`` watches (a new one after a reconnect).
        self._polled: Any = None
        self._poller: Any = None
        #: Whether the link is a plain socket (TCP or unix, not TLS), which
        #: :meth:`_read_pushes` reads itself; and the start of a push it read in part.
        self._raw = False
        self._partial = b""
        #: Told ``True`` when the link comes up and ``False`` when it goes down; the
        #: cache's own switch, unless several links share the cache (a cluster).
        self._gate = cache.switch if gate is None else gate

    @property
    def up(self) -> bool:
        """Whether the link is open (invalidations are arriving)."""
        return self._conn is not None

    def idle_socket(self) -> Any:
        """The link's socket if nothing is buffered on it (so it need not be drained
        unless the socket is readable), else ``None``. Read its state after polling the
        socket: a drain under way marks the link busy before it reads the socket."""
        conn = self._conn
        if conn is None or not self._clean:
            return None
        return conn._sock

    def start(self, *, thread: bool = True) -> Tracker:
        """Open the link (raising if the server refuses it) and, with ``thread``, start
        the thread that drains and reconnects it."""
        with self._lock:
            self._open()
        if thread:
            self._thread = threading.Thread(
                target=self._run, name="hashsession-tracker", daemon=True
            )
            self._thread.start()
        return self

    def close(self) -> None:
        """Stop the thread, close the link and empty the cache."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._lock:
            self._drop()

    def drain(self) -> bool:
        """Apply every invalidation received so far; whether the link is up."""
        with self._lock:
            conn = self._conn
            if conn is None:
                return False
            fence = self._fence
            if fence is not None and fence.changes != self._seen:
                log.warning("near cache: the Sentinel master changed; cache off until linked to it")
                self._drop()
                return False
            sock = conn._sock
            if self._clean and sock is not None:
                # Nothing buffered since the last drain: one poll of the socket tells
                # whether anything arrived (redis-py's can_read costs three syscalls).
                if self._polled is not sock:
                    self._poller = select.poll()
                    self._poller.register(sock, select.POLLIN)
                    self._polled = sock
                if not self._poller.poll(0):
                    return True
                if self._raw:
                    return self._read_pushes(sock)
            self._clean = False
            try:
                while conn.can_read(timeout=0):
                    conn.read_response(push_request=True)  # pushes go to _handle
                self._clean = True
            except Exception as exc:  # the link broke: the cache cannot be trusted
                log.warning("near cache: tracking link lost (%s); cache off until it is back", exc)
                self._drop()
                return False
            return True

    def _read_pushes(self, sock: Any) -> bool:
        """Drain a clean plain-socket link that has data waiting: read it ourselves and
        apply its invalidation pushes (redis-py's parser costs about 20 µs a push). A part
        of a push is kept for the next read; anything but pushes drops the link."""
        try:
            while True:
                chunk = sock.recv(_CHUNK, socket.MSG_DONTWAIT)
                self._take(chunk)
                if len(chunk) < _CHUNK:  # all that had arrived: every push sent before
                    return True  # this drain began is applied
        except BlockingIOError:
            return True
        except Exception as exc:
            log.warning("near cache: tracking link lost (%s); cache off until it is back", exc)
            self._drop()
            return False

    def _complete(self, conn: Any) -> None:
        """Before redis-py reads the link again: read the rest of a push of which
        :meth:`_read_pushes` kept a part (the server writes pushes whole, so it is due)."""
        while self._partial:
            self._take(conn._sock.recv(_CHUNK))

    def _take(self, chunk: bytes) -> None:
        """Apply the pushes ``chunk`` completes (after the part kept so far), keeping the
        part of one it cuts short."""
        if not chunk:
            raise ConnectionError("the server closed the tracking link")
        data = self._partial + chunk if self._partial else chunk
        parsed = invalidations(data)
        if parsed is None:
            raise ConnectionError("the tracking link sent something else than pushes")
        pushes, end = parsed
        self._partial = data[end:]
        for keys in pushes:
            self.cache.forget(keys)

    def execute(self, *args: Any) -> Any:
        """Send one command on the link and return its reply (pushes met are applied).

        A write made here is not reported back to this cache (``NOLOOP``). A broken link,
        or a Sentinel switch before the reply came, turns the cache off and raises
        redis-py's ``ConnectionError``.
        """
        with self._lock:
            conn = self._conn
            if conn is None or self._moved():
                raise ConnectionError("the near cache's tracking link is down")
            self._clean = False  # pushes read along with the reply may stay buffered
            try:
                self._complete(conn)
                conn.send_command(*args)
                try:
                    reply = conn.read_response()
                except NoScriptError:  # the server forgot it: once more, with its source
                    conn.send_command(*with_source(args))
                    reply = conn.read_response()
            except ResponseError:
                raise  # an error reply: the link itself is fine
            except Exception:
                self._drop()
                raise
            if self._moved():
                raise ConnectionError(
                    "the Sentinel master changed while the command was in flight"
                    " (it reached the old master)"
                )
            self._clean = not _buffered(conn)
            return reply

    def reopen(self) -> bool:
        """Open the link if it is down (unless closed); whether it is up."""
        with self._lock:
            if self._conn is not None:
                return True
            if self._stop.is_set():
                return False
            try:
                self._open()
            except Exception as exc:
                log.debug("near cache: reconnecting the tracking link failed: %s", exc)
                return False
        log.info("near cache: tracking link back")
        return True

    def _moved(self) -> bool:
        """Whether the Sentinel master changed since the link was opened (then dropped)."""
        fence = self._fence
        if fence is None or fence.changes == self._seen:
            return False
        self._drop()
        return True

    def _open(self) -> None:
        # Read before the master is looked up: a switch after it drops this link again.
        seen = 0 if self._fence is None else self._fence.changes
        conn = self._connect()
        try:
            conn.connect()
            if str(getattr(conn, "protocol", 2)) != "3":
                raise ValueError("the tracking link needs a RESP3 connection (protocol=3)")
            if self._fence is not None:  # a replica would report changes late
                conn.send_command("ROLE")
                role = conn.read_response()
                if role[0] != b"master":
                    raise ConnectionError(f"{conn.host}:{conn.port} is no master")
            conn._parser.set_invalidation_push_handler(self._handle)
            conn.send_command("CLIENT", "TRACKING", "on", "BCAST", "PREFIX", self.prefix, "NOLOOP")
            conn.read_response()
        except BaseException:
            conn.disconnect()
            raise
        self._conn, self._seen = conn, seen
        self._raw, self._partial = type(conn._sock) is socket.socket, b""
        self._gate(True)

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        self._partial = b""
        self._gate(False)
        if conn is not None:
            with contextlib.suppress(Exception):  # closing a link that may be broken
                conn.disconnect()

    def _handle(self, message: Any) -> None:
        if isinstance(message, list) and len(message) == 2 and message[0] == b"invalidate":
            keys = message[1]
            self.cache.forget(None if keys is None else list(keys))

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            if not self.drain():
                self.reopen()


class Fence(Protocol):
    """What a tracking link watches to follow a Sentinel master (a ``Watch``)."""

    @property
    def changes(self) -> int: ...


class TrackingLink(Protocol):
    """What sessions use of a near cache's link (a :class:`Tracker`, or one per node)."""

    def drain(self) -> bool: ...

    def execute(self, *args: Any) -> Any: ...

    def close(self) -> None: ...


@dataclass(frozen=True)
class NearLink:
    """A store's near cache as its sessions use it: the cache, its tracking link, and
    the refresh share in thousandths of the idle timeout (as ``OPEN_NEAR`` takes it)."""

    cache: NearCache
    tracker: TrackingLink
    share: bytes
