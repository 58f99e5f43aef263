"""Closing stores: the connections a store opened are gone from the server afterwards."""

from __future__ import annotations

import asyncio

import redis

from hashsession import SessionStore
from hashsession.aio import AsyncSessionStore
from topologies import wait_for


def our_connections(admin: redis.Redis, name: str) -> int:
    return sum(1 for c in admin.client_list() if c.get("name") == name)


def all_closed(admin: redis.Redis, name: str) -> None:
    """The server has seen every connection named ``name`` close (it notices a moment later)."""
    wait_for(f"{name} connections to close", lambda: our_connections(admin, name) == 0, 10)


async def test_async_aclose_drops_the_pool_it_built(
    redis_url: str, redis_client: redis.Redis
) -> None:
    store = AsyncSessionStore(redis=f"{redis_url}?client_name=hs-close")
    sessions = [store.open() for _ in range(20)]
    await asyncio.gather(*(s.set("n", i) for i, s in enumerate(sessions)))
    assert our_connections(redis_client, "hs-close") >= 2  # a burst opened several
    await store.aclose()
    all_closed(redis_client, "hs-close")


def test_sync_close_drops_its_connections(redis_url: str, redis_client: redis.Redis) -> None:
    store = SessionStore(redis=f"{redis_url}?client_name=hs-close-sync")
    store.open()["n"] = 1
    assert our_connections(redis_client, "hs-close-sync") == 1
    store.close()
    all_closed(redis_client, "hs-close-sync")
