"""Odd input never escapes as a raw exception: issue 13, defects 4 and 5, and their class.

Lone surrogates, non-UTF-8 field names planted by another client, junk in reserved
fields, numbers Redis or JSON cannot hold: each either raises the documented error
naming the key (``InvalidKeyError``, ``EncodeError``, ``DecodeError``,
``ValueTypeError``, ``LimitExceededError``) or, in a listing, is skipped with a
warning on the ``hashsession`` logger. The fuzz tests at the end throw generated odd
input at every public operation, sync and asyncio, against real servers.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hashsession import (
    MISSING,
    BackendError,
    ConfigurationError,
    DecodeError,
    EncodeError,
    HashSessionError,
    InvalidKeyError,
    LimitExceededError,
    Session,
    SessionStore,
    ValueTypeError,
)
from hashsession.aio import AsyncSession, AsyncSessionStore
from hashsession.values import Counter, FloatCounter

pytestmark = pytest.mark.all_topologies

StoreFactory = Callable[..., SessionStore]
SURROGATES = ["\ud800", "\udcff", "a\udfffb"]
BAD_NAME = b"\xff\xfe"  # a field name that is not UTF-8


def cookie_of(store: SessionStore | AsyncSessionStore, session: Any) -> str:
    cookies = [v for k, v in store.response_headers(session) if k == "Set-Cookie"]
    assert len(cookies) == 1, store.response_headers(session)
    return cookies[0].split(";", 1)[0]


def user_fields(client: redis.Redis, key: str) -> dict[bytes, bytes]:
    return {k: v for k, v in client.hgetall(key).items() if not k.startswith(b"\x00")}


@pytest.fixture
def existing(store: SessionStore) -> str:
    s = store.open(None)
    s.update(n=1, name="ann")
    return cookie_of(store, s)


def opened(store: SessionStore, cookie: str, state: str) -> Session:
    """A session that is new, pending (not checked yet) or live (checked in this request)."""
    if state == "new":
        return store.open(None)
    s = store.open(cookie)
    if state == "live":
        assert s.get("n") == 1
    return s


STATES = ["new", "pending", "live"]

# --------------------------------------------------------------------------- lone surrogates

KEY_OPS: dict[str, Callable[[Session, Any], Any]] = {
    "getitem": lambda s, k: s[k],
    "get": lambda s, k: s.get(k),
    "contains": lambda s, k: k in s,
    "setitem": lambda s, k: s.__setitem__(k, 1),
    "set": lambda s, k: s.set(k, 1),
    "delitem": lambda s, k: s.__delitem__(k),
    "delete": lambda s, k: s.delete(k),
    "update": lambda s, k: s.update({"fine": 1, k: 1}),
    "incr": lambda s, k: s.incr(k),
    "incr_float": lambda s, k: s.incr_float(k, 1.0),
    "setdefault": lambda s, k: s.setdefault(k, 1),
    "pop": lambda s, k: s.pop(k, None),
    "get_many": lambda s, k: s.get_many("n", k),
    "cas_expected": lambda s, k: s.compare_and_set({k: MISSING}, {"fine": 1}),
    "cas_changes": lambda s, k: s.compare_and_set({}, {k: 1}),
    "apply": lambda s, k: s.apply(k, lambda v: 1, 0),
    "edit": lambda s, k: s.edit(k, []).__enter__(),
}


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("op", list(KEY_OPS.values()), ids=list(KEY_OPS))
def test_a_lone_surrogate_key_is_an_invalid_key(
    store: SessionStore,
    existing: str,
    redis_client: redis.Redis,
    op: Callable[..., Any],
    state: str,
) -> None:
    key = store.open(existing).core.key
    before = user_fields(redis_client, key)
    for bad in SURROGATES:
        s = opened(store, existing, state)
        with pytest.raises(InvalidKeyError) as info:
            op(s, bad)
        assert info.value.key == bad
        assert "surrogate" in str(info.value)
        assert s.get("n", 1) == 1  # the session (and its connection) still works
    assert user_fields(redis_client, key) == before
    assert redis_client.dbsize() == 1


VALUE_OPS: dict[str, Callable[[Session, Any], Any]] = {
    "setitem": lambda s, v: s.__setitem__("k", v),
    "set": lambda s, v: s.set("k", v),
    "update": lambda s, v: s.update({"fine": 1, "k": v}),
    "setdefault": lambda s, v: s.setdefault("k", v),
    "cas_changes": lambda s, v: s.compare_and_set({}, {"k": v}),
    "cas_expected": lambda s, v: s.compare_and_set({"k": v}, {"fine": 1}),
    "apply": lambda s, v: s.apply("k", lambda _: v, 0),
}


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("op", list(VALUE_OPS.values()), ids=list(VALUE_OPS))
def test_a_lone_surrogate_value_is_an_encode_error(
    store: SessionStore,
    existing: str,
    redis_client: redis.Redis,
    op: Callable[..., Any],
    state: str,
) -> None:
    key = store.open(existing).core.key
    before = user_fields(redis_client, key)
    for bad in ("\udcff", ["ok", {"x": "a\ud800"}], {"\ud800": 1}):
        s = opened(store, existing, state)
        with pytest.raises(EncodeError) as info:
            op(s, bad)
        assert info.value.key == "k"
        assert s.get("n", 1) == 1
    assert user_fields(redis_client, key) == before
    assert redis_client.dbsize() == 1


async def test_async_lone_surrogates(redis_url: str, redis_client: redis.Redis) -> None:
    store = AsyncSessionStore(redis=redis_url, ttl=100)
    try:
        s = store.open(None)
        await s.update(n=1)
        cookie = cookie_of(store, s)
        ops: list[Callable[[AsyncSession, str], Awaitable[Any]]] = [
            lambda s, k: s.get(k),
            lambda s, k: s.has(k),
            lambda s, k: s.set(k, 1),
            lambda s, k: s.delete(k),
            lambda s, k: s.update({k: 1}),
            lambda s, k: s.incr(k),
            lambda s, k: s.incr_float(k, 1),
            lambda s, k: s.setdefault(k, 1),
            lambda s, k: s.pop(k, None),
            lambda s, k: s.get_many(k),
            lambda s, k: s.compare_and_set({k: 1}, {}),
            lambda s, k: s.apply(k, lambda v: v, 0),
        ]
        for op in ops:
            for state in STATES:
                t = store.open(None if state == "new" else cookie)
                if state == "live":
                    await t.get("n")
                with pytest.raises(InvalidKeyError) as info:
                    await op(t, "\ud800")
                assert info.value.key == "\ud800"
                with pytest.raises(EncodeError) as enc:
                    await t.set("k", "\udcff")
                assert enc.value.key == "k"
                with pytest.raises(EncodeError):
                    await t.update({"k": ["\udcff"]})
                assert await t.get("n", 1) == 1
        assert user_fields(redis_client, s.core.key) == {b"n": b"1"}
    finally:
        await store.aclose()


# --------------------------------------------------------------------------- unreadable field names


def plant_bad_name(store: SessionStore, redis_client: redis.Redis, cookie: str) -> str:
    key = store.open(cookie).core.key
    assert key is not None
    redis_client.hset(key, BAD_NAME, b"1")
    redis_client.hset(key, b"\xed\xa0\x80", b"2")  # an encoded surrogate: not UTF-8 either
    return key


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "hashsession" and r.levelno == logging.WARNING
    ]


LISTINGS: dict[str, Callable[[Session], Any]] = {
    "iter": lambda s: sorted(s),
    "dict": lambda s: dict(s),
    "to_dict": lambda s: s.to_dict(),
    "keys": lambda s: sorted(s.keys()),
    "items": lambda s: sorted(s.items()),
    "values": lambda s: sorted(s.values(), key=repr),
    "len": len,
}
EXPECTED: dict[str, Any] = {
    "iter": ["n", "name"],
    "dict": {"n": 1, "name": "ann"},
    "to_dict": {"n": 1, "name": "ann"},
    "keys": ["n", "name"],
    "items": [("n", 1), ("name", "ann")],
    "values": ["ann", 1],
    "len": 2,
}


@pytest.mark.parametrize("state", ["pending", "live"])
@pytest.mark.parametrize("listing", list(LISTINGS))
def test_a_field_name_that_is_not_utf8_is_skipped_with_a_warning(
    store: SessionStore,
    existing: str,
    redis_client: redis.Redis,
    caplog: pytest.LogCaptureFixture,
    listing: str,
    state: str,
) -> None:
    key = plant_bad_name(store, redis_client, existing)
    s = opened(store, existing, state)
    caplog.set_level(logging.WARNING, "hashsession")
    assert LISTINGS[listing](s) == EXPECTED[listing]
    if listing != "len":  # len() counts in Redis, without the names
        logged = warnings_of(caplog)
        assert any(repr(BAD_NAME) in line for line in logged), logged
        assert any(key in line for line in logged)  # a digest key names the session safely
        session_id = s.id
        assert session_id is not None
        assert all(session_id not in line for line in logged)
    assert redis_client.hget(key, BAD_NAME) == b"1"  # skipped, not deleted
    s.clear()  # clear() removes what nothing else can name
    assert redis_client.hget(key, BAD_NAME) is None
    assert len(s) == 0


@pytest.mark.standalone_only
def test_the_warning_never_shows_a_raw_layout_key(
    make_store: StoreFactory, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    store = make_store(key_layout="raw", prefix="raw:")
    s = store.open(None)
    s["a"] = 1
    key = s.core.key
    assert key is not None and s.id is not None and s.id in key  # the key holds the id
    redis_client.hset(key, BAD_NAME, b"1")
    caplog.set_level(logging.WARNING, "hashsession")
    assert list(store.open(cookie_of(store, s))) == ["a"]
    logged = warnings_of(caplog)
    assert logged and all(s.id not in line for line in logged), logged


async def test_async_listings_skip_unreadable_names(
    redis_url: str, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    store = AsyncSessionStore(redis=redis_url, ttl=100)
    try:
        s = store.open(None)
        await s.update(n=1, name="ann")
        cookie = cookie_of(store, s)
        assert s.core.key is not None
        redis_client.hset(s.core.key, BAD_NAME, b"1")
        caplog.set_level(logging.WARNING, "hashsession")
        for live in (False, True):
            t = store.open(cookie)
            if live:
                await t.get("n")
            assert sorted(await t.keys()) == ["n", "name"]
            assert await t.to_dict() == {"n": 1, "name": "ann"}
            assert sorted(await t.items()) == [("n", 1), ("name", "ann")]
            assert sorted(await t.values(), key=repr) == ["ann", 1]
            assert await t.length() == 2
        assert any(repr(BAD_NAME) in line for line in warnings_of(caplog))
    finally:
        await store.aclose()


# --------------------------------------------------------------------------- metadata


@pytest.mark.parametrize(
    "junk",
    [b"{junk", b"\xff\xfe", b"NaN-ish", b"", b"[" * 100_000],
    ids=["json", "utf8", "nan", "empty", "deep"],
)
def test_malformed_metadata_is_a_decode_error_naming_it(
    store: SessionStore, existing: str, redis_client: redis.Redis, junk: bytes
) -> None:
    key = store.open(existing).core.key
    redis_client.hset(key, "\x00app.flag", junk)
    for state in ("pending", "live"):
        s = opened(store, existing, state)
        with pytest.raises(DecodeError) as info:
            s.meta_get("app.flag")
        assert info.value.key == "app.flag"
        assert "app.flag" in str(info.value)
        with pytest.raises(DecodeError) as info:
            s.meta_setdefault("app.flag", 1)
        assert info.value.key == "app.flag"
    s = store.open(existing)
    s.meta_set("app.flag", True)  # a write repairs it
    assert s.meta_get("app.flag") is True


def test_odd_metadata_names_and_values(store: SessionStore, existing: str) -> None:
    calls: list[Callable[[Session, Any], Any]] = [
        lambda s, n: s.meta_get(n),
        lambda s, n: s.meta_set(n, 1),
        lambda s, n: s.meta_setdefault(n, 1),
        lambda s, n: s.meta_pop(n),
        lambda s, n: s.meta_push(n, 1),
    ]
    for state in STATES:
        for call in calls:
            for bad in (b"name", 1, None, "\ud800", ("t",)):
                s = opened(store, existing, state)
                with pytest.raises(InvalidKeyError) as info:
                    call(s, bad)
                assert info.value.key == bad
        s = opened(store, existing, state)
        for value in (math.nan, math.inf, "\udcff", object(), {1, 2}):
            with pytest.raises(EncodeError) as enc:
                s.meta_set("m", value)
            assert enc.value.key == "m"
            with pytest.raises(EncodeError):
                s.meta_push("q", value)
            with pytest.raises(EncodeError):
                s.meta_setdefault("m", value)
    assert store.open(existing).meta_get("m") is None


@pytest.mark.parametrize("core_name", ["c", "t", "u", "s", "i"])
def test_metadata_writes_cannot_touch_the_cores_own_fields(
    store: SessionStore, existing: str, redis_client: redis.Redis, core_name: str
) -> None:
    key = store.open(existing).core.key
    before = redis_client.hgetall(key)
    s = store.open(existing)
    for write in (
        lambda: s.meta_set(core_name, "junk"),
        lambda: s.meta_setdefault(core_name, "junk"),
        lambda: s.meta_pop(core_name),
        lambda: s.meta_push(core_name, "junk"),
    ):
        with pytest.raises(InvalidKeyError) as info:
            write()
        assert info.value.key == core_name
    assert redis_client.hgetall(key) == before
    assert s.get("n") == 1


async def test_async_metadata(redis_url: str, redis_client: redis.Redis) -> None:
    store = AsyncSessionStore(redis=redis_url, ttl=100)
    try:
        s = store.open(None)
        await s.set("n", 1)
        assert s.core.key is not None
        redis_client.hset(s.core.key, "\x00app.flag", b"{junk")
        t = store.open(cookie_of(store, s))
        with pytest.raises(DecodeError) as info:
            await t.meta_get("app.flag")
        assert info.value.key == "app.flag"
        with pytest.raises(InvalidKeyError):
            await t.meta_set(b"x", 1)  # type: ignore[arg-type]
        with pytest.raises(InvalidKeyError):
            await t.meta_get("\ud800")
        with pytest.raises(InvalidKeyError):
            await t.meta_set("t", 1)
        with pytest.raises(EncodeError):
            await t.meta_set("m", math.nan)
        with pytest.raises(EncodeError):
            await t.meta_push("q", "\udcff")
    finally:
        await store.aclose()


# --------------------------------------------------------------------------- numbers

I64_MAX = 2**63 - 1


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize(
    "amount", [math.inf, -math.inf, math.nan, 10**400], ids=["inf", "-inf", "nan", "10**400"]
)
def test_incr_float_refuses_amounts_that_are_not_finite(
    store: SessionStore, existing: str, redis_client: redis.Redis, state: str, amount: Any
) -> None:
    s = opened(store, existing, state)
    with pytest.raises(EncodeError) as info:
        s.incr_float("f", amount)
    assert info.value.key == "f"
    assert "finite" in str(info.value)
    key = s.core.key or store.open(existing).core.key
    assert not redis_client.hexists(key, "f")
    if state != "new" and isinstance(amount, float):
        with pytest.raises(EncodeError):
            s["n"] += amount  # the same amount through +=
    assert s.to_dict() == ({} if state == "new" else {"n": 1, "name": "ann"})


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize(
    "amount", [2**63, -(2**63) - 1, 2**70, 10**5000], ids=["2**63", "-2**63-1", "2**70", "10**5000"]
)
def test_incr_refuses_amounts_beyond_64_bits(
    store: SessionStore, existing: str, redis_client: redis.Redis, state: str, amount: int
) -> None:
    s = opened(store, existing, state)
    with pytest.raises(LimitExceededError) as info:
        s.incr("i", amount)
    assert info.value.key == "i"
    assert "64-bit" in str(info.value)
    if state != "new":
        with pytest.raises(LimitExceededError):
            s["n"] += amount
    assert s.get("i") is None
    assert s.get("n") == (None if state == "new" else 1)
    assert s.incr("i") == 1  # nothing was poisoned


@pytest.mark.parametrize("state", ["pending", "live"])
def test_an_overflow_in_redis_names_the_key(
    store: SessionStore, existing: str, redis_client: redis.Redis, state: str
) -> None:
    s = opened(store, existing, "live")
    s["big"] = I64_MAX
    s["low"] = -(2**63)
    s["huge"] = 1e308
    for key, go in (
        ("big", lambda t: t.incr("big")),
        ("low", lambda t: t.incr("low", -1)),
        ("huge", lambda t: t.incr_float("huge", 1e308)),
    ):
        t = opened(store, existing, state)
        with pytest.raises(LimitExceededError) as info:
            go(t)
        assert info.value.key == key
        assert "not a number" not in str(info.value)
    t = opened(store, existing, state)
    with pytest.raises(LimitExceededError):
        t["big"] += 1  # += is one HINCRBY: the overflow comes from Redis
    assert store.open(existing).get_many("big", "low", "huge") == [I64_MAX, -(2**63), 1e308]


@pytest.mark.parametrize("state", ["pending", "live"])
def test_a_stored_integer_beyond_64_bits_says_so_when_incremented(
    store: SessionStore, existing: str, state: str
) -> None:
    store.open(existing)["big"] = 2**70  # JSON holds it; Redis cannot count with it
    t = opened(store, existing, state)
    assert t["big"] == 2**70
    with pytest.raises(ValueTypeError) as info:
        t.incr("big")
    assert info.value.key == "big"
    assert "64-bit" in str(info.value)
    assert t.incr_float("big", 1) == float(2**70 + 1)  # a float increment still works


def test_json_refuses_nan_and_infinity(store: SessionStore, existing: str) -> None:
    for state in STATES:
        s = opened(store, existing, state)
        for bad in (math.nan, math.inf, [1, -math.inf], {"x": math.nan}):
            with pytest.raises(EncodeError) as info:
                s["x"] = bad
            assert info.value.key == "x"
            assert "x" not in s


@pytest.mark.standalone_only
def test_pickle_keeps_nan_and_infinity(make_store: StoreFactory) -> None:
    store = make_store(codec="pickle")
    s = store.open(None)
    s.update(nan=math.nan, inf=math.inf)
    t = store.open(cookie_of(store, s))
    assert math.isnan(t["nan"])
    assert t["inf"] == math.inf
    with pytest.raises(LimitExceededError):
        t.incr_float("inf", 1)  # Redis will not produce infinity


async def test_async_numbers(redis_url: str, redis_client: redis.Redis) -> None:
    store = AsyncSessionStore(redis=redis_url, ttl=100)
    try:
        for live in (False, True):
            s = store.open(None)
            if live:
                await s.set("n", 1)
            with pytest.raises(EncodeError) as enc:
                await s.incr_float("f", math.inf)
            assert enc.value.key == "f"
            with pytest.raises(EncodeError):
                await s.incr_float("f", math.nan)
            with pytest.raises(LimitExceededError) as lim:
                await s.incr("i", 2**70)
            assert lim.value.key == "i"
            with pytest.raises(ValueTypeError):
                await s.incr("i", 1.5)  # type: ignore[arg-type]
            await s.set("big", I64_MAX)
            with pytest.raises(LimitExceededError) as lim:
                await s.incr("big")
            assert lim.value.key == "big"
            await s.set("huge", 2**70)
            with pytest.raises(ValueTypeError) as vt:
                await s.incr("huge")
            assert "64-bit" in str(vt.value)
            assert await s.get("f") is None
            assert await s.get("i") is None
    finally:
        await store.aclose()


@pytest.mark.parametrize(
    "ttl",
    [math.inf, math.nan, 1e300, 10**400, -1, 0, 1000 * 366 * 24 * 3600],
    ids=["inf", "nan", "1e300", "10**400", "-1", "0", "1001y"],
)
def test_a_timeout_redis_cannot_take_is_refused_before_it_poisons_the_session(
    store: SessionStore, existing: str, redis_client: redis.Redis, ttl: Any
) -> None:
    key = store.open(existing).core.key
    for state in STATES:
        s = opened(store, existing, state)
        for call in (s.touch, s.adjust_timeout):
            with pytest.raises(ConfigurationError) as info:
                call(ttl)
            assert info.value.setting == "ttl"
            assert isinstance(info.value, ValueError)
    assert not redis_client.hexists(key, "\x00t")
    assert store.open(existing).get("n") == 1  # every later request still works


def test_a_junk_timeout_planted_in_redis_is_a_backend_error(
    make_store: StoreFactory, redis_client: redis.Redis
) -> None:
    store = make_store(absolute_ttl=None)  # nothing caps the planted timeout
    session = store.open(None)
    session["n"] = 1
    existing = cookie_of(store, session)
    redis_client.hset(store.open(existing).core.key, "\x00t", b"1" * 300)
    with pytest.raises(BackendError) as info:
        store.open(existing).get("n")  # not a ValueTypeError about key "n"
    assert not isinstance(info.value, ValueTypeError)


def test_a_junk_timeout_planted_in_redis_is_capped_by_the_absolute_lifetime(
    store: SessionStore, existing: str, redis_client: redis.Redis
) -> None:
    key = store.open(existing).core.key
    redis_client.hset(key, "\x00t", b"1" * 300)
    assert store.open(existing).get("n") == 1  # the default 30-day deadline wins
    assert 0 < redis_client.pttl(key) <= store.config.absolute_ms


@pytest.mark.standalone_only
def test_a_prefix_with_a_lone_surrogate_is_refused_at_start_up(redis_url: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        SessionStore(redis=redis_url, prefix="hs\udcff:")
    assert info.value.setting == "prefix"


@pytest.mark.standalone_only
@pytest.mark.parametrize("setting", ["ttl", "absolute_ttl"])
def test_store_timeouts_beyond_1000_years_are_refused(redis_url: str, setting: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        SessionStore(redis=redis_url, **{setting: 10**12})
    assert info.value.setting == setting


# --------------------------------------------------------------------------- fuzz

# Keys: text (with lone surrogates and NULs mixed in), reserved names, very long text,
# and things that are not text at all.
ODD_TEXT = st.text(
    alphabet=st.one_of(
        st.characters(codec="utf-8"),
        st.sampled_from(["\x00", "\ud800", "\udcff", "\U0010ffff", "é"]),
    ),
    max_size=6,
)
KEYS = st.one_of(
    ODD_TEXT,
    ODD_TEXT.map(lambda t: "\x00" + t),
    st.integers(min_value=1, max_value=4).map(lambda n: "é" * 100 * n),
    st.binary(max_size=4),
    st.integers(),
    st.floats(),
    st.none(),
    st.tuples(st.integers()),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from([2**63, -(2**63) - 1, 2**70, 10**4000]),
    st.floats(),
    ODD_TEXT,
    st.binary(max_size=4),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(ODD_TEXT, inner, max_size=3),
    max_leaves=6,
)
AMOUNTS = st.one_of(
    st.integers(),
    st.sampled_from([2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 10**400, 10**4000]),
    st.floats(),
    st.booleans(),
    st.none(),
    st.text(max_size=2),
)
# Timeouts: none short enough to expire the shared session during the test.
TIMEOUTS = st.one_of(
    st.none(),
    st.integers(max_value=0),
    st.integers(min_value=100),
    st.floats(max_value=0),
    st.floats(min_value=100),
    st.sampled_from([math.nan, math.inf, 10**400, 1e300]),
    st.text(max_size=2),
)
META_NAMES = st.one_of(
    st.sampled_from(["m", "q", "c", "t", "u", "s", "i", ""]), ODD_TEXT, KEYS, st.binary(max_size=3)
)


def sync_call(s: Session, data: st.DataObject) -> Any:
    """One public operation with drawn arguments."""
    op = data.draw(
        st.sampled_from(
            [
                "getitem",
                "get",
                "contains",
                "setitem",
                "set",
                "delitem",
                "delete",
                "update",
                "incr",
                "incr_float",
                "iadd",
                "setdefault",
                "pop",
                "get_many",
                "cas",
                "apply",
                "meta_get",
                "meta_set",
                "meta_setdefault",
                "meta_pop",
                "meta_push",
                "touch",
            ]
        )
    )
    k = lambda: data.draw(KEYS)  # noqa: E731
    v = lambda: data.draw(VALUES)  # noqa: E731
    if op == "touch":
        return s.touch(data.draw(TIMEOUTS))
    if op == "getitem":
        return s[k()]
    if op == "get":
        return s.get(k())
    if op == "contains":
        return k() in s
    if op == "setitem":
        s[k()] = v()
        return None
    if op == "set":
        return s.set(k(), v())
    if op == "delitem":
        del s[k()]
        return None
    if op == "delete":
        return s.delete(k())
    if op == "update":
        return s.update(data.draw(st.lists(st.tuples(KEYS, VALUES), max_size=3)))
    if op == "incr":
        return s.incr(k(), data.draw(AMOUNTS))
    if op == "incr_float":
        return s.incr_float(k(), data.draw(AMOUNTS))
    if op == "iadd":  # += on a number read from the session is an increment
        key = data.draw(st.sampled_from(["n", "f"]))
        amount = data.draw(AMOUNTS)
        current = s.get(key, None)
        if type(current) in (Counter, FloatCounter) and type(amount) in (int, float):
            current += amount
            s[key] = current
        return None
    if op == "setdefault":
        return s.setdefault(k(), v())
    if op == "pop":
        return s.pop(k(), None) if data.draw(st.booleans()) else s.pop(k())
    if op == "get_many":
        return s.get_many(*data.draw(st.lists(KEYS, max_size=3)))
    if op == "cas":
        expected = data.draw(st.lists(st.tuples(KEYS, VALUES | st.just(MISSING)), max_size=2))
        changes = data.draw(st.lists(st.tuples(KEYS, VALUES | st.just(MISSING)), max_size=2))
        return s.compare_and_set(dict(expected), dict(changes))
    if op == "apply":
        new = v()
        return s.apply(k(), lambda _: new, None)
    name = data.draw(META_NAMES)
    if op == "meta_get":
        return s.meta_get(name)
    if op == "meta_set":
        return s.meta_set(name, v())
    if op == "meta_setdefault":
        return s.meta_setdefault(name, v())
    if op == "meta_pop":
        return s.meta_pop(name)
    return s.meta_push(name, v(), data.draw(st.booleans()))


def allowed(exc: BaseException) -> bool:
    """Documented errors only: the tree's, or a KeyError for a missing key."""
    return isinstance(exc, HashSessionError) or (type(exc) is KeyError)


#: Examples per fuzz test and topology; raise it to hunt (HASHSESSION_FUZZ_EXAMPLES=2000).
FUZZ_EXAMPLES = int(os.environ.get("HASHSESSION_FUZZ_EXAMPLES", "40"))
FUZZ = settings(
    max_examples=FUZZ_EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture
def base(store: SessionStore, redis_client: redis.Redis) -> str:
    s = store.open(None)
    s.update(n=1, f=1.5, name="ann")
    assert s.core.key is not None
    redis_client.hset(s.core.key, BAD_NAME, b"1")  # another client's unreadable field
    return cookie_of(store, s)


@FUZZ
@given(data=st.data())
def test_fuzz_every_sync_operation(store: SessionStore, base: str, data: st.DataObject) -> None:
    state = data.draw(st.sampled_from(STATES))
    s = store.open(None if state == "new" else base)
    if state == "live":
        s.get("n")
    for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
        try:
            sync_call(s, data)
        except Exception as exc:  # the point: see what escapes
            assert allowed(exc), f"{type(exc).__name__} escaped: {exc!r}"
    # Whatever was accepted can be read back, and every listing agrees.
    everything = s.to_dict()
    assert dict(s) == everything
    assert sorted(s) == sorted(everything)
    assert len(s) == len(everything)


async def async_call(s: AsyncSession, data: st.DataObject) -> Any:
    op = data.draw(
        st.sampled_from(
            [
                "get",
                "has",
                "set",
                "delete",
                "update",
                "incr",
                "incr_float",
                "setdefault",
                "pop",
                "get_many",
                "cas",
                "apply",
                "meta_get",
                "meta_set",
                "meta_setdefault",
                "meta_pop",
                "meta_push",
                "touch",
            ]
        )
    )
    k = lambda: data.draw(KEYS)  # noqa: E731
    v = lambda: data.draw(VALUES)  # noqa: E731
    if op == "touch":
        return await s.touch(data.draw(TIMEOUTS))
    if op == "get":
        return await s.get(k())
    if op == "has":
        return await s.has(k())
    if op == "set":
        return await s.set(k(), v())
    if op == "delete":
        return await s.delete(k())
    if op == "update":
        return await s.update(data.draw(st.lists(st.tuples(KEYS, VALUES), max_size=3)))
    if op == "incr":
        return await s.incr(k(), data.draw(AMOUNTS))
    if op == "incr_float":
        return await s.incr_float(k(), data.draw(AMOUNTS))
    if op == "setdefault":
        return await s.setdefault(k(), v())
    if op == "pop":
        return await (s.pop(k(), None) if data.draw(st.booleans()) else s.pop(k()))
    if op == "get_many":
        return await s.get_many(*data.draw(st.lists(KEYS, max_size=3)))
    if op == "cas":
        expected = data.draw(st.lists(st.tuples(KEYS, VALUES | st.just(MISSING)), max_size=2))
        changes = data.draw(st.lists(st.tuples(KEYS, VALUES | st.just(MISSING)), max_size=2))
        return await s.compare_and_set(dict(expected), dict(changes))
    if op == "apply":
        new = v()
        return await s.apply(k(), lambda _: new, None)
    name = data.draw(META_NAMES)
    if op == "meta_get":
        return await s.meta_get(name)
    if op == "meta_set":
        return await s.meta_set(name, v())
    if op == "meta_setdefault":
        return await s.meta_setdefault(name, v())
    if op == "meta_pop":
        return await s.meta_pop(name)
    return await s.meta_push(name, v(), data.draw(st.booleans()))


@pytest.fixture
def runner() -> Iterator[asyncio.Runner]:
    with asyncio.Runner() as loop:
        yield loop


@pytest.fixture
def async_store(redis_url: str, runner: asyncio.Runner) -> Iterator[AsyncSessionStore]:
    async def make() -> AsyncSessionStore:
        return AsyncSessionStore(redis=redis_url, ttl=100)

    store = runner.run(make())
    yield store
    runner.run(store.aclose())


@FUZZ
@given(data=st.data())
def test_fuzz_every_async_operation(
    async_store: AsyncSessionStore, base: str, runner: asyncio.Runner, data: st.DataObject
) -> None:
    async def example() -> None:
        state = data.draw(st.sampled_from(STATES))
        s = async_store.open(None if state == "new" else base)
        if state == "live":
            await s.get("n")
        for _ in range(data.draw(st.integers(min_value=1, max_value=4))):
            try:
                await async_call(s, data)
            except Exception as exc:
                assert allowed(exc), f"{type(exc).__name__} escaped: {exc!r}"
        everything = await s.to_dict()
        assert sorted(await s.keys()) == sorted(everything)
        assert await s.length() == len(everything)

    runner.run(example())
