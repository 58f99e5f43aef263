"""Odd input through each adapter's own session class (issue 13, defect 4).

Each adapter's iteration and listings skip a field name another client wrote that is
not UTF-8 (logging a warning), and its own metadata, planted with junk, raises
``DecodeError`` naming it. Django's engine is covered in ``test_django.py`` (it
configures Django for the whole process); Tornado's ``self.session`` is the
``AsyncSession`` itself, covered in ``test_odd_input.py``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from flask import Flask, session

from hashsession import DecodeError, EncodeError, InvalidKeyError, Session, SessionStore
from hashsession.compat import bottle_session, drsession
from hashsession.compat.pyramid_redis_sessions import RedisSession
from hashsession.compat.redis_session import RedisSession as RedisSessionCompat
from hashsession.compat.redis_session import Value
from hashsession.flask import HashSession
from hashsession.pyramid import PyramidSession

BAD_NAME = b"\xff\xfe"


def planted(client: redis.Redis, key: str | None) -> None:
    assert key is not None
    client.hset(key, BAD_NAME, b"1")


def warned(caplog: pytest.LogCaptureFixture) -> bool:
    return any(
        r.name == "hashsession" and r.levelno == logging.WARNING and repr(BAD_NAME) in r.message
        for r in caplog.records
    )


@pytest.fixture(autouse=True)
def _warnings(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, "hashsession")


# --------------------------------------------------------------------------- Flask


@pytest.fixture
def flask_app(redis_url: str) -> Iterator[Flask]:
    app = Flask(__name__)
    app.config.update(SECRET_KEY="odd", HASHSESSION_REDIS=redis_url, TESTING=True)
    HashSession(app)

    @app.get("/make")
    def make() -> str:
        session.update(a=1, b="two")
        return str(session.core.key)  # type: ignore[attr-defined]

    @app.get("/all")
    def everything() -> dict[str, Any]:
        listed = sorted(session)
        assert sorted(session.keys()) == listed
        assert len(session) == len(listed)
        assert dict(session.items()) == dict(session)
        return {"keys": listed, "dict": dict(session)}

    @app.get("/permanent")
    def permanent() -> str:
        return str(session.permanent)

    yield app
    app.extensions["hashsession"].store.close()


def test_flask_listings_skip_unreadable_names(
    flask_app: Flask, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    client = flask_app.test_client()
    planted(redis_client, client.get("/make").text)
    reply = client.get("/all").json
    assert reply == {"keys": ["a", "b"], "dict": {"a": 1, "b": "two"}}
    assert warned(caplog)


def test_flask_junk_permanent_flag_is_a_decode_error(
    flask_app: Flask, redis_client: redis.Redis
) -> None:
    client = flask_app.test_client()
    key = client.get("/make").text
    assert client.get("/permanent").text == "False"
    redis_client.hset(key, "\x00k", b"{junk")
    with pytest.raises(DecodeError) as info:  # TESTING propagates what the view raised
        client.get("/permanent")
    assert info.value.key == "k"


# --------------------------------------------------------------------------- Pyramid


def pyramid_session(
    store: SessionStore, cookie: str | None, cls: type[PyramidSession] = PyramidSession
) -> PyramidSession:
    return cls(store.core_for(cookie), store.client)


def cookie_of(store: SessionStore, s: Session) -> str:
    return next(v for k, v in store.response_headers(s) if k == "Set-Cookie").split(";")[0]


@pytest.mark.parametrize("cls", [PyramidSession, RedisSession])
def test_pyramid_iteration_skips_unreadable_names(
    store: SessionStore,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    cls: type[PyramidSession],
) -> None:
    s = pyramid_session(store, None, cls)
    s.update(a=1, b="two")
    cookie = cookie_of(store, s)
    planted(redis_client, s.core.key)
    t = pyramid_session(store, cookie, cls)
    assert sorted(t) == ["a", "b"]
    assert dict(t) == {"a": 1, "b": "two"}
    assert sorted(t.items()) == [("a", 1), ("b", "two")]
    assert len(t) == 2
    if isinstance(t, RedisSession):
        assert sorted(t.iterkeys()) == ["a", "b"]
        assert sorted(t.iteritems()) == [("a", 1), ("b", "two")]
        assert sorted(t.itervalues(), key=repr) == ["two", 1]
    assert sorted([t.popitem(), t.popitem()]) == [("a", 1), ("b", "two")]
    with pytest.raises(KeyError):
        t.popitem()  # only the unreadable field is left, and nothing can name it
    assert warned(caplog)


def test_pyramid_flash_and_csrf_with_odd_input(
    store: SessionStore, redis_client: redis.Redis
) -> None:
    s = pyramid_session(store, None)
    s.flash("hello")
    cookie = cookie_of(store, s)
    redis_client.hset(str(s.core.key), "\x00flash:", b"{junk")
    t = pyramid_session(store, cookie)
    with pytest.raises(DecodeError) as info:
        t.peek_flash()
    assert info.value.key == "flash:"
    with pytest.raises(DecodeError):
        t.pop_flash()
    assert t.pop_flash() == []  # the junk went with the failed pop; the queue works again
    with pytest.raises(EncodeError):
        t.flash(math.nan)
    with pytest.raises(EncodeError):
        t.flash("\udcff")
    with pytest.raises(InvalidKeyError):
        t.flash("x", queue=b"q")  # type: ignore[arg-type]
    with pytest.raises(InvalidKeyError):
        t.peek_flash("\ud800")
    redis_client.hset(str(s.core.key), "\x00csrf", b"\xff")
    with pytest.raises(DecodeError) as info:
        pyramid_session(store, cookie).get_csrf_token()
    assert info.value.key == "csrf"


# --------------------------------------------------------------------------- Bottle, DRSession


def test_bottle_session_iteration_skips_unreadable_names(
    redis_url: str, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    plugin = bottle_session.SessionPlugin()
    plugin.connection_pool = redis.ConnectionPool.from_url(redis_url)
    store = plugin.default_store()
    try:
        s = store.open(None)
        s.update(a="1", b="two")
        planted(redis_client, s.core.key)
        t = store.open(cookie_of(store, s))
        assert isinstance(t, bottle_session.Session)
        assert sorted(t) == [("a", "1"), ("b", "two")]  # bottle-session iterates pairs
        assert sorted(t.keys()) == ["a", "b"]
        assert sorted(t.values()) == ["1", "two"]
        assert len(t) == 2
        redis_client.hset(str(s.core.key), "c", b"\xff")  # a value that is not text
        with pytest.raises(DecodeError) as info:
            t["c"]
        assert info.value.key == "c"
        with pytest.raises(EncodeError):
            t["d"] = "\udcff"
    finally:
        store.close()
        plugin.connection_pool.disconnect()
    assert warned(caplog)


def test_drsession_lists_skip_unreadable_names(
    redis_url: str, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    client = redis.Redis.from_url(redis_url)
    middleware = drsession.SessionMiddleware(lambda e, s: [], redis_server=client, safe=True)
    store = middleware.store
    s = store.open(None)
    s.update(a=1, b="two")
    planted(redis_client, s.core.key)
    t = store.open(cookie_of(store, s))
    assert isinstance(t, drsession.Session)
    assert sorted(t.keys()) == ["a", "b"]
    assert sorted(t.items()) == [("a", 1), ("b", "two")]
    assert sorted(t.values(), key=repr) == ["two", 1]
    assert dict(t) == {"a": 1, "b": "two"}
    assert warned(caplog)
    assert all(str(s.id) not in r.message for r in caplog.records)  # raw keys hold the id
    client.close()


# --------------------------------------------------------------------------- redis-session


def test_redis_session_load_and_text_readers(
    store: SessionStore, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    s = store.open(None)
    s.update(a=1)
    planted(redis_client, s.core.key)
    wrapped = RedisSessionCompat(store.open(cookie_of(store, s)))
    assert wrapped.load() == {"a": 1}
    assert warned(caplog)
    value = Value(b"\xff", "k")
    with pytest.raises(DecodeError) as info:
        _ = value.str
    assert info.value.key == "k"
    assert value.bool is False
    assert value.int == 0
    assert value.json == {}
