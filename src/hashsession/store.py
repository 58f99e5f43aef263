"""The session store: one Redis connection, one configuration, many sessions.

``SessionStore(...)`` is created once at start-up and validates every
setting; per request, an adapter calls :meth:`SessionStore.open` with the
request's ``Cookie`` header and, when the response starts,
:meth:`SessionStore.response_headers` for the ``Set-Cookie``/``Vary`` to send.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from datetime import timedelta
from typing import Any

import redis

from hashsession.codecs import Codec
from hashsession.config import KeyLayout, SessionConfig
from hashsession.cookies import CookiePolicy
from hashsession.errors import ConfigurationError
from hashsession.protocol import SessionCore
from hashsession.session import Session

__all__ = ["SessionStore", "connect"]

log = logging.getLogger("hashsession")


def connect(target: str | redis.Redis | None) -> redis.Redis:
    """A redis-py client from a URL, a ready client, or ``None`` (the embedded server)."""
    if target is None:
        from hashsession.embedded import default_server

        return default_server().client()
    if isinstance(target, str):
        try:
            return redis.Redis.from_url(target)
        except ValueError as exc:
            raise ConfigurationError("redis", f"bad Redis URL: {exc}") from exc
    if callable(getattr(target, "execute_command", None)):
        return target
    raise ConfigurationError("redis", f"expected a URL or a redis-py client, not {target!r}")


class SessionStore:
    """Where sessions live, and how they are named, signed, encoded and expired.

    All settings are keyword-only and checked here; a bad one raises
    :class:`~hashsession.ConfigurationError` naming it.
    ``redis`` is a URL, a redis-py client, or ``None`` for a private embedded
    redis-server (development only; a log line says so).
    """

    def __init__(
        self,
        *,
        redis: str | redis.Redis | None = None,
        prefix: str = "hs:",
        ttl: int | timedelta = 14 * 24 * 3600,
        absolute_ttl: int | timedelta | None = None,
        secret_keys: Sequence[str | bytes] | None = None,
        codec: str | Codec | None = None,
        cookie: CookiePolicy | Mapping[str, Any] | None = None,
        max_key_length: int = 256,
        max_value_size: int = 512 * 1024,
        max_keys: int = 1000,
        key_layout: KeyLayout = "digest",
        adopt_unknown_ids: bool = False,
        id_factory: Callable[[], str] | None = None,
        refresh_cookie: bool = True,
        edit_retries: int = 10,
    ) -> None:
        self.config = SessionConfig.build(
            prefix=prefix,
            ttl=ttl,
            absolute_ttl=absolute_ttl,
            secret_keys=secret_keys,
            codec=codec,
            cookie=cookie,
            max_key_length=max_key_length,
            max_value_size=max_value_size,
            max_keys=max_keys,
            key_layout=key_layout,
            adopt_unknown_ids=adopt_unknown_ids,
            id_factory=id_factory,
            refresh_cookie=refresh_cookie,
            edit_retries=edit_retries,
        )
        self.client = connect(redis)

    @property
    def cookie(self) -> CookiePolicy:
        """The cookie policy in force."""
        return self.config.cookie

    def core_for(self, cookie_header: str | None) -> SessionCore:
        """The sans-I/O session for a request's ``Cookie`` header (no Redis command)."""
        config = self.config
        values = config.cookie.values_from_header(cookie_header)
        for value in values:
            session_id = config.id_from_cookie(value)
            if session_id is not None:
                return SessionCore(config, session_id, had_cookie=True)
        if values:
            log.debug("ignoring a session cookie that is malformed or badly signed")
        return SessionCore(config, None, had_cookie=bool(values))

    def open(self, cookie_header: str | None = None) -> Session:
        """The session for a request, given its ``Cookie`` header; lazy, costs no round trip."""
        return Session(self.core_for(cookie_header), self.client)

    def open_id(self, cookie_value: str | None) -> Session:
        """The session for a bare cookie value (as a framework's cookie jar gives it)."""
        if cookie_value is None:
            return Session(SessionCore(self.config, None), self.client)
        session_id = self.config.id_from_cookie(cookie_value)
        return Session(SessionCore(self.config, session_id, had_cookie=True), self.client)

    @staticmethod
    def response_headers(session: Session) -> list[tuple[str, str]]:
        """``Set-Cookie`` and ``Vary`` headers the response must carry, as needed."""
        return session.core.response_headers()

    def close(self) -> None:
        """Close the Redis connections this store opened."""
        self.client.close()
