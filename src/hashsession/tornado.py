"""Tornado: ``SessionMixin`` gives a ``RequestHandler`` a live ``self.session``.

``self.session`` is an :class:`~hashsession.aio.AsyncSession`, opened on first
use from the request's ``Cookie`` header; a handler that never touches it
costs no Redis command and sends no ``Set-Cookie``. Put the mixin first::

    class CartHandler(SessionMixin, tornado.web.RequestHandler):
        async def post(self) -> None:
            await self.session.incr("items")

The store comes from the ``Application`` settings, in one of two ways:

- ``hashsession_store=AsyncSessionStore(...)``: a store you built (and close);
- ``hashsession={"redis": url, "secret_keys": [...], "ttl": ...}``: the keyword
  arguments of :class:`~hashsession.aio.AsyncSessionStore`; one store is built
  per ``Application`` on first use and kept on it (:func:`store_for` returns it,
  e.g. to call it at start-up to check the settings, or ``aclose()`` it).

With neither (or both), the first use of ``self.session`` raises
:class:`~hashsession.ConfigurationError`.

``Set-Cookie`` and ``Vary: Cookie`` (merged into any ``Vary`` already set) are
added when the headers are first flushed: by ``finish()``, by an explicit
``self.flush()`` in a streaming handler, and by Tornado's error page
(``send_error``), so a session created or changed before an exception still
reaches the browser. Once the headers are out no cookie can follow, so a step
that needs one raises :class:`~hashsession.HeadersSentError` without writing
anything: the first write of a session not stored yet, ``regenerate()``,
``login()``. Writes to a session the request's cookie already names keep working,
and ``invalidate()`` still deletes the session (with a warning: the browser keeps
its dead cookie). The same holds in ``on_finish``, which runs after the response
was sent.
"""

from __future__ import annotations

from asyncio import Future
from collections.abc import Mapping

from hashsession._extras import missing_extra
from hashsession.cookies import is_plain_local

try:
    from tornado.web import Application, RequestHandler
except ModuleNotFoundError as exc:  # the extra is not installed
    missing_extra(exc, "tornado", "hashsession.tornado")

from hashsession.aio import AsyncSession, AsyncSessionStore
from hashsession.errors import ConfigurationError

__all__ = ["SessionMixin", "store_for"]

STORE_SETTING = "hashsession_store"
CONFIG_SETTING = "hashsession"
_BUILT = "_hashsession_store"  # where a store built from the settings dict is kept


def store_for(application: Application) -> AsyncSessionStore:
    """The store an ``Application``'s settings name, built once and kept on the application."""
    built: AsyncSessionStore | None = getattr(application, _BUILT, None)
    if built is not None:
        return built
    settings = application.settings
    ready = settings.get(STORE_SETTING)
    config = settings.get(CONFIG_SETTING)
    if ready is not None and config is not None:
        raise ConfigurationError(
            CONFIG_SETTING, f"set either {STORE_SETTING}= or {CONFIG_SETTING}=, not both"
        )
    if ready is not None:
        if not isinstance(ready, AsyncSessionStore):
            raise ConfigurationError(
                STORE_SETTING, f"must be a hashsession.aio.AsyncSessionStore, not {ready!r}"
            )
        store = ready
    elif config is not None:
        if not isinstance(config, Mapping):
            raise ConfigurationError(
                CONFIG_SETTING, f"must be a dict of AsyncSessionStore settings, not {config!r}"
            )
        store = AsyncSessionStore(**config)
    else:
        raise ConfigurationError(
            CONFIG_SETTING,
            f"no session store: give the Application {STORE_SETTING}=AsyncSessionStore(...)"
            f" or {CONFIG_SETTING}={{'redis': url, 'secret_keys': [...]}}",
        )
    setattr(application, _BUILT, store)
    return store


class SessionMixin(RequestHandler):
    """Adds a lazy ``self.session`` and sends its cookie with the first flush of the headers.

    List it before ``RequestHandler`` (or any handler class) in the bases.
    """

    _hashsession: AsyncSession | None = None

    @property
    def session(self) -> AsyncSession:
        """This request's session; opening it costs no Redis command."""
        session = self._hashsession
        if session is None:
            cookie = "; ".join(self.request.headers.get_list("Cookie"))
            request = self.request
            local = is_plain_local(request.protocol, request.host)
            store = store_for(self.application)
            session = self._hashsession = store.open(cookie or None, plain_local=local)
            if self._headers_written:  # too late for a cookie: the browser keeps its own
                store.headers_sent(session)
        return session

    def flush(self, include_footers: bool = False) -> Future[None]:
        """Add the session's headers before the first chunk, then flush as usual."""
        if not self._headers_written and self._hashsession is not None:
            self._add_session_headers(self._hashsession)
        return super().flush(include_footers)

    def _add_session_headers(self, session: AsyncSession) -> None:
        for name, value in AsyncSessionStore.response_headers(session):
            if name.lower() == "vary":
                self._merge_vary(value)
            else:
                self.add_header(name, value)
        AsyncSessionStore.headers_sent(session)  # this flush sends them; no cookie can follow

    def _merge_vary(self, token: str) -> None:
        current = self._headers.get("Vary")
        if not current:
            self.set_header("Vary", token)
            return
        present = {part.strip().lower() for part in current.split(",")}
        if token.lower() not in present and "*" not in present:
            self.set_header("Vary", f"{current}, {token}")
