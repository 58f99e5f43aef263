"""Keyed digests of user ids (issue 13, item 2), on every topology.

The per-user index key and the owner field hold an HMAC of the user id keyed with the
store's ``user_key``, so whoever can list or read Redis learns no user id. Without a
``user_key`` the per-user features refuse, before any Redis command. Data indexed
before (the id itself in the owner field, an unkeyed BLAKE2b digest naming the index)
is still found, and moves to the keyed layout the next time its entry is refreshed.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from conftest import Counted
from hashsession import ConfigurationError, Session, SessionStore
from hashsession.aio import AsyncSessionStore
from hashsession.compat import drsession
from hashsession.config import user_digest
from hashsession.scripts import (
    EVERY,
    INDEXED_FIELD,
    OWNER_FIELD,
)
from hashsession.topology import sync_client

pytestmark = pytest.mark.all_topologies

USER_KEY = "a user key for the keyed digest tests"
StoreFactory = Callable[..., SessionStore]


@pytest.fixture
def warm(redis_client: redis.Redis) -> None:
    for script in EVERY:
        redis_client.script_load(script.source)


def key(session: Session) -> str:
    assert session.core.key is not None
    return session.core.key


def logged_in(store: SessionStore, user: str) -> tuple[Session, str]:
    session = store.open(None)
    session["a"] = 1
    session.login(user)
    assert session.id is not None
    return session, store.config.cookie_value(session.id)


def entries(client: Any, index: str) -> list[bytes]:
    """The session keys in an index (not the markers of logins in progress on a Cluster)."""
    return [m for m in client.zrange(index, 0, -1) if not m.startswith(b"\x00")]


def everything_in(client: Any) -> bytes:
    """Every key name, hash field and value, and sorted set member in Redis, as bytes."""
    out: list[bytes] = []
    for name in client.scan_iter(count=1000):
        out.append(name)
        kind = client.type(name)
        if kind == b"hash":
            for field, value in client.hgetall(name).items():
                out += [field, value]
        elif kind == b"zset":
            out += client.zrange(name, 0, -1)
    return b"\n".join(out)


# --------------------------------------------------------------------------- refusal


def test_per_user_features_refuse_without_a_user_key(
    make_store: StoreFactory, counted: Counted
) -> None:
    store = make_store(redis=counted.client)
    session = store.open(None)
    session["a"] = 1
    assert session.id is not None
    with counted.expect(0):  # refused before anything is sent
        for call in (
            lambda: session.login("ann"),
            lambda: store.sessions_of("ann"),
            lambda: store.revoke_user("ann"),
            lambda: store.revoke(session.id or "", user_id="ann"),
            lambda: store.revoke("A" * 24 + "." + "0" * 40, user_id="ann"),
        ):
            with pytest.raises(ConfigurationError) as info:
                call()
            assert info.value.setting == "user_key"
            assert "user_key" in str(info.value)
    assert session.get("a") == 1  # the session itself is untouched
    assert store.revoke(session.id) is True  # by id, no user: nothing to digest


def test_the_user_key_is_checked_at_start_up(make_store: StoreFactory) -> None:
    for bad, setting in (
        ({"max_sessions_per_user": 3}, "user_key"),  # a per-user feature, no key
        ({"user_key": "short"}, "user_key"),
        ({"user_key": b"x" * 15}, "user_key"),
        ({"user_key": 12345678901234567}, "user_key"),
        ({"user_key": USER_KEY, "legacy_user_index": "yes"}, "legacy_user_index"),
    ):
        with pytest.raises(ConfigurationError) as info:
            make_store(**bad)
        assert info.value.setting == setting
    assert make_store(user_key=b"k" * 16).config.user_key == b"k" * 16
    assert make_store(user_key="k" * 16, max_sessions_per_user=2).config.max_sessions_per_user == 2


def test_async_per_user_features_refuse_without_a_user_key(redis_url: str) -> None:
    async def check() -> None:
        store = AsyncSessionStore(redis=redis_url, ttl=100)
        try:
            session = store.open(None)
            with pytest.raises(ConfigurationError, match="user_key"):
                await session.login("ann")
            with pytest.raises(ConfigurationError, match="user_key"):
                await store.sessions_of("ann")
            with pytest.raises(ConfigurationError, match="user_key"):
                await store.revoke_user("ann")
            assert session.id is None
        finally:
            await store.aclose()

    asyncio.run(check())


# --------------------------------------------------------------------------- what Redis holds


def test_redis_holds_no_user_id(make_store: StoreFactory, redis_client: redis.Redis) -> None:
    store = make_store(user_key=USER_KEY, max_sessions_per_user=5)
    user = "alice@example.com"
    one, _ = logged_in(store, user)
    logged_in(store, user)
    assert len(store.sessions_of(user, current=one)) == 2
    stored = everything_in(redis_client)
    assert user.encode() not in stored
    assert user_digest(user).encode() not in stored  # the unkeyed digest anyone can compute
    tag = store.config.user_tag(user)
    assert len(tag) == 32 and tag.encode() in stored
    assert redis_client.hget(key(one), OWNER_FIELD) == b"\x00" + tag.encode()
    assert redis_client.exists(f"{store.config.prefix}u:{tag}") == 1
    # Keyed: another key gives another digest; the same key, the same one.
    assert make_store(user_key="another user key!!").config.user_tag(user) != tag
    assert make_store(user_key=USER_KEY).config.user_tag(user) == tag
    assert store.config.user_tag("alice@example.org") != tag


def test_a_drop_in_layout_keys_its_digests_too(redis_url: str, redis_client: redis.Redis) -> None:
    client = sync_client(redis_url)
    app = drsession.SessionMiddleware(lambda e, s: [], redis_server=client, user_key=USER_KEY)
    store = app.store
    session = store.open(None)
    session["a"] = 1
    session.login("bob")
    assert [i.current for i in store.sessions_of("bob", current=session)] == [True]
    assert b"bob" not in everything_in(redis_client)
    assert store.revoke_user("bob") == 1
    client.close()


# --------------------------------------------------------------------------- legacy data


def make_legacy(store: SessionStore, client: Any, session: Session, user: str) -> str:
    """Rewrite ``session`` as hashsession wrote it before user_key: the id in the owner
    field, the entry in the index named by the unkeyed digest. Its legacy index key."""
    tag = store.config.user_tag(user)
    keyed = store.config.index_key_of(tag)
    legacy = store.config.index_key_of(user_digest(user))
    score = client.zscore(keyed, key(session))
    assert score is not None
    client.zrem(keyed, key(session))
    client.zadd(legacy, {key(session): score})
    client.pexpire(legacy, 100_000)
    client.hset(key(session), OWNER_FIELD, user)
    return legacy


@pytest.fixture
def kstore(make_store: StoreFactory) -> SessionStore:
    return make_store(user_key=USER_KEY)


def test_legacy_sessions_are_listed_and_revoked(
    kstore: SessionStore, redis_client: redis.Redis
) -> None:
    old, _ = logged_in(kstore, "ann")
    new, _ = logged_in(kstore, "ann")
    make_legacy(kstore, redis_client, old, "ann")
    infos = kstore.sessions_of("ann", current=old)
    assert len(infos) == 2 and [i.current for i in infos].count(True) == 1
    (legacy_handle,) = [i.handle for i in infos if i.current]
    assert legacy_handle.startswith(user_digest("ann") + ".")  # found in the legacy index
    assert kstore.revoke(legacy_handle, user_id="bob") is False
    assert kstore.revoke(legacy_handle, user_id="ann") is True
    assert redis_client.exists(key(old)) == 0
    again, _ = logged_in(kstore, "ann")
    make_legacy(kstore, redis_client, again, "ann")
    assert kstore.revoke(again.id or "", user_id="bob") is False
    assert kstore.revoke(again.id or "", user_id="ann") is True  # a legacy owner field
    last, _ = logged_in(kstore, "ann")
    make_legacy(kstore, redis_client, last, "ann")
    assert kstore.revoke_user("ann") == 2  # new and last: both indexes
    assert redis_client.exists(key(new), key(last)) == 0


def test_a_legacy_entry_moves_to_the_keyed_index_when_refreshed(
    kstore: SessionStore, redis_client: redis.Redis
) -> None:
    session, cookie = logged_in(kstore, "ann")
    legacy = make_legacy(kstore, redis_client, session, "ann")
    redis_client.hset(key(session), INDEXED_FIELD, 0)  # its index entry is due
    assert kstore.open_id(cookie).get("a") == 1  # any request: OPEN reports the owner
    assert redis_client.hget(key(session), OWNER_FIELD) == kstore.config.owner_value("ann").encode()
    assert redis_client.exists(legacy) == 0  # emptied, so gone
    assert entries(redis_client, kstore.config.index_key("ann")) == [key(session).encode()]
    (info,) = kstore.sessions_of("ann")
    assert info.handle.startswith(kstore.config.user_tag("ann") + ".")


def test_async_a_legacy_entry_moves_too(
    redis_url: str, kstore: SessionStore, redis_client: redis.Redis
) -> None:
    session, cookie = logged_in(kstore, "ann")
    legacy = make_legacy(kstore, redis_client, session, "ann")
    redis_client.hset(key(session), INDEXED_FIELD, 0)

    async def visit() -> None:
        store = AsyncSessionStore(redis=redis_url, ttl=100, user_key=USER_KEY)
        try:
            assert await store.open_id(cookie).get("a") == 1
            assert len(await store.sessions_of("ann")) == 1
        finally:
            await store.aclose()

    asyncio.run(visit())
    assert redis_client.hget(key(session), OWNER_FIELD) == kstore.config.owner_value("ann").encode()
    assert redis_client.exists(legacy) == 0


def test_logging_in_a_legacy_session_again_moves_it(
    kstore: SessionStore, redis_client: redis.Redis
) -> None:
    session, cookie = logged_in(kstore, "ann")
    legacy = make_legacy(kstore, redis_client, session, "ann")
    later = kstore.open_id(cookie)
    later.login("ann")
    assert redis_client.exists(legacy) == 0
    assert entries(redis_client, kstore.config.index_key("ann")) == [key(later).encode()]
    assert redis_client.hget(key(later), OWNER_FIELD) == kstore.config.owner_value("ann").encode()


def test_both_indexes_cost_one_more_command_in_the_same_pipelines(
    make_store: StoreFactory, redis_client: redis.Redis, counted: Counted, warm: None
) -> None:
    """With entries in both indexes: the listing and the drop read both in one pipeline,
    and the unindexing rides with the deletes (on a Cluster, one pipeline after them);
    each costs one more round trip on a Cluster only when the two are on two nodes."""
    store = make_store(redis=counted.client, user_key=USER_KEY)
    keyed_one, _ = logged_in(store, "ann")
    keyed_two, _ = logged_in(store, "ann")
    old, _ = logged_in(store, "ann")
    legacy = make_legacy(store, redis_client, old, "ann")
    indexes = counted.pipeline_cost([store.config.index_key("ann"), legacy])
    sessions = [key(s) for s in (keyed_one, keyed_two, old)]
    with counted.expect(indexes + counted.pipeline_cost(sessions)):
        infos = store.sessions_of("ann")
    assert len(infos) == 3
    apart = store.config.same_slot_ids  # on a Cluster the unindexing follows the deletes
    with counted.expect(indexes + counted.pipeline_cost(sessions) + (indexes if apart else 0)):
        assert store.revoke_user("ann") == 3
    assert redis_client.exists(*sessions) == 0
    assert redis_client.exists(legacy) == 0
    assert entries(redis_client, store.config.index_key("ann")) == []


def test_without_legacy_lookups_only_keyed_entries_count(
    make_store: StoreFactory, redis_client: redis.Redis, counted: Counted, warm: None
) -> None:
    store = make_store(redis=counted.client, user_key=USER_KEY, legacy_user_index=False)
    old, _ = logged_in(store, "ann")
    new, _ = logged_in(store, "ann")
    make_legacy(store, redis_client, old, "ann")
    with counted.expect(1 + counted.pipeline_cost([key(new)])):  # one index, one session
        (info,) = store.sessions_of("ann")
    assert info.handle.endswith(hashlib.sha1(key(new).encode()).hexdigest())
    assert store.revoke(old.id or "", user_id="ann") is False  # the id itself no longer counts


def test_a_store_without_user_key_keeps_refreshing_legacy_entries(
    make_store: StoreFactory, kstore: SessionStore, redis_client: redis.Redis
) -> None:
    session, cookie = logged_in(kstore, "ann")
    legacy = make_legacy(kstore, redis_client, session, "ann")
    redis_client.zadd(legacy, {key(session): 1})  # about to drop out
    redis_client.hset(key(session), INDEXED_FIELD, 0)
    plain = make_store()  # an upgraded deployment that has not set user_key yet
    assert plain.open(f"session={cookie}").get("a") == 1  # no error on the request path
    score = redis_client.zscore(legacy, key(session))
    assert score is not None and score > 1  # refreshed where it is
    assert redis_client.hget(key(session), OWNER_FIELD) == b"ann"


@pytest.fixture(autouse=True)
def every_key_expires(redis_client: redis.Redis) -> Iterator[None]:
    """After each test, nothing it left in Redis lacks a TTL."""
    yield
    for name in redis_client.scan_iter(count=1000):
        assert redis_client.pttl(name) > 0, f"{name!r} has no TTL"
