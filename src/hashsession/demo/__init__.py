"""The demo app: a few pages that each show one thing hashsession promises.

``hashsession demo`` (or ``./run demo``) serves it over plain WSGI on an embedded
Redis; ``make_app(demo_store(url))`` is the WSGI app itself. Pages: sign in and
out, a cart, a counter, flash messages with CSRF, your sessions, the live Redis
hash, and a race against a naive load-then-save session.
"""

from __future__ import annotations

import contextlib
from socketserver import ThreadingMixIn
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from hashsession.demo.app import demo_store, make_app

__all__ = ["demo_store", "make_app", "serve"]


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Handler(WSGIRequestHandler):
    """Logs each request, except the stylesheet and the live view's poll."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        if not self.path.startswith(("/live.json", "/style.css")):
            super().log_request(code, size)


def serve(*, host: str = "127.0.0.1", port: int = 8000, redis: str | None = None) -> None:
    """Serve the demo until interrupted; ``redis=None`` starts an embedded Redis."""
    store = demo_store(redis)
    app = make_app(store)
    with make_server(host, port, app, _ThreadingServer, _Handler) as server:
        print(
            f"hashsession demo on http://{host}:{server.server_port}/ (Ctrl-C to stop)", flush=True
        )
        with contextlib.suppress(KeyboardInterrupt):
            server.serve_forever()
    store.close()
