"""The ``near_cache`` setting on Sentinel and on a Redis Cluster (sync store).

Round trips are counted at the client (the tracking links' commands included); changes
come from another process or another client; links are killed with CLIENT KILL; the
Sentinel failover runs on a private private_sentinel (the shared one is never failed over);
the slot migration moves a slot of the shared cluster and moves it back. No wall-clock
assertion: waits are bounded polls.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from counting import Counted
from hashsession import BackendError, ConfigurationError, SessionStore
from hashsession.nearcache import NearCache
from hashsession.nearcluster import ClusterLinks
from near_writer import Writer
from test_near_cache_store import new_session, read
from topologies import (
    ClusterSetup,
    SentinelSetup,
    master_serving,
    migrate_slot,
    node_id,
    role_of,
    wait_for,
)

both = pytest.mark.parametrize("redis_topology", ["sentinel", "cluster"], indirect=True)


@pytest.fixture
def near(counted: Counted) -> Iterator[SessionStore]:
    store = SessionStore(redis=counted.client, ttl=100, near_cache=True)
    try:
        yield store
    finally:
        store.close()


def _cache(store: SessionStore) -> NearCache:
    cache = store.near_cache
    assert cache is not None
    return cache


def _warm(store: SessionStore, cookie: str, value: Any) -> None:
    """Read until the session is served from memory (a refresh's own change comes back
    once as an invalidation, so the first reads may go to Redis). On a cluster a replica
    reports the session's creation again when it applies it, which on a busy machine can
    come after the first reads: wait until no push has come for 0.2 s (the link's thread
    applies what arrives every 50 ms), then read again."""
    cache = _cache(store)
    wait_for("the cache to come on", lambda: cache.on, 20)
    for _ in range(3):
        assert read(store, cookie) == value
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        seen = cache.stamp()
        time.sleep(0.2)
        if cache.stamp() == seen:
            break
    for _ in range(3):
        assert read(store, cookie) == value


@both
def test_a_warm_read_costs_no_round_trip(near: SessionStore, counted: Counted) -> None:
    cookie = new_session(near, cart=[1], user="ann")
    _warm(near, cookie, [1])
    session = near.open(cookie)
    assert "user" in session and "nothing" not in session  # these fields cached too
    counted.reset()
    for _ in range(50):
        session = near.open(cookie)
        assert session["cart"] == [1]
        assert "user" in session and "nothing" not in session
    assert counted.commands == []


@both
@pytest.mark.parametrize("op", ["set", "logout"])
def test_a_change_in_another_process_is_seen_1_ms_after_its_ack(
    near: SessionStore, redis_url: str, op: str
) -> None:
    stale = served = 0
    cache = _cache(near)
    with Writer(redis_url) as writer:
        for n in range(200):
            cookie = new_session(near, cart=-1)
            for _ in range(2):  # warm: the next read comes from memory
                assert read(near, cookie) == -1
            served += cache.on
            writer.change(op, cookie, n)  # acknowledged
            time.sleep(0.001)
            stale += read(near, cookie) != (n if op == "set" else None)
    assert stale == 0
    assert served == 200  # the cache was on throughout: the reads were really cached


@both
def test_flushall_everywhere_is_seen(
    near: SessionStore, redis_deployment: SentinelSetup | ClusterSetup
) -> None:
    cookie = new_session(near, cart=1)
    _warm(near, cookie, 1)
    redis_deployment.flushall()
    time.sleep(0.001)  # the server writes the push a moment after the reply
    assert read(near, cookie) is None


# ----------------------------------------------------------------- Redis Cluster


def _links(store: SessionStore) -> ClusterLinks:
    near = store._near
    assert near is not None and isinstance(near.tracker, ClusterLinks)
    return near.tracker


@pytest.mark.parametrize("redis_topology", ["cluster"], indirect=True)
def test_cluster_links_every_node(near: SessionStore, cluster_setup: ClusterSetup) -> None:
    links = _links(near)
    assert set(links.links) == {f"127.0.0.1:{s.port}" for s in cluster_setup.nodes}
    assert all(link.up for link in links.links.values())


@pytest.mark.parametrize("redis_topology", ["cluster"], indirect=True)
def test_a_killed_node_link_turns_the_cache_off_until_it_is_back(
    near: SessionStore, redis_client: Any, counted: Counted, cluster_setup: ClusterSetup
) -> None:
    cookie = new_session(near, cart=1)
    _warm(near, cookie, 1)
    key = next(k for k in redis_client.keys("hs:*"))
    owner = master_serving(cluster_setup, key_slot(key))
    admin = owner.client()
    try:
        links = [c["id"] for c in admin.client_list() if "t" in c["flags"]]
        assert len(links) == 1
        admin.client_kill_filter(_id=links[0])
        admin.hset(key, "cart", "2")  # missed by the link
    finally:
        admin.close()
    assert read(near, cookie) == 2  # off: served by Redis
    cache = _cache(near)
    wait_for("the link to come back", lambda: cache.on, 20)
    _warm(near, cookie, 2)
    counted.reset()
    assert read(near, cookie) == 2
    assert counted.commands == []


@pytest.mark.parametrize("redis_topology", ["cluster"], indirect=True)
def test_a_migrated_slot_leaves_no_stale_read(
    near: SessionStore, redis_url: str, cluster_setup: ClusterSetup, counted: Counted
) -> None:
    other = SessionStore(redis=redis_url, ttl=100)
    cookie = new_session(near, cart=0)
    _warm(near, cookie, 0)
    sid = near.open(cookie).id
    assert sid is not None
    slot = key_slot(near.config.key_of(sid).encode())
    source = master_serving(cluster_setup, slot)
    target = next(m for m in cluster_setup.masters if m is not source)
    try:
        migrate_slot(slot, source, target, cluster_setup.masters, pause=0)
        assert master_serving(cluster_setup, slot) is target
        for n in range(1, 30):
            assert read(near, cookie) == n - 1  # from memory, or from the new node
            other.open(cookie)["cart"] = n  # written on the new node, acknowledged
            assert read(near, cookie) == n
            assert read(near, cookie) == n
        counted.reset()
        assert read(near, cookie) == 29
        assert counted.commands == []  # served from memory again, the slot on its new node
    finally:
        other.close()
        if master_serving(cluster_setup, slot) is not source:
            migrate_slot(slot, target, source, cluster_setup.masters, pause=0)
    assert node_id(master_serving(cluster_setup, slot)) == node_id(source)


# ----------------------------------------------------------------------- Sentinel


def test_a_sentinel_failover_leaves_no_stale_read(private_sentinel: SentinelSetup) -> None:
    setup = private_sentinel
    setup.ready_for_failover()
    ready = Counted(setup.url)  # a ready master_for() client
    stores = [
        SessionStore(redis=setup.url, ttl=100, near_cache=True),
        SessionStore(redis=ready.client, ttl=100, near_cache=True),
    ]
    try:
        cookies = [new_session(store, cart=0) for store in stores]
        for store, cookie in zip(stores, cookies, strict=True):
            _warm(store, cookie, 0)
        old = setup.master()
        watch = stores[0]._watch
        assert watch is not None
        switches = watch.switches
        sentinel = setup.sentinels[0].client()
        try:
            assert sentinel.sentinel_failover(setup.service)
        finally:
            sentinel.close()
        wait_for("the store to follow the failover", lambda: watch.switches > switches, 30)
        wait_for("the sentinels to announce it", lambda: setup.master() is not old, 30)
        # A ready client moves when the store's listener hears the announcement.
        wait_for("the listener to hear it", lambda: watch.ahead is None, 30)
        new = setup.master()
        admin = new.client()
        try:
            for n, (store, cookie) in enumerate(zip(stores, cookies, strict=True), 1):
                key = store.config.key_of(store.open(cookie).id or "")
                admin.hset(key, "cart", str(n * 10))  # changed on the new master only
                value = None
                deadline = time.monotonic() + 10
                while value is None and time.monotonic() < deadline:
                    with contextlib.suppress(BackendError):
                        value = read(store, cookie)
                assert value == n * 10
                _warm(store, cookie, n * 10)  # the cache is back on, linked to the new master
                admin.hset(key, "cart", str(n * 10 + 1))
                time.sleep(0.001)
                assert read(store, cookie) == n * 10 + 1
        finally:
            admin.close()
        ready.reset()
        assert read(stores[1], cookies[1]) == 21
        assert ready.commands == []
    finally:
        for store in stores:
            store.close()
        ready.close()
        wait_for("the old master to follow the new one", lambda: role_of(old) == "slave", 60)


@pytest.mark.parametrize("redis_topology", ["sentinel"], indirect=True)
def test_a_replica_client_is_refused(sentinel_setup: SentinelSetup, redis_url: str) -> None:
    sentinel = redis.Sentinel([("127.0.0.1", s.port) for s in sentinel_setup.sentinels])
    client = sentinel.slave_for(sentinel_setup.service)
    try:
        with pytest.raises(ConfigurationError, match="near_cache"):
            SessionStore(redis=client, near_cache=True)
    finally:
        client.close()
