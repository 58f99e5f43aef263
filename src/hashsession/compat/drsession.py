"""DRSession's ``SessionMiddleware``, rebuilt on hashsession: change the import, keep the app.

Sessions DRSession wrote (``<prefix><id>`` hashes of JSON text) stay readable, the
session object keeps the DRSession behaviour apps relied on, and ``safe=True``
stops adopting ids nobody issued. See ``docs/migrating-from-drsession.md``.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Callable, Mapping
from typing import Any

import redis

from hashsession import wsgi
from hashsession.compat._lists import ListSession
from hashsession.cookies import cookie_value_is_safe
from hashsession.errors import ConfigurationError, DecodeError, ValueTypeError
from hashsession.protocol import SessionCore, Step
from hashsession.store import SessionStore
from hashsession.values import increment_of

__all__ = ["Session", "SessionMiddleware"]

#: DRSession's cookie lifetime; also the idle timeout of every session here.
TEN_YEARS = 10 * 365 * 24 * 3600

# Store settings that DRSession's own arguments decide: naming one in
# ``**store_options`` is a mistake, reported with the argument to use instead.
_DECIDED_BY: dict[str, str] = {
    "redis": "redis_server / redis_kwargs / connection_pool",
    "prefix": "prefix",
    "codec": "loads / dumps",
    "cookie": "cookie",
    "id_factory": "gen_session_id",
    "adopt_unknown_ids": "safe",
    "key_layout": "nothing: this layer always uses key_layout='raw'",
}


def _drsession_id() -> str:
    """A fresh id of DRSession's shape: 32 random bytes, urlsafe base64, no padding."""
    return secrets.token_urlsafe(32)


def _checked_ids(factory: Callable[[], Any]) -> Callable[[], str]:
    """``factory``, refusing ids that cannot travel in a cookie or name a key."""

    def new_id() -> str:
        value = factory()
        if not isinstance(value, str) or not 0 < len(value) <= 256:
            raise ConfigurationError(
                "gen_session_id", f"must return a str of 1 to 256 characters, not {value!r}"
            )
        if not cookie_value_is_safe(value):
            raise ConfigurationError(
                "gen_session_id",
                "returned an id with characters a cookie cannot carry "
                '(space, ", comma, semicolon, backslash, control or non-ASCII)',
            )
        return value

    return new_id


class _TextCodec:
    """DRSession's codec contract: ``loads`` gets decoded UTF-8 text, ``dumps`` may return str.

    ``numbers_as_text`` says whether ``dumps`` writes numbers as plain decimal text,
    which Redis' ``HINCRBY``/``HINCRBYFLOAT`` need; when it does not, ``+=`` falls
    back to an atomic read-modify-write (see :meth:`Session.__setitem__`).
    """

    def __init__(
        self, loads: Callable[[str], Any] | None, dumps: Callable[[Any], str | bytes] | None
    ) -> None:
        self._loads: Callable[[str], Any] = json.loads if loads is None else loads
        self._dumps: Callable[[Any], Any] = json.dumps if dumps is None else dumps
        self.numbers_as_text = _writes_decimal(self._dumps)

    def dumps(self, value: Any, /) -> str | bytes:
        out = self._dumps(value)
        if isinstance(out, (str, bytes)):
            return out
        if isinstance(out, (bytearray, memoryview)):
            return bytes(out)
        raise TypeError(f"dumps() returned {type(out).__name__}, not str or bytes")

    def loads(self, data: bytes | str, /) -> Any:
        return self._loads(data if isinstance(data, str) else data.decode("utf-8"))


def _writes_decimal(dumps: Callable[[Any], Any]) -> bool:
    """Whether ``dumps`` stores an int and a float as the decimal text Redis increments."""
    try:
        samples = [(dumps(-12345), "-12345"), (dumps(0.5), "0.5")]
    except Exception:
        return False
    for out, text in samples:
        if isinstance(out, (bytes, bytearray)):
            out = bytes(out).decode("ascii", "replace")
        if out != text:
            return False
    return True


class _Core(SessionCore):
    """The session core plus DRSession's ``destroy()``: delete the key, keep the id."""

    __slots__ = ()

    def plan_destroy(self) -> Step:
        """``DEL`` the whole key. Later writes start afresh: under the same id when
        unknown ids are adopted (as DRSession did), else under a fresh one."""
        self.accessed = self.modified = True
        key = self._key
        if key is None:
            return None, None, None

        def deleted(reply: Any) -> None:
            self._ttl_override = None
            self._lose()

        return ("DEL", key), deleted, None


class Session(ListSession):
    """A live hashsession :class:`~hashsession.Session` that also behaves like DRSession's.

    Differences from the native class, all kept for apps written for DRSession:
    ``has_key()``; ``clear()``/``destroy()`` delete the whole Redis key (the id
    stays usable); ``del session[k]`` and ``pop(k)`` do not raise for a missing
    key; ``get(k, d)`` and ``pop(k, d)`` give ``d`` for a value that cannot be
    decoded; ``keys()``, ``values()`` and ``items()`` return lists.
    """

    __slots__ = ()

    def __init__(self, core: SessionCore, client: redis.Redis) -> None:
        if not isinstance(core, _Core):
            if core.accessed:
                raise TypeError("a compat Session needs a fresh core, not one already used")
            core = _Core(core.config, core.id, had_cookie=core.had_cookie)
        super().__init__(core, client)

    def has_key(self, key: str) -> bool:
        """Whether ``key`` is in the session (DRSession's name for ``key in session``)."""
        return key in self

    def get(self, key: str, default: Any = None) -> Any:
        """The value under ``key``; ``default`` if missing or if it cannot be decoded."""
        try:
            return super().get(key, default)
        except DecodeError:
            return default

    def pop(self, key: str, default: Any = None) -> Any:
        """Remove ``key`` atomically; its value, or ``default`` if missing or undecodable."""
        try:
            return super().pop(key, default)
        except DecodeError:
            return default

    def __delitem__(self, key: str) -> None:
        self.delete(key)

    def __setitem__(self, key: str, value: Any) -> None:
        core = self.core
        if getattr(core.config.codec, "numbers_as_text", True):
            super().__setitem__(key, value)  # ``+=`` is one HINCRBY/HINCRBYFLOAT
            return
        delta = increment_of(value, core, core.field(key))
        if delta is None:
            super().__setitem__(key, value)
            return

        def add(current: Any) -> Any:
            if isinstance(current, bool) or not isinstance(current, (int, float)):
                raise ValueTypeError(key, "the stored value is not a number to increment")
            return current + delta

        self.apply(key, add, 0)  # the codec's numbers are not Redis numbers: compare-and-set

    def destroy(self) -> None:
        """Delete the whole session key now, as DRSession did; writes after it start afresh."""
        core = self.core
        assert isinstance(core, _Core)
        self._run(core.plan_destroy, None)

    def clear(self) -> None:
        """The same as :meth:`destroy` (DRSession deleted the whole key)."""
        self.destroy()


class _Store(SessionStore):
    """A :class:`~hashsession.SessionStore` whose sessions are compat :class:`Session` objects."""

    core_class = _Core
    session_class = Session


def _client(
    redis_server: Any,
    redis_kwargs: Mapping[str, Any] | None,
    connection_pool: redis.ConnectionPool | None,
    connection_pool_kwargs: Mapping[str, Any] | None,
) -> Any:
    """The Redis client, chosen as DRSession chose it (without changing ``redis_kwargs``)."""
    if redis_server is not None:
        return redis_server
    if redis_kwargs is not None and not isinstance(redis_kwargs, Mapping):
        raise ConfigurationError("redis_kwargs", "must be a dict of redis.Redis() arguments")
    kwargs = dict(redis_kwargs or {})
    if connection_pool is not None:
        kwargs["connection_pool"] = connection_pool
    elif connection_pool_kwargs:
        # An empty mapping (DRSession's default) or None: redis.Redis(**redis_kwargs) makes
        # its own pool from redis_kwargs, so host/port there take effect.
        kwargs["connection_pool"] = redis.ConnectionPool(**connection_pool_kwargs)
    return redis.Redis(**kwargs)


class SessionMiddleware(wsgi.SessionMiddleware):
    """WSGI middleware with DRSession 1.2.0's arguments and defaults, on hashsession.

    ``environ[env]`` is the request's live :class:`Session`. Keys are
    ``prefix + id`` hashes of JSON text, so sessions DRSession wrote keep
    working. Everything is live: each change is one Redis command, sent at once.

    Beyond DRSession: ``safe=True`` never adopts an id the server did not
    issue (a fresh one is given instead), and ``**store_options`` passes
    further settings (``ttl``, ``max_value_size``, ...) to
    :class:`~hashsession.SessionStore`.
    """

    def __init__(
        self,
        app: wsgi.WSGIApp,
        prefix: str = "drsession:",
        cookie: str = "drsession",
        env: str = "drsession",
        redis_server: Any = None,
        redis_kwargs: Mapping[str, Any] | None = None,
        connection_pool: redis.ConnectionPool | None = None,
        connection_pool_kwargs: Mapping[str, Any] | None = None,
        loads: Callable[[str], Any] | None = None,
        dumps: Callable[[Any], str | bytes] | None = None,
        gen_session_id: Callable[[], str] | None = None,
        *,
        safe: bool = False,
        **store_options: Any,
    ) -> None:
        for name, argument in _DECIDED_BY.items():
            if name in store_options:
                raise ConfigurationError(name, f"set here by {argument}")
        for name, fn in (("loads", loads), ("dumps", dumps), ("gen_session_id", gen_session_id)):
            if fn is not None and not callable(fn):
                raise ConfigurationError(name, "must be a function or None")
        if not isinstance(env, str):
            raise ConfigurationError("env", f"must be a str, not {env!r}")
        client = _client(redis_server, redis_kwargs, connection_pool, connection_pool_kwargs)
        factory = _drsession_id if gen_session_id is None else _checked_ids(gen_session_id)
        options: dict[str, Any] = {"ttl": TEN_YEARS, **store_options}
        store = _Store(
            redis=client,
            prefix=prefix,
            codec=_TextCodec(loads, dumps),
            # DRSession's cookie never carried Secure (the store warns about that).
            cookie={
                "name": cookie,
                "path": "/",
                "httponly": True,
                "max_age": TEN_YEARS,
                "secure": False,
            },
            key_layout="raw",
            adopt_unknown_ids=not safe,
            id_factory=factory,
            **options,
        )
        super().__init__(app, store=store, environ_key=env)
        # DRSession's attribute names, for code that looked at them.
        self.prefix = prefix
        self.cookie = cookie
        self.env = env
        self.loads = loads
        self.dumps = dumps
        self.gen_session_id = factory
        self.redis_server = client
        self.safe = bool(safe)
