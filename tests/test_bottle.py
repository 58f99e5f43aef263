"""hashsession.bottle.SessionPlugin through Bottle's own WSGI app, driven by WebTest."""

from __future__ import annotations

import functools
import http.client
import threading
from collections.abc import Callable, Iterator
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import bottle
import pytest
import redis
import webtest

from conftest import Counted, StoreFactory
from hashsession import ConfigurationError, HeadersSentError, Session, SessionStore
from hashsession.bottle import KeywordConflictError, SessionPlugin
from hashsession.scripts import EVERY


def cookie_of(response: webtest.TestResponse, name: str = "session") -> str | None:
    """The ``name=value`` pair a response sets for ``name``, if any."""
    found = [
        v.split(";", 1)[0]
        for v in response.headers.getall("Set-Cookie")
        if v.startswith(f"{name}=")
    ]
    assert len(found) <= 1, found
    return found[0] if found else None


def make_app(store: SessionStore, **plugin_kwargs: Any) -> bottle.Bottle:
    """An app with the plugin installed and routes that exercise the session."""
    app = bottle.Bottle()
    app.install(SessionPlugin(store=store, **plugin_kwargs))

    @app.route("/set/<key>/<value>")
    def set_value(key: str, value: str, session: Session) -> str:
        session[key] = value
        return "ok"

    @app.route("/get/<key>")
    def get_value(key: str, session: Session) -> str:
        return repr(session.get(key))

    @app.route("/idle")
    def idle(session: Session) -> str:
        return "named the keyword, never used it"

    @app.route("/plain")
    def plain() -> str:
        return "no session here"

    @app.route("/login/<user>")
    def login(user: str, session: Session) -> None:
        session.regenerate()
        session["user"] = user
        bottle.redirect("/welcome")

    @app.route("/logout")
    def logout(session: Session) -> str:
        session.invalidate()
        return "bye"

    return app


@pytest.fixture
def client(store: SessionStore) -> webtest.TestApp:
    return webtest.TestApp(make_app(store))


def preload_scripts(client: redis.Redis) -> None:
    """Load the Lua scripts so counted round trips never include a NOSCRIPT retry."""
    for script in EVERY:
        client.script_load(script.source)


# ----------------------------------------------------------------------- the basics


def test_route_naming_the_keyword_gets_a_live_session(
    client: webtest.TestApp, store: SessionStore
) -> None:
    first = client.get("/set/color/blue")
    assert first.text == "ok"
    cookie = cookie_of(first)
    assert cookie is not None
    [set_cookie] = first.headers.getall("Set-Cookie")
    assert "HttpOnly" in set_cookie and "SameSite=Lax" in set_cookie and "Path=/" in set_cookie
    assert first.headers.getall("Vary") == ["Cookie"]
    assert store.open(cookie)["color"] == "blue"  # written during the request, not after

    second = client.get("/get/color")  # WebTest's cookie jar sends the cookie back
    assert second.text == "'blue'"
    assert cookie_of(second) is None  # the browser already has it
    assert second.headers.getall("Vary") == ["Cookie"]

    other_browser = webtest.TestApp(client.app)
    assert other_browser.get("/get/color").text == "None"


def test_plugin_hands_out_store_sessions(store: SessionStore) -> None:
    seen: list[Any] = []
    app = bottle.Bottle()
    app.install(SessionPlugin(store=store))

    @app.route("/")
    def index(session: Session) -> str:
        seen.append(session)
        return ""

    webtest.TestApp(app).get("/")
    webtest.TestApp(app).get("/")
    assert all(isinstance(s, Session) for s in seen)
    assert seen[0] is not seen[1]  # one session per request


def test_routes_without_the_keyword_are_left_untouched(store: SessionStore) -> None:
    app = make_app(store)
    plugin = app.plugins[-1]
    route = next(r for r in app.routes if r.rule == "/plain")
    assert plugin.apply(route.callback, route) is route.callback
    response = webtest.TestApp(app).get("/plain")
    assert response.text == "no session here"
    assert "Set-Cookie" not in response.headers and "Vary" not in response.headers


def test_untouched_and_unnamed_sessions_cost_no_round_trip(
    counted: Counted, redis_client: redis.Redis
) -> None:
    preload_scripts(redis_client)
    store = SessionStore(redis=counted.client, ttl=100)
    client = webtest.TestApp(make_app(store))
    client.get("/set/a/1")
    with counted.expect(0):
        idle = client.get("/idle")  # names the keyword, never touches the session
        plain = client.get("/plain")
        fresh = webtest.TestApp(client.app).get("/idle")
    for response in (idle, plain, fresh):
        assert "Set-Cookie" not in response.headers and "Vary" not in response.headers
    with counted.expect(1):
        assert client.get("/get/a").text == "'1'"
    with counted.expect(1):
        webtest.TestApp(client.app).get("/set/b/2")  # a brand-new session: one round trip
    store.close()


def test_read_only_request_on_a_new_session_sets_no_cookie(
    client: webtest.TestApp, redis_client: redis.Redis
) -> None:
    response = client.get("/get/x")
    assert response.text == "None"
    assert "Set-Cookie" not in response.headers
    assert response.headers.getall("Vary") == ["Cookie"]
    assert redis_client.dbsize() == 0


# ------------------------------------------------------------- keywords and plugins


def test_second_plugin_with_the_same_keyword_is_refused(store: SessionStore) -> None:
    app = bottle.Bottle()
    app.install(SessionPlugin(store=store))
    with pytest.raises(bottle.PluginError, match="'session'") as caught:
        app.install(SessionPlugin(store=store))
    assert isinstance(caught.value, ConfigurationError)
    assert isinstance(caught.value, KeywordConflictError)
    assert caught.value.setting == "keyword"
    assert len(app.plugins) == 1 + 2  # Bottle's JSON and template plugins, plus ours


def test_plugin_of_another_kind_with_the_same_keyword_is_refused(store: SessionStore) -> None:
    class Other:
        keyword = "db"
        api = 2

        def apply(self, callback: Callable[..., Any], route: Any) -> Callable[..., Any]:
            return callback

    app = bottle.Bottle()
    app.install(Other())
    with pytest.raises(KeywordConflictError, match="'db'"):
        app.install(SessionPlugin(store=store, keyword="db"))


def test_two_plugins_with_different_keywords_both_inject(make_store: StoreFactory) -> None:
    shop = make_store(prefix="shop:", cookie={"name": "shop"})
    admin = make_store(prefix="admin:", cookie={"name": "admin"})
    app = bottle.Bottle()
    shop_plugin = app.install(SessionPlugin(store=shop))
    admin_plugin = app.install(SessionPlugin(store=admin, keyword="admin_session"))
    assert shop_plugin.name != admin_plugin.name  # Bottle applies one plugin per name

    @app.route("/both")
    def both(session: Session, admin_session: Session) -> str:
        session["cart"] = "3 apples"
        admin_session["role"] = "owner"
        return "ok"

    @app.route("/read")
    def read(session: Session, admin_session: Session) -> str:
        assert bottle.request.session is session
        assert bottle.request.admin_session is admin_session
        return f"{session['cart']}/{admin_session['role']}"

    client = webtest.TestApp(app)
    response = client.get("/both")
    assert cookie_of(response, "shop") is not None
    assert cookie_of(response, "admin") is not None
    assert client.get("/read").text == "3 apples/owner"


def test_bad_arguments_are_refused_at_start_up(store: SessionStore) -> None:
    with pytest.raises(ConfigurationError) as caught:
        SessionPlugin(store=store, keyword="not a name")
    assert caught.value.setting == "keyword"
    with pytest.raises(ConfigurationError) as caught:
        SessionPlugin(store="redis://localhost")  # type: ignore[arg-type]
    assert caught.value.setting == "store"


# -------------------------------------------------------------- reaching the session


def test_session_is_reachable_from_bottle_request(store: SessionStore) -> None:
    app = bottle.Bottle()
    plugin = app.install(SessionPlugin(store=store))
    seen: list[bool] = []

    def current_user() -> Any:  # a helper that is not handed the session
        return bottle.request.session.get("user")

    @app.route("/")
    def index(session: Session) -> str:
        seen.append(bottle.request.session is session)
        seen.append(bottle.request.environ[plugin.environ_key] is session)
        session["user"] = "ann"
        return str(current_user())

    assert plugin.environ_key == "bottle.request.ext.session"
    assert webtest.TestApp(app).get("/").text == "ann"
    assert seen == [True, True]


def test_custom_keyword_is_injected_and_on_the_request(store: SessionStore) -> None:
    app = bottle.Bottle()
    app.install(SessionPlugin(store=store, keyword="sess"))

    @app.route("/")
    def index(sess: Session) -> str:
        sess["n"] = 1
        return str(bottle.request.sess["n"])

    assert webtest.TestApp(app).get("/").text == "1"


def test_keyword_only_and_decorated_callbacks_get_the_session(store: SessionStore) -> None:
    def logged(fn: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(fn)  # the signature seen is the decorated function's
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            return "logged:" + fn(*args, **kwargs)

        return wrapper

    app = bottle.Bottle()
    app.install(SessionPlugin(store=store))

    @app.route("/kwonly")
    def kwonly(*, session: Session) -> str:
        return str(session.incr("n"))

    @app.route("/wrapped")
    @logged
    def wrapped(session: Session) -> str:
        return str(session.incr("n"))

    @app.route("/catch-all")
    def catch_all(**kwargs: Any) -> str:  # **kwargs does not name the keyword
        return ",".join(sorted(kwargs))

    client = webtest.TestApp(app)
    assert client.get("/kwonly").text == "1"
    assert client.get("/wrapped").text == "logged:2"
    assert client.get("/catch-all").text == ""


def test_route_level_plugin_and_skip(store: SessionStore) -> None:
    app = bottle.Bottle()
    plugin = SessionPlugin(store=store)

    @app.route("/only-here", apply=[plugin])
    def only_here(session: Session) -> str:
        session["a"] = "b"
        return "ok"

    @app.route("/skipped", apply=[plugin], skip=["hashsession"])
    def skipped(session: Any = "not injected") -> str:
        return str(session)

    client = webtest.TestApp(app)
    response = client.get("/only-here")
    assert cookie_of(response) is not None
    assert client.get("/skipped").text == "not injected"


# ---------------------------------------------------- headers on every way out


def test_redirect_after_login_carries_the_new_cookie(
    client: webtest.TestApp, store: SessionStore
) -> None:
    anonymous = cookie_of(client.get("/set/cart/3"))
    response = client.get("/login/ann", status=302)  # WebTest speaks HTTP/1.0
    assert response.headers["Location"].endswith("/welcome")
    logged_in = cookie_of(response)
    assert logged_in is not None and logged_in != anonymous
    assert response.headers.getall("Vary") == ["Cookie"]
    session = store.open(logged_in)
    assert (session["user"], session["cart"]) == ("ann", "3")
    assert store.open(anonymous).get("cart") is None  # the old id no longer works


def test_abort_after_a_write_carries_the_cookie(store: SessionStore) -> None:
    app = bottle.Bottle()
    app.install(SessionPlugin(store=store))

    @app.route("/")
    def index(session: Session) -> None:
        session["tried"] = 1
        bottle.abort(403, "no")

    response = webtest.TestApp(app).get("/", status=403)
    cookie = cookie_of(response)
    assert cookie is not None
    assert store.open(cookie)["tried"] == 1


def test_returned_http_response_carries_the_cookie(store: SessionStore) -> None:
    app = bottle.Bottle()
    app.install(SessionPlugin(store=store))

    @app.route("/")
    def index(session: Session) -> bottle.HTTPResponse:
        session["made"] = True
        return bottle.HTTPResponse("created", status=201, headers={"X-Mine": "1"})

    response = webtest.TestApp(app).get("/", status=201)
    assert response.headers["X-Mine"] == "1"
    cookie = cookie_of(response)
    assert cookie is not None and store.open(cookie)["made"] is True


def test_app_headers_and_cookies_are_kept(store: SessionStore) -> None:
    app = bottle.Bottle()
    app.install(SessionPlugin(store=store))

    @app.route("/")
    def index(session: Session) -> str:
        bottle.response.set_cookie("theme", "dark")
        bottle.response.set_header("X-Mine", "1")
        session["a"] = 1
        return "ok"

    response = webtest.TestApp(app).get("/")
    assert response.headers["X-Mine"] == "1"
    assert cookie_of(response, "theme") == "theme=dark"
    assert cookie_of(response) is not None


def test_error_after_a_write_answers_500_with_the_cookie(store: SessionStore) -> None:
    app = bottle.Bottle()
    app.install(SessionPlugin(store=store))

    @app.route("/")
    def index(session: Session) -> str:
        session["saved"] = "before the crash"
        raise RuntimeError("boom")

    response = webtest.TestApp(app).get("/", status=500, expect_errors=True)
    cookie = cookie_of(response)
    assert cookie is not None
    assert response.headers.getall("Vary") == ["Cookie"]
    assert store.open(cookie)["saved"] == "before the crash"
    assert "RuntimeError: boom" in response.errors  # logged as Bottle logs its own 500s


def test_error_after_logout_still_drops_the_cookie(
    client: webtest.TestApp, store: SessionStore
) -> None:
    cookie = cookie_of(client.get("/set/a/1"))

    @client.app.route("/crash-out")
    def crash_out(session: Session) -> str:
        session.invalidate()
        raise RuntimeError("boom")

    response = client.get("/crash-out", status=500, expect_errors=True)
    [gone] = response.headers.getall("Set-Cookie")
    assert gone.startswith("session=;") and "Max-Age=0" in gone
    assert store.open(cookie).get("a") is None


def test_error_without_a_session_change_is_bottles_own_500(store: SessionStore) -> None:
    app = bottle.Bottle()
    app.install(SessionPlugin(store=store))

    @app.route("/")
    def index(session: Session) -> str:
        session.get("a")
        raise KeyError("boom")

    response = webtest.TestApp(app).get("/", status=500, expect_errors=True)
    assert "KeyError: 'boom'" in response.errors
    assert "Set-Cookie" not in response.headers


def test_error_propagates_when_catchall_is_off(store: SessionStore) -> None:
    app = bottle.Bottle()
    app.config["catchall"] = False
    app.install(SessionPlugin(store=store))

    @app.route("/")
    def index(session: Session) -> str:
        session["a"] = 1
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        webtest.TestApp(app).get("/")


def test_logout_drops_the_cookie(
    client: webtest.TestApp, store: SessionStore, redis_client: redis.Redis
) -> None:
    cookie = cookie_of(client.get("/set/user/ann"))
    response = client.get("/logout")
    [gone] = response.headers.getall("Set-Cookie")
    assert gone.startswith("session=;") and "Max-Age=0" in gone
    assert store.open(cookie).get("user") is None
    assert redis_client.dbsize() == 0


def test_close_leaves_a_store_it_did_not_make_open(store: SessionStore) -> None:
    app = bottle.Bottle()
    app.install(SessionPlugin(store=store))
    app.close()  # Bottle closes every plugin
    session = store.open(None)
    session["still"] = "works"
    assert session.get("still") == "works"


# ------------------------------------------------------------------ a real server


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class _ThreadingServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True
    request_queue_size = 512  # all 200 connections may arrive at once


@pytest.fixture
def threaded_server(store: SessionStore) -> Iterator[int]:
    app = bottle.Bottle()
    app.install(SessionPlugin(store=store))

    @app.route("/start")
    def start(session: Session) -> str:
        session["started"] = "yes"
        return "ok"

    @app.route("/put/<n:int>")
    def put(n: int, session: Session) -> str:
        session[f"k{n}"] = n
        return str(n)

    server = make_server(
        "127.0.0.1", 0, app, server_class=_ThreadingServer, handler_class=_QuietHandler
    )
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield server.server_port
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def _get(port: int, path: str, cookie: str | None = None) -> tuple[int, str, list[str]]:
    """One request on a new connection: status, body and the Set-Cookie headers."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.request("GET", path, headers={"Cookie": cookie} if cookie else {})
        response = connection.getresponse()
        body = response.read().decode()
        return response.status, body, response.headers.get_all("Set-Cookie") or []
    finally:
        connection.close()


def test_200_concurrent_requests_to_one_session_all_survive(
    threaded_server: int, store: SessionStore
) -> None:
    status, _, set_cookies = _get(threaded_server, "/start")
    assert status == 200 and len(set_cookies) == 1
    cookie = set_cookies[0].split(";", 1)[0]

    count = 200
    barrier = threading.Barrier(count)
    results: list[tuple[int, str] | BaseException] = [RuntimeError("not run")] * count

    def fire(n: int) -> None:
        try:
            barrier.wait(timeout=60)
            status, body, _ = _get(threaded_server, f"/put/{n}", cookie)
            results[n] = (status, body)
        except BaseException as exc:
            results[n] = exc

    threads = [threading.Thread(target=fire, args=(n,), daemon=True) for n in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert results == [(200, str(n)) for n in range(count)]

    stored = store.open(cookie).to_dict()
    assert stored == {"started": "yes", **{f"k{n}": n for n in range(count)}}


# ----------------------------------------------------------------------- streamed bodies


def make_streaming_app(store: SessionStore) -> bottle.Bottle:
    """/stream/<what>: a generator body that uses the session after the route returned.

    ``write`` writes, ``regenerate`` gives a new id, ``early`` writes before the first
    chunk (Bottle runs that part too after the route returned); ``seed`` writes first.
    """
    app = bottle.Bottle()
    app.install(SessionPlugin(store=store))

    @app.route("/stream/<what>")
    def stream(what: str, session: Session) -> Iterator[str]:
        if what == "seed":
            session["cart"] = ["apple"]

        def body() -> Iterator[str]:
            if what == "early":
                session["early"] = True
            yield "first "
            if what == "write":
                session["late"] = True
            elif what == "regenerate":
                session.regenerate()
            yield "second"

        return body()

    @app.route("/get/<key>")
    def get_value(key: str, session: Session) -> str:
        return repr(session.get(key))

    return app


def session_keys(client: redis.Redis, store: SessionStore) -> list[bytes]:
    return sorted(client.keys(store.config.prefix + "*"))


def test_streamed_body_writes_to_an_existing_session(
    store: SessionStore, redis_client: redis.Redis
) -> None:
    browser = webtest.TestApp(make_streaming_app(store))
    cookie = cookie_of(browser.get("/stream/seed"))
    assert cookie is not None
    response = browser.get("/stream/write")
    assert response.text == "first second"
    assert cookie_of(response) is None
    assert store.open(cookie)["late"] is True
    assert len(session_keys(redis_client, store)) == 1


def test_streamed_body_creating_a_session_raises_and_leaves_no_key(
    store: SessionStore, redis_client: redis.Redis
) -> None:
    browser = webtest.TestApp(make_streaming_app(store))
    with pytest.raises(HeadersSentError, match="writing 'late' after the response headers"):
        browser.get("/stream/write")
    # Before the first chunk Bottle still catches it, and answers its own 500.
    early = browser.get("/stream/early", status=500)
    assert cookie_of(early) is None
    assert session_keys(redis_client, store) == []


def test_streamed_body_regenerating_raises_and_keeps_the_session(
    store: SessionStore, redis_client: redis.Redis
) -> None:
    browser = webtest.TestApp(make_streaming_app(store))
    browser.get("/stream/seed")
    before = session_keys(redis_client, store)
    with pytest.raises(HeadersSentError, match=r"regenerate\(\)"):
        browser.get("/stream/regenerate")
    assert session_keys(redis_client, store) == before
    assert browser.get("/get/cart").text == "['apple']"  # the old cookie still reaches it
