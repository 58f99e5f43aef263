"""Steps after the response headers went out (``core.headers_sent``), on both session flavours.

Once an adapter has committed the headers, no ``Set-Cookie`` can follow. A step that
would need one raises :class:`HeadersSentError` before any Redis command, so no key is
left that no cookie names and the session stays as it was; steps the browser's cookie
already covers keep working. Each adapter's own streaming tests are in its test file.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest
import redis

from conftest import StoreFactory
from hashsession import HeadersSentError, Session, SessionStore
from hashsession.aio import AsyncSessionStore


def cookie_header(store: SessionStore | AsyncSessionStore, session_id: str) -> str:
    return f"{store.cookie.cookie_name}={store.config.cookie_value(session_id)}"


def existing(store: SessionStore) -> tuple[str, str]:
    """A stored session: its request ``Cookie`` header and its Redis key."""
    session = store.open(None)
    session["cart"] = [1]
    assert session.id is not None and session.core.key is not None
    return cookie_header(store, session.id), session.core.key


def sent(session: Session) -> Session:
    session.core.headers_sent = True
    return session


def test_writes_to_an_existing_session_keep_working(
    store: SessionStore, redis_client: redis.Redis
) -> None:
    cookie, key = existing(store)
    session = sent(store.open(cookie))
    session["cart"] = [1, 2]  # the first command of the request: checks and slides too
    session["n"] = 1  # the live fast path
    assert session.incr("n") == 2
    session.update(a=1, b=2)
    assert session.pop("a") == 1
    del session["b"]
    session.touch(50)
    assert session.core.response_headers() == [("Vary", "Cookie")]  # no cookie needed
    assert redis_client.hget(key, "cart") == b"[1,2]"
    assert redis_client.hget(key, "n") == b"2"
    assert redis_client.dbsize() == 1


@pytest.mark.parametrize(
    ("operation", "named"),
    [
        (lambda s: s.__setitem__("cart", [1]), "writing 'cart'"),
        (lambda s: s.update(a=1), "writing 'a'"),
        (lambda s: s.incr("n"), "writing 'n'"),
        (lambda s: s.incr_float("f", 0.5), "writing 'f'"),
        (lambda s: s.setdefault("k", 1), "writing 'k'"),
        (lambda s: s.compare_and_set({}, {"k": 1}), "writing 'k'"),
        (lambda s: s.meta_push("flash:", "hi"), "writing metadata 'flash:'"),
        (lambda s: s.meta_set("csrf", "t"), "writing metadata 'csrf'"),
        (lambda s: s.regenerate(), "regenerate()"),
        (lambda s: s.login("ann"), "login()"),
    ],
)
def test_creating_a_session_raises_and_writes_nothing(
    store: SessionStore, redis_client: redis.Redis, operation: object, named: str
) -> None:
    session = sent(store.open(None))
    with pytest.raises(HeadersSentError, match="after the response headers were sent") as err:
        operation(session)  # type: ignore[operator]
    assert err.value.operation == named
    assert isinstance(err.value, RuntimeError)
    assert redis_client.dbsize() == 0
    assert session.id is None
    assert session.core.set_cookie_header() is None


def test_regenerate_and_login_raise_and_leave_the_session_as_it_was(
    store: SessionStore, redis_client: redis.Redis
) -> None:
    cookie, key = existing(store)
    session = sent(store.open(cookie))
    before = session.id
    with pytest.raises(HeadersSentError, match=r"^regenerate\(\) after .*the new id needs"):
        session.regenerate()
    with pytest.raises(HeadersSentError, match=r"^login\(\) after"):
        session.login("ann")
    assert session.id == before
    assert redis_client.keys() == [key.encode()]
    assert store.open(cookie)["cart"] == [1]  # still reachable by the browser's cookie
    session["more"] = True  # and still writable in this request
    assert redis_client.hget(key, "more") == b"true"


def test_a_session_gone_meanwhile_is_not_recreated(
    store: SessionStore, redis_client: redis.Redis
) -> None:
    cookie, key = existing(store)
    session = store.open(cookie)
    assert session["cart"] == [1]  # LIVE in this request
    sent(session)
    redis_client.delete(key)  # a logout in another tab
    with pytest.raises(HeadersSentError):
        session["cart"] = [2]  # would need a new id, hence a cookie
    assert redis_client.dbsize() == 0


def test_session_created_before_the_headers_is_fine(
    store: SessionStore, redis_client: redis.Redis
) -> None:
    session = store.open(None)
    session["a"] = 1
    headers = session.core.response_headers()  # what the adapter sends: the new cookie
    assert any(name == "Set-Cookie" for name, _ in headers)
    sent(session)
    session["b"] = 2
    assert session.incr("a") == 2
    assert redis_client.dbsize() == 1
    with pytest.raises(HeadersSentError):
        session.regenerate()


def test_invalidate_after_the_headers_logs_out_and_warns(
    store: SessionStore, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    cookie, _ = existing(store)
    session = sent(store.open(cookie))
    with caplog.at_level(logging.WARNING, logger="hashsession"):
        session.invalidate()
    assert redis_client.dbsize() == 0  # logged out server-side
    assert any("invalidated after the response headers were sent" in m for m in caplog.messages)
    assert store.open(cookie).get("cart") is None  # the browser's cookie names nothing now
    with pytest.raises(HeadersSentError):
        session["x"] = 1  # a new session would need a cookie
    assert redis_client.dbsize() == 0


def test_invalidating_a_session_never_stored_is_quiet(
    store: SessionStore, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="hashsession"):
        sent(store.open(None)).invalidate()
    assert caplog.messages == []


def test_an_adopted_id_may_still_be_created(
    make_store: StoreFactory, redis_client: redis.Redis
) -> None:
    """Under ``adopt_unknown_ids`` the browser already holds the id the session is created as."""
    store = make_store(adopt_unknown_ids=True)
    session_id = store.config.new_id()
    session = sent(store.open(cookie_header(store, session_id)))
    session["a"] = 1
    assert session.id == session_id
    assert redis_client.hget(store.config.key_of(session_id), "a") == b"1"


@pytest.fixture
async def astore(redis_url: str) -> AsyncIterator[AsyncSessionStore]:
    store = AsyncSessionStore(redis=redis_url, ttl=100)
    yield store
    await store.aclose()


async def test_async_session_follows_the_same_rules(
    astore: AsyncSessionStore, redis_client: redis.Redis
) -> None:
    fresh = astore.open(None)
    fresh.core.headers_sent = True
    with pytest.raises(HeadersSentError):
        await fresh.set("a", 1)
    with pytest.raises(HeadersSentError):
        await fresh.incr("n")
    assert redis_client.dbsize() == 0

    made = astore.open(None)
    await made.set("a", 1)
    assert made.id is not None
    stored = astore.open(cookie_header(astore, made.id))
    stored.core.headers_sent = True
    await stored.set("b", 2)
    assert await stored.incr("a") == 2
    with pytest.raises(HeadersSentError):
        await stored.regenerate()
    with pytest.raises(HeadersSentError):
        await stored.login("ann")
    assert stored.id == made.id
    assert redis_client.dbsize() == 1
    await stored.invalidate()
    assert redis_client.dbsize() == 0
