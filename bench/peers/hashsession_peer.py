"""hashsession in every integration it has, plus the raw redis-py floor app (main bench venv).

Framework adapters that other work is still adding (``hashsession.flask``,
``hashsession.bottle``, ``hashsession.pyramid``) are used when they import and set up;
otherwise that framework is measured through ``hashsession.wsgi.SessionMiddleware`` and
the integration label and notes say so.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from typing import Any

import redis

import hashsession
from hashsession import SessionStore
from hashsession.aio import AsyncSessionStore
from hashsession.asgi import SessionMiddleware as AsgiSessionMiddleware
from hashsession.asgi import session_of
from hashsession.wsgi import SessionMiddleware as WsgiSessionMiddleware
from peerkit import (
    COUNTER,
    FIELD,
    TTL,
    USER,
    VALUE,
    AsyncDialect,
    BareSocket,
    Contender,
    Dialect,
    Op,
    bottle_app,
    cookie_from,
    flask_app,
    new_id,
    plain_asgi,
    plain_wsgi,
    pyramid_app,
    starlette_app,
    tornado_app,
)

HS_DISTS = ("hashsession", "redis")
#: The untouched-request pair of hashsession's one-operation table (``peers.py`` times it).
UNTOUCHED, UNTOUCHED_BARE = "untouched", "untouched-bare"
#: The settings of the near-cache contenders (issue 17): the default bounds.
NEAR = {"near_cache": True}
#: The library name in the tables; ``peers.py --baseline`` runs an earlier hashsession
#: under another name, so that it is measured as a peer beside this one.
LIBRARY = os.environ.get("HASHSESSION_BENCH_LIBRARY", "hashsession")


class HsDialect(Dialect):
    """hashsession's Session: ``incr`` is one atomic command; the race's ``n = s["n"]``,
    pause, ``n += 1``, ``s["n"] = n`` is already atomic (the ``+=`` becomes HINCRBY)."""

    def incr(self, s: Any, key: str) -> None:
        s.incr(key)

    def dump(self, s: Any) -> dict[str, Any]:
        return dict(s.to_dict())


class HsAsyncDialect(AsyncDialect):
    """hashsession's AsyncSession: the race reads the counter, pauses, then ``incr``."""

    async def read(self, s: Any, key: str) -> Any:
        return await s.get(key)

    async def write(self, s: Any, key: str, value: Any) -> None:
        await s.set(key, value)

    async def write_many(self, s: Any, values: dict[str, Any]) -> None:
        await s.update(values)

    async def incr(self, s: Any, key: str) -> None:
        await s.incr(key)

    async def bump(self, s: Any, key: str, pause: Any) -> None:
        await s.get(key)
        await pause()
        await s.incr(key)

    async def dump(self, s: Any) -> dict[str, Any]:
        return dict(await s.to_dict())


# ------------------------------------------------------------------ per-operation tables


_bench: dict[str, Any] = {}


def core_bench(url: str) -> Any:
    """bench/core_ops.py's ``Bench`` (hashsession, raw same-commands), built and verified once."""
    if "b" not in _bench:
        import core_ops

        b = core_ops.Bench(url)
        try:
            core_ops.verify_commands(b, url)
        except SystemExit as exc:  # it exits on a mismatch; here that is one contender's error
            raise RuntimeError(str(exc)) from None
        _bench["b"] = b
        _bench["mod"] = core_ops
    return _bench["b"]


class HsOps(Contender):
    """The per-operation tables for hashsession (not an app of its own)."""

    library = LIBRARY
    integration = "Session API (sync)"
    kind = ""
    framework = ""
    dists = HS_DISTS

    def steady(self) -> dict[str, Op | str]:
        b = core_bench(self.url)
        hs = _bench["mod"].HS
        return {
            op: Op(b.timed(hs, op), b.prep(hs, op)) for op in ("set", "get", "in", "delete", "incr")
        }

    def store(self) -> SessionStore:
        return SessionStore(redis=self.url)

    def request(self) -> dict[str, Op | str]:
        store = self.store()
        first = store.open()
        first.update({FIELD: VALUE, COUNTER: 0})
        cookie = cookie_from([v for k, v in store.response_headers(first) if k == "Set-Cookie"])
        key = first.core.key
        assert key is not None
        bare = BareSocket(self.url)
        enc = json.dumps(VALUE)
        open_, headers = store.open, store.response_headers

        def r_set() -> None:
            s = open_(cookie)
            s[FIELD] = VALUE
            headers(s)

        def r_get() -> None:
            s = open_(cookie)
            s[FIELD]
            headers(s)

        def r_in() -> None:
            s = open_(cookie)
            FIELD in s  # noqa: B015
            headers(s)

        def r_delete() -> None:
            s = open_(cookie)
            del s[FIELD]
            headers(s)

        def r_incr() -> None:
            s = open_(cookie)
            s.incr(COUNTER)
            headers(s)

        # An untouched request through the WSGI middleware, and the same app bare: the
        # difference is our own time for a request that never uses its session.
        def bare_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [b"ok"]

        wrapped = WsgiSessionMiddleware(bare_app, store=store)
        environ = {
            "HTTP_COOKIE": f"_ga=GA1.2.3; {cookie}; theme=dark",
            "wsgi.url_scheme": "https",
            "HTTP_HOST": "example.com",
            "PATH_INFO": "/",
        }

        def started(status: str, headers: Any, exc_info: Any = None) -> None:
            return None

        return {
            "set": Op(r_set),
            "get": Op(r_get),
            "in": Op(r_in),
            "delete": Op(r_delete, bare.sender("HSET", key, FIELD, enc)),
            "incr": Op(r_incr),
            UNTOUCHED: Op(lambda: wrapped(environ, started)),
            UNTOUCHED_BARE: Op(lambda: bare_app(environ, started)),
        }


class HsNearOps(HsOps):
    """The same one-operation requests with ``near_cache=True``: a read of a warm session
    is answered from memory (per-request table only; the open-session table is core_ops')."""

    library = f"{LIBRARY} (near_cache)"
    integration = "Session API (sync), near_cache=True"

    def steady(self) -> dict[str, Op | str]:
        return {}

    def store(self) -> SessionStore:
        return SessionStore(redis=self.url, **NEAR)


class SameCommands(Contender):
    """Raw redis-py sending exactly the commands a steady Session sends (bench/core_ops.py)."""

    library = "raw same-commands"
    integration = "redis-py execute_command, the Session's own commands"
    kind = ""
    framework = ""
    dists = ("redis",)

    def steady(self) -> dict[str, Op | str]:
        b = core_bench(self.url)
        same = _bench["mod"].SAME
        return {
            op: Op(b.timed(same, op), b.prep(same, op))
            for op in ("set", "get", "in", "delete", "incr")
        }


# ------------------------------------------------------------------ the floor app


class RawApp(Contender):
    """The floor: a bare WSGI app doing the request shapes with raw redis-py on one hash,
    cookie parsed by hand, no session library (no TTL refresh, no signing, no checks)."""

    library = "raw redis-py (floor)"
    integration = "bare WSGI app, hand-rolled cookie"
    kind = "wsgi"
    memory = True
    dists = ("redis",)

    def build_app(self) -> Any:
        r = redis.Redis.from_url(self.url)
        sleep = time.sleep

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
            action = environ["PATH_INFO"].strip("/")
            jar = dict(
                p.strip().split("=", 1)
                for p in environ.get("HTTP_COOKIE", "").split(";")
                if "=" in p
            )
            headers = [("Content-Type", "text/plain")]
            key = "raw:" + jar.get("raw", "")
            body = b"ok"
            if action in ("start", "fill"):
                sid = new_id()
                key = "raw:" + sid
                pipe = r.pipeline(transaction=False)
                if action == "start":
                    pipe.hset(key, mapping={USER: json.dumps("alice"), COUNTER: 0})
                else:
                    pipe.hset(
                        key,
                        mapping={"user_id": "12345", "name": '"alice"', "cart": "[1, 2, 3]"},
                    )
                pipe.expire(key, TTL)
                pipe.execute()
                headers.append(("Set-Cookie", f"raw={sid}; Path=/; HttpOnly"))
            elif action == "read":
                r.hget(key, USER)
            elif action == "write":
                r.hset(key, USER, '"alice"')
            elif action == "typical":
                r.hget(key, USER)
                r.hincrby(key, COUNTER, 1)
            elif action == "race_key":
                r.hget(key, USER)
                sleep(0.002)
                r.hset(key, f"k{environ['QUERY_STRING'].split('=')[1]}", 1)
            elif action == "race_incr":
                r.hget(key, COUNTER)
                sleep(0.002)
                r.hincrby(key, COUNTER, 1)
            elif action == "dump":
                raw: dict[Any, Any] = r.hgetall(key)
                data = {k.decode(): v for k, v in raw.items()}
                keys = sum(1 for k in data if k[:1] == "k" and k[1:].isdigit())
                body = json.dumps({"keys": keys, "n": int(data.get(COUNTER, b"-1"))}).encode()
            start_response("200 OK", headers)
            return [body]

        return app


class RawAsgiApp(Contender):
    """The asyncio floor app for the real-HTTP figure: a bare ASGI app doing the request
    shapes with raw ``redis.asyncio`` on one hash, cookie parsed by hand, no session library;
    the same commands per shape as :class:`RawApp`."""

    library = "raw redis.asyncio (floor)"
    integration = "bare ASGI app, hand-rolled cookie"
    kind = "asgi"
    framework = "ASGI"
    floor = "async"
    http_only = True
    dists = ("redis",)

    def build_app(self) -> Any:
        import redis.asyncio as aioredis

        r = aioredis.Redis.from_url(self.url)  # connects on first use, in the server's loop

        async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] != "http":
                return
            action = scope["path"].strip("/")
            cookie = next((v for k, v in scope["headers"] if k == b"cookie"), b"").decode()
            jar = dict(p.strip().split("=", 1) for p in cookie.split(";") if "=" in p)
            headers = [(b"content-type", b"text/plain")]
            key = "raw:" + jar.get("raw", "")
            if action == "start":
                sid = new_id()
                key = "raw:" + sid
                pipe = r.pipeline(transaction=False)
                pipe.hset(key, mapping={USER: json.dumps("alice"), COUNTER: 0})
                pipe.expire(key, TTL)
                await pipe.execute()
                headers.append((b"set-cookie", f"raw={sid}; Path=/; HttpOnly".encode()))
            elif action == "read":
                await r.hget(key, USER)
            elif action == "write":
                await r.hset(key, USER, '"alice"')
            elif action == "typical":
                await r.hget(key, USER)
                await r.hincrby(key, COUNTER, 1)
            else:
                raise LookupError(action)
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            await send({"type": "http.response.body", "body": b"ok"})

        return app


# ------------------------------------------------------------------ integrations


class HsWsgi(Contender):
    library = LIBRARY
    integration = "hashsession.wsgi.SessionMiddleware, bare WSGI app"
    kind = "wsgi"
    memory = True
    dists = HS_DISTS

    def build_app(self) -> Any:
        app = plain_wsgi(lambda environ: environ["hashsession"], HsDialect())
        return WsgiSessionMiddleware(app, store=SessionStore(redis=self.url))


class HsWsgiNear(HsWsgi):
    """The WSGI middleware on a store with ``near_cache=True``."""

    library = f"{LIBRARY} (near_cache)"
    integration = "hashsession.wsgi.SessionMiddleware, near_cache=True, bare WSGI app"
    memory = False

    def build_app(self) -> Any:
        app = plain_wsgi(lambda environ: environ["hashsession"], HsDialect())
        return WsgiSessionMiddleware(app, store=SessionStore(redis=self.url, **NEAR))


class HsAsgi(Contender):
    library = LIBRARY
    integration = "hashsession.asgi.SessionMiddleware, bare ASGI app"
    kind = "asgi"
    framework = "ASGI"
    floor = "async"
    dists = HS_DISTS

    def build_app(self) -> Any:
        async def get(scope: Any) -> Any:
            return scope["session"]

        app = plain_asgi(get, HsAsyncDialect())
        return AsgiSessionMiddleware(app, store=AsyncSessionStore(redis=self.url))


class HsStarlette(Contender):
    library = LIBRARY
    integration = "hashsession.asgi.SessionMiddleware under Starlette"
    kind = "asgi"
    framework = "Starlette"
    floor = "async"
    dists = (*HS_DISTS, "starlette")

    def build_app(self) -> Any:
        from starlette.middleware import Middleware

        async def get(request: Any) -> Any:
            return session_of(request.scope)

        store = AsyncSessionStore(redis=self.url)
        return starlette_app(
            get, HsAsyncDialect(), [Middleware(AsgiSessionMiddleware, store=store)]
        )


class HsFlask(Contender):
    library = LIBRARY
    kind = "wsgi"
    framework = "Flask"
    dists = (*HS_DISTS, "flask")

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.adapter = _try_import("hashsession.flask", "HashSession")
        self.integration = (
            "hashsession.flask.HashSession (Flask)"
            if self.adapter
            else "hashsession.wsgi.SessionMiddleware around a Flask app"
        )
        if not self.adapter:
            self.notes.append(
                "hashsession.flask is not importable: Flask measured through the WSGI middleware"
            )
        else:
            _probe(self, "Flask")

    def build_app(self) -> Any:
        import flask

        store = SessionStore(redis=self.url)
        if self.adapter:
            adapter = self.adapter

            def setup(app: Any) -> None:
                app.config["HASHSESSION_STORE"] = store
                adapter(app)

            return flask_app(lambda: flask.session, HsDialect(), setup)
        app = flask_app(lambda: flask.request.environ["hashsession"], HsDialect(), lambda a: None)
        app.wsgi_app = WsgiSessionMiddleware(app.wsgi_app, store=store)
        return app


class HsBottle(Contender):
    library = LIBRARY
    kind = "wsgi"
    framework = "Bottle"
    dists = (*HS_DISTS, "bottle")

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.adapter = _try_import("hashsession.bottle", "SessionPlugin")
        self.integration = (
            "hashsession.bottle.SessionPlugin (Bottle)"
            if self.adapter
            else "hashsession.wsgi.SessionMiddleware around a Bottle app"
        )
        if not self.adapter:
            self.notes.append(
                "hashsession.bottle is not importable: Bottle measured through the WSGI middleware"
            )
        else:
            _probe(self, "Bottle")

    def build_app(self) -> Any:
        store = SessionStore(redis=self.url)
        if self.adapter:
            adapter = self.adapter
            return bottle_app(
                HsDialect(), lambda app: app.install(adapter(store=store, keyword="session"))
            )
        app = bottle_app(HsDialect(), lambda a: None, lambda req: req.environ["hashsession"])
        return WsgiSessionMiddleware(app, store=store)


class HsPyramid(Contender):
    library = LIBRARY
    kind = "wsgi"
    framework = "Pyramid"
    dists = (*HS_DISTS, "pyramid")

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.adapter = _try_import("hashsession.pyramid", None)
        self.integration = (
            'config.include("hashsession.pyramid") (Pyramid)'
            if self.adapter
            else "hashsession.wsgi.SessionMiddleware around a Pyramid app"
        )
        if not self.adapter:
            self.notes.append(
                "hashsession.pyramid is not importable: Pyramid measured through the WSGI "
                "middleware"
            )
        else:
            _probe(self, "Pyramid")

    def build_app(self) -> Any:
        if self.adapter:
            url = self.url

            def setup(config: Any) -> None:
                config.registry.settings["hashsession.redis"] = url
                config.include("hashsession.pyramid")

            return pyramid_app(lambda request: request.session, HsDialect(), setup)
        app = pyramid_app(
            lambda request: request.environ["hashsession"], HsDialect(), lambda c: None
        )
        return WsgiSessionMiddleware(app, store=SessionStore(redis=self.url))


class HsTornado(Contender):
    library = LIBRARY
    kind = "tornado"
    framework = "Tornado"
    floor = "async"
    dists = (*HS_DISTS, "tornado")

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.mixin = _try_import("hashsession.tornado", "SessionMixin")
        if not self.mixin:
            raise RuntimeError("hashsession.tornado is not importable (no Tornado integration)")
        self.integration = "hashsession.tornado.SessionMixin (Tornado)"

    def build_app(self) -> Any:
        store = AsyncSessionStore(redis=self.url)
        return tornado_app(
            self.mixin, lambda h: h.session, HsAsyncDialect(), {"hashsession_store": store}
        )


def _probe(c: Any, what: str) -> None:
    """Try the adapter once (build the app, one request); on failure fall back to the WSGI
    middleware and say why in the notes."""
    from peerkit import WsgiDriver

    try:
        reply = WsgiDriver(c.build_app()).call("start", None)
        if reply.status != 200 or not reply.set_cookies:
            raise RuntimeError(f"/start answered {reply.status}, Set-Cookie {reply.set_cookies}")
    except Exception as exc:
        c.adapter = None
        c.integration = f"hashsession.wsgi.SessionMiddleware around a {what} app"
        c.notes.append(
            f"hashsession.{what.lower()} imports but failed in this harness "
            f"({type(exc).__name__}: {exc}); {what} measured through the WSGI middleware"
        )


def _try_import(module: str, attr: str | None) -> Any:
    """The adapter if ``module`` imports (``attr`` from it, or the module itself), else None."""
    import importlib

    try:
        mod = importlib.import_module(module)
    except ImportError:
        return None
    return getattr(mod, attr, None) if attr else mod


def contenders() -> dict[str, Callable[[str], Contender]]:
    assert hashsession.__version__
    return {
        "raw": RawApp,
        "raw-asgi": RawAsgiApp,
        "hashsession": HsOps,
        "hs-near": HsNearOps,
        "same": SameCommands,
        "hs-wsgi": HsWsgi,
        "hs-wsgi-near": HsWsgiNear,
        "hs-asgi": HsAsgi,
        "hs-flask": HsFlask,
        "hs-bottle": HsBottle,
        "hs-pyramid": HsPyramid,
        "hs-starlette": HsStarlette,
        "hs-tornado": HsTornado,
    }
