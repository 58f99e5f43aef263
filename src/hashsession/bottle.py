"""Bottle plugin: routes that name the keyword receive the request's live session.

``app.install(SessionPlugin(store=store))``, then ``def cart(session): ...`` gets a lazy
:class:`~hashsession.Session`. Routes that do not name the keyword are left exactly as
they were. While a route that names it runs, the session is also ``bottle.request.session``
(generally ``request.<keyword>``, through Bottle's own request-attribute mechanism), so
helpers and templates can reach it without passing it along.

``Set-Cookie`` and ``Vary: Cookie`` are added when the route returns, when it raises a
:class:`bottle.HTTPResponse` (``redirect()`` after a login, ``abort()``), and when it raises
anything else after changing the session: Bottle's 500 answer then carries the cookie, so a
session created or replaced before the error is not lost.

The headers are final once the route returns, so in a generator body a step that needs a
new cookie raises :class:`~hashsession.HeadersSentError` without writing anything: the
first write of a session not stored yet, ``regenerate()``, ``login()``. Writes to a
session the request's cookie already names keep working.
"""

from __future__ import annotations

import inspect
import sys
import traceback
from collections.abc import Callable
from typing import Any

from hashsession._extras import missing_extra
from hashsession.cookies import environ_is_plain_local

try:
    import bottle  # type: ignore[import-untyped]
except ModuleNotFoundError as exc:  # the extra is not installed
    missing_extra(exc, "bottle", "hashsession.bottle")

from hashsession.errors import ConfigurationError
from hashsession.session import Session
from hashsession.store import SessionStore

__all__ = ["KeywordConflictError", "SessionPlugin"]

_VARIADIC = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)


class KeywordConflictError(ConfigurationError, bottle.PluginError):  # type: ignore[misc]
    """Two plugins on one app would inject the same route keyword.

    Both a :class:`~hashsession.ConfigurationError` and a :class:`bottle.PluginError`,
    so code catching either (as apps written for bottle-session did) keeps working.
    """


class SessionPlugin:
    """A Bottle plugin (API v2) handing each route that names ``keyword`` its session.

    ``store`` is the :class:`~hashsession.SessionStore` sessions live in; without one, a
    default store is made when the plugin is installed (an embedded development Redis).
    Installing a second plugin that injects the same keyword into the same app raises
    :class:`KeywordConflictError`. ``environ_key`` is where the session sits in
    ``request.environ`` (the key behind ``request.<keyword>``).
    """

    name = "hashsession"
    api = 2

    def __init__(self, store: SessionStore | None = None, *, keyword: str = "session") -> None:
        if not isinstance(keyword, str) or not keyword.isidentifier():
            raise ConfigurationError("keyword", f"must be a parameter name, not {keyword!r}")
        if store is not None and not isinstance(store, SessionStore):
            raise ConfigurationError(
                "store", f"must be a hashsession.SessionStore, not {type(store).__name__}"
            )
        self.store = store
        self.keyword = keyword
        self.environ_key = "bottle.request.ext." + keyword
        if keyword != "session":  # Bottle applies only one plugin per name to a route
            self.name = f"{type(self).name}.{keyword}"
        self._owns_store = False

    def __repr__(self) -> str:
        return f"<{type(self).__name__} keyword={self.keyword!r}>"

    def default_store(self) -> SessionStore:
        """The store used when none was given; compat plugins build theirs here."""
        return SessionStore()

    def _ready_store(self) -> SessionStore:
        if self.store is None:
            self.store = self.default_store()
            self._owns_store = True
        return self.store

    def setup(self, app: Any) -> None:
        """Refuse a second plugin injecting the same keyword; make the store if needed."""
        for other in app.plugins:
            if getattr(other, "keyword", None) == self.keyword:
                raise KeywordConflictError(
                    "keyword",
                    f"{other!r} already injects {self.keyword!r} into this app's routes; "
                    "give one of the plugins another keyword",
                )
        self._ready_store()

    def apply(self, callback: Callable[..., Any], route: Any) -> Callable[..., Any]:
        """Wrap ``callback`` if its route takes the keyword; otherwise return it unchanged."""
        if not _takes(route, self.keyword):
            return callback
        store = self._ready_store()
        keyword, environ_key, app = self.keyword, self.environ_key, route.app

        def with_session(*args: Any, **kwargs: Any) -> Any:
            environ = bottle.request.environ
            session = store.open(
                environ.get("HTTP_COOKIE"), plain_local=environ_is_plain_local(environ)
            )
            environ[environ_key] = session
            kwargs[keyword] = session
            try:
                result = callback(*args, **kwargs)
            except bottle.HTTPResponse as answer:  # redirect(), abort(), HTTPError
                _add_headers(answer, session)
                raise
            except Exception as exc:
                if not app.catchall or session.core.set_cookie_header() is None:
                    raise
                raise _internal_error(environ, exc, session) from exc
            # A returned HTTPResponse replaces bottle.response's headers, so it gets ours.
            target = result if isinstance(result, bottle.HTTPResponse) else bottle.response
            _add_headers(target, session)
            return result

        return with_session

    def close(self) -> None:
        """Close the store if this plugin made it (Bottle calls this on uninstall)."""
        if self._owns_store and self.store is not None:
            self.store.close()


def _takes(route: Any, keyword: str) -> bool:
    """Whether the route's callback names ``keyword`` (seen through ``functools.wraps``)."""
    try:
        params = inspect.signature(route.callback).parameters
    except (TypeError, ValueError):  # a callable without an inspectable signature
        return False
    param = params.get(keyword)
    return param is not None and param.kind not in _VARIADIC


def _add_headers(target: Any, session: Session) -> None:
    for name, value in SessionStore.response_headers(session):
        target.add_header(name, value)
    SessionStore.headers_sent(session)  # the route is done: a generator body runs after this


def _internal_error(environ: dict[str, Any], exc: Exception, session: Session) -> Any:
    """Bottle's own 500 for ``exc`` (traceback logged to ``wsgi.errors``), plus the cookie."""
    stacktrace = traceback.format_exc()
    errors = environ.get("wsgi.errors")
    if errors is not None:
        errors.write(stacktrace)
        errors.flush()
    environ["bottle.exc_info"] = sys.exc_info()
    error = bottle.HTTPError(500, "Internal Server Error", exc, stacktrace)
    _add_headers(error, session)
    return error
