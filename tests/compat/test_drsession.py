"""hashsession.compat.drsession against a real redis-server.

Apps written for DRSession 1.2.0 must run with only their import changed, and
the sessions DRSession left in Redis must keep working.
"""

from __future__ import annotations

import json
import re
import secrets
import wsgiref.util
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
import redis

from hashsession import BackendError, ConfigurationError, HeadersSentError
from hashsession.compat import drsession
from hashsession.embedded import EmbeddedRedis, free_port

TEN_YEARS = 10 * 365 * 24 * 3600
DRSESSION_ID = re.compile(r"[A-Za-z0-9_-]{43}")

Environ = dict[str, Any]
App = Callable[[Environ, Callable[..., Any]], Iterable[bytes]]


# --------------------------------------------------------------------- a tiny browser


class Response:
    def __init__(self, status: str, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")

    @property
    def set_cookies(self) -> list[str]:
        return [v for k, v in self.headers if k.lower() == "set-cookie"]

    def cookie(self, name: str) -> tuple[str, dict[str, str]] | None:
        """The value and attributes (lower-cased names) of the ``Set-Cookie`` for ``name``."""
        for header in self.set_cookies:
            head, *attrs = (part.strip() for part in header.split(";"))
            cname, _, value = head.partition("=")
            if cname == name:
                parsed = {}
                for attr in attrs:
                    key, _, val = attr.partition("=")
                    parsed[key.lower()] = val
                return value, parsed
        return None


class Browser:
    """Calls a WSGI app directly and keeps cookies between requests, like a browser."""

    def __init__(self, app: App) -> None:
        self.app = app
        self.cookies: dict[str, str] = {}

    def get(self, path: str = "/") -> Response:
        environ: Environ = {}
        wsgiref.util.setup_testing_defaults(environ)
        environ["PATH_INFO"] = path
        if self.cookies:
            environ["HTTP_COOKIE"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
        started: list[Any] = []

        def start_response(
            status: str, headers: list[tuple[str, str]], exc_info: Any = None
        ) -> Callable[[bytes], None]:
            started[:] = [status, list(headers)]
            return lambda data: None

        chunks = self.app(environ, start_response)
        try:
            body = b"".join(chunks)
        finally:
            close = getattr(chunks, "close", None)
            if close is not None:
                close()
        response = Response(started[0], started[1], body)
        for header in response.set_cookies:
            head, *attrs = (part.strip() for part in header.split(";"))
            name, _, value = head.partition("=")
            if any(a.lower() == "max-age=0" for a in attrs):
                self.cookies.pop(name, None)
            else:
                self.cookies[name] = value
        return response


def session_app(
    handler: Callable[[drsession.Session], str], env: str = "drsession"
) -> Callable[[Environ, Callable[..., Any]], list[bytes]]:
    """A WSGI app answering ``handler(environ[env])`` as text."""

    def app(environ: Environ, start_response: Callable[..., Any]) -> list[bytes]:
        body = handler(environ[env]).encode("utf-8")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]

    return app


@pytest.fixture
def middleware(
    redis_url: str,
) -> Iterator[Callable[..., drsession.SessionMiddleware]]:
    """``middleware(app, **kwargs)``: DRSession middleware on the emptied fixture server."""
    made: list[drsession.SessionMiddleware] = []

    def make(app: App, **kwargs: Any) -> drsession.SessionMiddleware:
        if not {"redis_server", "redis_kwargs", "connection_pool", "connection_pool_kwargs"} & set(
            kwargs
        ):
            kwargs["redis_server"] = redis.Redis.from_url(redis_url)
        mw = drsession.SessionMiddleware(app, **kwargs)
        made.append(mw)
        return mw

    yield make
    for mw in made:
        mw.store.close()


def host_port(server: EmbeddedRedis) -> dict[str, Any]:
    assert server.port is not None
    return {"host": "127.0.0.1", "port": server.port}


# ------------------------------------------------------------ the README, unchanged

# DRSession's README "Hello World", with `import bottle, drsession` replaced by the
# two lines below it: nothing else differs.
HELLO_WORLD = """
import bottle
from hashsession.compat import drsession

app = drsession.SessionMiddleware(bottle.app())

@bottle.hook('before_request')
def setup_session():
  bottle.request.session = bottle.request.environ.get('drsession')

@bottle.route('/set')
def set():
  bottle.request.session['foo'] = 'bar'
  return 'OK'

@bottle.route('/get')
def get():
  return bottle.request.session['foo']

bottle.run(app=app)
"""


def test_readme_hello_world_runs_with_only_the_import_changed(
    monkeypatch: pytest.MonkeyPatch, redis_url: str, redis_client: redis.Redis
) -> None:
    bottle = pytest.importorskip("bottle")
    # The README talks to Redis on localhost's default port; point that at the fixture.
    real_redis = redis.Redis
    monkeypatch.setattr(redis, "Redis", lambda **kw: real_redis.from_url(redis_url, **kw))
    ran: list[Any] = []
    monkeypatch.setattr(bottle, "run", lambda app, **kw: ran.append(app))
    bottle.default_app.push()  # a fresh default app, so the README's routes do not leak
    try:
        exec(compile(HELLO_WORLD, "README-hello-world", "exec"), {"__name__": "hello"})
    finally:
        bottle.default_app.pop()
    assert len(ran) == 1 and isinstance(ran[0], drsession.SessionMiddleware)

    browser = Browser(ran[0])
    first = browser.get("/set")
    assert (first.status, first.text) == ("200 OK", "OK")
    sid = browser.cookies["drsession"]
    assert DRSESSION_ID.fullmatch(sid)
    assert redis_client.hget(f"drsession:{sid}", "foo") == b'"bar"'

    second = browser.get("/get")
    assert (second.status, second.text) == ("200 OK", "bar")
    # A browser without the cookie does not see it.
    assert Browser(ran[0]).get("/get").status.startswith("500")
    ran[0].store.close()


# ------------------------------------------------------- data DRSession left behind


def test_sessions_drsession_wrote_keep_working(
    middleware: Callable[..., drsession.SessionMiddleware], redis_client: redis.Redis
) -> None:
    sid = secrets.token_urlsafe(32)
    key = f"drsession:{sid}"
    # Exactly what DRSession 1.2.0 stored: json.dumps text, no metadata, no TTL.
    redis_client.hset(
        key, mapping={"user": json.dumps({"name": "Zoë", "id": 7}), "visits": json.dumps(5)}
    )
    assert redis_client.ttl(key) == -1
    seen: dict[str, Any] = {}

    def handler(s: drsession.Session) -> str:
        seen["user"] = s["user"]
        n = s["visits"]
        redis_client.hincrby(key, "visits", 10)  # another request counts meanwhile
        n += 1
        s["visits"] = n  # HINCRBY, so the concurrent +10 is kept
        seen["keys"] = s.keys()
        seen["has"] = (s.has_key("user"), s.has_key("nope"))
        return "ok"

    browser = Browser(middleware(session_app(handler)))
    browser.cookies["drsession"] = sid
    assert browser.get().text == "ok"
    assert seen["user"] == {"name": "Zoë", "id": 7}
    assert redis_client.hget(key, "visits") == b"16"
    assert sorted(seen["keys"]) == ["user", "visits"] and isinstance(seen["keys"], list)
    assert seen["has"] == (True, False)
    assert TEN_YEARS - 60 < redis_client.ttl(key) <= TEN_YEARS  # no key left without a TTL
    assert browser.cookies["drsession"] == sid  # same id kept
    assert redis_client.keys("*") == [key.encode()]


def test_sessions_written_here_are_plain_drsession_data(
    middleware: Callable[..., drsession.SessionMiddleware], redis_client: redis.Redis
) -> None:
    def handler(s: drsession.Session) -> str:
        s["cart"] = [1, 2, "three"]
        s.update({"n": 3}, flag=True)
        return "ok"

    browser = Browser(middleware(session_app(handler)))
    browser.get()
    sid = browser.cookies["drsession"]
    key = f"drsession:{sid}"
    assert json.loads(redis_client.hget(key, "cart") or b"") == [1, 2, "three"]
    assert redis_client.hget(key, "n") == b"3"
    assert json.loads(redis_client.hget(key, "flag") or b"") is True
    assert 0 < redis_client.ttl(key) <= TEN_YEARS
    # DRSession's own reading of it: HGET, decode UTF-8, json.loads.
    assert json.loads((redis_client.hget(key, "cart") or b"").decode("utf-8")) == [1, 2, "three"]


# ------------------------------------------------------------------ loads / dumps


def test_custom_loads_and_dumps_take_effect(
    middleware: Callable[..., drsession.SessionMiddleware], redis_client: redis.Redis
) -> None:
    loaded: list[object] = []

    def dumps(value: Any) -> str:
        return "MARK:" + json.dumps(value)

    def loads(text: str) -> Any:
        loaded.append(text)
        assert text.startswith("MARK:")
        return json.loads(text[5:])

    seen: dict[str, Any] = {}

    def handler(s: drsession.Session) -> str:
        if "x" not in s:
            s["x"] = {"a": 1}
            s["count"] = 1
            return "set"
        seen["x"] = s["x"]
        count = s["count"]
        count += 2  # dumps does not write Redis numbers: an atomic compare-and-set instead
        s["count"] = count
        seen["get"] = s.get("count")
        return "read"

    browser = Browser(middleware(session_app(handler), loads=loads, dumps=dumps))
    assert browser.get().text == "set"  # DRSession 1.2.0 raised AttributeError here
    key = f"drsession:{browser.cookies['drsession']}"
    assert redis_client.hget(key, "x") == b'MARK:{"a": 1}'
    assert browser.get().text == "read"
    assert seen == {"x": {"a": 1}, "get": 3}
    assert redis_client.hget(key, "count") == b"MARK:3"
    assert loaded and all(type(t) is str for t in loaded)  # loads gets text, not bytes


def test_dumps_returning_bytes_and_decimal_numbers_keep_hincrby(
    middleware: Callable[..., drsession.SessionMiddleware], redis_client: redis.Redis
) -> None:
    def dumps(value: Any) -> bytes:
        return json.dumps(value, separators=(",", ":")).encode("utf-8")

    def handler(s: drsession.Session) -> str:
        if "n" not in s:
            s["n"] = 1
            return "new"
        n = s["n"]
        redis_client.hincrby(key[0], "n", 100)
        n += 1  # numbers are decimal text: one HINCRBY, the concurrent +100 survives
        s["n"] = n
        return "inc"

    key: list[str] = []
    browser = Browser(middleware(session_app(handler), dumps=dumps))
    browser.get()
    key.append(f"drsession:{browser.cookies['drsession']}")
    assert browser.get().text == "inc"
    assert redis_client.hget(key[0], "n") == b"102"


def test_undecodable_values_give_the_default(
    middleware: Callable[..., drsession.SessionMiddleware], redis_client: redis.Redis
) -> None:
    sid = secrets.token_urlsafe(32)
    redis_client.hset(f"drsession:{sid}", mapping={"bad": b"not json {", "ok": b"1"})
    seen: dict[str, Any] = {}

    def handler(s: drsession.Session) -> str:
        seen["get"] = s.get("bad", "fallback")
        seen["missing"] = s.get("nothing", "dflt")
        with pytest.raises(ValueError):
            s["bad"]
        seen["pop"] = s.pop("bad", "gone")
        return "ok"

    browser = Browser(middleware(session_app(handler)))
    browser.cookies["drsession"] = sid
    browser.get()
    assert seen == {"get": "fallback", "missing": "dflt", "pop": "gone"}
    assert not redis_client.hexists(f"drsession:{sid}", "bad")  # pop still removed it


# ------------------------------------------------------------ DRSession's session API


def test_session_api_kept_from_drsession(
    middleware: Callable[..., drsession.SessionMiddleware], redis_client: redis.Redis
) -> None:
    seen: dict[str, Any] = {}

    def handler(s: drsession.Session) -> str:
        s["a"] = 1
        s["b"] = "two"
        del s["never-there"]  # DRSession: no KeyError
        seen["pop_missing"] = s.pop("never-there")
        seen["keys"] = s.keys()
        seen["values"] = s.values()
        seen["items"] = s.items()
        seen["len"] = len(s)
        s.save()  # nothing to do, but it exists
        seen["dict"] = dict(s)
        return "ok"

    browser = Browser(middleware(session_app(handler)))
    browser.get()
    assert seen["pop_missing"] is None
    for name in ("keys", "values", "items"):
        assert type(seen[name]) is list, name
    assert sorted(seen["keys"]) == ["a", "b"]
    assert sorted(seen["values"], key=str) == [1, "two"]
    assert sorted(seen["items"]) == [("a", 1), ("b", "two")]
    assert seen["len"] == 2
    assert seen["dict"] == {"a": 1, "b": "two"}


@pytest.mark.parametrize("method", ["destroy", "clear"])
def test_destroy_deletes_the_key_and_keeps_the_id_usable(
    middleware: Callable[..., drsession.SessionMiddleware],
    redis_client: redis.Redis,
    method: str,
) -> None:
    def handler(s: drsession.Session) -> str:
        if "stage" not in s:
            s["stage"] = 1
            s["secret"] = "x"
            return "created"
        getattr(s, method)()
        assert dict(s) == {}
        s["stage"] = 2  # written again, in the same request, under the same id
        return "destroyed"

    browser = Browser(middleware(session_app(handler)))
    browser.get()
    sid = browser.cookies["drsession"]
    key = f"drsession:{sid}"
    assert redis_client.hgetall(key) and redis_client.hget(key, "secret") == b'"x"'
    response = browser.get()
    assert response.text == "destroyed"
    assert browser.cookies["drsession"] == sid
    user_fields = {k: v for k, v in redis_client.hgetall(key).items() if not k.startswith(b"\0")}
    assert user_fields == {b"stage": b"2"}  # the old fields went with the key
    assert redis_client.ttl(key) > 0


def test_destroy_without_writing_again_leaves_no_key_and_no_cookie_change(
    middleware: Callable[..., drsession.SessionMiddleware], redis_client: redis.Redis
) -> None:
    sid = secrets.token_urlsafe(32)
    redis_client.hset(f"drsession:{sid}", "k", "1")

    browser = Browser(middleware(session_app(lambda s: str(s.destroy()))))
    browser.cookies["drsession"] = sid
    response = browser.get()
    assert redis_client.exists(f"drsession:{sid}") == 0
    assert response.cookie("drsession") is None  # the browser keeps its cookie, as before
    assert browser.cookies["drsession"] == sid


# ------------------------------------------------------------------------ defaults


def test_defaults_match_drsession(
    middleware: Callable[..., drsession.SessionMiddleware], redis_client: redis.Redis
) -> None:
    def handler(s: drsession.Session) -> str:
        s["k"] = "v"
        return "ok"

    mw = middleware(session_app(handler, env="drsession"))
    assert (mw.prefix, mw.cookie, mw.env, mw.environ_key) == (
        "drsession:",
        "drsession",
        "drsession",
        "drsession",
    )
    response = Browser(mw).get()
    cookie = response.cookie("drsession")
    assert cookie is not None
    sid, attrs = cookie
    assert DRSESSION_ID.fullmatch(sid)
    assert attrs["path"] == "/"
    assert "httponly" in attrs
    assert int(attrs["max-age"]) == TEN_YEARS
    assert "expires" in attrs
    assert redis_client.keys("*") == [f"drsession:{sid}".encode()]


def test_ids_are_fresh_and_drsession_shaped(
    middleware: Callable[..., drsession.SessionMiddleware],
) -> None:
    def handler(s: drsession.Session) -> str:
        s["k"] = 1
        return "ok"

    mw = middleware(session_app(handler))
    ids = {Browser(mw).get().cookie("drsession")[0] for _ in range(20)}  # type: ignore[index]
    assert len(ids) == 20
    assert all(DRSESSION_ID.fullmatch(i) for i in ids)


def test_cookie_is_sent_only_once_the_session_is_written(
    middleware: Callable[..., drsession.SessionMiddleware], redis_client: redis.Redis
) -> None:
    def handler(s: drsession.Session) -> str:
        return str(s.get("k"))

    response = Browser(middleware(session_app(handler))).get()
    assert response.text == "None"
    assert response.set_cookies == []
    assert redis_client.keys("*") == []


def test_custom_prefix_cookie_and_env(
    middleware: Callable[..., drsession.SessionMiddleware], redis_client: redis.Redis
) -> None:
    def handler(s: drsession.Session) -> str:
        s["k"] = "v"
        return "ok"

    browser = Browser(
        middleware(
            session_app(handler, env="my.session"), prefix="app:s:", cookie="sid", env="my.session"
        )
    )
    assert browser.get().text == "ok"
    assert list(browser.cookies) == ["sid"]
    assert redis_client.hget(f"app:s:{browser.cookies['sid']}", "k") == b'"v"'


# ------------------------------------------------------------- choosing the Redis


def test_redis_server_is_used_directly(
    redis_server: EmbeddedRedis, redis_client: redis.Redis
) -> None:
    client = redis.Redis(**host_port(redis_server), db=1)
    mw = drsession.SessionMiddleware(
        session_app(lambda s: str(s.__setitem__("k", 1))),
        redis_server=client,
        redis_kwargs={"host": "nowhere.invalid"},  # ignored, as DRSession ignored it
    )
    assert mw.redis_server is client
    browser = Browser(mw)
    browser.get()
    assert client.hget(f"drsession:{browser.cookies['drsession']}", "k") == b"1"
    assert redis_client.keys("*") == []  # db 0 untouched
    client.close()


def test_redis_kwargs_are_used_and_not_mutated(redis_server: EmbeddedRedis, redis_url: str) -> None:
    kwargs = {**host_port(redis_server), "db": 2}
    before = dict(kwargs)
    mw = drsession.SessionMiddleware(
        session_app(lambda s: str(s.__setitem__("k", 1))), redis_kwargs=kwargs
    )
    browser = Browser(mw)
    browser.get()
    db2 = redis.Redis(**host_port(redis_server), db=2)
    assert db2.hget(f"drsession:{browser.cookies['drsession']}", "k") == b"1"
    db2.close()
    mw.store.close()
    # DRSession put its pool into the caller's dict, so a second middleware given the
    # same dict silently shared the first one's pool.
    pool = redis.ConnectionPool(**host_port(redis_server), db=3)
    with_pool = drsession.SessionMiddleware(
        session_app(lambda s: ""), redis_kwargs=kwargs, connection_pool=pool
    )
    assert with_pool.redis_server.connection_pool is pool
    with_pool_kwargs = drsession.SessionMiddleware(
        session_app(lambda s: ""), redis_kwargs=kwargs, connection_pool_kwargs={"db": 4}
    )
    assert kwargs == before
    assert with_pool_kwargs.redis_server.connection_pool is not pool
    pool.disconnect()
    with_pool_kwargs.store.close()


def test_redis_kwargs_decode_responses_is_refused_at_start_up(
    redis_server: EmbeddedRedis,
) -> None:
    # DRSession 1.2.0 crashed on its first read with such a client (str has no .decode);
    # we refuse it when the middleware is built, naming the setting.
    with pytest.raises(ConfigurationError) as info:
        drsession.SessionMiddleware(
            session_app(lambda s: "x"),
            redis_kwargs={**host_port(redis_server), "decode_responses": True},
        )
    assert info.value.setting == "redis"


def test_connection_pool_is_used(redis_server: EmbeddedRedis, redis_url: str) -> None:
    pool = redis.ConnectionPool(**host_port(redis_server), db=3)
    mw = drsession.SessionMiddleware(
        session_app(lambda s: str(s.__setitem__("k", 1))),
        connection_pool=pool,
        connection_pool_kwargs={"host": "nowhere.invalid"},  # a given pool wins
    )
    browser = Browser(mw)
    browser.get()
    assert mw.redis_server.connection_pool is pool
    db3 = redis.Redis(**host_port(redis_server), db=3)
    assert db3.hget(f"drsession:{browser.cookies['drsession']}", "k") == b"1"
    db3.close()
    pool.disconnect()


def test_connection_pool_kwargs_make_the_pool(redis_server: EmbeddedRedis, redis_url: str) -> None:
    pool_kwargs = {**host_port(redis_server), "db": 4}
    mw = drsession.SessionMiddleware(
        session_app(lambda s: str(s.__setitem__("k", 1))), connection_pool_kwargs=pool_kwargs
    )
    browser = Browser(mw)
    browser.get()
    assert mw.redis_server.connection_pool.connection_kwargs["db"] == 4
    db4 = redis.Redis(**host_port(redis_server), db=4)
    assert db4.hget(f"drsession:{browser.cookies['drsession']}", "k") == b"1"
    db4.close()
    mw.store.close()


def test_connection_pool_kwargs_none_uses_redis_kwargs(
    redis_server: EmbeddedRedis, redis_url: str
) -> None:
    mw = drsession.SessionMiddleware(
        session_app(lambda s: str(s.__setitem__("k", 1))),
        redis_kwargs={**host_port(redis_server), "db": 5},
        connection_pool_kwargs=None,
    )
    browser = Browser(mw)
    browser.get()
    db5 = redis.Redis(**host_port(redis_server), db=5)
    assert db5.hget(f"drsession:{browser.cookies['drsession']}", "k") == b"1"
    db5.close()
    mw.store.close()


def test_unreachable_redis_is_loud() -> None:
    mw = drsession.SessionMiddleware(
        session_app(lambda s: str(s.__setitem__("k", 1))),
        redis_kwargs={"host": "127.0.0.1", "port": free_port(), "socket_connect_timeout": 1},
    )
    with pytest.raises(BackendError):
        Browser(mw).get()
    mw.store.close()


# -------------------------------------------------------------- adoption and safe=True


def test_unknown_ids_are_adopted_by_default(
    middleware: Callable[..., drsession.SessionMiddleware], redis_client: redis.Redis
) -> None:
    def handler(s: drsession.Session) -> str:
        before = s.get("k")
        s["k"] = "v"
        return str(before)

    browser = Browser(middleware(session_app(handler)))
    browser.cookies["drsession"] = "chosen-by-the-client"
    assert browser.get().text == "None"
    assert redis_client.hget("drsession:chosen-by-the-client", "k") == b'"v"'
    assert browser.cookies["drsession"] == "chosen-by-the-client"
    assert redis_client.ttl("drsession:chosen-by-the-client") > 0


def test_safe_mode_never_adopts_a_forged_id(
    middleware: Callable[..., drsession.SessionMiddleware], redis_client: redis.Redis
) -> None:
    def handler(s: drsession.Session) -> str:
        s["k"] = "v"
        return "ok"

    forged = secrets.token_urlsafe(32)
    browser = Browser(middleware(session_app(handler), safe=True))
    browser.cookies["drsession"] = forged
    response = browser.get()
    fresh = browser.cookies["drsession"]
    assert fresh != forged and DRSESSION_ID.fullmatch(fresh)
    assert response.cookie("drsession") is not None
    assert redis_client.exists(f"drsession:{forged}") == 0
    assert redis_client.keys("*") == [f"drsession:{fresh}".encode()]


def test_safe_mode_still_reads_sessions_drsession_wrote(
    middleware: Callable[..., drsession.SessionMiddleware], redis_client: redis.Redis
) -> None:
    sid = secrets.token_urlsafe(32)
    redis_client.hset(f"drsession:{sid}", "user", json.dumps("ann"))
    browser = Browser(middleware(session_app(lambda s: s["user"]), safe=True))
    browser.cookies["drsession"] = sid
    assert browser.get().text == "ann"
    assert browser.cookies["drsession"] == sid


# ----------------------------------------------------------------- gen_session_id


def test_gen_session_id_makes_the_ids(
    middleware: Callable[..., drsession.SessionMiddleware], redis_client: redis.Redis
) -> None:
    made = iter(["custom-1", "custom-2"])

    def handler(s: drsession.Session) -> str:
        s["k"] = 1
        return "ok"

    mw = middleware(session_app(handler), gen_session_id=lambda: next(made))
    first, second = Browser(mw).get(), Browser(mw).get()
    assert first.cookie("drsession") is not None and second.cookie("drsession") is not None
    assert first.cookie("drsession")[0] == "custom-1"  # type: ignore[index]
    assert second.cookie("drsession")[0] == "custom-2"  # type: ignore[index]
    assert sorted(redis_client.keys("*")) == [b"drsession:custom-1", b"drsession:custom-2"]


def test_gen_session_id_must_make_cookie_safe_ids(
    middleware: Callable[..., drsession.SessionMiddleware], redis_client: redis.Redis
) -> None:
    mw = middleware(session_app(lambda s: str(s.__setitem__("k", 1))), gen_session_id=lambda: "a;b")
    with pytest.raises(ConfigurationError, match="gen_session_id"):
        Browser(mw).get()
    assert redis_client.keys("*") == []


# ---------------------------------------------------------------- configuration


def test_store_options_pass_through(
    middleware: Callable[..., drsession.SessionMiddleware], redis_client: redis.Redis
) -> None:
    browser = Browser(middleware(session_app(lambda s: str(s.__setitem__("k", 1))), ttl=3600))
    browser.get()
    assert 3500 < redis_client.ttl(f"drsession:{browser.cookies['drsession']}") <= 3600


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("redis", "redis://localhost"),
        ("codec", "pickle"),
        ("key_layout", "digest"),
        ("adopt_unknown_ids", False),
        ("id_factory", str),
    ],
)
def test_store_options_cannot_override_drsession_arguments(
    redis_client: redis.Redis, option: str, value: Any
) -> None:
    with pytest.raises(ConfigurationError) as info:
        drsession.SessionMiddleware(
            session_app(lambda s: ""), redis_server=redis_client, **{option: value}
        )
    assert info.value.setting == option


@pytest.mark.parametrize("argument", ["loads", "dumps", "gen_session_id"])
def test_non_callable_functions_are_refused(redis_client: redis.Redis, argument: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        drsession.SessionMiddleware(
            session_app(lambda s: ""), redis_server=redis_client, **{argument: "json"}
        )
    assert info.value.setting == argument


def test_public_names() -> None:
    assert sorted(drsession.__all__) == ["Session", "SessionMiddleware"]
    assert issubclass(drsession.Session, __import__("hashsession").Session)


def test_store_hands_out_compat_sessions(
    middleware: Callable[..., drsession.SessionMiddleware], redis_client: redis.Redis
) -> None:
    store = middleware(session_app(lambda s: "")).store
    redis_client.hset("drsession:abc", "k", json.dumps("v"))
    by_value = store.open_id("abc")
    assert isinstance(by_value, drsession.Session)
    assert by_value.has_key("k") and by_value.items() == [("k", "v")]
    by_header = store.open("other=1; drsession=abc")
    assert isinstance(by_header, drsession.Session) and by_header["k"] == "v"
    by_value.destroy()
    assert redis_client.exists("drsession:abc") == 0


# ------------------------------------------------------------------ streamed bodies


def test_streamed_body_follows_the_wsgi_middleware(
    middleware: Callable[..., drsession.SessionMiddleware], redis_client: redis.Redis
) -> None:
    """After start_response a brand-new visitor's session cannot be created (no cookie)."""

    def app(environ: Environ, start_response: Callable[..., Any]) -> Iterator[bytes]:
        session = environ["drsession"]
        if environ["PATH_INFO"] == "/seed":
            session["cart"] = "apple"
        start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"first "
        if environ["PATH_INFO"] == "/write":
            session["late"] = "yes"
        yield b"second"

    browser = Browser(middleware(app))
    with pytest.raises(HeadersSentError, match="writing 'late'"):
        browser.get("/write")
    assert redis_client.keys("drsession:*") == []
    browser.get("/seed")
    assert browser.get("/write").text == "first second"
    [key] = redis_client.keys("drsession:*")
    assert redis_client.hget(key, "late") == b'"yes"'
