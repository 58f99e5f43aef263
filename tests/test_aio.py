"""AsyncSession on redis.asyncio: behaviour, round-trip budget, expiry, ids, errors, races.

Every test that talks to Redis runs on each topology (one server, Sentinel,
Cluster; see conftest). Round trips are counted with :class:`AsyncCounter`, a
``redis.asyncio`` client of the same kind that counts each ``send_packed_command``
call (one call is one round trip; the handshake of a new connection is not
counted). Scripts are loaded first (``warm``) so that a NOSCRIPT retry never
skews a count.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis
from redis.exceptions import ConnectionError as RedisConnectionError

from counting import AsyncCounter
from hashsession import (
    MISSING,
    BackendError,
    ConfigurationError,
    ConflictError,
    DecodeError,
    EncodeError,
    HashSessionError,
    InvalidKeyError,
    LimitExceededError,
    ValueTypeError,
)
from hashsession import ids as hs_ids
from hashsession.aio import AsyncSession, AsyncSessionStore
from hashsession.codecs import JSONCodec
from hashsession.cookies import Signer
from hashsession.scripts import CREATED_FIELD, EVERY, TTL_FIELD
from hashsession.topology import async_client

pytestmark = pytest.mark.all_topologies

StoreFactory = Callable[..., AsyncSessionStore]
AsyncOp = Callable[[AsyncSession], Awaitable[Any]]


# --------------------------------------------------------------------------- helpers


def cookie_of(store: AsyncSessionStore, session: AsyncSession) -> str:
    """The ``name=value`` of the response's Set-Cookie (the next request's Cookie header)."""
    cookies = [v for k, v in store.response_headers(session) if k == "Set-Cookie"]
    assert len(cookies) == 1, store.response_headers(session)
    return cookies[0].split(";", 1)[0]


def set_cookie(store: AsyncSessionStore, session: AsyncSession) -> str | None:
    cookies = [v for k, v in store.response_headers(session) if k == "Set-Cookie"]
    assert len(cookies) <= 1
    return cookies[0] if cookies else None


def user_fields(client: redis.Redis, key: str) -> dict[bytes, bytes]:
    return {k: v for k, v in client.hgetall(key).items() if not k.startswith(b"\x00")}


def assert_every_key_expires(client: redis.Redis) -> None:
    for key in client.scan_iter():
        assert client.pttl(key) > 0, f"{key!r} has no TTL"


@pytest.fixture
def warm(redis_client: redis.Redis) -> None:
    for script in EVERY:
        assert redis_client.script_load(script.source) == script.sha


@pytest.fixture
async def make_store(redis_url: str) -> AsyncIterator[StoreFactory]:
    stores: list[AsyncSessionStore] = []

    def make(**kwargs: Any) -> AsyncSessionStore:
        kwargs.setdefault("redis", redis_url)
        kwargs.setdefault("ttl", 100)
        store = AsyncSessionStore(**kwargs)
        stores.append(store)
        return store

    yield make
    for store in stores:
        await store.aclose()


@pytest.fixture
def store(make_store: StoreFactory) -> AsyncSessionStore:
    return make_store()


@pytest.fixture
async def existing(store: AsyncSessionStore) -> str:
    """The cookie of a stored session holding a=1, b="two", c=[1, 2]."""
    s = store.open(None)
    await s.update({"a": 1, "b": "two", "c": [1, 2]})
    return cookie_of(store, s)


@pytest.fixture
async def counter(redis_url: str, warm: None) -> AsyncIterator[AsyncCounter]:
    c = await AsyncCounter(redis_url).ready()
    yield c
    await c.aclose()


@pytest.fixture
def cstore(counter: AsyncCounter, make_store: StoreFactory) -> AsyncSessionStore:
    return make_store(redis=counter.client)


@pytest.fixture
async def cexisting(cstore: AsyncSessionStore) -> str:
    s = cstore.open(None)
    await s.update(a=1, b="two", n=5)
    return cookie_of(cstore, s)


# --------------------------------------------------------------------------- the store


async def test_store_takes_a_url_or_a_client(redis_url: str) -> None:
    client = async_client(redis_url)
    store = AsyncSessionStore(redis=client, ttl=100)
    assert store.client is client
    s = store.open(None)
    await s.set("k", 1)
    assert await store.open(cookie_of(store, s)).get("k") == 1
    await store.aclose()
    await client.aclose()


def test_store_rejects_bad_redis_settings() -> None:
    with pytest.raises(ConfigurationError) as info:
        AsyncSessionStore(redis="nosuchscheme://x")
    assert info.value.setting == "redis"
    with pytest.raises(ConfigurationError) as info:
        AsyncSessionStore(redis=42)  # type: ignore[arg-type]
    assert info.value.setting == "redis"
    with pytest.raises(ConfigurationError) as info:
        AsyncSessionStore(redis="redis://127.0.0.1:1/0", ttl=0)
    assert info.value.setting == "ttl"
    with pytest.raises(ConfigurationError):
        AsyncSessionStore(redis="redis://127.0.0.1:1/0", no_such_setting=1)


# --------------------------------------------------------------------------- reads


async def test_brand_new_session_reads_empty(
    store: AsyncSessionStore, redis_client: redis.Redis
) -> None:
    s = store.open(None)
    assert s.new is True and s.id is None
    assert await s.get("a") is None
    assert await s.get("a", 7) == 7
    assert await s.has("a") is False
    assert await s.length() == 0
    assert await s.keys() == []
    assert await s.values() == []
    assert await s.items() == []
    assert await s.to_dict() == {}
    assert await s.get_many("a", "b") == [None, None]
    assert await s.pop("a", "dflt") == "dflt"
    with pytest.raises(KeyError):
        await s.pop("a")
    assert await s.delete("a") is False
    await s.clear()
    assert s.id is None
    assert redis_client.dbsize() == 0
    assert s.accessed is True and s.modified is True
    assert store.response_headers(s) == [("Vary", "Cookie")]


async def test_existing_session_reads(store: AsyncSessionStore, existing: str) -> None:
    s = store.open(existing)
    assert s.new is False and s.id is not None
    assert await s.get("a") == 1
    assert await s.get("b") == "two"
    assert await s.get("c") == [1, 2]
    assert await s.get("zzz") is None
    assert await s.get("zzz", "d") == "d"
    assert await s.has("a") is True
    assert await s.has("zzz") is False
    assert await s.length() == 3
    assert sorted(await s.keys()) == ["a", "b", "c"]
    assert sorted(map(repr, await s.values())) == sorted(map(repr, [1, "two", [1, 2]]))
    assert dict(await s.items()) == {"a": 1, "b": "two", "c": [1, 2]}
    assert await s.to_dict() == {"a": 1, "b": "two", "c": [1, 2]}
    assert await s.get_many("c", "nope", "a") == [[1, 2], None, 1]
    assert s.accessed is True and s.modified is False
    assert store.response_headers(s) == [("Vary", "Cookie")]


async def test_reserved_metadata_is_hidden(
    store: AsyncSessionStore, existing: str, redis_client: redis.Redis
) -> None:
    s = store.open(existing)
    assert await s.length() == 3
    raw = redis_client.hgetall(s.core.key)
    assert CREATED_FIELD.encode() in raw
    assert all(not k.startswith("\x00") for k in await s.keys())
    assert all(not k.startswith("\x00") for k in await s.to_dict())
    await s.clear()
    assert await s.length() == 0 and await s.keys() == []


async def test_values_keep_their_types(store: AsyncSessionStore) -> None:
    values = {
        "int": 5,
        "neg": -3,
        "float": 2.5,
        "str": "héllo ✓",
        "empty": "",
        "none": None,
        "true": True,
        "false": False,
        "list": [1, "x", None],
        "dict": {"k": {"n": [1]}},
    }
    s = store.open(None)
    for k, v in values.items():
        await s.set(k, v)
    again = store.open(cookie_of(store, s))
    for k, v in values.items():
        got = await again.get(k)
        assert got == v and type(got) is type(v), k


# --------------------------------------------------------------------------- writes


async def test_set_is_live(
    store: AsyncSessionStore, existing: str, redis_client: redis.Redis
) -> None:
    s = store.open(existing)
    await s.set("a", 10)
    await s.set("new", {"x": 1})
    other = store.open(existing)  # another request sees it at once, no save()
    assert await other.get("a") == 10
    assert await other.get("new") == {"x": 1}
    assert redis_client.hget(s.core.key, "a") == b"10"
    assert s.modified is True
    assert store.response_headers(s) == [("Vary", "Cookie")]  # same id: no new cookie


async def test_update_with_dict_pairs_and_kwargs(store: AsyncSessionStore, existing: str) -> None:
    s = store.open(existing)
    await s.update({"d1": 1, "a": "changed"})
    await s.update([("p1", 1), ("p2", [2])])
    await s.update(k1="x", k2=None)
    await s.update({"m": 1}, m=2, n=3)
    await s.update()
    await s.update({})
    assert await store.open(existing).to_dict() == {
        "a": "changed",
        "b": "two",
        "c": [1, 2],
        "d1": 1,
        "p1": 1,
        "p2": [2],
        "k1": "x",
        "k2": None,
        "m": 2,
        "n": 3,
    }


async def test_update_on_new_session_creates_it(
    store: AsyncSessionStore, redis_client: redis.Redis
) -> None:
    s = store.open(None)
    await s.update([("a", 1)], b=2)
    assert s.id is not None and s.new is True
    assert await store.open(cookie_of(store, s)).to_dict() == {"a": 1, "b": 2}
    assert redis_client.dbsize() == 1


async def test_empty_update_on_new_session_writes_nothing(
    store: AsyncSessionStore, redis_client: redis.Redis
) -> None:
    s = store.open(None)
    await s.update({})
    assert s.id is None and redis_client.dbsize() == 0
    assert set_cookie(store, s) is None


async def test_delete(store: AsyncSessionStore, existing: str) -> None:
    s = store.open(existing)
    assert await s.delete("a") is True
    assert await s.has("a") is False
    assert await s.delete("a") is False
    assert await store.open(existing).delete("missing") is False  # as the first command
    assert await store.open(existing).to_dict() == {"b": "two", "c": [1, 2]}


async def test_incr_and_incr_float(store: AsyncSessionStore, existing: str) -> None:
    s = store.open(existing)
    assert await s.incr("a") == 2
    assert await s.incr("a", 5) == 7
    assert await s.incr("a", -10) == -3
    assert await s.incr("fresh") == 1
    assert await s.incr_float("f", 0.5) == 0.5
    assert await s.incr_float("f", 2) == 2.5
    assert await s.incr_float("a", 0.5) == -2.5
    again = store.open(existing)
    assert await again.get_many("fresh", "f", "a") == [1, 2.5, -2.5]
    with pytest.raises(TypeError):
        await s.incr("a", 1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await s.incr("a", True)
    with pytest.raises(TypeError):
        await s.incr_float("a", "1")  # type: ignore[arg-type]


async def test_incr_as_first_command(store: AsyncSessionStore, existing: str) -> None:
    assert await store.open(existing).incr("a", 2) == 3
    assert await store.open(existing).incr_float("a", 0.5) == 3.5


async def test_incr_on_new_session(store: AsyncSessionStore) -> None:
    s = store.open(None)
    assert await s.incr("hits", 3) == 3
    assert await s.incr("hits") == 4
    assert await store.open(cookie_of(store, s)).get("hits") == 4
    t = store.open(None)
    assert await t.incr_float("x", 1.5) == 1.5
    assert await store.open(cookie_of(store, t)).get("x") == 1.5


async def test_setdefault(store: AsyncSessionStore, existing: str) -> None:
    s = store.open(existing)
    assert await s.setdefault("a", 99) == 1
    assert await s.setdefault("lst", [0]) == [0]
    assert await s.setdefault("lst", [1]) == [0]
    assert await s.setdefault("nothing") is None
    assert await s.has("nothing") is True
    assert await store.open(existing).get_many("a", "lst", "nothing") == [1, [0], None]
    fresh = store.open(None)
    assert await fresh.setdefault("k", {"v": 1}) == {"v": 1}
    assert fresh.id is not None
    assert await fresh.setdefault("k", "other") == {"v": 1}


async def test_pop(store: AsyncSessionStore, existing: str) -> None:
    s = store.open(existing)
    assert await s.pop("c") == [1, 2]
    assert await s.has("c") is False
    assert await s.pop("c", None) is None
    assert await s.pop("c", 0) == 0
    with pytest.raises(KeyError) as info:
        await s.pop("c")
    assert info.value.args == ("c",)
    assert await store.open(existing).pop("b") == "two"  # as the first command
    assert await store.open(existing).to_dict() == {"a": 1}


async def test_removing_the_last_key_ends_the_session(
    store: AsyncSessionStore, redis_client: redis.Redis
) -> None:
    made = store.open(None)
    await made.update(a=1, b=2)
    cookie = cookie_of(store, made)
    key = made.core.key
    s = store.open(cookie)
    assert await s.pop("b") == 2  # the request's first command
    assert redis_client.exists(key) == 1
    assert await s.delete("a") is True  # a live one: the session is emptied, and deleted
    assert redis_client.exists(key) == 0 and s.id is None and s.new
    [(name, expired), *_] = store.response_headers(s)
    assert name == "Set-Cookie" and "Max-Age=0" in expired
    await s.set("c", 3)
    assert s.core.key != key


async def test_clear_ends_the_session(
    store: AsyncSessionStore, existing: str, redis_client: redis.Redis
) -> None:
    s = store.open(existing)
    key = s.core.key
    await s.clear()
    assert redis_client.exists(key) == 0
    assert await s.length() == 0 and s.id is None and s.new
    [(name, expired), *_] = store.response_headers(s)
    assert name == "Set-Cookie" and "Max-Age=0" in expired
    await s.set("after", 1)  # a new session, under a new id
    assert s.core.key != key
    assert "Max-Age=0" not in dict(store.response_headers(s))["Set-Cookie"]
    assert await store.open(existing).to_dict() == {}


async def test_compare_and_set(store: AsyncSessionStore, existing: str) -> None:
    s = store.open(existing)
    assert await s.compare_and_set({"a": 1}, {"a": 2, "x": "y"}) is True
    assert await s.to_dict() == {"a": 2, "b": "two", "c": [1, 2], "x": "y"}
    assert await s.compare_and_set({"a": 1}, {"a": 3}) is False
    assert await s.get("a") == 2
    assert await s.compare_and_set({"nope": MISSING}, {"nope": 1, "x": MISSING}) is True
    assert await s.get("nope") == 1 and await s.has("x") is False
    assert await s.compare_and_set({"nope": MISSING}, {"nope": 2}) is False
    assert await s.compare_and_set({"a": 2, "b": "other"}, {"a": 100}) is False
    assert await s.compare_and_set({"a": 2, "b": "two", "c": [1, 2]}, {"a": 100}) is True
    assert await store.open(existing).get("a") == 100
    # as the first command of a request
    assert await store.open(existing).compare_and_set({"a": 100}, {"a": 5}) is True
    assert await store.open(existing).compare_and_set({"a": 100}, {"a": 6}) is False
    assert await store.open(existing).get("a") == 5


async def test_compare_and_set_on_new_session(
    store: AsyncSessionStore, redis_client: redis.Redis
) -> None:
    s = store.open(None)
    assert await s.compare_and_set({"a": 1}, {"a": 2}) is False
    assert redis_client.dbsize() == 0
    assert await s.compare_and_set({"a": MISSING}, {"a": 2}) is True
    assert s.id is not None
    assert await store.open(cookie_of(store, s)).get("a") == 2


async def test_edit_mutates_in_place(store: AsyncSessionStore, existing: str) -> None:
    s = store.open(existing)
    async with s.edit("c", []) as c:
        c.append(3)
        c.extend([4, 5])
    assert await s.get("c") == [1, 2, 3, 4, 5]
    async with s.edit("d", {}) as d:
        d["k"] = 1
        d.setdefault("l", []).append(1)
    async with s.edit("n", 0) as n:
        n += 5
    again = store.open(existing)
    assert await again.get_many("c", "d", "n") == [[1, 2, 3, 4, 5], {"k": 1, "l": [1]}, 5]


async def test_edit_default_is_not_shared_and_creates(store: AsyncSessionStore) -> None:
    default: list[int] = []
    s = store.open(None)
    async with s.edit("cart", default) as cart:
        cart.append(1)
    assert default == []
    assert s.id is not None
    assert await store.open(cookie_of(store, s)).get("cart") == [1]


async def test_edit_exception_writes_nothing(store: AsyncSessionStore, existing: str) -> None:
    s = store.open(existing)
    with pytest.raises(RuntimeError):
        async with s.edit("c", []) as c:
            c.append(99)
            raise RuntimeError("boom")
    assert await store.open(existing).get("c") == [1, 2]


async def test_edit_replays_on_conflict(store: AsyncSessionStore, existing: str) -> None:
    s = store.open(existing)
    async with s.edit("c", []) as c:
        c.append(3)
        await store.open(existing).set("c", [1, 2, "other"])  # a concurrent request
    assert await store.open(existing).get("c") == [1, 2, "other", 3]


async def test_apply(store: AsyncSessionStore, existing: str) -> None:
    s = store.open(existing)
    assert await s.apply("c", lambda v: [*v, 3]) == [1, 2, 3]
    assert await s.apply("new", lambda v: v + 1, 0) == 1
    assert await s.apply("new", lambda v: v + 1, 0) == 2
    assert await store.open(existing).get_many("c", "new") == [[1, 2, 3], 2]


async def test_apply_gives_up_with_conflict_error(
    make_store: StoreFactory, redis_client: redis.Redis
) -> None:
    store = make_store(edit_retries=3)
    s = store.open(None)
    await s.set("c", [0])
    cookie = cookie_of(store, s)
    key = s.core.key
    attempts = 0

    def meddle(value: list[int]) -> list[int]:
        nonlocal attempts
        attempts += 1
        redis_client.hset(key, "c", f"[{-attempts}]")  # a racing writer, every time
        return [*value, 1]

    with pytest.raises(ConflictError) as info:
        await store.open(cookie).apply("c", meddle, [])
    assert info.value.key == "c"
    assert attempts == 3
    assert await store.open(cookie).get("c") == [-3]


async def test_edit_gives_up_with_conflict_error(
    make_store: StoreFactory, redis_client: redis.Redis
) -> None:
    """A codec that moves the stored value each time the edit encodes: every try conflicts."""
    json_codec = JSONCodec()
    meddling = {"on": False, "n": 0}
    where: dict[str, str] = {}

    class MeddlingCodec:
        def dumps(self, value: Any, /) -> str:
            if meddling["on"]:
                meddling["n"] += 1
                redis_client.hset(where["key"], "c", f"[{-meddling['n']}]")
            return json_codec.dumps(value)

        def loads(self, data: bytes, /) -> Any:
            return json_codec.loads(data)

    store = make_store(edit_retries=4, codec=MeddlingCodec())
    s = store.open(None)
    await s.set("c", [0])
    where["key"] = s.core.key
    edits = store.open(cookie_of(store, s))
    with pytest.raises(ConflictError) as info:
        async with edits.edit("c", []) as c:
            c.append(1)
            meddling["on"] = True
    meddling["on"] = False
    assert info.value.key == "c"
    assert meddling["n"] == 4  # one encode per try, edit_retries tries
    assert await store.open(cookie_of(store, s)).get("c") == [-4]


async def test_edit_waits_with_asyncio_sleep_until_edit_timeout(
    make_store: StoreFactory, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = make_store(edit_timeout=1.0)  # room for many tries on a loaded machine
    s = store.open(None)
    await s.set("c", [0])
    key = s.core.key
    cookie = cookie_of(store, s)
    tries = 0

    def meddle(value: Any) -> Any:
        nonlocal tries
        tries += 1
        redis_client.hset(key, "c", f"[{-tries}]")  # a racing writer, every time
        return [*value, 1]

    def blocking_sleep(seconds: float) -> None:
        raise AssertionError("the asyncio flavour must not block the event loop")

    monkeypatch.setattr(time, "sleep", blocking_sleep)
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0.001)

    async def edit() -> None:
        try:
            await store.open(cookie).apply("c", meddle, [])
        finally:
            done.set()

    started = time.monotonic()
    results = await asyncio.gather(edit(), ticker(), return_exceptions=True)
    took = time.monotonic() - started
    assert isinstance(results[0], ConflictError), results
    assert "edit_timeout=1 s" in str(results[0])
    assert 1.0 <= took < 6
    assert tries > 5
    assert ticks > tries  # the loop ran other tasks while the edit waited
    assert await store.open(cookie).get("c") == [-tries]


async def test_save_is_a_noop(store: AsyncSessionStore, existing: str) -> None:
    s = store.open(existing)
    await s.save()
    assert s.accessed is False
    await s.set("z", 1)
    await s.save()
    assert await store.open(existing).get("z") == 1


async def test_open_id_with_bare_cookie_value(store: AsyncSessionStore, existing: str) -> None:
    value = existing.split("=", 1)[1]
    assert await store.open_id(value).get("b") == "two"
    fresh = store.open_id(None)
    assert fresh.new is True and await fresh.get("b") is None
    assert await store.open_id("garbage").get("b") is None


async def test_cookie_header_with_other_cookies(store: AsyncSessionStore, existing: str) -> None:
    assert await store.open(f"theme=dark; {existing}; lang=en").get("a") == 1


async def test_session_flags(store: AsyncSessionStore, existing: str) -> None:
    s = store.open(existing)
    assert (s.accessed, s.modified, s.invalidated) == (False, False, False)
    await s.get("a")
    assert (s.accessed, s.modified) == (True, False)
    await s.set("a", 2)
    assert s.modified is True
    await s.invalidate()
    assert s.invalidated is True
    assert "AsyncSession" in repr(s) and s.id is None


async def test_modified_only_when_something_changed(
    store: AsyncSessionStore, existing: str
) -> None:
    """As the sync test: writes that change nothing leave the session unmodified."""
    for first in (True, False):  # the request's first command, then on the live session
        s = store.open(existing)
        if not first:
            assert await s.get("a") == 1
            s.core.accessed = False
        assert await s.pop("missing", None) is None
        assert (s.accessed, s.modified) == (True, False)
        assert await s.setdefault("a", 5) == 1
        assert await s.delete("missing") is False
        assert (s.accessed, s.modified) == (True, False)
        reads: list[Callable[[AsyncSession], Awaitable[Any]]] = [
            lambda s: s.get("a"),
            lambda s: s.has("a"),
        ]
        for read in reads:
            s.core.accessed = False
            await read(s)
            assert (s.accessed, s.modified) == (True, False)
    changes: list[Callable[[AsyncSession], Awaitable[Any]]] = [
        lambda s: s.pop("a"),
        lambda s: s.delete("b"),
        lambda s: s.setdefault("d", 4),
    ]
    for first in (True, False):
        for change in changes:
            s = store.open(existing)
            if not first:
                await s.get("x")
            await change(s)
            assert s.modified is True
        changes = [lambda s: s.pop("c"), lambda s: s.delete("d"), lambda s: s.setdefault("e", 5)]
    # Deleting "d" emptied the session, which ended it: "e" went to a new session.
    assert await store.open(existing).to_dict() == {}

    fresh = store.open(None)  # nothing stored: no command, nothing changed
    assert await fresh.pop("a", None) is None and await fresh.delete("a") is False
    assert (fresh.accessed, fresh.modified, fresh.id) == (True, False, None)
    assert await fresh.setdefault("a", 1) == 1
    assert fresh.modified is True and fresh.id is not None


# --------------------------------------------------------------------------- laziness and budget


async def test_untouched_session_costs_nothing(
    cstore: AsyncSessionStore, cexisting: str, counter: AsyncCounter
) -> None:
    with counter.expect(0):
        s = cstore.open(cexisting)
        _ = s.id, s.new, s.accessed, s.modified, s.invalidated, repr(s)
        await s.save()
        headers = cstore.response_headers(s)
    assert headers == []
    with counter.expect(0):
        fresh = cstore.open(None)
        headers = cstore.response_headers(fresh)
        edit = fresh.edit("x", [])  # made, not entered: nothing sent
        del edit
    assert headers == []


async def test_reads_on_new_session_cost_nothing(
    cstore: AsyncSessionStore, counter: AsyncCounter, redis_client: redis.Redis
) -> None:
    with counter.expect(0):
        s = cstore.open(None)
        assert await s.get("a") is None
        assert await s.has("a") is False
        assert await s.length() == 0
        assert await s.keys() == []
        assert await s.items() == []
        assert await s.values() == []
        assert await s.to_dict() == {}
        assert await s.get_many("a", "b", "c") == [None, None, None]
        assert await s.pop("a", None) is None
        assert await s.delete("a") is False
        await s.clear()
        await s.touch()
        await s.regenerate()
        await s.invalidate()
    assert redis_client.dbsize() == 0
    assert cstore.response_headers(s) == [("Vary", "Cookie")]


async def test_n_single_key_operations_cost_n(
    cstore: AsyncSessionStore, cexisting: str, counter: AsyncCounter, redis_client: redis.Redis
) -> None:
    key = cstore.open(cexisting).core.key
    redis_client.pexpire(key, 2000)
    s = cstore.open(cexisting)
    with counter.expect(1):
        assert await s.get("a") == 1
    assert redis_client.pttl(key) > 90_000, "the first command must slide the TTL"
    with counter.expect(12):
        assert await s.get("b") == "two"
        assert await s.has("n") is True
        await s.set("c", 3)
        await s.set("d", 4)
        assert await s.incr("n") == 6
        assert await s.incr_float("f", 0.5) == 0.5
        assert await s.setdefault("e", 1) == 1
        assert await s.pop("e") == 1
        assert await s.delete("d") is True
        assert await s.delete("c") is True
        assert await s.get_many("a", "b") == [1, "two"]
        assert await s.length() == 4
    assert cstore.response_headers(s) == [("Vary", "Cookie")]


def TOUCH(s: AsyncSession) -> Awaitable[None]:
    return s.touch()


FIRST_OPS: list[tuple[str, AsyncOp]] = [
    ("get", lambda s: s.get("a")),
    ("has", lambda s: s.has("a")),
    ("set", lambda s: s.set("x", 2)),
    ("incr", lambda s: s.incr("a")),
    ("incr_float", lambda s: s.incr_float("a", 1.0)),
    ("setdefault", lambda s: s.setdefault("q", 1)),
    ("pop", lambda s: s.pop("b", None)),
    ("delete", lambda s: s.delete("b")),
    ("get_many", lambda s: s.get_many("a", "b")),
    ("length", lambda s: s.length()),
    ("to_dict", lambda s: s.to_dict()),
    ("items", lambda s: s.items()),
    ("values", lambda s: s.values()),
    ("keys", lambda s: s.keys()),
    ("update", lambda s: s.update(x=1, y=2)),
    ("cas", lambda s: s.compare_and_set({"a": 1}, {"a": 3})),
    ("touch", TOUCH),
]


@pytest.mark.parametrize("op", [op for _, op in FIRST_OPS], ids=[name for name, _ in FIRST_OPS])
async def test_every_first_operation_is_one_round_trip_and_slides(
    cstore: AsyncSessionStore,
    cexisting: str,
    counter: AsyncCounter,
    redis_client: redis.Redis,
    op: AsyncOp,
) -> None:
    s = cstore.open(cexisting)
    key = s.core.key
    redis_client.pexpire(key, 3000)
    with counter.expect(1):
        await op(s)
    assert 90_000 < redis_client.pttl(key) <= 100_000
    # the slide happens once per request: the next command does not slide again
    redis_client.pexpire(key, 3000)
    with counter.expect(1):
        await op(s)
    if op is not TOUCH:  # touch() is the explicit way to slide again
        assert redis_client.pttl(key) <= 3000


async def test_read_everything_is_one_round_trip(
    cstore: AsyncSessionStore, cexisting: str, counter: AsyncCounter
) -> None:
    expected = {"a": 1, "b": "two", "n": 5}
    s = cstore.open(cexisting)
    with counter.expect(1):
        assert await s.to_dict() == expected
    with counter.expect(1):
        assert dict(await s.items()) == expected
    with counter.expect(1):
        assert sorted(map(repr, await s.values())) == sorted(map(repr, expected.values()))
    with counter.expect(1):
        assert sorted(await s.keys()) == sorted(expected)


async def test_update_of_fifty_keys_is_one_round_trip(
    cstore: AsyncSessionStore, cexisting: str, counter: AsyncCounter
) -> None:
    data = {f"k{i}": i for i in range(50)}
    s = cstore.open(cexisting)
    with counter.expect(1):  # the first command
        await s.update(data)
    with counter.expect(1):  # once live
        await s.update({k: v + 1 for k, v in data.items()})
    assert await cstore.open(cexisting).get_many("k0", "k49") == [1, 50]
    fresh = cstore.open(None)
    with counter.expect(1):  # creating a session
        await fresh.update(data)
    assert await cstore.open(cookie_of(cstore, fresh)).length() == 50


async def test_first_write_of_new_session_is_one_round_trip(
    cstore: AsyncSessionStore, counter: AsyncCounter, redis_client: redis.Redis
) -> None:
    s = cstore.open(None)
    with counter.expect(1):
        await s.set("user", "ann")
    key = s.core.key
    assert key is not None
    assert 99_000 < redis_client.pttl(key) <= 100_000
    raw = redis_client.hgetall(key)
    assert raw[b"user"] == b'"ann"'
    assert abs(int(raw[CREATED_FIELD.encode()]) - redis_client.time()[0] * 1000) < 5_000
    headers = cstore.response_headers(s)
    assert headers[0][0] == "Set-Cookie" and headers[0][1].startswith(f"session={s.id};")
    assert headers[1] == ("Vary", "Cookie")
    with counter.expect(1):
        await s.set("x", 1)


@pytest.mark.parametrize(
    "first",
    [
        lambda s: s.set("n", 1),
        lambda s: s.incr("n"),
        lambda s: s.incr_float("n", 0.5),
        lambda s: s.setdefault("n", 1),
        lambda s: s.update(a=1, b=2),
        lambda s: s.compare_and_set({"n": MISSING}, {"n": 1}),
    ],
    ids=["set", "incr", "incr_float", "setdefault", "update", "cas"],
)
async def test_every_creating_write_is_one_round_trip(
    cstore: AsyncSessionStore,
    counter: AsyncCounter,
    redis_client: redis.Redis,
    first: AsyncOp,
) -> None:
    s = cstore.open(None)
    with counter.expect(1):
        await first(s)
    assert redis_client.pttl(s.core.key) > 0
    assert redis_client.hexists(s.core.key, CREATED_FIELD)


async def test_edit_costs_a_read_and_a_write(
    cstore: AsyncSessionStore, cexisting: str, counter: AsyncCounter
) -> None:
    s = cstore.open(cexisting)
    with counter.expect(2):
        async with s.edit("lst", []) as lst:
            lst.append(1)
    assert await cstore.open(cexisting).get("lst") == [1]


async def test_script_cache_flush_is_survived(
    store: AsyncSessionStore, existing: str, redis_client: redis.Redis
) -> None:
    redis_client.script_flush()
    s = store.open(existing)
    assert await s.get("a") == 1
    await s.set("a", 2)
    await s.incr("a")
    redis_client.script_flush()
    await s.set("b", "x")
    assert await store.open(existing).to_dict() == {"a": 3, "b": "x", "c": [1, 2]}
    redis_client.script_flush()
    fresh = store.open(None)
    await fresh.set("q", 1)
    assert await store.open(cookie_of(store, fresh)).get("q") == 1


# --------------------------------------------------------------------------- expiry


async def test_every_key_always_has_a_ttl(
    store: AsyncSessionStore, existing: str, redis_client: redis.Redis
) -> None:
    s = store.open(existing)
    for _, op in FIRST_OPS:
        await op(s)
        assert_every_key_expires(redis_client)
    for _, op in FIRST_OPS:
        await op(store.open(existing))
        assert_every_key_expires(redis_client)
    async with s.edit("e", []) as e:
        e.append(1)
    await s.regenerate()
    await s.touch(50)
    assert_every_key_expires(redis_client)
    assert redis_client.dbsize() == 1


async def test_absolute_ttl_caps_the_idle_timeout(
    make_store: StoreFactory, redis_client: redis.Redis
) -> None:
    store = make_store(ttl=100, absolute_ttl=30)
    s = store.open(None)
    await s.set("a", 1)
    key = s.core.key
    assert 25_000 < redis_client.pttl(key) <= 30_000
    cookie = cookie_of(store, s)
    # pretend the session was created 26 s ago: 4 s of its life are left
    created = int(redis_client.hget(key, CREATED_FIELD))
    redis_client.hset(key, CREATED_FIELD, created - 26_000)
    assert await store.open(cookie).get("a") == 1
    assert 0 < redis_client.pttl(key) <= 4_000
    await store.open(cookie).touch()
    assert 0 < redis_client.pttl(key) <= 4_000
    await store.open(cookie).adjust_timeout(60)  # a longer timeout cannot pass the cap
    assert 0 < redis_client.pttl(key) <= 4_000


async def test_session_past_its_absolute_deadline_is_gone(
    make_store: StoreFactory, redis_client: redis.Redis
) -> None:
    store = make_store(ttl=100, absolute_ttl=30)
    s = store.open(None)
    await s.set("a", 1)
    old_id, key = s.id, s.core.key
    cookie = cookie_of(store, s)
    redis_client.hset(key, CREATED_FIELD, int(time.time() * 1000) - 31_000)
    again = store.open(cookie)
    assert await again.get("a") is None
    assert redis_client.exists(key) == 0
    await again.set("b", 2)  # a write after the deadline starts a new session
    assert again.id != old_id and again.new is True
    assert await store.open(cookie_of(store, again)).to_dict() == {"b": 2}
    assert redis_client.exists(key) == 0


async def test_expired_id_is_never_resurrected(
    store: AsyncSessionStore, existing: str, redis_client: redis.Redis
) -> None:
    old = store.open(existing)
    await old.get("a")
    old_id, old_key = old.id, old.core.key
    redis_client.delete(old_key)  # as if it expired
    s = store.open(existing)
    await s.set("x", 1)
    assert s.id is not None and s.id != old_id
    assert s.new is True
    assert redis_client.exists(old_key) == 0
    cookie = set_cookie(store, s)
    assert cookie is not None and s.id in cookie
    # and a session that expires between two commands of one request
    live = store.open(cookie_of(store, s))
    await live.get("x")
    redis_client.delete(live.core.key)
    gone_key = live.core.key
    await live.incr("n")
    assert live.core.key != gone_key and redis_client.exists(gone_key) == 0
    assert await store.open(cookie_of(store, live)).to_dict() == {"n": 1}


async def test_touch_slides_now(
    store: AsyncSessionStore, existing: str, redis_client: redis.Redis
) -> None:
    s = store.open(existing)
    await s.get("a")
    key = s.core.key
    redis_client.pexpire(key, 2000)
    await s.touch()  # a live session slides again on demand
    assert redis_client.pttl(key) > 90_000
    with pytest.raises(ValueError):
        await s.touch(0)
    with pytest.raises(ValueError):
        await s.adjust_timeout(-1)


@pytest.mark.parametrize("how", ["touch", "adjust_timeout"])
async def test_new_timeout_persists_for_later_requests(
    store: AsyncSessionStore, existing: str, redis_client: redis.Redis, how: str
) -> None:
    s = store.open(existing)
    await getattr(s, how)(20)
    key = s.core.key
    assert 15_000 < redis_client.pttl(key) <= 20_000
    assert redis_client.hget(key, TTL_FIELD) == b"20000"
    redis_client.pexpire(key, 1000)
    assert await store.open(existing).get("a") == 1  # a later request slides to 20 s
    assert 15_000 < redis_client.pttl(key) <= 20_000
    await store.open(existing).set("b", 3)
    assert redis_client.pttl(key) <= 20_000


async def test_timeout_set_before_the_first_write(
    store: AsyncSessionStore, redis_client: redis.Redis
) -> None:
    s = store.open(None)
    await s.adjust_timeout(15)  # nothing stored yet: remembered, no round trip
    assert redis_client.dbsize() == 0
    await s.set("a", 1)
    assert 10_000 < redis_client.pttl(s.core.key) <= 15_000
    cookie = cookie_of(store, s)
    redis_client.pexpire(s.core.key, 1000)
    await store.open(cookie).get("a")
    assert 10_000 < redis_client.pttl(s.core.key) <= 15_000


async def test_timedelta_timeouts(store: AsyncSessionStore, redis_client: redis.Redis) -> None:
    from datetime import timedelta

    s = store.open(None)
    await s.set("a", 1)
    await s.touch(timedelta(seconds=12))
    assert 9_000 < redis_client.pttl(s.core.key) <= 12_000


# --------------------------------------------------------------------------- ids and cookies


async def test_ids_are_long_random_and_not_the_redis_key(
    store: AsyncSessionStore, redis_client: redis.Redis
) -> None:
    seen = set()
    for _ in range(5):
        s = store.open(None)
        await s.set("a", 1)
        assert s.id is not None and hs_ids.is_native_id(s.id)
        assert s.id not in s.core.key
        seen.add(s.id)
    assert len(seen) == 5
    assert all(s_id.encode() not in k for k in redis_client.scan_iter() for s_id in seen)


async def test_default_cookie_attributes(store: AsyncSessionStore) -> None:
    s = store.open(None)
    await s.set("a", 1)
    header = set_cookie(store, s)
    assert header is not None
    parts = [p.strip() for p in header.split(";")]
    assert "HttpOnly" in parts and "SameSite=Lax" in parts and "Path=/" in parts


async def test_signed_cookies(make_store: StoreFactory) -> None:
    store = make_store(secret_keys=["k1"])
    s = store.open(None)
    await s.set("a", 1)
    cookie = cookie_of(store, s)
    value = cookie.split("=", 1)[1]
    assert value == Signer(["k1"]).sign(s.id)
    assert await store.open(cookie).get("a") == 1
    # the bare id, without its signature, is not accepted
    assert await store.open(f"session={s.id}").get("a") is None


def _tamper(cookie: str) -> str:
    last = cookie[-1]
    return cookie[:-1] + ("A" if last != "A" else "B")


async def test_tampered_cookie_is_a_fresh_session_without_round_trips(
    redis_url: str, warm: None, redis_client: redis.Redis
) -> None:
    counter = await AsyncCounter(redis_url).ready()
    store = AsyncSessionStore(redis=counter.client, secret_keys=["k1"], ttl=100)
    try:
        s = store.open(None)
        await s.set("a", 1)
        good = cookie_of(store, s)
        for bad in (_tamper(good), good.replace("session=", "session=X"), "session=garbage"):
            forged = store.open(bad)
            with counter.expect(0):
                assert await forged.get("a") is None
                assert await forged.to_dict() == {}
            assert forged.new is True and forged.id is None
            headers = dict(store.response_headers(forged))
            assert "Set-Cookie" not in headers  # a cookie that does not verify is left alone
            with counter.expect(1):
                await forged.set("b", 2)
            assert forged.id != s.id
            assert await store.open(cookie_of(store, forged)).to_dict() == {"b": 2}
        assert await store.open(good).to_dict() == {"a": 1}  # untouched by the forgeries
    finally:
        await store.aclose()
        await counter.aclose()


async def test_key_rotation(make_store: StoreFactory) -> None:
    old_store = make_store(secret_keys=["old"])
    new_store = make_store(secret_keys=["new", "old"])
    s = old_store.open(None)
    await s.set("a", 1)
    old_cookie = cookie_of(old_store, s)
    assert await new_store.open(old_cookie).get("a") == 1  # still valid after rotation
    t = new_store.open(None)
    await t.set("b", 2)
    new_cookie = cookie_of(new_store, t)
    assert new_cookie.split("=", 1)[1] == Signer(["new"]).sign(t.id)
    assert await old_store.open(new_cookie).get("b") is None  # not signed with "old"
    retired = make_store(secret_keys=["new"])
    assert await retired.open(old_cookie).get("a") is None


async def test_unknown_id_is_never_adopted(
    make_store: StoreFactory, redis_client: redis.Redis
) -> None:
    store = make_store(secret_keys=["k1"])
    unknown = hs_ids.new_id()  # well formed, correctly signed, but never issued
    header = f"session={Signer(['k1']).sign(unknown)}"
    s = store.open(header)
    assert await s.get("a") is None
    await s.set("a", 1)
    assert s.id is not None and s.id != unknown
    assert s.new is True
    assert redis_client.exists(store.config.key_of(unknown)) == 0
    cookie = set_cookie(store, s)
    assert cookie is not None and unknown not in cookie
    # a write as the very first command does not adopt it either
    t = store.open(header)
    await t.incr("n")
    assert t.id not in (None, unknown)
    assert redis_client.exists(store.config.key_of(unknown)) == 0


# --------------------------------------------------------------------------- regenerate, invalidate


async def test_regenerate(
    store: AsyncSessionStore, existing: str, redis_client: redis.Redis
) -> None:
    s = store.open(existing)
    old_id, old_key = s.id, s.core.key
    await s.regenerate()
    assert s.id is not None and s.id != old_id
    assert hs_ids.tag_of(s.id) == hs_ids.tag_of(old_id)  # same cluster slot
    assert redis_client.exists(old_key) == 0
    assert 90_000 < redis_client.pttl(s.core.key) <= 100_000
    new_cookie = cookie_of(store, s)
    assert s.id in new_cookie
    assert await store.open(new_cookie).to_dict() == {"a": 1, "b": "two", "c": [1, 2]}
    assert await store.open(existing).get("a") is None  # the old id stopped working
    await s.set("after", 1)
    assert await store.open(new_cookie).get("after") == 1


async def test_regenerate_as_a_later_command(store: AsyncSessionStore, existing: str) -> None:
    s = store.open(existing)
    await s.set("user", "ann")  # log in ...
    await s.regenerate()  # ... and rotate the id
    await s.set("role", "admin")
    assert await store.open(cookie_of(store, s)).get_many("user", "role", "a") == [
        "ann",
        "admin",
        1,
    ]


async def test_invalidate(
    store: AsyncSessionStore, existing: str, redis_client: redis.Redis
) -> None:
    s = store.open(existing)
    await s.get("a")
    key = s.core.key
    await s.invalidate()
    assert redis_client.exists(key) == 0
    assert s.invalidated is True and s.id is None
    header = set_cookie(store, s)
    assert header is not None and header.startswith("session=;") and "Max-Age=0" in header
    assert await s.get("a") is None
    await s.set("fresh", 1)  # a write after logout starts a new session
    assert s.id is not None
    assert await store.open(cookie_of(store, s)).to_dict() == {"fresh": 1}
    assert await store.open(existing).get("a") is None


async def test_invalidate_as_first_command(
    store: AsyncSessionStore, existing: str, redis_client: redis.Redis
) -> None:
    s = store.open(existing)
    await s.invalidate()
    assert redis_client.dbsize() == 0
    assert "Max-Age=0" in (set_cookie(store, s) or "")


# --------------------------------------------------------------------------- limits and errors


async def test_max_keys(make_store: StoreFactory, redis_client: redis.Redis) -> None:
    store = make_store(max_keys=3)
    s = store.open(None)
    with pytest.raises(LimitExceededError):
        await s.update(a=1, b=2, c=3, d=4)
    assert redis_client.dbsize() == 0
    await s.update(a=1, b=2, c=3)
    with pytest.raises(LimitExceededError) as info:
        await s.set("d", 4)
    assert info.value.key == "d" and "'d'" in str(info.value)
    with pytest.raises(LimitExceededError) as info:
        await s.incr("e")
    assert info.value.key == "e"
    with pytest.raises(LimitExceededError):
        await s.setdefault("f", 1)
    with pytest.raises(LimitExceededError):
        await store.open(cookie_of(store, s)).set("g", 1)  # as the first command too
    await s.set("a", 10)  # replacing a key is fine at the limit
    assert await s.to_dict() == {"a": 10, "b": 2, "c": 3}


async def test_value_and_key_size_limits(
    make_store: StoreFactory, redis_client: redis.Redis
) -> None:
    store = make_store(max_value_size=100, max_key_length=10)
    s = store.open(None)
    with pytest.raises(LimitExceededError) as info:
        await s.set("big", "x" * 200)
    assert info.value.key == "big"
    with pytest.raises(LimitExceededError) as info:
        await s.set("k" * 11, 1)
    assert info.value.key == "k" * 11
    with pytest.raises(LimitExceededError) as info:
        await s.update(ok=1, huge="y" * 200)
    assert info.value.key == "huge"
    assert redis_client.dbsize() == 0  # nothing at all was written


async def test_bad_keys(store: AsyncSessionStore, existing: str) -> None:
    s = store.open(existing)
    with pytest.raises(InvalidKeyError) as info:
        await s.set("\x00c", 1)
    assert info.value.key == "\x00c"
    with pytest.raises(InvalidKeyError):
        await s.get("\x00c")
    with pytest.raises(InvalidKeyError) as info:
        await s.set(1, 1)  # type: ignore[arg-type]
    assert isinstance(info.value, TypeError) and info.value.key == 1
    assert s.accessed is False  # rejected before anything was sent


async def test_codec_and_type_errors_name_the_key(
    store: AsyncSessionStore, existing: str, redis_client: redis.Redis
) -> None:
    s = store.open(existing)
    with pytest.raises(EncodeError) as enc:
        await s.set("obj", object())
    assert enc.value.key == "obj"
    await s.get("a")
    redis_client.hset(s.core.key, "junk", b"\xff{not json")
    with pytest.raises(DecodeError) as dec:
        await s.get("junk")
    assert dec.value.key == "junk"
    with pytest.raises(ValueTypeError) as vt:
        await s.incr("b")
    assert vt.value.key == "b"
    for err in (enc.value, dec.value, vt.value):
        assert isinstance(err, HashSessionError)
    assert await store.open(existing).get("b") == "two"


async def test_backend_error_on_a_stopped_server(make_server: Callable[..., Any]) -> None:
    server = make_server()
    store = AsyncSessionStore(redis=server.url, ttl=100)
    s = store.open(None)
    await s.set("a", 1)
    cookie = cookie_of(store, s)
    server.stop()
    started = time.monotonic()
    for op in (lambda: s.get("a"), lambda: s.set("a", 2), lambda: store.open(cookie).get("a")):
        with pytest.raises(BackendError) as info:
            await op()
        assert isinstance(info.value, HashSessionError)
        assert isinstance(info.value.__cause__, RedisConnectionError)
    fresh = store.open(None)
    with pytest.raises(BackendError) as info:
        await fresh.set("x", 1)  # creating a session is loud too
    assert isinstance(info.value.__cause__, RedisConnectionError)
    assert time.monotonic() - started < 10
    await store.aclose()


# --------------------------------------------------------------------------- concurrency


@pytest.fixture(params=["default-client", "large-pool"])
async def busy_store(
    request: pytest.FixtureRequest, make_store: StoreFactory, redis_url: str
) -> AsyncIterator[AsyncSessionStore]:
    """A store for 200 commands in flight at once.

    ``default-client`` is ``AsyncSessionStore(redis=url)``, exactly as users write it;
    ``large-pool`` hands the store a client whose pool allows 1000 connections (per
    node on a cluster), so the session logic is checked apart from the URL's limits.
    """
    if request.param == "default-client":
        yield make_store()
        return
    client = async_client(redis_url + ("&" if "?" in redis_url else "?") + "max_connections=1000")
    yield make_store(redis=client)
    await client.aclose()


@pytest.fixture
async def busy_existing(busy_store: AsyncSessionStore) -> str:
    s = busy_store.open(None)
    await s.update({"a": 1})
    return cookie_of(busy_store, s)


async def test_concurrent_writers_of_different_keys_all_land(
    busy_store: AsyncSessionStore, busy_existing: str, redis_client: redis.Redis
) -> None:
    async def write(i: int) -> None:
        s = busy_store.open(busy_existing)
        assert await s.get(f"k{i}") is None
        await asyncio.sleep(0)
        await s.set(f"k{i}", i)

    await asyncio.gather(*(write(i) for i in range(200)))
    data = await busy_store.open(busy_existing).to_dict()
    assert data == {"a": 1, **{f"k{i}": i for i in range(200)}}
    assert redis_client.dbsize() == 1


async def test_concurrent_increments_are_exact(
    busy_store: AsyncSessionStore, busy_existing: str
) -> None:
    async def bump() -> int:
        return await busy_store.open(busy_existing).incr("counter")

    results = await asyncio.gather(*(bump() for _ in range(200)))
    assert sorted(results) == list(range(1, 201))
    assert await busy_store.open(busy_existing).get("counter") == 200


@pytest.mark.parametrize(
    "settings",
    [{}, {"edit_retries": 3}, {"edit_timeout": 0.005}],
    ids=["default", "3-tries", "5ms-budget"],
)
async def test_concurrent_edits_lose_nothing(
    make_store: StoreFactory, settings: dict[str, Any]
) -> None:
    store = make_store(**settings)
    s = store.open(None)
    await s.set("a", 1)
    cookie = cookie_of(store, s)

    async def append(i: int) -> None:
        async with store.open(cookie).edit("l", []) as items:
            items.append(i)

    outcomes = await asyncio.gather(*(append(i) for i in range(50)), return_exceptions=True)
    failed = [i for i, o in enumerate(outcomes) if o is not None]
    stored = await store.open(cookie).get("l")
    # Every edit that returned landed, exactly once; every other one raised ConflictError.
    assert sorted(stored) == [i for i in range(50) if i not in failed]
    assert all(isinstance(outcomes[i], ConflictError) for i in failed), outcomes
    assert len(failed) < 50
    if not settings:  # the default time budget gets 50 racing edits through
        assert failed == [], f"{len(failed)} of 50 concurrent edits raised"


async def test_concurrent_applies_lose_nothing(make_store: StoreFactory) -> None:
    store = make_store()
    s = store.open(None)
    await s.set("a", 1)
    cookie = cookie_of(store, s)

    async def add(i: int) -> None:
        await store.open(cookie).apply("s", lambda v: [*v, i], [])

    await asyncio.gather(*(add(i) for i in range(30)))
    assert sorted(await store.open(cookie).get("s")) == list(range(30))


async def test_logout_racing_writes_leaves_no_immortal_key(
    store: AsyncSessionStore, redis_client: redis.Redis
) -> None:
    for round_ in range(5):
        redis_client.flushdb()
        s = store.open(None)
        await s.set("user", "ann")
        cookie = cookie_of(store, s)
        old_key = s.core.key

        async def writer(i: int, cookie: str = cookie) -> None:
            w = store.open(cookie)
            for j in range(3):
                await w.set(f"w{i}", j)
                await asyncio.sleep(0)

        async def logout(cookie: str = cookie, delay: int = round_) -> None:
            out = store.open(cookie)
            for _ in range(delay):
                await asyncio.sleep(0)
            await out.invalidate()

        await asyncio.gather(*(writer(i) for i in range(40)), logout())
        assert redis_client.exists(old_key) == 0, "the logged-out session survived"
        assert_every_key_expires(redis_client)
        assert await store.open(cookie).to_dict() == {}


async def test_concurrent_first_writes_of_new_sessions_get_distinct_ids(
    store: AsyncSessionStore, redis_client: redis.Redis
) -> None:
    sessions = [store.open(None) for _ in range(100)]
    await asyncio.gather(*(s.set("n", i) for i, s in enumerate(sessions)))
    assert len({s.id for s in sessions}) == 100
    assert redis_client.dbsize() == 100
    assert_every_key_expires(redis_client)
