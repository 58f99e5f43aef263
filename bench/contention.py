"""16 concurrent editors of one list: conflicts and retries of ``edit()`` against ``append()``.

Run with the project's environment (no other dependency)::

    .venv/bin/python bench/contention.py            # 16 editors x 50 edits, 3 rounds
    .venv/bin/python bench/contention.py --help

It starts a private redis-server (the embedded one) on a free loopback port and
stops it at the end. Every edit is one request: a fresh session opened from the
same cookie, as a web server's threads (or an asyncio server's tasks) would do,
all sharing one store. For each flavour (threads with ``Session``, asyncio tasks
with ``AsyncSession``) and each way of adding an item to the list it reports:

* ``edits``: edits attempted; ``conflicts``: how many raised ``ConflictError``;
* ``retries``: compare-and-set writes that lost their race and were tried again
  (``append()`` sends none: it is one Lua script);
* whether the final list holds exactly the items of the edits that returned,
  each once, every editor's items in its own order;
* wall time, and the mean time per edit seen by its caller.

``edit(), 10 tries (before)`` reproduces what ``edit()`` did before it had a time
budget: ``edit_retries=10`` and the backoff it had then (a random wait whose bound
doubled from 2 ms up to 50 ms), then ``ConflictError``. ``edit(), time budget`` is
the default now: the bound doubles from 5 ms up to 100 ms and the edit gives up
only after ``edit_timeout`` (5 s).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import redis
import redis.asyncio as aioredis

from hashsession import ConflictError, SessionStore
from hashsession.aio import AsyncSessionStore
from hashsession.embedded import EmbeddedRedis
from hashsession.protocol import Retries
from hashsession.scripts import LIVE

CAS_SHA = LIVE["cas"].sha


class _Tally:
    def __init__(self) -> None:
        self.cas = 0
        self.lock = threading.Lock()

    def seen(self, args: tuple[Any, ...]) -> None:
        if len(args) > 1 and args[0] == "EVALSHA" and args[1] == CAS_SHA:
            with self.lock:
                self.cas += 1


class CountingRedis(redis.Redis):
    """A client that counts the compare-and-set scripts sent through it."""

    tally: _Tally

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.tally.seen(args)
        return super().execute_command(*args, **options)  # type: ignore[no-untyped-call]


class AsyncCountingRedis(aioredis.Redis):
    tally: _Tally

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        self.tally.seen(args)
        return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]


MODES: dict[str, dict[str, Any]] = {
    "edit(), 10 tries (before)": {"edit_retries": 10},
    "edit(), time budget": {},
    "append()": {},
}
#: The backoff bounds (first, longest) each mode runs with; None: the library's own.
BACKOFF: dict[str, tuple[float, float] | None] = {
    "edit(), 10 tries (before)": (0.002, 0.05),
    "edit(), time budget": None,
    "append()": None,
}


@contextlib.contextmanager
def backoff_of(mode: str) -> Iterator[None]:
    bounds = BACKOFF[mode]
    saved = Retries.FIRST, Retries.LONGEST
    if bounds is not None:
        Retries.FIRST, Retries.LONGEST = bounds  # type: ignore[misc]
    try:
        yield
    finally:
        Retries.FIRST, Retries.LONGEST = saved  # type: ignore[misc]


def _check(items: list[Any], landed: list[tuple[int, int]], editors: int) -> bool:
    got = [tuple(x) for x in items]
    if sorted(got) != sorted(landed):
        return False
    return all(
        [i for t, i in got if t == e] == sorted(i for t, i in landed if t == e)
        for e in range(editors)
    )


def run_threads(url: str, mode: str, editors: int, edits: int) -> dict[str, Any]:
    client = CountingRedis(connection_pool=redis.ConnectionPool.from_url(url))
    client.tally = _Tally()
    store = SessionStore(redis=client, ttl=600, **MODES[mode])
    s = store.open(None)
    s["items"] = []
    cookie = f"session={store.config.cookie_value(s.id or '')}"
    landed: list[tuple[int, int]] = []
    durations: list[float] = []
    conflicts = 0
    lock = threading.Lock()
    barrier = threading.Barrier(editors)

    def editor(t: int) -> None:
        nonlocal conflicts
        barrier.wait()
        for i in range(edits):
            start = time.perf_counter()
            session = store.open(cookie)
            try:
                if mode == "append()":
                    session.append("items", [t, i])
                else:
                    with session.edit("items", []) as items:
                        items.append([t, i])
            except ConflictError:
                with lock:
                    conflicts += 1
                continue
            took = time.perf_counter() - start
            with lock:
                landed.append((t, i))
                durations.append(took)

    threads = [threading.Thread(target=editor, args=(t,)) for t in range(editors)]
    start = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    wall = time.perf_counter() - start
    exact = _check(store.open(cookie)["items"], landed, editors)
    store.close()
    return _summary(mode, editors * edits, conflicts, client.tally.cas, exact, wall, durations)


def run_tasks(url: str, mode: str, editors: int, edits: int) -> dict[str, Any]:
    async def main() -> dict[str, Any]:
        client = AsyncCountingRedis(connection_pool=aioredis.ConnectionPool.from_url(url))
        client.tally = _Tally()
        store = AsyncSessionStore(redis=client, ttl=600, **MODES[mode])
        s = store.open(None)
        await s.set("items", [])
        cookie = f"session={store.config.cookie_value(s.id or '')}"
        landed: list[tuple[int, int]] = []
        durations: list[float] = []
        conflicts = 0

        async def editor(t: int) -> None:
            nonlocal conflicts
            for i in range(edits):
                start = time.perf_counter()
                session = store.open(cookie)
                try:
                    if mode == "append()":
                        await session.append("items", [t, i])
                    else:
                        async with session.edit("items", []) as items:
                            items.append([t, i])
                except ConflictError:
                    conflicts += 1
                    continue
                durations.append(time.perf_counter() - start)
                landed.append((t, i))

        start = time.perf_counter()
        await asyncio.gather(*(editor(t) for t in range(editors)))
        wall = time.perf_counter() - start
        exact = _check(await store.open(cookie).get("items"), landed, editors)
        await store.aclose()
        return _summary(mode, editors * edits, conflicts, client.tally.cas, exact, wall, durations)

    return asyncio.run(main())


def _summary(
    mode: str,
    attempted: int,
    conflicts: int,
    cas: int,
    exact: bool,
    wall: float,
    durations: list[float],
) -> dict[str, Any]:
    return {
        "mode": mode,
        "edits": attempted,
        "conflicts": conflicts,
        # every edit's first compare-and-set is not a retry; append() sends none
        "retries": max(0, cas - attempted) if cas else 0,
        "exact": exact,
        "wall": wall,
        "mean_ms": statistics.fmean(durations) * 1000 if durations else 0.0,
        "max_ms": max(durations) * 1000 if durations else 0.0,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--editors", type=int, default=16)
    parser.add_argument("--edits", type=int, default=50, help="edits per editor")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--flavour", choices=["threads", "asyncio", "both"], default="both")
    args = parser.parse_args(argv)

    server = EmbeddedRedis().start()
    try:
        flavours: list[tuple[str, Callable[..., dict[str, Any]]]] = []
        if args.flavour in ("threads", "both"):
            flavours.append(("threads", run_threads))
        if args.flavour in ("asyncio", "both"):
            flavours.append(("asyncio", run_tasks))
        print(
            f"{args.editors} editors x {args.edits} edits of one list, {args.rounds} rounds,"
            f" redis-server {server.client().info()['redis_version']}"
        )
        header = (
            f"{'flavour':8} {'mode':26} {'edits':>6} {'conflicts':>9} {'retries':>8}"
            f" {'exact':>5} {'mean ms':>8} {'max ms':>8} {'wall s':>7}"
        )
        print(header)
        for name, run in flavours:
            for mode in MODES:
                for _ in range(args.rounds):
                    server.client().flushall()
                    with backoff_of(mode):
                        r = run(server.url, mode, args.editors, args.edits)
                    print(
                        f"{name:8} {mode:26} {r['edits']:>6} {r['conflicts']:>9}"
                        f" {r['retries']:>8} {r['exact']!s:>5} {r['mean_ms']:>8.2f}"
                        f" {r['max_ms']:>8.1f} {r['wall']:>7.2f}"
                    )
    finally:
        server.stop()


if __name__ == "__main__":
    main()
