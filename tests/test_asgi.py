"""hashsession.asgi.SessionMiddleware under Starlette, FastAPI and a real uvicorn server.

The middleware puts a lazy :class:`~hashsession.aio.AsyncSession` in
``scope["session"]`` (what Starlette's ``request.session`` reads) and adds
``Set-Cookie``/``Vary`` to ``http.response.start``. The frameworks' own test
clients drive it; the last tests run the app under uvicorn on a loopback port
and fire hundreds of concurrent requests at one session.
"""

from __future__ import annotations

import asyncio
import ssl
import threading
import time
import warnings
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Annotated, Any

import httpx
import pytest
import redis
import redis.asyncio as aioredis
import uvicorn
from fastapi import Depends, FastAPI, Request
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket

from counting import AsyncCounter
from hashsession import HeadersSentError
from hashsession.aio import AsyncSession, AsyncSessionStore
from hashsession.asgi import SessionMiddleware, session_of
from hashsession.scripts import EVERY

with warnings.catch_warnings():
    # Starlette 1.x prefers httpx2 for its TestClient; httpx works the same here.
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient


# --------------------------------------------------------------------------- helpers


class CountingStore:
    """An AsyncSessionStore whose Redis round trips are counted (one send = one trip)."""

    def __init__(self, url: str) -> None:
        self.counter = AsyncCounter(url)
        self.store = AsyncSessionStore(redis=self.counter.client, ttl=100)

    @property
    def count(self) -> int:
        return self.counter.count

    @count.setter
    def count(self, value: int) -> None:
        self.counter.count = value

    async def aclose(self) -> None:
        await self.store.aclose()
        await self.counter.aclose()


def session_cookie_headers(response: httpx.Response) -> list[str]:
    return [v for v in response.headers.get_list("set-cookie") if v.startswith("session=")]


def vary(response: httpx.Response) -> list[str]:
    return [p.strip() for v in response.headers.get_list("vary") for p in v.split(",")]


def session_key(store: AsyncSessionStore, cookie_value: str) -> str:
    session_id = store.config.id_from_cookie(cookie_value)
    assert session_id is not None
    return store.config.key_of(session_id)


@pytest.fixture
def warm(redis_client: redis.Redis) -> None:
    for script in EVERY:
        redis_client.script_load(script.source)


# --------------------------------------------------------------------------- a Starlette app

lifespan_events: list[str] = []


@asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    lifespan_events.append("startup")
    yield
    lifespan_events.append("shutdown")


async def identity(request: Any) -> Response:
    session = request.session
    return JSONResponse(
        {
            "is_async_session": isinstance(session, AsyncSession),
            "is_scope_session": session is request.scope["session"],
            "is_session_of": session is session_of(request.scope),
        }
    )


async def set_value(request: Any) -> Response:
    for key, value in request.query_params.items():
        await request.session.set(key, value)
    return JSONResponse({"id_set": request.session.id is not None})


async def get_value(request: Any) -> Response:
    key = request.query_params["key"]
    return JSONResponse({key: await request.session.get(key)})


async def untouched(request: Any) -> Response:
    return PlainTextResponse("hello")


async def incr(request: Any) -> Response:
    return JSONResponse({"n": await request.session.incr("n")})


async def stream(request: Any) -> Response:
    await request.session.set("streamed", True)

    async def body() -> AsyncIterator[bytes]:
        for part in (b"one ", b"two ", b"three"):
            yield part
            await asyncio.sleep(0)

    return StreamingResponse(body(), media_type="text/plain")


async def logout(request: Any) -> Response:
    await request.session.invalidate()
    return PlainTextResponse("bye")


async def login(request: Any) -> Response:
    await request.session.set("user", request.query_params["user"])
    await request.session.regenerate()
    return PlainTextResponse("welcome")


async def ws_endpoint(websocket: WebSocket) -> None:
    await websocket.accept()
    session = websocket.scope["session"]
    await websocket.send_json(
        {
            "is_async_session": isinstance(session, AsyncSession),
            "name": await session.get("name"),
            "all": await session.to_dict(),
        }
    )
    await websocket.close()


def make_starlette(store: AsyncSessionStore, **kwargs: Any) -> Starlette:
    return Starlette(
        routes=[
            Route("/identity", identity),
            Route("/set", set_value),
            Route("/get", get_value),
            Route("/untouched", untouched),
            Route("/incr", incr),
            Route("/stream", stream),
            Route("/logout", logout),
            Route("/login", login),
            WebSocketRoute("/ws", ws_endpoint),
        ],
        middleware=[Middleware(SessionMiddleware, store=store, **kwargs)],
        lifespan=lifespan,
    )


@contextmanager
def running(app: Any, store: AsyncSessionStore) -> Iterator[TestClient]:
    """A TestClient on one event loop for its whole life; the store is closed on that loop."""
    with TestClient(app) as client:
        try:
            yield client
        finally:
            assert client.portal is not None
            client.portal.call(store.aclose)


@pytest.fixture
def store(redis_url: str) -> AsyncSessionStore:
    return AsyncSessionStore(redis=redis_url, ttl=100)


@pytest.fixture
def client(store: AsyncSessionStore) -> Iterator[TestClient]:
    with running(make_starlette(store), store) as c:
        yield c


# --------------------------------------------------------------------------- Starlette


def test_request_session_is_the_async_session(client: TestClient) -> None:
    r = client.get("/identity")
    assert r.status_code == 200
    assert r.json() == {"is_async_session": True, "is_scope_session": True, "is_session_of": True}
    assert session_cookie_headers(r) == []  # looked at, never used: no cookie


def test_cookie_set_on_first_write_and_carried(
    client: TestClient, store: AsyncSessionStore, redis_client: redis.Redis
) -> None:
    r = client.get("/set", params={"name": "ann"})
    assert r.json() == {"id_set": True}
    [header] = session_cookie_headers(r)
    parts = [p.strip() for p in header.split(";")]
    assert "HttpOnly" in parts and "SameSite=Lax" in parts and "Path=/" in parts
    cookie = client.cookies["session"]
    assert header.startswith(f"session={cookie};")
    assert "Cookie" in vary(r)
    key = session_key(store, cookie)
    assert redis_client.hget(key, "name") == b'"ann"'
    assert redis_client.pttl(key) > 0
    # the client sends it back: the same session, and no new cookie
    r = client.get("/get", params={"key": "name"})
    assert r.json() == {"name": "ann"}
    assert session_cookie_headers(r) == []
    assert "Cookie" in vary(r)
    r = client.get("/set", params={"age": "7"})
    assert session_cookie_headers(r) == []
    assert client.get("/get", params={"key": "age"}).json() == {"age": "7"}
    assert redis_client.dbsize() == 1


def test_counter_across_requests(client: TestClient) -> None:
    assert [client.get("/incr").json()["n"] for _ in range(5)] == [1, 2, 3, 4, 5]


def test_untouched_session_costs_nothing(redis_url: str, warm: None) -> None:
    counting = CountingStore(redis_url)
    with TestClient(make_starlette(counting.store)) as client:
        client.get("/set", params={"a": "1"})
        assert client.cookies.get("session")
        counting.count = 0
        r = client.get("/untouched")
        assert r.text == "hello"
        assert counting.count == 0
        assert session_cookie_headers(r) == []
        assert "Cookie" not in vary(r)
        r = client.get("/identity")  # touching request.session itself sends nothing
        assert counting.count == 0
        client.cookies.clear()
        r = client.get("/untouched")
        assert counting.count == 0
        assert r.headers.get_list("set-cookie") == [] and vary(r) == []
        # a read costs exactly one round trip
        client.get("/set", params={"a": "1"})
        counting.count = 0
        assert client.get("/get", params={"key": "a"}).json() == {"a": "1"}
        assert counting.count == 1
        client.portal.call(counting.aclose)  # type: ignore[union-attr]


def test_read_of_a_new_session_varies_but_sets_no_cookie(
    client: TestClient, redis_client: redis.Redis
) -> None:
    r = client.get("/get", params={"key": "x"})
    assert r.json() == {"x": None}
    assert session_cookie_headers(r) == []
    assert "Cookie" in vary(r)
    assert redis_client.dbsize() == 0


def test_streaming_response_gets_the_cookie(client: TestClient, redis_client: redis.Redis) -> None:
    r = client.get("/stream")
    assert r.text == "one two three"
    assert len(session_cookie_headers(r)) == 1
    assert "Cookie" in vary(r)
    assert client.get("/get", params={"key": "streamed"}).json() == {"streamed": True}


def test_lifespan_events_pass_through(store: AsyncSessionStore) -> None:
    lifespan_events.clear()
    with running(make_starlette(store), store) as client:
        assert lifespan_events == ["startup"]
        assert client.get("/untouched").status_code == 200
    assert lifespan_events == ["startup", "shutdown"]


def test_lifespan_scope_is_left_alone(store: AsyncSessionStore) -> None:
    seen: list[dict[str, Any]] = []

    async def raw_app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(dict(scope))
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                kind = message["type"]
                await send({"type": kind + ".complete"})
                if kind == "lifespan.shutdown":
                    return
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    with running(SessionMiddleware(raw_app, store=store), store) as client:
        assert client.get("/").status_code == 204
    lifespan_scope = next(s for s in seen if s["type"] == "lifespan")
    assert "session" not in lifespan_scope
    http_scope = next(s for s in seen if s["type"] == "http")
    assert isinstance(http_scope["session"], AsyncSession)


def test_websocket_reads_the_session(client: TestClient) -> None:
    client.get("/set", params={"name": "ann"})
    assert client.cookies.get("session")
    with client.websocket_connect("/ws") as ws:
        data = ws.receive_json()
    assert data == {"is_async_session": True, "name": "ann", "all": {"name": "ann"}}


def test_websocket_without_a_cookie(client: TestClient) -> None:
    with client.websocket_connect("/ws") as ws:
        data = ws.receive_json()
    assert data == {"is_async_session": True, "name": None, "all": {}}


async def ws_writer(websocket: WebSocket) -> None:
    await websocket.accept()
    session: AsyncSession = websocket.scope["session"]
    try:
        await session.set("from_ws", True)
    except HeadersSentError as exc:
        await websocket.send_json({"error": exc.operation})
    else:
        await websocket.send_json({"ok": True})
    await websocket.close()


def test_websocket_writes_only_to_an_existing_session(
    store: AsyncSessionStore, redis_client: redis.Redis
) -> None:
    """No cookie goes out on a websocket, so a new session there would be an orphan key."""
    app = Starlette(
        routes=[Route("/set", set_value), WebSocketRoute("/ws-write", ws_writer)],
        middleware=[Middleware(SessionMiddleware, store=store)],
    )
    with running(app, store) as client:
        with client.websocket_connect("/ws-write") as ws:
            assert ws.receive_json() == {"error": "writing 'from_ws'"}
        assert redis_client.dbsize() == 0
        client.get("/set", params={"name": "ann"})
        with client.websocket_connect("/ws-write") as ws:
            assert ws.receive_json() == {"ok": True}
        key = session_key(store, client.cookies["session"])
    assert redis_client.hget(key, "from_ws") == b"true"
    assert redis_client.dbsize() == 1


def test_invalidate_expires_the_cookie(
    client: TestClient, store: AsyncSessionStore, redis_client: redis.Redis
) -> None:
    client.get("/set", params={"name": "ann"})
    key = session_key(store, client.cookies["session"])
    assert redis_client.exists(key) == 1
    r = client.get("/logout")
    [header] = session_cookie_headers(r)
    assert header.startswith("session=;") and "Max-Age=0" in header
    assert "Cookie" in vary(r)
    assert redis_client.exists(key) == 0
    assert client.cookies.get("session") is None  # the client dropped it
    assert client.get("/get", params={"key": "name"}).json() == {"name": None}


def test_login_regenerates_the_id(
    client: TestClient, store: AsyncSessionStore, redis_client: redis.Redis
) -> None:
    client.get("/set", params={"cart": "x"})
    before = client.cookies["session"]
    r = client.get("/login", params={"user": "ann"})
    assert len(session_cookie_headers(r)) == 1
    after = client.cookies["session"]
    assert after != before
    assert redis_client.exists(session_key(store, before)) == 0
    assert client.get("/get", params={"key": "cart"}).json() == {"cart": "x"}
    assert client.get("/get", params={"key": "user"}).json() == {"user": "ann"}


def test_forged_cookie_gets_a_fresh_session(client: TestClient) -> None:
    client.cookies.set("session", "forged-value")
    r = client.get("/get", params={"key": "name"})
    assert r.json() == {"name": None}
    assert session_cookie_headers(r) == []  # a cookie that does not verify is left alone


def test_custom_scope_key(store: AsyncSessionStore) -> None:
    async def endpoint(request: Any) -> Response:
        session = session_of(request.scope, "hs")
        await session.set("k", 1)
        return JSONResponse({"has_default_key": "session" in request.scope})

    app = Starlette(
        routes=[Route("/", endpoint)],
        middleware=[Middleware(SessionMiddleware, store=store, scope_key="hs")],
    )
    with running(app, store) as client:
        r = client.get("/")
        assert r.json() == {"has_default_key": False}
        assert len(session_cookie_headers(r)) == 1


def test_session_of_without_the_middleware() -> None:
    with pytest.raises(RuntimeError, match="SessionMiddleware is not installed"):
        session_of({"type": "http"})
    with pytest.raises(RuntimeError, match="not a hashsession session"):
        session_of({"type": "http", "session": {}})


def test_test_client_without_a_with_block(store: AsyncSessionStore) -> None:
    """``client = TestClient(app)`` (no ``with``), as the Starlette and FastAPI docs show.

    Each request then runs on a new event loop; the session must still work on every one.
    """
    client = TestClient(make_starlette(store))
    codes = []
    for _ in range(4):
        try:
            codes.append(client.get("/incr").status_code)
        except RuntimeError as exc:  # e.g. "Event loop is closed" from a pooled connection
            codes.append(repr(exc))
    assert codes == [200, 200, 200, 200]
    client.close()


# --------------------------------------------------------------------------- FastAPI


async def get_session(request: Request) -> AsyncSession:
    return session_of(request.scope)


SessionDep = Annotated[AsyncSession, Depends(get_session)]


def make_fastapi(store: AsyncSessionStore | None) -> FastAPI:
    app = FastAPI()
    if store is not None:
        app.add_middleware(SessionMiddleware, store=store)

    @app.post("/cart/{item}")
    async def add_to_cart(item: str, session: SessionDep) -> dict[str, Any]:
        async with session.edit("cart", []) as cart:
            cart.append(item)
        return {"cart": await session.get("cart")}

    @app.get("/cart")
    async def show_cart(session: SessionDep) -> dict[str, Any]:
        return {"cart": await session.get("cart", []), "new": session.new}

    @app.get("/same")
    async def same(request: Request, session: SessionDep) -> dict[str, bool]:
        return {"same": session is request.session and session is request.scope["session"]}

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"ok": "yes"}

    @app.post("/logout")
    async def do_logout(session: SessionDep) -> dict[str, str]:
        await session.invalidate()
        return {"bye": "now"}

    return app


def test_fastapi_dependency(store: AsyncSessionStore, redis_client: redis.Redis) -> None:
    with running(make_fastapi(store), store) as client:
        assert client.get("/same").json() == {"same": True}
        r = client.get("/cart")
        assert r.json() == {"cart": [], "new": True}
        assert session_cookie_headers(r) == []
        r = client.post("/cart/apple")
        assert r.json() == {"cart": ["apple"]}
        assert len(session_cookie_headers(r)) == 1
        assert "Cookie" in vary(r)
        r = client.post("/cart/pear")
        assert r.json() == {"cart": ["apple", "pear"]}
        assert session_cookie_headers(r) == []
        assert client.get("/cart").json() == {"cart": ["apple", "pear"], "new": False}
        r = client.get("/health")
        assert session_cookie_headers(r) == [] and "Cookie" not in vary(r)
        key = session_key(store, client.cookies["session"])
        r = client.post("/logout")
        assert "Max-Age=0" in session_cookie_headers(r)[0]
        assert redis_client.exists(key) == 0
        assert client.get("/cart").json() == {"cart": [], "new": True}


def test_fastapi_dependency_without_middleware() -> None:
    with TestClient(make_fastapi(None)) as client, pytest.raises(RuntimeError):
        client.get("/cart")


# --------------------------------------------------------------------------- a real server


class InFlight:
    """Counts handlers running at once, to show the requests really overlapped."""

    def __init__(self) -> None:
        self.now = 0
        self.peak = 0

    def __enter__(self) -> None:
        self.now += 1
        self.peak = max(self.peak, self.now)

    def __exit__(self, *exc: object) -> None:
        self.now -= 1


async def put(request: Any) -> Response:
    i = int(request.path_params["i"])
    session = request.session
    with request.app.state.in_flight:
        assert await session.get(f"k{i}") is None
        await asyncio.sleep(0.002)  # widen the window between read and write
        await session.set(f"k{i}", i)
    return PlainTextResponse("ok")


async def bump(request: Any) -> Response:
    session = request.session
    with request.app.state.in_flight:
        await session.get("counter")
        await asyncio.sleep(0.002)
        await session.incr("counter")
    return PlainTextResponse("ok")


async def start(request: Any) -> Response:
    request.app.state.loop = asyncio.get_running_loop()
    await request.session.set("started", True)
    return PlainTextResponse("ok")


@asynccontextmanager
async def serve(app: Starlette) -> AsyncIterator[str]:
    """Run ``app`` under uvicorn on a free loopback port in a background thread."""
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, loop="asyncio", lifespan="off", log_level="warning"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name="uvicorn", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        assert thread.is_alive(), "uvicorn stopped during start-up"
        assert time.monotonic() < deadline, "uvicorn did not start"
        await asyncio.sleep(0.01)
    port = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.to_thread(thread.join, 10)
        assert not thread.is_alive()


async def test_concurrent_requests_on_a_real_server(
    redis_url: str, redis_client: redis.Redis
) -> None:
    # A Redis client with room for every request in flight (the default client's pool
    # limit is covered by test_aio.py); the middleware and sessions are what is tested.
    store = AsyncSessionStore(
        redis=aioredis.Redis.from_url(redis_url, max_connections=1000), ttl=100
    )
    app = Starlette(
        routes=[Route("/start", start), Route("/put/{i}", put), Route("/bump", bump)],
        middleware=[Middleware(SessionMiddleware, store=store)],
    )
    app.state.in_flight = InFlight()
    # One new client (so one new connection) per request: httpx's own pool gets slow with
    # hundreds of connections at once. One TLS context for all, though none is used.
    tls = ssl.create_default_context()

    async def request(path: str, cookie: str | None = None) -> httpx.Response:
        cookies = {"session": cookie} if cookie else None
        async with httpx.AsyncClient(
            base_url=base_url, timeout=30, verify=tls, cookies=cookies
        ) as http:
            return await http.get(path)

    async with serve(app) as base_url:
        first = await request("/start")
        assert first.status_code == 200
        cookie = first.cookies["session"]
        responses = await asyncio.gather(
            *(request(f"/put/{i}", cookie) for i in range(200)),
            *(request("/bump", cookie) for _ in range(200)),
        )
        assert [r.status_code for r in responses] == [200] * 400
        assert all(session_cookie_headers(r) == [] for r in responses)  # nobody lost it
        fut = asyncio.run_coroutine_threadsafe(store.aclose(), app.state.loop)
        await asyncio.wrap_future(fut)
    assert app.state.in_flight.peak >= 20, (
        f"the requests did not overlap: {app.state.in_flight.peak}"
    )
    key = session_key(store, cookie)
    stored = redis_client.hgetall(key)
    for i in range(200):
        assert stored.get(f"k{i}".encode()) == str(i).encode(), f"k{i} was lost"
    assert stored[b"counter"] == b"200"
    assert stored[b"started"] == b"true"
    assert redis_client.pttl(key) > 0
    assert redis_client.dbsize() == 1


# --------------------------------------------------------------------------- streamed bodies


async def stream_then(request: Any) -> Response:
    """Streams a body that uses the session after ``http.response.start`` went out.

    ``write`` writes to it, ``regenerate`` gives it a new id; ``seed`` writes before the
    response starts (to get a cookie).
    """
    session: AsyncSession = request.session
    what = request.path_params["what"]
    request.app.state.loop = asyncio.get_running_loop()
    if what == "seed":
        await session.set("cart", ["apple"])

    async def body() -> AsyncIterator[bytes]:
        yield b"first "
        if what == "write":
            await session.set("late", True)
        elif what == "regenerate":
            await session.regenerate()
        yield b"second"

    return StreamingResponse(body(), media_type="text/plain")


def streaming_app(store: AsyncSessionStore) -> Starlette:
    return Starlette(
        routes=[Route("/stream-then/{what}", stream_then)],
        middleware=[Middleware(SessionMiddleware, store=store)],
    )


def session_keys(client: redis.Redis, store: AsyncSessionStore) -> list[bytes]:
    return sorted(client.keys(store.config.prefix + "*"))


def test_streamed_body_writes_to_an_existing_session(
    store: AsyncSessionStore, redis_client: redis.Redis
) -> None:
    with running(streaming_app(store), store) as client:
        assert client.get("/stream-then/seed").text == "first second"
        cookie = client.cookies["session"]
        r = client.get("/stream-then/write")
        assert r.text == "first second"
        assert session_cookie_headers(r) == []
    assert redis_client.hget(session_key(store, cookie), "late") == b"true"
    assert len(session_keys(redis_client, store)) == 1


def test_streamed_body_creating_a_session_raises_and_leaves_no_key(
    store: AsyncSessionStore, redis_client: redis.Redis
) -> None:
    late = "writing 'late' after the response headers"
    with (
        running(streaming_app(store), store) as client,
        pytest.raises(HeadersSentError, match=late),
    ):
        client.get("/stream-then/write")
    assert session_keys(redis_client, store) == []


def test_streamed_body_regenerating_raises_and_keeps_the_session(
    store: AsyncSessionStore, redis_client: redis.Redis
) -> None:
    with running(streaming_app(store), store) as client:
        client.get("/stream-then/seed")
        cookie = client.cookies["session"]
        before = session_keys(redis_client, store)
        with pytest.raises(HeadersSentError, match=r"regenerate\(\)"):
            client.get("/stream-then/regenerate")
    assert session_keys(redis_client, store) == before
    assert redis_client.hget(session_key(store, cookie), "cart") == b'["apple"]'


async def test_streamed_body_on_a_real_server_is_cut_short(
    redis_url: str, redis_client: redis.Redis
) -> None:
    """Under uvicorn the error ends the stream: the client sees an incomplete body."""
    store = AsyncSessionStore(redis=redis_url, ttl=100)
    app = streaming_app(store)
    async with (
        serve(app) as base_url,
        httpx.AsyncClient(base_url=base_url) as http,
        http.stream("GET", "/stream-then/write") as r,
    ):
        assert r.status_code == 200
        assert session_cookie_headers(r) == []
        with pytest.raises(httpx.RemoteProtocolError):
            await r.aread()
        # the store's connections live on the server's loop: close them there
        closing = asyncio.run_coroutine_threadsafe(store.aclose(), app.state.loop)
        await asyncio.wrap_future(closing)
    assert session_keys(redis_client, store) == []


# ----------------------------------------------------------- cookie path, expiry, ending


async def clear_session(request: Any) -> Response:
    await request.session.clear()
    return PlainTextResponse("cleared")


async def pop_value(request: Any) -> Response:
    key = request.query_params["key"]
    return JSONResponse({key: await request.session.pop(key, None)})


def mounted_app(store: AsyncSessionStore, **kwargs: Any) -> Starlette:
    """The Starlette app, mounted at /app under an outer Starlette app."""
    from starlette.routing import Mount

    inner = make_starlette(store, **kwargs)
    inner.router.routes.append(Route("/clear", clear_session))
    inner.router.routes.append(Route("/pop", pop_value))
    return Starlette(routes=[Mount("/app", app=inner)])


def test_cookie_path_follows_the_mounts_root_path(redis_url: str) -> None:
    store = AsyncSessionStore(redis=redis_url, ttl=100)
    with running(mounted_app(store), store) as client:
        [cookie] = session_cookie_headers(client.get("/app/set", params={"a": "1"}))
        assert "; Path=/app;" in cookie
        assert client.get("/app/get", params={"key": "a"}).json() == {"a": "1"}
        [gone] = session_cookie_headers(client.get("/app/logout"))
        assert "; Path=/app;" in gone and "Max-Age=0" in gone


def test_a_configured_cookie_path_is_kept_under_a_mount(redis_url: str) -> None:
    store = AsyncSessionStore(redis=redis_url, ttl=100, cookie={"path": "/elsewhere"})
    with running(mounted_app(store), store) as client:
        [cookie] = session_cookie_headers(client.get("/app/set", params={"a": "1"}))
        assert "; Path=/elsewhere;" in cookie


def test_root_path_from_the_server(redis_url: str) -> None:
    store = AsyncSessionStore(redis=redis_url, ttl=100)
    app = make_starlette(store)
    with TestClient(app, root_path="/prefix") as client:
        try:
            [cookie] = session_cookie_headers(client.get("/set", params={"a": "1"}))
            assert "; Path=/prefix;" in cookie
        finally:
            assert client.portal is not None
            client.portal.call(store.aclose)


def test_an_updated_session_slides_its_cookies_max_age(redis_url: str) -> None:
    store = AsyncSessionStore(redis=redis_url, ttl=100, cookie={"max_age": 100})
    with running(make_starlette(store), store) as client:
        [first] = session_cookie_headers(client.get("/set", params={"a": "1"}))
        assert "Max-Age=100" in first
        for path, params in (("/set", {"b": "2"}), ("/incr", {}), ("/get", {"key": "a"})):
            [again] = session_cookie_headers(client.get(path, params=params))
            assert "Max-Age=100" in again and again.split(";")[0] == first.split(";")[0]
        assert session_cookie_headers(client.get("/untouched")) == []


def test_without_refresh_an_update_still_slides_the_cookie(redis_url: str) -> None:
    store = AsyncSessionStore(
        redis=redis_url, ttl=100, cookie={"max_age": 100}, refresh_cookie=False
    )
    with running(make_starlette(store), store) as client:
        [first] = session_cookie_headers(client.get("/set", params={"a": "1"}))
        for path, params in (("/set", {"b": "2"}), ("/incr", {})):
            [again] = session_cookie_headers(client.get(path, params=params))
            assert "Max-Age=100" in again and again.split(";")[0] == first.split(";")[0]
        assert session_cookie_headers(client.get("/get", params={"key": "a"})) == []


def test_clear_and_emptying_end_the_session(redis_url: str, redis_client: redis.Redis) -> None:
    store = AsyncSessionStore(redis=redis_url, ttl=100)
    with running(mounted_app(store), store) as client:
        client.get("/app/set", params={"a": "1"})
        [gone] = session_cookie_headers(client.get("/app/clear"))
        assert "Max-Age=0" in gone
        assert redis_client.dbsize() == 0
        client.cookies.clear()
        [made] = session_cookie_headers(client.get("/app/set", params={"a": "1"}))
        assert client.get("/app/pop", params={"key": "a"}).json() == {"a": "1"}
        assert redis_client.dbsize() == 0  # emptied: ended
        client.cookies.clear()
        [again] = session_cookie_headers(client.get("/app/set", params={"b": "2"}))
        assert again.split(";")[0] != made.split(";")[0]  # the next session has a new id
