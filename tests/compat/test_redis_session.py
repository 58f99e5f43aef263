"""hashsession.compat.redis_session against a real redis-server.

redis-session 0.2.1's two README examples must run with only their import line
changed (and Redis pointed at the test server); Flask runs through its test
client, Tornado on a real HTTPServer on a loopback port.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from typing import Any

import flask
import pytest
import redis
from flask import Flask, request
from tornado.httpclient import AsyncHTTPClient, HTTPResponse
from tornado.httpserver import HTTPServer
from tornado.netutil import bind_sockets
from tornado.options import options
from tornado.web import Application, create_signed_value

from hashsession import ConfigurationError, HeadersSentError
from hashsession.compat.redis_session import (
    RedisSession,
    TextCodec,
    Value,
    flask_session,
    tornado_session,
)

# The README examples of redis-session 0.2.1, as published (the test data of this module).
FLASK_EXAMPLE = """\
from redis_session.flask_session import setup_session
from flask import Flask, request

app = Flask(__name__)

@app.route('/')
def handle():
    count = request.session.count.int
    res = f'Current session value of count:{count}\\n'
    request.session.count = count + 1
    res += f'Current session value:{request.session.count.int}\\n'
    return res


def main():
    app.config.from_mapping(
        ENV='dev',
        SECRET_KEY='demo',
        SESSION_REDIS='redis://localhost:6379',
        SESSION_REDIS_PREFIX='appName',
        SESSION_COOKIE_ID='app-session-id',
        SESSION_COOKIE_HTTP_ONLY = True,
        SESSION_COOKIE_SECURE = False,
        SESSION_COOKIE_DOMAIN = '.mydomain.com',
        SESSION_COOKIE_PATH = '/',
        SESSION_EXPIRE=60*60*24*7
    )
    setup_session(app)
    app.run(port=3000)

if __name__ == "__main__":
    main()
"""

TORNADO_EXAMPLE = """\
import tornado.web
import tornado.httpserver
import tornado.ioloop
from tornado.options import options, define, parse_command_line
from redis_session.tornado_session import SessionHandler

define('port', default=3000, help='run on the given port', type=int)
define('debug', default=False, help='run in debug mode')

class MainHandler(SessionHandler):
    def get(self):
        count = self.session.count.int
        self.write(f'Current session value of count:{count}\\n')
        self.session.count = count + 1
        self.write(f'Current session value of count:{self.session.count.int}\\n')

def main():
    parse_command_line()
    application = tornado.web.Application([(r'/', MainHandler)], cookie_secret='udxas-efasx-ase323fs-3efsxf3eFdes')
    http_server = tornado.httpserver.HTTPServer(application)
    http_server.listen(options.port)
    tornado.ioloop.IOLoop.instance().start()

if __name__ == '__main__':
    main()
"""  # noqa: E501


def swapped(example: str) -> str:
    """The example with only its redis_session import pointed at hashsession."""
    out = example.replace("from redis_session.", "from hashsession.compat.redis_session.")
    assert out.count("hashsession.compat.redis_session") == 1
    return out


def cookie_of(header: str) -> tuple[str, str, dict[str, str]]:
    """Name, value and lower-cased attributes of one ``Set-Cookie`` header."""
    head, *parts = (p.strip() for p in header.split(";"))
    name, _, value = head.partition("=")
    attrs = {}
    for part in parts:
        key, _, val = part.partition("=")
        attrs[key.lower()] = val
    return name, value, attrs


# ------------------------------------------------------------------------ values


def test_value_parsers_and_their_fallbacks() -> None:
    missing = Value(None)
    assert (missing.raw, missing.str, missing.int, missing.bool, missing.json, missing.none) == (
        None,
        "",
        0,
        False,
        {},
        True,
    )
    assert Value(b"42").int == 42
    assert Value(b"4.5").int == 0
    assert Value(b"stefan").str == "stefan"
    assert Value(b"True").bool is True
    assert Value(b"true").bool is False
    assert Value(b'{"a": [1]}').json == {"a": [1]}
    assert Value(b"not json").json == {}
    assert Value(b"").none is False


def test_codec_writes_text_as_redis_py_did() -> None:
    codec = TextCodec()
    assert codec.dumps(7) == "7"
    assert codec.dumps(0.5) == "0.5"
    assert codec.dumps(True) == "True"
    assert codec.dumps({"a": 1}) == '{"a": 1}'
    assert codec.dumps(b"\xff") == b"\xff"
    with pytest.raises(TypeError):
        codec.dumps(object())


# ------------------------------------------------------------------------- Flask


def test_flask_readme_example_runs_with_the_import_changed(
    redis_url: str, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = swapped(FLASK_EXAMPLE).replace("redis://localhost:6379", redis_url)
    monkeypatch.setattr(Flask, "run", lambda self, **kw: None)
    namespace: dict[str, Any] = {"__name__": "readme_flask"}
    exec(compile(source, "<flask example>", "exec"), namespace)
    namespace["main"]()
    client = namespace["app"].test_client()

    first = client.get("/", base_url="http://www.mydomain.com/")
    assert first.text == "Current session value of count:0\nCurrent session value:1\n"
    [header] = first.headers.getlist("Set-Cookie")
    name, _, attrs = cookie_of(header)
    assert name == "app-session-id"
    assert attrs["domain"] == "mydomain.com"  # the leading dot means nothing (RFC 6265)
    assert attrs["path"] == "/"
    assert "httponly" in attrs
    assert "secure" not in attrs

    second = client.get("/", base_url="http://www.mydomain.com/")
    assert second.text == "Current session value of count:1\nCurrent session value:2\n"
    assert second.headers.getlist("Set-Cookie") == []
    [key] = redis_client.keys("appName:sessions:*")
    assert redis_client.hget(key, "count") == b"2"
    assert 0 < redis_client.ttl(key) <= 7 * 24 * 3600


def make_app(redis: Any, **config: Any) -> Flask:
    app = Flask(__name__)
    app.config.update(SECRET_KEY="s3cret", SESSION_REDIS=redis, **config)
    flask_session.setup_session(app)
    return app


def test_flask_defaults_and_typed_accessors(redis_url: str, redis_client: redis.Redis) -> None:
    app = make_app(redis_url)

    @app.route("/write")
    def write() -> str:
        session = request.session  # type: ignore[attr-defined]
        session.save({"name": "stefan", "vip": True, "properties": {"x": 1}})
        session.count = 3
        return "ok"

    @app.route("/read")
    def read() -> dict[str, Any]:
        s: RedisSession = request.session  # type: ignore[attr-defined]
        return {
            "raw": (s.name.raw or b"").decode(),
            "str": s.name.str,
            "int": s.count.int,
            "bool": s.vip.bool,
            "json": s.properties.json,
            "none": [s.age.none, s.name.none],
            "native": flask.session["count"].decode(),
            "fields": sorted(s.load()),
        }

    client = app.test_client()
    [header] = client.get("/write").headers.getlist("Set-Cookie")
    name, _, attrs = cookie_of(header)
    assert name == "session-id"
    assert "secure" not in attrs  # Flask's own default SESSION_COOKIE_SECURE is False
    assert "httponly" in attrs
    assert "max-age" not in attrs
    assert client.get("/read").json == {
        "raw": "stefan",
        "str": "stefan",
        "int": 3,
        "bool": True,
        "json": {"x": 1},
        "none": [True, False],
        "native": "3",
        "fields": ["count", "name", "properties", "vip"],
    }
    [key] = redis_client.keys("redis:sessions:*")
    assert redis_client.hget(key, "properties") == b'{"x": 1}'


def test_flask_untouched_session_costs_nothing(counted: Any) -> None:
    app = make_app(counted.client)

    @app.route("/")
    def index() -> str:
        return "plain"

    with counted.expect(0):
        response = app.test_client().get("/")
    assert response.headers.getlist("Set-Cookie") == []


def test_flask_delete_and_clear(redis_url: str, redis_client: redis.Redis) -> None:
    app = make_app(redis_url)

    @app.route("/set")
    def set_() -> str:
        request.session.a = 1  # type: ignore[attr-defined]
        request.session.b = 2  # type: ignore[attr-defined]
        return "ok"

    @app.route("/del")
    def delete() -> str:
        del request.session.a  # type: ignore[attr-defined]
        return str(request.session.a.none)  # type: ignore[attr-defined]

    @app.route("/clear")
    def clear() -> str:
        request.session.clear()  # type: ignore[attr-defined]
        return "gone"

    client = app.test_client()
    client.get("/set")
    assert client.get("/del").text == "True"
    response = client.get("/clear")
    [header] = response.headers.getlist("Set-Cookie")
    assert cookie_of(header)[2]["max-age"] == "0"
    assert redis_client.keys("redis:sessions:*") == []


def test_flask_config_errors_name_redis_session_keys(redis_url: str) -> None:
    with pytest.raises(ConfigurationError) as no_secret:
        flask_session.store_from_config({"SESSION_REDIS": redis_url})
    assert no_secret.value.setting == "SECRET_KEY"
    with pytest.raises(ConfigurationError) as bad_ttl:
        flask_session.store_from_config({"SECRET_KEY": "k", "SESSION_EXPIRE": "a week"})
    assert bad_ttl.value.setting == "SESSION_EXPIRE"


def test_flask_forged_cookie_gets_a_fresh_session(redis_url: str) -> None:
    app = make_app(redis_url)

    @app.route("/")
    def index() -> str:
        session: RedisSession = request.session  # type: ignore[attr-defined]
        before = session.count.int
        session.count = before + 1
        return str(before)

    client = app.test_client()
    client.set_cookie("session-id", "forged-id")
    response = client.get("/")
    assert response.text == "0"
    assert cookie_of(response.headers["Set-Cookie"])[1] != "forged-id"


# ----------------------------------------------------------------------- Tornado


@pytest.fixture
def tornado_options(redis_url: str) -> Iterator[None]:
    names = [n.replace("-", "_") for n in options if n.startswith("session")]
    saved = {name: getattr(options, name) for name in names}
    options.session_redis = redis_url
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(options, name, value)


@asynccontextmanager
async def serving(app: Application) -> AsyncIterator[str]:
    [sock] = bind_sockets(0, "127.0.0.1")
    server = HTTPServer(app)
    server.add_sockets([sock])
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.stop()
        await server.close_all_connections()


async def fetch(url: str, cookie: str | None = None) -> HTTPResponse:
    headers = {"Cookie": cookie} if cookie else {}
    return await AsyncHTTPClient().fetch(url, headers=headers, raise_error=False)


async def test_tornado_readme_example_runs_with_the_import_changed(
    tornado_options: None, redis_client: redis.Redis
) -> None:
    namespace: dict[str, Any] = {"__name__": "readme_tornado"}
    exec(compile(swapped(TORNADO_EXAMPLE), "<tornado example>", "exec"), namespace)
    secret = re.search(r"cookie_secret='([^']+)'", TORNADO_EXAMPLE)
    assert secret is not None
    app = Application([(r"/", namespace["MainHandler"])], cookie_secret=secret[1])
    async with serving(app) as base:
        first = await fetch(base + "/")
        assert first.body == b"Current session value of count:0\nCurrent session value of count:1\n"
        [header] = first.headers.get_list("Set-Cookie")
        name, value, attrs = cookie_of(header)
        assert name == "session-id"
        assert "httponly" in attrs
        assert attrs["max-age"] == str(30 * 24 * 3600)
        assert "secure" not in attrs

        second = await fetch(base + "/", f"{name}={value}")
        assert second.body.endswith(b"count:2\n")
        assert second.headers.get_list("Set-Cookie") == []
    [key] = redis_client.keys("redis:sessions:*")
    assert redis_client.hget(key, "count") == b"2"
    session_id = str(key, "ascii").removeprefix("redis:sessions:")  # type: ignore[arg-type]
    assert value.startswith(session_id)  # signed: the id, then its signature


class Store(tornado_session.SessionHandler):
    def get(self) -> None:
        self.session = {"a": "1", "b": "2"}
        self.write(self.session.a.str + str(self.sessionId is not None))

    def delete(self) -> None:
        del self.session


class Untouched(tornado_session.SessionHandler):
    def get(self) -> None:
        self.write("plain")


async def test_tornado_options_setter_deleter_and_untouched(
    tornado_options: None, redis_client: redis.Redis
) -> None:
    options.session_cookie_secure = False
    options.session_cookie_id = "sid"
    options.session_redis_prefix = "app"
    options.session_expire = 60
    app = Application([(r"/", Store), (r"/plain", Untouched)])
    async with serving(app) as base:
        plain = await fetch(base + "/plain")
        assert plain.body == b"plain"
        assert plain.headers.get_list("Set-Cookie") == []
        assert redis_client.keys("*") == []

        stored = await fetch(base + "/")
        assert stored.body == b"1True"
        name, value, attrs = cookie_of(stored.headers["Set-Cookie"])
        assert name == "sid"
        assert "max-age" not in attrs  # unsigned: a browser-session cookie, as before
        data: dict[bytes, bytes] = redis_client.hgetall(f"app:sessions:{value}")  # type: ignore[assignment]
        assert {k: v for k, v in data.items() if not k.startswith(b"\0")} == {
            b"a": b"1",
            b"b": b"2",
        }
        assert 0 < redis_client.ttl(f"app:sessions:{value}") <= 60

        gone = await AsyncHTTPClient().fetch(
            base + "/", method="DELETE", headers={"Cookie": f"sid={value}"}, raise_error=False
        )
        assert gone.code == 200
        assert redis_client.exists(f"app:sessions:{value}") == 0


def test_tornado_signed_cookie_needs_a_cookie_secret(tornado_options: None) -> None:
    assert options.session_cookie_secure is True
    with pytest.raises(ConfigurationError) as error:
        tornado_session.store_for(Application([]))
    assert error.value.setting == "cookie_secret"


def test_flask_reads_a_hash_redis_session_wrote(redis_url: str, redis_client: redis.Redis) -> None:
    legacy_id = "0f8e7a3c-4b1d-4e2f-9a6b-1c2d3e4f5a6b5d6c7b8a-9e0f-4a1b-8c2d-3e4f5a6b7c8d"
    redis_client.hset(f"redis:sessions:{legacy_id}", mapping={"count": "5", "name": "ann"})
    app = make_app(redis_url)

    @app.route("/")
    def index() -> str:
        session: RedisSession = request.session  # type: ignore[attr-defined]
        return f"{session.name.str}:{session.count.int}"

    interface = app.extensions["redis_session"]
    client = app.test_client()
    client.set_cookie("session-id", interface.store.config.cookie_value(legacy_id))
    assert client.get("/").text == "ann:5"


async def test_tornado_keeps_sessions_behind_a_redis_session_cookie(
    tornado_options: None, redis_client: redis.Redis
) -> None:
    legacy_id = "0f8e7a3c-4b1d-4e2f-9a6b-1c2d3e4f5a6b5d6c7b8a-9e0f-4a1b-8c2d-3e4f5a6b7c8d"
    redis_client.hset(f"redis:sessions:{legacy_id}", "count", "41")
    cookie = create_signed_value("secret", "session-id", legacy_id).decode()
    app = Application([(r"/", Counter)], cookie_secret="secret")
    async with serving(app) as base:
        response = await fetch(base + "/", f"session-id={cookie}")
        assert response.body == b"41"
        assert response.headers.get_list("Set-Cookie") == []  # the old cookie keeps working
        forged = await fetch(base + "/", f"session-id={cookie}x")
        assert forged.body == b"0"
    assert redis_client.hget(f"redis:sessions:{legacy_id}", "count") == b"42"


class Counter(tornado_session.SessionHandler):
    def get(self) -> None:
        count = self.session.count.int
        self.session.count = count + 1
        self.write(str(count))


class StreamThenWrite(tornado_session.SessionHandler):
    """Flushes the headers, then writes to the session."""

    async def get(self) -> None:
        self.write("first ")
        await self.flush()
        self.session.late = "yes"
        self.write("second")


async def test_tornado_write_after_the_headers_needs_an_existing_session(
    tornado_options: None, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    options.session_cookie_secure = False
    app = Application([(r"/", Counter), (r"/late", StreamThenWrite)])
    async with serving(app) as base:
        with caplog.at_level(logging.ERROR):
            orphan = await fetch(base + "/late")
        assert orphan.body == b"first "  # the handler stopped at the write
        assert orphan.headers.get_list("Set-Cookie") == []
        assert any(
            rec.exc_info and isinstance(rec.exc_info[1], HeadersSentError) for rec in caplog.records
        )
        assert redis_client.keys("redis:sessions:*") == []

        name, value, _ = cookie_of((await fetch(base + "/")).headers["Set-Cookie"])
        late = await fetch(base + "/late", f"{name}={value}")
        assert late.body == b"first second"
    assert redis_client.hget(f"redis:sessions:{value}", "late") == b"yes"
