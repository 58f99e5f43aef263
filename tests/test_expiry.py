"""Expiry by Redis: the idle TTL, its slide, the absolute lifetime, and no resurrection.

Age is simulated by rewriting the stored created-at field or the key's TTL
through a plain client instead of sleeping, except for a few milliseconds where
Redis itself has to expire a key.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
import redis

from hashsession import MISSING, Session, SessionStore
from hashsession.scripts import CREATED_FIELD, TTL_FIELD

pytestmark = pytest.mark.all_topologies

StoreFactory = Callable[..., SessionStore]


def cookie_of(store: SessionStore, session: Session) -> str:
    cookies = [v for k, v in store.response_headers(session) if k == "Set-Cookie"]
    assert len(cookies) == 1, store.response_headers(session)
    return cookies[0].split(";", 1)[0]


def now_ms(client: redis.Redis) -> int:
    secs, micros = client.time()
    return secs * 1000 + micros // 1000


def assert_every_key_has_a_ttl(client: redis.Redis) -> None:
    for key in client.scan_iter(count=1000):
        assert client.pttl(key) > 0, f"{key!r} has no TTL"


def create(store: SessionStore, **data: Any) -> tuple[str, str]:
    """A stored session holding ``data``: its cookie and its Redis key."""
    s = store.open(None)
    s.update(data or {"a": 1})
    assert s.core.key is not None
    return cookie_of(store, s), s.core.key


# --------------------------------------------------------------------------- TTL on writes


def _edit(s: Session) -> None:
    with s.edit("w", []) as w:
        w.append(1)


WRITES: dict[str, Callable[[Session], Any]] = {
    "setitem": lambda s: s.__setitem__("w", 1),
    "set": lambda s: s.set("w", [1]),
    "update": lambda s: s.update(w=1, v=2),
    "incr": lambda s: s.incr("w"),
    "incr_float": lambda s: s.incr_float("w", 0.5),
    "setdefault": lambda s: s.setdefault("w", 1),
    "cas": lambda s: s.compare_and_set({"w": MISSING}, {"w": 1}),
    "apply": lambda s: s.apply("w", lambda v: v + 1, 0),
    "edit": _edit,
    "touch_ttl": lambda s: (s.__setitem__("w", 1), s.touch(50)),
    "regenerate": lambda s: (s.__setitem__("w", 1), s.regenerate()),
}


@pytest.mark.parametrize("write", list(WRITES.values()), ids=list(WRITES))
def test_a_new_session_always_has_a_ttl(
    store: SessionStore, redis_client: redis.Redis, write: Callable[[Session], Any]
) -> None:
    s = store.open(None)
    write(s)
    if s.id is not None:
        assert 0 < redis_client.pttl(s.core.key) <= 100_000
    assert_every_key_has_a_ttl(redis_client)


@pytest.mark.parametrize("write", list(WRITES.values()), ids=list(WRITES))
def test_an_existing_session_keeps_a_ttl(
    store: SessionStore, redis_client: redis.Redis, write: Callable[[Session], Any]
) -> None:
    cookie, _ = create(store, a=1)
    s = store.open(cookie)
    write(s)
    write(s)
    assert redis_client.dbsize() == 1
    assert_every_key_has_a_ttl(redis_client)


def test_ttl_as_timedelta(make_store: StoreFactory, redis_client: redis.Redis) -> None:
    store = make_store(ttl=timedelta(minutes=2))
    _, key = create(store)
    assert 119_000 < redis_client.pttl(key) <= 120_000


def test_default_ttl_is_fourteen_days(redis_url: str, redis_client: redis.Redis) -> None:
    store = SessionStore(redis=redis_url)
    try:
        _, key = create(store)
    finally:
        store.close()
    assert 14 * 86_400_000 - 60_000 < redis_client.pttl(key) <= 14 * 86_400_000


# --------------------------------------------------------------------------- sliding


def test_idle_ttl_slides_on_the_first_command_of_a_later_request(
    make_store: StoreFactory, redis_client: redis.Redis
) -> None:
    store = make_store(ttl=5)
    cookie, key = create(store)
    assert 4_000 < redis_client.pttl(key) <= 5_000
    redis_client.pexpire(key, 1_000)  # as if 4 s had gone by
    s = store.open(cookie)
    assert redis_client.pttl(key) <= 1_000  # opening alone sends nothing
    assert s.get("a") == 1
    assert 4_000 < redis_client.pttl(key) <= 5_000


def test_untouched_request_does_not_slide(store: SessionStore, redis_client: redis.Redis) -> None:
    cookie, key = create(store)
    redis_client.pexpire(key, 3_000)
    s = store.open(cookie)
    assert store.response_headers(s) == []
    assert redis_client.pttl(key) <= 3_000


def test_slide_really_extends_life(make_store: StoreFactory, redis_client: redis.Redis) -> None:
    store = make_store(ttl=1)
    cookie, key = create(store)
    redis_client.pexpire(key, 300)
    assert store.open(cookie)["a"] == 1  # slides back to 1 s
    time.sleep(0.4)  # longer than the 300 ms the key had left
    assert store.open(cookie)["a"] == 1


def test_regenerate_as_first_command_slides_the_ttl(
    store: SessionStore, redis_client: redis.Redis
) -> None:
    """Promise 6: the idle TTL slides once per request, on its first command (login included)."""
    cookie, key = create(store)
    redis_client.pexpire(key, 2_000)
    s = store.open(cookie)
    s.regenerate()
    s["user"] = "ann"
    assert 90_000 < redis_client.pttl(s.core.key) <= 100_000


# --------------------------------------------------------------------------- absolute lifetime


def test_absolute_ttl_caps_the_ttl(make_store: StoreFactory, redis_client: redis.Redis) -> None:
    store = make_store(ttl=100, absolute_ttl=3)
    cookie, key = create(store)
    assert 0 < redis_client.pttl(key) <= 3_000
    s = store.open(cookie)
    s.touch()
    assert 0 < redis_client.pttl(key) <= 3_000
    s.touch(1_000)
    assert 0 < redis_client.pttl(key) <= 3_000
    assert store.open(cookie)["a"] == 1
    assert 0 < redis_client.pttl(key) <= 3_000


def test_absolute_ttl_counts_from_creation(
    make_store: StoreFactory, redis_client: redis.Redis
) -> None:
    store = make_store(ttl=100, absolute_ttl=10)
    cookie, key = create(store)
    redis_client.hset(key, CREATED_FIELD, now_ms(redis_client) - 8_000)  # 8 s old
    assert store.open(cookie)["a"] == 1
    assert 0 < redis_client.pttl(key) <= 2_000


@pytest.mark.parametrize(
    "first",
    [
        lambda s: s.get("a"),
        lambda s: s.__setitem__("b", 2),
        lambda s: s.incr("a"),
        lambda s: s.touch(),
        lambda s: s.touch(500),
        lambda s: len(s),
    ],
    ids=["get", "set", "incr", "touch", "touch_ttl", "len"],
)
def test_session_past_its_deadline_is_gone(
    make_store: StoreFactory, redis_client: redis.Redis, first: Callable[[Session], Any]
) -> None:
    store = make_store(ttl=100, absolute_ttl=10)
    cookie, key = create(store, old=1)
    redis_client.hset(key, CREATED_FIELD, now_ms(redis_client) - 11_000)  # 11 s old
    s = store.open(cookie)
    old_id = s.id
    first(s)
    assert redis_client.exists(key) == 0
    assert s.get("old") is None
    assert s.new is True
    s["after"] = 1
    assert s.id is not None and s.id != old_id
    assert redis_client.exists(key) == 0
    data = store.open(cookie_of(store, s)).to_dict()
    assert "old" not in data and data["after"] == 1
    assert store.open(cookie).get("after") is None


# --------------------------------------------------------------------------- per-session timeout


def test_touch_with_ttl_persists_for_later_requests(
    store: SessionStore, redis_client: redis.Redis
) -> None:
    cookie, key = create(store)
    s = store.open(cookie)
    s.touch(ttl=30)
    assert 29_000 < redis_client.pttl(key) <= 30_000
    redis_client.pexpire(key, 1_000)
    assert store.open(cookie)["a"] == 1  # a later request slides to the new timeout ...
    assert 29_000 < redis_client.pttl(key) <= 30_000  # ... not to the store's 100 s
    later = store.open(cookie)
    later["b"] = 2
    later.touch()
    assert 29_000 < redis_client.pttl(key) <= 30_000


def test_adjust_timeout_persists(store: SessionStore, redis_client: redis.Redis) -> None:
    cookie, key = create(store)
    store.open(cookie).adjust_timeout(timedelta(seconds=400))
    assert 399_000 < redis_client.pttl(key) <= 400_000
    redis_client.pexpire(key, 1_000)
    assert "a" in store.open(cookie)
    assert 399_000 < redis_client.pttl(key) <= 400_000
    assert redis_client.hexists(key, TTL_FIELD)
    assert len(store.open(cookie)) == 1  # the timeout is metadata, not a user key


def test_touch_with_ttl_on_a_new_session(store: SessionStore, redis_client: redis.Redis) -> None:
    s = store.open(None)
    s.touch(20)  # nothing stored yet: no round trip, but the timeout is remembered
    assert redis_client.dbsize() == 0
    s["a"] = 1
    assert 19_000 < redis_client.pttl(s.core.key) <= 20_000
    cookie = cookie_of(store, s)
    redis_client.pexpire(s.core.key, 500)
    assert store.open(cookie)["a"] == 1
    assert 19_000 < redis_client.pttl(s.core.key) <= 20_000


def test_touch_without_ttl_slides_to_the_default(
    store: SessionStore, redis_client: redis.Redis
) -> None:
    cookie, key = create(store)
    redis_client.pexpire(key, 1_000)
    store.open(cookie).touch()
    assert 99_000 < redis_client.pttl(key) <= 100_000
    assert not redis_client.hexists(key, TTL_FIELD)


def test_bad_touch_ttl_is_refused(store: SessionStore) -> None:
    cookie, _ = create(store)
    s = store.open(cookie)
    for bad in (0, -1, 0.0, "10", True):
        with pytest.raises((ValueError, TypeError)):
            s.touch(bad)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- no resurrection


def _expire_by_pexpire(client: redis.Redis, key: str) -> None:
    client.pexpire(key, 1)
    deadline = time.monotonic() + 2
    while client.exists(key) and time.monotonic() < deadline:
        time.sleep(0.005)
    assert client.exists(key) == 0


def _expire_by_del(client: redis.Redis, key: str) -> None:
    client.delete(key)


@pytest.mark.parametrize("expire", [_expire_by_del, _expire_by_pexpire], ids=["del", "pexpire"])
def test_expired_session_reads_empty(
    store: SessionStore, redis_client: redis.Redis, expire: Callable[[redis.Redis, str], None]
) -> None:
    cookie, key = create(store, a=1, b=2)
    expire(redis_client, key)
    s = store.open(cookie)
    assert s.get("a") is None
    assert s.to_dict() == {}
    assert len(s) == 0
    assert "a" not in s
    assert s.new is True
    assert s.id is None
    assert redis_client.dbsize() == 0
    headers = dict(store.response_headers(s))
    assert "Max-Age=0" in headers["Set-Cookie"]  # the dead cookie is dropped


@pytest.mark.parametrize("expire", [_expire_by_del, _expire_by_pexpire], ids=["del", "pexpire"])
@pytest.mark.parametrize("write", list(WRITES.values()), ids=list(WRITES))
def test_write_after_expiry_starts_a_new_session(
    store: SessionStore,
    redis_client: redis.Redis,
    expire: Callable[[redis.Redis, str], None],
    write: Callable[[Session], Any],
) -> None:
    cookie, key = create(store, a=1)
    old_id = store.open(cookie).id
    expire(redis_client, key)
    s = store.open(cookie)
    write(s)
    assert redis_client.exists(key) == 0, "the expired key must never come back"
    assert s.id is not None and s.id != old_id
    new_cookie = cookie_of(store, s)
    assert new_cookie != cookie
    fresh = store.open(new_cookie)
    assert "a" not in fresh
    assert "w" in fresh
    assert_every_key_has_a_ttl(redis_client)


@pytest.mark.parametrize("write", list(WRITES.values()), ids=list(WRITES))
def test_expiry_in_the_middle_of_a_request(
    store: SessionStore, redis_client: redis.Redis, write: Callable[[Session], Any]
) -> None:
    cookie, key = create(store, a=1)
    s = store.open(cookie)
    assert s["a"] == 1  # the session is live in this request ...
    old_id = s.id
    redis_client.delete(key)  # ... and then expires
    write(s)
    assert redis_client.exists(key) == 0
    assert s.id is not None and s.id != old_id
    assert cookie_of(store, s) != cookie
    assert_every_key_has_a_ttl(redis_client)


def test_expired_session_read_then_written_in_one_request(
    store: SessionStore, redis_client: redis.Redis
) -> None:
    cookie, key = create(store, a=1)
    redis_client.delete(key)
    s = store.open(cookie)
    assert s.get("a") is None
    s["b"] = 2
    new_cookie = cookie_of(store, s)
    assert new_cookie != cookie
    assert store.open(new_cookie).to_dict() == {"b": 2}
    assert store.open(cookie).get("b") is None
    assert redis_client.dbsize() == 1
