"""Stores follow a Sentinel failover at once (``hashsession.failover``), sync and asyncio.

A private private_sentinel (one master, one replica, three sentinels) for this module, so
the shared ``sentinel_setup`` fixture is never failed over. Each test runs a real
``SENTINEL FAILOVER`` while a store writes and checks that the store's commands reach
the new master while the old one is still a master (Sentinel demotes it about ten
seconds later), that an acknowledged logout is in force on the new master once the
old one rejoins, that the listener outlives a sentinel, and that closing the store
stops the listener thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Any

import pytest
import redis

from hashsession import BackendError, SessionStore
from hashsession.aio import AsyncSessionStore
from hashsession.embedded import EmbeddedRedis
from hashsession.failover import Watch
from topologies import SentinelSetup, role_of, wait_for


def _listeners() -> int:
    return sum(1 for t in threading.enumerate() if t.name.startswith("hashsession-sentinel-"))


def _port_of(store: SessionStore) -> int:
    pool: Any = store.client.connection_pool
    connection = pool.get_connection()
    try:
        return int(connection.port)
    finally:
        pool.release(connection)


def _settled(setup: SentinelSetup) -> None:
    """Wait until the old master follows the new one and the sentinels see it healthy."""

    def one_master() -> bool:
        roles = sorted(role_of(server) for server in setup.servers)
        return roles == ["master"] + ["slave"] * (len(roles) - 1)

    wait_for("the old master to follow the new one", one_master, 60)
    setup.ready_for_failover()


def _watch(store: SessionStore | AsyncSessionStore) -> Watch:
    view = store.config.replica_view
    assert isinstance(view, Watch)
    return view


def test_writes_reach_the_new_master_before_the_old_one_is_demoted(
    private_sentinel: SentinelSetup,
) -> None:
    setup = private_sentinel
    setup.ready_for_failover()
    before = _listeners()
    store = SessionStore(redis=setup.url, ttl=100)
    assert _listeners() == before + 1
    watch = _watch(store)
    wait_for("the listener's first view", lambda: watch.replicas == 1)
    assert store.config.replicas_to_wait() == 1  # "auto": a healthy replica, so WAIT 1
    session = store.open()
    session["n"] = 0
    cookie = store.config.cookie_value(session.id or "")
    victims = [store.open() for _ in range(50)]
    for victim in victims:
        victim["x"] = 1
    old_master = setup.master()
    sentinel = setup.sentinels[0].client()
    logged_out: list[str] = []
    try:
        assert sentinel.sentinel_failover(setup.service)
        deadline = time.monotonic() + 20
        while watch.switches == 0:
            assert time.monotonic() < deadline, "the store never followed the failover"
            with contextlib.suppress(BackendError):
                store.open_id(cookie).incr("n")
        assert watch.master is not None
        new_port = watch.master[1]
        assert new_port != old_master.port
        # The store writes to the new master while the old one is still a master.
        assert _port_of(store) == new_port
        assert role_of(old_master) == "master"
        store.open_id(cookie)["after"] = 1
        for victim in victims:
            try:
                store.open_id(store.config.cookie_value(victim.id or "")).invalidate()
            except BackendError:  # NotReplicatedError included: not acknowledged
                continue
            logged_out.append(victim.id or "")
        assert logged_out
        _settled(setup)
        reader = setup.master().client()
        try:
            assert reader.hget(store.config.key_of(session.id or ""), "after") is not None
            back = [i for i in logged_out if reader.exists(store.config.key_of(i))]
        finally:
            reader.close()
        assert back == [], f"{len(back)} acknowledged logouts were undone"
    finally:
        sentinel.close()
        store.close()
    assert _listeners() == before


def test_the_listener_survives_a_sentinel_going_away(private_sentinel: SentinelSetup) -> None:
    setup = private_sentinel
    _settled(setup)
    before = _listeners()
    store = SessionStore(redis=setup.url, ttl=100)
    watch = _watch(store)
    wait_for("the listener's first view", lambda: watch.master is not None)
    first = setup.sentinels[0]
    port = first.port
    first.stop()
    try:
        old = watch.master
        other = setup.sentinels[1].client()
        try:
            assert other.sentinel_failover(setup.service)
        finally:
            other.close()
        wait_for("the store to follow the failover", lambda: watch.master != old, timeout=20)
        assert _port_of(store) == watch.master[1]  # type: ignore[index]
        store.open()["k"] = 1
    finally:
        store.close()
        alive = setup.sentinels[1].client()
        try:  # from a sentinel still up
            host, master_port = alive.sentinel_get_master_addr_by_name(setup.service)
        finally:
            alive.close()
        master = (host.decode() if isinstance(host, bytes) else str(host), int(master_port))
        setup.sentinels[0] = EmbeddedRedis(port=port, args=("--sentinel",))
        restart_sentinel(setup, 0, master)
    assert _listeners() == before
    _settled(setup)


def restart_sentinel(setup: SentinelSetup, index: int, master: tuple[str, int]) -> None:
    """Start the stopped sentinel again, monitoring ``master``."""
    sentinel = setup.sentinels[index].start()
    host, port = master
    client = sentinel.client()
    try:
        client.sentinel_monitor(setup.service, host, port, 2)
        client.sentinel_set(setup.service, "down-after-milliseconds", 1000)
    finally:
        client.close()


async def test_async_store_follows_the_switch(private_sentinel: SentinelSetup) -> None:
    setup = private_sentinel
    _settled(setup)
    before = _listeners()
    store = AsyncSessionStore(redis=setup.url, ttl=100)
    watch = _watch(store)
    wait_for("the listener's first view", lambda: watch.replicas == 1)
    session = store.open()
    await session.set("n", 0)
    cookie = store.config.cookie_value(session.id or "")
    old_master = setup.master()
    sentinel = setup.sentinels[0].client()
    try:
        assert sentinel.sentinel_failover(setup.service)
        deadline = time.monotonic() + 20
        while watch.switches == 0:
            assert time.monotonic() < deadline, "the store never followed the failover"
            with contextlib.suppress(BackendError):
                await store.open_id(cookie).incr("n")
            await asyncio.sleep(0.001)
        assert watch.master is not None
        pool: Any = store.client.connection_pool
        connection = await pool.get_connection()
        try:
            assert connection.port == watch.master[1]
        finally:
            await pool.release(connection)
        assert role_of(old_master) == "master"
        victim = store.open()
        await victim.set("x", 1)
        await victim.invalidate()
        _settled(setup)
        reader = setup.master().client()
        try:
            assert not reader.exists(store.config.key_of(victim.id or ""))
        finally:
            reader.close()
    finally:
        sentinel.close()
        await store.aclose()
    assert _listeners() == before


def test_standalone_stores_keep_not_waiting(redis_url: str) -> None:
    store = SessionStore(redis=redis_url)
    try:
        assert store.config.wait_auto
        assert store.config.replica_view is None
        assert store.config.replicas_to_wait() == 0
    finally:
        store.close()


def test_a_connection_closed_under_a_reader_raises_a_connection_error(
    sentinel_setup: SentinelSetup,
) -> None:
    # A reply awaited on a connection whose parser was torn down (a connection closed by
    # another thread) used to surface as redis-py's AttributeError; it is a connection
    # error, so the store raises BackendError.
    store = SessionStore(redis=sentinel_setup.url, secret_keys=["k"])
    try:
        pool: Any = store.client.connection_pool
        connection = pool.get_connection()
        try:
            connection.send_command("PING")
            connection._parser.on_disconnect()
            with pytest.raises(redis.ConnectionError, match="closed while its reply"):
                connection.read_response()
        finally:
            pool.release(connection)
        assert store.client.ping()  # the pool makes a new connection
    finally:
        store.close()
