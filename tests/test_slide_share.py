"""Sliding once per ``slide_share``: a plain session this process slid lately is read with
one ``HMGET`` and written with a ``PLAIN`` script, without sliding; anything that makes
it other than plain (a timeout or cookie lifetime of its own, set anywhere; a logout; a
revoke) sends the request back through the quick script, which slides and tells."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from hashsession import ConfigurationError, Session, SessionStore
from hashsession.aio import AsyncSessionStore
from hashsession.scripts import EVERY, PLAIN, QUICK

TTL = 100  # seconds; the cut with the default share (1/64) is 1.5625 s


@pytest.fixture
def warm(redis_client: redis.Redis) -> None:
    for script in EVERY:
        redis_client.script_load(script.source)


@pytest.fixture
def store(counted: Any, warm: None) -> Iterator[SessionStore]:
    s = SessionStore(redis=counted.client, ttl=TTL)
    yield s
    s.close()


def cookie_of(store: SessionStore, session: Session) -> str:
    cookies = [v for k, v in store.response_headers(session) if k == "Set-Cookie"]
    assert len(cookies) == 1
    return cookies[0].split(";", 1)[0]


@pytest.fixture
def cookie(store: SessionStore) -> str:
    s = store.open(None)
    s.update(a=1, n=5)
    return cookie_of(store, s)


def slid_once(store: SessionStore, cookie: str) -> Session:
    """A first request that slides (the quick script), so the store remembers it."""
    s = store.open(cookie)
    assert s["a"] == 1
    return s


@pytest.mark.parametrize("bad", [-0.1, 0.6, "1/64", True, None])
def test_bad_slide_share_is_named(redis_url: str, bad: object) -> None:
    with pytest.raises(ConfigurationError, match="slide_share"):
        SessionStore(redis=redis_url, slide_share=bad)


def test_the_first_request_slides_and_the_next_read_does_not(
    store: SessionStore, cookie: str, counted: Any, redis_client: redis.Redis
) -> None:
    key = slid_once(store, cookie).core.key
    assert counted.commands[-1] == "EVALSHA"
    redis_client.pexpire(key, 50_000)  # as if time had passed, within the share
    counted.reset()
    with counted.expect(1):
        s = store.open(cookie)
        assert s["a"] == 1
    assert counted.batches[0] == ["HMGET"]
    with counted.expect(1):
        assert "n" in s  # the session is live now: a plain HEXISTS
    assert counted.commands == ["HEXISTS"]
    assert redis_client.pttl(key) <= 50_000  # not slid
    assert s.core.state.value == "live" and s.core.lifetime_known and s.core.lifetime is None


def test_a_read_slides_again_once_the_share_has_passed(
    redis_url: str, counted: Any, warm: None, redis_client: redis.Redis
) -> None:
    store = SessionStore(redis=counted.client, ttl=2, slide_share=0.1)  # cut: 200 ms
    try:
        s = store.open(None)
        s["a"] = 1
        cookie = cookie_of(store, s)
        slid_once(store, cookie)
        counted.reset()
        store.open(cookie)["a"]
        assert counted.commands == ["HMGET"]
        time.sleep(0.25)
        counted.reset()
        store.open(cookie)["a"]
        assert counted.commands == ["EVALSHA"]  # slid again
        assert redis_client.pttl(s.core.key) > 1_900
    finally:
        store.close()


def test_slide_share_zero_slides_on_every_request(
    counted: Any, warm: None, redis_client: redis.Redis
) -> None:
    store = SessionStore(redis=counted.client, ttl=TTL, slide_share=0)
    try:
        s = store.open(None)
        s["a"] = 1
        cookie = cookie_of(store, s)
        for _ in range(3):
            redis_client.pexpire(s.core.key, 5_000)
            counted.reset()
            assert store.open(cookie)["a"] == 1
            assert counted.commands == ["EVALSHA"]
            assert redis_client.pttl(s.core.key) > 99_000
    finally:
        store.close()


@pytest.mark.parametrize("op", ["set", "incr", "delete"])
def test_first_writes_of_a_slid_session_are_plain_scripts(
    store: SessionStore, cookie: str, counted: Any, redis_client: redis.Redis, op: str
) -> None:
    key = slid_once(store, cookie).core.key
    redis_client.pexpire(key, 50_000)
    counted.reset()
    s = store.open(cookie)
    with counted.expect(1):
        if op == "set":
            s["a"] = 2
        elif op == "incr":
            assert s.incr("n") == 6
        else:
            del s["a"]
    assert counted.commands == ["EVALSHA"]
    assert redis_client.pttl(key) <= 50_000  # not slid: the PLAIN script, not QUICK's
    assert s.core.state.value == "live"
    after = {k.decode(): v for k, v in redis_client.hgetall(key).items()}
    if op == "set":
        assert after["a"] == b"2"
    elif op == "incr":
        assert after["n"] == b"6"
    else:
        assert "a" not in after


def test_plain_scripts_are_what_is_sent(
    store: SessionStore, cookie: str, redis_client: redis.Redis
) -> None:
    slid_once(store, cookie)
    redis_client.config_resetstat()
    s = store.open(cookie)
    s["a"] = 3
    s.incr("n")
    stats = redis_client.info("commandstats")
    assert stats["cmdstat_evalsha"]["calls"] == 2
    # the PLAIN set ran (HMGET + HSET), no slide: no PEXPIRE at all
    assert "cmdstat_pexpire" not in stats


def test_a_timeout_set_elsewhere_is_seen_at_once(
    store: SessionStore, cookie: str, counted: Any, redis_url: str, redis_client: redis.Redis
) -> None:
    key = slid_once(store, cookie).core.key
    other = SessionStore(redis=redis_url, ttl=TTL)  # another process
    try:
        o = other.open(cookie)
        o.touch(ttl=30)
        assert 25_000 < redis_client.pttl(key) <= 30_000
        redis_client.pexpire(key, 20_000)
        counted.reset()
        s = store.open(cookie)
        assert s["a"] == 1
        assert counted.commands == ["HMGET", "EVALSHA"]  # not plain any more: it slides
        assert 29_000 < redis_client.pttl(key) <= 30_000  # by its own timeout
        counted.reset()
        store.open(cookie)["a"]
        assert counted.commands == ["EVALSHA"]  # and is no longer taken as plain
    finally:
        other.close()


@pytest.mark.parametrize("write", [False, True])
def test_a_cookie_lifetime_set_elsewhere_is_seen_at_once(
    store: SessionStore, cookie: str, counted: Any, redis_url: str, write: bool
) -> None:
    slid_once(store, cookie)
    other = SessionStore(redis=redis_url, ttl=TTL)
    try:
        other.open(cookie).set_cookie_lifetime(3600)
        s = store.open(cookie)
        if write:
            s["a"] = 9
        else:
            s["a"]
        assert s.core.lifetime == 3600
    finally:
        other.close()


@pytest.mark.parametrize("how", ["invalidate", "revoke", "expire"])
@pytest.mark.parametrize("write", [False, True])
def test_a_session_ended_elsewhere_is_gone_for_a_slid_reader(
    store: SessionStore,
    cookie: str,
    redis_url: str,
    redis_client: redis.Redis,
    how: str,
    write: bool,
) -> None:
    s = slid_once(store, cookie)
    key = s.core.key
    other = SessionStore(redis=redis_url, ttl=TTL)
    try:
        if how == "invalidate":
            other.open(cookie).invalidate()
        elif how == "revoke":
            assert other.revoke(s.id or "")
        else:
            redis_client.delete(key)
    finally:
        other.close()
    s = store.open(cookie)
    if write:
        s["a"] = 2  # a new session, under a new id
        assert s.id is not None and s.core.key != key
        assert s.new
    else:
        assert s.get("a") is None
        assert s.new
    assert not redis_client.exists(key)


def test_owned_sessions_slide_on_every_request(
    redis_url: str, counted: Any, warm: None, redis_client: redis.Redis
) -> None:
    """An owner's last-seen time stays exact: owned sessions are never taken as plain."""
    store = SessionStore(redis=counted.client, ttl=TTL, user_key="k" * 32)
    try:
        s = store.open(None)
        s["a"] = 1
        s.login("alice")
        cookie = cookie_of(store, s)
        for _ in range(3):
            counted.reset()
            assert store.open(cookie)["a"] == 1
            assert counted.commands == ["EVALSHA"]
    finally:
        store.close()


def test_the_memory_is_bounded(store: SessionStore) -> None:
    from hashsession import protocol

    slid = store.config.slid
    for n in range(protocol._SLID_MAX + 10):
        slid[f"k{n}"] = 0
    s = store.open(None)
    s["a"] = 1
    cookie = cookie_of(store, s)
    slid_once(store, cookie)
    assert len(slid) <= protocol._SLID_MAX


async def test_asyncio_reads_a_slid_session_with_one_hmget(
    redis_url: str, warm: None, redis_client: redis.Redis
) -> None:
    store = AsyncSessionStore(redis=redis_url, ttl=TTL)
    try:
        s = store.open(None)
        await s.set("a", 1)
        cookie = next(v for k, v in store.response_headers(s) if k == "Set-Cookie")
        cookie = cookie.split(";", 1)[0]
        assert await store.open(cookie).get("a") == 1  # slides
        redis_client.config_resetstat()
        assert await store.open(cookie).get("a") == 1
        await store.open(cookie).set("a", 2)
        stats = redis_client.info("commandstats")
        assert stats["cmdstat_hmget"]["calls"] == 2  # the read, and the one in PLAIN set
        assert stats["cmdstat_evalsha"]["calls"] == 1  # PLAIN set
        assert "cmdstat_pexpire" not in stats
    finally:
        await store.aclose()


def test_scripts_named() -> None:
    assert set(QUICK) == {"get", "has", "set", "incr", "delete"}
    assert set(PLAIN) == {"set", "incr", "delete"}


def test_a_session_without_created_at_is_never_taken_as_plain(
    store: SessionStore, counted: Any, redis_client: redis.Redis
) -> None:
    """A hash another tool wrote (no ``\\x00c``) slides on each request, in one round trip:
    it is not remembered as slid, which would cost an HMGET and then the script."""
    s = store.open(None)
    s["a"] = 1
    key = s.core.key
    assert key is not None
    redis_client.hdel(key, "\x00c")
    cookie = cookie_of(store, s)
    for _ in range(3):
        counted.reset()
        assert store.open(cookie)["a"] == 1
        assert counted.commands == ["EVALSHA"]


def test_idle_timeout_bounds_hold(redis_url: str, redis_client: redis.Redis, warm: None) -> None:
    """Used steadily, a session never expires; left alone, it lives at least
    ``(1 - slide_share) * ttl`` after its last request and at most ``ttl``."""
    store = SessionStore(redis=redis_url, ttl=3, slide_share=0.25)  # cut: 750 ms
    try:
        s = store.open(None)
        s["a"] = 1
        key = s.core.key
        cookie = cookie_of(store, s)
        for _ in range(20):  # 2 s of requests, 100 ms apart: two cuts go by
            assert store.open(cookie)["a"] == 1
            assert redis_client.pttl(key) > 1_500  # slid less than a cut (+ a pause) ago
            time.sleep(0.1)
        last = time.monotonic()
        assert store.open(cookie)["a"] == 1
        time.sleep(max(0.0, last + 1.5 - time.monotonic()))
        assert redis_client.exists(key)  # (1 - 0.25) * 3 s = 2.25 s after it at least
        time.sleep(max(0.0, last + 3.3 - time.monotonic()))
        assert not redis_client.exists(key)  # never past ttl after the last slide
    finally:
        store.close()
