"""Two-key operations ride a Redis Cluster slot migration (``migration_retry_timeout``).

While a slot moves, a command naming two of its keys gets ``ASK`` and then
``TRYAGAIN`` until the move ends, and redis-py gives up after a few redirects.
``regenerate()`` and ``login()`` are such commands; here a real reshard
(``tests/topologies.py`` :func:`migrate_slot`) moves their slot while threads
and tasks call them, on a private cluster of three masters, so the shared
cluster fixture keeps its slot map.
"""

from __future__ import annotations

import asyncio
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from redis.cluster import ClusterNode, RedisCluster

from hashsession import BackendError, ConfigurationError, SessionStore
from hashsession.aio import AsyncSessionStore
from hashsession.config import SessionConfig
from hashsession.ids import new_id
from topologies import (
    HOST,
    ClusterSetup,
    id_tag_in,
    migrate_slot,
    node_id,
    owned_slots,
    start_cluster,
)

USER_KEY = "a user key for the migration tests"
#: Sessions per migrated slot that only hold data (they make the migration last).
IDLE = 24
#: Threads (or tasks) calling regenerate() and login() by turns during a migration.
MOVERS = 4
#: The pause between two MIGRATE batches of two keys.
PAUSE = 0.05


@pytest.fixture(scope="module")
def cluster() -> Iterator[ClusterSetup]:
    """Three masters, no replicas, for this module alone: its slots move around."""
    setup = start_cluster(masters=3, replicas_per_master=0)
    try:
        yield setup
    finally:
        setup.stop()


@dataclass
class Moved:
    """A slot about to move, and sessions stored in it."""

    slot: int
    source: Any
    target: Any
    ids: list[str]
    masters: list[Any] = field(default_factory=list)

    def migrate(self) -> None:
        migrate_slot(self.slot, self.source, self.target, self.masters, pause=PAUSE)


def _slot_with_sessions(cluster: ClusterSetup, count: int) -> Moved:
    """``count`` sessions (``n`` = 0) in one slot of a master, to move to another master."""
    masters = cluster.masters
    source = next(m for m in masters if len(owned_slots(m)) > 0)
    target = next(m for m in masters if m is not source)
    seeder = SessionStore(redis=cluster.url, adopt_unknown_ids=True, ttl=600)
    tag, slot = id_tag_in(seeder.config, owned_slots(source))
    ids = []
    for _ in range(count):
        session = seeder.open_id(new_id(tag))
        session["n"] = 0
        assert session.id is not None
        ids.append(session.id)
    seeder.close()
    return Moved(slot, source, target, ids, list(masters))


def _owner_of(cluster: ClusterSetup, slot: int) -> str:
    client = cluster.masters[0].client()
    try:
        for first, last, *nodes in client.execute_command("CLUSTER SLOTS"):
            if int(first) <= slot <= int(last):
                return str(nodes[0][2].decode())
    finally:
        client.close()
    raise AssertionError(f"slot {slot} is not served")


def _reader(cluster: ClusterSetup) -> RedisCluster:
    return RedisCluster(startup_nodes=[ClusterNode(HOST, s.port) for s in cluster.masters])


@dataclass
class Calls:
    """What the movers saw: each one's ids (oldest first), its calls and its failures."""

    chains: list[list[str]]
    #: Names the movers' users apart from those of other tests on the same cluster.
    run: str = field(default_factory=lambda: secrets.token_hex(4))
    spans: list[tuple[float, float]] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)

    def overlapping(self, start: float, end: float) -> int:
        return sum(1 for began, ended in self.spans if began < end and ended > start)

    def user(self, index: int) -> str:
        return f"mover-{self.run}-{index}"


def _check_move(
    cluster: ClusterSetup, moved: Moved, calls: Calls, start: float, end: float
) -> None:
    """The slot changed owner, every mover called during the move, and no call failed."""
    assert _owner_of(cluster, moved.slot) == node_id(moved.target)
    overlapping = calls.overlapping(start, end)
    assert overlapping >= MOVERS
    assert calls.failures == [], (
        f"{len(calls.failures)} of {len(calls.spans)} calls failed"
        f" ({overlapping} overlapping the migration)"
    )


def _check_states(store: SessionStore, cluster: ClusterSetup, calls: Calls) -> None:
    """Every old id is gone, every last id holds its data and is its user's one session."""
    reader = _reader(cluster)
    try:
        for index, chain in enumerate(calls.chains):
            assert len(chain) > 2, "a mover made fewer than two calls"
            *old, last = chain
            keys = [store.config.key_of(sid) for sid in chain]
            assert [reader.exists(key) for key in keys] == [0] * len(old) + [1]
            assert store.open_id(store.config.cookie_value(last))["n"] == 0
            for sid in old[-2:]:  # an old cookie opens an empty session
                assert dict(store.open_id(store.config.cookie_value(sid))) == {}
            listed = store.sessions_of(calls.user(index), current=last)
            assert [info.current for info in listed] == [True]
    finally:
        reader.close()


# ------------------------------------------------------------------------ under load


def test_regenerate_and_login_ride_a_reshard_under_threads(cluster: ClusterSetup) -> None:
    moved = _slot_with_sessions(cluster, IDLE + MOVERS)
    store = SessionStore(redis=cluster.url, user_key=USER_KEY, ttl=600)
    calls = Calls([[sid] for sid in moved.ids[:MOVERS]])
    stop = threading.Event()
    lock = threading.Lock()

    def work(index: int) -> None:
        chain, turn = calls.chains[index], 0
        while not stop.is_set():
            turn += 1
            session = store.open_id(store.config.cookie_value(chain[-1]))
            began = time.monotonic()
            try:
                if turn % 2:
                    session.login(calls.user(index))
                else:
                    session.regenerate()
            except Exception as exc:
                with lock:
                    calls.failures.append(f"{type(exc).__name__}: {exc}")
                continue
            finally:
                with lock:
                    calls.spans.append((began, time.monotonic()))
            assert session.id is not None
            chain.append(session.id)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(MOVERS)]
    for thread in threads:
        thread.start()
    try:
        time.sleep(0.2)
        start = time.monotonic()
        moved.migrate()
        end = time.monotonic()
        time.sleep(0.2)
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    _check_move(cluster, moved, calls, start, end)
    _check_states(store, cluster, calls)
    store.close()


async def test_regenerate_and_login_ride_a_reshard_under_tasks(cluster: ClusterSetup) -> None:
    moved = _slot_with_sessions(cluster, IDLE + MOVERS)
    store = AsyncSessionStore(redis=cluster.url, user_key=USER_KEY, ttl=600)
    calls = Calls([[sid] for sid in moved.ids[:MOVERS]])
    stop = asyncio.Event()

    async def work(index: int) -> None:
        chain, turn = calls.chains[index], 0
        while not stop.is_set():
            turn += 1
            session = store.open_id(store.config.cookie_value(chain[-1]))
            began = time.monotonic()
            try:
                if turn % 2:
                    await session.login(calls.user(index))
                else:
                    await session.regenerate()
            except Exception as exc:
                calls.failures.append(f"{type(exc).__name__}: {exc}")
                continue
            finally:
                calls.spans.append((began, time.monotonic()))
            assert session.id is not None
            chain.append(session.id)

    tasks = [asyncio.create_task(work(i)) for i in range(MOVERS)]
    try:
        await asyncio.sleep(0.2)
        start = time.monotonic()
        await asyncio.to_thread(moved.migrate)
        end = time.monotonic()
        await asyncio.sleep(0.2)
    finally:
        stop.set()
        await asyncio.gather(*tasks)
    await store.aclose()
    _check_move(cluster, moved, calls, start, end)
    checker = SessionStore(redis=cluster.url, user_key=USER_KEY, ttl=600)
    _check_states(checker, cluster, calls)
    checker.close()


# ------------------------------------------------------------ a slot caught mid-move


def _half_moved(cluster: ClusterSetup) -> tuple[Moved, str]:
    """A slot marked MIGRATING/IMPORTING whose one session's key is on the target
    already: any two-key command on it gets ASK, then TRYAGAIN, until the slot moves."""
    moved = _slot_with_sessions(cluster, 1)
    key = SessionStore(redis=cluster.url).config.key_of(moved.ids[0])
    src, dst = moved.source.client(), moved.target.client()
    try:
        dst.execute_command("CLUSTER SETSLOT", moved.slot, "IMPORTING", node_id(moved.source))
        src.execute_command("CLUSTER SETSLOT", moved.slot, "MIGRATING", node_id(moved.target))
        src.execute_command("MIGRATE", HOST, moved.target.port, "", 0, 5000, "KEYS", key)
    finally:
        src.close()
        dst.close()
    return moved, moved.ids[0]


def _finish_later(moved: Moved, after: float) -> threading.Timer:
    timer = threading.Timer(after, moved.migrate)
    timer.start()
    return timer


def test_a_two_key_call_waits_for_the_move_then_gives_up_naming_the_setting(
    cluster: ClusterSetup,
) -> None:
    moved, sid = _half_moved(cluster)
    hasty = SessionStore(redis=cluster.url, user_key=USER_KEY, migration_retry_timeout=0)
    session = hasty.open_id(hasty.config.cookie_value(sid))
    with pytest.raises(BackendError, match="migration_retry_timeout") as caught:
        session.regenerate()
    assert "TTL exhausted" in str(caught.value)
    assert session.id == sid  # nothing ran
    patient = SessionStore(redis=cluster.url, user_key=USER_KEY, migration_retry_timeout=30)
    timer = _finish_later(moved, 0.3)
    session = patient.open_id(patient.config.cookie_value(sid))
    session.login("ann")
    timer.join()
    assert session.id not in (None, sid)
    assert patient.open_id(patient.config.cookie_value(session.id))["n"] == 0
    assert [info.current for info in patient.sessions_of("ann", current=session)] == [True]
    hasty.close()
    patient.close()


async def test_an_async_two_key_call_waits_for_the_move_then_gives_up(
    cluster: ClusterSetup,
) -> None:
    moved, sid = _half_moved(cluster)
    hasty = AsyncSessionStore(
        redis=cluster.url, user_key=USER_KEY, migration_retry_timeout=timedelta(0)
    )
    session = hasty.open_id(hasty.config.cookie_value(sid))
    with pytest.raises(BackendError, match="migration_retry_timeout"):
        await session.login("bob")
    assert session.id == sid
    await hasty.aclose()
    patient = AsyncSessionStore(redis=cluster.url, user_key=USER_KEY, migration_retry_timeout=30)
    timer = _finish_later(moved, 0.3)
    session = patient.open_id(patient.config.cookie_value(sid))
    await session.regenerate()
    await asyncio.to_thread(timer.join)
    assert session.id not in (None, sid)
    assert await patient.open_id(patient.config.cookie_value(session.id)).get("n") == 0
    assert await patient.open_id(patient.config.cookie_value(sid)).items() == []
    await patient.aclose()


def test_migration_retry_timeout_is_checked() -> None:
    for bad in (-1, 3601, "5", True, float("nan")):
        with pytest.raises(ConfigurationError, match="migration_retry_timeout"):
            SessionConfig.build(migration_retry_timeout=bad)  # type: ignore[arg-type]
    assert SessionConfig.build().migration_retry == 5.0
    assert SessionConfig.build(migration_retry_timeout=timedelta(seconds=2)).migration_retry == 2
    assert SessionConfig.build(migration_retry_timeout=0).patience == (10.0, 0.0)
