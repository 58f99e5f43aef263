"""Serve one README framework example on a real server, for tests/test_readme.py.

``python tests/readme_server.py <framework> <code file>`` runs the example's code as the
README shows it, builds its app the way the README says, serves it on a free loopback
port and prints ``PORT <n> REDIS <url>`` once it accepts connections: ``<url>`` is the
embedded development server the example's store uses, since the examples leave
``redis`` out. It serves until it is killed. The test gives it a fresh
``HASHSESSION_DEV_DIR``, so its embedded server is its own.

WSGI apps run on a threaded ``wsgiref`` server (one thread per connection), ASGI on
uvicorn, Tornado on its own ``HTTPServer``.
"""

from __future__ import annotations

import re
import socket
import socketserver
import sys
import types
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer


class _ThreadedWSGIServer(socketserver.ThreadingMixIn, WSGIServer):
    daemon_threads = True
    request_queue_size = 256


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


def _serve_wsgi(app: Any) -> None:
    server = _ThreadedWSGIServer(("127.0.0.1", 0), _QuietHandler)
    server.set_app(app)
    _ready(server.server_address[1])
    server.serve_forever()


def _ready(port: int) -> None:
    """Say where the example keeps its sessions, then where it listens."""
    from hashsession.devserver import default_url

    print(f"PORT {port} REDIS {default_url()}", flush=True)  # one line: read at once


def _run(code: str, name: str = "readme_example") -> dict[str, Any]:
    """Run ``code`` as the body of a module ``name`` (frameworks may look it up)."""
    module = types.ModuleType(name)
    sys.modules[name] = module
    exec(compile(code, "README.md", "exec"), module.__dict__)
    return module.__dict__


def wsgi(code: str) -> None:
    _serve_wsgi(_run(code)["app"])


flask = bottle = wsgi


def pyramid(code: str) -> None:
    # The block's settings are its "development.ini" comment lines: hashsession.x = y.
    settings = dict(re.findall(r"^#.*?\b(hashsession\.\w+)\s*=\s*(\S+)", code, re.MULTILINE))
    _serve_wsgi(_run(code)["main"]({}, **settings))


def django(code: str) -> None:
    settings_part, views_part = code.split("# views.py", 1)
    block_settings = {
        k: v for k, v in _run(settings_part, "readme_settings").items() if k.isupper()
    }
    views = _run(views_part, "readme_views")
    import django as dj
    from django.conf import settings
    from django.core.wsgi import get_wsgi_application
    from django.urls import path

    urls = types.ModuleType("readme_urls")
    urls.urlpatterns = [path("add/<str:item>", views["add"])]  # type: ignore[attr-defined]
    sys.modules["readme_urls"] = urls
    # The block's MIDDLEWARE ends in "..." (the project's others); none are needed here.
    middleware = block_settings.pop(
        "MIDDLEWARE", ["django.contrib.sessions.middleware.SessionMiddleware"]
    )
    settings.configure(
        SECRET_KEY="readme test",
        ALLOWED_HOSTS=["*"],
        ROOT_URLCONF="readme_urls",
        MIDDLEWARE=[m for m in middleware if m is not Ellipsis],
        INSTALLED_APPS=["django.contrib.sessions"],
        **block_settings,
    )
    dj.setup()
    _serve_wsgi(get_wsgi_application())


def asgi(code: str) -> None:
    import uvicorn

    app = _run(code)["app"]
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)  # connections wait in the backlog until uvicorn accepts them
    config = uvicorn.Config(app, log_level="warning", backlog=1024)
    server = uvicorn.Server(config)
    _ready(sock.getsockname()[1])
    server.run(sockets=[sock])


def tornado(code: str) -> None:
    import asyncio

    from tornado.httpserver import HTTPServer
    from tornado.netutil import bind_sockets

    async def main() -> None:
        app = _run(code)["app"]
        sockets = bind_sockets(0, "127.0.0.1", backlog=1024)
        HTTPServer(app).add_sockets(sockets)
        _ready(sockets[0].getsockname()[1])
        await asyncio.Event().wait()

    asyncio.run(main())


if __name__ == "__main__":
    framework, code_file = sys.argv[1], sys.argv[2]
    with open(code_file, encoding="utf-8") as f:
        source = f.read()
    {
        "wsgi": wsgi,
        "asgi": asgi,
        "tornado": tornado,
        "flask": flask,
        "bottle": bottle,
        "pyramid": pyramid,
        "django": django,
    }[framework](source)
