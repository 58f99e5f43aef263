"""Flask integration: ``flask.session`` itself becomes a live hashsession session.

``HashSession(app)`` (or ``HashSession().init_app(app)`` in an app factory)
installs :class:`HashSessionInterface`, configured from the ``HASHSESSION_*``
keys of ``app.config`` (the table is in ``docs/flask.md``). ``session["x"] = 1``
then reaches Redis before the line returns; a request that never touches the
session costs no Redis command and gets no ``Set-Cookie``.

When Flask-Login stores a user in a session that existed before the request,
the session first gets a new id (fixation defence); :func:`regenerate` does the
same for apps that log users in some other way.

``save_session`` adds the cookie to the response headers, which are final from
then on: in a body streamed with ``stream_with_context``, a step that needs a new
cookie (the first write of a session not stored yet, ``regenerate()``, a login,
setting ``permanent``) raises :class:`~hashsession.HeadersSentError` without
writing anything. Writes to a session the request's cookie already names work.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from hashsession._extras import missing_extra

try:
    import flask
    from flask.json.tag import JSONTag, TaggedJSONSerializer, TagMarkup
    from flask.sessions import SessionInterface, SessionMixin
    from markupsafe import Markup
except ModuleNotFoundError as exc:  # the extra is not installed
    missing_extra(exc, "flask", "hashsession.flask")

from hashsession.config import seconds
from hashsession.cookies import Signer, environ_is_plain_local
from hashsession.errors import ConfigurationError, DecodeError
from hashsession.protocol import SessionCore
from hashsession.scripts import LIFETIME_FIELD
from hashsession.session import Session
from hashsession.store import SessionStore

if TYPE_CHECKING:
    from flask import Flask
    from flask.wrappers import Request, Response

    from hashsession.topology import SyncClient

__all__ = [
    "FlaskOptions",
    "FlaskSession",
    "HashSession",
    "HashSessionInterface",
    "TaggedJSONCodec",
    "current_session",
    "interface_from_config",
    "options_from_config",
    "regenerate",
    "store_from_config",
]

PREFIX = "HASHSESSION_"
#: The reserved field holding a session's own cookie lifetime (``session.permanent``).
PERMANENT_FIELD = LIFETIME_FIELD[1:]
#: The key Flask-Login stores the logged-in user's id under.
USER_ID_KEY = "_user_id"
_REMEMBER_KEY = "_remember"  # Flask-Login's note to set or clear its remember cookie

# Keys that configure the store; none may be combined with HASHSESSION_STORE.
_STORE_KEYS = (
    "REDIS",
    "SECRET_KEYS",
    "USER_KEY",
    "TTL",
    "ABSOLUTE_TTL",
    "PREFIX",
    "CODEC",
    "COOKIE_NAME",
    "COOKIE_DOMAIN",
    "COOKIE_PATH",
    "COOKIE_SECURE",
    "COOKIE_HTTPONLY",
    "COOKIE_SAMESITE",
    "COOKIE_HOST_PREFIX",
    "COOKIE_PARTITIONED",
    "PERMANENT",
    "REFRESH_EACH_REQUEST",
    "OPTIONS",
)
_KNOWN_KEYS = frozenset(
    PREFIX + k
    for k in (
        *_STORE_KEYS,
        "STORE",
        "PERMANENT_LIFETIME",
        "REGENERATE_ON_LOGIN",
        "INVALIDATE_ON_LOGOUT",
    )
)
# SessionStore settings that have their own HASHSESSION_* key.
_KEYED_SETTINGS = {
    "redis": "REDIS",
    "secret_keys": "SECRET_KEYS",
    "user_key": "USER_KEY",
    "ttl": "TTL",
    "absolute_ttl": "ABSOLUTE_TTL",
    "prefix": "PREFIX",
    "codec": "CODEC",
    "cookie": "COOKIE_*",
    "refresh_cookie": "REFRESH_EACH_REQUEST",
}


# Signatures of Markup text start with this, so none can pass for a cookie's (ids hold no NUL).
_MARKUP_CONTEXT = b"hashsession markup\x00"


class _TextMarkup(TagMarkup):
    """Flask's own ``Markup`` tag, read back as plain text: a value found in Redis never
    becomes ``Markup`` (which Jinja would render unescaped) on its word alone."""

    __slots__ = ()

    def to_python(self, value: Any) -> Any:
        return value  # plain JSON: a str stays a str


class _SignedMarkup(JSONTag):
    """``Markup`` the app stored itself: its text and an HMAC of it by the newest signing key.

    Read back, it is ``Markup`` again only if a signing key vouches for it; anything else
    under this tag comes back as plain text (or as it was, when it is not even text).
    """

    __slots__ = ()
    key = " hm"
    serializer: _Serializer

    def check(self, value: Any) -> bool:
        return self.serializer.signer is not None and callable(getattr(value, "__html__", None))

    def to_json(self, value: Any) -> Any:
        signer = self.serializer.signer
        assert signer is not None
        text = str(value.__html__())
        return [text, signer.mac(_MARKUP_CONTEXT + text.encode("utf-8"))]

    def to_python(self, value: Any) -> Any:
        if not (isinstance(value, list) and len(value) == 2 and isinstance(value[0], str)):
            return value
        text, mac = value
        signer = self.serializer.signer
        message = _MARKUP_CONTEXT + text.encode("utf-8", "surrogatepass")
        if signer is not None and isinstance(mac, str) and signer.matches(message, mac):
            return Markup(text)
        return text


class _Serializer(TaggedJSONSerializer):
    """Flask's tagged JSON, with ``Markup`` signed on the way in and checked on the way out."""

    default_tags = [
        tag
        for default in TaggedJSONSerializer.default_tags
        for tag in ((_SignedMarkup, _TextMarkup) if default is TagMarkup else (default,))
    ]

    def __init__(self, signer: Signer | None) -> None:
        self.signer = signer
        super().__init__()


class TaggedJSONCodec:
    """Flask's own tagged JSON, the format of its cookie sessions.

    Tuples, bytes, datetimes and UUIDs come back as they went in; plain values are
    plain JSON (an int is its decimal text, so increments work). ``Markup`` comes back
    as ``Markup`` only when it carries an HMAC by one of ``secret_keys`` (the store's
    cookie signing keys, which the Flask adapter passes), so that nothing written to
    Redis by anyone else can turn into HTML that Jinja renders unescaped; without
    keys, and for Markup stored without a valid signature, it comes back as ``str``.
    """

    name = "flask"
    #: A list is the JSON array of its tagged items, so list edits (``append``, ``add``...)
    #: run on the server; a dict may be wrapped (a one-key dict whose key is a tag), so dict
    #: edits (``set_in``, ``delete_in``) are optimistic writes.
    in_place: frozenset[str] = frozenset({"list"})

    def __init__(self, secret_keys: Sequence[str | bytes] | None = None) -> None:
        signer = Signer(list(secret_keys)) if secret_keys else None
        self._serializer = _Serializer(signer)

    def dumps(self, value: Any, /) -> str:
        return self._serializer.dumps(value)

    def loads(self, data: bytes, /) -> Any:
        return self._serializer.loads(data.decode("utf-8") if isinstance(data, bytes) else data)


@dataclass(frozen=True, kw_only=True)
class FlaskOptions:
    """What the Flask adapter adds to a store's settings."""

    #: ``Max-Age`` in seconds of the cookie of a session made permanent one by one.
    permanent_lifetime: int = 31 * 24 * 3600
    #: Give an existing session a new id when Flask-Login stores a user in it.
    regenerate_on_login: bool = True
    #: Delete the whole session when Flask-Login logs the user out.
    invalidate_on_logout: bool = False


class FlaskSession(Session, SessionMixin):
    """A live :class:`~hashsession.Session` that is also what Flask expects of a session.

    ``new``, ``modified`` and ``accessed`` come from the core; ``permanent`` is
    kept in a reserved field of the hash (or fixed to ``True`` when the store's
    cookie has a ``max_age``, which makes every session permanent).
    """

    def __init__(
        self, core: SessionCore, client: SyncClient, options: FlaskOptions | None = None
    ) -> None:
        super().__init__(core, client)
        self.options = options if options is not None else FlaskOptions()
        self._permanent: bool | None = None
        self._cookie_due = False
        self._regenerated = False

    @property
    def new(self) -> bool:
        """Whether the session did not exist when this request began."""
        return self._core.is_new

    @new.setter
    def new(self, value: bool) -> None:
        raise AttributeError("a session's 'new' comes from Redis and cannot be set")

    @property
    def modified(self) -> bool:
        """Whether this request changed the session (every change is already in Redis)."""
        return self._core.modified

    @modified.setter
    def modified(self, value: bool) -> None:
        """Accepted and ignored: there is nothing left to save.

        Apps set it after changing a value read from the session in place, which
        a live session never sees: assign the value back, or use :meth:`edit`.
        """

    @property
    def accessed(self) -> bool:
        """Whether this request used the session; Flask sets it on every ``flask.session`` use."""
        return self._core.accessed

    @accessed.setter
    def accessed(self, value: bool) -> None:
        self._core.accessed = bool(value)

    @property
    def all_permanent(self) -> bool:
        """Whether the store makes every session permanent (its cookie has a ``max_age``)."""
        return self._core.config.cookie.max_age is not None

    @property
    def permanent(self) -> bool:
        """Whether the cookie outlives the browser session.

        It is the session's own cookie lifetime, which the request's first Redis command
        returns along: no round trip after that one, and one ``HGET`` before it.
        """
        if self.all_permanent:
            return True
        if self._permanent is None:
            core = self._core
            if core.lifetime_known:
                lifetime = core.lifetime
            else:
                lifetime = self.meta_get(PERMANENT_FIELD)
                if lifetime is not None and (type(lifetime) is not int or lifetime < 0):
                    raise DecodeError(PERMANENT_FIELD, f"not a cookie lifetime: {lifetime!r}")
            self._permanent = bool(lifetime)
        return self._permanent

    @permanent.setter
    def permanent(self, value: bool) -> None:
        value = bool(value)
        if self.all_permanent:
            if not value:
                raise ConfigurationError(
                    "HASHSESSION_PERMANENT", "every session is permanent; one cannot opt out"
                )
            return
        if value or self._core.id is not None:  # False on a session never stored: the default
            if self._core.headers_sent and self.permanent != value:
                self._core.require_cookie(
                    f"session.permanent = {value}", "the cookie's new lifetime needs"
                )
            self.set_cookie_lifetime(self.options.permanent_lifetime if value else 0)
            self._cookie_due = True
        self._permanent = value

    @property
    def permanence_changed(self) -> bool:
        """Whether this request set ``permanent``, so the cookie must be sent again."""
        return self._cookie_due

    def cookie_is_permanent(self) -> bool:
        """``permanent``, without a round trip for a session created in this request."""
        if self._permanent is None and self.new:
            return False
        return self.permanent

    def __setitem__(self, key: str, value: Any) -> None:
        if key == USER_ID_KEY:
            self.regenerate_for_login()
        super().__setitem__(key, value)

    def set(self, key: str, value: Any) -> None:
        """Store ``value`` under ``key`` now (the same as ``session[key] = value``)."""
        if key == USER_ID_KEY:
            self.regenerate_for_login()
        super().set(key, value)

    def regenerate(self) -> None:
        """Give the session a new id, keeping its data; the response sends the new cookie."""
        super().regenerate()
        self._regenerated = True

    def regenerate_for_login(self) -> None:
        """Regenerate once per request, if the session existed before it and the app wants it.

        Called before Flask-Login's ``_user_id`` is written, so the old id never
        holds a logged-in user, and again (as a no-op) on its ``user_logged_in`` signal.
        """
        if self.options.regenerate_on_login and not self._regenerated and not self.new:
            self.regenerate()

    def invalidate(self) -> None:
        """Delete the session now; the response expires its cookie."""
        super().invalidate()
        self._permanent = None
        self._cookie_due = False

    def invalidate_for_logout(self) -> None:
        """Delete the session, keeping only Flask-Login's note about its remember cookie."""
        remember = self.get(_REMEMBER_KEY)
        self.invalidate()
        if remember is not None:
            self[_REMEMBER_KEY] = remember


class HashSessionInterface(SessionInterface):
    """Flask's session interface over a :class:`~hashsession.SessionStore`.

    ``open_session`` costs no Redis command; ``save_session`` writes no data
    (every change was written when it was made) and only adds the
    ``Set-Cookie`` and ``Vary: Cookie`` headers that are due.
    """

    #: The class sessions are made of; compat layers may subclass it.
    session_class: type[FlaskSession] = FlaskSession

    def __init__(self, store: SessionStore, options: FlaskOptions | None = None) -> None:
        self.store = store
        self.options = options if options is not None else FlaskOptions()
        policy = store.cookie
        if policy.max_age is None:
            policy = dataclasses.replace(policy, max_age=self.options.permanent_lifetime)
        self._permanent_cookie = policy

    def open_session(self, app: Flask, request: Request) -> FlaskSession:
        environ = request.environ
        core = self.store.core_for(
            environ.get("HTTP_COOKIE"), plain_local=environ_is_plain_local(environ)
        )
        return self.session_class(core, self.store.client, self.options)

    def save_session(self, app: Flask, session: SessionMixin, response: Response) -> None:
        if not isinstance(session, FlaskSession):
            return
        for name, value in self.response_headers(session):
            if name == "Vary":
                response.vary.add(value)
            else:
                response.headers.add(name, value)
        # The headers are final: a streamed body (stream_with_context) runs after this.
        session.core.headers_sent = True

    def response_headers(self, session: FlaskSession) -> list[tuple[str, str]]:
        """``Set-Cookie`` and ``Vary`` headers due, with ``Max-Age`` for permanent sessions."""
        headers = self.store.response_headers(session)
        core = session.core
        if session.all_permanent or core.id is None:
            return headers  # the store's cookie policy says it all, or the cookie goes away
        due = session.permanence_changed or any(name == "Set-Cookie" for name, _ in headers)
        if not due:
            return headers
        policy = self._permanent_cookie if session.cookie_is_permanent() else self.store.cookie
        cookie = policy.set_cookie(core.config.cookie_value(core.id), plain_local=core.plain_local)
        return [("Set-Cookie", cookie), *(h for h in headers if h[0] != "Set-Cookie")]

    # Flask's cookie hooks, answered from the store's cookie policy.

    def get_cookie_name(self, app: Flask) -> str:
        return self.store.cookie.cookie_name

    def get_cookie_domain(self, app: Flask) -> str | None:
        return self.store.cookie.domain

    def get_cookie_path(self, app: Flask) -> str:
        return self.store.cookie.path

    def get_cookie_httponly(self, app: Flask) -> bool:
        return self.store.cookie.httponly

    def get_cookie_secure(self, app: Flask) -> bool:
        local = flask.has_request_context() and environ_is_plain_local(flask.request.environ)
        return self.store.cookie.secure_for(local)

    def get_cookie_samesite(self, app: Flask) -> str | None:
        return self.store.cookie.samesite

    def get_cookie_partitioned(self, app: Flask) -> bool:
        return self.store.cookie.partitioned


# ------------------------------------------------------------------ configuration


def _check_keys(config: Mapping[str, Any]) -> None:
    for key in config:
        if isinstance(key, str) and key.startswith(PREFIX) and key not in _KNOWN_KEYS:
            close = difflib.get_close_matches(key, _KNOWN_KEYS, n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            raise ConfigurationError(key, f"not a hashsession setting{hint}")


def _flag(config: Mapping[str, Any], key: str, default: bool) -> bool:
    value = config.get(key, default)
    if not isinstance(value, bool):
        raise ConfigurationError(key, f"must be True or False, not {value!r}")
    return value


def _either(config: Mapping[str, Any], own: str, flask_key: str, default: Any) -> tuple[Any, str]:
    """The value of ``HASHSESSION_<own>``, else of Flask's ``flask_key``; and which key it was."""
    if PREFIX + own in config:
        return config[PREFIX + own], PREFIX + own
    return config.get(flask_key, default), flask_key


def _lifetime(config: Mapping[str, Any]) -> int:
    value, key = _either(
        config, "PERMANENT_LIFETIME", "PERMANENT_SESSION_LIFETIME", timedelta(days=31)
    )
    return seconds(key, value)  # type: ignore[return-value]


def options_from_config(config: Mapping[str, Any]) -> FlaskOptions:
    """The adapter's own options from ``app.config``; a bad one raises naming its key."""
    _check_keys(config)
    return FlaskOptions(
        permanent_lifetime=_lifetime(config),
        regenerate_on_login=_flag(config, PREFIX + "REGENERATE_ON_LOGIN", True),
        invalidate_on_logout=_flag(config, PREFIX + "INVALIDATE_ON_LOGOUT", False),
    )


def store_from_config(config: Mapping[str, Any]) -> SessionStore:
    """A :class:`~hashsession.SessionStore` from ``app.config`` (docs/flask.md lists the keys).

    ``HASHSESSION_STORE`` is returned as it is; otherwise the ``HASHSESSION_*``
    keys, falling back on Flask's own ``SECRET_KEY``, ``SESSION_COOKIE_*`` and
    ``PERMANENT_SESSION_LIFETIME``, build one. A bad value raises
    :class:`~hashsession.ConfigurationError` naming the config key it came from.
    """
    _check_keys(config)
    given = config.get(PREFIX + "STORE")
    if given is not None:
        if not isinstance(given, SessionStore):
            raise ConfigurationError(
                PREFIX + "STORE", f"must be a hashsession SessionStore, not {type(given).__name__}"
            )
        for key in _STORE_KEYS:
            if PREFIX + key in config:
                raise ConfigurationError(
                    PREFIX + key, "cannot be combined with HASHSESSION_STORE; configure that store"
                )
        return given

    settings: dict[str, Any] = {}
    origin: dict[str, str] = {}

    def put(setting: str, value: Any, key: str) -> None:
        settings[setting] = value
        origin[setting] = key

    if PREFIX + "REDIS" in config:
        put("redis", config[PREFIX + "REDIS"], PREFIX + "REDIS")
    keys = config.get(PREFIX + "SECRET_KEYS")
    if keys is not None:
        put("secret_keys", None if keys == [] or keys == () else keys, PREFIX + "SECRET_KEYS")
    elif config.get("SECRET_KEY"):
        fallbacks = config.get("SECRET_KEY_FALLBACKS") or ()
        put("secret_keys", [config["SECRET_KEY"], *fallbacks], "SECRET_KEY")
    else:
        raise ConfigurationError(
            PREFIX + "SECRET_KEYS",
            "set it or app.secret_key to sign session cookies ([] sends them unsigned)",
        )
    if config.get(PREFIX + "USER_KEY") is not None:
        put("user_key", config[PREFIX + "USER_KEY"], PREFIX + "USER_KEY")
    ttl, ttl_key = _either(config, "TTL", "PERMANENT_SESSION_LIFETIME", timedelta(days=31))
    put("ttl", ttl, ttl_key)
    for own, setting in (("ABSOLUTE_TTL", "absolute_ttl"), ("PREFIX", "prefix")):
        if PREFIX + own in config:
            put(setting, config[PREFIX + own], PREFIX + own)
    codec = config.get(PREFIX + "CODEC", "flask")
    if codec == "flask":
        try:
            codec = TaggedJSONCodec(settings.get("secret_keys"))
        except ConfigurationError:  # a bad key: building the store below names its setting
            codec = TaggedJSONCodec()
    put("codec", codec, PREFIX + "CODEC")

    cookie: dict[str, Any] = {}
    path = config.get("SESSION_COOKIE_PATH") or config.get("APPLICATION_ROOT") or "/"
    for own, flask_key, field, default in (
        ("COOKIE_NAME", "SESSION_COOKIE_NAME", "name", "session"),
        ("COOKIE_DOMAIN", "SESSION_COOKIE_DOMAIN", "domain", None),
        ("COOKIE_PATH", "SESSION_COOKIE_PATH", "path", path),
        ("COOKIE_SECURE", "SESSION_COOKIE_SECURE", "secure", None),
        ("COOKIE_HTTPONLY", "SESSION_COOKIE_HTTPONLY", "httponly", True),
        ("COOKIE_SAMESITE", "SESSION_COOKIE_SAMESITE", "samesite", None),
        ("COOKIE_HOST_PREFIX", "", "host_prefix", False),
        ("COOKIE_PARTITIONED", "SESSION_COOKIE_PARTITIONED", "partitioned", False),
    ):
        value: Any
        value, key = _either(config, own, flask_key, default)
        if field == "path" and not value:
            value = path
        if field == "secure" and key == flask_key and value is False:
            value = None  # Flask's default: Secure except on plain http to a loopback host
        if field == "samesite":
            if value is None and key == flask_key:
                value = "Lax"  # Flask's default sends no SameSite; ours is Lax
            elif isinstance(value, str):
                value = value.capitalize()  # Flask accepts "lax", the cookie wants "Lax"
        cookie[field] = value
        origin[f"cookie.{field}"] = key or PREFIX + own
    if _flag(config, PREFIX + "PERMANENT", False):
        cookie["max_age"] = _lifetime(config)
        origin["cookie.max_age"] = PREFIX + "PERMANENT_LIFETIME"
    put("cookie", cookie, PREFIX + "COOKIE_*")
    refresh, refresh_key = _either(
        config, "REFRESH_EACH_REQUEST", "SESSION_REFRESH_EACH_REQUEST", True
    )
    if not isinstance(refresh, bool):
        raise ConfigurationError(refresh_key, f"must be True or False, not {refresh!r}")
    put("refresh_cookie", refresh, refresh_key)

    extra = config.get(PREFIX + "OPTIONS") or {}
    if not isinstance(extra, Mapping):
        raise ConfigurationError(PREFIX + "OPTIONS", "must be a dict of SessionStore settings")
    for name, value in extra.items():
        if name in _KEYED_SETTINGS:
            raise ConfigurationError(
                PREFIX + "OPTIONS", f"set {name!r} with HASHSESSION_{_KEYED_SETTINGS[name]}"
            )
        put(str(name), value, f"{PREFIX}OPTIONS[{name!r}]")
    try:
        return SessionStore(**settings)
    except ConfigurationError as exc:
        source = origin.get(exc.setting) or origin.get(exc.setting.partition(".")[0])
        message = str(exc).removeprefix(f"{exc.setting}: ")
        raise ConfigurationError(source or PREFIX + "OPTIONS", message) from exc


def interface_from_config(config: Mapping[str, Any]) -> HashSessionInterface:
    """A :class:`HashSessionInterface` with its store and options from ``app.config``."""
    options = options_from_config(config)
    return HashSessionInterface(store_from_config(config), options)


# ------------------------------------------------------------------ the extension


class HashSession:
    """The Flask extension: ``HashSession(app)`` or ``HashSession().init_app(app)``."""

    def __init__(self, app: Flask | None = None) -> None:
        if app is not None:
            self.init_app(app)

    def init_app(self, app: Flask) -> HashSessionInterface:
        """Install the session interface configured from ``app.config``; validate it now."""
        interface = interface_from_config(app.config)
        app.session_interface = interface
        app.extensions["hashsession"] = interface
        try:
            from flask_login import (  # type: ignore[import-untyped]
                user_logged_in,
                user_logged_out,
            )
        except ImportError:
            return interface
        user_logged_in.connect(_on_login, sender=app)
        user_logged_out.connect(_on_logout, sender=app)
        return interface


def _on_login(app: Flask, **extra: Any) -> None:
    session = _ours()
    if session is not None:
        session.regenerate_for_login()


def _on_logout(app: Flask, **extra: Any) -> None:
    session = _ours()
    if session is not None and session.options.invalidate_on_logout:
        session.invalidate_for_logout()


def _ours() -> FlaskSession | None:
    proxy: Any = flask.session
    try:
        real = proxy._get_current_object()
    except RuntimeError:  # outside a request
        return None
    return real if isinstance(real, FlaskSession) else None


def current_session() -> FlaskSession:
    """This request's session, typed as hashsession's (``flask.session`` is typed as Flask's)."""
    session = _ours()
    if session is None:
        raise ConfigurationError(
            "session_interface", "hashsession.flask.HashSession is not installed on this app"
        )
    return session


def regenerate() -> None:
    """Give this request's session a new id now, as on login; the response sends the cookie."""
    current_session().regenerate()
