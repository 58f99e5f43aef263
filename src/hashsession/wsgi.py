"""WSGI middleware: puts a live session in ``environ`` and sends its cookie.

``SessionMiddleware(app, store=store)`` wraps any WSGI app. The session is
opened lazily (no Redis command until the app uses it) and the ``Set-Cookie``
and ``Vary`` headers are added when the app calls ``start_response``. If the
app raises before starting a response, the middleware answers 500 itself when
the session must still send its cookie (so a session created or replaced
before the error is not orphaned), and otherwise lets the exception propagate.

The headers are final once ``start_response`` is called, so from then on (in a
streamed body, say) a step that needs a new cookie raises
:class:`~hashsession.HeadersSentError` without writing anything: the first write
of a session not stored yet, ``regenerate()``, ``login()``. Writes to a session the
request's cookie already names keep working.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterable
from functools import partial
from types import TracebackType
from typing import Any

from hashsession.cookies import environ_is_plain_local
from hashsession.session import Session
from hashsession.store import SessionStore

__all__ = ["SessionMiddleware"]

log = logging.getLogger("hashsession")

_ExcInfo = tuple[type[BaseException], BaseException, TracebackType | None]
StartResponse = Callable[..., Callable[[bytes], object]]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


class SessionMiddleware:
    """Wraps a WSGI app so that ``environ[environ_key]`` is the request's live session."""

    def __init__(
        self, app: WSGIApp, *, store: SessionStore | None = None, environ_key: str = "hashsession"
    ) -> None:
        self.app = app
        self.store = store if store is not None else SessionStore()
        self.environ_key = environ_key

    def __call__(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        session = self.store.open(
            environ.get("HTTP_COOKIE"), plain_local=partial(environ_is_plain_local, environ)
        )
        environ[self.environ_key] = session
        started = False

        def start(
            status: str, headers: list[tuple[str, str]], exc_info: _ExcInfo | None = None
        ) -> Callable[[bytes], object]:
            nonlocal started
            started = True
            ours = self.store.response_headers(session)
            if ours:
                headers = [*headers, *ours]
            self.store.headers_sent(session)  # no Set-Cookie can follow these headers
            if exc_info is None:
                return start_response(status, headers)
            return start_response(status, headers, exc_info)

        try:
            return self.app(environ, start)
        except Exception:
            if started or not _must_send_cookie(session):
                raise
            log.exception("unhandled error in the app; answering 500 with the session cookie")
            start("500 Internal Server Error", [("Content-Type", "text/plain")], sys.exc_info())  # type: ignore[arg-type]
            return [b"Internal Server Error"]


def _must_send_cookie(session: Session) -> bool:
    return session.core.set_cookie_header() is not None
