"""redis-session's API, rebuilt on hashsession: change the import, keep the app.

``flask_session.setup_session(app)`` gives ``request.session``;
``tornado_session.SessionHandler`` gives ``self.session``. Both are
:class:`RedisSession` objects: ``session.count`` reads one field as a
:class:`Value` (``.raw .str .int .bool .json .none``) and ``session.count = 1``
writes it, each at once, to the same ``<prefix>:sessions:<id>`` hash of plain text
redis-session used. See ``docs/migrating-from-redis-session.md``.
"""

from __future__ import annotations

import builtins
import json as _json
from collections.abc import Mapping
from typing import Any

from hashsession.errors import DecodeError
from hashsession.session import Session

__all__ = [
    "DEFAULT_COOKIE",
    "DEFAULT_PREFIX",
    "DEFAULT_REDIS",
    "DEFAULT_TTL",
    "RedisSession",
    "TextCodec",
    "Value",
]

#: Where sessions live when no Redis URL is configured (redis-session's default).
DEFAULT_REDIS = "redis://localhost:6379"
#: The key prefix when none is configured: keys are ``redis:sessions:<id>``.
DEFAULT_PREFIX = "redis"
#: Idle timeout when ``SESSION_EXPIRE`` / ``session-expire`` is unset (redis-session: never).
DEFAULT_TTL = 14 * 24 * 3600
#: The cookie name when none is configured.
DEFAULT_COOKIE = "session-id"


def key_prefix(prefix: str | None) -> str:
    """The Redis key prefix for redis-session's ``prefix`` setting: ``<prefix>:sessions:``."""
    return f"{prefix or DEFAULT_PREFIX}:sessions:"


def cookie_domain(domain: str | None) -> str | None:
    """The domain without a leading dot, which RFC 6265 ignores (and Werkzeug drops)."""
    return (domain or "").lstrip(".") or None


class TextCodec:
    """Values as redis-py writes them under redis-session: UTF-8 text; reads give raw bytes.

    ``str``, ``bytes``, ``int`` and ``float`` are stored as redis-py stores them; ``bool``
    as ``"True"``/``"False"`` (what ``.bool`` expects) and ``dict``/``list`` as JSON
    (what ``.json`` expects). Anything else is refused rather than stored as lossy text.
    """

    def dumps(self, value: Any, /) -> str | bytes:
        if isinstance(value, (str, bytes)):
            return value
        if isinstance(value, bool):
            return str(value)
        if isinstance(value, int):
            return str(int(value))
        if isinstance(value, float):
            return repr(float(value))
        if isinstance(value, (dict, list)):
            return _json.dumps(value)
        raise TypeError(f"redis-session values are text; convert {type(value).__name__} first")

    def loads(self, data: bytes, /) -> bytes:
        return bytes(data)


class Value:
    """One field as read from Redis, with redis-session's parsers and their fallbacks."""

    __slots__ = ("key", "raw")

    def __init__(self, raw: bytes | None, key: builtins.str | None = None) -> None:
        #: The stored bytes, or ``None`` when the field is missing.
        self.raw = raw
        #: The field it was read from (named by :class:`DecodeError`).
        self.key = key

    @property
    def none(self) -> builtins.bool:
        """Whether the field is missing."""
        return self.raw is None

    @property
    def str(self) -> builtins.str:
        """The text; ``''`` when missing; :class:`DecodeError` if the bytes are not UTF-8."""
        if self.raw is None:
            return ""
        try:
            return self.raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise DecodeError(self.key, f"stored bytes are not UTF-8 text: {exc}") from exc

    @property
    def int(self) -> builtins.int:
        """The integer; ``0`` when missing or not an integer."""
        try:
            return builtins.int(self.raw)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return 0

    @property
    def bool(self) -> builtins.bool:
        """Whether the text is exactly ``True``; ``False`` otherwise."""
        return self.raw == b"True"

    @property
    def json(self) -> Any:
        """The decoded JSON; ``{}`` when missing or not JSON."""
        if self.raw is None:
            return {}
        try:
            return _json.loads(self.raw)
        except ValueError:
            return {}

    def __repr__(self) -> builtins.str:
        return f"Value({self.raw!r})"


class RedisSession:
    """redis-session's session object over a live hashsession :class:`~hashsession.Session`.

    Any attribute not defined here is a session field: reading it is one ``HGET``
    (a :class:`Value`, never stale), assigning it one ``HSET``, ``del`` one ``HDEL``.
    The native session is ``.native``.
    """

    __slots__ = ("_native",)
    _native: Session

    def __init__(self, native: Session) -> None:
        object.__setattr__(self, "_native", native)

    @property
    def native(self) -> Session:
        """The hashsession session underneath, for the native API."""
        return self._native

    @property
    def sessionId(self) -> str | None:
        """The session id; ``None`` until something is stored (ids are not made eagerly)."""
        return self._native.id

    def __getattr__(self, name: builtins.str) -> Value:
        if name.startswith("__"):
            raise AttributeError(name)
        return Value(self._native.get(name), name)

    def __setattr__(self, name: builtins.str, value: Any) -> None:
        self._native[name] = value

    def __delattr__(self, name: builtins.str) -> None:
        self._native.delete(name)

    def load(self) -> dict[builtins.str, bytes]:
        """Every field and its raw bytes (one ``HGETALL``)."""
        return self._native.to_dict()

    def save(self, values: Mapping[builtins.str, Any]) -> None:
        """Store many fields in one ``HSET``."""
        self._native.update(values)

    def clear(self) -> None:
        """Delete the whole session now; the response expires its cookie."""
        self._native.invalidate()

    def touch(self) -> None:
        """Restart the idle timeout now."""
        self._native.touch()

    def __repr__(self) -> builtins.str:
        return f"<RedisSession {self._native.id!r}>"
