"""Django session engine: ``SESSION_ENGINE = "hashsession.django"``.

Django's ``SessionMiddleware`` builds ``SessionStore(cookie_value)`` per request and,
at the end, calls ``save()`` and writes the cookie itself. Here every change is
written to Redis when it is made, so ``save()`` only makes sure the session exists;
two concurrent requests never undo each other's changes, and a request racing a
logout starts a new, empty session instead of bringing the old one back.

The cookie carries the hashsession cookie value (the id, HMAC-signed with
``SECRET_KEY`` by default), so a forged or malformed key is refused without a Redis
command. Settings come from ``settings.HASHSESSION`` (see :func:`get_store`); the
cookie itself from Django's own ``SESSION_COOKIE_*`` settings.

:class:`SessionMiddleware` is Django's, plus one thing: once it has written the
cookie, the session knows the headers are final, so in a ``StreamingHttpResponse``
body a step that needs a new cookie (the first write of a session not stored yet,
``cycle_key()``/``login()``, ``create()``, ``set_expiry()``) raises
:class:`~hashsession.HeadersSentError` without writing anything. Django's own
middleware cannot tell the engine, so with it such a write leaves a Redis key no
cookie names.
"""

from __future__ import annotations

import functools
import math
import threading
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

from hashsession._extras import missing_extra

try:
    from asgiref.sync import sync_to_async
    from django.conf import settings  # type: ignore[import-untyped]
    from django.contrib.sessions.backends.base import (  # type: ignore[import-untyped]
        CreateError,
        SessionBase,
    )
    from django.contrib.sessions.middleware import (  # type: ignore[import-untyped]
        SessionMiddleware as DjangoSessionMiddleware,
    )
    from django.core.signals import setting_changed  # type: ignore[import-untyped]
    from django.utils import timezone  # type: ignore[import-untyped]
    from django.utils.module_loading import import_string  # type: ignore[import-untyped]
except ModuleNotFoundError as exc:  # the extra is not installed
    missing_extra(exc, "django", "hashsession.django")
from redis.exceptions import RedisError

from hashsession.errors import BackendError, ConfigurationError, DecodeError
from hashsession.protocol import MISSING, State
from hashsession.session import Session
from hashsession.store import SessionStore as HashStore
from hashsession.transport import send

__all__ = ["SessionMiddleware", "SessionStore", "get_store"]

#: Reserved field holding Django's custom expiry: seconds (0: browser session) or an
#: ISO 8601 deadline. Absent or null: the default expiry.
EXPIRY_META = "django.expiry"

_UNKNOWN: Any = object()
_WATCHED = frozenset({"HASHSESSION", "SECRET_KEY", "SECRET_KEY_FALLBACKS", "SESSION_COOKIE_AGE"})
_lock = threading.Lock()
_current: tuple[HashStore, bool] | None = None  # the store, and whether we made (and close) it


def _build_store() -> tuple[HashStore, bool]:
    options = dict(getattr(settings, "HASHSESSION", None) or {})
    if "store" in options:
        store = options.pop("store")
        if options:
            raise ConfigurationError(
                "HASHSESSION", f"'store' replaces every other setting, not {sorted(options)}"
            )
        if not isinstance(store, HashStore):
            raise ConfigurationError("HASHSESSION.store", f"must be a SessionStore, not {store!r}")
        return store, False
    if "cookie" in options:
        raise ConfigurationError(
            "HASHSESSION.cookie", "Django writes the cookie: use the SESSION_COOKIE_* settings"
        )
    fallbacks = list(getattr(settings, "SECRET_KEY_FALLBACKS", ()))
    options.setdefault("secret_keys", [settings.SECRET_KEY, *fallbacks])
    options.setdefault("ttl", settings.SESSION_COOKIE_AGE)
    return HashStore(**options), True


def get_store() -> HashStore:
    """The process's hashsession store, built from ``settings.HASHSESSION`` on first use.

    Keys are :class:`hashsession.SessionStore` settings (``redis``, ``prefix``, ``ttl``,
    ``secret_keys``, ``codec``, ...); ``secret_keys`` defaults to ``SECRET_KEY`` then
    ``SECRET_KEY_FALLBACKS`` and ``ttl`` to ``SESSION_COOKIE_AGE``. ``{"store": store}``
    uses a ready store instead. Changing those settings (``override_settings``) drops it.
    """
    global _current
    current = _current
    if current is None:
        with _lock:
            if _current is None:
                _current = _build_store()
            current = _current
    return current[0]


def _on_setting_changed(*, setting: str, **kwargs: Any) -> None:
    global _current
    if setting not in _WATCHED:
        return
    with _lock:
        old, _current = _current, None
    if old is not None and old[1]:
        old[0].close()


setting_changed.connect(_on_setting_changed, dispatch_uid="hashsession.django")


def _checked_expiry(value: Any) -> int | str | None:
    """A stored expiry as :meth:`SessionStore.set_expiry` writes it; else :class:`DecodeError`."""
    if value is None or type(value) is int:
        return value
    if isinstance(value, str):
        try:
            datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            return value
    raise DecodeError(
        EXPIRY_META,
        f"stored expiry {value!r:.40} is neither seconds nor an ISO 8601 date",
        what="session metadata",
    )


def _as_datetime(value: str | datetime) -> datetime:
    return datetime.fromisoformat(value) if isinstance(value, str) else value


def _seconds_between(start: datetime, end: datetime) -> float:
    """``end - start`` in seconds, even if only one of them carries a time zone."""
    if timezone.is_aware(start) != timezone.is_aware(end):
        end = timezone.make_aware(end) if timezone.is_aware(start) else timezone.make_naive(end)
    return (end - start).total_seconds()


def _in_thread(name: str, twin_name: str | None = None) -> Callable[..., Awaitable[Any]]:
    """An ``a``-twin that runs the sync method in a worker thread (Redis I/O blocks)."""

    async def twin(self: SessionStore, *args: Any, **kwargs: Any) -> Any:
        return await sync_to_async(getattr(self, name))(*args, **kwargs)

    twin.__name__ = twin.__qualname__ = twin_name or "a" + name
    twin.__doc__ = f"Async twin of ``{name}()``, run in a worker thread."
    return twin


class SessionStore(SessionBase):  # type: ignore[misc]
    """``request.session`` for Django: Django's session API over a live hashsession session.

    ``request.session["cart"] = [1]`` is one ``HSET`` at once; ``cycle_key()`` (login) moves
    the data to a new id; ``flush()`` (logout) deletes it. :attr:`live` gives the
    hashsession :class:`~hashsession.Session` for ``incr``, ``edit`` and the rest.
    """

    def __init__(self, session_key: str | None = None) -> None:
        # SessionBase.__init__ is not called: its key and cache attributes do not apply.
        self._store = get_store()
        self._live: Session = self._store.open_id(session_key or None)
        self._expiry: Any = _UNKNOWN
        self._headers_sent = False
        #: A key assigned to ``_session_key`` that names no session, and the session then
        #: opened: ``session_key`` reports the key until that session is used.
        self._claimed: tuple[str, Session] | None = None

    # ------------------------------------------------------------ the session

    @property
    def live(self) -> Session:
        """The hashsession session behind this one (it changes after ``create()``)."""
        return self._live

    @property
    def session_key(self) -> str | None:
        """The cookie value naming the session, or ``None`` while nothing is stored."""
        session_id = self._live.id
        if session_id is not None:
            return self._store.config.cookie_value(session_id)
        claimed = self._claimed
        if claimed is None or claimed[1] is not self._live:
            return None
        core = claimed[1].core
        if core.accessed or core.modified:  # used, so found to name nothing: as Django's load()
            self._claimed = None
            return None
        return claimed[0]

    @property
    def _session_key(self) -> str | None:
        """As :attr:`session_key`; assigning it opens the session that key names.

        Django's engines, its test suite and some third-party packages assign it, and
        it is validated as Django validates it: a key shorter than 8 characters (or
        empty, or ``None``) gives a new, empty session. A longer key is then checked as
        the constructor checks a cookie; if hashsession refuses it (malformed, forged,
        badly signed), it never reaches Redis and the session is a new, empty one, but
        ``session_key`` reports it back until the session is first used, as Django's
        engines report a key until they find, on loading, that it names nothing.
        """
        return self.session_key

    @_session_key.setter
    def _session_key(self, value: str | None) -> None:
        accepted = bool(SessionBase._validate_session_key(self, value))  # Django's rule
        live = self._live = self._store.open_id(value if accepted else None)
        self._claimed = (value, live) if accepted and value and live.id is None else None
        self._expiry = _UNKNOWN
        if self._headers_sent:
            live.core.headers_sent = True

    @property
    def _session(self) -> Session:
        self._live.core.accessed = True
        return self._live

    async def _aget_session(self, no_load: bool = False) -> Session:
        return self._session

    @property
    def accessed(self) -> bool:
        """Whether this request read or wrote the session (Django then varies on Cookie)."""
        return self._live.core.accessed

    @accessed.setter
    def accessed(self, value: bool) -> None:
        self._live.core.accessed = value

    @property
    def modified(self) -> bool:
        """Whether this request changed the session (Django then refreshes the cookie).

        Also true for a session whose cookie an older key signed, once the session is
        known to live: Django then sends the cookie again, signed with the newest key.
        """
        core = self._live.core
        return core.modified or core.resign_due

    @modified.setter
    def modified(self, value: bool) -> None:
        self._live.core.modified = value

    @property
    def serializer(self) -> Any:
        """``SESSION_SERIALIZER``, for Django's ``encode``/``decode`` (values use the codec)."""
        return import_string(settings.SESSION_SERIALIZER)

    def headers_sent(self) -> None:
        """The response's headers (and its cookie) are final: see :class:`SessionMiddleware`.

        From now on a step that needs a new cookie raises :class:`~hashsession.HeadersSentError`.
        """
        self._headers_sent = True
        self._live.core.headers_sent = True

    def _validate_session_key(self, key: str | None) -> bool:
        """Whether ``key`` is a well-formed (and, with keys, correctly signed) cookie value."""
        if not key:
            return False
        return self._store.config.id_from_cookie(key) is not None

    def is_empty(self) -> bool:
        """True when nothing is stored for this session (Django then drops the cookie)."""
        return self._live.id is None

    # -------------------------------------------------------------- mapping

    def __contains__(self, key: str) -> bool:
        return key in self._live

    def __getitem__(self, key: str) -> Any:
        return self._live[key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._live[key] = value

    def __delitem__(self, key: str) -> None:
        del self._live[key]

    def get(self, key: str, default: Any = None) -> Any:
        """The value under ``key``, or ``default``; one ``HGET``."""
        return self._live.get(key, default)

    def pop(self, key: str, default: Any = MISSING) -> Any:
        """Remove ``key`` and return its value, atomically."""
        return self._live.pop(key, default)

    def setdefault(self, key: str, value: Any) -> Any:
        """The value under ``key``, storing ``value`` first if missing; one atomic step."""
        return self._live.setdefault(key, value)

    def update(self, dict_: Any) -> None:
        """Store many keys in one ``HSET``."""
        self._live.update(dict_)

    def has_key(self, key: str) -> bool:
        return key in self._live

    def keys(self) -> Any:
        return self._live.to_dict().keys()

    def values(self) -> Any:
        return self._live.to_dict().values()

    def items(self) -> Any:
        return self._live.to_dict().items()

    def clear(self) -> None:
        """End the session (one ``DEL``): it is empty, so Django's middleware drops the
        cookie, as it does for any emptied session; a later write starts a new one."""
        self._live.clear()
        self._expiry = None

    # ---------------------------------------------------------------- expiry

    def _stored_expiry(self) -> Any:
        if self._expiry is _UNKNOWN:
            live = self._live
            # A session made in this request has the default expiry unless set_expiry ran.
            stored = None if live.id is None or live.new else live.meta_get(EXPIRY_META)
            self._expiry = _checked_expiry(stored)
        return self._expiry

    def get_session_cookie_age(self) -> int:
        """The default lifetime: the store's idle timeout (``SESSION_COOKIE_AGE`` by default)."""
        return self._store.config.idle_ms // 1000

    def get_expiry_age(self, **kwargs: Any) -> int:
        """Seconds until the session expires (``modification``/``expiry`` as in Django)."""
        expiry = kwargs["expiry"] if "expiry" in kwargs else self._stored_expiry()
        if not expiry:
            return self.get_session_cookie_age()
        if isinstance(expiry, int):
            return expiry
        now = kwargs.get("modification") or timezone.now()
        return math.floor(_seconds_between(now, _as_datetime(expiry)))

    def get_expiry_date(self, **kwargs: Any) -> datetime:
        """When the session expires (``modification``/``expiry`` as in Django)."""
        expiry = kwargs["expiry"] if "expiry" in kwargs else self._stored_expiry()
        if isinstance(expiry, (str, datetime)):
            return _as_datetime(expiry)
        now = kwargs.get("modification") or timezone.now()
        return now + timedelta(seconds=expiry or self.get_session_cookie_age())  # type: ignore[no-any-return]

    def get_expire_at_browser_close(self) -> bool:
        """Whether the cookie is a browser-session cookie."""
        expiry = self._stored_expiry()
        if expiry is None:
            return bool(settings.SESSION_EXPIRE_AT_BROWSER_CLOSE)
        return bool(expiry == 0)

    def set_expiry(self, value: int | datetime | timedelta | None) -> None:
        """Set this session's expiry, in Redis (its TTL) and for the cookie.

        An int is an idle timeout in seconds (0: the cookie ends with the browser, the
        Redis key keeps the default timeout); a datetime or timedelta a deadline (the
        idle timeout becomes the time left); ``None`` the default again. A negative
        int or a past deadline ends the session now, as :meth:`flush` does.
        """
        live = self._live
        stored: int | str | None
        # Anything but ending the session changes the cookie's lifetime.
        needs_cookie = functools.partial(
            live.core.require_cookie, "set_expiry()", "the cookie's new lifetime needs"
        )
        if value is None:
            needs_cookie()
            live.touch(self.get_session_cookie_age())
            live.meta_pop(EXPIRY_META)
            self._expiry = None
            return
        if isinstance(value, timedelta):
            value = timezone.now() + value
        if isinstance(value, datetime):
            left = _seconds_between(timezone.now(), value)
            if left <= 0:
                self.flush()
                return
            needs_cookie()
            live.touch(math.ceil(left))
            stored = value.isoformat()
        elif isinstance(value, int) and not isinstance(value, bool):
            if value < 0:
                self.flush()
                return
            needs_cookie()
            live.touch(value or self.get_session_cookie_age())
            stored = value
        else:
            raise TypeError(
                f"set_expiry() takes an int, datetime, timedelta or None, not {value!r}"
            )
        live.meta_set(EXPIRY_META, stored)
        self._expiry = stored

    @classmethod
    def clear_expired(cls) -> None:
        """Nothing to do: Redis expires session keys itself."""

    @classmethod
    async def aclear_expired(cls) -> None:
        """Nothing to do: Redis expires session keys itself."""

    # ------------------------------------------------------------- lifecycle

    def _redis(self, *command: Any) -> Any:
        store = self._store
        try:
            return send(store.client, command, *store.config.patience)
        except RedisError as exc:
            raise BackendError(f"Redis failed: {exc}") from exc

    def exists(self, session_key: str | None) -> bool:
        """Whether ``session_key`` names a stored session; a malformed key costs no command."""
        config = self._store.config
        session_id = config.id_from_cookie(session_key) if session_key else None
        if session_id is None:
            return False
        return bool(self._redis("EXISTS", config.key_of(session_id)))

    def load(self) -> dict[str, Any]:
        """Every key and value (one ``HGETALL``); never creates a session."""
        return self._live.to_dict()

    def create(self) -> None:
        """Switch to a brand-new, empty session, stored at once; the old one is left alone."""
        if self._headers_sent:
            self._live.core.require_cookie("create()", "the new session needs")
        self._live = self._store.open_id(None)
        self._expiry = None
        self._live.meta_set(EXPIRY_META, None)

    def save(self, must_create: bool = False) -> None:
        """Make sure the session is stored; its data was written already.

        Nothing is overwritten, so a concurrent request's changes survive. A session not
        yet checked in this request is touched (with ``SESSION_SAVE_EVERY_REQUEST`` that
        slides its expiry); one that is gone, or was never stored, is created empty.
        ``must_create`` raises ``CreateError`` for a session that existed before.
        """
        live = self._live
        if must_create and not live.new:
            raise CreateError
        if live.core.state is State.PENDING:
            live.touch()
        if live.id is None:
            self._expiry = None
            live.meta_set(EXPIRY_META, None)

    def delete(self, session_key: str | None = None) -> None:
        """Delete the session named by ``session_key`` (this one if ``None``)."""
        if session_key is not None:
            config = self._store.config
            session_id = config.id_from_cookie(session_key)
            if session_id is None:
                return
            if session_id != self._live.id:
                self._redis("DEL", config.key_of(session_id))
                return
        self._live.invalidate()
        self._expiry = None

    def flush(self) -> None:
        """Delete the session and start a new, empty one (``logout()`` calls this)."""
        self._live.invalidate()
        self._expiry = None

    def cycle_key(self) -> None:
        """Move the data to a new key and delete the old one atomically (``login()``)."""
        self._live.regenerate()

    def _get_or_create_session_key(self) -> str | None:
        if self._live.id is None:
            self.save()
        return self.session_key

    # Async twins: Django's defaults would touch Redis on the event loop or set
    # attributes this class does not have, so each runs its sync method in a thread.
    aget = _in_thread("get")
    aset = _in_thread("__setitem__", "aset")
    apop = _in_thread("pop")
    asetdefault = _in_thread("setdefault")
    aupdate = _in_thread("update")
    ahas_key = _in_thread("has_key")
    akeys = _in_thread("keys")
    avalues = _in_thread("values")
    aitems = _in_thread("items")
    aset_test_cookie = _in_thread("set_test_cookie")
    atest_cookie_worked = _in_thread("test_cookie_worked")
    adelete_test_cookie = _in_thread("delete_test_cookie")
    aget_expiry_age = _in_thread("get_expiry_age")
    aget_expiry_date = _in_thread("get_expiry_date")
    aset_expiry = _in_thread("set_expiry")
    aget_expire_at_browser_close = _in_thread("get_expire_at_browser_close")
    aexists = _in_thread("exists")
    aload = _in_thread("load")
    acreate = _in_thread("create")
    asave = _in_thread("save")
    adelete = _in_thread("delete")
    aflush = _in_thread("flush")
    acycle_key = _in_thread("cycle_key")
    _aget_or_create_session_key = _in_thread(
        "_get_or_create_session_key", "_aget_or_create_session_key"
    )


class SessionMiddleware(DjangoSessionMiddleware):  # type: ignore[misc]
    """Django's ``SessionMiddleware``, telling the session when its cookie is final.

    Use ``"hashsession.django.SessionMiddleware"`` in ``MIDDLEWARE`` in place of
    Django's. Once Django's ``process_response`` has written (or not) the cookie,
    the session knows that no other can follow: in a ``StreamingHttpResponse`` body,
    or in an outer middleware, a step that needs a new cookie raises
    :class:`~hashsession.HeadersSentError` instead of leaving a Redis key no cookie
    names. Writes to a session the request's cookie names keep working.

    A cookie that does not verify (forged, malformed, or signed with a key this
    process does not know yet, as during a rolling deploy of a new key) is left
    alone, as if the request had none; Django's own middleware deletes it.
    """

    def process_response(self, request: Any, response: Any) -> Any:
        session = getattr(request, "session", None)
        name = settings.SESSION_COOKIE_NAME
        unverified = (
            isinstance(session, SessionStore)
            and session.live.core.rejected
            and session.live.id is None
            and name in request.COOKIES
        )
        if unverified:  # Django would delete a cookie that names no session
            cookie = request.COOKIES.pop(name)
            try:
                response = super().process_response(request, response)
            finally:
                request.COOKIES[name] = cookie
        else:
            response = super().process_response(request, response)
        if isinstance(session, SessionStore):
            session.headers_sent()
        return response
