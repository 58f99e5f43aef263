"""hashsession.tornado.SessionMixin on a real Tornado HTTPServer.

Each test serves a Tornado ``Application`` on a free loopback port in the test's
event loop and talks to it over TCP with Tornado's own ``AsyncHTTPClient`` (one
new connection per request); one test also runs under Tornado's
``AsyncHTTPTestCase``. Round trips are counted with a ``redis.asyncio``
connection class that counts each ``send_packed_command`` (one call, one trip).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
import redis
from tornado.httpclient import AsyncHTTPClient, HTTPResponse
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.testing import AsyncHTTPTestCase
from tornado.web import Application, HTTPError, RequestHandler

from counting import AsyncCounter
from hashsession import ConfigurationError, HeadersSentError, SessionStore
from hashsession.aio import AsyncSession, AsyncSessionStore
from hashsession.scripts import EVERY
from hashsession.tornado import SessionMixin, store_for

# --------------------------------------------------------------------------- helpers


class Browser:
    """An HTTP client that keeps one session cookie, as a browser would."""

    def __init__(self, base_url: str, cookie_name: str = "session", max_clients: int = 10) -> None:
        self.base_url = base_url
        self.cookie_name = cookie_name
        self.cookie: str | None = None
        self.http = AsyncHTTPClient(force_instance=True, max_clients=max_clients)

    async def fetch(self, path: str, method: str = "GET", **kwargs: Any) -> HTTPResponse:
        headers = {"Cookie": f"{self.cookie_name}={self.cookie}"} if self.cookie else {}
        response = await self.http.fetch(
            self.base_url + path,
            method=method,
            headers=headers,
            body="" if method == "POST" else None,
            raise_error=False,
            request_timeout=60,
            **kwargs,
        )
        for header in cookie_headers(response, self.cookie_name):
            value = header.split(";", 1)[0].split("=", 1)[1]
            self.cookie = None if "Max-Age=0" in header else value
        return response

    async def json(self, path: str, method: str = "GET") -> Any:
        response = await self.fetch(path, method)
        assert response.code == 200, response
        return json.loads(response.body)

    def close(self) -> None:
        self.http.close()


def cookie_headers(response: HTTPResponse, name: str = "session") -> list[str]:
    return [v for v in response.headers.get_list("Set-Cookie") if v.startswith(f"{name}=")]


def vary(response: HTTPResponse) -> list[str]:
    return [p.strip() for v in response.headers.get_list("Vary") for p in v.split(",")]


async def close_store(store: AsyncSessionStore) -> None:
    """Close the store, and its connection pool, which ``aclose()`` leaves open."""
    await store.aclose()
    await store.client.connection_pool.disconnect()


def session_key(store: AsyncSessionStore, cookie_value: str) -> str:
    session_id = store.config.id_from_cookie(cookie_value)
    assert session_id is not None
    return store.config.key_of(session_id)


@asynccontextmanager
async def serve(app: Application) -> AsyncIterator[str]:
    """Serve ``app`` on a free loopback port in this event loop; the base URL."""
    sockets = bind_sockets(0, "127.0.0.1", backlog=1024)
    server = HTTPServer(app)
    server.add_sockets(sockets)
    port = sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.stop()
        await server.close_all_connections()


@asynccontextmanager
async def browse(app: Application, cookie_name: str = "session") -> AsyncIterator[Browser]:
    async with serve(app) as base_url:
        browser = Browser(base_url, cookie_name)
        try:
            yield browser
        finally:
            browser.close()


@pytest.fixture
def warm(redis_client: redis.Redis) -> None:
    """Load the scripts so that no NOSCRIPT retry adds a round trip to a count."""
    for script in EVERY:
        redis_client.script_load(script.source)


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[AsyncSessionStore]:
    store = AsyncSessionStore(redis=redis_url, ttl=100)
    yield store
    await close_store(store)


# --------------------------------------------------------------------------- handlers


class Handler(SessionMixin, RequestHandler):
    def reply(self, data: Any) -> None:
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data))


class Untouched(Handler):
    def get(self) -> None:
        self.write("hello")


class Look(Handler):
    """Takes ``self.session`` but sends nothing through it."""

    def get(self) -> None:
        self.reply({"is_async_session": isinstance(self.session, AsyncSession)})


class SetValues(Handler):
    async def get(self) -> None:
        for key, values in self.request.query_arguments.items():
            await self.session.set(key, values[-1].decode())
        self.reply({"new": self.session.new})


class GetValue(Handler):
    async def get(self, key: str) -> None:
        self.reply({key: await self.session.get(key)})


class Incr(Handler):
    async def get(self) -> None:
        self.reply({"n": await self.session.incr("n")})


class Logout(Handler):
    async def get(self) -> None:
        await self.session.invalidate()
        self.write("bye")


class Login(Handler):
    async def get(self) -> None:
        await self.session.set("user", self.get_argument("user"))
        await self.session.regenerate()
        self.write("welcome")


class VaryAlready(Handler):
    async def get(self) -> None:
        self.set_header("Vary", "Accept-Encoding")
        self.reply({"x": await self.session.get("x")})


class Cart(Handler):
    async def post(self, item: str) -> None:
        async with self.session.edit("cart", []) as cart:
            cart.append(item)
        self.reply({"cart": await self.session.get("cart")})


class Stream(Handler):
    """Flushes a first chunk, then waits until the client has it before finishing."""

    async def get(self) -> None:
        await self.session.set("streamed", True)
        self.write("one ")
        await self.flush()
        await asyncio.wait_for(self.settings["release"].wait(), 10)
        self.write("two")


class Late(Handler):
    """Touches the session only after the headers went out."""

    async def get(self) -> None:
        self.write("head ")
        await self.flush()
        await self.session.set("late", True)
        self.write("tail")


class LateRegenerate(Handler):
    """Reads the session, flushes the headers, then regenerates (or, with ?login, logs in)."""

    async def get(self) -> None:
        self.write(f"{await self.session.get('name')} ")
        await self.flush()
        if self.get_query_argument("login", None):
            await self.session.login("ann")
        else:
            await self.session.regenerate()
        self.write("tail")


class Boom(Handler):
    async def get(self) -> None:
        await self.session.set("before", "the error")
        raise RuntimeError("boom")


class Forbidden(Handler):
    async def get(self) -> None:
        await self.session.set("tried", True)
        raise HTTPError(403)


class BoomUntouched(Handler):
    def get(self) -> None:
        raise RuntimeError("boom")


class RecordsOnFinish(Handler):
    """Notes, in ``on_finish``, the Set-Cookie headers already on the response."""

    async def get(self) -> None:
        await self.session.set("a", 1)
        self.write("ok")

    def on_finish(self) -> None:
        self.settings["on_finish_saw"].extend(self._headers.get_list("Set-Cookie"))


class WhichStore(Handler):
    async def get(self) -> None:
        self.settings["stores_seen"].append(store_for(self.application))
        await self.session.set("seen", True)
        self.write("ok")


def make_app(**settings: Any) -> Application:
    return Application(
        [
            (r"/untouched", Untouched),
            (r"/look", Look),
            (r"/set", SetValues),
            (r"/get/(\w+)", GetValue),
            (r"/incr", Incr),
            (r"/logout", Logout),
            (r"/login", Login),
            (r"/vary", VaryAlready),
            (r"/cart/(\w+)", Cart),
            (r"/stream", Stream),
            (r"/late", Late),
            (r"/late-regenerate", LateRegenerate),
            (r"/boom", Boom),
            (r"/forbidden", Forbidden),
            (r"/boom-untouched", BoomUntouched),
            (r"/on-finish", RecordsOnFinish),
            (r"/which-store", WhichStore),
        ],
        **settings,
    )


@pytest.fixture
async def browser(store: AsyncSessionStore) -> AsyncIterator[Browser]:
    async with browse(make_app(hashsession_store=store)) as b:
        yield b


# --------------------------------------------------------------------------- laziness


async def test_untouched_session_costs_nothing(redis_url: str, warm: None) -> None:
    counter = AsyncCounter(redis_url)
    store = AsyncSessionStore(redis=counter.client, ttl=100)
    async with browse(make_app(hashsession_store=store)) as b:
        await b.fetch("/set?a=1")
        assert b.cookie
        for cookie in (b.cookie, None):
            b.cookie = cookie
            counter.count = 0
            r = await b.fetch("/untouched")
            assert r.body == b"hello"
            assert counter.count == 0
            assert r.headers.get_list("Set-Cookie") == []
            assert "Cookie" not in vary(r)
            # taking self.session without using it sends nothing either
            assert await b.json("/look") == {"is_async_session": True}
            assert counter.count == 0
        # a read of an existing session costs exactly one round trip
        await b.fetch("/set?a=1")
        counter.count = 0
        assert await b.json("/get/a") == {"a": "1"}
        assert counter.count == 1
    await counter.aclose()


# --------------------------------------------------------------------------- the cookie


async def test_write_then_read_across_requests(
    browser: Browser, store: AsyncSessionStore, redis_client: redis.Redis
) -> None:
    r = await browser.fetch("/set?name=ann")
    assert json.loads(r.body) == {"new": True}
    [header] = cookie_headers(r)
    parts = [p.strip() for p in header.split(";")]
    assert "HttpOnly" in parts and "SameSite=Lax" in parts and "Path=/" in parts
    assert not any(p.startswith(("Max-Age", "Expires", "Secure")) for p in parts)
    assert browser.cookie and header.startswith(f"session={browser.cookie};")
    assert "Cookie" in vary(r)
    key = session_key(store, browser.cookie)
    assert redis_client.hget(key, "name") == b'"ann"'
    assert redis_client.pttl(key) > 0
    # the cookie comes back: same session, no new cookie
    r = await browser.fetch("/get/name")
    assert json.loads(r.body) == {"name": "ann"}
    assert cookie_headers(r) == [] and "Cookie" in vary(r)
    r = await browser.fetch("/set?age=7")
    assert json.loads(r.body) == {"new": False}
    assert cookie_headers(r) == []
    assert await browser.json("/get/age") == {"age": "7"}
    assert [(await browser.json("/incr"))["n"] for _ in range(3)] == [1, 2, 3]
    assert redis_client.dbsize() == 1


async def test_read_of_a_new_session_varies_but_sets_no_cookie(
    browser: Browser, redis_client: redis.Redis
) -> None:
    r = await browser.fetch("/get/x")
    assert json.loads(r.body) == {"x": None}
    assert cookie_headers(r) == []
    assert vary(r) == ["Cookie"]
    assert redis_client.dbsize() == 0


async def test_vary_is_merged_with_the_handlers_own(browser: Browser) -> None:
    r = await browser.fetch("/vary")
    assert r.headers.get_list("Vary") == ["Accept-Encoding, Cookie"]


async def test_cookie_is_on_the_response_before_on_finish(store: AsyncSessionStore) -> None:
    seen: list[str] = []
    async with browse(make_app(hashsession_store=store, on_finish_saw=seen)) as b:
        r = await b.fetch("/on-finish")
    assert r.code == 200
    assert len(cookie_headers(r)) == 1
    assert seen == r.headers.get_list("Set-Cookie")


async def test_invalidate_deletes_the_cookie(
    browser: Browser, store: AsyncSessionStore, redis_client: redis.Redis
) -> None:
    await browser.fetch("/set?name=ann")
    assert browser.cookie
    key = session_key(store, browser.cookie)
    assert redis_client.exists(key) == 1
    r = await browser.fetch("/logout")
    [header] = cookie_headers(r)
    assert header.startswith("session=;") and "Max-Age=0" in header
    assert "Cookie" in vary(r)
    assert redis_client.exists(key) == 0
    assert browser.cookie is None
    assert await browser.json("/get/name") == {"name": None}


async def test_regenerate_changes_the_cookie(
    browser: Browser, store: AsyncSessionStore, redis_client: redis.Redis
) -> None:
    await browser.fetch("/set?cart=x")
    before = browser.cookie
    assert before
    r = await browser.fetch("/login?user=ann")
    assert len(cookie_headers(r)) == 1
    after = browser.cookie
    assert after and after != before
    assert redis_client.exists(session_key(store, before)) == 0
    assert await browser.json("/get/cart") == {"cart": "x"}
    assert await browser.json("/get/user") == {"user": "ann"}
    browser.cookie = before  # the old id no longer opens the session
    assert await browser.json("/get/user") == {"user": None}


@pytest.mark.parametrize("forged", ["forged-value", "A" * 43, "A" * 43 + ".c2lnbmF0dXJl"])
async def test_bad_or_forged_cookie_gets_a_fresh_session(
    redis_url: str, redis_client: redis.Redis, forged: str
) -> None:
    store = AsyncSessionStore(redis=redis_url, ttl=100, secret_keys=["k1"])
    async with browse(make_app(hashsession_store=store)) as b:
        b.cookie = forged
        r = await b.fetch("/get/name")
        assert json.loads(r.body) == {"name": None}
        assert cookie_headers(r) == []  # a cookie that does not verify is left alone
        assert redis_client.dbsize() == 0
        b.cookie = forged
        r = await b.fetch("/set?name=eve")
        assert json.loads(r.body) == {"new": True}
        assert b.cookie and b.cookie != forged
        assert store.config.id_from_cookie(b.cookie) is not None
        assert redis_client.dbsize() == 1
    await close_store(store)


# --------------------------------------------------------------------------- streaming, errors


async def test_streaming_handler_sends_the_cookie_with_the_first_chunk(
    store: AsyncSessionStore,
) -> None:
    release = asyncio.Event()
    header_lines: list[str] = []
    chunks: list[bytes] = []
    cookies_at_first_chunk: list[str] = []

    def on_chunk(chunk: bytes) -> None:
        if not chunks:
            cookies_at_first_chunk.extend(
                line for line in header_lines if line.lower().startswith("set-cookie: session=")
            )
            release.set()
        chunks.append(chunk)

    async with browse(make_app(hashsession_store=store, release=release)) as b:
        r = await b.fetch(
            "/stream", header_callback=header_lines.append, streaming_callback=on_chunk
        )
        assert r.code == 200
        assert b"".join(chunks) == b"one two"
        assert chunks[0] == b"one "  # the handler waited for us to see it
        assert len(cookies_at_first_chunk) == 1
        assert any(line.lower().startswith("vary: cookie") for line in header_lines)
        cookie = cookies_at_first_chunk[0].split(":", 1)[1].strip().split(";")[0]
        b.cookie = cookie.split("=", 1)[1]
        assert await b.json("/get/streamed") == {"streamed": True}


async def test_new_session_touched_after_the_headers_raises_and_leaves_no_key(
    browser: Browser,
    store: AsyncSessionStore,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.ERROR):
        r = await browser.fetch("/late")
    assert r.body == b"head "  # Tornado ends the response where the error struck
    assert r.headers.get_list("Set-Cookie") == []
    errors = [rec.exc_info[1] for rec in caplog.records if rec.exc_info]
    assert [type(e) for e in errors] == [HeadersSentError]
    assert str(errors[0]).startswith("writing 'late' after the response headers were sent")
    assert redis_client.keys(store.config.prefix + "*") == []  # no orphan


@pytest.mark.parametrize("query", ["", "?login=1"])
async def test_regenerate_after_the_headers_raises_and_keeps_the_session(
    browser: Browser,
    store: AsyncSessionStore,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    query: str,
) -> None:
    await browser.fetch("/set?name=ann")
    cookie = browser.cookie
    assert cookie
    before = redis_client.keys(store.config.prefix + "*")
    with caplog.at_level(logging.ERROR):
        r = await browser.fetch(f"/late-regenerate{query}")
    assert r.body == b"ann "
    assert cookie_headers(r) == []
    assert any(
        rec.exc_info and isinstance(rec.exc_info[1], HeadersSentError) for rec in caplog.records
    )
    assert redis_client.keys(store.config.prefix + "*") == before
    assert browser.cookie == cookie
    assert await browser.json("/get/name") == {"name": "ann"}  # the old cookie still works


async def test_existing_session_touched_after_the_headers_is_fine(
    browser: Browser,
    store: AsyncSessionStore,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
) -> None:
    await browser.fetch("/set?name=ann")
    assert browser.cookie
    with caplog.at_level(logging.WARNING):
        r = await browser.fetch("/late")
    assert r.body == b"head tail"
    assert cookie_headers(r) == []
    assert caplog.messages == []
    assert redis_client.hget(session_key(store, browser.cookie), "late") == b"true"


async def test_error_in_handler_still_sets_the_cookie(
    browser: Browser, redis_client: redis.Redis
) -> None:
    r = await browser.fetch("/boom")
    assert r.code == 500
    assert len(cookie_headers(r)) == 1
    assert "Cookie" in vary(r)
    assert await browser.json("/get/before") == {"before": "the error"}
    browser.cookie = None
    r = await browser.fetch("/forbidden")
    assert r.code == 403
    assert len(cookie_headers(r)) == 1
    assert await browser.json("/get/tried") == {"tried": True}
    assert redis_client.dbsize() == 2


async def test_error_without_the_session_sets_no_cookie(
    browser: Browser, redis_client: redis.Redis
) -> None:
    r = await browser.fetch("/boom-untouched")
    assert r.code == 500
    assert r.headers.get_list("Set-Cookie") == []
    assert "Cookie" not in vary(r)
    assert redis_client.dbsize() == 0


async def test_edit_inside_a_handler(browser: Browser, store: AsyncSessionStore) -> None:
    assert await browser.json("/cart/apple", "POST") == {"cart": ["apple"]}
    first = browser.cookie
    assert first
    assert await browser.json("/cart/pear", "POST") == {"cart": ["apple", "pear"]}
    assert browser.cookie == first
    assert await browser.json("/get/cart") == {"cart": ["apple", "pear"]}


# --------------------------------------------------------------------------- configuration


async def test_store_built_once_from_the_settings_dict(
    redis_url: str, redis_client: redis.Redis
) -> None:
    seen: list[AsyncSessionStore] = []
    app = make_app(
        hashsession={
            "redis": redis_url,
            "ttl": 60,
            "secret_keys": ["new-key", "old-key"],
            "cookie": {"name": "sid", "max_age": 3600},
        },
        stores_seen=seen,
    )
    async with browse(app, cookie_name="sid") as b:
        r = await b.fetch("/which-store")
        [header] = cookie_headers(r, "sid")
        assert "Max-Age=3600" in header and "HttpOnly" in header
        assert (await b.fetch("/which-store")).code == 200
        assert (await b.fetch("/which-store")).code == 200
    store = store_for(app)
    assert isinstance(store, AsyncSessionStore)
    assert seen == [store, store, store]
    assert b.cookie is not None
    session_id = store.config.id_from_cookie(b.cookie)
    assert session_id is not None and session_id != b.cookie  # signed
    key = store.config.key_of(session_id)
    assert 0 < redis_client.pttl(key) <= 60_000
    assert redis_client.dbsize() == 1
    await close_store(store)


async def test_ready_store_is_used_as_is(store: AsyncSessionStore) -> None:
    app = make_app(hashsession_store=store)
    assert store_for(app) is store
    async with browse(app) as b:
        assert (await b.fetch("/set?a=1")).code == 200
    assert store_for(app) is store


def test_missing_or_bad_configuration_raises(redis_url: str) -> None:
    with pytest.raises(ConfigurationError, match="no session store") as info:
        store_for(Application())
    assert info.value.setting == "hashsession"
    ready = AsyncSessionStore(redis=redis_url)
    with pytest.raises(ConfigurationError, match="not both"):
        store_for(Application(hashsession_store=ready, hashsession={"redis": redis_url}))
    sync_store = SessionStore(redis=redis_url)
    with pytest.raises(ConfigurationError, match="AsyncSessionStore") as info:
        store_for(Application(hashsession_store=sync_store))
    assert info.value.setting == "hashsession_store"
    sync_store.close()
    with pytest.raises(ConfigurationError, match="dict"):
        store_for(Application(hashsession=redis_url))
    with pytest.raises(ConfigurationError) as info:
        store_for(Application(hashsession={"redis": redis_url, "ttl": -1}))
    assert info.value.setting == "ttl"
    with pytest.raises(ConfigurationError) as info:
        store_for(Application(hashsession={"redis": redis_url, "colour": "red"}))
    assert info.value.setting == "settings"


async def test_missing_configuration_fails_only_handlers_using_the_session(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with browse(make_app()) as b:
        assert (await b.fetch("/untouched")).code == 200
        with caplog.at_level(logging.ERROR):
            r = await b.fetch("/set?a=1")
    assert r.code == 500
    assert r.headers.get_list("Set-Cookie") == []
    assert any("no session store" in (rec.exc_text or "") for rec in caplog.records)


# --------------------------------------------------------------------------- a real load


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


class Put(Handler):
    async def get(self, i: str) -> None:
        with self.settings["in_flight"]:
            assert await self.session.get(f"k{i}") is None
            await asyncio.sleep(0.002)  # widen the window between read and write
            await self.session.set(f"k{i}", int(i))
        self.write("ok")


class Bump(Handler):
    async def get(self) -> None:
        with self.settings["in_flight"]:
            await self.session.get("counter")
            await asyncio.sleep(0.002)
            await self.session.incr("counter")
        self.write("ok")


async def test_concurrent_requests_on_a_real_server(
    redis_url: str, redis_client: redis.Redis
) -> None:
    in_flight = InFlight()
    app = Application(
        [(r"/set", SetValues), (r"/put/(\d+)", Put), (r"/bump", Bump)],
        hashsession={"redis": redis_url, "ttl": 100},
        in_flight=in_flight,
    )
    async with serve(app) as base_url:
        first = Browser(base_url)
        assert (await first.fetch("/set?started=yes")).code == 200
        first.close()
        cookie = first.cookie
        assert cookie
        # simple_httpclient opens a new connection for every request
        http = AsyncHTTPClient(force_instance=True, max_clients=400)
        headers = {"Cookie": f"session={cookie}"}

        def get(path: str) -> Any:
            return http.fetch(
                base_url + path, headers=headers, raise_error=False, request_timeout=120
            )

        responses = await asyncio.gather(
            *(get(f"/put/{i}") for i in range(200)), *(get("/bump") for _ in range(200))
        )
        http.close()
    assert [r.code for r in responses] == [200] * 400
    assert all(r.headers.get_list("Set-Cookie") == [] for r in responses)  # nobody lost it
    assert in_flight.peak >= 20, f"the requests did not overlap: {in_flight.peak}"
    store = store_for(app)
    key = session_key(store, cookie)
    stored = redis_client.hgetall(key)
    for i in range(200):
        assert stored.get(f"k{i}".encode()) == str(i).encode(), f"k{i} was lost"
    assert stored[b"counter"] == b"200"
    assert stored[b"started"] == b'"yes"'
    assert redis_client.pttl(key) > 0
    assert redis_client.dbsize() == 1
    await close_store(store)


# --------------------------------------------------------------------------- AsyncHTTPTestCase


class TestUnderAsyncHTTPTestCase(AsyncHTTPTestCase):
    """The same mixin under Tornado's own test case (its own IOLoop per test)."""

    redis_url: str

    @pytest.fixture(autouse=True)
    def _redis(self, redis_url: str) -> Iterator[None]:
        self.redis_url = redis_url
        yield

    def get_app(self) -> Application:
        self.store = AsyncSessionStore(redis=self.redis_url, ttl=100)
        return make_app(hashsession_store=self.store)

    def tearDown(self) -> None:
        self.io_loop.run_sync(lambda: close_store(self.store))
        super().tearDown()

    def fetch_json(self, path: str, cookie: str | None) -> tuple[Any, list[str]]:
        headers = {"Cookie": cookie} if cookie else {}
        response = self.fetch(path, headers=headers)
        self.assertEqual(response.code, 200)
        return json.loads(response.body), cookie_headers(response)

    def test_counter_and_cookie(self) -> None:
        body, cookies = self.fetch_json("/incr", None)
        self.assertEqual(body, {"n": 1})
        self.assertEqual(len(cookies), 1)
        cookie = cookies[0].split(";", 1)[0]
        self.assertEqual(self.fetch_json("/incr", cookie), ({"n": 2}, []))
        self.assertEqual(self.fetch_json("/get/n", cookie), ({"n": 2}, []))
        self.assertEqual(self.fetch("/untouched").headers.get_list("Set-Cookie"), [])
