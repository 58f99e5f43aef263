"""The near cache's own figures for ``bench/peers.py`` (issue 17): staleness, refreshes, memory.

Run by the coordinator against the run's redis-server (stage ``near``; ``--skip near``
leaves it out) and rendered by ``peers_report.py``:

- **staleness window**: a reader (this process, ``near_cache=True``) keeps reading one
  field of a warm session while a writer in another process changes it through a store
  without the cache; per round, relative to the writer's acknowledgement
  (``perf_counter_ns``: CLOCK_MONOTONIC, one clock for both processes), the start of the
  last read that served the old value (the stale window: negative when none started
  after the acknowledgement) and of the first read that served the new one (negative:
  the reader had it before the writer saw its reply; positive values include the
  reader's own scheduling delays), and the reads started after the acknowledgement that
  still served the old value;
- **reads 1 ms after the acknowledgement** of a write and of a logout (``invalidate()``)
  made by the writer process: stale reads counted;
- **commands per read-only request including TTL refreshes**: a store with a short idle
  timeout, so that several refresh shares pass during the run, serves read-only requests
  back to back; the server's ``total_commands_processed`` delta per request;
- **memory of the cache**: 10,000 sessions with the memory test's payload, every field
  read through a ``near_cache=True`` store; ``tracemalloc`` delta after a collection.
"""

from __future__ import annotations

import gc
import multiprocessing
import os
import statistics
import time
import tracemalloc
from typing import Any

from hashsession import SessionStore
from peerkit import COUNTER, FIELD, PAYLOAD, cookie_from

NEAR: dict[str, Any] = {"near_cache": True}


def _cookie(store: SessionStore, values: dict[str, Any]) -> str:
    s = store.open()
    s.update(values)
    return cookie_from([v for k, v in store.response_headers(s) if k == "Set-Cookie"])


def _writer(url: str, cpu: int | None, pipe: Any) -> None:
    """The other process: on ``("set", cookie, value)`` or ``("logout", cookie)`` it
    changes the session through its own store and answers its acknowledgement time."""
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})
    store = SessionStore(redis=url)
    clock = time.perf_counter_ns
    while True:
        msg = pipe.recv()
        if msg[0] == "quit":
            break
        s = store.open(msg[1])
        if msg[0] == "set":
            s[FIELD] = msg[2]
        else:
            s.invalidate()
        pipe.send(clock())


def _quantiles(values: list[int]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "min": ordered[0],
        "median": statistics.median(ordered),
        "p99": ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))],
        "max": ordered[-1],
    }


def staleness(url: str, rounds: int, checks: int, cpu: int | None) -> dict[str, Any]:
    """The window over ``rounds`` changes, then ``checks`` writes and logouts read 1 ms after."""
    reader = SessionStore(redis=url, **NEAR)
    plain = SessionStore(redis=url)
    ctx = multiprocessing.get_context("spawn")
    mine, theirs = ctx.Pipe()
    proc = ctx.Process(target=_writer, args=(url, cpu, theirs), daemon=True)
    proc.start()
    clock, open_ = time.perf_counter_ns, reader.open
    try:
        cookie = _cookie(plain, {FIELD: -1, COUNTER: 0})
        firsts: list[int] = []  # first read serving the new value, from the ack
        lasts: list[int] = []  # last read serving the old one, from the ack
        stale_after_ack = polls = 0
        for i in range(rounds):
            open_(cookie)[FIELD]
            open_(cookie)[FIELD]  # warm: served from memory
            mine.send(("set", cookie, i))
            seen: list[tuple[int, Any]] = []
            ack = None
            while True:
                t0 = clock()
                value = open_(cookie)[FIELD]
                seen.append((t0, value))
                if ack is None and mine.poll():
                    ack = mine.recv()
                if value == i and ack is not None:
                    break
            first_new = next(t for t, v in seen if v == i)
            firsts.append(first_new - ack)
            old = [t for t, v in seen if v != i]
            if old:  # else the reader's first read after the writer's start was new already
                lasts.append(max(old) - ack)
            polls += len(seen)
            stale_after_ack += sum(1 for t, v in seen if v != i and t > ack)
        late = {"write": 0, "logout": 0}
        for kind in ("write", "logout"):
            for i in range(checks):
                c = cookie if kind == "write" else _cookie(plain, {FIELD: "before"})
                open_(c).get(FIELD)
                open_(c).get(FIELD)
                mine.send(("set", c, f"after-{i}") if kind == "write" else ("logout", c))
                ack = mine.recv()
                while clock() < ack + 1_000_000:
                    pass
                value = open_(c).get(FIELD)
                if value != (f"after-{i}" if kind == "write" else None):
                    late[kind] += 1
        mine.send(("quit",))
        proc.join(10)
    finally:
        if proc.is_alive():
            proc.kill()
        reader.close()
        plain.close()
    return {
        "rounds": rounds,
        "last_old_ns": _quantiles(lasts) if lasts else None,
        "no_old_read": rounds - len(lasts),
        "first_new_ns": _quantiles(firsts),
        "new_before_ack": sum(1 for w in firsts if w < 0),
        "polls": polls,
        "stale_after_ack": stale_after_ack,
        "checks": checks,
        "stale_1ms": late,
    }


def refresh_cost(url: str, ttl: int, seconds: float) -> dict[str, Any]:
    """Read-only requests back to back on one warm session for ``seconds`` with an idle
    timeout of ``ttl`` s: the commands the server ran per request (its own INFO excluded)."""
    import redis

    store = SessionStore(redis=url, ttl=ttl, **NEAR)
    admin = redis.Redis.from_url(url)
    try:
        cookie = _cookie(store, {FIELD: [1, 2, 3]})
        store.open(cookie)[FIELD]

        def total() -> int:
            return int(admin.info("stats")["total_commands_processed"])

        before = total()
        end, n = time.monotonic() + seconds, 0
        open_ = store.open
        while time.monotonic() < end:
            open_(cookie)[FIELD]
            n += 1
        commands = total() - before - 1  # the first INFO is counted by the second
    finally:
        store.close()
        admin.close()
    share = store.config.near_cache.refresh_share if store.config.near_cache else 0
    return {
        "ttl": ttl,
        "seconds": seconds,
        "share": share,
        "requests": n,
        "commands": commands,
        "per_request": commands / n if n else None,
    }


def memory(url: str, sessions: int) -> dict[str, Any]:
    """Bytes the cache holds per session once every field of ``sessions`` sessions was read."""
    plain = SessionStore(redis=url)
    cookies = [_cookie(plain, PAYLOAD) for _ in range(sessions)]
    store = SessionStore(redis=url, near_cache={"max_sessions": sessions, "max_bytes": 1 << 30})
    try:
        open_ = store.open
        open_(cookies[0])["name"]  # the connection, scripts and parser set up before tracing
        gc.collect()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        for c in cookies:
            s = open_(c)
            for field in PAYLOAD:
                s[field]
        del s
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        cache = store.near_cache
        assert cache is not None
        held, counted = cache.size
    finally:
        store.close()
        plain.close()
    return {
        "sessions": sessions,
        "held": held,
        "bytes_per_session": (after - before) / held if held else None,
        "counted_per_session": counted / held if held else None,
        "payload": PAYLOAD,
    }


def measure(url: str, rounds: int, checks: int, sessions: int, cpu: int | None) -> dict[str, Any]:
    """Every near-cache figure; ``cpu`` pins the writer process (the server's CPU)."""
    out: dict[str, Any] = {}
    out["staleness"] = staleness(url, rounds, checks, cpu)
    out["refresh"] = refresh_cost(url, ttl=4, seconds=6.0)
    out["memory"] = memory(url, sessions)
    return out
