"""redis-session's Tornado module on hashsession: ``SessionHandler`` with ``self.session``.

The ``session-*`` options of ``tornado.options`` are defined on import, with
redis-session's names and defaults. As in redis-session, the session is
synchronous (each read or write is one blocking Redis round trip); for a
non-blocking session use :class:`hashsession.tornado.SessionMixin`.
"""

from __future__ import annotations

from asyncio import Future
from collections.abc import Mapping
from typing import Any

from hashsession._extras import missing_extra
from hashsession.cookies import is_plain_local

try:
    from tornado.options import define, options
    from tornado.web import Application, RequestHandler
except ModuleNotFoundError as exc:  # the extra is not installed
    missing_extra(exc, "tornado", "hashsession.compat.redis_session.tornado_session")

from hashsession.compat.redis_session import (
    DEFAULT_COOKIE,
    DEFAULT_REDIS,
    DEFAULT_TTL,
    RedisSession,
    TextCodec,
    cookie_domain,
    key_prefix,
)
from hashsession.errors import ConfigurationError
from hashsession.protocol import SessionCore
from hashsession.store import SessionStore

__all__ = ["SessionHandler", "store_for"]

#: Lifetime of a signed cookie: Tornado's ``set_secure_cookie`` default, which redis-session used.
SIGNED_COOKIE_DAYS = 30
_BUILT = "_redis_session_store"

for _name, _default, _type, _help in (
    ("session-redis", DEFAULT_REDIS, str, "session store redis url"),
    ("session-redis-prefix", None, str, "redis key prefix"),
    ("session-expire", None, int, "session ttl(seconds)"),
    ("session-cookie-id", None, str, "cookie key, default: session-id"),
    ("session-cookie-secure", True, bool, "if the session cookie is signed"),
    ("session-cookie-domain", "", str, "session cookie domain"),
    ("session-cookie-path", "/", str, "session cookie path"),
    ("session-cookie-http-only", True, bool, "if set session cookie as http only"),
):
    if _name not in options:
        define(_name, default=_default, type=_type, help=_help)


class _SetOnceCore(SessionCore):
    """redis-session set its cookie once, when it made the session: never again for that id
    (hashsession would resend a cookie with a ``Max-Age`` when the session changes)."""

    __slots__ = ()

    def set_cookie_header(self) -> str | None:
        header = super().set_cookie_header()
        if header is not None and self.id is not None and self.id == self._incoming_id:
            return None  # the browser's cookie names this very session already
        return header


class _SetOnceStore(SessionStore):
    core_class = _SetOnceCore


def store_for(application: Application) -> SessionStore:
    """The store ``tornado.options`` describe, built on first use and kept on the application.

    ``session-cookie-secure`` (on by default) signs the cookie with the
    application's ``cookie_secret``, as redis-session did; off, it is sent unsigned.
    """
    built: SessionStore | None = getattr(application, _BUILT, None)
    if built is not None:
        return built
    signed = options.session_cookie_secure
    secret = application.settings.get("cookie_secret")
    if signed and not isinstance(secret, (str, bytes)):
        raise ConfigurationError(
            "cookie_secret", "give the Application a cookie_secret (str) to sign session cookies"
        )
    store = _SetOnceStore(
        redis=options.session_redis or DEFAULT_REDIS,
        prefix=key_prefix(options.session_redis_prefix),
        ttl=options.session_expire or DEFAULT_TTL,
        secret_keys=[secret] if signed else None,
        codec=TextCodec(),
        cookie={
            "name": options.session_cookie_id or DEFAULT_COOKIE,
            "httponly": options.session_cookie_http_only,
            "domain": cookie_domain(options.session_cookie_domain),
            "path": options.session_cookie_path or "/",
            "secure": False,  # redis-session's "secure" meant signed, never the Secure flag
            "max_age": SIGNED_COOKIE_DAYS * 24 * 3600 if signed else None,
        },
        key_layout="raw",
        refresh_cookie=False,
    )
    setattr(application, _BUILT, store)
    return store


class SessionHandler(RequestHandler):
    """A ``RequestHandler`` with redis-session's lazy, live ``self.session``.

    Opening the session costs no Redis command; its ``Set-Cookie`` (and
    ``Vary: Cookie``) go out with the first flush of the headers. After that, a step
    that needs a new cookie raises :class:`~hashsession.HeadersSentError`.
    """

    _redis_session: RedisSession | None = None

    @property
    def session(self) -> RedisSession:
        """This request's session."""
        if self._redis_session is None:
            cookie = "; ".join(self.request.headers.get_list("Cookie"))
            store = store_for(self.application)
            local = is_plain_local(self.request.protocol, self.request.host)
            native = store.open(cookie or None, plain_local=local)
            if native.core.id is None and native.core.had_cookie:
                legacy = self._legacy_id(store)
                if legacy is not None:
                    value = store.config.cookie_value(legacy)
                    native = store.open_id(value, plain_local=local)
            if self._headers_written:  # too late for a cookie: the browser keeps its own
                native.core.headers_sent = True
            self._redis_session = RedisSession(native)
        return self._redis_session

    @session.setter
    def session(self, values: Mapping[str, Any]) -> None:
        self.session.save(values)

    @session.deleter
    def session(self) -> None:
        self.session.clear()

    @property
    def sessionId(self) -> str | None:
        """The session id; ``None`` until something is stored."""
        return self.session.sessionId

    def _legacy_id(self, store: SessionStore) -> str | None:
        """The id in a cookie redis-session signed (Tornado's format), so its session lives on."""
        if store.config.signer is None:
            return None  # an unsigned cookie is the bare id, which the store reads itself
        value = self.get_signed_cookie(store.cookie.cookie_name)
        return value.decode("utf-8", "replace") if value is not None else None

    def flush(self, include_footers: bool = False) -> Future[None]:
        """Add the session's headers before the first chunk, then flush as usual."""
        if not self._headers_written and self._redis_session is not None:
            core = self._redis_session.native.core
            for name, value in core.response_headers():
                if name.lower() == "vary":
                    current = self._headers.get("Vary")
                    self.set_header("Vary", f"{current}, {value}" if current else value)
                else:
                    self.add_header(name, value)
            core.headers_sent = True  # this flush sends them; no cookie can follow
        return super().flush(include_footers)
