"""The session store: one Redis connection, one configuration, many sessions.

``SessionStore(...)`` is created once at start-up and validates every
setting; per request, an adapter calls :meth:`SessionStore.open` with the
request's ``Cookie`` header and, when the response starts,
:meth:`SessionStore.response_headers` for the ``Set-Cookie``/``Vary`` to send.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any

import redis
from redis.sentinel import SentinelConnectionPool

from hashsession.config import SessionConfig
from hashsession.cookies import CookiePolicy
from hashsession.errors import ConfigurationError
from hashsession.nearcache import NearCache, NearLink, Tracker, TrackingLink
from hashsession.nearcluster import ClusterLinks
from hashsession.protocol import SessionCore
from hashsession.session import Session
from hashsession.topology import SyncClient, is_cluster
from hashsession.users import SessionInfo, UserId, revoke, revoke_user, run, sessions_of

if TYPE_CHECKING:
    from hashsession.aio import AsyncSession
    from hashsession.failover import Watch

__all__ = ["SessionStore", "StoreBase", "connect", "reply_timeout"]

log = logging.getLogger("hashsession")


def connect(target: str | SyncClient | None, socket_timeout: float | None = None) -> SyncClient:
    """A redis-py client from a URL, a ready client, or ``None`` (the embedded server).

    URLs may name one server, a Sentinel service or a Cluster (see
    :mod:`hashsession.topology`); a ready client may be a ``Redis`` (Sentinel's
    ``master_for`` makes one too) or a ``RedisCluster``. A client built from a URL gets
    the timeouts of :mod:`hashsession.topology` (``socket_timeout``, if given, as the
    reply timeout unless the URL sets one).
    """
    if target is None:
        from hashsession.devserver import default_url

        target = default_url()
    if isinstance(target, str):
        from hashsession.topology import SOCKET_TIMEOUT, sync_client

        client = sync_client(target, socket_timeout=socket_timeout or SOCKET_TIMEOUT)
        return checked_client(client)  # type: ignore[no-any-return]
    if callable(getattr(target, "execute_command", None)):
        return checked_client(target)  # type: ignore[no-any-return]
    raise ConfigurationError("redis", f"expected a URL or a redis-py client, not {target!r}")


def checked_client(client: Any) -> Any:
    """``client`` itself, once it is known to hand back bytes (codecs need the raw bytes)."""
    kwargs: dict[str, Any] = getattr(client, "get_connection_kwargs", dict)()
    if kwargs.get("decode_responses"):
        raise ConfigurationError(
            "redis", "the client must not use decode_responses=True: values are codec bytes"
        )
    return client


def reply_timeout(config: SessionConfig) -> float:
    """The reply timeout of a client built from a URL: 10 s, or longer than a ``WAIT``."""
    from hashsession.topology import SOCKET_TIMEOUT

    if not config.wait_replicas and not config.wait_auto:
        return SOCKET_TIMEOUT
    return max(SOCKET_TIMEOUT, config.wait_timeout_ms / 1000 + 2)


def _link_to(client: Any) -> Any:
    """A new RESP3 connection made as ``client``'s pool makes its own (address, auth,
    TLS, timeouts; on Sentinel, to the master it names now)."""
    pool = client.connection_pool
    # The pool's settings without redis-py's own per-pool machinery (maintenance
    # notifications and the like).
    kwargs = {
        k: v
        for k, v in pool.connection_kwargs.items()
        if not k.startswith(("maint_notifications", "orig_", "himport"))
    }
    kwargs["protocol"] = 3
    return pool.connection_class(**kwargs)


class StoreBase:
    """What both store flavours share: validated settings and cookie handling, no I/O."""

    config: SessionConfig
    #: The class that checks the settings and names ids and keys; compat layers subclass it.
    config_class: type[SessionConfig] = SessionConfig
    #: The sans-I/O class behind each session; compat layers subclass it.
    core_class: type[SessionCore] = SessionCore
    #: The near cache sessions named by a cookie use (``near_cache``), or ``None``.
    _near: NearLink | None = None
    #: The Sentinel master this store follows (:mod:`hashsession.failover`), or ``None``.
    _watch: Watch | None = None

    def __init__(self, **settings: Any) -> None:
        try:
            self.config = self.config_class.build(**settings)
        except TypeError as exc:  # an unknown keyword
            raise ConfigurationError("settings", str(exc)) from None

    def _check_cookie_security(self, development: bool) -> None:
        """Log a warning at start-up when session cookies go without ``Secure`` everywhere.

        ``development`` (the embedded server, ``redis=None``) is exempt.
        """
        if self.config.cookie.secure is False and not development:
            log.warning(
                "hashsession: session cookies are sent without the Secure attribute"
                " (cookie secure=False), so a browser also sends them over plain http;"
                " leave secure unset (Secure except on plain http to a loopback host)"
                " or set it to True"
            )

    def _follow(self, client: Any) -> Callable[[], Any]:
        """On Sentinel: follow the master's switches (see :mod:`hashsession.failover`) and,
        under ``wait_for_replicas="auto"``, let the sentinels' view set the ``WAIT``;
        returns what to call when the store is closed."""
        from hashsession.failover import follow

        watch, unwatch = follow(client)
        self._watch = watch
        if watch is not None and self.config.wait_auto:
            self.config = replace(self.config, replica_view=watch)
        return unwatch

    def _on_cluster(self) -> None:
        """Sessions live on a Redis Cluster: regenerated ids must keep their key's slot."""
        if self.config.wait_replicas:
            raise ConfigurationError(
                "wait_for_replicas",
                "is not available on a Redis Cluster (WAIT must follow the write on the"
                " same connection to the key's node, which redis-py's cluster client does"
                " not offer); use Sentinel, or leave it at 0",
            )
        self.config = replace(self.config, same_slot_ids=True)

    @property
    def near_cache(self) -> NearCache | None:
        """The near cache (``near_cache`` setting), or ``None``."""
        return None if self._near is None else self._near.cache

    @property
    def cookie(self) -> CookiePolicy:
        """The cookie policy in force."""
        return self.config.cookie

    def core_for(
        self, cookie_header: str | None, *, plain_local: bool | Callable[[], bool] = False
    ) -> SessionCore:
        """The sans-I/O session for a request's ``Cookie`` header (no Redis command).

        ``plain_local``: the request came over plain http to a loopback host (see
        :func:`~hashsession.cookies.is_plain_local`); adapters work it out, or pass a
        function that does, called only if the session is used.
        """
        config = self.config
        values = config.cookie.values_from_header(cookie_header)
        core = None
        for value in values:
            session_id, stale = config.read_cookie(value)
            if session_id is not None:
                core = self.core_class(config, session_id, had_cookie=True)
                core.resign = stale
                core.near = self._near
                break
        else:
            if values:
                log.debug("ignoring a session cookie that is malformed or badly signed")
            core = self.core_class(config, None, had_cookie=bool(values))
        core.plain_local = plain_local() if callable(plain_local) else plain_local
        return core

    def core_for_value(self, cookie_value: str | None, *, plain_local: bool = False) -> SessionCore:
        """The sans-I/O session for a bare cookie value (as a framework's cookie jar gives it)."""
        if cookie_value is None:
            core = self.core_class(self.config, None)
        else:
            session_id, stale = self.config.read_cookie(cookie_value)
            core = self.core_class(self.config, session_id, had_cookie=True)
            core.resign = stale
            core.near = self._near
        core.plain_local = plain_local
        return core

    @staticmethod
    def response_headers(session: Session | AsyncSession) -> list[tuple[str, str]]:
        """``Set-Cookie`` and ``Vary`` headers the response must carry, as needed."""
        if session._opening is not None:
            return []  # never used: the cookie stands as it came
        return session.core.response_headers()

    @staticmethod
    def headers_sent(session: Session | AsyncSession) -> None:
        """Note that the response headers are committed: a step that would need a
        ``Set-Cookie`` raises from now on (a session not used yet learns it when it is)."""
        session._headers_out()


class SessionStore(StoreBase):
    """Where sessions live, and how they are named, signed, encoded and expired.

    ``redis`` is a URL, a redis-py client, or ``None`` for a private embedded
    redis-server (development only; a log line says so). The other settings
    are keyword-only and checked here (see :meth:`SessionConfig.build`); a bad
    one raises :class:`~hashsession.ConfigurationError` naming it.
    """

    #: The class :meth:`open` makes sessions of; adapters and compat layers subclass it.
    session_class: type[Session] = Session

    def __init__(self, *, redis: str | SyncClient | None = None, **settings: Any) -> None:
        super().__init__(**settings)
        self._check_cookie_security(development=redis is None)
        self._client = connect(redis, reply_timeout(self.config))
        self._owns_pool = not callable(getattr(redis, "execute_command", None))
        if is_cluster(self._client):
            self._on_cluster()
        self._unwatch = self._follow(self._client)
        if self.config.near_cache is not None:
            try:
                self._near = self._start_near(self._client)
            except BaseException:
                self.close()
                raise

    @property
    def client(self) -> SyncClient:
        """The redis-py client sessions talk through."""
        return self._client

    def open(
        self, cookie_header: str | None = None, *, plain_local: bool | Callable[[], bool] = False
    ) -> Session:
        """The session for a request, given its ``Cookie`` header; lazy, costs no round trip.

        ``plain_local=True`` says the request came over plain http to a loopback host,
        where the default cookie policy leaves ``Secure`` out.
        """
        session_class = self.session_class
        if session_class.__init__ is Session.__init__:  # its core is worked out when needed
            opening = partial(self.core_for, cookie_header, plain_local=plain_local)
            return session_class(opening, self.client)
        return session_class(self.core_for(cookie_header, plain_local=plain_local), self.client)

    def open_id(self, cookie_value: str | None, *, plain_local: bool = False) -> Session:
        """The session for a bare cookie value."""
        core = self.core_for_value(cookie_value, plain_local=plain_local)
        return self.session_class(core, self.client)

    def sessions_of(
        self, user_id: UserId, current: Session | str | None = None
    ) -> list[SessionInfo]:
        """``user_id``'s live sessions, most recently seen first (see :mod:`hashsession.users`).

        ``current`` (a session or an id) is flagged ``current=True`` in the list.
        """
        return run(self.client, sessions_of(self.config, user_id, current), *self.config.patience)

    def revoke(self, id_or_handle: str, *, user_id: UserId | None = None) -> bool:
        """Delete one session, by id or by a :class:`SessionInfo` handle; whether it lived.

        With ``user_id``, only a session of that user is deleted.
        """
        return run(self.client, revoke(self.config, id_or_handle, user_id), *self.config.patience)

    def revoke_user(self, user_id: UserId, keep: Session | str | None = None) -> int:
        """Delete every session of ``user_id`` except ``keep`` (a session, id or handle).

        "Log out everywhere else"; returns how many live sessions were deleted.
        """
        return run(self.client, revoke_user(self.config, user_id, keep), *self.config.patience)

    def _start_near(self, client: Any) -> NearLink:
        """The near cache and its tracking link(s): one RESP3 connection like the pool's
        to the server, to the Sentinel master (following its switches) or to every
        node of a cluster (see :mod:`hashsession.nearcluster`)."""
        settings = self.config.near_cache
        assert settings is not None
        cache = NearCache(settings.max_sessions, settings.max_bytes)
        prefix = self.config.prefix
        link: TrackingLink
        try:
            if is_cluster(client):
                link = ClusterLinks(
                    cache, client, lambda node: _link_to(client.get_redis_connection(node)), prefix
                ).start()
            else:
                sentinel = isinstance(client.connection_pool, SentinelConnectionPool)
                if sentinel and self._watch is None:  # follow() gives every master pool one
                    raise ConfigurationError(
                        "near_cache", "needs the Sentinel master's client (not a replica's)"
                    )
                link = Tracker(cache, partial(_link_to, client), prefix, fence=self._watch)
                link = link.start()
        except (redis.RedisError, OSError) as exc:
            raise ConfigurationError(
                "near_cache", f"needs client tracking (Redis 6.0+ or Valkey): {exc}"
            ) from exc
        return NearLink(cache, link, b"%d" % round(settings.refresh_share * 1000))

    def close(self) -> None:
        """Close the Redis connections this store opened (the pool too, if it built one)."""
        client = self.client
        if self._near is not None:
            self._near.tracker.close()
        self._unwatch()
        client.close()
        if self._owns_pool and isinstance(client, redis.Redis):
            client.connection_pool.disconnect()
