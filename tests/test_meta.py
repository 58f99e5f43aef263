"""Reserved metadata fields (flash queues, CSRF tokens) and the store's class hooks.

Metadata lives in the session's own hash, under names no user key can take,
so it shares the session's TTL and vanishes with it, yet iteration, ``len()``
and ``clear()`` never show or touch it.
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
import redis

from hashsession import Session, SessionStore
from hashsession.aio import AsyncSession, AsyncSessionStore
from hashsession.protocol import SessionCore, load_meta, load_queue

pytestmark = pytest.mark.all_topologies


def test_meta_is_hidden_from_the_mapping_and_ends_with_clear(store: SessionStore) -> None:
    s = store.open(None)
    s["a"] = 1
    s.meta_set("csrf", "tok")
    assert dict(s) == {"a": 1}
    assert len(s) == 1
    assert list(s) == ["a"]
    s.clear()  # ends the session, metadata and all
    assert s.meta_get("csrf") is None
    assert len(s) == 0


def test_meta_set_on_a_new_session_creates_it_with_a_ttl(
    store: SessionStore, redis_client: redis.Redis
) -> None:
    s = store.open(None)
    s.meta_set("csrf", {"t": "x"})
    assert s.id is not None
    assert redis_client.pttl(s.core.key) > 0
    again = store.open_id(store.config.cookie_value(s.id))
    assert again.meta_get("csrf") == {"t": "x"}
    assert again.meta_get("missing") is None


def test_meta_setdefault_keeps_the_first_value(store: SessionStore) -> None:
    s = store.open(None)
    assert s.meta_setdefault("csrf", "first") == "first"
    assert s.meta_setdefault("csrf", "second") == "first"


def test_meta_push_and_pop_a_queue(store: SessionStore) -> None:
    s = store.open(None)
    assert s.meta_push("flash", "saved")
    assert s.meta_push("flash", {"msg": "line\nbreak"})
    assert not s.meta_push("flash", "saved", unique=True)
    assert s.meta_push("flash", "saved")
    assert load_queue(s.meta_pop("flash")) == ["saved", {"msg": "line\nbreak"}, "saved"]
    assert load_queue(s.meta_pop("flash")) == []


def test_concurrent_pushes_all_land(store: SessionStore) -> None:
    first = store.open(None)
    first.meta_push("q", -1)
    cookie = store.config.cookie_value(first.id or "")

    def push(worker: int) -> None:
        s = store.open_id(cookie)
        for i in range(50):
            s.meta_push("q", worker * 1000 + i)

    threads = [threading.Thread(target=push, args=(w,)) for w in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    items = load_queue(store.open_id(cookie).meta_pop("q"))
    assert sorted(items) == [-1, *sorted(w * 1000 + i for w in range(4) for i in range(50))]


def test_meta_is_json_whatever_the_codec(make_store: Any, redis_client: redis.Redis) -> None:
    store = make_store(codec="pickle")
    s = store.open(None)
    s.meta_set("csrf", "tok")
    assert redis_client.hget(s.core.key, "\x00csrf") == b'"tok"'
    assert load_meta(b'"tok"') == "tok"


def test_meta_on_an_expired_session_starts_a_new_one(
    store: SessionStore, redis_client: redis.Redis
) -> None:
    s = store.open(None)
    s["a"] = 1
    old = s.id
    cookie = store.config.cookie_value(old or "")
    redis_client.delete(s.core.key or "")
    again = store.open_id(cookie)
    assert again.meta_push("flash", "hi")
    assert again.id != old
    assert redis_client.pttl(again.core.key) > 0


async def test_async_meta_operations(redis_url: str) -> None:
    store = AsyncSessionStore(redis=redis_url, ttl=100)
    try:
        s = store.open(None)
        await s.set("a", 1)
        await s.meta_set("csrf", "tok")
        assert await s.meta_get("csrf") == "tok"
        assert await s.meta_setdefault("csrf", "other") == "tok"
        assert await s.meta_push("flash", "one")
        assert not await s.meta_push("flash", "one", unique=True)
        assert load_queue(await s.meta_pop("flash")) == ["one"]
        assert await s.to_dict() == {"a": 1}
        assert await s.length() == 1
    finally:
        await store.aclose()


def test_store_class_hooks_pick_the_session_and_core_classes(redis_url: str) -> None:
    class MyCore(SessionCore):
        pass

    class MySession(Session):
        pass

    class MyStore(SessionStore):
        core_class = MyCore
        session_class = MySession

    store = MyStore(redis=redis_url)
    try:
        s = store.open(None)
        assert type(s) is MySession
        assert type(s.core) is MyCore
        assert type(store.open_id(None).core) is MyCore
    finally:
        store.close()


def test_async_store_session_class_hook(redis_url: str) -> None:
    class MyAsync(AsyncSession):
        pass

    class MyStore(AsyncSessionStore):
        session_class = MyAsync

    assert type(MyStore(redis=redis_url).open(None)) is MyAsync
