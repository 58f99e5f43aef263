"""Concurrency at scale, on each topology: many processes, many threads, one session.

Children are started with ``spawn`` (forking a process that has threads is
unsafe) and run ``tests/scale_worker.py``: each builds its own store from the
topology's URL, as another web server process would, and opens sessions by
cookie value, one fresh ``Session`` per request. Then the parent checks Redis
itself: nothing lost, counters exact, no logged-out session back, and every
key left with a TTL. The asyncio twins run 64 tasks in this process.
"""

from __future__ import annotations

import asyncio
import json
import multiprocessing
import queue
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.context import SpawnProcess
from multiprocessing.queues import Queue
from typing import Any

import pytest

import scale_worker
from hashsession import SessionStore
from hashsession.aio import AsyncSessionStore
from hashsession.topology import is_cluster
from scale_worker import RaceJob, RaceReport, Request, WriteJob, WriteReport, field_name

SETTINGS: dict[str, Any] = {"ttl": 100, "secret_keys": ["scale-test-key"], "max_keys": 3000}
PROCESSES, THREADS, STEPS = 8, 8, 25
SESSIONS = 64
RACE_PROCESSES, RACE_WRITERS = 4, 4
#: Seconds the children (or the tasks) may take before the test fails as hung.
TIMEOUT = 120.0


# --------------------------------------------------------------------------- helpers


@contextmanager
def spawned() -> Iterator[Children]:
    """Children started with ``spawn``; on leaving, every one is joined or terminated."""
    children = Children()
    try:
        yield children
    finally:
        children.stop()


class Children:
    """Child processes, each of which puts one report on :attr:`results`."""

    def __init__(self) -> None:
        self.ctx = multiprocessing.get_context("spawn")
        self.results: Queue[Any] = self.ctx.Queue()
        self.processes: list[SpawnProcess] = []

    def start(self, target: Callable[..., None], *args: Any) -> None:
        process = self.ctx.Process(target=target, args=(*args, self.results), daemon=True)
        process.start()
        self.processes.append(process)

    def reports(self) -> list[Any]:
        """One report per child; fails the test if a child dies silently or hangs."""
        got: list[Any] = []
        deadline = time.monotonic() + TIMEOUT
        while len(got) < len(self.processes):
            try:
                got.append(self.results.get(timeout=0.2))
                continue
            except queue.Empty:
                pass
            codes = [p.exitcode for p in self.processes]
            if all(code is not None for code in codes):
                try:  # whatever was still in the pipe when the last one exited
                    got.append(self.results.get(timeout=1))
                    continue
                except queue.Empty:
                    pytest.fail(f"{len(codes) - len(got)} children died without a report: {codes}")
            if time.monotonic() > deadline:
                pytest.fail(f"children still running after {TIMEOUT:g} s")
        return got

    def stop(self) -> None:
        """Join every child (10 s in all), then terminate, and at last kill, any left."""
        deadline = time.monotonic() + 10
        for process in self.processes:
            process.join(max(0.0, deadline - time.monotonic()))
        for process in self.processes:
            if process.is_alive():
                process.terminate()
                process.join(5)
            if process.is_alive():
                process.kill()
                process.join(5)
        self.results.close()
        self.results.join_thread()


def survey(admin: Any) -> dict[bytes, tuple[int, bool]]:
    """Every key on every primary, with its PTTL and whether it holds a ``seed`` field.

    ``admin`` is the topology's plain client; on a cluster, each primary it knows of
    is scanned through its own node connection.
    """
    clients = [admin]
    if is_cluster(admin):
        clients = [admin.get_redis_connection(node) for node in admin.get_primaries()]
    found: dict[bytes, tuple[int, bool]] = {}
    for client in clients:
        keys = list(client.scan_iter(count=1000))
        pipe = client.pipeline(transaction=False)
        for key in keys:
            pipe.pttl(key)
            pipe.hexists(key, "seed")
        replies = pipe.execute()
        for n, key in enumerate(keys):
            found[key] = (replies[2 * n], bool(replies[2 * n + 1]))
    return found


def user_fields(raw: dict[bytes, bytes]) -> dict[str, Any]:
    """The user keys of a raw ``HGETALL`` reply, JSON-decoded (metadata fields left out)."""
    return {k.decode(): json.loads(v) for k, v in raw.items() if not k.startswith(b"\x00")}


def expected_data(processes: int, threads: int, steps: int) -> dict[str, Any]:
    """What the session must hold once every writer is done."""
    data: dict[str, Any] = {"seed": "s", "hits": processes * threads * steps}
    for p in range(processes):
        data[f"proc{p}"] = threads * steps
        for t in range(threads):
            for i in range(steps):
                data[field_name(p, t, i)] = [p, t, i]
    return data


def check_one_session(
    store: SessionStore, session_id: str, data: dict[str, Any], admin: Any
) -> None:
    """``data`` is what a fresh session and a raw ``HGETALL`` read; nothing else is stored."""
    cookie = store.config.cookie_value(session_id)
    assert store.open_id(cookie).to_dict() == data
    key = store.config.key_of(session_id)
    raw = admin.hgetall(key)
    assert user_fields(raw) == data
    assert raw[b"hits"] == str(data["hits"]).encode()  # HINCRBY's decimal text
    keys = survey(admin)
    assert list(keys) == [key.encode()]  # no request strayed into a session of its own
    assert keys[key.encode()][0] > 0


def new_sessions(store: SessionStore, n: int) -> list[str]:
    """Cookie values of ``n`` stored sessions, each holding ``seed``."""
    cookies = []
    for j in range(n):
        session = store.open()
        session["seed"] = j
        assert session.id is not None
        cookies.append(store.config.cookie_value(session.id))
    return cookies


def check_race(
    store: SessionStore | AsyncSessionStore,
    cookies: list[str],
    requests: list[Request],
    logouts: dict[int, tuple[float, float]],
    admin: Any,
) -> dict[str, int]:
    """Nothing resurrected, every request on the old id or on a brand-new one; the tallies."""
    olds = [store.config.id_from_cookie(c) for c in cookies]
    assert sorted(logouts) == list(range(len(cookies)))
    before = [0] * len(cookies)
    after = [0] * len(cookies)
    moved: list[str] = []
    split = 0
    for j, began, ended, first, last in requests:
        old = olds[j]
        logout_began, logout_ended = logouts[j]
        assert first is not None and last is not None
        if first != old:
            assert last == first  # a request that started afresh stays on its new session
        if last != old:
            moved.append(last)
            split += first == old  # the logout landed between this request's writes
        if ended < logout_began:
            assert first == last == old
            before[j] += 1
        elif began > logout_ended:
            assert first != old, f"session {j} was written to after its logout: resurrected"
            after[j] += 1
    # Each session was written both before and after its own logout.
    assert min(before) > 0 and min(after) > 0, (before, after)
    assert len(set(moved)) == len(moved)  # each request that found it gone made its own
    keys = survey(admin)
    old_keys = {store.config.key_of(old or "").encode() for old in olds}
    assert sorted(old_keys & keys.keys()) == [], "logged-out sessions came back"
    assert keys.keys() == {store.config.key_of(sid).encode() for sid in moved}
    assert [k for k, (pttl, _) in keys.items() if pttl <= 0] == []  # every key has a TTL
    assert [k for k, (_, seeded) in keys.items() if seeded] == []  # no old data carried over
    return {
        "requests": len(requests),
        "before": sum(before),
        "after": sum(after),
        "racing": len(requests) - sum(before) - sum(after),
        "split": split,
        "new sessions": len(moved),
    }


# --------------------------------------------------------------------------- processes


def test_processes_and_threads_lose_nothing(topology_url: str, topology_client: Any) -> None:
    """8 processes x 8 threads x 25 requests on one session: 0 lost, counters exact."""
    store = SessionStore(redis=topology_url, **SETTINGS)
    try:
        session = store.open()
        session["seed"] = "s"
        assert session.id is not None
        cookie = store.config.cookie_value(session.id)
        with spawned() as children:
            start = children.ctx.Barrier(PROCESSES, timeout=TIMEOUT)
            for p in range(PROCESSES):
                job = WriteJob(topology_url, SETTINGS, cookie, p, THREADS, STEPS)
                children.start(scale_worker.write_one_session, job, start)
            reports: list[WriteReport] = children.reports()
        assert [e for r in reports for e in r.errors] == []
        assert sorted(r.process for r in reports) == list(range(PROCESSES))
        assert [s for r in reports for s in r.strays] == []
        total = PROCESSES * THREADS * STEPS
        assert sum(r.requests for r in reports) == total
        # Every HINCRBY answered a different number, and together they count up exactly.
        assert sorted(h for r in reports for h in r.hits) == list(range(1, total + 1))
        for r in reports:
            assert sorted(r.mine) == list(range(1, THREADS * STEPS + 1))
        data = expected_data(PROCESSES, THREADS, STEPS)
        check_one_session(store, session.id, data, topology_client)
    finally:
        store.close()


def test_logouts_racing_writes_from_processes_resurrect_nothing(
    topology_url: str, topology_client: Any
) -> None:
    """64 sessions swept by 4 processes x 4 writer threads, each logged out mid-sweep."""
    store = SessionStore(redis=topology_url, **SETTINGS)
    try:
        cookies = new_sessions(store, SESSIONS)
        with spawned() as children:
            start = children.ctx.Barrier(RACE_PROCESSES, timeout=TIMEOUT)
            logged_out = children.ctx.Barrier(RACE_PROCESSES, timeout=TIMEOUT)
            all_out = children.ctx.Event()
            for p in range(RACE_PROCESSES):
                job = RaceJob(topology_url, SETTINGS, cookies, p, RACE_PROCESSES, RACE_WRITERS, 1)
                children.start(scale_worker.race_logouts, job, start, logged_out, all_out)
            reports: list[RaceReport] = children.reports()
        assert [e for r in reports for e in r.errors] == []
        requests = [q for r in reports for q in r.requests]
        logouts = {j: span for r in reports for j, span in r.logouts.items()}
        tally = check_race(store, cookies, requests, logouts, topology_client)
        # Every writer swept all 64 sessions at least twice: once before, once after.
        assert tally["requests"] >= 2 * RACE_PROCESSES * RACE_WRITERS * SESSIONS
        assert tally["racing"] > 0  # some requests were in flight during their logout
    finally:
        store.close()


# --------------------------------------------------------------------------- asyncio


async def test_asyncio_tasks_lose_nothing(topology_url: str, topology_client: Any) -> None:
    """64 tasks x 25 requests on one session through one asyncio store: 0 lost, exact."""
    store = AsyncSessionStore(redis=topology_url, **SETTINGS)
    sync_store = SessionStore(redis=topology_url, **SETTINGS)
    try:
        session = store.open()
        await session.set("seed", "s")
        assert session.id is not None
        cookie = store.config.cookie_value(session.id)

        async def task(t: int) -> list[int]:
            hits = []
            for i in range(STEPS):
                mine = store.open_id(cookie)  # a new request
                await mine.set(field_name(0, t, i), [0, t, i])
                hits.append(await mine.incr("hits"))
                await mine.incr("proc0")
                assert mine.id == session.id and not mine.new
            return hits

        tasks = SESSIONS
        hits = await asyncio.wait_for(asyncio.gather(*(task(t) for t in range(tasks))), TIMEOUT)
        assert sorted(h for got in hits for h in got) == list(range(1, tasks * STEPS + 1))
        data = expected_data(1, tasks, STEPS)
        assert await store.open_id(cookie).to_dict() == data
        check_one_session(sync_store, session.id, data, topology_client)
    finally:
        sync_store.close()
        await store.aclose()


async def test_asyncio_logouts_racing_writes_resurrect_nothing(
    topology_url: str, topology_client: Any
) -> None:
    """64 writer tasks over 64 sessions while they are logged out, 8 at a time: none back."""
    store = AsyncSessionStore(redis=topology_url, **SETTINGS)
    sync_store = SessionStore(redis=topology_url, **SETTINGS)
    lead = 4  # requests each writer makes before the logouts, and again after them
    try:
        cookies = new_sessions(sync_store, SESSIONS)
        requests: list[Request] = []
        logouts: dict[int, tuple[float, float]] = {}
        done = [0] * SESSIONS
        all_out = asyncio.Event()

        async def request(j: int, step: int, t: int) -> None:
            began = time.monotonic()
            session = store.open_id(cookies[j])
            await session.set(f"w{t}.{step}", step)
            first = session.id
            await session.incr("n")
            await session.set(f"x{t}.{step}", j)
            requests.append((j, began, time.monotonic(), first, session.id))

        async def writer(t: int) -> None:
            step = 0
            while not all_out.is_set():  # writer t visits sessions t, t + 1, ...
                await request((t + step) % SESSIONS, step, t)
                step += 1
                done[t] = step
            for k in range(lead):  # then sessions t .. t + lead - 1 once more
                await request((t + k) % SESSIONS, step + k, t)

        async def logout(j: int) -> None:
            session = store.open_id(cookies[j])
            began = time.monotonic()
            await session.invalidate()
            logouts[j] = (began, time.monotonic())

        async def logouts_in_groups() -> None:
            while min(done) < lead:
                await asyncio.sleep(0.001)
            for group in range(0, SESSIONS, 8):  # eight users at a time log out
                await asyncio.gather(*(logout(j) for j in range(group, group + 8)))
            all_out.set()

        work = [writer(t) for t in range(SESSIONS)]
        await asyncio.wait_for(asyncio.gather(logouts_in_groups(), *work), TIMEOUT)
        tally = check_race(store, cookies, requests, logouts, topology_client)
        assert tally["after"] >= lead * SESSIONS
        assert tally["racing"] > 0
    finally:
        sync_store.close()
        await store.aclose()
