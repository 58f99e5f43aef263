"""hashsession.compat.bottle_session through Bottle's own WSGI app and a real redis-server.

Apps written for bottle-session 1.0 must run with only their import changed, and the
sessions bottle-session left in Redis must keep working.
"""

from __future__ import annotations

import re
import sys
import types
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timedelta
from typing import Any

import bottle
import pytest
import redis
import webtest

from conftest import Counted
from hashsession import BackendError, ConfigurationError, EncodeError, HeadersSentError
from hashsession import bottle as native
from hashsession.compat import bottle_session
from hashsession.embedded import EmbeddedRedis, free_port
from hashsession.scripts import EVERY

COOKIE = "bottle.session"
HEX_ID = re.compile(r"[0-9a-f]{32}")
WEEK = 7 * 24 * 3600


def cookie_of(response: webtest.TestResponse, name: str = COOKIE) -> tuple[str, list[str]] | None:
    """The value and attributes of the ``Set-Cookie`` a response sends for ``name``."""
    found = []
    for header in response.headers.getall("Set-Cookie"):
        head, *attrs = (part.strip() for part in header.split(";"))
        cname, _, value = head.partition("=")
        if cname == name:
            found.append((value, attrs))
    assert len(found) <= 1, found
    return found[0] if found else None


def key_of(cookie_value: str) -> str:
    """Where bottle-session kept the session a cookie names."""
    return f"session:{uuid.UUID(cookie_value)}"


@pytest.fixture
def pool(redis_url: str) -> Iterator[redis.ConnectionPool]:
    """A pool on the emptied fixture server, to hand to plugins as the README does."""
    made = redis.ConnectionPool.from_url(redis_url)
    yield made
    made.disconnect()


@pytest.fixture
def make_app(pool: redis.ConnectionPool) -> Iterator[Callable[..., bottle.Bottle]]:
    """``make_app(**plugin_kwargs)``: an app with the compat plugin on the fixture server."""
    apps: list[bottle.Bottle] = []

    def make(**kwargs: Any) -> bottle.Bottle:
        app = bottle.Bottle()
        plugin = bottle_session.SessionPlugin(**kwargs)
        plugin.connection_pool = pool
        app.install(plugin)

        @app.route("/set/<key>/<value>")
        def set_value(key: str, value: str, session: bottle_session.Session) -> str:
            session[key] = value
            return "ok"

        @app.route("/get/<key>")
        def get_value(key: str, session: bottle_session.Session) -> str:
            return repr(session[key])

        @app.route("/idle")
        def idle(session: bottle_session.Session) -> str:
            return "idle"

        apps.append(app)
        return app

    yield make
    for app in apps:
        app.close()


# ------------------------------------------------------------- the README, unchanged

README_BASIC = """
from hashsession.compat import bottle_session
import bottle

app = bottle.app()
plugin = bottle_session.SessionPlugin(cookie_lifetime=600)
app.install(plugin)

@bottle.route('/')
def index(session):
    user_name = session.get('name')
    if user_name is not None:
        return "Hello, %s"%user_name
    else:
        return "I don't recognize you."

@bottle.route('/set/:user_name')
def set_name(session,user_name=None):
    if user_name is not None:
        session['name']=user_name
        return "I recognize you now."
    else:
        return "What was that?"

bottle.debug(True)
bottle.run(app=app,host='localhost',port=8888)
"""

README_WITH_BOTTLE_REDIS = """
from hashsession.compat import bottle_session
import bottle_redis
import bottle
import redis
from datetime import datetime

app = bottle.app()
session_plugin = bottle_session.SessionPlugin()
redis_plugin = bottle_redis.RedisPlugin()

connection_pool = redis.ConnectionPool(host='localhost', port=6379)

session_plugin.connection_pool = connection_pool
redis_plugin.redisdb = connection_pool
app.install(session_plugin)
app.install(redis_plugin)

@bottle.route('/')
def index(session,rdb):
    rdb.incr('visitors')
    visitor = rdb.get('visitors')
    last_visit = session['visit']
    session['visit'] = datetime.now().isoformat()

    return 'You are visitor %s, your last visit was on %s'%(visitor,last_visit)

bottle.debug(True)
bottle.run(app=app,host='localhost',port=8888)
"""


class _RedisPluginStandIn:
    """What the README uses of bottle-redis (not installed here): a pool in ``redisdb``,
    and a ``redis.Redis`` on it passed to routes naming ``rdb``."""

    name = "redis"
    api = 2

    def __init__(self, host: str = "localhost", port: int = 6379, database: int = 0) -> None:
        self.host, self.port, self.database = host, port, database
        self.keyword = "rdb"
        self.redisdb: redis.ConnectionPool | None = None

    def setup(self, app: bottle.Bottle) -> None:
        if self.redisdb is None:
            self.redisdb = redis.ConnectionPool(host=self.host, port=self.port, db=self.database)

    def apply(self, callback: Callable[..., Any], route: Any) -> Callable[..., Any]:
        import inspect

        if self.keyword not in inspect.signature(route.callback).parameters:
            return callback

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            kwargs[self.keyword] = redis.Redis(connection_pool=self.redisdb)
            return callback(*args, **kwargs)

        return wrapper


@pytest.fixture
def readme(
    monkeypatch: pytest.MonkeyPatch, redis_url: str
) -> Iterator[Callable[[str], dict[str, Any]]]:
    """``readme(source)`` runs a README example and returns the app ``bottle.run`` got.

    The README's Redis is localhost:6379, which tests never touch: every
    ``redis.ConnectionPool(...)`` made while it runs is pointed at the fixture server
    instead, and the arguments it was made with are recorded.
    """
    real_pool = redis.ConnectionPool
    pools: list[dict[str, Any]] = []

    def pool_on_fixture_server(**kwargs: Any) -> redis.ConnectionPool:
        pools.append(kwargs)
        return real_pool.from_url(redis_url)

    monkeypatch.setattr(redis, "ConnectionPool", pool_on_fixture_server)
    monkeypatch.setitem(
        sys.modules, "bottle_redis", types.SimpleNamespace(RedisPlugin=_RedisPluginStandIn)
    )
    monkeypatch.setattr(bottle, "DEBUG", bottle.DEBUG)  # restored after bottle.debug(True)
    runs: list[dict[str, Any]] = []
    monkeypatch.setattr(bottle, "run", lambda **kw: runs.append(kw))
    apps: list[bottle.Bottle] = []

    def run(source: str) -> dict[str, Any]:
        bottle.default_app.push()  # a fresh default app, so the README's routes do not leak
        try:
            exec(compile(source, "README", "exec"), {"__name__": "readme"})
        finally:
            apps.append(bottle.default_app.pop())
        assert len(runs) == 1
        return {**runs.pop(), "pools": pools}

    yield run
    for app in apps:
        app.close()


@pytest.mark.filterwarnings("ignore:.*deprecated.*:DeprecationWarning")  # the README's ':name'
def test_readme_basic_example_runs_with_only_the_import_changed(
    readme: Callable[[str], dict[str, Any]], redis_client: redis.Redis
) -> None:
    ran = readme(README_BASIC)
    assert (ran["host"], ran["port"]) == ("localhost", 8888)
    # bottle-session's defaults asked for: localhost:6379, database 0, no password.
    assert ran["pools"] == [{"host": "localhost", "port": 6379, "db": 0, "password": None}]
    browser = webtest.TestApp(ran["app"])

    assert browser.get("/").text == "I don't recognize you."
    set_name = browser.get("/set/Chris")
    assert set_name.text == "I recognize you now."
    cookie = cookie_of(set_name)
    assert cookie is not None
    value, attrs = cookie
    assert HEX_ID.fullmatch(value)
    assert "Max-Age=600" in attrs and "Path=/" in attrs
    assert redis_client.hget(key_of(value), "name") == b"Chris"
    assert 590 < redis_client.ttl(key_of(value)) <= 600

    assert browser.get("/").text == "Hello, Chris"
    assert webtest.TestApp(ran["app"]).get("/").text == "I don't recognize you."


def test_readme_bottle_redis_example_runs_with_only_the_import_changed(
    readme: Callable[[str], dict[str, Any]], redis_client: redis.Redis
) -> None:
    ran = readme(README_WITH_BOTTLE_REDIS)
    app = ran["app"]
    session_plugin, redis_plugin = app.plugins[-2:]
    shared = session_plugin.connection_pool
    assert ran["pools"] == [{"host": "localhost", "port": 6379}]  # only the README's own pool
    assert redis_plugin.redisdb is shared
    assert session_plugin.store.client.connection_pool is shared

    browser = webtest.TestApp(app)
    first = browser.get("/")
    # A missing key reads as None, as it did with bottle-session.
    assert first.text == "You are visitor b'1', your last visit was on None"
    second = browser.get("/")
    match = re.fullmatch(r"You are visitor b'2', your last visit was on (\S+)", second.text)
    assert match is not None
    datetime.fromisoformat(match.group(1))  # what the first visit stored, read back as text
    assert redis_client.get("visitors") == b"2"
    cookie = cookie_of(first)
    assert cookie is not None
    assert redis_client.hget(key_of(cookie[0]), "visit") not in (None, match.group(1).encode())


# -------------------------------------------------------------- defaults and settings


def test_defaults_match_bottle_session() -> None:
    plugin = bottle_session.SessionPlugin()
    assert (plugin.host, plugin.port, plugin.db, plugin.password) == ("localhost", 6379, 0, None)
    assert (plugin.cookie_name, plugin.cookie_lifetime) == ("bottle.session", 300)
    assert (plugin.cookie_secure, plugin.cookie_httponly) == (False, False)
    assert plugin.keyword == "session"
    assert plugin.connection_pool is None  # made at install, so it can be set before
    assert (plugin.name, plugin.api) == ("session", 2)
    assert isinstance(plugin, native.SessionPlugin)
    assert bottle_session.MAX_TTL == WEEK


def test_default_cookie_and_lifetime(
    make_app: Callable[..., bottle.Bottle], redis_client: redis.Redis
) -> None:
    response = webtest.TestApp(make_app()).get("/set/a/b")
    cookie = cookie_of(response)
    assert cookie is not None
    value, attrs = cookie
    assert HEX_ID.fullmatch(value)
    assert "Path=/" in attrs and "Max-Age=300" in attrs and "SameSite=Lax" in attrs
    assert "HttpOnly" not in attrs and "Secure" not in attrs  # bottle-session's defaults
    assert 290 < redis_client.ttl(key_of(value)) <= 300


def test_cookie_lifetime_none_is_a_browser_cookie_and_a_week_in_redis(
    make_app: Callable[..., bottle.Bottle], redis_client: redis.Redis
) -> None:
    response = webtest.TestApp(make_app(cookie_lifetime=None)).get("/set/a/b")
    cookie = cookie_of(response)
    assert cookie is not None
    value, attrs = cookie
    assert not any(a.startswith(("Max-Age", "Expires")) for a in attrs)
    assert WEEK - 10 < redis_client.ttl(key_of(value)) <= WEEK


def test_cookie_options(make_app: Callable[..., bottle.Bottle], redis_client: redis.Redis) -> None:
    app = make_app(
        cookie_name="sid",
        cookie_lifetime=timedelta(hours=1),
        cookie_secure=True,
        cookie_httponly=True,
    )
    response = webtest.TestApp(app, extra_environ={"wsgi.url_scheme": "https"}).get("/set/a/b")
    cookie = cookie_of(response, "sid")
    assert cookie is not None
    value, attrs = cookie
    assert {"Secure", "HttpOnly", "Max-Age=3600"} <= set(attrs)
    assert 3590 < redis_client.ttl(key_of(value)) <= 3600


def test_host_port_db_and_password_make_the_pool(
    redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    plugin = bottle_session.SessionPlugin(host="127.0.0.1", port=redis_server.port, db=3)
    app = bottle.Bottle()
    app.install(plugin)

    @app.route("/")
    def index(session: bottle_session.Session) -> str:
        session["where"] = "db 3"
        return "ok"

    try:
        response = webtest.TestApp(app).get("/")
        assert plugin.connection_pool is not None
        kwargs = plugin.connection_pool.connection_kwargs
        assert (kwargs["host"], kwargs["port"], kwargs["db"]) == ("127.0.0.1", redis_server.port, 3)
        assert kwargs.get("password") is None
        cookie = cookie_of(response)
        assert cookie is not None
        assert redis_client.dbsize() == 0
        db3 = redis.Redis(host="127.0.0.1", port=redis_server.port, db=3)
        assert db3.hget(key_of(cookie[0]), "where") == b"db 3"
        db3.flushdb()
        db3.close()
    finally:
        app.close()


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"cookie_lifetime": 0}, "cookie_lifetime"),
        ({"cookie_lifetime": -5}, "cookie_lifetime"),
        ({"cookie_lifetime": 1.5}, "cookie_lifetime"),
        ({"cookie_lifetime": "300"}, "cookie_lifetime"),
        ({"cookie_name": "two words"}, "cookie_name"),
        ({"cookie_name": ""}, "cookie_name"),
        ({"keyword": "not a name"}, "keyword"),
    ],
)
def test_bad_arguments_are_refused_at_start_up(kwargs: dict[str, Any], setting: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        bottle_session.SessionPlugin(**kwargs)
    assert caught.value.setting == setting


def test_decode_responses_pool_is_refused_at_install(redis_url: str) -> None:
    plugin = bottle_session.SessionPlugin()
    plugin.connection_pool = redis.ConnectionPool.from_url(redis_url, decode_responses=True)
    with pytest.raises(ConfigurationError) as caught:
        bottle.Bottle().install(plugin)
    assert caught.value.setting == "redis"


def test_unreachable_redis_is_loud() -> None:
    app = bottle.Bottle()
    app.config["catchall"] = False
    app.install(bottle_session.SessionPlugin(host="127.0.0.1", port=free_port()))

    @app.route("/")
    def index(session: bottle_session.Session) -> str:
        session["a"] = "b"
        return "never"

    with pytest.raises(BackendError):
        webtest.TestApp(app).get("/")
    app.close()


# ------------------------------------------------------------------ plugins together


def test_same_keyword_twice_is_a_plugin_error(pool: redis.ConnectionPool) -> None:
    app = bottle.Bottle()
    first = bottle_session.SessionPlugin()
    first.connection_pool = pool
    app.install(first)
    with pytest.raises(bottle.PluginError, match="'session'"):
        app.install(bottle_session.SessionPlugin())
    with pytest.raises(bottle.PluginError, match="'session'"):
        app.install(native.SessionPlugin(store=first.store))
    app.close()


def test_different_keywords_both_inject(pool: redis.ConnectionPool) -> None:
    app = bottle.Bottle()
    for keyword, cookie_name in (("session", "shop"), ("admin", "admin")):
        plugin = bottle_session.SessionPlugin(keyword=keyword, cookie_name=cookie_name)
        plugin.connection_pool = pool
        app.install(plugin)

    @app.route("/")
    def index(session: bottle_session.Session, admin: bottle_session.Session) -> str:
        session["cart"] = "apples"
        admin["role"] = "owner"
        return "ok"

    @app.route("/read")
    def read(session: bottle_session.Session, admin: bottle_session.Session) -> str:
        return f"{session['cart']}/{admin['role']}"

    browser = webtest.TestApp(app)
    response = browser.get("/")
    assert cookie_of(response, "shop") is not None and cookie_of(response, "admin") is not None
    assert browser.get("/read").text == "apples/owner"
    app.close()


def test_close_keeps_a_pool_shared_with_other_plugins(pool: redis.ConnectionPool) -> None:
    app = bottle.Bottle()
    plugin = bottle_session.SessionPlugin()
    plugin.connection_pool = pool
    app.install(plugin)
    app.close()
    assert redis.Redis(connection_pool=pool).ping() is True


# --------------------------------------------------------- data bottle-session wrote


def test_sessions_bottle_session_wrote_keep_working(
    make_app: Callable[..., bottle.Bottle], redis_client: redis.Redis
) -> None:
    old = uuid.uuid4()
    key = f"session:{old}"
    redis_client.hset(key, mapping={"name": "Chris", "visits": "4"})
    redis_client.expire(key, 20)
    browser = webtest.TestApp(make_app())
    browser.set_cookie(COOKIE, old.hex)

    response = browser.get("/get/name")
    assert response.text == "'Chris'"
    assert browser.get("/get/visits").text == "'4'"
    assert 290 < redis_client.ttl(key) <= 300  # the lifetime slid on use
    cookie = cookie_of(response)
    assert cookie is not None and cookie[0] == old.hex  # refreshed, same id
    browser.get("/set/name/Ann")
    assert redis_client.hgetall(key) == {b"name": b"Ann", b"visits": b"4"}


def test_sessions_written_here_are_bottle_session_data(
    make_app: Callable[..., bottle.Bottle], redis_client: redis.Redis
) -> None:
    response = webtest.TestApp(make_app()).get("/set/name/Chris")
    cookie = cookie_of(response)
    assert cookie is not None
    key = key_of(cookie[0])
    assert redis_client.keys("*") == [key.encode()]
    assert redis_client.type(key) == b"hash"
    assert redis_client.hget(key, "name") == b"Chris"  # plain text, as bottle-session wrote
    user_fields = {k for k in redis_client.hkeys(key) if not k.startswith(b"\x00")}
    assert user_fields == {b"name"}


def test_unknown_and_malformed_ids_are_never_adopted(
    make_app: Callable[..., bottle.Bottle], redis_client: redis.Redis
) -> None:
    app = make_app()
    for planted in (uuid.uuid4().hex, "not-a-uuid"):
        browser = webtest.TestApp(app)
        browser.set_cookie(COOKIE, planted)
        response = browser.get("/set/a/b")
        cookie = cookie_of(response)
        assert cookie is not None and cookie[0] != planted and HEX_ID.fullmatch(cookie[0])
        assert planted == "not-a-uuid" or not redis_client.exists(key_of(planted))
    assert redis_client.dbsize() == 2


def test_a_cookie_in_any_uuid_spelling_finds_the_session(
    make_app: Callable[..., bottle.Bottle], redis_client: redis.Redis
) -> None:
    old = uuid.uuid4()
    redis_client.hset(f"session:{old}", "name", "Chris")
    for spelling in (str(old), old.hex.upper()):
        browser = webtest.TestApp(make_app())
        browser.set_cookie(COOKIE, spelling)
        assert browser.get("/get/name").text == "'Chris'"


# -------------------------------------------------------------- the session object


def test_session_reads_and_writes_like_bottle_session(pool: redis.ConnectionPool) -> None:
    app = bottle.Bottle()
    plugin = bottle_session.SessionPlugin()
    plugin.connection_pool = pool
    app.install(plugin)
    checks: dict[str, Any] = {}

    @app.route("/")
    def index(session: bottle_session.Session) -> str:
        checks["missing item"] = session["missing"]
        checks["missing get"] = session.get("missing", "fallback")
        session["number"] = 5
        session["float"] = 2.5
        session["bytes"] = b"raw"
        session["empty"] = ""
        checks["number"] = session["number"]
        checks["float"] = session["float"]
        checks["bytes"] = session["bytes"]
        checks["empty get"] = session.get("empty", "fallback")
        checks["has_key"] = (session.has_key("number"), session.has_key("nope"))
        checks["in"] = ("number" in session, "nope" in session)
        del session["nope"]  # no error for a missing key
        checks["len"] = len(session)
        checks["keys"] = session.keys()
        checks["values"] = session.values()
        checks["items"] = session.items()
        checks["iter"] = sorted(session)
        checks["dict"] = dict(session)
        checks["incr"] = session.incr("number")
        for bad in ({"a": 1}, None, True):
            with pytest.raises(EncodeError):
                session["bad"] = bad
        checks["bad"] = "bad" in session
        return "ok"

    webtest.TestApp(app).get("/")
    stored = {"number": "5", "float": "2.5", "bytes": "raw", "empty": ""}
    assert checks["missing item"] is None
    assert checks["missing get"] == "fallback"
    assert (checks["number"], checks["float"], checks["bytes"]) == ("5", "2.5", "raw")
    assert checks["empty get"] == "fallback"
    assert checks["has_key"] == (True, False) and checks["in"] == (True, False)
    assert checks["len"] == 4
    assert isinstance(checks["keys"], list) and sorted(checks["keys"]) == sorted(stored)
    assert isinstance(checks["values"], list) and sorted(checks["values"]) == sorted(
        stored.values()
    )
    assert isinstance(checks["items"], list) and dict(checks["items"]) == stored
    assert checks["iter"] == sorted(stored.items())  # iteration yields pairs
    assert checks["dict"] == stored
    assert checks["incr"] == 6
    assert checks["bad"] is False


def preload_scripts(client: redis.Redis) -> None:
    for script in EVERY:
        client.script_load(script.source)


def test_round_trips(redis_url: str, redis_client: redis.Redis) -> None:
    preload_scripts(redis_client)
    counted = Counted(redis_url)
    app = bottle.Bottle()
    plugin = bottle_session.SessionPlugin()
    plugin.connection_pool = counted.client.connection_pool
    app.install(plugin)

    @app.route("/set")
    def set_value(session: bottle_session.Session) -> str:
        session["a"] = "1"
        return "ok"

    @app.route("/read")
    def read(session: bottle_session.Session) -> str:
        return f"{session['a']}{session.get('b')}{dict(session)}"

    @app.route("/idle")
    def idle(session: bottle_session.Session) -> str:
        return "idle"

    browser = webtest.TestApp(app)
    with counted.expect(1):
        browser.get("/set")  # a brand-new session: fields, metadata and TTL together
    with counted.expect(3):
        assert browser.get("/read").text == "1None{'a': '1'}"
    with counted.expect(0):
        response = browser.get("/idle")
    assert cookie_of(response) is None and "Vary" not in response.headers
    app.close()
    counted.close()


def test_regenerate_moves_the_data_to_a_new_id(
    make_app: Callable[..., bottle.Bottle], redis_client: redis.Redis
) -> None:
    app = make_app()

    @app.route("/login/<user>")
    def login(user: str, session: bottle_session.Session) -> str:
        session.regenerate()
        session["user"] = user
        return "ok"

    browser = webtest.TestApp(app)
    before = cookie_of(browser.get("/set/cart/3"))
    after = cookie_of(browser.get("/login/ann"))
    assert before is not None and after is not None and before[0] != after[0]
    assert HEX_ID.fullmatch(after[0])
    assert not redis_client.exists(key_of(before[0]))
    assert redis_client.hget(key_of(after[0]), "cart") == b"3"
    assert 290 < redis_client.ttl(key_of(after[0])) <= 300
    assert browser.get("/get/user").text == "'ann'"


def test_destroy_deletes_the_session(
    make_app: Callable[..., bottle.Bottle], redis_client: redis.Redis
) -> None:
    app = make_app()

    @app.route("/logout")
    def logout(session: bottle_session.Session) -> str:
        session.destroy()
        return "bye"

    @app.route("/logout-and-note")
    def logout_and_note(session: bottle_session.Session) -> str:
        session.destroy()
        session["note"] = "fresh"
        return "bye"

    browser = webtest.TestApp(app)
    first = cookie_of(browser.get("/set/user/ann"))
    assert first is not None
    dropped = cookie_of(browser.get("/logout"))
    assert dropped is not None and dropped[0] == "" and "Max-Age=0" in dropped[1]
    assert redis_client.dbsize() == 0

    second = cookie_of(browser.get("/set/user/bob"))
    fresh = cookie_of(browser.get("/logout-and-note"))
    assert second is not None and fresh is not None and fresh[0] not in ("", second[0])
    assert not redis_client.exists(key_of(second[0]))
    assert browser.get("/get/note").text == "'fresh'"
    assert browser.get("/get/user").text == "None"


def test_session_is_reachable_from_bottle_request(make_app: Callable[..., bottle.Bottle]) -> None:
    app = make_app()

    @app.route("/request")
    def via_request(session: bottle_session.Session) -> str:
        return str(bottle.request.session is session)

    assert webtest.TestApp(app).get("/request").text == "True"


def test_public_names() -> None:
    assert set(bottle_session.__all__) == {"MAX_TTL", "Session", "SessionPlugin"}


def test_routes_can_skip_the_plugin_by_its_old_name(make_app: Callable[..., bottle.Bottle]) -> None:
    app = make_app()

    @app.route("/skipped", skip=["session"])
    def skipped(session: Any = "not injected") -> str:
        return str(session)

    assert webtest.TestApp(app).get("/skipped").text == "not injected"


def test_generator_body_follows_the_native_plugin(
    make_app: Callable[..., bottle.Bottle], redis_client: redis.Redis
) -> None:
    """After the route returned, only a session the browser already names can be written."""
    app = make_app()

    @app.route("/stream")
    def stream(session: bottle_session.Session) -> Iterator[str]:
        def body() -> Iterator[str]:
            yield "first "
            session["late"] = "yes"
            yield "second"

        return body()

    browser = webtest.TestApp(app)
    with pytest.raises(HeadersSentError, match="writing 'late'"):
        browser.get("/stream")
    assert redis_client.keys("*") == []
    browser.get("/set/name/ann")
    assert browser.get("/stream").text == "first second"
    assert browser.get("/get/late").text == "'yes'"
