"""Pyramid: ``config.include("hashsession.pyramid")`` makes ``request.session`` a live session.

``request.session`` is a :class:`PyramidSession`: Pyramid's ``ISession`` over one
Redis hash, every change written the moment it is made. Flash queues and the CSRF
token live in reserved fields of the same hash (so a flash is one atomic append,
and they expire with the session). Pyramid builds ``request.session`` on first
use, and the session itself sends nothing until it is used, so a view that never
touches it costs no Redis command and sends no ``Set-Cookie``.

``includeme`` reads the ``hashsession.*`` settings (see :func:`store_from_settings`)
and also installs :class:`CSRFStoragePolicy`; or build the factory yourself::

    config.set_session_factory(SessionFactory(SessionStore(redis=url, secret_keys=[key])))

``Set-Cookie`` and ``Vary: Cookie`` are added by a response callback. Pyramid
runs those for normal responses and for responses made by an exception view (then
``cookie_on_exception=False`` withholds a new cookie), but not when an exception
propagates out of the app unhandled: there is no response then, and a session
created during such a request stays unknown to the browser until it expires.

After the callback the headers are final, so in a streamed body (``app_iter``) a
step that needs a new cookie raises :class:`~hashsession.HeadersSentError` without
writing anything: the first write of a session not stored yet, ``regenerate()``,
``login()``. Writes to a session the request's cookie already names keep working.
A session first opened in the body is caught too when :func:`response_started` is
subscribed to ``NewResponse`` (``includeme`` does it).
"""

from __future__ import annotations

import functools
import hmac
import secrets
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from hashsession._extras import missing_extra
from hashsession.cookies import environ_is_plain_local

try:
    from pyramid.events import NewResponse  # type: ignore[import-untyped]
    from pyramid.interfaces import ICSRFStoragePolicy, ISession  # type: ignore[import-untyped]
    from pyramid.path import DottedNameResolver  # type: ignore[import-untyped]
    from zope.interface.declarations import (  # type: ignore[import-untyped]
        Implements,
        objectSpecificationDescriptor,
    )
except ModuleNotFoundError as exc:  # the extra is not installed
    missing_extra(exc, "pyramid", "hashsession.pyramid")

from hashsession.cookies import CookiePolicy
from hashsession.errors import ConfigurationError, InvalidKeyError
from hashsession.protocol import MISSING, SessionCore, State, load_queue
from hashsession.session import Session
from hashsession.store import SessionStore, StoreBase

if TYPE_CHECKING:
    from hashsession.topology import SyncClient

__all__ = [
    "CSRFStoragePolicy",
    "PyramidSession",
    "SessionFactory",
    "includeme",
    "response_started",
    "session_factory_from_settings",
    "store_from_settings",
]

#: The settings prefix ``includeme`` reads.
SETTINGS_PREFIX = "hashsession."

#: The ``environ`` key :func:`response_started` sets once the response headers are final.
HEADERS_SENT = "hashsession.headers_sent"
FLASH = "flash:"  # + queue name: a reserved field holding that flash queue
CSRF = "csrf"  # the reserved field holding the CSRF token
_CREATED = "c"  # the core's reserved creation time (ms)


def _new_token() -> str:
    return secrets.token_hex(20)


class PyramidSession(Session):
    """A live :class:`~hashsession.Session` that is also Pyramid's ``ISession``.

    ``changed()`` writes back list and dict values read in this request with
    ``session[k]``, ``get()`` or ``setdefault()`` and mutated in place since, as
    ISession asks; each only if the stored value is still the one read, so a newer
    write (from this request or another) wins. Everything else is written at once.
    """

    __slots__ = ("_created", "_reads")

    def __init__(self, core: SessionCore, client: SyncClient) -> None:
        super().__init__(core, client)
        self._created: float | None = None
        self._reads: list[tuple[str, Any, bytes]] = []

    # ------------------------------------------------------- ISession facts

    @property
    def created(self) -> float:
        """When the session was created, in seconds since the epoch.

        For a stored session, one ``HGET`` of its reserved creation time (on first
        use); for one not stored yet, the time of this first look.
        """
        if self._created is None:
            ms = self.meta_get(_CREATED) if self.core.state is not State.NEW else None
            self._created = ms / 1000 if isinstance(ms, (int, float)) else time.time()
        return self._created

    @property
    def new(self) -> bool:
        """Whether the session did not exist when this request began.

        If the request's cookie has not been checked against Redis yet, this
        checks it (one round trip, which also reads :attr:`created`).
        """
        if self.core.state is State.PENDING:
            _ = self.created
        return self.core.is_new

    def changed(self) -> None:
        """Write back in-place changes to values read in this request (see the class)."""
        reads, self._reads = self._reads, []
        core = self._core
        for key, value, seen in reads:
            now = core.encode(key, value)
            if now == seen:
                self._reads.append((key, value, seen))
            elif self._run(core.plan_cas, key, [(key, seen)], [(key, now)]):
                self._reads.append((key, value, now))

    def _watch(self, key: str, value: Any) -> Any:
        if type(value) is list or type(value) is dict:
            self._reads.append((key, value, self._core.encode(key, value)))
        return value

    def __getitem__(self, key: str) -> Any:
        return self._watch(key, super().__getitem__(key))

    def get(self, key: str, default: Any = None) -> Any:
        """The value under ``key``, or ``default``; one ``HGET``."""
        value = super().get(key, MISSING)
        return default if value is MISSING else self._watch(key, value)

    def setdefault(self, key: str, default: Any = None) -> Any:
        """The value under ``key``, storing ``default`` first if missing; one atomic step."""
        return self._watch(key, super().setdefault(key, default))

    def popitem(self) -> tuple[str, Any]:
        """Remove and return some ``(key, value)``; each removal is one atomic ``pop``."""
        for key in self:
            value = self.pop(key, MISSING)
            if value is not MISSING:
                return key, value
        raise KeyError("popitem(): the session is empty")

    def invalidate(self) -> None:
        """Delete the session now; the response expires its cookie; later writes start anew."""
        super().invalidate()
        self._created = None
        self._reads = []

    # --------------------------------------------------------------- flash

    def flash(self, msg: Any, queue: str = "", allow_duplicate: bool = True) -> None:
        """Append ``msg`` to flash ``queue`` in one atomic step.

        With ``allow_duplicate=False`` a message already queued is not added again.
        """
        self.meta_push(_queue(queue), msg, unique=not allow_duplicate)

    def peek_flash(self, queue: str = "") -> list[Any]:
        """The messages in flash ``queue``, left in place; one ``HGET``."""
        name = _queue(queue)
        field = self._core.meta_field(name)
        return load_queue(self._run(self._core.plan_get, None, field), name)

    def pop_flash(self, queue: str = "") -> list[Any]:
        """Remove flash ``queue`` and return its messages, atomically."""
        name = _queue(queue)
        return load_queue(self.meta_pop(name), name)

    # ---------------------------------------------------------------- CSRF

    def new_csrf_token(self) -> str:
        """Store a fresh CSRF token and return it."""
        token = _new_token()
        self.meta_set(CSRF, token)
        return token

    def get_csrf_token(self) -> str:
        """The session's CSRF token, made and stored first if it has none; one atomic step."""
        return str(self.meta_setdefault(CSRF, _new_token()))

    def peek_csrf_token(self) -> str | None:
        """The session's CSRF token, or ``None``; never stores anything."""
        token = self.meta_get(CSRF)
        return token if isinstance(token, str) else None


def declare_provides(cls: type, *interfaces: Any) -> None:
    """Declare that instances of ``cls`` provide ``interfaces``, changing nothing but ``cls``.

    zope's ``classImplements`` would also store a declaration on every base class,
    putting zope attributes on hashsession's core classes (and ``collections.abc``)
    in every process that imports this module.
    """
    spec = Implements.named(f"{cls.__module__}.{cls.__qualname__}", *interfaces)
    spec.inherit = None  # nothing to inherit: the bases declare no interfaces
    type.__setattr__(cls, "__implemented__", spec)
    type.__setattr__(cls, "__providedBy__", objectSpecificationDescriptor)


declare_provides(PyramidSession, ISession)


def _queue(queue: str) -> str:
    if not isinstance(queue, str):
        raise InvalidKeyError(
            queue,
            f"a flash queue is named by a str, not {type(queue).__name__}",
            what="flash queue",
        )
    return FLASH + queue


class CSRFStoragePolicy:
    """Pyramid's CSRF storage on the session, except that checking a token stores nothing.

    Pyramid's default policy checks a POST's token against ``get_csrf_token()``,
    which makes and stores a token (a new Redis key) for every token-less POST;
    this one compares with the stored token, if any, in constant time.
    """

    def new_csrf_token(self, request: Any) -> str:
        """Store a fresh token in the session and return it."""
        return str(request.session.new_csrf_token())

    def get_csrf_token(self, request: Any) -> str:
        """The session's token, made and stored first if it has none."""
        return str(request.session.get_csrf_token())

    def check_csrf_token(self, request: Any, supplied_token: Any) -> bool:
        """Whether ``supplied_token`` is the session's token; stores nothing."""
        session = request.session
        if isinstance(session, PyramidSession):
            expected = session.peek_csrf_token()
        else:
            expected = session.get_csrf_token()
        if not isinstance(expected, str) or not isinstance(supplied_token, str):
            return False
        supplied = supplied_token.encode("utf-8", "backslashreplace")
        return hmac.compare_digest(expected.encode("utf-8"), supplied)


declare_provides(CSRFStoragePolicy, ICSRFStoragePolicy)


class SessionFactory:
    """Pyramid's session factory over a :class:`~hashsession.SessionStore`.

    ``factory(request)`` returns the request's lazy :class:`PyramidSession` and
    registers a response callback that adds ``Set-Cookie``/``Vary`` as needed.
    With ``cookie_on_exception=False``, a response rendered by an exception view
    carries no new session cookie (an expiring one still goes out: the session is
    gone from Redis either way).
    """

    #: The class of the sessions handed out; compat layers subclass it.
    session_class: type[PyramidSession] = PyramidSession

    def __init__(self, store: SessionStore, *, cookie_on_exception: bool = True) -> None:
        if not isinstance(store, SessionStore):
            raise ConfigurationError("store", f"must be a SessionStore, not {store!r}")
        self.store: StoreBase = store
        self.cookie_on_exception = bool(cookie_on_exception)
        self._client: SyncClient | None = store.client

    def client_for(self, request: Any) -> SyncClient:
        """The Redis client this request's session talks through."""
        assert self._client is not None
        return self._client

    def close(self) -> None:
        """Close the Redis connections of the client this factory made or was given."""
        if self._client is not None:
            self._client.close()

    def __call__(self, request: Any) -> PyramidSession:
        environ = request.environ
        core = self.store.core_for(
            environ.get("HTTP_COOKIE"), plain_local=environ_is_plain_local(environ)
        )
        session = self.session_class(core, self.client_for(request))
        if request.environ.get(HEADERS_SENT):  # opened in a streamed body: too late
            core.headers_sent = True
        else:
            request.add_response_callback(functools.partial(self._send_cookie, session))
        return session

    def _send_cookie(self, session: PyramidSession, request: Any, response: Any) -> None:
        # A request made outside the router (pyramid.testing.DummyRequest, a script's
        # request) has no ``exception`` attribute; Pyramid's own factories allow for it.
        withhold = not self.cookie_on_exception and getattr(request, "exception", None) is not None
        for name, value in session.core.response_headers():
            if name == "Vary":
                vary = tuple(response.vary or ())
                if "Cookie" not in vary:
                    response.vary = (*vary, "Cookie")
            elif not withhold or value == self.store.cookie.delete_cookie(
                plain_local=session.core.plain_local
            ):
                response.headerlist.append((name, value))
        session.core.headers_sent = True  # the headers are final; no cookie can follow


def response_started(event: Any) -> None:
    """A ``NewResponse`` subscriber: sessions opened from now on know the headers are final.

    Pyramid runs response callbacks only for those registered before the response was
    made, so a session first opened in a streamed body (``app_iter``) would never send
    its cookie; with this subscriber its first write raises
    :class:`~hashsession.HeadersSentError` instead of leaving a key no cookie names.
    ``includeme`` subscribes it; add it yourself (``config.add_subscriber(
    response_started, NewResponse)``) when you set the session factory by hand.
    """
    event.request.environ[HEADERS_SENT] = True


# ------------------------------------------------------------------ settings

_TRUE = frozenset({"true", "t", "yes", "y", "on", "1"})
_FALSE = frozenset({"false", "f", "no", "n", "off", "0"})


def as_bool(setting: str, value: Any) -> bool:
    """A bool from a bool or its text (``true``/``false``, ``yes``/``no``, ``on``/``off``...)."""
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise ConfigurationError(setting, f"must be true or false, not {value!r}")


def as_int(setting: str, value: Any) -> int:
    """An int from an int or its decimal text."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str):
        try:
            return int(value.strip())
        except ValueError:
            pass
    raise ConfigurationError(setting, f"must be a whole number, not {value!r}")


def as_seconds(setting: str, value: Any) -> float:
    """Seconds from a number or its decimal text (``2.5``)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value.strip())
        except ValueError:
            pass
    raise ConfigurationError(setting, f"must be a number of seconds, not {value!r}")


def blank(value: Any) -> bool:
    """Whether a setting is unset: ``None``, empty text, or the text ``None``."""
    return value is None or (isinstance(value, str) and value.strip() in ("", "None"))


def resolved(setting: str, resolve: Callable[[Any], Any], value: Any) -> Any:
    """``resolve(value)`` (a dotted name to the object), failing with the setting named."""
    try:
        return resolve(value)
    except (ImportError, AttributeError, ValueError) as exc:
        raise ConfigurationError(setting, f"cannot import {value!r}: {exc}") from exc


_STORE_INTS = ("ttl", "absolute_ttl", "max_key_length", "max_value_size", "max_keys")
_STORE_BOOLS = ("adopt_unknown_ids", "refresh_cookie", "legacy_user_index")
_COOKIE_INTS = ("max_age", "max_length")
_COOKIE_BOOLS = ("secure", "httponly", "host_prefix", "partitioned")
_COOKIE_TEXTS = ("name", "path", "domain", "samesite")
_OTHER = (
    "redis",
    "secret",
    "secret_keys",
    "user_key",
    "codec",
    "id_factory",
    "prefix",
    "key_layout",
)
_KNOWN = frozenset(
    (*_STORE_INTS, *_STORE_BOOLS, *_OTHER, "edit_retries", "edit_timeout", "cookie_on_exception")
) | frozenset(f"cookie_{name}" for name in (*_COOKIE_INTS, *_COOKIE_BOOLS, *_COOKIE_TEXTS))


def store_from_settings(
    settings: Mapping[str, Any],
    *,
    prefix: str = SETTINGS_PREFIX,
    resolve: Callable[[Any], Any] | None = None,
) -> SessionStore:
    """A :class:`~hashsession.SessionStore` from ``prefix``-ed settings (strings from .ini).

    ``<prefix>redis`` (URL), ``secret`` (one key) or ``secret_keys`` (several,
    whitespace-separated, newest first), ``user_key``, ``legacy_user_index``,
    ``prefix``, ``ttl``, ``absolute_ttl``,
    ``codec`` (``json``, ``pickle`` or a dotted name), ``max_key_length``,
    ``max_value_size``, ``max_keys``, ``edit_retries``, ``edit_timeout`` (seconds),
    ``key_layout``,
    ``adopt_unknown_ids``, ``refresh_cookie``, ``id_factory`` (dotted name) and
    ``cookie_<field>`` for each :class:`~hashsession.CookiePolicy` field. Text is
    coerced; an empty value, or ``None``, means the default (except
    ``cookie_samesite = None``, which sends ``SameSite=None``, and
    ``absolute_ttl = off``, which turns the 30-day absolute lifetime off); an unknown name or
    bad value raises :class:`~hashsession.ConfigurationError` naming the setting.
    """
    mine = {k[len(prefix) :]: v for k, v in settings.items() if k.startswith(prefix)}
    for name in mine:
        if name not in _KNOWN:
            raise ConfigurationError(prefix + name, "unknown setting")
    resolver = resolve or DottedNameResolver().maybe_resolve
    out: dict[str, Any] = {}
    cookie: dict[str, Any] = {}
    for name, value in mine.items():
        setting = prefix + name
        if name == "cookie_samesite" and isinstance(value, str) and value.strip() == "None":
            cookie["samesite"] = "None"  # SameSite=None, not "unset"
            continue
        if name == "absolute_ttl" and isinstance(value, str) and value.strip().lower() == "off":
            out[name] = None  # no absolute lifetime (the default is 30 days)
            continue
        if blank(value) or name == "cookie_on_exception":
            continue
        field = name[len("cookie_") :]
        if name in _STORE_INTS or name == "edit_retries":
            out[name] = as_int(setting, value)
        elif name == "edit_timeout":
            out[name] = as_seconds(setting, value)
        elif name in _STORE_BOOLS:
            out[name] = as_bool(setting, value)
        elif name == "secret":
            out.setdefault("secret_keys", []).insert(0, str(value))
        elif name == "secret_keys":
            keys = value.split() if isinstance(value, str) else list(value)
            out.setdefault("secret_keys", []).extend(keys)
        elif name == "codec":
            codec = value if value in ("json", "pickle") else resolved(setting, resolver, value)
            out[name] = codec() if isinstance(codec, type) else codec
        elif name == "id_factory":
            out[name] = resolved(setting, resolver, value)
        elif name in ("redis", "prefix", "key_layout", "user_key"):
            out[name] = value
        elif field in _COOKIE_INTS:
            cookie[field] = as_int(setting, value)
        elif field in _COOKIE_BOOLS:
            cookie[field] = as_bool(setting, value)
        else:
            cookie[field] = value
    try:
        if cookie:
            out["cookie"] = CookiePolicy(**cookie)
        return SessionStore(**out)
    except ConfigurationError as exc:  # name the setting as the user wrote it
        name = exc.setting.replace(".", "_")
        if name == "secret_keys" and prefix + name not in settings:
            name = "secret"
        setting = prefix + name
        raise ConfigurationError(setting, str(exc).partition(": ")[2]) from exc


def session_factory_from_settings(
    settings: Mapping[str, Any],
    *,
    prefix: str = SETTINGS_PREFIX,
    resolve: Callable[[Any], Any] | None = None,
) -> SessionFactory:
    """A :class:`SessionFactory` from settings, as :func:`store_from_settings` reads them.

    ``<prefix>cookie_on_exception`` (default true) is the factory's own setting.
    """
    store = store_from_settings(settings, prefix=prefix, resolve=resolve)
    setting = prefix + "cookie_on_exception"
    value = settings.get(setting)
    on_exception = True if blank(value) else as_bool(setting, value)
    return SessionFactory(store, cookie_on_exception=on_exception)


def includeme(config: Any) -> None:
    """``config.include("hashsession.pyramid")``: the session factory and CSRF policy.

    Dotted names in the settings must be absolute (``myapp.codecs.Fernet``).
    """
    factory = session_factory_from_settings(config.registry.settings, resolve=config.maybe_dotted)
    config.set_session_factory(factory)
    config.set_csrf_storage_policy(CSRFStoragePolicy())
    config.add_subscriber(response_started, NewResponse)
