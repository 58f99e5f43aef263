"""Child-process workers for ``tests/test_scale.py`` (started with ``spawn``).

Each child plays one more web server process: it builds its own store from the
topology's URL and the test's settings, opens sessions by their cookie value,
and runs its threads. Whatever happens, it puts exactly one report on the
results queue; failures travel as formatted tracebacks, never as a silent exit.
"""

from __future__ import annotations

import random
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from multiprocessing.queues import Queue
from multiprocessing.synchronize import Barrier, Event
from typing import Any

from hashsession import SessionStore

__all__ = [
    "RaceJob",
    "RaceReport",
    "Request",
    "WriteJob",
    "WriteReport",
    "field_name",
    "race_logouts",
    "write_one_session",
]

#: Seconds any wait in a child may take before it counts as a hang.
TIMEOUT = 60.0

#: One request of the logout race: (session index, began, ended, id after its first
#: write, id at its end), times from ``time.monotonic()`` (one clock for every process).
Request = tuple[int, float, float, str | None, str | None]


def field_name(process: int, thread: int, step: int) -> str:
    """The distinct key a writer stores at one step."""
    return f"k{process}.{thread}.{step}"


@dataclass(frozen=True)
class WriteJob:
    """Write distinct keys and bump shared counters of one session, from several threads."""

    url: str
    settings: dict[str, Any]
    cookie: str
    process: int
    threads: int
    steps: int


@dataclass
class WriteReport:
    """What one writing process saw: every counter value ``incr`` returned, and failures."""

    process: int
    requests: int = 0
    hits: list[int] = field(default_factory=list)
    mine: list[int] = field(default_factory=list)
    strays: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass(frozen=True)
class RaceJob:
    """Write to many sessions while this process's logout thread invalidates its share."""

    url: str
    settings: dict[str, Any]
    cookies: list[str]
    process: int
    processes: int
    writers: int
    rounds_after: int


@dataclass
class RaceReport:
    """Every request a racing process made and when each of its logouts ran."""

    process: int
    requests: list[Request] = field(default_factory=list)
    logouts: dict[int, tuple[float, float]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)


def run_threads(targets: list[Callable[[], None]], errors: list[str]) -> None:
    """Run ``targets`` together (behind a barrier); record tracebacks and hangs in ``errors``."""
    barrier = threading.Barrier(len(targets))

    def wrap(target: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            try:
                barrier.wait(TIMEOUT)
                target()
            except BaseException:
                errors.append(traceback.format_exc())

        return run

    threads = [threading.Thread(target=wrap(t), daemon=True) for t in targets]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(TIMEOUT)
        if thread.is_alive():
            errors.append(f"{thread.name} hung for {TIMEOUT:g} s")


def write_one_session(job: WriteJob, start: Barrier, results: Queue[WriteReport]) -> None:
    """Each thread makes ``steps`` requests: one distinct key, ``hits`` + 1, ``proc<n>`` + 1."""
    report = WriteReport(job.process)
    lock = threading.Lock()
    try:
        store = SessionStore(redis=job.url, **job.settings)
        try:
            expected = store.config.id_from_cookie(job.cookie)

            def writer(thread: int) -> Callable[[], None]:
                def run() -> None:
                    for step in range(job.steps):
                        session = store.open_id(job.cookie)  # a new request
                        session[field_name(job.process, thread, step)] = [
                            job.process,
                            thread,
                            step,
                        ]
                        hits = session.incr("hits")
                        mine = session.incr(f"proc{job.process}")
                        with lock:
                            report.requests += 1
                            report.hits.append(hits)
                            report.mine.append(mine)
                            if session.id != expected or session.new:
                                report.strays.append(f"{session!r} new={session.new}")

                return run

            start.wait()
            began = time.monotonic()
            run_threads([writer(t) for t in range(job.threads)], report.errors)
            report.seconds = time.monotonic() - began
        finally:
            store.close()
    except BaseException:
        report.errors.append(traceback.format_exc())
        start.abort()  # the other children stop waiting for this one
    results.put(report)


def race_logouts(
    job: RaceJob,
    start: Barrier,
    logged_out: Barrier,
    all_out: Event,
    results: Queue[RaceReport],
) -> None:
    """Writers sweep every session (in shuffled rounds) while one thread logs out a share.

    Each request opens the session from its cookie and makes three writes. The
    logout thread waits until this process's writers finished one round, then
    invalidates every session whose index is ``process`` modulo ``processes``.
    Once every process's logouts are done (``logged_out``), ``all_out`` is set and
    each writer makes ``rounds_after`` more rounds, then stops.
    """
    report = RaceReport(job.process)
    rounds = [0] * job.writers
    try:
        store = SessionStore(redis=job.url, **job.settings)
        try:

            def writer(thread: int) -> Callable[[], None]:
                def run() -> None:
                    rng = random.Random(job.process * 1000 + thread)
                    order = list(range(len(job.cookies)))
                    left = job.rounds_after
                    deadline = time.monotonic() + TIMEOUT
                    round_ = 0
                    while True:
                        if all_out.is_set():
                            if not left:
                                return
                            left -= 1
                        elif time.monotonic() > deadline:
                            raise RuntimeError("the logouts never all finished")
                        rng.shuffle(order)
                        for j in order:
                            began = time.monotonic()
                            session = store.open_id(job.cookies[j])
                            session[f"w{job.process}.{thread}.{round_}"] = round_
                            first = session.id
                            session.incr("n")
                            session[f"x{job.process}.{thread}.{round_}"] = j
                            ended = time.monotonic()
                            report.requests.append((j, began, ended, first, session.id))
                        round_ += 1
                        rounds[thread] = round_

                return run

            def logout() -> None:
                try:
                    deadline = time.monotonic() + TIMEOUT
                    while min(rounds) < 1:  # the writers are going
                        if time.monotonic() > deadline or report.errors:
                            raise RuntimeError("the writers never finished a round")
                        time.sleep(0.001)
                    for j in range(job.process, len(job.cookies), job.processes):
                        session = store.open_id(job.cookies[j])
                        began = time.monotonic()
                        session.invalidate()
                        report.logouts[j] = (began, time.monotonic())
                        if not session.invalidated or session.id is not None:
                            raise AssertionError(f"invalidate() left {session!r}")
                        time.sleep(0.002)
                    logged_out.wait()
                except BaseException:
                    logged_out.abort()  # the other processes' logouts stop waiting
                    raise
                finally:
                    all_out.set()  # on failure too, so that the writers stop

            start.wait()
            run_threads([writer(t) for t in range(job.writers)] + [logout], report.errors)
        finally:
            store.close()
    except BaseException:
        report.errors.append(traceback.format_exc())
        start.abort()
        logged_out.abort()
        all_out.set()
    results.put(report)
