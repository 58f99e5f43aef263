"""hashsession.pyramid through WebTest over real Pyramid apps and a real redis-server."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import webtest
from pyramid import testing
from pyramid.config import Configurator
from pyramid.httpexceptions import HTTPFound
from pyramid.interfaces import ISession, ISessionFactory
from pyramid.response import Response
from zope.interface.verify import verifyObject

from hashsession import ConfigurationError, HeadersSentError, Session, SessionStore
from hashsession.aio import AsyncSession
from hashsession.cookies import Signer
from hashsession.ids import new_id
from hashsession.protocol import SessionView
from hashsession.pyramid import (
    CSRFStoragePolicy,
    PyramidSession,
    SessionFactory,
    session_factory_from_settings,
)

View = Callable[[Any], Any]
MakeApp = Callable[..., webtest.TestApp]


class Boom(Exception):
    """Raised by views to exercise exception views."""


@pytest.fixture
def settings(redis_url: str) -> dict[str, str]:
    return {
        "hashsession.redis": redis_url,
        "hashsession.secret": "k1",
        "hashsession.ttl": "100",
    }


@pytest.fixture
def make_app(settings: dict[str, str]) -> Iterator[MakeApp]:
    """``make_app(views, factory=None, settings=..., setup=None)``: a TestApp over Pyramid.

    Without ``factory`` the app does ``config.include("hashsession.pyramid")``.
    The factories' clients are closed afterwards.
    """
    factories: list[Any] = []

    def make(
        views: dict[str, View],
        *,
        factory: Any = None,
        settings: dict[str, str] = settings,
        setup: Callable[[Configurator], None] | None = None,
        include: str = "hashsession.pyramid",
    ) -> webtest.TestApp:
        config = Configurator(settings=dict(settings))
        if factory is not None:
            config.set_session_factory(factory)
        else:
            config.include(include)
        for path, view in views.items():
            config.add_route(path, path)
            config.add_view(view, route_name=path, renderer="json")
        if setup is not None:
            setup(config)
        app = config.make_wsgi_app()
        factories.append(app.registry.queryUtility(ISessionFactory))
        return webtest.TestApp(app)

    yield make
    for factory in factories:
        factory.close()


def set_cookies(response: webtest.TestResponse) -> list[str]:
    return response.headers.getall("Set-Cookie")


def session_cookie(response: webtest.TestResponse, name: str = "session") -> str:
    """The ``name=value`` of the one session cookie the response set."""
    (header,) = [c for c in set_cookies(response) if c.startswith(name + "=")]
    return header.split(";", 1)[0]


def only_key(client: redis.Redis) -> bytes:
    (key,) = client.keys("*")
    return key


# ------------------------------------------------------------------- ISession


def test_session_provides_isession(make_app: MakeApp) -> None:
    def view(request: Any) -> Any:
        session = request.session
        assert isinstance(session, PyramidSession)
        return verifyObject(ISession, session)

    assert make_app({"/": view}).get("/").json is True


def test_declaring_isession_leaves_the_core_classes_alone(make_app: MakeApp) -> None:
    def view(request: Any) -> Any:
        return verifyObject(ISession, request.session) and ISession.providedBy(request.session)

    assert make_app({"/": view}).get("/").json is True
    assert ISession.implementedBy(PyramidSession)
    for cls in (Session, SessionView, AsyncSession):
        assert not {"__implemented__", "__provides__", "__providedBy__"} & set(vars(cls))


def test_dict_methods_are_live_and_persist(make_app: MakeApp) -> None:
    def write(request: Any) -> Any:
        s = request.session
        s["a"] = 1
        s.update({"b": [1, 2], "c": "x"})
        out = {
            "has_a": "a" in s,
            "get_missing": s.get("zz", "dflt"),
            "setdefault": s.setdefault("d", {"k": 1}),
            "setdefault_again": s.setdefault("d", "ignored"),
            "pop": s.pop("c"),
            "pop_default": s.pop("c", "gone"),
        }
        del s["a"]
        out["keys"] = sorted(s.keys())
        out["items"] = sorted(s.items())
        out["values"] = sorted(map(str, s.values()))
        out["iter"] = sorted(s)
        out["len"] = len(s)
        return out

    def read(request: Any) -> Any:
        return dict(request.session)

    def clear(request: Any) -> Any:
        request.session.clear()
        return len(request.session)

    app = make_app({"/write": write, "/read": read, "/clear": clear})
    assert app.get("/write").json == {
        "has_a": True,
        "get_missing": "dflt",
        "setdefault": {"k": 1},
        "setdefault_again": {"k": 1},
        "pop": "x",
        "pop_default": "gone",
        "keys": ["b", "d"],
        "items": [["b", [1, 2]], ["d", {"k": 1}]],
        "values": ["[1, 2]", "{'k': 1}"],
        "iter": ["b", "d"],
        "len": 2,
    }
    assert app.get("/read").json == {"b": [1, 2], "d": {"k": 1}}
    assert app.get("/clear").json == 0
    assert app.get("/read").json == {}


def test_popitem_removes_one_item_at_a_time(make_app: MakeApp) -> None:
    def view(request: Any) -> Any:
        s = request.session
        s.update({"a": 1, "b": 2})
        got = sorted([list(s.popitem()), list(s.popitem())])
        try:
            s.popitem()
        except KeyError:
            return {"got": got, "empty": True}
        return {"got": got, "empty": False}

    assert make_app({"/": view}).get("/").json == {"got": [["a", 1], ["b", 2]], "empty": True}


def test_changed_writes_back_values_mutated_in_place(make_app: MakeApp) -> None:
    def setup(request: Any) -> Any:
        request.session["cart"] = [1]
        request.session["prefs"] = {"a": 1}
        return "ok"

    def mutate(request: Any) -> Any:
        s = request.session
        s["cart"].append(2)  # a copy: invisible until changed()
        before = s["cart"]
        s.setdefault("prefs", {})["b"] = 2
        s.changed()
        return {"before": before}

    def read(request: Any) -> Any:
        return dict(request.session)

    app = make_app({"/setup": setup, "/mutate": mutate, "/read": read})
    app.get("/setup")
    assert app.get("/mutate").json == {"before": [1]}
    assert app.get("/read").json == {"cart": [1, 2], "prefs": {"a": 1, "b": 2}}


def test_changed_never_overwrites_a_newer_write(make_app: MakeApp) -> None:
    def view(request: Any) -> Any:
        s = request.session
        s["cart"] = [1]
        stale = s["cart"]
        s["cart"] = ["replaced"]
        stale.append(2)
        s.changed()
        return s["cart"]

    assert make_app({"/": view}).get("/").json == ["replaced"]


def test_changed_without_reads_costs_nothing(make_app: MakeApp, counted: Any) -> None:
    store = SessionStore(redis=counted.client, ttl=100)

    def view(request: Any) -> Any:
        with counted.expect(0):
            request.session.changed()
        return "ok"

    make_app({"/": view}, factory=SessionFactory(store)).get("/")


# ---------------------------------------------------------------------- flash


def test_flash_queues_peek_pop_and_duplicates(make_app: MakeApp) -> None:
    def push(request: Any) -> Any:
        s = request.session
        s.flash("saved")
        s.flash("saved")
        s.flash("saved", allow_duplicate=False)
        s.flash({"level": "warn", "text": "two\nlines"}, "alerts")
        s.flash("only once", "alerts", allow_duplicate=False)
        s.flash("only once", "alerts", allow_duplicate=False)
        return "ok"

    def peek(request: Any) -> Any:
        s = request.session
        return {"default": s.peek_flash(), "alerts": s.peek_flash("alerts")}

    def pop(request: Any) -> Any:
        s = request.session
        return {"default": s.pop_flash(), "alerts": s.pop_flash("alerts"), "len": len(s)}

    app = make_app({"/push": push, "/peek": peek, "/pop": pop})
    app.get("/push")
    expected = {
        "default": ["saved", "saved"],
        "alerts": [{"level": "warn", "text": "two\nlines"}, "only once"],
    }
    assert app.get("/peek").json == expected
    assert app.get("/peek").json == expected  # peeking leaves the queues
    assert app.get("/pop").json == {**expected, "len": 0}  # flash is not a session key
    assert app.get("/pop").json == {"default": [], "alerts": [], "len": 0}


def test_flash_on_a_new_session_creates_it(make_app: MakeApp, redis_client: redis.Redis) -> None:
    def push(request: Any) -> Any:
        request.session.flash("welcome")
        return "ok"

    def pop(request: Any) -> Any:
        return request.session.pop_flash()

    app = make_app({"/push": push, "/pop": pop})
    response = app.get("/push")
    assert session_cookie(response).startswith("session=")
    assert redis_client.ttl(only_key(redis_client)) > 90
    assert app.get("/pop").json == ["welcome"]


def test_concurrent_flash_pushes_all_land(make_app: MakeApp) -> None:
    def start(request: Any) -> Any:
        request.session.flash("first")
        return "ok"

    def push(request: Any) -> Any:
        request.session.flash(request.params["m"], allow_duplicate=True)
        return "ok"

    def pop(request: Any) -> Any:
        return request.session.pop_flash()

    app = make_app({"/start": start, "/push": push, "/pop": pop})
    cookie = session_cookie(app.get("/start"))
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        client = webtest.TestApp(app.app)
        try:
            for i in range(25):
                client.get("/push", {"m": f"{n}-{i}"}, headers={"Cookie": cookie})
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    popped = app.get("/pop").json
    assert popped[0] == "first"
    assert sorted(popped[1:]) == sorted(f"{n}-{i}" for n in range(6) for i in range(25))


def test_flash_queue_must_be_a_str(make_app: MakeApp) -> None:
    def view(request: Any) -> Any:
        with pytest.raises(TypeError):
            request.session.flash("x", queue=3)
        return "ok"

    assert make_app({"/": view}).get("/").json == "ok"


# ----------------------------------------------------------------------- CSRF


def csrf_views() -> dict[str, View]:
    def token(request: Any) -> Any:
        return request.session.get_csrf_token()

    def form(request: Any) -> Any:
        return "accepted"

    def rotate(request: Any) -> Any:
        s = request.session
        old = s.get_csrf_token()
        new = s.new_csrf_token()
        return {"old": old, "new": new, "now": s.get_csrf_token(), "len": len(s)}

    return {"/token": token, "/form": form, "/rotate": rotate}


def require_csrf(config: Configurator) -> None:
    config.set_default_csrf_options(require_csrf=True)


def test_csrf_refuses_a_post_without_the_token_and_accepts_it_with(make_app: MakeApp) -> None:
    app = make_app(csrf_views(), setup=require_csrf)
    token = app.get("/token").json
    assert isinstance(token, str) and len(token) == 40
    assert app.get("/token").json == token  # stable
    app.post("/form", {"x": "1"}, status=400)
    app.post("/form", {"x": "1", "csrf_token": "wrong"}, status=400)
    assert app.post("/form", {"csrf_token": token}).json == "accepted"
    assert app.post("/form", headers={"X-CSRF-Token": token}).json == "accepted"


def test_a_refused_post_stores_nothing(make_app: MakeApp, redis_client: redis.Redis) -> None:
    app = make_app(csrf_views(), setup=require_csrf)
    response = app.post("/form", {"csrf_token": "guess"}, status=400)
    assert set_cookies(response) == []
    assert redis_client.dbsize() == 0


def test_csrf_with_pyramids_default_policy(make_app: MakeApp, redis_url: str) -> None:
    store = SessionStore(redis=redis_url, ttl=100)
    app = make_app(csrf_views(), factory=SessionFactory(store), setup=require_csrf)
    token = app.get("/token").json
    app.post("/form", {"csrf_token": "wrong"}, status=400)
    assert app.post("/form", {"csrf_token": token}).json == "accepted"


def test_new_csrf_token_replaces_the_old_one(make_app: MakeApp) -> None:
    app = make_app(csrf_views(), setup=require_csrf)
    out = app.get("/rotate").json
    assert out["old"] != out["new"] == out["now"]
    assert out["len"] == 0  # the token lives in a reserved field, not a session key
    app.post("/form", {"csrf_token": out["old"]}, status=400)
    assert app.post("/form", {"csrf_token": out["new"]}).json == "accepted"


def test_csrf_policy_on_a_foreign_session_uses_get_csrf_token() -> None:
    class Foreign:
        def get_csrf_token(self) -> str:
            return "abc"

    class Request:
        session = Foreign()

    policy = CSRFStoragePolicy()
    assert policy.check_csrf_token(Request(), "abc")
    assert not policy.check_csrf_token(Request(), "abd")


# ----------------------------------------------------------- new, created, expiry


def test_new_and_created(make_app: MakeApp) -> None:
    def touch(request: Any) -> Any:
        s = request.session
        new = s.new
        s["seen"] = True
        return {"new": new, "created": s.created}

    app = make_app({"/": touch})
    before = time.time()
    first = app.get("/").json
    assert first["new"] is True
    assert before - 1 <= first["created"] <= time.time() + 1
    second = app.get("/").json
    assert second["new"] is False
    assert abs(second["created"] - first["created"]) < 1
    assert app.get("/").json["created"] == second["created"]


def test_new_checks_an_unknown_cookie(make_app: MakeApp) -> None:
    def view(request: Any) -> Any:
        return request.session.new

    app = make_app({"/": view})
    forged = Signer(["k1"]).sign(new_id())  # well-formed and signed, but never stored
    assert app.get("/", headers={"Cookie": f"session={forged}"}).json is True


def test_invalidate_expires_the_cookie_and_deletes_the_key(
    make_app: MakeApp, redis_client: redis.Redis
) -> None:
    def login(request: Any) -> Any:
        request.session["user"] = "ann"
        return "ok"

    def logout(request: Any) -> Any:
        request.session.invalidate()
        return "bye"

    def whoami(request: Any) -> Any:
        return request.session.get("user")

    app = make_app({"/login": login, "/logout": logout, "/whoami": whoami})
    app.get("/login")
    assert redis_client.dbsize() == 1
    response = app.get("/logout")
    (expire,) = set_cookies(response)
    assert expire.startswith("session=;") and "Max-Age=0" in expire
    assert redis_client.dbsize() == 0
    assert app.get("/whoami").json is None


def test_writes_after_invalidate_start_a_new_session(
    make_app: MakeApp, redis_client: redis.Redis
) -> None:
    def login(request: Any) -> Any:
        request.session["user"] = "ann"
        return "ok"

    def relogin(request: Any) -> Any:
        s = request.session
        s.invalidate()
        s["user"] = "bob"
        return {"new": s.new, "len": len(s)}

    def whoami(request: Any) -> Any:
        return request.session.get("user")

    app = make_app({"/login": login, "/relogin": relogin, "/whoami": whoami})
    old = session_cookie(app.get("/login"))
    response = app.get("/relogin")
    assert response.json == {"new": True, "len": 1}
    assert session_cookie(response) != old
    assert redis_client.dbsize() == 1
    assert app.get("/whoami").json == "bob"


def test_a_write_is_in_redis_before_the_view_returns(
    make_app: MakeApp, redis_client: redis.Redis
) -> None:
    def view(request: Any) -> Any:
        request.session["color"] = "blue"
        key = request.session.core.key
        return redis_client.hget(key, "color").decode()

    assert make_app({"/": view}).get("/").json == '"blue"'


def test_the_idle_timeout_is_the_keys_ttl(make_app: MakeApp, redis_client: redis.Redis) -> None:
    def view(request: Any) -> Any:
        request.session["a"] = 1
        return "ok"

    make_app({"/": view}).get("/")
    assert 90 < redis_client.ttl(only_key(redis_client)) <= 100


# ----------------------------------------------------------------- round trips


def test_a_view_that_ignores_the_session_costs_nothing(make_app: MakeApp, counted: Any) -> None:
    store = SessionStore(redis=counted.client, ttl=100)

    def ignore(request: Any) -> Any:
        return "ok"

    def look(request: Any) -> Any:
        assert request.session is not None  # built, never used
        return "ok"

    def write(request: Any) -> Any:
        request.session["a"] = 1
        return "ok"

    app = make_app(
        {"/ignore": ignore, "/look": look, "/write": write}, factory=SessionFactory(store)
    )
    app.get("/write")
    for path in ("/ignore", "/look"):
        with counted.expect(0):
            response = app.get(path)
        assert set_cookies(response) == []
        assert "Vary" not in response.headers


def test_round_trips_of_common_requests(make_app: MakeApp, counted: Any) -> None:
    store = SessionStore(redis=counted.client, ttl=100)

    def write(request: Any) -> Any:
        request.session["a"] = 1
        return "ok"

    def read_two(request: Any) -> Any:
        return [request.session.get("a"), request.session.get("b")]

    app = make_app({"/write": write, "/read": read_two}, factory=SessionFactory(store))
    with counted.expect(1):
        assert set_cookies(app.get("/write"))
    with counted.expect(2):
        response = app.get("/read")
    assert response.json == [1, None]
    assert set_cookies(response) == []  # no max_age: nothing to refresh
    assert response.headers["Vary"] == "Cookie"


def test_vary_is_merged_with_the_views(make_app: MakeApp) -> None:
    def view(request: Any) -> Any:
        request.response.vary = ("Accept",)
        request.session.get("a")
        return "ok"

    assert make_app({"/": view}).get("/").headers["Vary"] == "Accept, Cookie"


# ----------------------------------------------------------- exceptions


def exception_app(make_app: MakeApp, settings: dict[str, str], on_exception: str) -> Any:
    def fail(request: Any) -> Any:
        request.session["draft"] = "kept"
        raise Boom

    def redirect(request: Any) -> Any:
        request.session["user"] = "ann"
        raise HTTPFound("/")

    def logout_fail(request: Any) -> Any:
        request.session.invalidate()
        raise Boom

    def login(request: Any) -> Any:
        request.session["user"] = "ann"
        return "ok"

    def error_view(exc: Exception, request: Any) -> Any:
        request.response.status = 500
        return "oops"

    def setup(config: Configurator) -> None:
        config.add_exception_view(error_view, context=Boom, renderer="json")

    return make_app(
        {"/fail": fail, "/redirect": redirect, "/logout_fail": logout_fail, "/login": login},
        settings={**settings, "hashsession.cookie_on_exception": on_exception},
        setup=setup,
    )


def test_cookie_on_exception_true_sends_the_cookie(
    make_app: MakeApp, settings: dict[str, str]
) -> None:
    app = exception_app(make_app, settings, "true")
    response = app.get("/fail", status=500)
    assert response.json == "oops"
    assert session_cookie(response).startswith("session=")
    app.reset()  # a new visitor: raising an HTTP exception (handled by Pyramid) sets it too
    assert session_cookie(app.get("/redirect", status=302)).startswith("session=")


def test_cookie_on_exception_false_withholds_new_cookies(
    make_app: MakeApp, settings: dict[str, str], redis_client: redis.Redis
) -> None:
    app = exception_app(make_app, settings, "false")
    response = app.get("/fail", status=500)
    assert set_cookies(response) == []
    assert response.headers["Vary"] == "Cookie"
    assert redis_client.dbsize() == 1  # the write itself was live
    assert set_cookies(app.get("/redirect", status=302)) == []
    # An expiring cookie still goes out: the session is gone either way.
    app.get("/login")
    (expire,) = set_cookies(app.get("/logout_fail", status=500))
    assert "Max-Age=0" in expire


@pytest.mark.parametrize("on_exception", [True, False])
def test_a_request_without_an_exception_attribute_gets_its_cookie(
    redis_url: str, on_exception: bool
) -> None:
    """``pyramid.testing.DummyRequest`` and requests built by scripts have no ``exception``
    attribute (found by Pyramid's own session tests): the callback treats that as none."""
    factory = SessionFactory(
        SessionStore(redis=redis_url, secret_keys=["k1"]), cookie_on_exception=on_exception
    )
    try:
        request = testing.DummyRequest()
        assert not hasattr(request, "exception")
        factory(request)["a"] = 1
        response = Response()
        for callback in request.response_callbacks:
            callback(request, response)
        assert response.headers["Set-Cookie"].startswith("session=")
    finally:
        factory.close()


def test_an_unhandled_exception_has_no_response_to_carry_the_cookie(
    make_app: MakeApp, redis_client: redis.Redis
) -> None:
    def fail(request: Any) -> Any:
        request.session["draft"] = "written"
        raise Boom

    app = make_app({"/fail": fail})
    with pytest.raises(Boom):
        app.get("/fail")
    assert redis_client.dbsize() == 1  # written live, but orphaned until it expires


# ------------------------------------------------------------------- settings


def test_include_coerces_string_settings(
    make_app: MakeApp, redis_url: str, redis_client: redis.Redis
) -> None:
    def view(request: Any) -> Any:
        request.session["n"] = 1
        return "ok"

    settings = {
        "hashsession.redis": redis_url,
        "hashsession.secret_keys": "new-key  old-key",
        "hashsession.prefix": "app:",
        "hashsession.ttl": "300",
        "hashsession.codec": "pickle",
        "hashsession.max_keys": "5",
        "hashsession.edit_retries": "7",
        "hashsession.edit_timeout": "2.5",
        "hashsession.refresh_cookie": "false",
        "hashsession.cookie_name": "sid",
        "hashsession.cookie_path": "/",
        "hashsession.cookie_domain": "example.com",
        "hashsession.cookie_secure": "true",
        "hashsession.cookie_httponly": "no",
        "hashsession.cookie_samesite": "Strict",
        "hashsession.cookie_max_age": "600",
        "hashsession.cookie_on_exception": "off",
        "unrelated.setting": "ignored",
    }
    app = make_app({"/": view}, settings=settings)
    header = set_cookies(app.get("/"))[0]
    name_value, *attrs = header.split("; ")
    assert name_value.startswith("sid=")
    value = name_value.split("=", 1)[1]
    assert Signer(["new-key"]).unsign(value) is not None
    assert set(attrs) >= {"Path=/", "Domain=example.com", "Secure", "SameSite=Strict"}
    assert "Max-Age=600" in attrs and "HttpOnly" not in attrs
    key = only_key(redis_client)
    assert key.startswith(b"app:")
    assert 290 < redis_client.ttl(key) <= 300
    assert redis_client.hget(key, "n") == b"1"
    factory = app.app.registry.queryUtility(ISessionFactory)
    assert factory.cookie_on_exception is False
    assert factory.store.config.max_keys == 5
    assert factory.store.config.edit_retries == 7
    assert factory.store.config.edit_timeout == 2.5
    assert factory.store.config.refresh_cookie is False


def test_samesite_none_is_sent_not_unset(make_app: MakeApp, settings: dict[str, str]) -> None:
    def view(request: Any) -> Any:
        request.session["a"] = 1
        return "ok"

    more = {"hashsession.cookie_samesite": "None", "hashsession.cookie_secure": "true"}
    app = make_app({"/": view}, settings={**settings, **more})
    assert "SameSite=None" in session_cookie_header(app.get("/"))


def session_cookie_header(response: webtest.TestResponse) -> str:
    (header,) = set_cookies(response)
    return header


def test_settings_resolve_dotted_names(redis_url: str) -> None:
    factory = session_factory_from_settings(
        {
            "hashsession.redis": redis_url,
            "hashsession.codec": "hashsession.codecs.PickleCodec",
            "hashsession.key_layout": "raw",
            "hashsession.id_factory": "uuid.uuid4",
        },
        resolve=lambda v: (lambda: "fixed-id") if v == "uuid.uuid4" else _resolve(v),
    )
    try:
        assert type(factory.store.config.codec).__name__ == "PickleCodec"
        assert factory.store.config.new_id() == "fixed-id"
    finally:
        factory.close()


def _resolve(name: str) -> Any:
    from pyramid.path import DottedNameResolver

    return DottedNameResolver().maybe_resolve(name)


@pytest.mark.parametrize(
    ("name", "value", "setting"),
    [
        ("hashsession.ttl", "soon", "hashsession.ttl"),
        ("hashsession.cookie_secure", "perhaps", "hashsession.cookie_secure"),
        ("hashsession.cookie_max_age", "1h", "hashsession.cookie_max_age"),
        ("hashsession.colour", "blue", "hashsession.colour"),
        ("hashsession.cookie_on_exception", "maybe", "hashsession.cookie_on_exception"),
        ("hashsession.ttl", "-5", "hashsession.ttl"),
        ("hashsession.edit_timeout", "soon", "hashsession.edit_timeout"),
        ("hashsession.edit_timeout", "0", "hashsession.edit_timeout"),
        ("hashsession.cookie_path", "app", "hashsession.cookie_path"),
        ("hashsession.key_layout", "flat", "hashsession.key_layout"),
        ("hashsession.id_factory", "no_such_module.make_id", "hashsession.id_factory"),
        ("hashsession.codec", "hashsession.codecs.Nothing", "hashsession.codec"),
    ],
)
def test_bad_settings_name_the_setting(redis_url: str, name: str, value: str, setting: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        session_factory_from_settings({"hashsession.redis": redis_url, name: value})
    assert info.value.setting == setting


def test_factory_refuses_what_is_not_a_sync_store() -> None:
    with pytest.raises(ConfigurationError):
        SessionFactory(object())  # type: ignore[arg-type]


# ------------------------------------------------------------------- streamed bodies


def stream_views() -> dict[str, View]:
    """/seed writes; /stream?what=... streams an ``app_iter`` that uses the session mid-body.

    ``what`` is ``write``, ``flash`` or ``regenerate``; with ``look=1`` the view reads the
    session before returning, so it is opened before the response callbacks run.
    """

    def seed(request: Any) -> Any:
        request.session["cart"] = ["apple"]
        return "ok"

    def stream(request: Any) -> Any:
        what = request.params["what"]
        if request.params.get("look"):
            request.session.get("cart")

        def body() -> Iterator[bytes]:
            yield b"first "
            if what == "write":
                request.session["late"] = True
            elif what == "flash":
                request.session.flash("hi")
            elif what == "regenerate":
                request.session.regenerate()
            yield b"second"

        return Response(app_iter=body())

    return {"/seed": seed, "/stream": stream}


def session_keys(client: redis.Redis) -> list[bytes]:
    return sorted(client.keys("hs:*"))


@pytest.mark.parametrize("look", ["", "1"])
def test_streamed_body_writes_to_an_existing_session(
    make_app: MakeApp, redis_client: redis.Redis, look: str
) -> None:
    app = make_app(stream_views())
    app.get("/seed")
    response = app.get("/stream", {"what": "write", "look": look})
    assert response.body == b"first second"
    assert set_cookies(response) == []
    assert redis_client.hget(only_key(redis_client), "late") == b"true"


@pytest.mark.parametrize(("what", "look"), [("write", ""), ("write", "1"), ("flash", "")])
def test_streamed_body_creating_a_session_raises_and_leaves_no_key(
    make_app: MakeApp, redis_client: redis.Redis, what: str, look: str
) -> None:
    """Whether the session was opened before the response (``look``) or first in the body."""
    app = make_app(stream_views())
    with pytest.raises(HeadersSentError, match="after the response headers were sent"):
        app.get("/stream", {"what": what, "look": look})
    assert session_keys(redis_client) == []


def test_streamed_body_creating_a_session_with_a_hand_set_factory(
    make_app: MakeApp, redis_url: str, redis_client: redis.Redis
) -> None:
    """Without ``includeme``'s subscriber, a session opened before the response still knows."""
    factory = SessionFactory(SessionStore(redis=redis_url, ttl=100))
    app = make_app(stream_views(), factory=factory)
    with pytest.raises(HeadersSentError, match="writing 'late'"):
        app.get("/stream", {"what": "write", "look": "1"})
    assert session_keys(redis_client) == []


@pytest.mark.parametrize("look", ["", "1"])
def test_streamed_body_regenerating_raises_and_keeps_the_session(
    make_app: MakeApp, redis_client: redis.Redis, look: str
) -> None:
    app = make_app({**stream_views(), "/cart": lambda request: request.session.get("cart")})
    app.get("/seed")
    before = session_keys(redis_client)
    with pytest.raises(HeadersSentError, match=r"regenerate\(\)"):
        app.get("/stream", {"what": "regenerate", "look": look})
    assert session_keys(redis_client) == before
    assert app.get("/cart").json == ["apple"]  # the old cookie still reaches it
