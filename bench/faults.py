"""Faults under load: what clients see and what Redis keeps when servers fail.

Run it through ``bench/run-faults``. Every scenario starts its own private
servers from the embedded binary on free loopback ports, drives them with
8 threads using sessions (``bench/fault_load.py``), injects one fault, waits
until operations succeed again, then checks the data on the server(s):

1. standalone master killed (SIGKILL) and restarted on its port, with
   ``appendonly yes`` + ``appendfsync always`` and without persistence;
2. Sentinel: ``SENTINEL FAILOVER`` and SIGKILL of the master, without and with
   the store's ``wait_for_replicas``, and with ``min-replicas-to-write 1``;
3. Cluster (3 masters + 3 replicas): ``CLUSTER FAILOVER``, a live slot
   migration, SIGKILL of a master;
4. ``CLIENT PAUSE`` longer than the store's ``socket_timeout``;
5. lost replies (``tests/lossy_proxy.py``): is an increment applied twice?

Scenarios 2 and 3 live in ``fault_topologies.py``, the shared settings and
figures in ``fault_kit.py``, the markdown in ``fault_report.py``. The figures go
to ``docs/reliability.md`` (see bench/README.md).
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sys
import tempfile
import time
import traceback
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import redis

from fault_kit import (
    HERE,
    HOST,
    POOL,
    REPO,
    SETTLE,
    WARM,
    Run,
    Scenario,
    call,
    common_rows,
    guarded,
    kill9,
    loaded,
    log,
    make_store,
    unexpected_note,
)
from fault_load import Load, seed, tally
from fault_report import TRACEBACKS, report, server_name
from fault_servers import ServerResult, report_servers
from fault_topologies import scenario_cluster, scenario_sentinel
from hashsession.embedded import SERVER_ENV, EmbeddedRedis
from lossy_proxy import LossyProxy

OUT = REPO / "docs" / "reliability.md"
SERVERS_OUT = REPO / "docs" / "reliability-servers.md"
DOWN = 1.0  # seconds a killed standalone server stays down
PAUSE_MS = 3000
SOCKET_TIMEOUT = 0.5
LOST_REPLIES = 20


# -------------------------------------------------- 1. standalone kill/restart


def restart_run(persist: bool) -> Run:
    run = Run("appendonly yes, appendfsync always" if persist else "no persistence (default)")
    workdir = tempfile.mkdtemp(prefix="hsfault-aof-")
    args = ("--dir", workdir, "--appendonly", "yes", "--appendfsync", "always") if persist else ()
    server = EmbeddedRedis(args=args).start()
    try:
        store = make_store(server.url)
        ids = seed(store, POOL)
        with loaded(Load(store, ids)) as load:
            time.sleep(WARM)
            port = server.port
            t_kill = time.monotonic()
            kill9(server)
            server.stop()  # reaps it; the AOF is in workdir, which stop() leaves alone
            time.sleep(max(0.0, t_kill + DOWN - time.monotonic()))
            server = EmbeddedRedis(port=port, args=args).start()
            t_ready = time.monotonic()
            load.wait_steady(t_ready, SETTLE)
            ops = load.stop()
            run.unexpected, run.examples = load.unexpected, load.examples
        store.close()
        admin = server.client()
        t = tally(ops, store.config, admin, [admin], ids)
        admin.close()
    finally:
        server.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    back = [op.end for op in ops if op.ok and op.end > t_ready]
    recovery = min(back) - t_ready if back else float("nan")
    before = sum(1 for op in ops if op.ok and op.kind == "set" and op.end < t_kill)
    run.tally, run.facts = t, {"recovery": recovery, "acked_before_kill": before}
    run.rows = {
        "server down (SIGKILL to answering again)": f"{t_ready - t_kill:.2f} s",
        "server answering again to first acknowledged operation": f"{recovery * 1000:.0f} ms",
        **common_rows(t, ops),
        "every failure a BackendError": "yes" if t.not_backend == 0 else "NO",
    }
    return run


def scenario_restart() -> Scenario:
    runs = [restart_run(True), restart_run(False)]
    notes = []
    aof, bare = runs[0].tally, runs[1].tally
    assert aof is not None and bare is not None
    notes.append(
        "While the server was down every operation failed, and "
        + (
            "each failure was a `BackendError`"
            if aof.not_backend + bare.not_backend == 0
            else f"{aof.not_backend + bare.not_backend} failures were NOT a `BackendError`"
        )
        + f"; the first operation after the restart succeeded "
        f"{runs[0].facts['recovery'] * 1000:.0f} ms (AOF) and "
        f"{runs[1].facts['recovery'] * 1000:.0f} ms (no persistence) after the server "
        "answered again: stale pooled connections are replaced, nothing waits for a timeout."
    )
    notes.append(
        f"With `appendfsync always` {aof.writes_lost} of {aof.writes_acked} acknowledged writes "
        f"and {aof.incr_lost} acknowledged increments were lost. Without persistence the "
        f"restart came back empty: {bare.writes_lost} acknowledged writes were lost, which is "
        "what running Redis without persistence means (nothing was on disk), not a loss in "
        f"the library; {bare.replaced} later writes found their session gone and started a "
        "new session under a new id instead of resurrecting the old one."
    )
    if aof.not_backend + bare.not_backend:
        notes.append(unexpected_note(runs))
    if aof.incr_double + bare.incr_double:
        notes.append(f"**{aof.incr_double + bare.incr_double} increments were applied twice.**")
    return Scenario(
        "restart",
        "1. Master killed under load, then restarted",
        f"One redis-server, {POOL} sessions, 8 threads each looping over `open_id(cookie)`, "
        f"`set` of a new key and `incr`. After {WARM:g} s the server gets SIGKILL; "
        f"{DOWN:g} s later it is started again on the same port (same data directory).",
        runs,
        notes,
    )


# ----------------------------------------------------------- 4. paused server


def pause_run() -> Run:
    run = Run(f"CLIENT PAUSE {PAUSE_MS} ALL, socket_timeout={SOCKET_TIMEOUT:g}")
    with EmbeddedRedis() as server:
        store = make_store(f"{server.url}?socket_timeout={SOCKET_TIMEOUT:g}")
        ids = seed(store, POOL)
        admin = server.client()
        with loaded(Load(store, ids)) as load:
            time.sleep(WARM)
            call(admin, "CLIENT PAUSE", PAUSE_MS, "ALL")
            # The pause began before its reply came back, and ends at most this late:
            t0 = time.monotonic()
            t1 = t0 + PAUSE_MS / 1000
            load.wait_steady(t1, SETTLE)
            ops = load.stop()
            run.unexpected, run.examples = load.unexpected, load.examples
        store.close()
        t = tally(ops, store.config, admin, [admin], ids)
        admin.close()
    early = [op for op in ops if t0 <= op.start < t1 - SOCKET_TIMEOUT]
    late = [op for op in ops if t1 - SOCKET_TIMEOUT <= op.start < t1]
    failed = [op for op in early + late if not op.ok]
    timeouts = [op for op in failed if op.backend and op.cause == "TimeoutError"]
    after = [op.end for op in ops if op.ok and op.start >= t1]
    run.tally = t
    run.facts = {
        "early": len(early),
        "early_failed": sum(not op.ok for op in early),
        "timeouts": len(timeouts),
        "failed": len(failed),
        "longest_failed": max((op.took for op in failed), default=0.0),
        "late": len(late),
        "late_ok": sum(op.ok for op in late),
    }
    run.rows = {
        "operations started in the pause, over socket_timeout before its end": str(len(early)),
        "of those, failed": str(run.facts["early_failed"]),
        "operations started in the pause's last socket_timeout: acknowledged / failed": (
            f"{run.facts['late_ok']:.0f} / {len(late) - run.facts['late_ok']:.0f}"
        ),
        "failures with BackendError (TimeoutError) / otherwise": (
            f"{len(timeouts)} / {len(failed) - len(timeouts)}"
        ),
        "longest failed operation": f"{run.facts['longest_failed']:.3f} s",
        "first acknowledged operation started after the pause": (
            f"+{min(after) - t1:.3f} s after its end" if after else "none"
        ),
        **common_rows(t, ops),
    }
    return run


def scenario_pause() -> Scenario:
    run = pause_run()
    f = run.facts
    t = run.tally
    notes = []
    if t is not None:
        notes.append(
            f"{f['early_failed']:.0f} of {f['early']:.0f} operations started during the "
            f"{PAUSE_MS / 1000:g} s pause (and over {SOCKET_TIMEOUT:g} s before its end) failed; "
            f"{f['timeouts']:.0f} of all {f['failed']:.0f} failures were a `BackendError` "
            "caused by redis-py's `TimeoutError`. The longest failed operation took "
            f"{f['longest_failed']:.2f} s: the socket timeout ({SOCKET_TIMEOUT:g} s), not the "
            "pause; "
            + (
                f"{f['late_ok']:.0f} operations started in its last {SOCKET_TIMEOUT:g} s were "
                "answered when it ended"
                if f["late_ok"]
                else f"even the {f['late']:.0f} started in its last {SOCKET_TIMEOUT:g} s timed out "
                "rather than being answered when it ended"
            )
            + ". Afterwards operations succeeded again."
        )
        notes.append(
            f"{t.incr_failed_applied} timed-out increments were applied by the server once the "
            f"pause ended and {t.incr_double} were applied twice: redis-py closes a connection "
            "whose reply timed out and the store does not resend the command; "
            + (
                "none of them ran later (redis-py had closed their connections). "
                if t.incr_failed_applied == 0
                else "Redis ran some pending commands of closed connections when the pause ended. "
            )
            + "A timeout is an ambiguous failure: the command may or may not have run."
        )
    return Scenario(
        "pause",
        "4. Paused server",
        f"One redis-server; the store's URL carries `?socket_timeout={SOCKET_TIMEOUT:g}`; load "
        f"as in 1; after {WARM:g} s an admin connection sends `CLIENT PAUSE {PAUSE_MS} ALL`.",
        [run],
        notes,
    )


# ------------------------------------------------------------ 5. lost replies


def lost_reply_run(server: EmbeddedRedis, name: str, client_for: Callable[[str], Any]) -> Run:
    run = Run(name)
    counter = "lost_reply_counter"
    admin = server.client()
    proxy = LossyProxy(HOST, server.port or 0, count=counter.encode())
    try:
        store = make_store(client_for(proxy.url()))
        session = store.open()
        session.set(counter, 0)
        sid = session.id or ""
        key = store.config.key_of(sid)
        cookie = store.config.cookie_value(sid)
        # One increment with its reply delivered, so the server has the script cached and
        # the reply lost below is the increment's, not a NOSCRIPT asking for the source.
        store.open_id(cookie).incr(counter)
        start_value = int(admin.hget(key, counter) or 0)
        sent_before = proxy.forwarded
        acked = 0
        raised: Counter[str] = Counter()
        took = 0.0
        for _ in range(LOST_REPLIES):
            proxy.lose_next("drop")
            start = time.monotonic()
            try:
                store.open_id(cookie).incr(counter)
                acked += 1
            except Exception as exc:
                cause = exc.__cause__
                label = type(exc).__name__ + (f" ({type(cause).__name__})" if cause else "")
                raised[label] += 1
            took = max(took, time.monotonic() - start)
        received = proxy.forwarded - sent_before
        swallowed = len(proxy.lost_replies)
        store.close()
    finally:
        proxy.close()
    value = int(admin.hget(key, counter) or 0) - start_value
    admin.close()
    run.facts = {"value": value, "received": received, "acked": acked}
    run.rows = {
        "increments called, each with its reply lost once": str(LOST_REPLIES),
        "returned / raised": f"{acked} / {sum(raised.values())}",
        "raised, by class (cause)": "; ".join(f"{k}: {n}" for k, n in raised.items()) or "none",
        "increment commands the server received": str(received),
        "replies swallowed by the proxy": str(swallowed),
        "counter's increase on the server": str(value),
        "applied more than once (counter - calls)": str(value - LOST_REPLIES),
        "longest call": f"{took:.3f} s",
    }
    return run


def scenario_lost_replies() -> Scenario:
    runs = []
    with EmbeddedRedis() as server:
        clients: list[tuple[str, Callable[[str], Any]]] = [
            ("SessionStore(redis=url): sync_client", lambda url: url),
            ("redis.Redis.from_url(url)", lambda url: redis.Redis.from_url(url)),
            (
                "redis.Redis(host=, port=) (redis-py defaults)",
                lambda url: redis.Redis(host=HOST, port=int(url.rsplit(":", 1)[1].split("/")[0])),
            ),
        ]
        for name, client_for in clients:
            log(f"lost replies: {name}")
            runs.append(guarded(name, lost_reply_run, server, name, client_for))
    notes = []
    for r in runs:
        if r.facts:
            twice = r.facts["value"] - LOST_REPLIES
            notes.append(
                f"{r.name}: {r.facts['acked']:.0f} of {LOST_REPLIES} calls returned, the "
                f"server received {r.facts['received']:.0f} increment commands and the counter "
                f"went up by {r.facts['value']:.0f}: "
                + (
                    "no increment was applied twice."
                    if twice == 0
                    else f"**{twice:.0f} increments were applied twice**, reported as success."
                )
            )
    notes.append(
        "A lost reply is ambiguous: the command may have run. A client that resends it on "
        "a new connection applies an increment twice and reports success; one that does not "
        "resend raises `BackendError` and the increment counts once."
    )
    return Scenario(
        "lost-replies",
        "5. No double apply when a reply is lost",
        "One redis-server behind a small TCP proxy (`tests/lossy_proxy.py`) that forwards "
        "each increment to the server, waits for the server's reply, then closes the "
        f"client's connection instead of passing the reply on; {LOST_REPLIES} increments "
        "through a session (`open_id(cookie).incr(...)`), each losing its reply once, for "
        "three kinds of client handed to `SessionStore`. The counter is read from the "
        "server directly.",
        runs,
        notes,
    )


SCENARIOS: dict[str, Callable[[], Scenario]] = {
    "restart": scenario_restart,
    "sentinel": scenario_sentinel,
    "cluster": scenario_cluster,
    "pause": scenario_pause,
    "lost-replies": scenario_lost_replies,
}


def run_scenarios(names: Sequence[str]) -> list[Scenario]:
    """Each named scenario in turn; one that fails is reported with its error."""
    scenarios = []
    for name in names:
        log(f"scenario {name}")
        start = time.monotonic()
        try:
            scenario = SCENARIOS[name]()
        except Exception as exc:
            log(f"scenario {name} failed:\n{traceback.format_exc()}")
            scenario = Scenario(name, name, "", [Run(name, error=repr(exc))], [])
        scenario.seconds = time.monotonic() - start
        scenarios.append(scenario)
        log(f"scenario {name}: {scenario.seconds:.0f} s")
    return scenarios


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--only", help=f"comma-separated scenarios to run ({','.join(SCENARIOS)}); default all"
    )
    parser.add_argument("--out", type=Path, help=f"where to write (default {OUT})")
    parser.add_argument(
        "--servers",
        help="comma-separated HASHSESSION_SERVER values (redis6,valkey,/usr/bin/redis-server):"
        " run the scenarios once per server and write a report server by server"
        f" (default {SERVERS_OUT})",
    )
    args = parser.parse_args(argv)
    names = list(SCENARIOS) if not args.only else [n.strip() for n in args.only.split(",")]
    unknown = [n for n in names if n not in SCENARIOS]
    if unknown:
        parser.error(f"unknown scenarios: {', '.join(unknown)}")
    out = args.out or (OUT if not args.only else HERE / "results" / "reliability.md")
    if args.servers and not args.out:
        out = SERVERS_OUT
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    begun = time.monotonic()
    shown = sys.argv[1:] if argv is None else argv
    if args.servers:
        results: list[ServerResult] = []
        for value in [v.strip() for v in args.servers.split(",")]:
            os.environ[SERVER_ENV] = value
            server = server_name()
            log(f"server {value}: {server[0]}")
            results.append((server, run_scenarios(names)))
        scenarios = [s for _, found in results for s in found]
        text = report_servers(results, time.monotonic() - begun, shown)
    else:
        scenarios = run_scenarios(names)
        text = report(scenarios, time.monotonic() - begun, shown)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(text, encoding="utf-8")
    traces = [
        f"== {s.key}: {r.name}: {name}\n{trace}"
        for s in scenarios
        for r in s.runs
        for name, trace in r.unexpected.items()
    ]
    TRACEBACKS.parent.mkdir(parents=True, exist_ok=True)
    TRACEBACKS.write_text("\n".join(traces) or "(none)\n", encoding="utf-8")
    print(text)
    log(f"written to {out}")
    return 0 if all(r.error is None for s in scenarios for r in s.runs) else 1


if __name__ == "__main__":
    sys.exit(main())
