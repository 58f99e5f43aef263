"""hashsession.compat.pyramid_redis_sessions through WebTest over real Pyramid apps.

Every ``redis.sessions.*`` setting of pyramid_redis_sessions must take effect, under
its documented names and its 1.0.1 names, and its README's examples must run with
only the package name changed.
"""

from __future__ import annotations

import configparser
import json
import pickle
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis
import webtest
from pyramid.config import Configurator
from pyramid.exceptions import ConfigurationError as PyramidConfigurationError
from pyramid.interfaces import ISession, ISessionFactory
from pyramid.response import Response
from zope.interface.verify import verifyObject

from hashsession import BackendError, HeadersSentError
from hashsession import ConfigurationError as HashSessionConfigurationError
from hashsession.compat import pyramid_redis_sessions as prs
from hashsession.cookies import Signer
from hashsession.embedded import EmbeddedRedis

PACKAGE = "hashsession.compat.pyramid_redis_sessions"
SECRET = "s3cret"
MakeApp = Callable[..., webtest.TestApp]

# Things the settings name by dotted path (``f"{__name__}.<name>"``).
CONNECT_CALLS: list[tuple[Any, dict[str, Any]]] = []
CONNECT_TARGET: dict[str, str] = {}
POOL: redis.ConnectionPool | None = None


def connect(request: Any, **redis_options: Any) -> redis.Redis:
    """A custom connection callable: records its calls, returns a client per registry."""
    CONNECT_CALLS.append((request, redis_options))
    client = getattr(request.registry, "_test_redis", None)
    if client is None:
        client = redis.Redis.from_url(CONNECT_TARGET["url"])
        request.registry._test_redis = client
    return client


def encode(value: Any) -> bytes:
    return b"X:" + json.dumps(value).encode()


def decode(data: bytes) -> Any:
    assert data.startswith(b"X:")
    return json.loads(data[2:])


def fixed_id() -> str:
    return "my-own-id"


class Boom(Exception):
    pass


# ------------------------------------------------------------------- helpers


def views() -> dict[str, Callable[[Any], Any]]:
    def write(request: Any) -> Any:
        request.session["n"] = request.session.get("n", 0) + 1
        return request.session["n"]

    def read(request: Any) -> Any:
        s = request.session
        return {"new": s.new, "data": dict(s)}

    def fail(request: Any) -> Any:
        request.session["n"] = 1
        raise Boom

    def adjust(request: Any) -> Any:
        request.session.adjust_timeout_for_session(int(request.params["t"]))
        if "write" in request.params:
            request.session["written"] = True
        return "ok"

    def logout(request: Any) -> Any:
        request.session.invalidate()
        return "bye"

    def stream(request: Any) -> Any:
        def body() -> Iterator[bytes]:
            yield b"first "
            request.session["late"] = True  # the session is first opened here
            yield b"second"

        return Response(app_iter=body())

    return {
        "/write": write,
        "/read": read,
        "/fail": fail,
        "/adjust": adjust,
        "/logout": logout,
        "/stream": stream,
    }


def error_view(exc: Exception, request: Any) -> Any:
    request.response.status = 500
    return "oops"


def add_views(config: Configurator) -> None:
    for path, view in views().items():
        config.add_route(path, path)
        config.add_view(view, route_name=path, renderer="json")
    config.add_exception_view(error_view, context=Boom, renderer="json")


@pytest.fixture
def settings(redis_url: str) -> dict[str, Any]:
    return {"redis.sessions.secret": SECRET, "redis.sessions.url": redis_url}


@pytest.fixture
def make_app() -> Iterator[MakeApp]:
    """``make_app(settings)``: a TestApp over ``config.include(PACKAGE)`` and :func:`views`."""
    factories: list[Any] = []

    def make(settings: dict[str, Any], *, factory: Any = None) -> webtest.TestApp:
        config = Configurator(settings=dict(settings))
        if factory is None:
            config.include(PACKAGE)
        else:
            config.set_session_factory(factory)
        add_views(config)
        app = config.make_wsgi_app()
        factories.append(app.registry.queryUtility(ISessionFactory))
        return webtest.TestApp(app)

    yield make
    for factory in factories:
        factory.close()
    CONNECT_CALLS.clear()


def cookie_header(response: webtest.TestResponse, name: str = "session") -> str:
    (header,) = [c for c in response.headers.getall("Set-Cookie") if c.startswith(name + "=")]
    return header


def attributes(header: str) -> set[str]:
    return set(header.split("; ")[1:])


def only_key(client: redis.Redis) -> bytes:
    (key,) = client.keys("*")
    return key


# ------------------------------------------------------------------- the basics


def test_include_gives_a_live_isession(
    make_app: MakeApp, settings: dict[str, Any], redis_client: redis.Redis
) -> None:
    app = make_app(settings)
    assert app.get("/write").json == 1
    assert app.get("/write").json == 2
    assert app.get("/read").json == {"new": False, "data": {"n": 2}}
    assert redis_client.hget(only_key(redis_client), "n") == b"2"

    config = Configurator(settings=settings)
    config.include(PACKAGE)
    config.commit()
    factory = config.registry.queryUtility(ISessionFactory)
    assert factory is not None
    try:

        class Request:
            environ: dict[str, str] = {}
            registry = config.registry

            def add_response_callback(self, callback: Any) -> None:
                pass

        session = factory(Request())
        assert verifyObject(ISession, session)
        assert isinstance(session, prs.RedisSession)
    finally:
        factory.close()


def test_old_session_methods(make_app: MakeApp, settings: dict[str, Any]) -> None:
    def view(request: Any) -> Any:
        s = request.session
        before = s.session_id
        s.update({"a": 1, "b": 2})
        return {
            "before": before,
            "after": s.session_id == s.id and s.session_id is not None,
            "has_key": [s.has_key("a"), s.has_key("zz")],
            "pop_missing": s.pop("zz"),
            "keys": sorted(s.iterkeys()),
            "values": sorted(s.itervalues()),
            "items": sorted(s.iteritems()),
        }

    config = Configurator(settings=settings)
    config.include(PACKAGE)
    config.add_route("v", "/")
    config.add_view(view, route_name="v", renderer="json")
    app = webtest.TestApp(config.make_wsgi_app())
    try:
        assert app.get("/").json == {
            "before": None,
            "after": True,
            "has_key": [True, False],
            "pop_missing": None,
            "keys": ["a", "b"],
            "values": [1, 2],
            "items": [["a", 1], ["b", 2]],
        }
    finally:
        config.registry.queryUtility(ISessionFactory).close()


def test_adjust_timeout_for_session_changes_the_key_ttl_for_good(
    make_app: MakeApp, settings: dict[str, Any], redis_client: redis.Redis
) -> None:
    app = make_app({**settings, "redis.sessions.timeout": "100"})
    app.get("/write")
    key = only_key(redis_client)
    assert 90 < redis_client.ttl(key) <= 100
    app.get("/adjust", {"t": "5000"})
    assert 4990 < redis_client.ttl(key) <= 5000
    app.get("/write")  # later requests slide by the adjusted timeout
    assert 4990 < redis_client.ttl(key) <= 5000


def test_adjust_timeout_on_a_new_session(
    make_app: MakeApp, settings: dict[str, Any], redis_client: redis.Redis
) -> None:
    app = make_app(settings)
    app.get("/adjust", {"t": "7000"})
    assert redis_client.dbsize() == 0  # lazy: an empty session is never stored
    app.get("/write")
    assert redis_client.ttl(only_key(redis_client)) <= 1200  # so that adjustment is gone
    app.reset()
    app.get("/adjust", {"t": "7000", "write": "1"})  # adjusted, then stored: it holds
    (key,) = [k for k in redis_client.keys("*") if redis_client.hexists(k, "written")]
    assert 6990 < redis_client.ttl(key) <= 7000


def test_a_cookie_of_the_old_format_gives_a_fresh_session(
    make_app: MakeApp, settings: dict[str, Any]
) -> None:
    app = make_app(settings)
    old = "fT3ZoC1JeuxZNR2bH7W4pS1ImpQ2eqj3BfnFd7d0ODJjYjYzZDZmMzMwYzI0YjU4NjQ4ZmRiNjUxNzU0NjI3"
    response = app.get("/read", headers={"Cookie": f"session={old}"})
    assert response.json == {"new": True, "data": {}}


def test_invalidate_expires_the_cookie(
    make_app: MakeApp, settings: dict[str, Any], redis_client: redis.Redis
) -> None:
    app = make_app(settings)
    app.get("/write")
    assert "Max-Age=0" in cookie_header(app.get("/logout"))
    assert redis_client.dbsize() == 0


# ----------------------------------------------------- each setting takes effect


def test_secret_signs_the_cookie(make_app: MakeApp, settings: dict[str, Any]) -> None:
    app = make_app(settings)
    value = cookie_header(app.get("/write")).split(";")[0].split("=", 1)[1]
    session_id = Signer([SECRET]).unsign(value)
    assert session_id is not None
    forged = Signer(["another secret"]).sign(session_id)
    assert app.get("/read", headers={"Cookie": f"session={forged}"}).json["new"] is True


def test_secret_is_required(redis_url: str) -> None:
    with pytest.raises(prs.ConfigurationError) as info:
        prs.session_factory_from_settings({"redis.sessions.url": redis_url})
    assert isinstance(info.value, HashSessionConfigurationError)
    assert isinstance(info.value, PyramidConfigurationError)
    assert info.value.setting == "redis.sessions.secret"


def test_timeout_is_the_idle_ttl(
    make_app: MakeApp, settings: dict[str, Any], redis_client: redis.Redis
) -> None:
    make_app({**settings, "redis.sessions.timeout": "300"}).get("/write")
    assert 290 < redis_client.ttl(only_key(redis_client)) <= 300


def test_default_timeout_is_1200(
    make_app: MakeApp, settings: dict[str, Any], redis_client: redis.Redis
) -> None:
    make_app(settings).get("/write")
    assert 1190 < redis_client.ttl(only_key(redis_client)) <= 1200


@pytest.mark.parametrize(
    ("extra", "present", "absent"),
    [
        ({}, {"Path=/", "HttpOnly"}, {"Secure"}),  # the old defaults
        ({"cookie_max_age": "3600"}, {"Max-Age=3600"}, set()),
        ({"cookie_path": "/app"}, {"Path=/app"}, {"Path=/"}),
        ({"cookie_domain": "example.com"}, {"Domain=example.com"}, set()),
        ({"cookie_secure": "true"}, {"Secure"}, set()),
        ({"cookie_httponly": "False"}, set(), {"HttpOnly"}),
    ],
)
def test_cookie_settings(
    make_app: MakeApp,
    settings: dict[str, Any],
    extra: dict[str, str],
    present: set[str],
    absent: set[str],
) -> None:
    more = {f"redis.sessions.{k}": v for k, v in extra.items()}
    header = cookie_header(make_app({**settings, **more}).get("/write"))
    assert present <= attributes(header)
    assert not absent & attributes(header)
    if "cookie_max_age" not in extra:
        assert not any(a.startswith("Max-Age") for a in attributes(header))


def test_cookie_name(make_app: MakeApp, settings: dict[str, Any]) -> None:
    app = make_app({**settings, "redis.sessions.cookie_name": "sid"})
    assert cookie_header(app.get("/write"), "sid").startswith("sid=")
    assert app.get("/write").json == 2  # and it is read back under that name


@pytest.mark.parametrize(("value", "sent"), [("True", True), ("false", False)])
def test_cookie_on_exception(
    make_app: MakeApp, settings: dict[str, Any], value: str, sent: bool
) -> None:
    app = make_app({**settings, "redis.sessions.cookie_on_exception": value})
    response = app.get("/fail", status=500)
    assert response.json == "oops"
    cookies = response.headers.getall("Set-Cookie")
    assert bool(cookies) is sent


def test_url_names_server_and_db(make_app: MakeApp, settings: dict[str, Any]) -> None:
    url = settings["redis.sessions.url"].rsplit("/", 1)[0] + "/3"
    make_app({**settings, "redis.sessions.url": url}).get("/write")
    with redis.Redis.from_url(url) as db3:
        assert db3.dbsize() == 1


def test_host_port_db(
    make_app: MakeApp, redis_server: EmbeddedRedis, redis_url: str, redis_client: redis.Redis
) -> None:
    app = make_app(
        {
            "redis.sessions.secret": SECRET,
            "redis.sessions.host": "127.0.0.1",
            "redis.sessions.port": str(redis_server.port),
            "redis.sessions.db": "4",
        }
    )
    app.get("/write")
    assert redis_client.dbsize() == 0
    with redis.Redis.from_url(redis_url.rsplit("/", 1)[0] + "/4") as db4:
        assert db4.dbsize() == 1


def test_url_wins_over_host_and_port(make_app: MakeApp, settings: dict[str, Any]) -> None:
    app = make_app(
        {**settings, "redis.sessions.host": "nowhere.invalid", "redis.sessions.port": "1"}
    )
    assert app.get("/write").json == 1


def test_password(make_app: MakeApp, make_server: Callable[..., EmbeddedRedis]) -> None:
    server = make_server("--requirepass", "pa55")
    base = {
        "redis.sessions.secret": SECRET,
        "redis.sessions.host": "127.0.0.1",
        "redis.sessions.port": str(server.port),
    }
    assert make_app({**base, "redis.sessions.password": "pa55"}).get("/write").json == 1
    with pytest.raises(BackendError):
        make_app(base).get("/write")


def test_socket_timeout(make_app: MakeApp, settings: dict[str, Any]) -> None:
    app = make_app({**settings, "redis.sessions.socket_timeout": "2.5"})
    client = app.app.registry.queryUtility(ISessionFactory).client_for(None)
    assert client.connection_pool.connection_kwargs["socket_timeout"] == 2.5
    assert app.get("/write").json == 1


def test_connection_pool_by_dotted_name(make_app: MakeApp, redis_url: str) -> None:
    global POOL
    url = redis_url.rsplit("/", 1)[0] + "/5"
    POOL = redis.ConnectionPool.from_url(url)
    try:
        app = make_app(
            {"redis.sessions.secret": SECRET, "redis.sessions.connection_pool": f"{__name__}.POOL"}
        )
        client = app.app.registry.queryUtility(ISessionFactory).client_for(None)
        assert client.connection_pool is POOL
        app.get("/write")
        with redis.Redis.from_url(url) as db5:
            assert db5.dbsize() == 1
    finally:
        POOL.disconnect()
        POOL = None


def test_charset_and_errors(make_app: MakeApp, settings: dict[str, Any]) -> None:
    app = make_app(
        {**settings, "redis.sessions.charset": "UTF8", "redis.sessions.errors": "surrogatepass"}
    )
    kwargs = app.app.registry.queryUtility(ISessionFactory).client_for(None)
    kwargs = kwargs.connection_pool.connection_kwargs
    assert (kwargs["encoding"], kwargs["encoding_errors"]) == ("UTF8", "surrogatepass")
    with pytest.raises(prs.ConfigurationError) as info:
        prs.session_factory_from_settings({**settings, "redis.sessions.charset": "latin-1"})
    assert info.value.setting == "redis.sessions.charset"


def test_unix_socket_path(
    make_app: MakeApp, make_server: Callable[..., EmbeddedRedis], tmp_path: Any
) -> None:
    server = make_server(unix_socket=str(tmp_path / "r.sock"))
    assert server.unix_socket is not None
    app = make_app(
        {"redis.sessions.secret": SECRET, "redis.sessions.unix_socket_path": server.unix_socket}
    )
    app.get("/write")
    with server.client() as client:
        assert client.dbsize() == 1


@pytest.mark.parametrize("name", ["custom_connect", "client_callable"])
def test_custom_connect_is_called_per_request(
    make_app: MakeApp, redis_url: str, redis_client: redis.Redis, name: str
) -> None:
    CONNECT_TARGET["url"] = redis_url
    app = make_app(
        {
            "redis.sessions.secret": SECRET,
            "redis.sessions.url": "redis://nowhere.invalid:1/0",  # a callable gets priority
            "redis.sessions.port": "6390",
            f"redis.sessions.{name}": f"{__name__}.connect",
        }
    )
    app.get("/write")
    app.get("/write")
    assert len(CONNECT_CALLS) == 2
    request, options = CONNECT_CALLS[0]
    assert request.path == "/write"
    assert options["port"] == 6390 and options["host"] == "localhost"
    assert set(options) >= {"db", "password", "socket_timeout", "connection_pool"}
    assert redis_client.hget(only_key(redis_client), "n") == b"2"
    request.registry._test_redis.close()


@pytest.mark.parametrize(("dumps", "loads"), [("encode", "decode"), ("serialize", "deserialize")])
def test_encode_and_decode(
    make_app: MakeApp,
    settings: dict[str, Any],
    redis_client: redis.Redis,
    dumps: str,
    loads: str,
) -> None:
    app = make_app(
        {
            **settings,
            f"redis.sessions.{dumps}": f"{__name__}.encode",
            f"redis.sessions.{loads}": f"{__name__}.decode",
        }
    )
    app.get("/write")
    assert app.get("/read").json["data"] == {"n": 1}
    assert redis_client.hget(only_key(redis_client), "n") == b"X:1"


def test_pickle_by_name_is_hashsessions_pickle_codec(
    make_app: MakeApp, settings: dict[str, Any], redis_client: redis.Redis
) -> None:
    def store(request: Any) -> Any:
        request.session["when"] = {"t": (1, 2)}
        return "ok"

    config = Configurator(
        settings={
            **settings,
            "redis.sessions.encode": "cPickle.dumps",
            "redis.sessions.decode": "pickle.loads",
        }
    )
    config.include(PACKAGE)
    config.add_route("s", "/")
    config.add_view(store, route_name="s", renderer="json")
    app = webtest.TestApp(config.make_wsgi_app())
    try:
        app.get("/")
        raw = redis_client.hget(only_key(redis_client), "when")
        assert raw is not None and pickle.loads(raw) == {"t": (1, 2)}
    finally:
        config.registry.queryUtility(ISessionFactory).close()


def test_prefix_and_id_generator(
    make_app: MakeApp, settings: dict[str, Any], redis_client: redis.Redis
) -> None:
    app = make_app(
        {
            **settings,
            "redis.sessions.prefix": "myapp:",
            "redis.sessions.id_generator": f"{__name__}.fixed_id",
        }
    )
    response = app.get("/write")
    assert only_key(redis_client) == b"myapp:my-own-id"
    value = cookie_header(response).split(";")[0].split("=", 1)[1]
    assert Signer([SECRET]).unsign(value) == "my-own-id"


def test_prefix_alone(
    make_app: MakeApp, settings: dict[str, Any], redis_client: redis.Redis
) -> None:
    make_app({**settings, "redis.sessions.prefix": "myapp:"}).get("/write")
    assert only_key(redis_client).startswith(b"myapp:")


# ------------------------------------------------------------- settings errors


@pytest.mark.parametrize(
    ("extra", "setting"),
    [
        ({"redis.sessions.colour": "blue"}, "redis.sessions.colour"),
        ({"redis.sessions.timeout": "soon"}, "redis.sessions.timeout"),
        ({"redis.sessions.timeout": "0"}, "redis.sessions.timeout"),
        ({"redis.sessions.cookie_secure": "perhaps"}, "redis.sessions.cookie_secure"),
        ({"redis.sessions.cookie_max_age": "max_age_in_seconds"}, "redis.sessions.cookie_max_age"),
        ({"redis.sessions.cookie_path": "app"}, "redis.sessions.cookie_path"),
        ({"redis.sessions.socket_timeout": "slow"}, "redis.sessions.socket_timeout"),
        ({"redis.sessions.encode": "json.dumps"}, "redis.sessions.decode"),
        ({"redis.sessions.custom_connect": "no_such_module.fn"}, "redis.sessions.custom_connect"),
        ({"redis.sessions.decode": f"{__name__}.nothing"}, "redis.sessions.decode"),
        (
            {
                "redis.sessions.custom_connect": f"{__name__}.connect",
                "redis.sessions.client_callable": f"{__name__}.encode",
            },
            "redis.sessions.custom_connect",
        ),
    ],
)
def test_bad_settings_name_the_setting(
    settings: dict[str, Any], extra: dict[str, str], setting: str
) -> None:
    with pytest.raises(prs.ConfigurationError) as info:
        prs.session_factory_from_settings({**settings, **extra})
    assert info.value.setting == setting


def test_blank_and_none_values_mean_the_default(
    make_app: MakeApp, settings: dict[str, Any]
) -> None:
    app = make_app(
        {
            **settings,
            "redis.sessions.cookie_domain": "",
            "redis.sessions.password": "None",
            "redis.sessions.socket_timeout": "",
            "redis.sessions.connection_pool": "",
            "redis.sessions.unix_socket_path": " ",
        }
    )
    header = cookie_header(app.get("/write"))
    assert not any(a.startswith("Domain") for a in attributes(header))


def test_factory_in_code_with_callables(make_app: MakeApp, redis_url: str) -> None:
    CONNECT_TARGET["url"] = redis_url
    factory = prs.RedisSessionFactory(
        SECRET, timeout=60, custom_connect=connect, encode=encode, decode=decode
    )
    app = make_app({}, factory=factory)
    assert app.get("/write").json == 1
    assert len(CONNECT_CALLS) == 1
    CONNECT_CALLS[0][0].registry._test_redis.close()
    with pytest.raises(prs.ConfigurationError):
        prs.RedisSessionFactory(SECRET, custom_connect=f"{__name__}.connect")  # type: ignore[arg-type]


# ------------------------------------------------------- the README's examples


SEED_SETTINGS = """
[app:main]
redis.sessions.secret = your_cookie_signing_secret
redis.sessions.timeout = 1200

redis.sessions.cookie_name = session
redis.sessions.cookie_max_age = 86400
redis.sessions.cookie_path = /
redis.sessions.cookie_domain =
redis.sessions.cookie_secure = False
redis.sessions.cookie_httponly = False
redis.sessions.cookie_on_exception = True

redis.sessions.url = {url}

redis.sessions.host = 127.0.0.1
redis.sessions.port = {port}
redis.sessions.db = 0
redis.sessions.password = None

redis.sessions.socket_timeout =
redis.sessions.connection_pool =
redis.sessions.charset = utf-8
redis.sessions.errors = strict
redis.sessions.unix_socket_path =

redis.sessions.custom_connect = {module}.my_connection_thingy

redis.sessions.encode = cPickle.dumps
redis.sessions.decode = cPickle.loads
"""


def my_connection_thingy(request: Any, **redis_options: Any) -> Any:
    """The README's custom connection handler, with the registry as "somewhere"."""
    client = getattr(request.registry, "_thingy", None)
    if not client:
        client = redis.StrictRedis(**redis_options)
        request.registry._thingy = client
    return client


def seed_settings(redis_server: EmbeddedRedis, *, custom_connect: bool) -> dict[str, str]:
    parser = configparser.ConfigParser(interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    text = SEED_SETTINGS.format(url=redis_server.url, port=redis_server.port, module=__name__)
    if not custom_connect:
        text = text.replace("redis.sessions.custom_connect", "#")
    parser.read_string(text)
    return dict(parser["app:main"])


def included_main(global_config: Any, **settings: Any) -> Any:
    config = Configurator(settings=settings)
    config.include("hashsession.compat.pyramid_redis_sessions")
    add_views(config)
    return config.make_wsgi_app()


def from_settings_main(global_config: Any, **settings: Any) -> Any:
    from hashsession.compat.pyramid_redis_sessions import session_factory_from_settings

    config = Configurator(settings=settings)
    session_factory = session_factory_from_settings(settings)
    config.set_session_factory(session_factory)
    add_views(config)
    return config.make_wsgi_app()


@pytest.mark.parametrize("main", [included_main, from_settings_main])
@pytest.mark.parametrize("custom_connect", [True, False])
def test_the_readme_examples_run(
    redis_server: EmbeddedRedis,
    redis_client: redis.Redis,
    main: Callable[..., Any],
    custom_connect: bool,
) -> None:
    app = webtest.TestApp(main({}, **seed_settings(redis_server, custom_connect=custom_connect)))
    response = app.get("/write")
    header = cookie_header(response)
    assert "Max-Age=86400" in attributes(header) and "HttpOnly" not in attributes(header)
    assert app.get("/write").json == 2
    key = only_key(redis_client)
    assert 1190 < redis_client.ttl(key) <= 1200
    app.get("/adjust", {"t": "3600"})
    assert 3590 < redis_client.ttl(key) <= 3600
    assert redis_client.hget(key, "n") == b"2"  # numbers stay countable under pickle
    assert app.get("/fail", status=500).json == "oops"
    registry = app.app.registry
    assert hasattr(registry, "_thingy") is custom_connect
    if custom_connect:
        registry._thingy.close()
    registry.queryUtility(ISessionFactory).close()


# ------------------------------------------------------------ then to native


def test_sessions_carry_over_to_the_native_module(
    make_app: MakeApp, settings: dict[str, Any], redis_url: str
) -> None:
    """With the settings renamed, ``hashsession.pyramid`` reads the compat layer's sessions."""

    def flash(request: Any) -> Any:
        request.session.flash("hello")
        return request.session.get_csrf_token()

    config = Configurator(settings={**settings, "redis.sessions.timeout": "600"})
    config.include(PACKAGE)
    add_views(config)
    config.add_route("flash", "/flash")
    config.add_view(flash, route_name="flash", renderer="json")
    old = webtest.TestApp(config.make_wsgi_app())
    old.get("/write")
    token = old.get("/flash").json
    cookie = old.cookies["session"]

    native = Configurator(
        settings={
            "hashsession.redis": redis_url,
            "hashsession.secret": SECRET,
            "hashsession.ttl": "600",
        }
    )
    native.include("hashsession.pyramid")

    def read(request: Any) -> Any:
        s = request.session
        return {"data": dict(s), "flash": s.pop_flash(), "csrf": s.get_csrf_token()}

    native.add_route("read", "/read")
    native.add_view(read, route_name="read", renderer="json")
    new = webtest.TestApp(native.make_wsgi_app())
    try:
        got = new.get("/read", headers={"Cookie": f"session={cookie}"}).json
        assert got == {"data": {"n": 1}, "flash": ["hello"], "csrf": token}
    finally:
        config.registry.queryUtility(ISessionFactory).close()
        native.registry.queryUtility(ISessionFactory).close()


def test_streamed_body_writes_only_to_an_existing_session(
    make_app: MakeApp, settings: dict[str, Any], redis_client: redis.Redis
) -> None:
    """The include subscribes ``response_started``: a session first opened mid-body knows."""
    app = make_app(settings)
    with pytest.raises(HeadersSentError, match="writing 'late'"):
        app.get("/stream")
    assert redis_client.keys("*") == []
    app.get("/write")
    assert app.get("/stream").body == b"first second"
    assert redis_client.hget(only_key(redis_client), "late") == b"true"
