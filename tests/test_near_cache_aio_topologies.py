"""The ``near_cache`` setting of ``AsyncSessionStore`` on Sentinel and on a Redis Cluster.

The asyncio twin of tests/test_near_cache_topologies.py: round trips are counted at the
client (:class:`AsyncCounter`; the tracking links are connections of their own, the TTL
refreshes go through the counted client); changes come from another process or another
client; links are killed with CLIENT KILL; the Sentinel failover runs on a private
private_sentinel (the shared one is never failed over). No wall-clock assertion: waits are
bounded polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
import redis
from redis.crc import key_slot

from counting import AsyncCounter
from hashsession import BackendError, ConfigurationError
from hashsession.aio import AsyncSessionStore
from hashsession.aionear import AsyncClusterLinks, AsyncTracker
from hashsession.nearcache import NearCache
from hashsession.topology import parse
from near_writer import Writer
from test_near_cache_aio import new_session, read
from topologies import (
    ClusterSetup,
    SentinelSetup,
    master_serving,
    role_of,
    wait_for,
)

both = pytest.mark.parametrize("redis_topology", ["sentinel", "cluster"], indirect=True)
cluster = pytest.mark.parametrize("redis_topology", ["cluster"], indirect=True)


@pytest.fixture
async def counter(redis_url: str) -> AsyncIterator[AsyncCounter]:
    counter = await AsyncCounter(redis_url).ready()
    try:
        yield counter
    finally:
        await counter.aclose()


def counted_store(url: str, counter: AsyncCounter) -> AsyncSessionStore:
    """A near-cached store built from ``url`` on Sentinel (a ready client is refused
    there), whose round trips ``counter`` counts; on a Cluster, on the counter's client."""
    if parse(url).kind != "sentinel":
        return AsyncSessionStore(redis=counter.client, ttl=100, near_cache=True)
    store = AsyncSessionStore(redis=url, ttl=100, near_cache=True)
    pool = store.client.connection_pool
    pool.connection_class = counter._counting(pool.connection_class)  # no connection yet
    return store


@pytest.fixture
async def near(counter: AsyncCounter, redis_url: str) -> AsyncIterator[AsyncSessionStore]:
    store = counted_store(redis_url, counter)
    try:
        yield store
    finally:
        await store.aclose()


def _cache(store: AsyncSessionStore) -> NearCache:
    cache = store.near_cache
    assert cache is not None
    return cache


async def _until(what: str, check: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.01)


async def _warm(store: AsyncSessionStore, cookie: str, value: Any) -> None:
    """Read until the session is served from memory (a refresh's own change comes back
    once as an invalidation, so the first reads may go to Redis; a replica's too)."""
    cache = _cache(store)
    assert await read(store, cookie) == value  # starts the links' task on this loop
    await _until("the cache to come on", lambda: cache.on)
    for _ in range(3):
        assert await read(store, cookie) == value
    # As the sync tests: a replica's late push for the creation; wait for 0.2 s without one.
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        seen = cache.stamp()
        await asyncio.sleep(0.2)
        if cache.stamp() == seen:
            break
    for _ in range(3):
        assert await read(store, cookie) == value


@both
async def test_a_warm_read_costs_no_round_trip(
    near: AsyncSessionStore, counter: AsyncCounter
) -> None:
    cookie = await new_session(near, cart=[1], user_name="ann")
    await _warm(near, cookie, [1])
    session = near.open(cookie)
    assert await session.has("user_name") and not await session.has("nothing")
    counter.reset()
    for _ in range(50):
        session = near.open(cookie)
        assert await session.get("cart") == [1]
        assert await session.has("user_name") and not await session.has("nothing")
    assert counter.names == []


@both
@pytest.mark.parametrize("op", ["set", "logout"])
async def test_a_change_in_another_process_is_seen_1_ms_after_its_ack(
    near: AsyncSessionStore, redis_url: str, op: str
) -> None:
    stale = served = 0
    cache = _cache(near)
    with Writer(redis_url) as writer:
        for n in range(200):
            cookie = await new_session(near, cart=-1)
            for _ in range(2):  # warm: the next read comes from memory
                assert await read(near, cookie) == -1
            served += cache.on
            writer.change(op, cookie, n)  # acknowledged
            await asyncio.sleep(0.001)
            stale += await read(near, cookie) != (n if op == "set" else None)
    assert stale == 0
    assert served == 200  # the cache was on throughout: the reads were really cached


@both
async def test_flushall_everywhere_is_seen(
    near: AsyncSessionStore, redis_deployment: SentinelSetup | ClusterSetup
) -> None:
    cookie = await new_session(near, cart=1)
    await _warm(near, cookie, 1)
    redis_deployment.flushall()
    await asyncio.sleep(0.001)  # the server writes the push a moment after the reply
    assert await read(near, cookie) is None


# ----------------------------------------------------------------- Redis Cluster


def _links(store: AsyncSessionStore) -> AsyncClusterLinks:
    near = store._near
    assert near is not None and isinstance(near.tracker, AsyncClusterLinks)
    return near.tracker


@cluster
async def test_cluster_links_every_node_from_a_task(
    near: AsyncSessionStore, cluster_setup: ClusterSetup
) -> None:
    links = _links(near)
    assert set(links.links) == {f"127.0.0.1:{s.port}" for s in cluster_setup.nodes}
    assert all(link.up for link in links.links.values())
    links.drain()
    assert links.task is not None and not links.task.done()
    assert links._thread is None  # driven by the loop, not a thread of its own


@cluster
async def test_a_killed_node_link_turns_the_cache_off_until_it_is_back(
    near: AsyncSessionStore, redis_client: Any, counter: AsyncCounter, cluster_setup: ClusterSetup
) -> None:
    cookie = await new_session(near, cart=1)
    await _warm(near, cookie, 1)
    key = next(k for k in redis_client.keys("hs:*"))
    owner = master_serving(cluster_setup, key_slot(key))
    admin = owner.client()
    try:
        # This store's link to that node (other tests' stores may link it too).
        host, port = _links(near).links[f"127.0.0.1:{owner.port}"]._conn._sock.getsockname()
        links = [c["id"] for c in admin.client_list() if c["addr"] == f"{host}:{port}"]
        assert len(links) == 1
        admin.client_kill_filter(_id=links[0])
        admin.hset(key, "cart", "2")  # missed by the link
    finally:
        admin.close()
    counter.reset()
    assert await read(near, cookie) == 2  # off: served by Redis
    assert counter.count >= 1
    cache = _cache(near)
    assert not cache.on and cache.size == (0, 0)
    await _until("the link to come back", lambda: cache.on)
    await _warm(near, cookie, 2)
    counter.reset()
    assert await read(near, cookie) == 2
    assert counter.names == []


@cluster
async def test_a_url_store_links_the_cluster(redis_url: str) -> None:
    store = AsyncSessionStore(redis=redis_url, ttl=100, near_cache=True)
    try:
        cookie = await new_session(store, cart=5)
        await _warm(store, cookie, 5)
        assert _cache(store).size[0] >= 1
    finally:
        await store.aclose()
    assert not _cache(store).on


# ----------------------------------------------------------------------- Sentinel


async def test_a_sentinel_failover_leaves_no_stale_read(private_sentinel: SentinelSetup) -> None:
    setup = private_sentinel
    setup.ready_for_failover()
    stores = [AsyncSessionStore(redis=setup.url, ttl=100, near_cache=True)]
    old = setup.master()
    try:
        assert all(isinstance(s._near.tracker, AsyncTracker) for s in stores)  # type: ignore[union-attr]
        cookies = [await new_session(store, cart=0) for store in stores]
        for store, cookie in zip(stores, cookies, strict=True):
            await _warm(store, cookie, 0)
        watch = stores[0]._watch
        assert watch is not None
        switches = watch.switches
        sentinel = setup.sentinels[0].client()
        try:
            assert sentinel.sentinel_failover(setup.service)
        finally:
            sentinel.close()
        await _until("the store to follow the failover", lambda: watch.switches > switches, 30)
        await _until("the sentinels to announce it", lambda: setup.master() is not old, 30)
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
                        value = await read(store, cookie)
                assert value == n * 10
                await _warm(store, cookie, n * 10)  # the cache is back, on the new master
                admin.hset(key, "cart", str(n * 10 + 1))
                await asyncio.sleep(0.001)
                assert await read(store, cookie) == n * 10 + 1
        finally:
            admin.close()
        counter = AsyncCounter(setup.url)
        try:  # counts what a store like this one sends: nothing, the cache is on
            counted = counted_store(setup.url, counter)
            try:
                cookie = cookies[0]
                await _warm(counted, cookie, 11)
                counter.reset()
                assert await read(counted, cookie) == 11
                assert counter.names == []
            finally:
                await counted.aclose()
        finally:
            await counter.aclose()
    finally:
        for store in stores:
            await store.aclose()
        wait_for("the old master to follow the new one", lambda: role_of(old) == "slave", 60)


@pytest.mark.parametrize("kind", ["replica", "ready master"])
async def test_a_replica_or_ready_client_is_refused(
    sentinel_setup: SentinelSetup, kind: str
) -> None:
    sentinel = redis.asyncio.Sentinel([("127.0.0.1", s.port) for s in sentinel_setup.sentinels])
    service = sentinel_setup.service
    client = sentinel.slave_for(service) if kind == "replica" else sentinel.master_for(service)
    try:
        with pytest.raises(ConfigurationError, match=r"near_cache.*(replica|URL)"):
            AsyncSessionStore(redis=client, near_cache=True)
    finally:
        await client.aclose()
