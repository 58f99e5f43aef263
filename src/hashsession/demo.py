"""The demo app: a per-visitor counter on a live session, served over plain WSGI."""

from __future__ import annotations

import contextlib
import html
from collections.abc import Iterable
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIServer, make_server

from hashsession.store import SessionStore
from hashsession.wsgi import SessionMiddleware, StartResponse

__all__ = ["make_app", "serve"]

_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>hashsession demo</title>
<style>body{{font:16px system-ui,sans-serif;max-width:36rem;margin:3rem auto;padding:0 1rem}}
button{{font-size:1rem;margin-right:.5rem}} code{{background:#eee;padding:0 .2rem}}</style></head>
<body><h1>hashsession demo</h1>
<p>You have visited this page <strong id="visits">{visits}</strong> times in this session.</p>
<p>Your session is <span id="state">{state}</span>; each visit was one <code>HINCRBY</code>
on its Redis hash.</p>
<form method="post" action="/logout"><button id="logout" type="submit">Log out</button>
<a id="again" href="/">Visit again</a></form>
</body></html>
"""


def make_app(store: SessionStore) -> SessionMiddleware:
    """The demo WSGI app (``GET /`` counts a visit, ``POST /logout`` ends the session)."""

    def app(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        session = environ["hashsession"]
        path = environ.get("PATH_INFO", "/")
        if path == "/logout" and environ.get("REQUEST_METHOD") == "POST":
            session.invalidate()
            start_response("303 See Other", [("Location", "/")])
            return [b""]
        if path != "/":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found"]
        was_new = session.new
        visits = session.incr("visits")
        state = "new" if was_new else "live"
        body = _PAGE.format(visits=visits, state=html.escape(state)).encode("utf-8")
        start_response(
            "200 OK",
            [("Content-Type", "text/html; charset=utf-8"), ("Cache-Control", "no-store")],
        )
        return [body]

    return SessionMiddleware(app, store=store)


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


def serve(*, host: str = "127.0.0.1", port: int = 8000, redis: str | None = None) -> None:
    """Serve the demo until interrupted; ``redis=None`` starts an embedded Redis."""
    store = SessionStore(redis=redis)
    with make_server(host, port, make_app(store), server_class=_ThreadingServer) as server:
        print(
            f"hashsession demo on http://{host}:{server.server_port}/ (Ctrl-C to stop)", flush=True
        )
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever()
