"""hashsession.flask: flask.session as a live session, through Flask's own test client.

Also Flask-Login, Flask-WTF and flash() on top of it, every config key, and
concurrent requests to one session over a real threaded werkzeug server.
"""

from __future__ import annotations

import http.client
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from typing import Any
from urllib.parse import urlsplit

import flask
import pytest
import redis
from flask import Flask, flash, get_flashed_messages, render_template_string, request, session
from flask_login import LoginManager, UserMixin, current_user, login_user, logout_user
from flask_wtf.csrf import CSRFProtect, generate_csrf
from markupsafe import Markup
from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.test import TestResponse

from hashsession import ConfigurationError, HeadersSentError, SessionStore
from hashsession.cookies import Signer
from hashsession.flask import (
    FlaskOptions,
    FlaskSession,
    HashSession,
    HashSessionInterface,
    TaggedJSONCodec,
    current_session,
    regenerate,
    store_from_config,
)
from hashsession.scripts import EVERY

SECRET = "a test secret"
AppFactory = Callable[..., Flask]


def add_routes(app: Flask) -> None:
    """Small views that each do one thing with ``flask.session``."""

    @app.get("/set/<key>/<value>")
    def set_value(key: str, value: str) -> str:
        session[key] = value
        return "ok"

    @app.get("/get/<key>")
    def get_value(key: str) -> str:
        return repr(session.get(key))

    @app.get("/nothing")
    def nothing() -> str:
        return "nothing"

    @app.get("/zero")
    def zero() -> str:
        session["n"] = 0
        return "ok"

    @app.get("/incr")
    def incr() -> str:
        session["n"] += 1  # a read, then one HINCRBY
        return "ok"

    @app.get("/flash/<message>")
    def add_flash(message: str) -> str:
        flash(message, "info")
        return "ok"

    @app.get("/flashes")
    def flashes() -> str:
        return repr(get_flashed_messages(with_categories=True))

    @app.get("/permanent")
    def is_permanent() -> str:
        return str(session.permanent)

    @app.get("/permanent/<int:on>")
    def make_permanent(on: int) -> str:
        session.permanent = bool(on)
        return "ok"

    @app.get("/regenerate")
    def regen() -> str:
        regenerate()
        return "ok"

    @app.get("/boom")
    def boom() -> str:
        session["saved"] = "before the crash"
        raise RuntimeError("boom")


@pytest.fixture
def make_app(redis_url: str) -> Iterator[AppFactory]:
    """Flask apps with HashSession on the test's Redis (100 s idle timeout unless given)."""
    stores: list[SessionStore] = []

    def make(*, drop: tuple[str, ...] = (), **config: Any) -> Flask:
        app = Flask(__name__)
        app.config["SECRET_KEY"] = SECRET
        if "HASHSESSION_STORE" not in config:
            app.config.update(HASHSESSION_REDIS=redis_url, HASHSESSION_TTL=100)
        app.config.update(config)
        for key in drop:
            del app.config[key]
        add_routes(app)
        stores.append(HashSession().init_app(app).store)
        return app

    yield make
    for store in stores:
        store.close()


@pytest.fixture
def app(make_app: AppFactory) -> Flask:
    return make_app()


def store_of(app: Flask) -> SessionStore:
    interface = app.session_interface
    assert isinstance(interface, HashSessionInterface)
    return interface.store


def set_cookies(response: TestResponse, name: str = "session") -> list[str]:
    return [c for c in response.headers.getlist("Set-Cookie") if c.startswith(f"{name}=")]


def cookie_value(response: TestResponse, name: str = "session") -> str | None:
    """The value of the session cookie the response sets, if it sets one."""
    found = set_cookies(response, name)
    assert len(found) <= 1, found
    return found[0].split(";", 1)[0].partition("=")[2] if found else None


def key_of(app: Flask, value: str) -> str:
    """The Redis key of the session a cookie value names."""
    config = store_of(app).config
    session_id = config.id_from_cookie(value)
    assert session_id is not None
    return config.key_of(session_id)


def preload_scripts(client: redis.Redis) -> None:
    for script in EVERY:
        client.script_load(script.source)


# ------------------------------------------------------------------ the session itself


def test_flask_session_is_the_live_session(app: Flask, redis_client: redis.Redis) -> None:
    seen: dict[str, Any] = {}

    @app.get("/live")
    def live() -> str:
        real = current_session()
        seen["type"] = type(real)
        session["a"] = [1, 2]
        # written before the view returns: the key holds it already
        key = store_of(app).config.key_of(real.id or "")
        seen["stored"] = redis_client.hget(key, "a")
        return "ok"

    client = app.test_client()
    response = client.get("/live")
    assert seen == {"type": FlaskSession, "stored": b"[1,2]"}
    assert cookie_value(response) is not None
    assert client.get("/get/a").data == b"[1, 2]"


def test_untouched_session_costs_nothing_and_sends_nothing(
    make_app: AppFactory, make_store: Callable[..., SessionStore], counted: Any
) -> None:
    preload_scripts(counted.client)
    app = make_app(HASHSESSION_STORE=make_store(redis=counted.client, secret_keys=[SECRET]))
    client = app.test_client()
    with counted.expect(1):  # a new session's first write creates it
        first = client.get("/set/a/1")
    assert cookie_value(first) is not None
    with counted.expect(0):
        untouched = client.get("/nothing")
        stranger = app.test_client().get("/nothing")
    for response in (untouched, stranger):
        assert response.headers.getlist("Set-Cookie") == []
        assert "Vary" not in response.headers
    with counted.expect(1):
        read = client.get("/get/a")
    assert read.data == b"'1'"
    assert read.headers.getlist("Set-Cookie") == []
    assert read.headers["Vary"] == "Cookie"
    client.get("/zero")
    with counted.expect(2):  # session["n"] += 1 is an HGET, then one HINCRBY
        client.get("/incr")
    assert client.get("/get/n").data == b"1"


def test_reading_a_new_session_creates_nothing(app: Flask, redis_client: redis.Redis) -> None:
    response = app.test_client().get("/get/a")
    assert response.data == b"None"
    assert response.headers.getlist("Set-Cookie") == []
    assert response.headers["Vary"] == "Cookie"
    assert redis_client.dbsize() == 0


def test_cookie_attributes_and_vary(app: Flask) -> None:
    @app.get("/vary")
    def vary() -> flask.Response:
        session["x"] = 1
        response = flask.make_response("ok")
        response.vary.add("Accept-Encoding")
        return response

    response = app.test_client().get("/vary")
    [cookie] = set_cookies(response)
    assert "; Path=/; HttpOnly; SameSite=Lax" in cookie
    assert "Max-Age" not in cookie and "Expires" not in cookie  # a browser-session cookie
    assert response.headers["Vary"] == "Accept-Encoding, Cookie"
    assert Signer([SECRET]).unsign(cookie_value(response) or "") is not None


def test_session_flags_follow_the_core(app: Flask) -> None:
    seen: list[tuple[bool, bool]] = []

    @app.get("/flags")
    def flags() -> str:
        real = current_session()
        before = (real.new, real.modified)
        session["x"] = 1
        seen.append(before)
        seen.append((real.new, real.modified))
        real.modified = True  # accepted and ignored: nothing is left to save
        return "ok"

    client = app.test_client()
    client.get("/flags")
    client.get("/flags")
    assert seen == [(True, False), (True, True), (False, False), (False, True)]
    with app.test_request_context(), pytest.raises(AttributeError):
        current_session().new = False


def test_counter_increments_across_requests(app: Flask) -> None:
    client = app.test_client()
    client.get("/zero")
    for _ in range(3):
        client.get("/incr")
    assert client.get("/get/n").data == b"3"


def test_forged_cookie_gives_a_fresh_session(app: Flask) -> None:
    client = app.test_client()
    client.set_cookie("session", "forged.value")
    response = client.get("/get/a")
    assert response.data == b"None"
    assert set_cookies(response) == []  # a cookie that does not verify is left alone


def test_session_transaction_in_the_test_client(app: Flask) -> None:
    client = app.test_client()
    with client.session_transaction() as sess:
        assert isinstance(sess, FlaskSession)
        sess["prepared"] = "by the test"
    assert client.get("/get/prepared").data == b"'by the test'"


def test_exception_after_a_write_still_sends_the_cookie(make_app: AppFactory) -> None:
    app = make_app(PROPAGATE_EXCEPTIONS=False)
    response = app.test_client().get("/boom")
    assert response.status_code == 500
    value = cookie_value(response)
    assert value is not None
    assert response.headers["Vary"] == "Cookie"
    assert store_of(app).open_id(value)["saved"] == "before the crash"


def test_regenerate_helper(app: Flask, redis_client: redis.Redis) -> None:
    client = app.test_client()
    old = cookie_value(client.get("/set/cart/3"))
    assert old is not None
    new = cookie_value(client.get("/regenerate"))
    assert new is not None and new != old
    assert client.get("/get/cart").data == b"'3'"
    assert redis_client.exists(key_of(app, old)) == 0
    stale = app.test_client()
    stale.set_cookie("session", old)
    assert stale.get("/get/cart").data == b"None"


def test_current_session_needs_hashsession() -> None:
    plain = Flask(__name__)
    plain.secret_key = SECRET
    with plain.test_request_context(), pytest.raises(ConfigurationError) as caught:
        current_session()
    assert caught.value.setting == "session_interface"


def test_flask_cookie_hooks_answer_from_the_store(make_app: AppFactory) -> None:
    app = make_app(HASHSESSION_COOKIE_NAME="sid", HASHSESSION_COOKIE_PATH="/app")
    interface = app.session_interface
    assert interface.get_cookie_name(app) == "sid"
    assert interface.get_cookie_path(app) == "/app"
    assert interface.get_cookie_domain(app) is None
    assert interface.get_cookie_samesite(app) == "Lax"
    assert interface.get_cookie_httponly(app) is True
    assert interface.get_cookie_secure(app) is True  # outside a request: nothing is local
    with app.test_request_context(base_url="http://localhost"):
        assert interface.get_cookie_secure(app) is False  # plain http to a loopback host
    with app.test_request_context(base_url="https://localhost"):
        assert interface.get_cookie_secure(app) is True
    assert interface.get_cookie_partitioned(app) is False


# ------------------------------------------------------------------ flash()


def test_flash_round_trip(app: Flask, redis_client: redis.Redis) -> None:
    client = app.test_client()
    client.get("/flash/hello")
    client.get("/flash/again")
    assert client.get("/flashes").data == b"[('info', 'hello'), ('info', 'again')]"
    assert client.get("/flashes").data == b"[]"
    # The flashes were all it held: popping them emptied the session, which ended (as in Flask)
    assert redis_client.dbsize() == 0


def test_flashed_markup_stays_markup(app: Flask) -> None:
    @app.get("/flash-markup")
    def flash_markup() -> str:
        flash(Markup("<b>saved</b>"))
        return "ok"

    @app.get("/page")
    def page() -> str:
        return render_template_string("{% for m in get_flashed_messages() %}{{ m }}{% endfor %}")

    client = app.test_client()
    client.get("/flash-markup")
    assert client.get("/page").data == b"<b>saved</b>"


def _session_key(store: SessionStore, client: Any) -> str:
    cookie = client.get_cookie("session")
    assert cookie is not None
    session_id = store.config.id_from_cookie(cookie.value)
    assert session_id is not None
    return store.config.key_of(session_id)


@pytest.mark.parametrize(
    "planted",
    [
        b'{" m":"<script>alert(1)</script>"}',  # Flask's own Markup tag
        b'{" hm":["<script>alert(1)</script>","forged-signature"]}',  # ours, unsigned
        b'[{" m":"<script>alert(1)</script>"}]',  # nested
    ],
)
def test_markup_planted_in_redis_is_rendered_escaped(
    app: Flask, redis_client: redis.Redis, planted: bytes
) -> None:
    @app.get("/show")
    def show() -> str:
        value = session.get("note")
        kinds = {type(v).__name__ for v in (value if isinstance(value, list) else [value])}
        return render_template_string("{{ kinds }} {{ value }}", kinds=sorted(kinds), value=value)

    client = app.test_client()
    client.get("/set/x/1")
    redis_client.hset(_session_key(store_of(app), client), "note", planted)
    page = client.get("/show").data
    assert b"<script>" not in page and b"&lt;script&gt;" in page
    assert b"Markup" not in page


def test_markup_is_markup_again_only_with_a_signing_key(redis_url: str) -> None:
    markup = Markup("<b>saved</b>")
    signed = TaggedJSONCodec(["k1"]).dumps({"m": markup, "t": (1, 2)})
    assert TaggedJSONCodec(["k1"]).loads(signed.encode()) == {"m": markup, "t": (1, 2)}
    assert type(TaggedJSONCodec(["k1"]).loads(signed.encode())["m"]) is Markup
    assert type(TaggedJSONCodec(["k2", "k1"]).loads(signed.encode())["m"]) is Markup  # rotation
    for reader in (TaggedJSONCodec(["k2"]), TaggedJSONCodec()):
        value = reader.loads(signed.encode())["m"]
        assert type(value) is str and value == "<b>saved</b>"
    unsigned = TaggedJSONCodec().dumps(markup)
    assert type(TaggedJSONCodec(["k1"]).loads(unsigned.encode())) is str
    flasks_own = flask.json.tag.TaggedJSONSerializer().dumps(markup)
    assert type(TaggedJSONCodec(["k1"]).loads(flasks_own.encode())) is str


def test_flashed_markup_is_plain_text_without_signing_keys(make_app: AppFactory) -> None:
    app = make_app(HASHSESSION_SECRET_KEYS=[])

    @app.get("/flash-markup")
    def flash_markup() -> str:
        flash(Markup("<b>saved</b>"))
        return "ok"

    @app.get("/page")
    def page() -> str:
        return render_template_string("{% for m in get_flashed_messages() %}{{ m }}{% endfor %}")

    client = app.test_client()
    client.get("/flash-markup")
    assert client.get("/page").data == b"&lt;b&gt;saved&lt;/b&gt;"


# ------------------------------------------------------------------ Flask-Login


class User(UserMixin):
    def __init__(self, user_id: str) -> None:
        self.id = user_id


def add_login(app: Flask) -> LoginManager:
    manager = LoginManager(app)

    @manager.user_loader
    def load_user(user_id: str) -> User | None:
        return User(user_id) if user_id in ("ann", "bob") else None

    @app.get("/login/<name>")
    def login(name: str) -> str:
        login_user(User(name), remember=request.args.get("remember") == "1")
        return "in"

    @app.get("/me")
    def me() -> str:
        return str(current_user.get_id()) if current_user.is_authenticated else "anonymous"

    @app.get("/logout")
    def logout() -> str:
        logout_user()
        return "out"

    return manager


def test_login_regenerates_the_id_and_logout_removes_the_user(
    app: Flask, redis_client: redis.Redis
) -> None:
    add_login(app)
    client = app.test_client()
    anonymous = cookie_value(client.get("/set/cart/3"))
    assert anonymous is not None
    assert client.get("/me").data == b"anonymous"

    login = client.get("/login/ann")
    logged_in = cookie_value(login)
    assert logged_in is not None and logged_in != anonymous
    assert client.get("/me").data == b"ann"
    assert client.get("/get/cart").data == b"'3'"  # the data moved with the session

    assert redis_client.exists(key_of(app, anonymous)) == 0
    attacker = app.test_client()  # someone who knew (or planted) the old id
    attacker.set_cookie("session", anonymous)
    assert attacker.get("/me").data == b"anonymous"
    assert attacker.get("/get/cart").data == b"None"

    assert client.get("/logout").data == b"out"
    assert client.get("/me").data == b"anonymous"
    assert client.get("/get/_user_id").data == b"None"
    assert client.get("/get/cart").data == b"'3'"  # logout keeps the rest by default
    assert redis_client.hget(key_of(app, logged_in), "_user_id") is None


def test_old_id_never_holds_the_logged_in_user(app: Flask, redis_client: redis.Redis) -> None:
    manager = add_login(app)
    generate = manager._session_identifier_generator
    seen: list[int] = []
    old_key: list[str] = []

    def spy() -> str:
        # login_user calls this after writing _user_id and _fresh, before its signal
        if request.path.startswith("/login") and old_key:
            seen.append(int(redis_client.exists(old_key[0])))
        return str(generate())

    manager._session_identifier_generator = spy
    client = app.test_client()
    anonymous = cookie_value(client.get("/set/cart/3"))
    assert anonymous is not None
    old_key.append(key_of(app, anonymous))
    client.get("/login/ann")
    assert seen == [0]


def test_remember_me(app: Flask) -> None:
    add_login(app)
    client = app.test_client()
    login = client.get("/login/ann?remember=1")
    remember = client.get_cookie("remember_token")
    assert remember is not None and set_cookies(login, "remember_token")

    # the server-side session is gone; the remember cookie logs the browser back in
    browser = app.test_client()
    browser.set_cookie("remember_token", remember.value)
    restored = browser.get("/me")
    assert restored.data == b"ann"
    assert cookie_value(restored) is not None
    assert browser.get("/me").data == b"ann"

    [cleared] = set_cookies(browser.get("/logout"), "remember_token")
    assert "Expires=Thu, 01 Jan 1970" in cleared
    assert browser.get_cookie("remember_token") is None
    assert browser.get("/me").data == b"anonymous"


def test_remember_cookie_login_on_an_existing_session_regenerates(app: Flask) -> None:
    add_login(app)
    first = app.test_client()
    first.get("/login/ann?remember=1")
    remember = first.get_cookie("remember_token")
    assert remember is not None

    browser = app.test_client()
    anonymous = cookie_value(browser.get("/set/cart/3"))
    browser.set_cookie("remember_token", remember.value)
    restored = browser.get("/me")
    assert restored.data == b"ann"
    new = cookie_value(restored)
    assert new is not None and new != anonymous
    assert browser.get("/get/cart").data == b"'3'"


def test_strong_session_protection(make_app: AppFactory) -> None:
    app = make_app(SESSION_PROTECTION="strong")
    add_login(app)
    client = app.test_client()
    client.get("/login/ann", headers={"User-Agent": "first"})
    assert client.get("/me", headers={"User-Agent": "first"}).data == b"ann"
    assert client.get("/me", headers={"User-Agent": "stolen"}).data == b"anonymous"
    assert client.get("/get/_user_id").data == b"None"  # the keys were removed


def test_login_round_trips(
    make_app: AppFactory, make_store: Callable[..., SessionStore], counted: Any
) -> None:
    preload_scripts(counted.client)
    app = make_app(HASHSESSION_STORE=make_store(redis=counted.client, secret_keys=[SECRET]))
    add_login(app)
    client = app.test_client()
    client.get("/set/cart/3")
    # the move to a new id (which also tells whether the new cookie is a permanent one),
    # Flask-Login's 3 writes and its after-request hook's 2 HEXISTS
    with counted.expect(6) as calls:
        client.get("/login/ann")
    assert calls.commands == ["EVALSHA"] * 4 + ["HEXISTS", "HEXISTS"]


def test_regenerate_on_login_can_be_turned_off(make_app: AppFactory) -> None:
    app = make_app(HASHSESSION_REGENERATE_ON_LOGIN=False)
    add_login(app)
    client = app.test_client()
    anonymous = cookie_value(client.get("/set/cart/3"))
    assert anonymous is not None
    assert set_cookies(client.get("/login/ann")) == []
    same = app.test_client()
    same.set_cookie("session", anonymous)
    assert same.get("/me").data == b"ann"


def test_invalidate_on_logout(make_app: AppFactory, redis_client: redis.Redis) -> None:
    app = make_app(HASHSESSION_INVALIDATE_ON_LOGOUT=True)
    add_login(app)
    client = app.test_client()
    client.get("/set/cart/3")
    logged_in = cookie_value(client.get("/login/ann?remember=1"))
    assert logged_in is not None

    logout = client.get("/logout")
    assert redis_client.exists(key_of(app, logged_in)) == 0
    [cleared] = set_cookies(logout, "remember_token")  # Flask-Login's note survived
    assert "Expires=Thu, 01 Jan 1970" in cleared
    assert client.get("/get/cart").data == b"None"
    assert client.get("/me").data == b"anonymous"


# ------------------------------------------------------------------ Flask-WTF


def test_csrf_protection(app: Flask, redis_client: redis.Redis) -> None:
    CSRFProtect(app)

    @app.route("/form", methods=["GET", "POST"])
    def form() -> str:
        return "accepted" if request.method == "POST" else generate_csrf()

    client = app.test_client()
    token = client.get("/form").data.decode()
    assert client.post("/form", data={"name": "x"}).status_code == 400
    assert client.post("/form", data={"csrf_token": "bogus"}).status_code == 400
    accepted = client.post("/form", data={"csrf_token": token})
    assert (accepted.status_code, accepted.data) == (200, b"accepted")
    [key] = redis_client.keys("hs:*")
    assert redis_client.hexists(key, "csrf_token")

    other = app.test_client()  # a token is only good with the session it came from
    other.get("/form")
    assert other.post("/form", data={"csrf_token": token}).status_code == 400


# ------------------------------------------------------------------ permanent


def test_permanent_is_per_session_and_sets_max_age(make_app: AppFactory) -> None:
    app = make_app(PERMANENT_SESSION_LIFETIME=timedelta(hours=2))
    add_login(app)
    client = app.test_client()
    [plain] = set_cookies(client.get("/set/a/1"))
    assert "Max-Age" not in plain
    assert client.get("/permanent").data == b"False"

    [made] = set_cookies(client.get("/permanent/1"))
    assert "Max-Age=7200" in made
    read = client.get("/permanent")
    assert read.data == b"True"
    [refreshed] = set_cookies(read)  # SESSION_REFRESH_EACH_REQUEST: the expiry slides
    assert "Max-Age=7200" in refreshed

    [moved] = set_cookies(client.get("/login/ann"))  # a new id keeps the session permanent
    assert "Max-Age=7200" in moved

    [unmade] = set_cookies(client.get("/permanent/0"))
    assert "Max-Age" not in unmade
    assert client.get("/permanent").data == b"False"
    assert client.get("/get/a").data == b"'1'"


def test_permanent_false_on_an_unstored_session_writes_nothing(
    app: Flask, redis_client: redis.Redis
) -> None:
    response = app.test_client().get("/permanent/0")
    assert response.headers.getlist("Set-Cookie") == []
    assert redis_client.dbsize() == 0


def test_permanent_flag_is_hidden_from_the_data(app: Flask) -> None:
    @app.get("/keys")
    def keys() -> str:
        return repr(sorted(session))

    client = app.test_client()
    client.get("/set/a/1")
    client.get("/permanent/1")
    assert client.get("/keys").data == b"['a']"


def test_all_sessions_permanent(make_app: AppFactory) -> None:
    app = make_app(HASHSESSION_PERMANENT=True, HASHSESSION_PERMANENT_LIFETIME=600)
    client = app.test_client()
    [first] = set_cookies(client.get("/set/a/1"))
    assert "Max-Age=600" in first
    assert client.get("/permanent").data == b"True"
    [refreshed] = set_cookies(client.get("/get/a"))  # slid with the session
    assert "Max-Age=600" in refreshed
    assert set_cookies(client.get("/nothing")) == []
    with app.test_request_context(), pytest.raises(ConfigurationError) as caught:
        current_session().permanent = False
    assert caught.value.setting == "HASHSESSION_PERMANENT"


def test_refresh_each_request_off(make_app: AppFactory) -> None:
    app = make_app(HASHSESSION_PERMANENT=True, SESSION_REFRESH_EACH_REQUEST=False)
    client = app.test_client()
    [first] = set_cookies(client.get("/set/a/1"))
    assert f"Max-Age={31 * 24 * 3600}" in first  # PERMANENT_SESSION_LIFETIME's default
    assert set_cookies(client.get("/get/a")) == []


# ------------------------------------------------------------------ config keys


def test_secret_key_signs_by_default_and_fallbacks_verify(make_app: AppFactory) -> None:
    old = make_app(SECRET_KEY="old key")
    old_client = old.test_client()
    value = cookie_value(old_client.get("/set/a/1"))
    assert value is not None and Signer(["old key"]).unsign(value) is not None

    rotated = make_app(SECRET_KEY="new key", SECRET_KEY_FALLBACKS=["old key"])
    client = rotated.test_client()
    client.set_cookie("session", value)
    assert client.get("/get/a").data == b"'1'"
    fresh = cookie_value(rotated.test_client().get("/set/b/2"))
    assert fresh is not None and Signer(["new key"]).unsign(fresh) is not None

    unrotated = make_app(SECRET_KEY="new key")
    stranger = unrotated.test_client()
    stranger.set_cookie("session", value)
    assert stranger.get("/get/a").data == b"None"


def test_secret_keys_key(make_app: AppFactory) -> None:
    app = make_app(HASHSESSION_SECRET_KEYS=["first", "second"])
    value = cookie_value(app.test_client().get("/set/a/1"))
    assert value is not None
    assert Signer(["first"]).unsign(value) is not None
    assert Signer([SECRET]).unsign(value) is None

    unsigned = make_app(HASHSESSION_SECRET_KEYS=[], SECRET_KEY=None)
    bare = cookie_value(unsigned.test_client().get("/set/a/1"))
    assert bare is not None and "." not in bare


def test_ttl_keys(make_app: AppFactory, redis_client: redis.Redis) -> None:
    def ttl_after_write(app: Flask) -> int:
        value = cookie_value(app.test_client().get("/set/a/1"))
        assert value is not None
        return int(redis_client.ttl(key_of(app, value)))

    assert 290 < ttl_after_write(make_app(HASHSESSION_TTL=300)) <= 300
    capped = make_app(HASHSESSION_TTL=timedelta(minutes=5), HASHSESSION_ABSOLUTE_TTL=240)
    assert 230 < ttl_after_write(capped) <= 240
    flasks = make_app(drop=("HASHSESSION_TTL",), PERMANENT_SESSION_LIFETIME=timedelta(minutes=7))
    assert 410 < ttl_after_write(flasks) <= 420


def test_prefix_key(make_app: AppFactory, redis_client: redis.Redis) -> None:
    app = make_app(HASHSESSION_PREFIX="myapp:")
    app.test_client().get("/set/a/1")
    [key] = redis_client.keys("*")
    assert key.startswith(b"myapp:")


def test_codec_key(make_app: AppFactory, redis_client: redis.Redis) -> None:
    json_app = make_app(HASHSESSION_CODEC="json")
    client = json_app.test_client()
    client.get("/flash/hi")
    assert client.get("/flashes").data == b"[['info', 'hi']]"  # plain JSON has no tuples

    redis_client.flushall()
    pickle_app = make_app(HASHSESSION_CODEC="pickle")
    pickle_app.test_client().get("/set/a/1")
    [key] = redis_client.keys("*")
    assert (redis_client.hget(key, "a") or b"")[:1] == b"\x80"

    assert isinstance(store_of(make_app()).config.codec, TaggedJSONCodec)


def test_cookie_keys(make_app: AppFactory) -> None:
    app = make_app(
        HASHSESSION_COOKIE_NAME="sid",
        HASHSESSION_COOKIE_DOMAIN="example.org",
        HASHSESSION_COOKIE_PATH="/shop",
        HASHSESSION_COOKIE_SECURE=True,
        HASHSESSION_COOKIE_HTTPONLY=False,
        HASHSESSION_COOKIE_SAMESITE="strict",
    )
    [cookie] = set_cookies(app.test_client().get("/set/a/1"), "sid")
    assert "; Path=/shop; Domain=example.org; Secure; SameSite=Strict" in cookie
    assert "HttpOnly" not in cookie

    host = make_app(HASHSESSION_COOKIE_HOST_PREFIX=True, HASHSESSION_COOKIE_SECURE=True)
    assert set_cookies(host.test_client().get("/set/a/1"), "__Host-session")

    no_samesite = make_app(HASHSESSION_COOKIE_SAMESITE=None)
    [bare] = set_cookies(no_samesite.test_client().get("/set/a/1"))
    assert "SameSite" not in bare


def test_cookie_keys_default_to_flasks_own(make_app: AppFactory) -> None:
    app = make_app(
        SESSION_COOKIE_NAME="flask_sid",
        SESSION_COOKIE_DOMAIN="example.com",
        SESSION_COOKIE_PATH="/p",
        SESSION_COOKIE_SECURE=True,
        SESSION_COOKIE_HTTPONLY=False,
        SESSION_COOKIE_SAMESITE="None",
    )
    [cookie] = set_cookies(app.test_client().get("/set/a/1"), "flask_sid")
    assert "; Path=/p; Domain=example.com; Secure; SameSite=None" in cookie
    assert "HttpOnly" not in cookie

    rooted = make_app(APPLICATION_ROOT="/root")
    [under_root] = set_cookies(rooted.test_client().get("/set/a/1"))
    assert "Path=/root;" in under_root


def test_options_key(make_app: AppFactory) -> None:
    app = make_app(HASHSESSION_OPTIONS={"max_keys": 2}, PROPAGATE_EXCEPTIONS=False)
    client = app.test_client()
    client.get("/set/a/1")
    client.get("/set/b/2")
    assert client.get("/set/c/3").status_code == 500  # LimitExceededError
    assert client.get("/get/c").data == b"None"


def test_store_key(make_app: AppFactory, make_store: Callable[..., SessionStore]) -> None:
    store = make_store(prefix="given:", secret_keys=["k"])
    app = make_app(HASHSESSION_STORE=store)
    assert store_of(app) is store
    value = cookie_value(app.test_client().get("/set/a/1"))
    assert value is not None and store.open_id(value)["a"] == "1"


def test_init_app_factory_pattern(redis_url: str) -> None:
    extension = HashSession()
    one, two = Flask("one"), Flask("two")
    for app, prefix in ((one, "one:"), (two, "two:")):
        app.config.update(SECRET_KEY=SECRET, HASHSESSION_REDIS=redis_url, HASHSESSION_PREFIX=prefix)
        add_routes(app)
        interface = extension.init_app(app)
        assert app.extensions["hashsession"] is interface
    try:
        assert store_of(one).config.prefix == "one:"
        assert store_of(two).config.prefix == "two:"
    finally:
        store_of(one).close()
        store_of(two).close()


@pytest.mark.parametrize(
    ("config", "key"),
    [
        ({"HASHSESSION_TTL": "soon"}, "HASHSESSION_TTL"),
        ({"HASHSESSION_ABSOLUTE_TTL": -1}, "HASHSESSION_ABSOLUTE_TTL"),
        ({"HASHSESSION_PREFIX": 5}, "HASHSESSION_PREFIX"),
        ({"HASHSESSION_CODEC": "yaml"}, "HASHSESSION_CODEC"),
        ({"HASHSESSION_REDIS": "nope://x"}, "HASHSESSION_REDIS"),
        ({"HASHSESSION_SECRET_KEYS": "one key"}, "HASHSESSION_SECRET_KEYS"),
        ({"SECRET_KEY": None}, "HASHSESSION_SECRET_KEYS"),
        ({"SECRET_KEY": 42}, "SECRET_KEY"),
        ({"HASHSESSION_COOKIE_NAME": "a b"}, "HASHSESSION_COOKIE_NAME"),
        ({"HASHSESSION_COOKIE_PATH": "shop"}, "HASHSESSION_COOKIE_PATH"),
        ({"HASHSESSION_COOKIE_SECURE": "yes"}, "HASHSESSION_COOKIE_SECURE"),
        ({"HASHSESSION_COOKIE_SAMESITE": "sideways"}, "HASHSESSION_COOKIE_SAMESITE"),
        ({"SESSION_COOKIE_SAMESITE": "sideways"}, "SESSION_COOKIE_SAMESITE"),
        (
            {"HASHSESSION_COOKIE_HOST_PREFIX": True, "HASHSESSION_COOKIE_SECURE": False},
            "HASHSESSION_COOKIE_HOST_PREFIX",
        ),
        ({"SESSION_COOKIE_PARTITIONED": True}, "SESSION_COOKIE_PARTITIONED"),
        ({"HASHSESSION_PERMANENT": 1}, "HASHSESSION_PERMANENT"),
        ({"HASHSESSION_PERMANENT_LIFETIME": 0}, "HASHSESSION_PERMANENT_LIFETIME"),
        ({"PERMANENT_SESSION_LIFETIME": -5}, "PERMANENT_SESSION_LIFETIME"),
        ({"HASHSESSION_REFRESH_EACH_REQUEST": "no"}, "HASHSESSION_REFRESH_EACH_REQUEST"),
        ({"HASHSESSION_REGENERATE_ON_LOGIN": "no"}, "HASHSESSION_REGENERATE_ON_LOGIN"),
        ({"HASHSESSION_INVALIDATE_ON_LOGOUT": None}, "HASHSESSION_INVALIDATE_ON_LOGOUT"),
        ({"HASHSESSION_OPTIONS": {"max_keys": 0}}, "HASHSESSION_OPTIONS['max_keys']"),
        ({"HASHSESSION_OPTIONS": {"ttl": 5}}, "HASHSESSION_OPTIONS"),
        ({"HASHSESSION_OPTIONS": {"bogus": 1}}, "HASHSESSION_OPTIONS"),
        ({"HASHSESSION_OPTIONS": [1]}, "HASHSESSION_OPTIONS"),
        ({"HASHSESSION_STORE": "redis://x"}, "HASHSESSION_STORE"),
        ({"HASHSESSION_COOKIE_SECURED": True}, "HASHSESSION_COOKIE_SECURED"),
    ],
)
def test_bad_config_names_the_key(redis_url: str, config: dict[str, Any], key: str) -> None:
    app = Flask(__name__)
    app.config.update(SECRET_KEY=SECRET, HASHSESSION_REDIS=redis_url)
    app.config.update(config)
    with pytest.raises(ConfigurationError) as caught:
        HashSession(app)
    assert caught.value.setting == key
    assert str(caught.value).startswith(f"{key}: ")


def test_typo_in_a_key_suggests_the_right_one() -> None:
    with pytest.raises(ConfigurationError, match="did you mean HASHSESSION_COOKIE_SECURE"):
        store_from_config({"SECRET_KEY": SECRET, "HASHSESSION_COOKIE_SECURED": True})


def test_store_key_excludes_the_store_keys(make_store: Callable[..., SessionStore]) -> None:
    config = {"HASHSESSION_STORE": make_store(), "HASHSESSION_TTL": 5}
    with pytest.raises(ConfigurationError) as caught:
        store_from_config(config)
    assert caught.value.setting == "HASHSESSION_TTL"


def test_interface_built_by_hand(make_store: Callable[..., SessionStore]) -> None:
    app = Flask(__name__)
    add_routes(app)
    store = make_store(secret_keys=["k"])
    app.session_interface = HashSessionInterface(store, FlaskOptions(permanent_lifetime=60))
    client = app.test_client()
    client.get("/set/a/1")
    [cookie] = set_cookies(client.get("/permanent/1"))
    assert "Max-Age=60" in cookie


# ------------------------------------------------------------------ a real threaded server


class QuietHandler(WSGIRequestHandler):
    def log(self, type: str, message: str, *args: Any) -> None:
        pass


@contextmanager
def serving(app: Flask) -> Iterator[str]:
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=QuietHandler)
    server.socket.listen(512)  # 200 clients connect at once
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.socket.getsockname()[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(10)


def fetch(base: str, path: str, cookie: str | None = None) -> tuple[int, list[str], bytes]:
    """One GET on a new connection: status, Set-Cookie values, body."""
    parts = urlsplit(base)
    connection = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=60)
    try:
        connection.request("GET", path, headers={"Cookie": cookie} if cookie else {})
        response = connection.getresponse()
        return response.status, response.headers.get_all("Set-Cookie") or [], response.read()
    finally:
        connection.close()


def run_at_once(count: int, work: Callable[[int], None]) -> None:
    """Run ``work(i)`` for each i on its own thread, released together; re-raise failures."""
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(30)
            work(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors[:3]


def first_cookie(base: str, path: str) -> str:
    status, cookies, _ = fetch(base, path)
    assert status == 200 and len(cookies) == 1
    return cookies[0].split(";", 1)[0]


def test_a_write_is_visible_to_a_concurrent_request_before_the_first_ends(app: Flask) -> None:
    written, release = threading.Event(), threading.Event()

    @app.get("/slow")
    def slow() -> str:
        session["step"] = "written"
        written.set()
        release.wait(30)
        return "done"

    with serving(app) as base:
        cookie = first_cookie(base, "/set/a/1")
        result: list[tuple[int, list[str], bytes]] = []
        first = threading.Thread(target=lambda: result.append(fetch(base, "/slow", cookie)))
        first.start()
        try:
            assert written.wait(30)
            status, _, body = fetch(base, "/get/step", cookie)
            assert first.is_alive()  # the writing request has not finished
            assert (status, body) == (200, b"'written'")
        finally:
            release.set()
            first.join(30)
    assert result == [(200, [], b"done")]


def test_200_concurrent_requests_each_set_their_own_key(app: Flask) -> None:
    responses: dict[int, tuple[int, list[str], bytes]] = {}
    with serving(app) as base:
        cookie = first_cookie(base, "/set/start/yes")

        def work(i: int) -> None:
            responses[i] = fetch(base, f"/set/k{i}/{i}", cookie)

        run_at_once(200, work)
    assert sorted(responses) == list(range(200))
    assert all(r == (200, [], b"ok") for r in responses.values())  # one session, no new cookie
    data = store_of(app).open(cookie).to_dict()
    assert data == {"start": "yes", **{f"k{i}": str(i) for i in range(200)}}


def test_200_concurrent_increments_all_land(app: Flask) -> None:
    with serving(app) as base:
        cookie = first_cookie(base, "/zero")
        statuses: list[int] = []

        def work(i: int) -> None:
            statuses.append(fetch(base, "/incr", cookie)[0])

        run_at_once(200, work)
        assert statuses == [200] * 200
        assert fetch(base, "/get/n", cookie)[2] == b"200"


# ------------------------------------------------------------------ value edits


def add_edit_routes(app: Flask) -> None:
    @app.get("/append/<value>")
    def append(value: str) -> str:
        return str(current_session().append("cart", (value, 1)))  # a tuple: tagged JSON

    @app.get("/discard/<value>")
    def discard(value: str) -> str:
        return str(current_session().discard("cart", (value, 1)))

    @app.get("/set_in/<sub>/<value>")
    def set_in(sub: str, value: str) -> str:
        current_session().set_in("prefs", sub, value)
        return "ok"

    @app.get("/edit/<value>")
    def edit(value: str) -> str:
        with current_session().edit("log", []) as log:
            log.append(value)
        return "ok"


def test_list_edits_with_flasks_codec_are_one_round_trip(
    make_app: AppFactory, make_store: Callable[..., SessionStore], counted: Any
) -> None:
    preload_scripts(counted.client)
    store = make_store(redis=counted.client, secret_keys=[SECRET], codec=TaggedJSONCodec())
    app = make_app(HASHSESSION_STORE=store)
    add_edit_routes(app)
    client = app.test_client()
    with counted.expect(1):  # creates the session with the list
        assert client.get("/append/a").data == b"1"
    with counted.expect(1):
        assert client.get("/append/b").data == b"2"
    assert counted.commands == ["EVALSHA"]
    with counted.expect(1):
        assert client.get("/discard/a").data == b"True"
    # Flask's tagged JSON may wrap a dict, so dict edits are an optimistic read and write
    with counted.expect(2):
        assert client.get("/set_in/theme/dark").data == b"ok"
    value = cookie_value(client.get("/set/x/1"))
    assert value is None  # the session exists already: no new cookie
    cookie = client.get_cookie("session")
    assert cookie is not None
    data = store.open(f"session={cookie.value}").to_dict()
    assert data == {"cart": [("b", 1)], "prefs": {"theme": "dark"}, "x": "1"}


def test_sixteen_concurrent_requests_editing_one_list_all_succeed(app: Flask) -> None:
    """Issue 13: concurrent edit() requests used to end in 500s (ConflictError)."""
    add_edit_routes(app)
    with serving(app) as base:
        cookie = first_cookie(base, "/set/a/1")
        statuses: list[int] = []

        def work(i: int) -> None:
            for j in range(10):
                statuses.append(fetch(base, f"/edit/{i}-{j}", cookie)[0])
                statuses.append(fetch(base, f"/append/{i}-{j}", cookie)[0])

        run_at_once(16, work)
    assert statuses == [200] * 320
    data = store_of(app).open(cookie).to_dict()
    expected = sorted(f"{i}-{j}" for i in range(16) for j in range(10))
    assert sorted(data["log"]) == expected
    assert sorted(item for item, _ in data["cart"]) == expected


# ------------------------------------------------------------------ streamed bodies


def add_streaming(app: Flask) -> None:
    """/stream-then/<what>: a ``stream_with_context`` body that uses the session mid-stream.

    ``write`` writes, ``regenerate`` gives a new id, ``login`` logs in with Flask-Login,
    ``permanent`` makes the session permanent; ``seed`` writes before the response.
    """

    @app.get("/stream-then/<what>")
    def stream_then(what: str) -> flask.Response:
        if what == "seed":
            session["cart"] = ["apple"]

        @flask.stream_with_context
        def body() -> Iterator[str]:
            yield "first "
            if what == "write":
                session["late"] = True
            elif what == "regenerate":
                regenerate()
            elif what == "login":
                login_user(User("ann"))
            elif what == "permanent":
                session.permanent = True
            yield "second"

        return app.response_class(body())


def session_keys(client: redis.Redis, app: Flask) -> list[bytes]:
    return sorted(client.keys(store_of(app).config.prefix + "*"))


def test_streamed_body_writes_to_an_existing_session(app: Flask, redis_client: redis.Redis) -> None:
    add_streaming(app)
    client = app.test_client()
    cookie = cookie_value(client.get("/stream-then/seed"))
    assert cookie is not None
    response = client.get("/stream-then/write", buffered=False)
    assert set_cookies(response) == []
    assert response.get_data() == b"first second"
    assert redis_client.hget(key_of(app, cookie), "late") == b"true"
    assert session_keys(redis_client, app) == [key_of(app, cookie).encode()]


def test_streamed_body_creating_a_session_raises_and_leaves_no_key(
    app: Flask, redis_client: redis.Redis
) -> None:
    add_streaming(app)
    response = app.test_client().get("/stream-then/write", buffered=False)
    assert set_cookies(response) == []
    with pytest.raises(HeadersSentError, match="writing 'late' after the response headers"):
        response.get_data()
    assert session_keys(redis_client, app) == []


@pytest.mark.parametrize("what", ["regenerate", "login", "permanent"])
def test_streamed_body_needing_a_new_cookie_raises_and_keeps_the_session(
    app: Flask, redis_client: redis.Redis, what: str
) -> None:
    add_streaming(app)
    add_login(app)
    client = app.test_client()
    cookie = cookie_value(client.get("/stream-then/seed"))
    assert cookie is not None
    before = redis_client.hgetall(key_of(app, cookie))
    response = client.get(f"/stream-then/{what}", buffered=False)
    with pytest.raises(HeadersSentError, match="after the response headers were sent"):
        response.get_data()
    assert session_keys(redis_client, app) == [key_of(app, cookie).encode()]
    assert redis_client.hgetall(key_of(app, cookie)) == before  # no user, no permanent flag
    assert client.get("/get/cart").data == b"['apple']"  # the old cookie still reaches it
    assert client.get("/me").data == b"anonymous"


# ------------------------------------------------------------------ ending, cookies, refresh


def add_enders(app: Flask) -> None:
    @app.get("/logout-clear")
    def logout_clear() -> str:
        session.clear()  # Flask's usual logout
        return "bye"

    @app.get("/pop/<key>")
    def pop(key: str) -> str:
        return repr(session.pop(key, None))


def test_clear_ends_the_session_and_the_next_login_gets_a_new_id(
    app: Flask, redis_client: redis.Redis
) -> None:
    add_enders(app)
    client = app.test_client()
    first = cookie_value(client.get("/set/user/ann"))
    assert first is not None
    response = client.get("/logout-clear")
    [gone] = set_cookies(response)
    assert gone.startswith("session=;") and "Max-Age=0" in gone
    assert redis_client.dbsize() == 0
    client.set_cookie("session", first)  # a browser that kept the old cookie
    assert client.get("/get/user").data == b"None"
    again = cookie_value(client.get("/set/user/bob"))
    assert again is not None and again != first


def test_popping_the_last_key_ends_the_session(app: Flask, redis_client: redis.Redis) -> None:
    add_enders(app)
    client = app.test_client()
    client.get("/set/a/1")
    client.get("/set/b/2")
    assert client.get("/pop/a").data == b"'1'"
    assert redis_client.dbsize() == 1
    response = client.get("/pop/b")
    [gone] = set_cookies(response)
    assert "Max-Age=0" in gone
    assert redis_client.dbsize() == 0


def test_a_permanent_session_is_not_empty(make_app: AppFactory, redis_client: redis.Redis) -> None:
    app = make_app()
    add_enders(app)
    client = app.test_client()
    client.get("/set/a/1")
    client.get("/permanent/1")
    client.get("/pop/a")  # its permanence is left, as Flask keeps _permanent in the session
    assert redis_client.dbsize() == 1
    assert client.get("/permanent").data == b"True"


def test_samesite_none_and_partitioned(make_app: AppFactory) -> None:
    app = make_app(
        SESSION_COOKIE_SECURE=True,
        SESSION_COOKIE_SAMESITE="None",
        SESSION_COOKIE_PARTITIONED=True,
    )
    add_enders(app)
    client = app.test_client()
    [made] = set_cookies(client.get("/set/a/1", base_url="https://localhost"))
    assert made.endswith("; Secure; HttpOnly; SameSite=None; Partitioned")
    [gone] = set_cookies(client.get("/logout-clear", base_url="https://localhost"))
    assert "Max-Age=0" in gone and gone.endswith("; SameSite=None; Partitioned")
    assert app.session_interface.get_cookie_partitioned(app) is True
    own = make_app(HASHSESSION_COOKIE_SECURE=True, HASHSESSION_COOKIE_PARTITIONED=True)
    [cookie] = set_cookies(own.test_client().get("/set/a/1", base_url="https://localhost"))
    assert cookie.endswith("; Partitioned")


def test_partitioned_needs_secure(redis_url: str) -> None:
    for config in ({"SESSION_COOKIE_PARTITIONED": True}, {"HASHSESSION_COOKIE_PARTITIONED": True}):
        app = Flask(__name__)
        app.config.update(SECRET_KEY=SECRET, HASHSESSION_REDIS=redis_url, **config)
        with pytest.raises(ConfigurationError, match="requires secure=True") as caught:
            HashSession(app)
        assert caught.value.setting == next(iter(config))


@pytest.mark.parametrize("refresh", [True, False])
def test_a_permanent_sessions_cookie_slides_at_no_extra_cost(
    make_app: AppFactory,
    make_store: Callable[..., SessionStore],
    counted: Any,
    refresh: bool,
) -> None:
    preload_scripts(counted.client)
    store = make_store(redis=counted.client, secret_keys=[SECRET], refresh_cookie=refresh)
    app = make_app(HASHSESSION_STORE=store, PERMANENT_SESSION_LIFETIME=timedelta(hours=2))
    client = app.test_client()
    client.get("/set/a/1")
    client.get("/permanent/1")
    with counted.expect(1):  # the read returns the session's cookie lifetime along
        read = client.get("/get/a")
    assert read.data == b"'1'"
    if refresh:
        [again] = set_cookies(read)
        assert "Max-Age=7200" in again
    else:
        assert set_cookies(read) == []  # only a change sends it again
    with counted.expect(1):
        [changed] = set_cookies(client.get("/set/b/2"))
    assert "Max-Age=7200" in changed
    assert set_cookies(client.get("/nothing")) == []  # untouched: no command, no cookie
