"""Per-operation cost of hashsession's live Session against DRSession and raw redis-py.

Run it through ``bench/run-core`` (which builds ``bench/.venv-core``). In one run
against a private redis-server on a free loopback port it measures set, get,
``in``, delete and incr through:

* ``hashsession``: a steady-state :class:`hashsession.Session` (created by one
  write first, so reads are plain ``HGET``/``HEXISTS`` and writes are
  ``EVALSHA`` of the live scripts);
* ``DRSession``: ``drsession.Session`` 1.2.0 (its ``s[k] += 1`` is a read plus
  ``HINCRBY``: two round trips);
* ``raw redis-py``: ``client.hset``/``hget``/``hexists``/``hdel``/``hincrby``;
* ``raw same-commands``: redis-py ``execute_command`` sending exactly the
  commands the Session sends (checked against a capture of what it sends);
* two helper columns that split hashsession's gap over the same commands: the
  same commands on the kind of client ``SessionStore(redis=url)`` builds, and
  (set, get) the same commands plus the JSON codec's work.

Implementations are interleaved within every round, each round starting with a
different one; both CPUs are kept awake by idle-priority busy loops that this
script starts and stops, and this process and its redis-server share one CPU
(``--pin``). Times are medians of individually timed operations. See
bench/README.md.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import datetime
import gc
import io
import json
import os
import platform
import pstats
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import drsession
import redis
from redis.connection import Connection

import hashsession
from hashsession import SessionStore
from hashsession.embedded import EmbeddedRedis, server_identity
from hashsession.scripts import EVERY, LIVE, OPEN, QUICK
from hashsession.store import connect

HERE = Path(__file__).resolve().parent


def use_client(session: Any, client: Any) -> None:
    """Point a Session at another client (it keeps the client's bound execute_command)."""
    session._client = client
    session._execute = client.execute_command


RESULTS = HERE / "results" / "core_ops.md"

FIELD = "cart"
VALUE = [101, 202, 303]  # a small, typical session value, JSON-encoded by both libraries
COUNTER = "n"

OPS = ("set", "get", "in", "delete", "incr")
FIRST = "first get"  # the first command of a request: EVALSHA QUICK get (slide TTL + HGET)
HS, DR, RAW, SAME = "hashsession", "DRSession", "raw redis-py", "raw same-commands"
IMPLS = (HS, DR, RAW, SAME)
# An extra column for set and get only: the same commands plus the codec's work
# (JSON encode before the send, decode after), to split hashsession's overhead into
# "the codec" and "everything else".
SAMEJ = "same-commands + JSON"
# An extra column for every op: the same commands on a client built the way
# SessionStore(redis=url) builds its own (its connection pool class and settings),
# to split off what the store's choice of pool costs against redis-py's default.
SAMEP = "same-commands on the store's kind of client"
GOAL = 1.05

Timed = Callable[[], Any]


# ------------------------------------------------------------------ busy loops

_BUSY_SOURCE = """
import os, sys
os.sched_setaffinity(0, {int(sys.argv[1])})
os.nice(19)
try:
    os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
    print("SCHED_IDLE", flush=True)
except (AttributeError, OSError):
    print("nice19", flush=True)
while True:
    pass
"""


def usable_cpus() -> list[int]:
    return sorted(os.sched_getaffinity(0))


@contextlib.contextmanager
def busy_loops(enabled: bool) -> Iterator[str]:
    """One idle-priority spinning process per usable CPU, for the duration of the block."""
    if not enabled:
        yield "off (CPUs may sleep between round trips: expect slower, noisier times)"
        return
    procs: list[subprocess.Popen[str]] = []
    try:
        for cpu in usable_cpus():
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-c", _BUSY_SOURCE, str(cpu)],
                    stdout=subprocess.PIPE,
                    stdin=subprocess.DEVNULL,
                    text=True,
                )
            )
        modes = {p.stdout.readline().strip() for p in procs if p.stdout is not None}
        policy = "nice 19 + SCHED_IDLE" if modes == {"SCHED_IDLE"} else "nice 19"
        pids = ", ".join(str(p.pid) for p in procs)
        yield (
            f"on: {len(procs)} busy-loop processes, one pinned to each CPU ({policy}; "
            f"pids {pids}), started by this script and stopped at its end"
        )
    finally:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(5)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
            if p.stdout is not None:
                p.stdout.close()


# ------------------------------------------------------------------ CPU pinning


@contextlib.contextmanager
def pinned(mode: str, server_pid: int) -> Iterator[str]:
    """Put this process and its redis-server on one CPU, on two, or leave them to the kernel.

    Measured here: a loopback round trip is ~38 us when client and server share a CPU and
    ~54 us when they sit on different CPUs (a cross-CPU wake-up); left alone the kernel
    switches between the two every few batches, which makes medians bimodal.
    """
    cpus = usable_cpus()
    mine = os.sched_getaffinity(0)
    theirs = os.sched_getaffinity(server_pid)
    if mode == "none" or (mode == "split" and len(cpus) < 2):
        yield "none (the kernel places this process and redis-server)"
        return
    client_cpu, server_cpu = cpus[0], (cpus[1] if mode == "split" else cpus[0])
    os.sched_setaffinity(0, {client_cpu})
    os.sched_setaffinity(server_pid, {server_cpu})
    try:
        where = "the same CPU" if client_cpu == server_cpu else "different CPUs"
        yield (
            f"{mode}: this process on CPU {client_cpu}, redis-server on CPU {server_cpu} ({where})"
        )
    finally:
        os.sched_setaffinity(0, mine)
        with contextlib.suppress(OSError):
            os.sched_setaffinity(server_pid, theirs)


# ------------------------------------------------------------ counting client


class Tally:
    """What a counting connection sent: every command and every packed send (round trip)."""

    def __init__(self) -> None:
        self.sends = 0
        self.commands: list[tuple[Any, ...]] = []

    def reset(self) -> None:
        self.sends = 0
        self.commands = []


TALLY = Tally()


class CountingConnection(Connection):
    """A redis-py connection that records what it sends (for the verification pass only)."""

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        TALLY.sends += 1
        super().send_packed_command(command, check_health)

    def send_command(self, *args: Any, **kwargs: Any) -> None:
        TALLY.commands.append(args)
        super().send_command(*args, **kwargs)


def server_calls(client: redis.Redis) -> dict[str, int]:
    stats = client.info("commandstats")
    return {
        name.removeprefix("cmdstat_"): int(v["calls"])
        for name, v in stats.items()
        if name != "cmdstat_info"
    }


def calls_delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    out = {k: n - before.get(k, 0) for k, n in after.items()}
    return {k: n for k, n in out.items() if n}


# ------------------------------------------------------------- the contenders


def resp(*parts: str | bytes) -> bytes:
    """One command in the Redis protocol, packed by hand."""
    items = [p.encode("utf-8") if isinstance(p, str) else p for p in parts]
    return b"*%d\r\n" % len(items) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in items)


class BareSocket:
    """A plain socket to the server for the untimed re-set before each delete.

    Using a redis-py client for it would warm exactly the code the raw columns run
    next (and not hashsession's): measured here, that alone made hashsession's delete
    look ~3 us slower. A pre-packed command on a bare socket warms neither.
    """

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 0))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def sender(self, message: bytes) -> Timed:
        sendall, recv = self.sock.sendall, self.sock.recv

        def send() -> None:
            sendall(message)
            reply = recv(64)
            while not reply.endswith(b"\r\n"):
                reply += recv(64)
            if reply[:1] != b":":
                raise RuntimeError(f"unexpected reply to a re-set: {reply!r}")

        return send

    def close(self) -> None:
        self.sock.close()


def pool_name(pool: Any) -> str:
    cls = type(pool)
    size = getattr(pool, "max_connections", None)
    limit = f", max_connections={size}" if size and size < 2**31 - 1 else ""
    return f"{cls.__module__}.{cls.__qualname__}{limit}"


class Bench:
    """Sessions, keys and timed callables for every implementation, on one server."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.aux = redis.Redis.from_url(url)  # untimed set-up and checks
        self.bare = BareSocket(url)  # untimed re-sets before each delete
        self.load_scripts()

        # hashsession: created with one write, then steady state on the same object.
        # slide_share=0: every first get slides (QUICK get); the peers' one-request table
        # measures the default, where a session slid lately is read with one HMGET.
        self.store = SessionStore(redis=url, slide_share=0)
        self.max_keys = self.store.config.max_keys
        self.session = self.store.open()
        self.session.update({FIELD: VALUE, COUNTER: 0})
        assert self.session.id is not None and self.session.core.key is not None
        self.hs_key: str = self.session.core.key
        self.enc: bytes = self.session.core.encode(FIELD, VALUE)

        # raw same-commands: its own hash, made by hashsession so it has the same shape.
        twin = self.store.open()
        twin.update({FIELD: VALUE, COUNTER: 0})
        assert twin.core.key is not None
        self.same_key: str = twin.core.key
        self.twin_id: str = twin.id or ""
        self.same = redis.Redis.from_url(url)
        self.samej = redis.Redis.from_url(url)
        self.samep = connect(url)
        store_pool, samep_pool = self.store.client.connection_pool, self.samep.connection_pool
        if type(samep_pool) is not type(store_pool):
            raise SystemExit(
                f"FAIL: hashsession.store.connect() made a {type(samep_pool).__name__}, "
                f"but the store uses a {type(store_pool).__name__}"
            )
        self.pools = {
            HS: pool_name(store_pool),
            RAW: pool_name(self.same.connection_pool),
        }

        # raw redis-py: a plain hash with the same fields.
        self.raw_key = "raw:" + os.urandom(16).hex()
        self.aux.hset(self.raw_key, mapping={"\x00c": 0, FIELD: self.enc, COUNTER: 0})
        self.raw = redis.Redis.from_url(url)

        # DRSession 1.2.0, its own Session class with its default (json) loads/dumps.
        self.dr_key = "drsession:" + os.urandom(16).hex()
        self.dr_client = redis.Redis.from_url(url)
        self.dr = drsession.Session(self.dr_client, self.dr_key)
        self.dr[FIELD] = VALUE
        self.dr[COUNTER] = 0
        self.dr_enc = json.dumps(VALUE).encode("utf-8")

        self.keys = {HS: self.hs_key, DR: self.dr_key, RAW: self.raw_key, SAME: self.same_key}
        self.keys[SAMEP] = self.keys[SAMEJ] = self.same_key
        self.resets = {HS: self.enc, DR: self.dr_enc, RAW: self.enc, SAME: self.enc}
        self.resets[SAMEP] = self.resets[SAMEJ] = self.enc
        self.first_box: list[Any] = [None]

    def restore(self) -> None:
        """Put the field back on every key (a delete removed it)."""
        for impl in IMPLS:
            self.aux.hset(self.keys[impl], FIELD, self.resets[impl])

    def load_scripts(self) -> None:
        for script in EVERY:
            assert self.aux.script_load(script.source) == script.sha

    # The commands Session sends in steady state, built from protocol.py's plans.
    def same_commands(self, key: str) -> dict[str, tuple[Any, ...]]:
        return {
            "set": ("EVALSHA", LIVE["set"].sha, 1, key, self.max_keys, FIELD, self.enc),
            "get": ("HGET", key, FIELD),
            "in": ("HEXISTS", key, FIELD),
            "delete": ("EVALSHA", LIVE["delete"].sha, 1, key, FIELD),
            "incr": ("EVALSHA", LIVE["incr"].sha, 1, key, self.max_keys, COUNTER, 1),
        }

    def open_command(self, key: str) -> tuple[Any, ...]:
        """EVALSHA QUICK get as SessionCore._open builds it for a first get (now in ms changes)."""
        c = self.store.config
        now = int(time.time() * 1000)
        idle, absolute = b"%d" % c.idle_ms, b"%d" % c.absolute_ms
        return ("EVALSHA", QUICK["get"].sha, 1, key, idle, b"%d" % now, absolute, FIELD)

    def timed(self, impl: str, op: str, client: redis.Redis | None = None) -> Timed:
        """The callable that performs one ``op`` through ``impl`` (optionally on ``client``)."""
        if impl == HS:
            s = self.session
            if op == FIRST:
                box = self.first_box

                def hs_first() -> Any:
                    return box[0][FIELD]

                return hs_first

            def hs_set() -> None:
                s[FIELD] = VALUE

            def hs_get() -> Any:
                return s[FIELD]

            def hs_in() -> bool:
                return FIELD in s

            def hs_delete() -> None:
                del s[FIELD]

            def hs_incr() -> int:
                return s.incr(COUNTER)

            fns = {"set": hs_set, "get": hs_get, "in": hs_in, "delete": hs_delete}
            fns["incr"] = hs_incr
            return fns[op]
        if impl == DR:
            d = self.dr if client is None else drsession.Session(client, self.dr_key)

            def dr_set() -> None:
                d[FIELD] = VALUE

            def dr_get() -> Any:
                return d[FIELD]

            def dr_in() -> bool:
                return FIELD in d

            def dr_delete() -> None:
                del d[FIELD]

            def dr_incr() -> None:
                d[COUNTER] += 1  # DRSession: HGET, then HINCRBY of the difference

            fns = {"set": dr_set, "get": dr_get, "in": dr_in, "delete": dr_delete}
            fns["incr"] = dr_incr
            return fns[op]
        if impl == RAW:
            r = self.raw if client is None else client
            key, enc = self.raw_key, self.enc

            def raw_set() -> Any:
                return r.hset(key, FIELD, enc)

            def raw_get() -> Any:
                return r.hget(key, FIELD)

            def raw_in() -> Any:
                return r.hexists(key, FIELD)

            def raw_delete() -> Any:
                return r.hdel(key, FIELD)

            def raw_incr() -> Any:
                return r.hincrby(key, COUNTER, 1)

            fns = {"set": raw_set, "get": raw_get, "in": raw_in, "delete": raw_delete}
            fns["incr"] = raw_incr
            fns[FIRST] = raw_get
            return fns[op]
        if impl == SAMEJ:
            cj = self.samej if client is None else client
            sha, key, mk = LIVE["set"].sha, self.same_key, self.max_keys
            dumps, loads = self.store.config.codec.dumps, self.store.config.codec.loads

            def samej_set() -> Any:
                enc = dumps(VALUE).encode("utf-8")
                return cj.execute_command("EVALSHA", sha, 1, key, mk, FIELD, enc)

            def samej_get() -> Any:
                return loads(cj.execute_command("HGET", key, FIELD))

            return {"set": samej_set, "get": samej_get}[op]
        # SAME (and SAMEP): exactly the commands Session sends, through execute_command.
        c = (self.samep if impl == SAMEP else self.same) if client is None else client
        if op == FIRST:
            key, open_command = self.same_key, self.open_command

            def same_first() -> Any:
                return c.execute_command(*open_command(key))

            return same_first
        cmd = self.same_commands(self.same_key)[op]

        def same() -> Any:
            return c.execute_command(*cmd)

        return same

    def prep(self, impl: str, op: str) -> Timed | None:
        """Untimed work before each timed call: re-set the field a delete removes, or open
        a fresh session object for a first command (done for every column: it costs the
        next call ~1-2 us of cache misses, measured)."""
        if op == "delete":
            return self.bare.sender(resp("HSET", self.keys[impl], FIELD, self.resets[impl]))
        if op == FIRST:  # every column pays the same untimed set-up, so caches match
            box, open_id, sid = self.first_box, self.store.open_id, self.session.id

            def fresh() -> None:
                box[0] = open_id(sid)

            return fresh
        return None

    def close(self) -> None:
        for client in (self.aux, self.same, self.samej, self.samep, self.raw, self.dr_client):
            client.close()
        self.bare.close()
        self.store.close()


# ------------------------------------------------------------------ verifying


def verify_commands(b: Bench, url: str) -> None:
    """Capture what the timed Session sends and compare it with the same-commands column."""
    counting = redis.Redis.from_url(url, connection_class=CountingConnection)
    counting.ping()
    s = b.session
    original = s._client
    use_client(s, counting)
    problems = []
    try:
        expected = b.same_commands(b.hs_key)
        for op in OPS:
            prep = b.prep(HS, op)
            if prep:
                prep()
            TALLY.reset()
            b.timed(HS, op)()
            if TALLY.commands != [expected[op]]:
                problems.append(f"{op}: Session sent {TALLY.commands!r}, expected {expected[op]!r}")
        # the first command of a request
        b.restore()
        b.prep(HS, FIRST)()  # type: ignore[misc]
        use_client(b.first_box[0], counting)
        TALLY.reset()
        b.timed(HS, FIRST)()
        want = b.open_command(b.hs_key)
        got = TALLY.commands
        if (
            len(got) != 1
            or len(got[0]) != len(want)
            or got[0][:5] != want[:5]
            or got[0][6:] != want[6:]
            or type(got[0][5]) is not bytes
            or abs(int(got[0][5]) - int(want[5])) > 5000
        ):
            problems.append(f"{FIRST}: Session sent {got!r}, expected {want!r}")
    finally:
        use_client(s, original)
        counting.close()
    if problems:
        raise SystemExit(
            "FAIL: the raw same-commands column would not send what Session sends:\n  "
            + "\n  ".join(problems)
        )


def count_round_trips(b: Bench, url: str, n: int = 50) -> dict[str, dict[str, tuple[float, str]]]:
    """Round trips (client sends) and server-side commands per operation, for every impl."""
    counting = redis.Redis.from_url(url, connection_class=CountingConnection)
    counting.ping()
    out: dict[str, dict[str, tuple[float, str]]] = {}
    s = b.session
    original = s._client
    use_client(s, counting)
    try:
        for op in (*OPS, FIRST):
            b.restore()
            out[op] = {}
            for impl in IMPLS:
                if op == FIRST and impl == DR:
                    continue
                fn = b.timed(impl, op, counting)
                prep = b.prep(impl, op)
                sends = 0
                server: dict[str, int] = {}
                for _ in range(n):
                    if prep:
                        prep()
                    if op == FIRST and impl == HS:
                        use_client(b.first_box[0], counting)
                    before = server_calls(b.aux)
                    TALLY.reset()
                    fn()
                    sends += TALLY.sends
                    for k, v in calls_delta(before, server_calls(b.aux)).items():
                        server[k] = server.get(k, 0) + v
                per_op = "+".join(
                    f"{k.upper()}" + (f"x{v / n:g}" if v != n else "")
                    for k, v in sorted(
                        server.items(), key=lambda kv: (-kv[1], kv[0] != "evalsha", kv[0])
                    )
                )
                out[op][impl] = (sends / n, per_op)
    finally:
        use_client(s, original)
        counting.close()
    return out


# ------------------------------------------------------------------- timing


def run_batch(fn: Timed, prep: Timed | None, n: int, out: list[int]) -> None:
    clock = time.perf_counter_ns
    append = out.append
    if prep is None:
        for _ in range(n):
            t0 = clock()
            fn()
            append(clock() - t0)
    else:
        for _ in range(n):
            prep()
            t0 = clock()
            fn()
            append(clock() - t0)


def measure(b: Bench, rounds: int, iters: int) -> dict[tuple[str, str], list[list[int]]]:
    """Per (op, impl): a list of rounds, each a list of per-call times in ns."""
    ops = (*OPS[:3], FIRST, *OPS[3:])  # FIELD exists for every read; delete re-sets it
    plan = {op: [impl for impl in IMPLS if not (op == FIRST and impl == DR)] for op in ops}
    for op in ("set", "get"):
        plan[op].append(SAMEJ)
    for op in OPS:
        plan[op].append(SAMEP)
    calls = {(op, impl): (b.timed(impl, op), b.prep(impl, op)) for op in ops for impl in plan[op]}
    samples: dict[tuple[str, str], list[list[int]]] = {k: [] for k in calls}
    # warm-up round, discarded
    for op in ops:
        for impl in plan[op]:
            fn, prep = calls[op, impl]
            run_batch(fn, prep, max(50, iters // 10), [])
    gc.collect()
    for r in range(rounds):
        for op in ops:
            impls = plan[op]
            k = r % len(impls)
            for impl in impls[k:] + impls[:k]:  # interleaved, each round led by another impl
                fn, prep = calls[op, impl]
                batch: list[int] = []
                run_batch(fn, prep, iters, batch)
                samples[op, impl].append(batch)
    return samples


def med_us(rounds: list[list[int]]) -> float:
    return statistics.median(t for batch in rounds for t in batch) / 1000


def round_ratios(a: list[list[int]], b: list[list[int]]) -> list[float]:
    return [statistics.median(x) / statistics.median(y) for x, y in zip(a, b, strict=True)]


def server_usec_per_call(b: Bench, n: int = 3000) -> dict[str, float]:
    """Redis's own time per call (INFO commandstats): HSET, EVALSHA set, HGET, QUICK get."""
    out: dict[str, float] = {}
    cases: dict[str, tuple[str, Timed]] = {
        "HSET": ("hset", b.timed(RAW, "set")),
        "EVALSHA set (incl. its HLEN+HSET)": ("evalsha", b.timed(SAME, "set")),
        "HGET": ("hget", b.timed(RAW, "get")),
        "EVALSHA QUICK get (incl. its commands)": ("evalsha", b.timed(SAME, FIRST)),
    }
    for label, (name, fn) in cases.items():
        b.aux.config_resetstat()
        for _ in range(n):
            fn()
        stats = b.aux.info("commandstats")[f"cmdstat_{name}"]
        out[label] = float(stats["usec"]) / int(stats["calls"])
    return out


# ------------------------------------------------------- hashsession's own Python


class StubClient:
    """Answers like Redis would, instantly: isolates the Python both sides run."""

    def __init__(self, enc: bytes) -> None:
        self.replies = {
            ("EVALSHA", LIVE["set"].sha): 1,
            ("EVALSHA", LIVE["incr"].sha): 7,
            ("EVALSHA", LIVE["delete"].sha): 1,
            ("EVALSHA", OPEN.sha): [enc],
            ("EVALSHA", QUICK["get"].sha): enc,
            ("HGET",): enc,
            ("HEXISTS",): 1,
            ("HDEL",): 1,
        }

    def execute_command(self, *args: Any) -> Any:
        if args[0] == "EVALSHA":
            return self.replies[args[0], args[1]]
        return self.replies[(args[0],)]


def own_python_us(b: Bench, n: int = 20000) -> dict[str, float]:
    """Microseconds of Session + protocol code per op, over bare execute_command, no I/O."""
    stub = StubClient(b.enc)
    s = b.store.open_id(b.session.id)
    use_client(s, stub)
    s.get(FIELD)  # QUICK get, then steady state
    cmds = b.same_commands(s.core.key or "")
    hs = {
        "set": lambda: s.__setitem__(FIELD, VALUE),
        "get": lambda: s[FIELD],
        "in": lambda: FIELD in s,
        "delete": lambda: s.__delitem__(FIELD),
        "incr": lambda: s.incr(COUNTER),
    }
    out = {}
    clock = time.perf_counter_ns
    for op in OPS:
        fn, cmd, ex = hs[op], cmds[op], stub.execute_command

        def bare(ex: Callable[..., Any] = ex, cmd: tuple[Any, ...] = cmd) -> Any:
            return ex(*cmd)

        best_hs = best_raw = float("inf")
        for _ in range(9):
            t0 = clock()
            for _ in range(n):
                fn()
            t1 = clock()
            for _ in range(n):
                bare()
            t2 = clock()
            best_hs, best_raw = min(best_hs, t1 - t0), min(best_raw, t2 - t1)
        out[op] = (best_hs - best_raw) / n / 1000

    # the first get of a request: open a session (not counted) and read through QUICK get
    open_id, sid, key = b.store.open_id, b.session.id, b.same_key
    best_open = best_first = best_bare = float("inf")
    for _ in range(9):
        t0 = clock()
        for _ in range(n):
            fresh = open_id(sid)
            use_client(fresh, stub)
        t1 = clock()
        for _ in range(n):
            fresh = open_id(sid)
            use_client(fresh, stub)
            fresh[FIELD]
        t2 = clock()
        for _ in range(n):
            stub.execute_command(*b.open_command(key))
        t3 = clock()
        best_open = min(best_open, t1 - t0)
        best_first = min(best_first, t2 - t1)
        best_bare = min(best_bare, t3 - t2)
    out[FIRST] = (best_first - best_open - best_bare) / n / 1000
    return out


def profile_op(b: Bench, op: str, n: int = 20000) -> str:
    """cProfile of ``n`` hashsession calls against the stub client: only our own Python
    (and the codec) is left to show, the network and redis-py are gone."""
    stub = StubClient(b.enc)
    s = b.store.open_id(b.session.id)
    use_client(s, stub)
    s.get(FIELD)  # QUICK get, then steady state
    calls: dict[str, Timed] = {
        "set": lambda: s.__setitem__(FIELD, VALUE),
        "get": lambda: s[FIELD],
        "in": lambda: FIELD in s,
        "delete": lambda: s.__delitem__(FIELD),
        "incr": lambda: s.incr(COUNTER),
    }
    fn = calls[op]
    prof = cProfile.Profile()
    prof.enable()
    for _ in range(n):
        fn()
    prof.disable()
    text = io.StringIO()
    stats = pstats.Stats(prof, stream=text)
    stats.sort_stats("tottime").print_stats(14)
    lines = [ln for ln in text.getvalue().splitlines() if ln.strip()]
    start = next((i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls")), 0)
    root = str(HERE.parent) + "/"
    return "\n".join(ln.replace(root, "") for ln in lines[start:])


# ------------------------------------------------------------------ reporting


def sh(*cmd: str) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        return ""


def machine(b: Bench) -> list[str]:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    info = b.aux.info("server")
    repo = HERE.parent
    head = sh("git", "-C", str(repo), "rev-parse", "--short", "HEAD")
    dirty = sh("git", "-C", str(repo), "status", "--porcelain", "--", "src")
    hiredis = "yes" if redis.utils.HIREDIS_AVAILABLE else "no (pure-Python parser)"
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return [
        f"- date: {now}",
        f"- machine: {model}, {os.cpu_count()} logical CPUs, {platform.platform()}",
        f"- Python {platform.python_version()} ({platform.python_implementation()})",
        f"- redis-py {redis.__version__}, hiredis: {hiredis}",
        f"- {server_identity(info)} (embedded server, 127.0.0.1, no persistence)",
        f"- hashsession {hashsession.__version__} at {head}"
        + (" with uncommitted changes in src/" if dirty else ""),
        f"- DRSession {drsession.__version__}",
    ]


def fmt(x: float, digits: int = 1) -> str:
    return f"{x:.{digits}f}"


def report(
    b: Bench,
    args: argparse.Namespace,
    busy: str,
    pin: str,
    samples: dict[tuple[str, str], list[list[int]]],
    trips: dict[str, dict[str, tuple[float, str]]],
    server: dict[str, float],
    own: dict[str, float],
) -> tuple[str, list[str]]:
    med = {k: med_us(v) for k, v in samples.items()}
    misses = []
    out = ["# hashsession core operations: per-operation time", ""]
    out += machine(b)
    out += [
        f"- busy loops: {busy}",
        f"- CPU pinning: {pin}",
        f"- {args.rounds} rounds x {args.iters} calls per implementation and operation, "
        "interleaved (hashsession, DRSession, raw, same-commands, same-commands on the "
        "store's kind of client, and for set/get same-commands + JSON; each round led by "
        "the next one); every call timed on its own; figures are medians of all calls",
        f"- clients: hashsession uses what `SessionStore(redis=url)` builds "
        f"(`{b.pools[HS]}`); DRSession, raw and same-commands use `redis.Redis.from_url(url)` "
        f"(`{b.pools[RAW]}`); each column has its own client and connection",
        f"- value: `{FIELD}` = `{json.dumps(VALUE)}` (JSON); delete: the field is re-set "
        "before each delete outside the timed region (a pre-packed HSET on a bare socket, "
        "so no redis-py or hashsession code runs in between); first get: "
        "a fresh Session object is opened (`store.open_id`) before each call, outside the "
        "timed region, for every column",
        "",
        "| operation | hashsession µs | DRSession µs | raw redis-py µs | raw same-commands µs "
        "| ratio vs raw | ratio vs same-commands | goal met? |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for op in OPS:
        hs, dr, raw, same = (med[op, i] for i in IMPLS)
        vs_raw, vs_same = hs / raw, hs / same
        if op in ("get", "in"):
            ok = vs_raw <= GOAL and vs_same <= GOAL
            goal = f"≤{GOAL}x raw and same"
        else:
            ok = vs_same <= GOAL
            goal = f"≤{GOAL}x same"
        if not ok:
            misses.append(op)
        label = {"incr": "incr (DRSession: `s['n'] += 1` = HGET + HINCRBY)"}.get(op, op)
        out.append(
            f"| {label} | {fmt(hs)} | {fmt(dr)} | {fmt(raw)} | {fmt(same)} | "
            f"{vs_raw:.3f} | {vs_same:.3f} | {'yes' if ok else 'NO'} ({goal}) |"
        )

    out += [
        "",
        "Where hashsession's time over the same commands goes. Spread: ratio of per-round "
        "medians, min / median / max. Gap: hashsession minus same-commands, medians, in a "
        "real round trip. Pool: same-commands on the store's kind of client minus "
        "same-commands. Codec: same-commands + JSON minus same-commands (set, get only). "
        "Rest: gap minus pool minus codec, i.e. Session + protocol code in a real round "
        "trip. Own Python hot: Session + protocol code on a stub client that answers "
        "instantly, minus bare `execute_command` on the same stub, best of 9 loops "
        "(caches warm):",
        "",
        "| operation | hashsession / same-commands | hashsession / raw (HGET for first get) "
        "| gap µs | pool µs | codec µs | rest µs | own Python hot µs |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for op in (*OPS, FIRST):
        rs = round_ratios(samples[op, HS], samples[op, SAME])
        rr = round_ratios(samples[op, HS], samples[op, RAW])
        gap = med[op, HS] - med[op, SAME]
        pool = med[op, SAMEP] - med[op, SAME] if (op, SAMEP) in med else None
        codec = med[op, SAMEJ] - med[op, SAME] if (op, SAMEJ) in med else None
        rest = None if pool is None else gap - pool - (codec or 0.0)
        cells = [f"{gap:.1f}"] + ["-" if x is None else f"{x:.1f}" for x in (pool, codec, rest)]
        out.append(
            f"| {op} | {min(rs):.3f} / {statistics.median(rs):.3f} / {max(rs):.3f} "
            f"| {min(rr):.3f} / {statistics.median(rr):.3f} / {max(rr):.3f} "
            f"| {' | '.join(cells)} | {own[op]:.2f} |"
        )

    out += [
        "",
        "Round trips per operation, counted at the client (packed sends), and the commands "
        "Redis executed per operation (INFO commandstats deltas; commands run inside a Lua "
        "script are counted too):",
        "",
        "| operation | hashsession | DRSession | raw redis-py | raw same-commands |",
        "|---|---|---|---|---|",
    ]
    budget_ok = True
    for op in (*OPS, FIRST):
        cells = []
        for impl in IMPLS:
            if impl not in trips[op]:
                cells.append("n/a")
                continue
            rt, cmds = trips[op][impl]
            cells.append(f"{rt:g} RT: {cmds}")
        if trips[op][HS][0] != 1:
            budget_ok = False
        out.append(f"| {op} | " + " | ".join(cells) + " |")
    out.append("")
    out.append(
        "hashsession round-trip budget (1 per single-key operation): "
        + ("met" if budget_ok else "**MISSED**")
    )

    hs_first, same_first, raw_hget = med[FIRST, HS], med[FIRST, SAME], med[FIRST, RAW]
    hs_set, same_set, raw_hset = med["set", HS], med["set", SAME], med["set", RAW]
    out += [
        "",
        "## First command of a request, and the check-and-set write",
        "",
        "| measured | median µs | x raw HGET / HSET |",
        "|---|---:|---:|",
        f"| raw HGET | {fmt(raw_hget)} | 1.000 |",
        f"| raw EVALSHA QUICK get (slide TTL + HGET) | {fmt(same_first)} | "
        f"{same_first / raw_hget:.3f} |",
        f"| hashsession first get of a request (QUICK get) | {fmt(hs_first)} | "
        f"{hs_first / raw_hget:.3f} |",
        f"| raw HSET | {fmt(raw_hset)} | 1.000 |",
        f"| raw EVALSHA set (check-and-set) | {fmt(same_set)} | {same_set / raw_hset:.3f} |",
        f"| hashsession set | {fmt(hs_set)} | {hs_set / raw_hset:.3f} |",
        "",
        f"The first command of a request (TTL slide + get in one EVALSHA QUICK get) costs "
        f"{hs_first / raw_hget:.2f}x a raw HGET through Session "
        f"({same_first / raw_hget:.2f}x sent raw; Session's own Python for it: "
        f"{own[FIRST]:.2f} µs); later reads are plain HGETs.",
        "",
        f"**A write that must not resurrect a deleted session costs {hs_set / raw_hset:.2f}x "
        f"a bare HSET** through Session ({same_set / raw_hset:.2f}x when the EVALSHA is sent "
        "raw).",
        "",
        f"Redis's own time per call (INFO commandstats `usec_per_call`, "
        f"{3000} calls each, CONFIG RESETSTAT between):",
        "",
    ]
    out += [f"- {label}: {us:.2f} µs" for label, us in server.items()]
    out.append("")
    return "\n".join(out), misses + ([] if budget_ok else ["round trips"])


# ---------------------------------------------------------------------- main


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="interleaved rounds (30)")
    parser.add_argument("--iters", type=int, default=1000, help="calls per batch (1000)")
    parser.add_argument("--no-busy", action="store_true", help="let the CPUs sleep")
    parser.add_argument(
        "--pin",
        choices=["same", "split", "none"],
        default="same",
        help="CPU placement of this process and redis-server (same: one CPU; default)",
    )
    parser.add_argument(
        "--profile",
        choices=[*OPS, "auto", "none"],
        default="auto",
        help="cProfile one hashsession op; auto: every op that misses its goal",
    )
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    t_start = time.monotonic()
    load_before = os.getloadavg()[0]
    with (
        EmbeddedRedis() as server,
        busy_loops(not args.no_busy) as busy,
        pinned(args.pin, server.pid or 0) as pin,
    ):
        print(f"redis-server pid {server.pid} on {server.url}", flush=True)
        print(f"busy loops {busy}\nCPU pinning: {pin}", flush=True)
        b = Bench(server.url)
        try:
            verify_commands(b, server.url)
            print("verified: the same-commands column sends exactly what Session sends")
            trips = count_round_trips(b, server.url)
            print(f"measuring: {args.rounds} rounds x {args.iters} calls ...", flush=True)
            samples = measure(b, args.rounds, args.iters)
            server_us = server_usec_per_call(b)
            own = own_python_us(b)
            text, misses = report(b, args, busy, pin, samples, trips, server_us, own)
            profiles = []
            wanted = (
                misses
                if args.profile == "auto"
                else []
                if args.profile == "none"
                else [args.profile]
            )
            for op in wanted:
                if op in OPS:
                    profiles.append(
                        f"\ncProfile of 20000 hashsession `{op}` calls against the stub client "
                        "(no I/O; top 14 by own time; the `<lambda>` is the benchmark's):\n\n"
                        f"```\n{profile_op(b, op)}\n```\n"
                    )
        finally:
            b.close()
    text += "".join(profiles)
    text += (
        f"\nWhole run: {time.monotonic() - t_start:.0f} s; 1-minute load average "
        f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after (the busy loops add 2; "
        "more means other work shared the machine).\n"
    )
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(text, encoding="utf-8")
    print()
    print(text)
    print(f"(written to {RESULTS.relative_to(HERE.parent)})")
    return 1 if "round trips" in misses else 0


if __name__ == "__main__":
    sys.exit(main())
