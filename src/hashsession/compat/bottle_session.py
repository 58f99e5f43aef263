"""bottle-session's ``SessionPlugin``, rebuilt on hashsession: change the import, keep the app.

Sessions bottle-session 1.0 wrote (``session:<uuid>`` hashes of UTF-8 text, found through a
cookie holding the uuid's 32 hex digits) stay readable, the session object keeps the
bottle-session behaviour apps relied on (``session[missing]`` is ``None``, values are text),
and the plugin keeps its arguments, defaults and settable ``connection_pool``.
See ``docs/migrating-from-bottle-session.md``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import redis

from hashsession import bottle as native
from hashsession.compat._lists import ListSession
from hashsession.config import SessionConfig, seconds
from hashsession.cookies import CookiePolicy
from hashsession.errors import ConfigurationError
from hashsession.store import SessionStore

__all__ = ["MAX_TTL", "Session", "SessionPlugin"]

#: How long a session lives in Redis when ``cookie_lifetime`` is ``None`` (one week).
MAX_TTL = 7 * 24 * 3600

# bottle-session's names for the cookie settings it passes on, for clearer errors.
_ARGUMENT_OF = {"cookie.name": "cookie_name", "cookie.max_age": "cookie_lifetime"}


class _Config(SessionConfig):
    """bottle-session's naming: uuid4 ids, 32 hex digits in the cookie, ``session:<uuid>`` keys."""

    __slots__ = ()

    def new_id(self, like: str | None = None) -> str:
        """A fresh uuid4 (122 bits from ``os.urandom``) as 32 hex digits."""
        return uuid.uuid4().hex

    def key_of(self, session_id: str) -> str:
        """``prefix`` plus the canonical, dashed text of the uuid, as bottle-session named keys."""
        return f"{self.prefix}{uuid.UUID(hex=session_id)}"

    def id_from_unsigned(self, value: str) -> str | None:
        """The id in a cookie, normalised to 32 hex digits; ``None`` unless it is a uuid."""
        checked = super().id_from_unsigned(value)
        if checked is None:
            return None
        try:
            return uuid.UUID(checked).hex
        except ValueError:
            return None


class _TextCodec:
    """bottle-session's stored form: each value is UTF-8 text, and reads give ``str``.

    Like redis-py under bottle-session, ``str``, ``bytes``, ``int`` and ``float`` are
    accepted (numbers as their decimal text, which ``HINCRBY`` can increment); anything
    else is refused rather than stored as a lossy ``str()``.
    """

    def dumps(self, value: Any, /) -> str | bytes:
        if isinstance(value, (str, bytes)):
            return value
        if isinstance(value, int) and not isinstance(value, bool):
            return str(int(value))
        if isinstance(value, float):
            return repr(float(value))
        raise TypeError(f"bottle-session sessions hold text; convert {type(value).__name__} first")

    def loads(self, data: bytes, /) -> str:
        return data.decode("utf-8")


class Session(ListSession):
    """A live hashsession :class:`~hashsession.Session` that also behaves like bottle-session's.

    Kept for apps written for bottle-session: values read back as ``str``;
    ``session[k]`` is ``None`` for a missing key; ``get(k, d)`` gives ``d`` for a missing
    *or empty* value; ``del session[k]`` does not raise for a missing key; ``has_key()``;
    iterating yields ``(key, value)`` pairs; ``keys()``, ``values()`` and ``items()``
    return lists; ``destroy()`` deletes the session.
    """

    __slots__ = ()

    def __getitem__(self, key: str) -> Any:
        try:
            return super().__getitem__(key)
        except KeyError:
            return None

    def get(self, key: str, default: Any = None) -> Any:
        """The value under ``key``; ``default`` if it is missing or empty."""
        value = self[key]
        return value if value else default

    def has_key(self, key: str) -> bool:
        """Whether ``key`` is in the session (bottle-session's name for ``key in session``)."""
        return key in self

    def __delitem__(self, key: str) -> None:
        self.delete(key)

    def __iter__(self) -> Iterator[tuple[str, Any]]:  # type: ignore[override]
        """``(key, value)`` pairs from one ``HGETALL``, as bottle-session iterated."""
        return iter(self.items())

    def destroy(self) -> None:
        """Delete the session now; later writes in this request start a new one.

        The same as :meth:`invalidate`: without later writes, the response drops the cookie.
        """
        self.invalidate()


class _Store(SessionStore):
    """A :class:`~hashsession.SessionStore` with bottle-session's ids, keys and sessions."""

    session_class = Session
    config_class = _Config


class SessionPlugin(native.SessionPlugin):
    """bottle-session 1.0's plugin, with its arguments and defaults, on hashsession.

    Routes naming ``keyword`` get a live :class:`Session`. Sessions are ``session:<uuid>``
    hashes of text in database ``db`` of the Redis at ``host``:``port``; they expire
    ``cookie_lifetime`` seconds after their last use (a week if it is ``None``, and the
    cookie then lasts until the browser closes). Assign ``connection_pool`` before
    ``app.install()`` to share a pool with other plugins; otherwise one is made at install.
    """

    name = "session"

    def __init__(
        self,
        host: str = "localhost",
        port: int = 6379,
        db: int = 0,
        cookie_name: str = "bottle.session",
        cookie_lifetime: int | timedelta | None = 300,
        keyword: str = "session",
        password: str | None = None,
        cookie_secure: bool = False,
        cookie_httponly: bool = False,
    ) -> None:
        super().__init__(None, keyword=keyword)
        self.host = host
        self.port = port
        self.db = db
        self.cookie_name = cookie_name
        self.cookie_lifetime = cookie_lifetime
        self.password = password
        self.cookie_secure = cookie_secure
        self.cookie_httponly = cookie_httponly
        self.connection_pool: redis.ConnectionPool | None = None
        self._settings()  # report a bad argument now, not at install

    def _settings(self) -> dict[str, Any]:
        """Store settings from the current attributes, errors naming bottle-session's arguments."""
        max_age = seconds("cookie_lifetime", self.cookie_lifetime, allow_none=True)
        try:
            cookie = CookiePolicy(
                name=self.cookie_name,
                path="/",
                secure=bool(self.cookie_secure),
                httponly=bool(self.cookie_httponly),
                max_age=max_age,
            )
        except ConfigurationError as exc:
            message = str(exc).partition(": ")[2]
            raise ConfigurationError(_ARGUMENT_OF.get(exc.setting, exc.setting), message) from None
        return {
            "prefix": "session:",
            "ttl": MAX_TTL if max_age is None else max_age,
            "codec": _TextCodec(),
            "cookie": cookie,
            "key_layout": "raw",
        }

    def default_store(self) -> SessionStore:
        """The store over ``connection_pool``, made from ``host``/``port``/``db`` if unset."""
        settings = self._settings()
        if self.connection_pool is None:
            self.connection_pool = redis.ConnectionPool(
                host=self.host, port=self.port, db=self.db, password=self.password
            )
        return _Store(redis=redis.Redis(connection_pool=self.connection_pool), **settings)
