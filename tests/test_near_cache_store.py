"""The ``near_cache`` store setting against real servers (sync store, one server).

Round trips are counted at the client (the tracking link's commands included); changes
come from another process; the tracking link is killed with CLIENT KILL. No wall-clock
assertion: waits are bounded polls.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from counting import Counted
from hashsession import ConfigurationError, SessionStore
from hashsession.config import NearCacheSettings
from near_writer import Writer


@pytest.fixture
def near(counted: Counted) -> Iterator[SessionStore]:
    store = SessionStore(redis=counted.client, ttl=100, near_cache=True)
    try:
        yield store
    finally:
        store.close()


def new_session(store: SessionStore, **values: Any) -> str:
    session = store.open(None)
    session.update(values)
    return store.response_headers(session)[0][1].split(";")[0]


def read(store: SessionStore, cookie: str, key: str = "cart") -> Any:
    return store.open(cookie).get(key)


def test_a_read_only_request_on_a_warm_session_costs_no_round_trip(
    near: SessionStore, counted: Counted
) -> None:
    cookie = new_session(near, cart=[1], user="ann")
    session = near.open(cookie)  # warms the cache: OPEN_NEAR on the tracking link, HGETs
    assert session["cart"] == [1] and "user" in session and "nothing" not in session
    counted.reset()
    for _ in range(50):
        session = near.open(cookie)
        assert session["cart"] == [1]
        assert "user" in session and "nothing" not in session
        assert session.get("user") == "ann"
    assert counted.commands == []


def test_writes_through_this_process_are_seen_at_once(near: SessionStore, counted: Counted) -> None:
    cookie = new_session(near, cart=1)
    assert read(near, cookie) == 1
    for n in range(2, 40):
        session = near.open(cookie)
        session["cart"] = n
        assert session["cart"] == n
        assert read(near, cookie) == n
    session = near.open(cookie)
    session.invalidate()
    session = near.open(cookie)
    assert session.get("cart") is None
    assert session.new


@pytest.mark.parametrize("op", ["set", "logout"])
def test_a_change_in_another_process_is_seen_1_ms_after_its_ack(
    near: SessionStore, redis_url: str, op: str
) -> None:
    stale = 0
    with Writer(redis_url) as writer:
        for n in range(200):
            cookie = new_session(near, cart=-1)
            for _ in range(2):  # warm: the next read comes from memory
                assert read(near, cookie) == -1
            writer.change(op, cookie, n)  # acknowledged
            time.sleep(0.001)
            stale += read(near, cookie) != (n if op == "set" else None)
    assert stale == 0


def test_revoke_user_in_another_store_is_seen(counted: Counted, redis_url: str) -> None:
    key = "k" * 32
    near = SessionStore(redis=counted.client, ttl=100, near_cache=True, user_key=key)
    other = SessionStore(redis=redis_url, ttl=100, user_key=key)
    try:
        for _ in range(20):
            session = near.open(None)
            session["cart"] = 1
            session.login("ann")
            cookie = near.response_headers(session)[0][1].split(";")[0]
            assert read(near, cookie) == 1 and read(near, cookie) == 1
            assert other.revoke_user("ann") == 1
            assert read(near, cookie) is None
    finally:
        near.close()
        other.close()


def test_expiry_and_flushall_are_seen(near: SessionStore, redis_client: redis.Redis) -> None:
    cookie = new_session(near, cart=1)
    assert read(near, cookie) == 1 and read(near, cookie) == 1
    redis_client.flushall()
    time.sleep(0.001)  # the server writes the push a moment after the reply (docs)
    assert read(near, cookie) is None
    cookie = new_session(near, cart=2)
    assert read(near, cookie) == 2 and read(near, cookie) == 2
    for key in redis_client.scan_iter("hs:*"):
        redis_client.pexpire(key, 1)
    deadline = time.monotonic() + 10
    while redis_client.dbsize() and time.monotonic() < deadline:
        time.sleep(0.005)
    assert read(near, cookie) is None


def test_a_killed_tracking_link_turns_the_cache_off_until_it_is_back(
    near: SessionStore, redis_client: redis.Redis, counted: Counted
) -> None:
    cookie = new_session(near, cart=1)
    assert read(near, cookie) == 1 and read(near, cookie) == 1
    links = [c["id"] for c in redis_client.client_list() if "t" in c["flags"]]
    assert len(links) == 1
    redis_client.client_kill_filter(_id=links[0])
    redis_client.hset(next(redis_client.scan_iter("hs:*")), "cart", "2")  # missed by the link
    assert read(near, cookie) == 2  # off: served by Redis
    cache = near.near_cache
    assert cache is not None
    deadline = time.monotonic() + 10
    while not cache.on and time.monotonic() < deadline:
        time.sleep(0.01)
    assert cache.on
    assert read(near, cookie) == 2
    counted.reset()
    assert read(near, cookie) == 2
    assert counted.commands == []


def test_the_ttl_is_slid_once_per_refresh_share_and_the_session_lives_while_used(
    counted: Counted, redis_client: redis.Redis
) -> None:
    # idle 2 s, refreshed after a quarter (0.5 s): used for 5 s, it must stay alive, and
    # Redis must be asked at most twice per share (OPEN_NEAR slides, then an HMGET checks
    # the session again because the slide's own change comes back as an invalidation):
    # 5 s / 0.5 s = 10 shares.
    store = SessionStore(
        redis=counted.client, ttl=2, near_cache={"refresh_share": 0.25}, absolute_ttl=None
    )
    try:
        cookie = new_session(store, cart=1)
        assert read(store, cookie) == 1  # (OPEN_NEAR loaded on the server, if new)
        counted.reset()
        requests = 0
        end = time.monotonic() + 5
        while time.monotonic() < end:
            assert read(store, cookie) == 1
            requests += 1
            time.sleep(0.002)
        refreshes = len(counted.commands)
        assert set(counted.commands) <= {"EVALSHA", "HMGET"}
        assert 1 <= counted.commands.count("EVALSHA") <= 12
        assert refreshes <= 24 and refreshes < requests / 20
        key = next(redis_client.scan_iter("hs:*"))
        assert redis_client.pttl(key) > 2000 * 0.75 - 500  # slid within the last share
    finally:
        store.close()


def test_the_absolute_deadline_is_honoured(counted: Counted) -> None:
    store = SessionStore(redis=counted.client, ttl=10, absolute_ttl=1, near_cache=True)
    try:
        cookie = new_session(store, cart=1)
        assert read(store, cookie) == 1 and read(store, cookie) == 1
        deadline = time.monotonic() + 10
        while read(store, cookie) is not None and time.monotonic() < deadline:
            time.sleep(0.01)
        assert read(store, cookie) is None
    finally:
        store.close()


@pytest.mark.parametrize(
    "value",
    [1, "yes", {"max_sessions": 0}, {"refresh_share": 0.9}, {"nope": 1}],
)
def test_bad_settings_name_near_cache(redis_url: str, value: object) -> None:
    with pytest.raises(ConfigurationError, match="near_cache"):
        SessionStore(redis=redis_url, near_cache=value)


def test_settings(redis_url: str) -> None:
    store = SessionStore(redis=redis_url, near_cache=NearCacheSettings(max_sessions=5))
    try:
        assert store.near_cache is not None and store.near_cache.max_entries == 5
    finally:
        store.close()


def test_a_read_after_a_write_is_one_plain_hmget(near: SessionStore, counted: Counted) -> None:
    # A write drops the session from the cache (here at once, elsewhere by its push); the
    # next request's read, with no slide due, checks with one HMGET that the session
    # still lives and is plain instead of running OPEN_NEAR again.
    cookie = new_session(near, cart=0)
    for _ in range(2):  # OPEN_NEAR tells it alive and plain (once the creation's push is in)
        assert read(near, cookie) == 0
    session = near.open(cookie)
    assert session["cart"] == 0 and session.incr("cart") == 1  # (its script loaded)
    for n in range(2, 30):
        counted.reset()
        session = near.open(cookie)
        assert session["cart"] == n - 1
        assert session.incr("cart") == n
        assert counted.commands == ["HMGET", "EVALSHA"], n
    assert read(near, cookie) == 29


@pytest.mark.parametrize("change", ["own timeout", "cookie lifetime", "logout", "deadline"])
def test_a_session_no_longer_plain_goes_through_open_near(
    counted: Counted, redis_url: str, change: str
) -> None:
    absolute = 1 if change == "deadline" else 3600
    near = SessionStore(redis=counted.client, ttl=100, near_cache=True, absolute_ttl=absolute)
    other = SessionStore(redis=redis_url, ttl=100, absolute_ttl=absolute)
    try:
        cookie = new_session(near, cart=0)
        assert read(near, cookie) == 0 and read(near, cookie) == 0
        near.open(cookie)["cart"] = 1  # dropped from the cache; known plain
        elsewhere = other.open(cookie)
        if change == "own timeout":
            elsewhere.touch(30)
        elif change == "cookie lifetime":
            elsewhere.set_cookie_lifetime(3600)
        elif change == "logout":
            elsewhere.invalidate()
        else:
            time.sleep(1.1)  # past the absolute deadline
        time.sleep(0.001)
        counted.reset()
        gone = change in ("logout", "deadline")
        session = near.open(cookie)
        assert session.get("cart") == (None if gone else 1)
        assert session.new == gone  # a gone session is never served as live
        if change in ("own timeout", "cookie lifetime"):
            assert counted.commands == ["HMGET", "EVALSHA"]  # checked, then slid and told
            counted.reset()
            near.open(cookie)["cart"] = 5
            assert read(near, cookie) == 5
            assert "HMGET" not in counted.commands  # no longer taken for plain
    finally:
        near.close()
        other.close()
