"""Value edits on AsyncSession: the same scripts as the sync session, awaited.

The behaviour is tested in depth in test_value_edits.py; here each operation is
checked through the asyncio flavour (results, stored bytes, errors, a new
session, a deleted one, one round trip each) and under 16 concurrent tasks.
Every test runs on each topology (see conftest).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis

from counting import AsyncCounter
from hashsession import ConflictError, LimitExceededError, ValueTypeError
from hashsession.aio import AsyncSession, AsyncSessionStore
from hashsession.codecs import JSONCodec
from hashsession.scripts import CREATED_FIELD, EVERY

pytestmark = pytest.mark.all_topologies

StoreFactory = Callable[..., AsyncSessionStore]
AsyncOp = Callable[[AsyncSession], Awaitable[Any]]
JSON = JSONCodec()


def cookie_of(store: AsyncSessionStore, session: AsyncSession) -> str:
    cookies = [v for k, v in store.response_headers(session) if k == "Set-Cookie"]
    assert len(cookies) == 1, store.response_headers(session)
    return cookies[0].split(";", 1)[0]


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
    s = store.open(None)
    await s.update({"l": [1, 2], "d": {"a": 1, "b": 2}, "n": 5})
    return cookie_of(store, s)


async def test_every_value_edit(
    store: AsyncSessionStore, existing: str, redis_client: redis.Redis
) -> None:
    s = store.open(existing)
    assert await s.append("l", 2**53 + 1) == 3
    assert await s.extend("l", [0.1 + 0.2, "é,]"]) == 5
    assert await s.append("l", {"x": [1]}, max_len=5) == 5  # 1 is dropped
    assert await s.add("l", 0.1 + 0.2) is False
    assert await s.add("l", "new") is True
    assert await s.discard("l", 2) is True
    assert await s.discard("l", 2) is False
    assert await s.discard("l", 1) is False
    assert await s.set_in("d", "c", [3]) is None
    assert await s.set_in("d", "a", 0) is None
    assert await s.delete_in("d", "b") is True
    assert await s.delete_in("d", "b") is False
    expected_l = [2**53 + 1, 0.1 + 0.2, "é,]", {"x": [1]}, "new"]
    again = store.open(existing)
    assert await again.get("l") == expected_l
    assert await again.get("d") == {"a": 0, "c": [3]}
    key = s.core.key
    assert key is not None
    assert redis_client.hget(key, "l") == JSON.dumps(expected_l).encode()
    assert redis_client.hget(key, "d") == b'{"a":0,"c":[3]}'


async def test_errors_name_the_key(make_store: StoreFactory) -> None:
    store = make_store(max_value_size=16)
    s = store.open(None)
    await s.update(d={}, l=[])
    with pytest.raises(ValueTypeError) as info:
        await s.append("d", 1)
    assert info.value.key == "d" and "holds a dict, not a list" in str(info.value)
    with pytest.raises(ValueTypeError) as info:
        await store.open(cookie_of(store, s)).set_in("l", "a", 1)  # as the first command
    assert info.value.key == "l"
    assert await s.extend("l", ["abcd", "efgh"]) == 2
    with pytest.raises(LimitExceededError) as limit:
        await s.append("l", "ijkl")
    assert limit.value.key == "l"
    assert await store.open(cookie_of(store, s)).get("l") == ["abcd", "efgh"]


@pytest.mark.parametrize(
    ("op", "value"),
    [
        (lambda s: s.append("k", 1), [1]),
        (lambda s: s.extend("k", [1, 2], max_len=1), [2]),
        (lambda s: s.add("k", 1), [1]),
        (lambda s: s.set_in("k", "a", 1), {"a": 1}),
    ],
    ids=["append", "extend", "add", "set_in"],
)
async def test_a_first_write_creates_and_a_deleted_session_is_not_resurrected(
    store: AsyncSessionStore, redis_client: redis.Redis, op: AsyncOp, value: Any
) -> None:
    fresh = store.open(None)
    await op(fresh)
    key = fresh.core.key
    assert key is not None and redis_client.hexists(key, CREATED_FIELD)
    assert 99_000 < redis_client.pttl(key) <= 100_000
    cookie = cookie_of(store, fresh)
    live = store.open(cookie)
    assert await live.get("k") == value
    await store.open(cookie).invalidate()
    await op(live)
    assert redis_client.exists(key) == 0, "the logged-out session came back"
    assert live.core.key != key
    assert await store.open(cookie_of(store, live)).to_dict() == {"k": value}


async def test_removing_from_nothing_costs_nothing(
    store: AsyncSessionStore, redis_client: redis.Redis
) -> None:
    s = store.open(None)
    assert await s.discard("k", 1) is False
    assert await s.delete_in("k", "a") is False
    assert s.id is None and redis_client.dbsize() == 0


@pytest.fixture
async def counter(redis_url: str, redis_client: redis.Redis) -> AsyncIterator[AsyncCounter]:
    for script in EVERY:
        assert redis_client.script_load(script.source) == script.sha
    c = await AsyncCounter(redis_url).ready()
    yield c
    await c.aclose()


VALUE_OPS: list[tuple[str, AsyncOp]] = [
    ("append", lambda s: s.append("l", 3)),
    ("append-max_len", lambda s: s.append("l", 3, max_len=2)),
    ("extend", lambda s: s.extend("l", [3, 4])),
    ("add", lambda s: s.add("l", 3)),
    ("discard", lambda s: s.discard("l", 1)),
    ("set_in", lambda s: s.set_in("d", "c", 3)),
    ("delete_in", lambda s: s.delete_in("d", "a")),
]


@pytest.mark.parametrize("op", [op for _, op in VALUE_OPS], ids=[n for n, _ in VALUE_OPS])
async def test_each_value_edit_is_one_round_trip(
    make_store: StoreFactory, counter: AsyncCounter, redis_client: redis.Redis, op: AsyncOp
) -> None:
    store = make_store(redis=counter.client)
    first = store.open(None)
    await first.update(l=[1, 2], d={"a": 1, "b": 2})
    cookie = cookie_of(store, first)
    key = first.core.key
    redis_client.pexpire(key, 3000)
    s = store.open(cookie)
    with counter.expect(1):  # the first command of the request, which slides the TTL
        await op(s)
    assert 90_000 < redis_client.pttl(key) <= 100_000
    with counter.expect(1):
        await op(s)
    fresh = store.open(None)
    with counter.expect(1):  # a new session: created with the value, metadata and TTL
        await fresh.append("l", 1)


async def test_sixteen_tasks_appending_lose_nothing(
    store: AsyncSessionStore, existing: str
) -> None:
    async def editor(t: int) -> None:
        for i in range(40):
            await store.open(existing).append("log", [t, i])  # one request per edit

    await asyncio.gather(*(editor(t) for t in range(16)))
    log = await store.open(existing).get("log")
    assert sorted(map(tuple, log)) == [(t, i) for t in range(16) for i in range(40)]
    for t in range(16):
        assert [i for tt, i in log if tt == t] == list(range(40))


async def test_sixteen_tasks_editing_under_the_time_budget_never_conflict(
    store: AsyncSessionStore, existing: str
) -> None:
    """edit() with the default settings: the backoff and time budget absorb the races."""
    conflicts: list[ConflictError] = []

    async def editor(t: int) -> None:
        for i in range(25):
            try:
                async with store.open(existing).edit("log", []) as log:
                    log.append([t, i])
            except ConflictError as exc:  # counted: the assertion below reports them
                conflicts.append(exc)

    await asyncio.gather(*(editor(t) for t in range(16)))
    assert conflicts == []
    log = await store.open(existing).get("log")
    assert sorted(map(tuple, log)) == [(t, i) for t in range(16) for i in range(25)]


async def test_pickle_falls_back_to_an_optimistic_write(make_store: StoreFactory) -> None:
    store = make_store(codec="pickle")
    s = store.open(None)
    assert await s.append("l", (1, 2)) == 1
    assert await s.add("l", (1, 2)) is False
    assert await s.discard("l", (1, 2)) is True
    await s.set_in("d", "a", {1, 2})
    assert await s.delete_in("d", "b") is False
    cookie = cookie_of(store, s)

    async def editor(t: int) -> None:
        for i in range(10):
            await store.open(cookie).append("log", (t, i))

    await asyncio.gather(*(editor(t) for t in range(8)))
    again = store.open(cookie)
    assert sorted(await again.get("log")) == [(t, i) for t in range(8) for i in range(10)]
    assert await again.get("d") == {"a": {1, 2}}
