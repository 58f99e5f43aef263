"""redis-session's Flask module on hashsession, working on current Flask and Werkzeug.

``setup_session(app)`` reads redis-session's config keys and gives each request a
lazy ``request.session`` (a :class:`~hashsession.compat.redis_session.RedisSession`);
``flask.session`` is the same session, with the native mapping API.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from hashsession._extras import missing_extra

try:
    from flask import Flask, request
except ModuleNotFoundError as exc:  # the extra is not installed
    missing_extra(exc, "flask", "hashsession.compat.redis_session.flask_session")

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
from hashsession.flask import HashSessionInterface, current_session
from hashsession.store import SessionStore

__all__ = ["setup_session", "store_from_config"]

# Which config key each store setting came from, for errors that name the key.
_ORIGIN = {
    "redis": "SESSION_REDIS",
    "prefix": "SESSION_REDIS_PREFIX",
    "ttl": "SESSION_EXPIRE",
    "secret_keys": "SECRET_KEY",
    "cookie.name": "SESSION_COOKIE_ID",
    "cookie.domain": "SESSION_COOKIE_DOMAIN",
    "cookie.path": "SESSION_COOKIE_PATH",
}


def store_from_config(config: Mapping[str, Any]) -> SessionStore:
    """A store from redis-session's keys: ``SESSION_REDIS``, ``SESSION_REDIS_PREFIX``,
    ``SESSION_EXPIRE``, ``SESSION_COOKIE_{ID,SECURE,HTTP_ONLY,DOMAIN,PATH}`` and ``SECRET_KEY``.

    Secure and HttpOnly are on unless set to ``False``, as in redis-session.
    """
    secret = config.get("SECRET_KEY")
    if not secret:
        raise ConfigurationError("SECRET_KEY", "set it to sign session cookies")
    try:
        return SessionStore(
            redis=config.get("SESSION_REDIS") or DEFAULT_REDIS,
            prefix=key_prefix(config.get("SESSION_REDIS_PREFIX")),
            ttl=config.get("SESSION_EXPIRE") or DEFAULT_TTL,
            secret_keys=[secret, *(config.get("SECRET_KEY_FALLBACKS") or ())],
            codec=TextCodec(),
            cookie={
                "name": config.get("SESSION_COOKIE_ID") or DEFAULT_COOKIE,
                "secure": config.get("SESSION_COOKIE_SECURE") is not False,
                "httponly": config.get("SESSION_COOKIE_HTTP_ONLY") is not False,
                "domain": cookie_domain(config.get("SESSION_COOKIE_DOMAIN")),
                "path": config.get("SESSION_COOKIE_PATH") or "/",
            },
            key_layout="raw",
            refresh_cookie=False,  # a browser-session cookie gains nothing from resending
        )
    except ConfigurationError as exc:
        message = str(exc).removeprefix(f"{exc.setting}: ")
        raise ConfigurationError(_ORIGIN.get(exc.setting, exc.setting), message) from exc


def setup_session(app: Flask) -> HashSessionInterface:
    """Install the session on ``app`` from its config; ``request.session`` in every request."""
    interface = HashSessionInterface(store_from_config(app.config))
    app.session_interface = interface
    app.extensions["redis_session"] = interface
    app.before_request(_attach)
    return interface


def _attach() -> None:
    request.session = RedisSession(current_session())  # type: ignore[attr-defined]
