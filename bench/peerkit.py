"""Worker side of ``bench/peers.py``: runs inside one library's own virtual environment.

``python peerkit.py <peer module> <redis url> <cpu|-> [ids|*]`` loads ``contenders()``
(the given ids only) from the peer module (one of ``bench/peers/*_peer.py``), then
answers one JSON command per line on stdin with one JSON line on the original stdout
(the library's own prints go to stderr). Only the standard library and ``redis`` are
imported here, so the same file works in every venv, including the pinned ones (old
Flask, old Pyramid, old redis-py).

What lives here: the request shapes and payloads every library runs, the "dialect"
each library's session object is driven through, the framework glue (plain WSGI,
Flask, Bottle, Pyramid, plain ASGI, Starlette, Tornado), in-process drivers, real
servers for the race test and the real-HTTP figure, the raw redis-py floors, and
round-trip counting.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import inspect
import io
import json
import os
import platform
import socket
import sys
import threading
import time
import traceback
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from importlib import metadata
from typing import Any
from urllib.parse import parse_qs, urlsplit

# ------------------------------------------------------------------ the workload

FIELD = "cart"  # the key of the single-key operations (same as bench/core_ops.py)
VALUE = [101, 202, 303]
COUNTER = "n"
USER = "user"
PAYLOAD = {"user_id": 12345, "name": "alice", "cart": [1, 2, 3]}  # the memory test's session
OPS = ("set", "get", "in", "delete", "incr")
SHAPES = ("nothing", "read", "write", "typical")
TTL = 14 * 24 * 3600  # every library that supports an idle timeout gets this one
DELAY = 0.002  # the simulated "database call" between a race request's read and its write
SECRET = "bench-secret-not-for-production"

Timed = Callable[[], Any]


@dataclass
class Op:
    """One timed operation: ``fn`` is timed, ``prep`` (if any) runs untimed before each call."""

    fn: Callable[[], Any]
    prep: Callable[[], Any] | None = None


# ------------------------------------------------------------------ dialects


class Dialect:
    """How a request drives one library's (synchronous, dict-like) session object.

    Subclasses override what differs: string-only values, attribute access, an
    atomic increment, an explicit ``save()``.
    """

    def read(self, s: Any, key: str) -> Any:
        return s.get(key)

    def write(self, s: Any, key: str, value: Any) -> None:
        s[key] = value

    def write_many(self, s: Any, values: dict[str, Any]) -> None:
        s.update(values)

    def incr(self, s: Any, key: str) -> None:
        """The typical request's counter: the library's natural way."""
        s[key] += 1

    def bump(self, s: Any, key: str, pause: Callable[[], None]) -> None:
        """The race test's counter: read, the slow "database call", +1, write."""
        n = self.bump_read(s, key)
        pause()
        self.bump_write(s, key, n)

    def bump_read(self, s: Any, key: str) -> Any:
        return s[key]

    def bump_write(self, s: Any, key: str, n: Any) -> None:
        n += 1  # in place: a library whose counter value tracks `+=` sees an increment
        s[key] = n

    def dump(self, s: Any) -> dict[str, Any]:
        return dict(s.items())

    def finish(self, s: Any, wrote: bool) -> None:
        """End-of-request work the app itself must do (Beaker: ``save()``)."""


class AsyncDialect:
    """The asyncio twin of :class:`Dialect` (hashsession's ``AsyncSession``)."""

    async def read(self, s: Any, key: str) -> Any:
        raise NotImplementedError

    async def write(self, s: Any, key: str, value: Any) -> None:
        raise NotImplementedError

    async def write_many(self, s: Any, values: dict[str, Any]) -> None:
        raise NotImplementedError

    async def incr(self, s: Any, key: str) -> None:
        raise NotImplementedError

    async def bump(self, s: Any, key: str, pause: Callable[[], Awaitable[None]]) -> None:
        n = await self.read(s, key)
        await pause()
        await self.write(s, key, int(n) + 1)

    async def dump(self, s: Any) -> dict[str, Any]:
        raise NotImplementedError

    async def finish(self, s: Any, wrote: bool) -> None:
        pass


class SyncInAsync(AsyncDialect):
    """A synchronous session object used from an async handler (starsessions, redis-session
    under Tornado): the same calls, and the race's pause is an ``await``."""

    def __init__(self, sync: Dialect) -> None:
        self.sync = sync

    async def read(self, s: Any, key: str) -> Any:
        return self.sync.read(s, key)

    async def write(self, s: Any, key: str, value: Any) -> None:
        self.sync.write(s, key, value)

    async def write_many(self, s: Any, values: dict[str, Any]) -> None:
        self.sync.write_many(s, values)

    async def incr(self, s: Any, key: str) -> None:
        self.sync.incr(s, key)

    async def bump(self, s: Any, key: str, pause: Callable[[], Awaitable[None]]) -> None:
        n = self.sync.bump_read(s, key)
        await pause()
        self.sync.bump_write(s, key, n)

    async def dump(self, s: Any) -> dict[str, Any]:
        return self.sync.dump(s)

    async def finish(self, s: Any, wrote: bool) -> None:
        self.sync.finish(s, wrote)


def _race_keys(data: dict[str, Any]) -> int:
    return sum(1 for k in data if isinstance(k, str) and k[:1] == "k" and k[1:].isdigit())


def _counter(data: dict[str, Any]) -> int:
    raw = data.get(COUNTER, 0)
    if isinstance(raw, bytes):
        raw = raw.decode()
    try:
        return int(json.loads(raw)) if isinstance(raw, str) else int(raw)
    except (TypeError, ValueError):
        return -1


def act(d: Dialect, s: Any, action: str, i: int, pause: Callable[[], None]) -> str:
    """Run one request shape against a synchronous session; the response body."""
    wrote = True
    if action == "nothing":
        return "ok"
    if action == "start":
        d.write_many(s, {USER: "alice", COUNTER: 0})
    elif action == "read":
        d.read(s, USER)
        wrote = False
    elif action == "write":
        d.write(s, USER, "alice")
    elif action == "typical":
        d.read(s, USER)
        d.incr(s, COUNTER)
    elif action == "race_key":
        d.read(s, USER)
        pause()
        d.write(s, f"k{i}", 1)
    elif action == "race_incr":
        d.bump(s, COUNTER, pause)
    elif action == "fill":
        d.write_many(s, PAYLOAD)
    elif action == "dump":
        data = d.dump(s)
        d.finish(s, False)
        return json.dumps({"keys": _race_keys(data), "n": _counter(data)})
    else:
        raise LookupError(action)
    d.finish(s, wrote)
    return "ok"


async def aact(
    d: AsyncDialect, s: Any, action: str, i: int, pause: Callable[[], Awaitable[None]]
) -> str:
    """:func:`act` for async handlers."""
    wrote = True
    if action == "nothing":
        return "ok"
    if action == "start":
        await d.write_many(s, {USER: "alice", COUNTER: 0})
    elif action == "read":
        await d.read(s, USER)
        wrote = False
    elif action == "write":
        await d.write(s, USER, "alice")
    elif action == "typical":
        await d.read(s, USER)
        await d.incr(s, COUNTER)
    elif action == "race_key":
        await d.read(s, USER)
        await pause()
        await d.write(s, f"k{i}", 1)
    elif action == "race_incr":
        await d.bump(s, COUNTER, pause)
    elif action == "fill":
        await d.write_many(s, PAYLOAD)
    elif action == "dump":
        data = await d.dump(s)
        await d.finish(s, False)
        return json.dumps({"keys": _race_keys(data), "n": _counter(data)})
    else:
        raise LookupError(action)
    await d.finish(s, wrote)
    return "ok"


def sync_pause() -> None:
    time.sleep(DELAY)


async def async_pause() -> None:
    await asyncio.sleep(DELAY)


def needs_session(action: str) -> bool:
    return action != "nothing"


# ------------------------------------------------------------------ framework glue


def plain_wsgi(get_session: Callable[[dict[str, Any]], Any], d: Dialect) -> Any:
    """A bare WSGI app: ``/<action>?i=N``; the session comes from ``get_session(environ)``."""

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        action = environ["PATH_INFO"].strip("/")
        i = int(parse_qs(environ.get("QUERY_STRING", "")).get("i", ["0"])[0])
        body = (
            act(d, get_session(environ), action, i, sync_pause) if needs_session(action) else "ok"
        )
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body.encode()]

    return app


def flask_app(get_session: Callable[[], Any], d: Dialect, setup: Callable[[Any], None]) -> Any:
    """A Flask app with one catch-all view; ``setup(app)`` installs the session library."""
    import flask

    app = flask.Flask("bench")
    app.config["SECRET_KEY"] = SECRET
    setup(app)

    @app.route("/<action>")
    def view(action: str) -> str:
        i = int(flask.request.args.get("i", "0"))
        if not needs_session(action):
            return "ok"
        return act(d, get_session(), action, i, sync_pause)

    return app


def bottle_app(
    d: Dialect, setup: Callable[[Any], None], from_environ: Callable[[Any], Any] | None = None
) -> Any:
    """A Bottle app whose one route names ``session`` (as plugins expect), or reads the
    session from the environ with ``from_environ`` when a WSGI middleware provides it.

    The views take their state as default arguments, not from a closure: Bottle 0.13's
    ``get_undecorated_callback`` (which plugins may call) loops forever on a closure that
    captures no callable.
    """
    import bottle

    app = bottle.Bottle()
    setup(app)
    if from_environ is None:

        def view(action: str, session: Any, _d: Dialect = d, _rq: Any = bottle.request) -> str:
            if not needs_session(action):
                return "ok"
            return act(_d, session, action, int(_rq.query.get("i", "0")), sync_pause)

        app.route("/<action>", callback=view)
    else:

        def view_env(
            action: str, _d: Dialect = d, _rq: Any = bottle.request, _get: Any = from_environ
        ) -> str:
            if not needs_session(action):
                return "ok"
            return act(_d, _get(_rq), action, int(_rq.query.get("i", "0")), sync_pause)

        app.route("/<action>", callback=view_env)
    return app


def pyramid_app(get_session: Callable[[Any], Any], d: Dialect, setup: Callable[[Any], None]) -> Any:
    """A Pyramid app with one route; ``setup(config)`` installs the session factory."""
    from pyramid.config import Configurator
    from pyramid.response import Response

    def view(request: Any) -> Any:
        action = request.matchdict["action"]
        i = int(request.params.get("i", "0"))
        if not needs_session(action):
            return Response("ok")
        return Response(act(d, get_session(request), action, i, sync_pause))

    with Configurator(settings={}) as config:
        setup(config)
        config.add_route("action", "/{action}")
        config.add_view(view, route_name="action")
        return config.make_wsgi_app()


def plain_asgi(get_session: Callable[[Any], Awaitable[Any]], d: AsyncDialect) -> Any:
    """A bare ASGI app: ``/<action>?i=N``."""

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        action = scope["path"].strip("/")
        i = int(parse_qs(scope.get("query_string", b"").decode()).get("i", ["0"])[0])
        if needs_session(action):
            body = await aact(d, await get_session(scope), action, i, async_pause)
        else:
            body = "ok"
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain")],
            }
        )
        await send({"type": "http.response.body", "body": body.encode()})

    return app


def starlette_app(
    get_session: Callable[[Any], Awaitable[Any]], d: AsyncDialect, middleware: list[Any]
) -> Any:
    """A Starlette app with one route, behind ``middleware``."""
    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    async def view(request: Any) -> Any:
        action = request.path_params["action"]
        i = int(request.query_params.get("i", "0"))
        if not needs_session(action):
            return PlainTextResponse("ok")
        s = await get_session(request)
        return PlainTextResponse(await aact(d, s, action, i, async_pause))

    return Starlette(routes=[Route("/{action}", view)], middleware=middleware)


def tornado_app(
    base: type,
    get_session: Callable[[Any], Any],
    d: AsyncDialect,
    settings: dict[str, Any],
) -> Any:
    """A Tornado app with one handler class derived from ``base`` (the library's mixin)."""
    import tornado.web

    class Handler(base):  # type: ignore[misc]
        async def get(self, action: str) -> None:
            i = int(self.get_query_argument("i", "0"))
            if not needs_session(action):
                self.write("ok")
                return
            self.write(await aact(d, get_session(self), action, i, async_pause))

    return tornado.web.Application([(r"/(\w+)", Handler)], **settings)


# ------------------------------------------------------------------ in-process drivers


@dataclass
class Reply:
    status: int
    set_cookies: list[str]
    body: bytes


def cookie_from(set_cookies: list[str]) -> str:
    """The ``Cookie`` header a browser would send back: name=value of each Set-Cookie."""
    pairs = [sc.split(";", 1)[0].strip() for sc in set_cookies]
    return "; ".join(p for p in pairs if "=" in p and p.split("=", 1)[1] not in ("", '""', "''"))


class WsgiDriver:
    """Calls a WSGI app directly with a prepared environ."""

    is_async = False

    def __init__(self, app: Any) -> None:
        self.app = app
        self.base = {
            "REQUEST_METHOD": "GET",
            "SCRIPT_NAME": "",
            "SERVER_NAME": "localhost",
            "SERVER_PORT": "80",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "HTTP_HOST": "localhost",
            "REMOTE_ADDR": "127.0.0.1",
            "wsgi.version": (1, 0),
            "wsgi.url_scheme": "http",
            "wsgi.errors": sys.stderr,
            "wsgi.multithread": False,
            "wsgi.multiprocess": False,
            "wsgi.run_once": False,
        }

    def call(self, action: str, cookie: str | None, i: int = 0) -> Reply:
        environ = dict(self.base)
        environ["PATH_INFO"] = "/" + action
        environ["QUERY_STRING"] = f"i={i}"
        environ["wsgi.input"] = io.BytesIO(b"")
        if cookie:
            environ["HTTP_COOKIE"] = cookie
        got: list[Any] = []

        def start_response(status: str, headers: list[tuple[str, str]], exc: Any = None) -> Any:
            got[:] = [status, headers]
            return lambda data: None

        result = self.app(environ, start_response)
        try:
            body = b"".join(result)
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
        status, headers = got
        cookies = [v for k, v in headers if k.lower() == "set-cookie"]
        return Reply(int(status.split()[0]), cookies, body)


class AsgiDriver:
    """Awaits an ASGI app directly with a prepared scope."""

    is_async = True

    def __init__(self, app: Any) -> None:
        self.app = app

    async def acall(self, action: str, cookie: str | None, i: int = 0) -> Reply:
        headers = [(b"host", b"localhost")]
        if cookie:
            headers.append((b"cookie", cookie.encode("latin-1")))
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": "/" + action,
            "raw_path": ("/" + action).encode(),
            "query_string": f"i={i}".encode(),
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 40000),
            "server": ("localhost", 80),
            "state": {},
        }
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        await self.app(scope, receive, send)
        start = next(m for m in sent if m["type"] == "http.response.start")
        cookies = [
            v.decode("latin-1") for k, v in start.get("headers", ()) if k.lower() == b"set-cookie"
        ]
        body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
        return Reply(int(start["status"]), cookies, body)


class _TornadoConnection:
    """Just enough of Tornado's HTTP connection for a handler to write its response to."""

    def __init__(self) -> None:
        loop = asyncio.get_running_loop()
        self.done: asyncio.Future[None] = loop.create_future()
        self.start: Any = None
        self.headers: Any = None
        self.chunks: list[bytes] = []

    @staticmethod
    def _ready() -> asyncio.Future[None]:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        fut.set_result(None)
        return fut

    def set_close_callback(self, callback: Any) -> None:
        pass

    def write_headers(self, start_line: Any, headers: Any, chunk: bytes | None = None) -> Any:
        self.start, self.headers = start_line, headers
        if chunk:
            self.chunks.append(chunk)
        return self._ready()

    def write(self, chunk: bytes) -> Any:
        self.chunks.append(chunk)
        return self._ready()

    def finish(self) -> None:
        if not self.done.done():
            self.done.set_result(None)


class TornadoDriver:
    """Runs a Tornado ``Application`` on a request object, without a socket."""

    is_async = True

    def __init__(self, app: Any) -> None:
        self.app = app

    async def acall(self, action: str, cookie: str | None, i: int = 0) -> Reply:
        from tornado.httputil import HTTPHeaders, HTTPServerRequest, RequestStartLine

        headers = HTTPHeaders({"Host": "localhost"})
        if cookie:
            headers["Cookie"] = cookie
        conn = _TornadoConnection()
        request = HTTPServerRequest(
            start_line=RequestStartLine("GET", f"/{action}?i={i}", "HTTP/1.1"),
            headers=headers,
            connection=conn,  # type: ignore[arg-type]
        )
        self.app(request)
        await conn.done
        cookies = conn.headers.get_list("Set-Cookie") if conn.headers is not None else []
        return Reply(int(conn.start.code), cookies, b"".join(conn.chunks))


# ------------------------------------------------------------------ real servers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class WsgiServer:
    """A real threaded HTTP server (stdlib ``wsgiref`` + ``ThreadingMixIn``): one thread per
    connection, so concurrent requests really run concurrently."""

    def __init__(self, app: Any) -> None:
        from socketserver import ThreadingMixIn
        from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

        class Server(ThreadingMixIn, WSGIServer):
            daemon_threads = True
            request_queue_size = 1024
            allow_reuse_address = True

        class Quiet(WSGIRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = make_server("127.0.0.1", 0, app, server_class=Server, handler_class=Quiet)
        self.port = int(self.server.server_address[1])
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


class WaitressServer:
    """waitress serving a WSGI app (its default 4 worker threads, HTTP/1.1 keep-alive), in a
    thread: the real-HTTP throughput figure's WSGI server."""

    def __init__(self, app: Any) -> None:
        import waitress.server

        self.server: Any = waitress.server.create_server(
            app, host="127.0.0.1", port=0, threads=4, backlog=1024
        )
        self.port = int(self.server.effective_port)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.server.close()
        self.thread.join(10)


class UvicornServer:
    """uvicorn serving an ASGI app on its own event loop, in a thread."""

    def __init__(self, app: Any) -> None:
        import uvicorn

        self.port = free_port()
        config = uvicorn.Config(
            app,
            host="127.0.0.1",
            port=self.port,
            log_level="warning",
            lifespan="off",
            access_log=False,
            backlog=1024,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


class TornadoServer:
    """Tornado's own ``HTTPServer`` on a fresh event loop, in a thread."""

    def __init__(self, app: Any) -> None:
        from tornado.httpserver import HTTPServer
        from tornado.netutil import bind_sockets

        sockets = bind_sockets(0, "127.0.0.1", backlog=1024)
        self.port = int(sockets[0].getsockname()[1])
        self.loop = asyncio.new_event_loop()
        self.stopping: asyncio.Event | None = None
        started = threading.Event()

        async def serve() -> None:
            server = HTTPServer(app)
            server.add_sockets(sockets)
            self.stopping = asyncio.Event()
            started.set()
            await self.stopping.wait()
            server.stop()

        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(serve(),))
        self.thread.daemon = True
        self.thread.start()
        if not started.wait(20):
            raise RuntimeError("tornado did not start")

    def stop(self) -> None:
        stopping = self.stopping
        if stopping is not None:
            self.loop.call_soon_threadsafe(stopping.set)
        self.thread.join(10)


# ------------------------------------------------------------------ floors and helpers


class BareSocket:
    """A plain socket for untimed re-sets before each timed delete, so no library or redis-py
    code runs between two timed calls (see bench/core_ops.py for why)."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 0))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def sender(self, *parts: str | bytes) -> Callable[[], None]:
        items = [p.encode() if isinstance(p, str) else p for p in parts]
        message = b"*%d\r\n" % len(items) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in items)
        sendall, recv = self.sock.sendall, self.sock.recv

        def send() -> None:
            sendall(message)
            reply = recv(64)
            while not reply.endswith(b"\r\n"):
                reply += recv(64)
            if reply[:1] not in (b":", b"+"):
                raise RuntimeError(f"unexpected reply to a re-set: {reply!r}")

        return send

    def close(self) -> None:
        self.sock.close()


def new_id() -> str:
    return os.urandom(16).hex()


def raw_floor_ops(url: str, bare: BareSocket) -> dict[str, Op]:
    """The floor: one raw redis-py command per operation on a plain hash."""
    import redis

    r = redis.Redis.from_url(url)
    key = "floor:" + new_id()
    enc = json.dumps(VALUE).encode()
    r.hset(key, mapping={FIELD: enc, COUNTER: 0})
    return {
        "set": Op(lambda: r.hset(key, FIELD, enc)),
        "get": Op(lambda: r.hget(key, FIELD)),
        "in": Op(lambda: r.hexists(key, FIELD)),
        "delete": Op(lambda: r.hdel(key, FIELD), bare.sender("HSET", key, FIELD, enc)),
        "incr": Op(lambda: r.hincrby(key, COUNTER, 1)),
    }


def async_floor_ops(url: str, bare: BareSocket) -> dict[str, Op]:
    """The asyncio floor: one ``redis.asyncio`` command per operation on a plain hash."""
    import redis.asyncio as aioredis

    r = aioredis.Redis.from_url(url)
    key = "afloor:" + new_id()
    enc = json.dumps(VALUE).encode()
    bare.sender("HSET", key, FIELD, enc)()
    bare.sender("HSET", key, COUNTER, "0")()

    async def aset() -> Any:
        return await r.hset(key, FIELD, enc)

    async def aget() -> Any:
        return await r.hget(key, FIELD)

    async def ain() -> Any:
        return await r.hexists(key, FIELD)

    async def adel() -> Any:
        return await r.hdel(key, FIELD)

    async def aincr() -> Any:
        return await r.hincrby(key, COUNTER, 1)

    return {
        "set": Op(aset),
        "get": Op(aget),
        "in": Op(ain),
        "delete": Op(adel, bare.sender("HSET", key, FIELD, enc)),
        "incr": Op(aincr),
    }


class Sends:
    """Counts packed sends (round trips) of every redis-py connection, sync and asyncio,
    while :meth:`counting` is active; the patch is removed afterwards so timings never
    pay for it."""

    def __init__(self) -> None:
        self.count = 0

    @contextlib.contextmanager
    def counting(self) -> Iterator[None]:
        import redis.connection

        patched: list[tuple[Any, Any]] = []
        sync_cls: Any = redis.connection.Connection
        sync_orig = sync_cls.send_packed_command
        tally = self

        def send_packed_command(conn: Any, command: Any, *args: Any, **kwargs: Any) -> Any:
            tally.count += 1
            return sync_orig(conn, command, *args, **kwargs)

        sync_cls.send_packed_command = send_packed_command
        patched.append((sync_cls, sync_orig))
        try:
            import redis.asyncio.connection as aconn

            async_cls: Any = aconn.Connection
            async_orig = async_cls.send_packed_command

            async def asend_packed_command(conn: Any, command: Any, *a: Any, **kw: Any) -> Any:
                tally.count += 1
                return await async_orig(conn, command, *a, **kw)

            async_cls.send_packed_command = asend_packed_command
            patched.append((async_cls, async_orig))
        except (ImportError, AttributeError):
            pass
        try:
            yield
        finally:
            for cls, orig in patched:
                cls.send_packed_command = orig


def versions(*dists: str) -> dict[str, str]:
    out = {}
    for dist in dists:
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


# ------------------------------------------------------------------ contenders


class Contender:
    """One library in one framework integration, as a peer module describes it.

    ``steady()``: operations on an already open session object (live libraries only);
    ``request()``: one request's worth of work for one operation (open from the cookie,
    the operation, end-of-request saving); ``build_app()``: the framework app serving the
    request shapes. Each may be missing; a string instead of an :class:`Op` says why.
    """

    library = ""
    integration = ""
    kind = "wsgi"  # wsgi | asgi | tornado ("" for a per-operation table only)
    framework = "WSGI"  # for comparing like with like: WSGI, ASGI, Flask, Bottle, ...
    floor = "sync"  # which raw floor the per-operation ratios use: sync | async
    memory = False  # the one integration per library whose memory per session is measured
    #: Served only in the real-HTTP throughput figure (a floor app that the in-process
    #: tables leave out).
    http_only = False
    dists: tuple[str, ...] = ()

    def __init__(self, url: str) -> None:
        self.url = url
        self.notes: list[str] = []

    def steady(self) -> dict[str, Op | str]:
        return {}

    def request(self) -> dict[str, Op | str]:
        return {}

    def build_app(self) -> Any:
        raise NotImplementedError

    def close(self) -> None:
        pass


def describe(exc: BaseException) -> str:
    last = traceback.extract_tb(exc.__traceback__)[-1:] if exc.__traceback__ else []
    where = f" (at {os.path.basename(last[0].filename)}:{last[0].lineno})" if last else ""
    return f"{type(exc).__name__}: {exc}{where}"


class Worker:
    """Holds the contenders of one peer module and answers the coordinator's commands."""

    def __init__(self, url: str, factories: dict[str, Callable[[str], Contender]]) -> None:
        self.url = url
        self.loop = asyncio.new_event_loop()
        asyncio.set_event_loop(self.loop)
        self.bare = BareSocket(url)
        self.contenders: dict[str, Contender] = {}
        self.errors: dict[str, str] = {}
        for cid, factory in factories.items():
            try:
                self.contenders[cid] = factory(url)
            except Exception as exc:
                self.errors[cid] = describe(exc)
                traceback.print_exc()
        self.tables: dict[tuple[str, str], dict[str, Op | str]] = {}
        self.apps: dict[str, Any] = {}
        self.cookies: dict[str, str] = {}
        self.servers: dict[str, Any] = {}
        self.sends = Sends()
        self.marker: Any = None

    # -- description

    def table(self, cid: str, which: str) -> dict[str, Op | str]:
        """The ops of one contender for one table, built once (in the worker's loop)."""
        key = (cid, which)
        if key not in self.tables:
            if cid == "floor":
                self.tables[key] = dict(raw_floor_ops(self.url, self.bare))
            elif cid == "afloor":
                self.tables[key] = dict(async_floor_ops(self.url, self.bare))
            else:
                c = self.contenders[cid]
                try:
                    self.tables[key] = c.steady() if which == "steady" else c.request()
                except Exception as exc:
                    traceback.print_exc()
                    self.tables[key] = dict.fromkeys(OPS, f"set-up failed: {describe(exc)}")
        return self.tables[key]

    def hello(self) -> dict[str, Any]:
        import redis

        out = []
        for cid, c in self.contenders.items():
            item: dict[str, Any] = {
                "id": cid,
                "library": c.library,
                "integration": c.integration,
                "kind": c.kind,
                "framework": c.framework,
                "floor": c.floor,
                "memory": c.memory,
                "http_only": c.http_only,
                "versions": versions(*c.dists),
            }
            for which in ("steady", "request"):
                ops = self.table(cid, which)
                item[which] = {
                    op: (True if isinstance(ops.get(op), Op) else ops.get(op, "not measured"))
                    for op in OPS
                }
            item["notes"] = list(c.notes)
            out.append(item)
        failed = [{"id": cid, "error": err} for cid, err in self.errors.items()]
        return {
            "ok": True,
            "python": platform.python_version(),
            "redis_py": redis.__version__,
            "pid": os.getpid(),
            "contenders": out,
            "failed": failed,
        }

    # -- timing

    def time_op(self, cid: str, which: str, op: str, n: int) -> list[int]:
        spec = self.table(cid, which)[op]
        assert isinstance(spec, Op), spec
        if inspect.iscoroutinefunction(spec.fn):
            return self.loop.run_until_complete(_time_async(spec, n))
        return _time_sync(spec, n)

    def _run(self, f: Callable[[], Any]) -> Any:
        result = f()
        if inspect.isawaitable(result):
            return self.loop.run_until_complete(result)
        return result

    def trips(self, cid: str, which: str, op: str, n: int) -> float:
        """Round trips (packed sends) per call of one op, prep excluded."""
        spec = self.table(cid, which)[op]
        assert isinstance(spec, Op), spec
        total = 0
        for i in range(n + 1):  # the first call is not counted: it may open a connection
            if spec.prep is not None:
                self._run(spec.prep)
            self.sends.count = 0
            with self.sends.counting():
                self._run(spec.fn)
            total += self.sends.count if i else 0
        return total / n

    # -- apps

    def driver(self, cid: str) -> Any:
        if cid not in self.apps:
            c = self.contenders[cid]
            app = c.build_app()
            self.apps[cid] = {"wsgi": WsgiDriver, "asgi": AsgiDriver, "tornado": TornadoDriver}[
                c.kind
            ](app)
        return self.apps[cid]

    def call(self, cid: str, action: str, cookie: str | None, i: int = 0) -> Reply:
        drv = self.driver(cid)
        if drv.is_async:
            reply: Reply = self.loop.run_until_complete(drv.acall(action, cookie, i))
        else:
            reply = drv.call(action, cookie, i)
        if reply.status != 200:
            raise RuntimeError(f"/{action} answered {reply.status}: {reply.body[:300]!r}")
        return reply

    def start_session(self, cid: str) -> dict[str, Any]:
        reply = self.call(cid, "start", None)
        cookie = cookie_from(reply.set_cookies)
        if not cookie:
            raise RuntimeError("/start sent no session cookie")
        self.cookies[cid] = cookie
        for _ in range(3):  # warm: later requests see an existing session
            self.call(cid, "typical", cookie)
        return {"ok": True}

    def shape(self, cid: str, shape: str, n: int, token: str) -> dict[str, Any]:
        """``n`` requests of one shape, bracketed by ECHO marks the coordinator's MONITOR sees."""
        import redis

        if self.marker is None:
            self.marker = redis.Redis.from_url(self.url)
        cookie = self.cookies[cid]
        for _ in range(2):
            self.call(cid, shape, cookie)
        set_cookie = 0
        self.marker.echo(f"{token}:begin")
        self.sends.count = 0
        with self.sends.counting():
            for _ in range(n):
                if self.call(cid, shape, cookie).set_cookies:
                    set_cookie += 1
        sends = self.sends.count
        self.marker.echo(f"{token}:end")
        return {"ok": True, "round_trips": sends / n, "set_cookie": set_cookie / n}

    def rps(self, cid: str, n: int) -> list[int]:
        drv, cookie = self.driver(cid), self.cookies[cid]
        clock = time.perf_counter_ns
        out: list[int] = []
        if drv.is_async:

            async def run() -> None:
                acall = drv.acall
                for _ in range(n):
                    t0 = clock()
                    reply = await acall("typical", cookie)
                    out.append(clock() - t0)
                    if reply.status != 200:
                        raise RuntimeError(f"/typical answered {reply.status}")

            self.loop.run_until_complete(run())
        else:
            call = drv.call
            for _ in range(n):
                t0 = clock()
                reply = call("typical", cookie)
                out.append(clock() - t0)
                if reply.status != 200:
                    raise RuntimeError(f"/typical answered {reply.status}")
        return out

    def fill(self, cid: str, n: int) -> dict[str, Any]:
        """``n`` new sessions, each written with the payload by one request without a cookie."""
        drv = self.driver(cid)
        bad: list[str] = []
        if drv.is_async:

            async def run() -> None:
                for _ in range(n):
                    reply = await drv.acall("fill", None)
                    if reply.status != 200:
                        bad.append(str(reply.status))

            self.loop.run_until_complete(run())
        else:
            for _ in range(n):
                reply = drv.call("fill", None)
                if reply.status != 200:
                    bad.append(str(reply.status))
        return {"ok": True, "errors": len(bad), "first_error": bad[0] if bad else None}

    def serve(self, cid: str, server: str = "") -> dict[str, Any]:
        """A real HTTP server for one contender's app: the race test's default for its kind,
        or the one named (``waitress``, ``uvicorn``, ``wsgiref``, ``tornado``)."""
        c = self.contenders[cid]
        app = c.build_app()  # a fresh app: asyncio clients must not cross event loops
        kinds: dict[str, Any] = {
            "wsgi": WsgiServer,
            "asgi": UvicornServer,
            "tornado": TornadoServer,
        }
        named: dict[str, Any] = {
            "waitress": WaitressServer,
            "uvicorn": UvicornServer,
            "wsgiref": WsgiServer,
            "tornado": TornadoServer,
        }
        running = (named[server] if server else kinds[c.kind])(app)
        self.servers[cid] = running
        return {"ok": True, "port": running.port, "server": server or c.kind}

    def unserve(self, cid: str) -> dict[str, Any]:
        server = self.servers.pop(cid, None)
        if server is not None:
            server.stop()
        return {"ok": True}

    # -- dispatch

    def handle(self, msg: dict[str, Any]) -> dict[str, Any]:
        cmd = msg["cmd"]
        if cmd == "time":
            return {"ok": True, "ns": self.time_op(msg["cid"], msg["table"], msg["op"], msg["n"])}
        if cmd == "trips":
            n = self.trips(msg["cid"], msg["table"], msg["op"], msg["n"])
            return {"ok": True, "round_trips": n}
        if cmd == "start":
            return self.start_session(msg["cid"])
        if cmd == "shape":
            return self.shape(msg["cid"], msg["shape"], msg["n"], msg["token"])
        if cmd == "rps":
            return {"ok": True, "ns": self.rps(msg["cid"], msg["n"])}
        if cmd == "fill":
            return self.fill(msg["cid"], msg["n"])
        if cmd == "serve":
            return self.serve(msg["cid"], msg.get("server", ""))
        if cmd == "unserve":
            return self.unserve(msg["cid"])
        raise LookupError(f"unknown command {cmd!r}")

    def close(self) -> None:
        for cid in list(self.servers):
            with contextlib.suppress(Exception):
                self.unserve(cid)
        for c in self.contenders.values():
            with contextlib.suppress(Exception):
                c.close()
        self.bare.close()


def _time_sync(spec: Op, n: int) -> list[int]:
    fn, prep, clock = spec.fn, spec.prep, time.perf_counter_ns
    out: list[int] = []
    append = out.append
    if prep is None:
        for _ in range(n):
            t0 = clock()
            fn()
            append(clock() - t0)
    else:
        for _ in range(n):
            prep()
            t0 = clock()
            fn()
            append(clock() - t0)
    return out


async def _time_async(spec: Op, n: int) -> list[int]:
    fn, prep, clock = spec.fn, spec.prep, time.perf_counter_ns
    prep_async = prep is not None and inspect.iscoroutinefunction(prep)
    out: list[int] = []
    for _ in range(n):
        if prep is not None:
            if prep_async:
                await prep()
            else:
                prep()
        t0 = clock()
        await fn()
        out.append(clock() - t0)
    return out


def load_module(path: str) -> Any:
    spec = importlib.util.spec_from_file_location("bench_peer_module", path)
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_peer_module"] = module
    spec.loader.exec_module(module)
    return module


def main(argv: list[str]) -> int:
    module_path, url, cpu = argv[1], argv[2], argv[3]
    keep = set(argv[4].split(",")) if len(argv) > 4 and argv[4] != "*" else None
    channel = os.fdopen(os.dup(1), "w", buffering=1, encoding="utf-8")
    os.dup2(2, 1)  # whatever the libraries print goes to stderr, not into the protocol

    def send(obj: dict[str, Any]) -> None:
        channel.write(json.dumps(obj) + "\n")
        channel.flush()

    if cpu != "-":
        os.sched_setaffinity(0, {int(cpu)})
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    sys.modules.setdefault("peerkit", sys.modules[__name__])  # one Op class, not two
    try:
        module = load_module(module_path)
        factories = module.contenders()
        if keep is not None:
            factories = {cid: f for cid, f in factories.items() if cid in keep}
        worker = Worker(url, factories)
        hello = worker.hello()
    except BaseException as exc:
        traceback.print_exc()
        send({"ok": False, "error": describe(exc)})
        return 1
    send(hello)
    for line in sys.stdin:
        msg = json.loads(line)
        if msg.get("cmd") == "quit":
            break
        try:
            reply = worker.handle(msg)
        except BaseException as exc:
            traceback.print_exc()
            reply = {"ok": False, "error": describe(exc)}
        send(reply)
    worker.close()
    send({"ok": True, "bye": True})
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
