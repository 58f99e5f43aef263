"""pyramid_redis_sessions' names on hashsession: change the package name, keep the settings.

``config.include("hashsession.compat.pyramid_redis_sessions")``,
:func:`session_factory_from_settings` and :func:`RedisSessionFactory` take every
``redis.sessions.*`` setting of pyramid_redis_sessions, under both the names of
its documentation (``custom_connect``, ``encode``, ``decode``) and those of its
last release, 1.0.1 (``client_callable``, ``serialize``, ``deserialize``, plus
``prefix`` and ``id_generator``). The sessions are hashsession's: live, one hash
each, JSON unless you name another serializer. Sessions the old package stored
(one pickled string per session) are not read. See
``docs/migrating-from-pyramid_redis_sessions.md``.
"""

from __future__ import annotations

import codecs as _codecs
import pickle
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import redis

from hashsession._extras import missing_extra

try:
    from pyramid.events import NewResponse  # type: ignore[import-untyped]
    from pyramid.exceptions import (  # type: ignore[import-untyped]
        ConfigurationError as _PyramidConfigurationError,
    )
    from pyramid.interfaces import ISession  # type: ignore[import-untyped]
    from pyramid.path import DottedNameResolver  # type: ignore[import-untyped]
except ModuleNotFoundError as exc:  # the extra is not installed
    missing_extra(exc, "pyramid", "hashsession.compat.pyramid_redis_sessions")

from hashsession.codecs import Codec, FunctionCodec
from hashsession.errors import ConfigurationError as _ConfigurationError
from hashsession.pyramid import (
    CSRFStoragePolicy,
    PyramidSession,
    SessionFactory,
    as_bool,
    as_int,
    blank,
    declare_provides,
    resolved,
    response_started,
)
from hashsession.store import StoreBase, checked_client
from hashsession.topology import SyncClient

__all__ = [
    "ConfigurationError",
    "RedisSession",
    "RedisSessionFactory",
    "includeme",
    "session_factory_from_settings",
]

PREFIX = "redis.sessions."

#: The documented names and the 1.0.1 names they stand for.
_ALIASES = {"custom_connect": "client_callable", "encode": "serialize", "decode": "deserialize"}
_DOTTED = frozenset(
    {"client_callable", "serialize", "deserialize", "id_generator", "connection_pool"}
)
_BOOLS = ("cookie_secure", "cookie_httponly", "cookie_on_exception")
_INTS = ("timeout", "port", "db", "cookie_max_age")
_TEXTS = (
    "secret",
    "cookie_name",
    "cookie_path",
    "cookie_domain",
    "url",
    "host",
    "password",
    "charset",
    "errors",
    "unix_socket_path",
    "prefix",
)
_KNOWN = frozenset((*_BOOLS, *_INTS, *_TEXTS, *_DOTTED, *_ALIASES, "socket_timeout"))

#: hashsession's names for the settings that errors name, in pyramid_redis_sessions' words.
_OUR_NAMES = {
    "ttl": "timeout",
    "secret_keys": "secret",
    "codec": "encode",
    "redis": "url",
    "id_factory": "id_generator",
}


class ConfigurationError(_ConfigurationError, _PyramidConfigurationError):  # type: ignore[misc]
    """A bad ``redis.sessions.*`` setting: hashsession's error and Pyramid's, as before."""


class RedisSession(PyramidSession):
    """A live :class:`~hashsession.pyramid.PyramidSession` with pyramid_redis_sessions' extras.

    ``adjust_timeout_for_session()``, ``session_id``, ``has_key()`` and the
    ``iter*`` methods; ``pop(k)`` gives ``None`` for a missing key, as it did.
    """

    __slots__ = ()

    def adjust_timeout_for_session(self, timeout_seconds: int) -> None:
        """Make ``timeout_seconds`` this session's idle timeout for the rest of its life."""
        self.adjust_timeout(timeout_seconds)

    @property
    def session_id(self) -> str | None:
        """The session id (``None`` until something is stored: sessions are made lazily)."""
        return self.id

    def has_key(self, key: str) -> bool:
        """Whether ``key`` is in the session."""
        return key in self

    def pop(self, key: str, default: Any = None) -> Any:
        """Remove ``key`` atomically; its value, or ``default`` (``None``) if missing."""
        return super().pop(key, default)

    def iterkeys(self) -> Iterator[str]:
        return iter(self)

    def itervalues(self) -> Iterator[Any]:
        return iter(self.values())

    def iteritems(self) -> Iterator[tuple[str, Any]]:
        return iter(self.items())


declare_provides(RedisSession, ISession)


class _Factory(SessionFactory):
    """A :class:`SessionFactory` whose client may come from a per-request callable."""

    session_class = RedisSession

    def __init__(
        self,
        store: StoreBase,
        client: redis.Redis | None,
        connect: Callable[..., Any] | None,
        redis_options: dict[str, Any],
        cookie_on_exception: bool,
    ) -> None:
        self.store = store
        self.cookie_on_exception = cookie_on_exception
        self._client = client
        self._connect = connect
        self._redis_options = redis_options

    def client_for(self, request: Any) -> SyncClient:
        if self._connect is None:
            return super().client_for(request)
        return checked_client(self._connect(request, **self._redis_options))  # type: ignore[no-any-return]


def _resolver(resolve: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``resolve``, reading the seed's ``cPickle.*`` names as ``pickle.*`` (Python 3)."""

    def resolved(value: Any) -> Any:
        if isinstance(value, str):
            value = value.strip()
            if value.startswith("cPickle."):
                value = "pickle." + value[len("cPickle.") :]
        return resolve(value)

    return resolved


def _options(settings: Mapping[str, Any], resolve: Callable[[Any], Any]) -> dict[str, Any]:
    """The ``RedisSessionFactory`` arguments that ``redis.sessions.*`` settings give."""
    options: dict[str, Any] = {}
    for key, value in settings.items():
        if not key.startswith(PREFIX):
            continue
        name = key[len(PREFIX) :]
        if name not in _KNOWN:
            raise ConfigurationError(key, "unknown setting")
        if blank(value):
            continue  # "key =" or "key = None" in an .ini: the default
        try:
            if name in _BOOLS:
                value = as_bool(key, value)
            elif name in _INTS:
                value = as_int(key, value)
        except _ConfigurationError as exc:
            raise ConfigurationError(key, str(exc).partition(": ")[2]) from None
        if name == "socket_timeout":
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise ConfigurationError(key, f"must be a number, not {value!r}") from None
        elif name in _DOTTED or name in _ALIASES:
            try:
                value = resolved(key, resolve, value)
            except _ConfigurationError as exc:
                raise ConfigurationError(key, str(exc).partition(": ")[2]) from exc.__cause__
        options[name] = value
    if "secret" not in options:
        raise ConfigurationError(PREFIX + "secret", "is a required setting")
    return options


def session_factory_from_settings(settings: Mapping[str, Any]) -> SessionFactory:
    """A session factory from the ``redis.sessions.*`` settings (other keys are ignored).

    Text is coerced (``timeout = 1200``, ``cookie_secure = true``), and dotted
    names of callables and of a connection pool are resolved.
    """
    resolve = _resolver(DottedNameResolver().maybe_resolve)
    return RedisSessionFactory(**_options(settings, resolve))


def includeme(config: Any) -> None:
    """``config.include("hashsession.compat.pyramid_redis_sessions")``.

    Sets the session factory from the settings and hashsession's CSRF policy
    (which checks a token without storing one), and subscribes
    :func:`hashsession.pyramid.response_started` (see there).
    """
    options = _options(config.registry.settings, _resolver(config.maybe_dotted))
    config.set_session_factory(RedisSessionFactory(**options))
    config.set_csrf_storage_policy(CSRFStoragePolicy())
    config.add_subscriber(response_started, NewResponse)


def _one_of(name: str, alias: str, old: Any, new: Any) -> Any:
    if old is not None and new is not None and old is not new:
        raise ConfigurationError(PREFIX + alias, f"set together with {PREFIX}{name}; use one")
    return old if old is not None else new


def _codec(serialize: Any, deserialize: Any) -> Codec | str | None:
    if serialize is None and deserialize is None:
        return None  # JSON
    if serialize is None or deserialize is None:
        raise ConfigurationError(
            PREFIX + ("decode" if deserialize is None else "encode"),
            "encode and decode (serialize and deserialize) must be given together",
        )
    if not callable(serialize) or not callable(deserialize):
        raise ConfigurationError(PREFIX + "encode", "encode and decode must be callables")
    if serialize is pickle.dumps and deserialize is pickle.loads:
        return "pickle"  # hashsession's pickle codec: numbers stay countable by Redis
    return FunctionCodec(loads=deserialize, dumps=serialize)


def _charset(charset: str) -> str:
    try:
        name = _codecs.lookup(charset).name
    except (LookupError, TypeError):
        name = ""
    if name != "utf-8":
        raise ConfigurationError(
            PREFIX + "charset", f"must be utf-8: session keys are stored as UTF-8, not {charset!r}"
        )
    return charset


def _client(
    url: str | None,
    connection_pool: Any,
    redis_options: dict[str, Any],
) -> redis.Redis:
    """The shared client, chosen as pyramid_redis_sessions chose it: URL, pool, then options."""
    if url is not None:
        keep = ("socket_timeout", "encoding", "encoding_errors")
        return redis.Redis.from_url(url, **{k: redis_options[k] for k in keep})
    if connection_pool is not None:
        return redis.Redis(connection_pool=connection_pool)
    return redis.Redis(**redis_options)


def RedisSessionFactory(
    secret: str,
    timeout: int = 1200,
    cookie_name: str = "session",
    cookie_max_age: int | None = None,
    cookie_path: str = "/",
    cookie_domain: str | None = None,
    cookie_secure: bool = False,
    cookie_httponly: bool = True,
    cookie_on_exception: bool = True,
    url: str | None = None,
    host: str = "localhost",
    port: int = 6379,
    db: int = 0,
    password: str | None = None,
    socket_timeout: float | None = None,
    connection_pool: redis.ConnectionPool | None = None,
    charset: str = "utf-8",
    errors: str = "strict",
    unix_socket_path: str | None = None,
    client_callable: Callable[..., Any] | None = None,
    serialize: Callable[[Any], str | bytes] | None = None,
    deserialize: Callable[[bytes], Any] | None = None,
    id_generator: Callable[[], str] | None = None,
    *,
    prefix: str | None = None,
    custom_connect: Callable[..., Any] | None = None,
    encode: Callable[[Any], str | bytes] | None = None,
    decode: Callable[[bytes], Any] | None = None,
) -> SessionFactory:
    """A Pyramid session factory taking pyramid_redis_sessions' arguments, on hashsession.

    ``client_callable(request, **redis_options)`` (or ``custom_connect``) is called
    per request and returns the client; ``redis_options`` are redis-py's
    ``host``, ``port``, ``db``, ``password``, ``socket_timeout``,
    ``connection_pool``, ``encoding`` (from ``charset``), ``encoding_errors``
    (from ``errors``) and ``unix_socket_path``. Otherwise one client is made from
    ``url``, else ``connection_pool``, else those options. ``serialize`` and
    ``deserialize`` (or ``encode``/``decode``) encode each session value (not the
    whole session); without them values are JSON. ``prefix`` prefixes the Redis
    keys; ``id_generator`` makes session ids (keys are then ``prefix + id``).
    """
    connect = _one_of("client_callable", "custom_connect", client_callable, custom_connect)
    dumps = _one_of("serialize", "encode", serialize, encode)
    loads = _one_of("deserialize", "decode", deserialize, decode)
    if not isinstance(secret, str) or not secret:
        raise ConfigurationError(PREFIX + "secret", "must be a non-empty string")
    if connect is not None and not callable(connect):
        raise ConfigurationError(PREFIX + "custom_connect", "must be a callable")
    if id_generator is not None and not callable(id_generator):
        raise ConfigurationError(PREFIX + "id_generator", "must be a callable")
    redis_options: dict[str, Any] = {
        "host": host,
        "port": port,
        "db": db,
        "password": password,
        "socket_timeout": socket_timeout,
        "connection_pool": connection_pool,
        "encoding": _charset(charset),
        "encoding_errors": errors,
        "unix_socket_path": unix_socket_path,
    }
    store_settings: dict[str, Any] = {
        "ttl": timeout,
        "secret_keys": [secret],
        "codec": _codec(dumps, loads),
        "cookie": {
            "name": cookie_name,
            "path": cookie_path,
            "domain": cookie_domain or None,
            "secure": cookie_secure,
            "httponly": cookie_httponly,
            "max_age": cookie_max_age,
        },
    }
    if prefix is not None:
        store_settings["prefix"] = prefix
    if id_generator is not None:
        store_settings.update(key_layout="raw", id_factory=id_generator)
    try:
        store = StoreBase(**store_settings)
        client = None if connect is not None else _client(url, connection_pool, redis_options)
        if client is not None:
            checked_client(client)
    except _ConfigurationError as exc:
        setting = PREFIX + _OUR_NAMES.get(exc.setting, exc.setting.replace(".", "_"))
        raise ConfigurationError(setting, str(exc).partition(": ")[2]) from exc
    return _Factory(store, client, connect, redis_options, bool(cookie_on_exception))
