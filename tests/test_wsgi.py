"""hashsession.wsgi.SessionMiddleware, driven directly and through a real HTTP server."""

from __future__ import annotations

import http.cookiejar
import threading
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pytest
import redis

from hashsession import HeadersSentError, Session, SessionStore
from hashsession.scripts import EVERY
from hashsession.wsgi import SessionMiddleware

Environ = dict[str, Any]
App = Callable[[Environ, Callable[..., Any]], Iterable[bytes]]


class Response:
    def __init__(self, status: str, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body
        self.exc_info: Any = None

    def all(self, name: str) -> list[str]:
        return [v for k, v in self.headers if k.lower() == name.lower()]

    @property
    def cookie(self) -> str | None:
        """The ``name=value`` to send back, if the response set one."""
        values = self.all("Set-Cookie")
        assert len(values) <= 1, values
        return values[0].split(";", 1)[0] if values else None


def call(app: App, path: str = "/", cookie: str | None = None, **extra: Any) -> Response:
    """Call a WSGI app the way a server would, and collect its response."""
    environ: Environ = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "test",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "wsgi.version": (1, 0),
        "wsgi.url_scheme": "http",
        "wsgi.input": None,
        "wsgi.errors": None,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        **extra,
    }
    if cookie is not None:
        environ["HTTP_COOKIE"] = cookie
    started: list[Any] = []

    def start_response(
        status: str, headers: list[tuple[str, str]], exc_info: Any = None
    ) -> Callable[[bytes], None]:
        if started and exc_info is None:
            raise AssertionError("start_response called twice without exc_info")
        started[:] = [status, list(headers), exc_info]
        return lambda data: None

    result = app(environ, start_response)
    try:
        body = b"".join(result)
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
    assert started, "the app never called start_response"
    response = Response(started[0], started[1], body)
    response.exc_info = started[2]
    return response


@pytest.fixture
def store(redis_url: str) -> Iterator[SessionStore]:
    store = SessionStore(redis=redis_url, ttl=100)
    yield store
    store.close()


def demo_app(environ: Environ, start_response: Callable[..., Any]) -> list[bytes]:
    """/set?k=v writes, /get?k reads, /incr counts, /nothing ignores the session."""
    session: Session = environ["hashsession"]
    path = environ["PATH_INFO"]
    query = environ.get("QUERY_STRING", "")
    body = b""
    if path == "/set":
        k, _, v = query.partition("=")
        session[k] = v
        body = b"ok"
    elif path == "/get":
        body = repr(session.get(query)).encode()
    elif path == "/incr":
        body = str(session.incr("n")).encode()
    elif path == "/login":
        session.regenerate()
        session["user"] = query
        body = b"ok"
    elif path == "/logout":
        session.invalidate()
        body = b"bye"
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]


# --------------------------------------------------------------------------- direct calls


def test_session_is_in_environ(store: SessionStore) -> None:
    seen: list[Any] = []

    def app(environ: Environ, start_response: Callable[..., Any]) -> list[bytes]:
        seen.append(environ["hashsession"])
        start_response("200 OK", [])
        return [b""]

    call(SessionMiddleware(app, store=store))
    assert isinstance(seen[0], Session)


def test_custom_environ_key(store: SessionStore) -> None:
    def app(environ: Environ, start_response: Callable[..., Any]) -> list[bytes]:
        assert "hashsession" not in environ
        environ["my.session"]["a"] = 1
        start_response("200 OK", [])
        return [b""]

    response = call(SessionMiddleware(app, store=store, environ_key="my.session"))
    assert response.cookie is not None
    assert store.open(response.cookie)["a"] == 1


def test_cookie_set_on_first_write_and_sent_back(store: SessionStore) -> None:
    app = SessionMiddleware(demo_app, store=store)
    first = call(app, "/set", QUERY_STRING="color=blue")
    assert first.status == "200 OK"
    cookie = first.cookie
    assert cookie is not None and cookie.startswith("session=")
    set_cookie = first.all("Set-Cookie")[0]
    assert "HttpOnly" in set_cookie and "SameSite=Lax" in set_cookie
    assert first.all("Vary") == ["Cookie"]
    assert ("Content-Type", "text/plain") in first.headers  # the app's own headers are kept

    second = call(app, "/get", cookie=cookie, QUERY_STRING="color")
    assert second.body == b"'blue'"
    assert second.cookie is None  # the browser already has it
    assert second.all("Vary") == ["Cookie"]

    third = call(app, "/get", cookie=cookie, QUERY_STRING="color")
    assert third.body == b"'blue'"
    other_browser = call(app, "/get", QUERY_STRING="color")
    assert other_browser.body == b"None"


def test_counter_across_requests(store: SessionStore) -> None:
    app = SessionMiddleware(demo_app, store=store)
    first = call(app, "/incr")
    cookie = first.cookie
    assert first.body == b"1"
    for expected in range(2, 6):
        assert call(app, "/incr", cookie=f"other=1; {cookie}").body == str(expected).encode()


def test_read_only_request_on_new_session(store: SessionStore, redis_client: redis.Redis) -> None:
    response = call(SessionMiddleware(demo_app, store=store), "/get", QUERY_STRING="x")
    assert response.body == b"None"
    assert response.cookie is None
    assert response.all("Vary") == ["Cookie"]
    assert redis_client.dbsize() == 0


def test_untouched_session_costs_nothing_and_adds_no_headers(
    counted: Any, redis_client: redis.Redis
) -> None:
    for script in EVERY:
        redis_client.script_load(script.source)
    store = SessionStore(redis=counted.client, ttl=100)
    app = SessionMiddleware(demo_app, store=store)
    cookie = call(app, "/set", QUERY_STRING="a=1").cookie
    with counted.expect(0):
        response = call(app, "/nothing", cookie=cookie)
        fresh = call(app, "/nothing")
    for r in (response, fresh):
        assert r.headers == [("Content-Type", "text/plain")]
    with counted.expect(1):
        call(app, "/get", cookie=cookie, QUERY_STRING="a")
    with counted.expect(1):
        call(app, "/set", QUERY_STRING="b=2")


def test_login_and_logout_flow(store: SessionStore, redis_client: redis.Redis) -> None:
    app = SessionMiddleware(demo_app, store=store)
    anon = call(app, "/set", QUERY_STRING="cart=3").cookie
    login = call(app, "/login", cookie=anon, QUERY_STRING="ann")
    user_cookie = login.cookie
    assert user_cookie is not None and user_cookie != anon
    assert call(app, "/get", cookie=user_cookie, QUERY_STRING="user").body == b"'ann'"
    assert call(app, "/get", cookie=user_cookie, QUERY_STRING="cart").body == b"'3'"
    assert call(app, "/get", cookie=anon, QUERY_STRING="cart").body == b"None"
    logout = call(app, "/logout", cookie=user_cookie)
    [gone] = logout.all("Set-Cookie")
    assert gone.startswith("session=;") and "Max-Age=0" in gone
    assert call(app, "/get", cookie=user_cookie, QUERY_STRING="user").body == b"None"
    assert redis_client.dbsize() == 0


def test_app_raising_after_writing_answers_500_with_the_cookie(
    store: SessionStore,
) -> None:
    def app(environ: Environ, start_response: Callable[..., Any]) -> list[bytes]:
        environ["hashsession"]["saved"] = "before the crash"
        raise RuntimeError("boom")

    response = call(SessionMiddleware(app, store=store))
    assert response.status.startswith("500")
    assert response.cookie is not None
    assert response.all("Vary") == ["Cookie"]
    assert response.exc_info is not None and response.exc_info[0] is RuntimeError
    # the session the browser is now told about really holds the write
    assert store.open(response.cookie)["saved"] == "before the crash"


def test_app_raising_after_invalidating_still_drops_the_cookie(store: SessionStore) -> None:
    s = store.open(None)
    s["a"] = 1
    cookie = store.response_headers(s)[0][1].split(";", 1)[0]

    def app(environ: Environ, start_response: Callable[..., Any]) -> list[bytes]:
        environ["hashsession"].invalidate()
        raise RuntimeError("boom")

    response = call(SessionMiddleware(app, store=store), cookie=cookie)
    assert response.status.startswith("500")
    [gone] = response.all("Set-Cookie")
    assert "Max-Age=0" in gone


def test_app_raising_without_touching_propagates(store: SessionStore) -> None:
    def app(environ: Environ, start_response: Callable[..., Any]) -> list[bytes]:
        raise KeyError("boom")

    with pytest.raises(KeyError):
        call(SessionMiddleware(app, store=store))


def test_app_raising_after_only_reading_propagates(store: SessionStore) -> None:
    s = store.open(None)
    s["a"] = 1
    cookie = store.response_headers(s)[0][1].split(";", 1)[0]

    def app(environ: Environ, start_response: Callable[..., Any]) -> list[bytes]:
        environ["hashsession"].get("a")
        environ["hashsession"]["a"] = 2  # an existing session: no new cookie needed
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        call(SessionMiddleware(app, store=store), cookie=cookie)
    assert store.open(cookie)["a"] == 2  # the write before the crash is live anyway


def test_app_raising_after_start_response_propagates(store: SessionStore) -> None:
    def app(environ: Environ, start_response: Callable[..., Any]) -> list[bytes]:
        environ["hashsession"]["a"] = 1
        start_response("200 OK", [])
        raise RuntimeError("late")

    with pytest.raises(RuntimeError, match="late"):
        call(SessionMiddleware(app, store=store))


def test_app_passing_exc_info_to_start_response(store: SessionStore) -> None:
    def app(environ: Environ, start_response: Callable[..., Any]) -> list[bytes]:
        environ["hashsession"]["a"] = 1
        try:
            raise RuntimeError("handled")
        except RuntimeError:
            import sys

            start_response("503 Service Unavailable", [], sys.exc_info())
        return [b"sorry"]

    response = call(SessionMiddleware(app, store=store))
    assert response.status.startswith("503")
    assert response.exc_info is not None
    assert response.cookie is not None
    assert response.body == b"sorry"


def test_each_request_gets_its_own_session(store: SessionStore) -> None:
    sessions: list[Session] = []

    def app(environ: Environ, start_response: Callable[..., Any]) -> list[bytes]:
        sessions.append(environ["hashsession"])
        start_response("200 OK", [])
        return [b""]

    mw = SessionMiddleware(app, store=store)
    call(mw)
    call(mw)
    assert sessions[0] is not sessions[1]


def test_bad_cookie_through_the_middleware(store: SessionStore) -> None:
    app = SessionMiddleware(demo_app, store=store)
    response = call(app, "/get", cookie="session=forged", QUERY_STRING="a")
    assert response.body == b"None"
    assert response.all("Set-Cookie") == []  # a cookie that does not verify is left alone


# --------------------------------------------------------------------------- real HTTP


class QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def http_server(store: SessionStore) -> Iterator[str]:
    server = make_server(
        "127.0.0.1",
        0,
        SessionMiddleware(demo_app, store=store),
        server_class=WSGIServer,
        handler_class=QuietHandler,
    )
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_real_http_round_trip(http_server: str, redis_client: redis.Redis) -> None:
    jar = http.cookiejar.CookieJar()
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(jar))

    with opener.open(f"{http_server}/set?fruit=kiwi", timeout=10) as r:
        assert r.status == 200
        assert r.read() == b"ok"
        assert r.headers["Vary"] == "Cookie"
        assert "HttpOnly" in r.headers["Set-Cookie"]
    assert [c.name for c in jar] == ["session"]

    with opener.open(f"{http_server}/get?fruit", timeout=10) as r:
        assert r.read() == b"'kiwi'"
        assert r.headers["Set-Cookie"] is None
    with opener.open(f"{http_server}/incr", timeout=10) as r:
        assert r.read() == b"1"
    with opener.open(f"{http_server}/incr", timeout=10) as r:
        assert r.read() == b"2"
    with opener.open(f"{http_server}/nothing", timeout=10) as r:
        assert r.headers["Set-Cookie"] is None and r.headers["Vary"] is None
    assert redis_client.dbsize() == 1

    # a second browser (no cookie jar) sees nothing of the first one's session
    with urllib.request.urlopen(f"{http_server}/get?fruit", timeout=10) as r:
        assert r.read() == b"None"

    with opener.open(f"{http_server}/logout", timeout=10) as r:
        assert "Max-Age=0" in r.headers["Set-Cookie"]
    assert list(jar) == []
    assert redis_client.dbsize() == 0


# --------------------------------------------------------------------------- streamed bodies


def streaming_app(environ: Environ, start_response: Callable[..., Any]) -> Iterator[bytes]:
    """Starts the response, then uses the session while the body streams.

    /write writes to the session, /regenerate gives it a new id; /seed writes before
    the headers (to get a cookie).
    """
    session: Session = environ["hashsession"]
    path = environ["PATH_INFO"]
    if path == "/seed":
        session["cart"] = ["apple"]
    start_response("200 OK", [("Content-Type", "text/plain")])
    yield b"first "
    if path == "/write":
        session["late"] = True
    elif path == "/regenerate":
        session.regenerate()
    yield b"second"


def session_keys(client: redis.Redis, store: SessionStore) -> list[bytes]:
    return sorted(client.keys(store.config.prefix + "*"))


def test_streamed_body_writes_to_an_existing_session(
    store: SessionStore, redis_client: redis.Redis
) -> None:
    app = SessionMiddleware(streaming_app, store=store)
    cookie = call(app, "/seed").cookie
    assert cookie is not None
    response = call(app, "/write", cookie=cookie)
    assert response.body == b"first second"
    assert response.cookie is None
    assert store.open(cookie)["late"] is True
    assert len(session_keys(redis_client, store)) == 1


def test_streamed_body_creating_a_session_raises_and_leaves_no_key(
    store: SessionStore, redis_client: redis.Redis
) -> None:
    app = SessionMiddleware(streaming_app, store=store)
    before = session_keys(redis_client, store)
    with pytest.raises(HeadersSentError, match="writing 'late' after the response headers"):
        call(app, "/write")
    assert session_keys(redis_client, store) == before == []


def test_streamed_body_regenerating_raises_and_keeps_the_session(
    store: SessionStore, redis_client: redis.Redis
) -> None:
    app = SessionMiddleware(streaming_app, store=store)
    cookie = call(app, "/seed").cookie
    assert cookie is not None
    before = session_keys(redis_client, store)
    with pytest.raises(HeadersSentError, match=r"regenerate\(\)"):
        call(app, "/regenerate", cookie=cookie)
    assert session_keys(redis_client, store) == before
    assert store.open(cookie)["cart"] == ["apple"]  # the old cookie still reaches it


def test_streamed_body_on_a_real_server_is_cut_short(
    store: SessionStore, redis_client: redis.Redis
) -> None:
    """Under a real server the error ends the stream: the browser gets a truncated body."""
    server = make_server(
        "127.0.0.1",
        0,
        SessionMiddleware(streaming_app, store=store),
        server_class=WSGIServer,
        handler_class=QuietHandler,
    )
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/write") as r:
            assert r.status == 200
            assert r.headers["Set-Cookie"] is None
            assert r.read() == b"first "
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)
    assert session_keys(redis_client, store) == []
