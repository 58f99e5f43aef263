"""hashsession side by side with the session libraries users would otherwise pick.

Run it through ``bash bench/run-peers`` (which builds ``bench/.venv-peers``). This
coordinator:

1. builds one virtual environment per peer under ``bench/.venv-peer-*`` (peers
   installed from the package index by name; pinned dependencies where current
   releases no longer work), reporting any that cannot be built;
2. starts ONE private redis-server (``hashsession.embedded.EmbeddedRedis``);
3. starts one worker per venv (``bench/peerkit.py`` with ``bench/peers/<x>_peer.py``),
   pinned with redis-server to one CPU, and keeps both CPUs awake with idle-priority
   busy loops (from ``bench/core_ops.py``) while timing;
4. measures, interleaving the libraries round by round: per-operation time on an open
   session and per one-operation request; Redis commands per request shape (counted at
   the server with MONITOR, round trips at the client); in-process time per typical
   request through each library's own framework integration; requests per second over
   real HTTP (waitress, uvicorn) against the floor apps; lost updates over real HTTP
   servers; Redis memory per session;
5. writes ``docs/benchmarks.md``, ``docs/benchmarks.png`` and the raw results in
   ``bench/results/peers.json``.

A peer that does not install, import or run is reported with its error, never dropped.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import hashlib
import http.client
import json
import os
import platform
import queue
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import redis

import hashsession
from hashsession.embedded import EmbeddedRedis, server_identity

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
RESULTS = HERE / "results"
LOGS = RESULTS / "logs"
OPS = ("set", "get", "in", "delete", "incr")
SHAPES = ("nothing", "read", "write", "typical")


# ------------------------------------------------------------------ what runs where


@dataclass
class Venv:
    """A peer's own virtual environment: what pip installs into it, by name."""

    name: str
    requirements: list[str]

    @property
    def path(self) -> Path:
        return HERE / f".venv-peer-{self.name}"

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"


@dataclass
class Side:
    """One worker process: a venv (None: this one), a peer module, the contenders to load."""

    label: str
    venv: Venv | None
    module: str
    ids: str = "*"
    #: A checkout's ``src`` to import hashsession from instead of this one (``--baseline``).
    src: str | None = None


MAIN_SIDE = "hashsession + raw floor"
FLASK_1 = ["Flask==1.1.4", "Werkzeug==0.16.1", "Jinja2==2.11.3", "MarkupSafe==2.0.1"]
SIDES = [
    Side(MAIN_SIDE, None, "hashsession_peer.py"),
    Side("DRSession", Venv("drsession", ["drsession", "redis"]), "drsession_peer.py"),
    Side(
        "bottle-session",
        Venv("bottle-session", ["bottle-session", "bottle", "redis"]),
        "bottle_session_peer.py",
    ),
    Side(
        "redis-session (Tornado)",
        Venv("redis-session", ["redis-session", "tornado", "redis"]),
        "redis_session_peer.py",
        "redis-session-tornado",
    ),
    Side(
        "redis-session (Flask)",
        Venv("redis-session-flask", ["redis-session", *FLASK_1, "itsdangerous==1.1.0", "redis"]),
        "redis_session_peer.py",
        "redis-session-flask",
    ),
    Side(
        "pyramid_redis_sessions",
        Venv("pyramid-redis-sessions", ["pyramid_redis_sessions", "pyramid<2", "redis<=5.3.1"]),
        "pyramid_redis_sessions_peer.py",
    ),
    Side(
        "Flask-Session",
        Venv("flask-session", ["Flask-Session", "flask", "redis"]),
        "flask_session_peer.py",
    ),
    Side("Beaker", Venv("beaker", ["Beaker", "redis"]), "beaker_peer.py"),
    Side(
        "starsessions",
        Venv("starsessions", ["starsessions", "starlette", "redis", "uvicorn"]),
        "starsessions_peer.py",
    ),
]


# ------------------------------------------------------------------ venvs


def baseline_side(rev: str) -> Side:
    """hashsession at git revision ``rev`` (its ``src`` exported to a scratch directory),
    measured as a peer labelled ``hashsession @ <rev>``: before and after in one run."""
    out = Path(tempfile.mkdtemp(prefix="hashsession-baseline-"))
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", rev, "src"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(out)], input=archive, check=True)
    ids = "hashsession,hs-near,hs-wsgi,hs-wsgi-near,hs-asgi"
    return Side(f"hashsession @ {rev}", None, "hashsession_peer.py", ids, str(out / "src"))


def _pip_error(output: str) -> str:
    lines = [
        ln for ln in output.splitlines() if ln.strip() and "is ignored: it is neither" not in ln
    ]
    return "\n".join(lines[-12:]) or "pip failed without output"


def ensure_venv(venv: Venv, python: str, rebuild: bool) -> str | None:
    """Create or reuse ``venv``; None when ready, else the error (last lines of pip's output)."""
    stamp = venv.path / ".bench-requirements"
    want = json.dumps({"python": python, "requirements": venv.requirements})
    if not rebuild and venv.python.exists() and stamp.exists() and stamp.read_text() == want:
        return None
    LOGS.mkdir(parents=True, exist_ok=True)
    log = LOGS / f"venv-{venv.name}.log"
    steps = [
        [python, "-m", "venv", "--clear", str(venv.path)],
        [str(venv.python), "-m", "pip", "install", "--quiet", *venv.requirements],
    ]
    with open(log, "w", encoding="utf-8") as out:
        for cmd in steps:
            out.write("$ " + " ".join(cmd) + "\n")
            out.flush()
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
            except (OSError, subprocess.TimeoutExpired) as exc:
                return f"{' '.join(cmd[:4])}: {exc}"
            out.write(proc.stdout + proc.stderr)
            if proc.returncode != 0:
                return _pip_error(proc.stdout + proc.stderr)
    stamp.write_text(want)
    return None


# ------------------------------------------------------------------ workers


class WorkerError(RuntimeError):
    pass


class WorkerProc:
    """One ``peerkit.py`` worker: JSON line requests and replies, with time limits."""

    def __init__(self, side: Side, url: str, cpu: int | None) -> None:
        self.side = side
        python = str(side.venv.python) if side.venv else sys.executable
        LOGS.mkdir(parents=True, exist_ok=True)
        slug = re.sub(r"[^a-z0-9]+", "-", side.label.lower()).strip("-")
        self.log_path = LOGS / f"worker-{slug}.log"
        self.log = open(self.log_path, "w", encoding="utf-8")  # noqa: SIM115
        cmd = [
            python,
            "-u",
            str(HERE / "peerkit.py"),
            str(HERE / "peers" / side.module),
            url,
            "-" if cpu is None else str(cpu),
            side.ids,
        ]
        env = dict(os.environ, PYTHONPATH=str(HERE), PYTHONDONTWRITEBYTECODE="1")
        if side.src:  # an earlier hashsession, labelled apart (see hashsession_peer.LIBRARY)
            env.update(PYTHONPATH=f"{side.src}:{HERE}", HASHSESSION_BENCH_LIBRARY=side.label)
        self.proc = subprocess.Popen(
            cmd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
            env=env,
            cwd=str(HERE),
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()
        self.hello: dict[str, Any] = {}

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def tail(self) -> str:
        self.log.flush()
        try:
            text = self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\n".join(text.strip().splitlines()[-8:])

    def receive(self, timeout: float) -> dict[str, Any]:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise WorkerError(f"no answer within {timeout:g} s") from None
        if line is None:
            raise WorkerError(f"the worker exited ({self.proc.poll()}); its log:\n{self.tail()}")
        reply: dict[str, Any] = json.loads(line)
        return reply

    def call(self, timeout: float = 120, **msg: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None
        try:
            self.proc.stdin.write(json.dumps(msg) + "\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise WorkerError(f"the worker is gone: {exc}; its log:\n{self.tail()}") from None
        reply = self.receive(timeout)
        if not reply.get("ok"):
            raise WorkerError(str(reply.get("error", reply)))
        return reply

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(Exception):
                self.call(timeout=20, cmd="quit")
        if self.proc.poll() is None:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait()
        self.log.close()


# ------------------------------------------------------------------ MONITOR


class Monitor:
    """Every command Redis receives, via MONITOR on a raw socket: who sent it, and whether it
    ran inside a Lua script (``[db lua]``)."""

    LINE = re.compile(r'^\+[\d.]+ \[\d+ ([^\]]+)\] "([^"]*)"')

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        self.sock = socket.create_connection((parts.hostname or "127.0.0.1", parts.port or 0))
        self.sock.sendall(b"MONITOR\r\n")
        self.entries: list[tuple[str, str, str]] = []  # (client, COMMAND, raw line)
        self.cond = threading.Condition()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        buf = b""
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                return
            if not data:
                return
            buf += data
            *lines, buf = buf.split(b"\r\n")
            with self.cond:
                for raw in lines:
                    text = raw.decode("utf-8", "replace")
                    m = self.LINE.match(text)
                    if m:
                        self.entries.append((m.group(1), m.group(2).upper(), text))
                self.cond.notify_all()

    def between(self, token: str, timeout: float = 20) -> list[tuple[str, str]]:
        """(client, COMMAND) of everything between ``token:begin`` and ``token:end``, minus the
        marks' own connection."""
        begin, end = f"{token}:begin", f"{token}:end"
        deadline = time.monotonic() + timeout
        with self.cond:
            while not any(end in e[2] for e in self.entries[-2000:]):
                left = deadline - time.monotonic()
                if left <= 0:
                    raise WorkerError(f"MONITOR never saw {end}")
                self.cond.wait(left)
            entries = list(self.entries)
        i = next(k for k, e in enumerate(entries) if begin in e[2])
        j = next(k for k, e in enumerate(entries) if end in e[2])
        marker = entries[i][0]
        return [(c, cmd) for c, cmd, _ in entries[i + 1 : j] if c != marker]

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()


# ------------------------------------------------------------------ the run


@dataclass
class Column:
    """One timed column: a contender (or a worker's floor) on one worker."""

    worker: WorkerProc
    cid: str
    label: str

    @property
    def key(self) -> str:
        return f"{self.worker.side.label}::{self.cid}"


@dataclass
class Run:
    args: argparse.Namespace
    url: str = ""
    workers: list[WorkerProc] = field(default_factory=list)
    failures: list[dict[str, str]] = field(default_factory=list)
    contenders: dict[str, dict[str, Any]] = field(default_factory=dict)  # key -> hello item
    owner: dict[str, WorkerProc] = field(default_factory=dict)  # key -> worker
    results: dict[str, Any] = field(default_factory=dict)

    def fail(self, who: str, stage: str, error: str) -> None:
        print(f"  FAILED {who} ({stage}): {error.splitlines()[0] if error else ''}", flush=True)
        self.failures.append({"who": who, "stage": stage, "error": error})

    def app_keys(self) -> list[str]:
        """Contenders with an app for the in-process request figures (not the floor apps
        served only in the real-HTTP figure)."""
        return [k for k, c in self.contenders.items() if c["kind"] and not c.get("http_only")]


def key_of(w: WorkerProc, cid: str) -> str:
    return f"{w.side.label}::{cid}"


def label_of(c: dict[str, Any]) -> str:
    return f"{c['library']} · {c['integration']}" if c.get("integration") else c["library"]


def start_workers(run: Run, sides: list[Side], cpu: int | None) -> None:
    python = run.args.python
    ready: list[Side] = []
    pending = [s for s in sides if s.venv is not None]
    print(f"venvs: checking {len(pending)} peer environments (built once, then reused) ...")
    t0 = time.monotonic()
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=3) as pool:
        errors = {
            s.label: pool.submit(ensure_venv, s.venv, python, run.args.rebuild)
            for s in pending
            if s.venv is not None
        }
    for side in sides:
        err = errors[side.label].result() if side.label in errors else None
        if err:
            run.fail(side.label, f"install ({', '.join(side.venv.requirements)})", err)  # type: ignore[union-attr]
        else:
            ready.append(side)
    print(f"venvs ready in {time.monotonic() - t0:.0f} s")
    started = [WorkerProc(side, run.url, cpu) for side in ready]
    for w in started:
        try:
            hello = w.receive(timeout=180)
        except WorkerError as exc:
            run.fail(w.side.label, "start", str(exc))
            w.stop()
            continue
        if not hello.get("ok"):
            run.fail(w.side.label, "import", f"{hello.get('error')}\n{w.tail()}")
            w.stop()
            continue
        w.hello = hello
        run.workers.append(w)
        for bad in hello["failed"]:
            run.fail(f"{w.side.label}: {bad['id']}", "set-up", bad["error"])
        for c in hello["contenders"]:
            c["python"], c["redis_py"] = hello["python"], hello["redis_py"]
            k = key_of(w, c["id"])
            run.contenders[k] = c
            run.owner[k] = w
        print(
            f"  worker {w.side.label}: pid {hello['pid']}, Python {hello['python']}, "
            f"redis-py {hello['redis_py']}, contenders: "
            + ", ".join(c["id"] for c in hello["contenders"]),
            flush=True,
        )


# ------------------------------------------------------------------ per-operation tables


def op_columns(run: Run, table: str) -> list[tuple[Column, str | None]]:
    """Timed columns for one table: each worker's floor (if any contender there needs it) and
    every contender with at least one op in that table; with each column's floor key."""
    cols: list[tuple[Column, str | None]] = []
    for w in run.workers:
        mine = [c for c in w.hello["contenders"] if any(v is True for v in c[table].values())]
        for c in w.hello["contenders"]:
            failed = {str(v) for v in c[table].values() if str(v).startswith("set-up failed")}
            if c not in mine and failed:  # a whole table that could not be built
                run.fail(f"{w.side.label}: {c['id']}", table, "; ".join(sorted(failed)))
        floors = sorted({c["floor"] for c in mine})
        for f in floors:
            cid = "floor" if f == "sync" else "afloor"
            name = "raw redis-py" if f == "sync" else "raw redis.asyncio"
            cols.append((Column(w, cid, f"{name} ({w.side.label})"), None))
        for c in mine:
            floor_key = key_of(w, "floor" if c["floor"] == "sync" else "afloor")
            cols.append((Column(w, c["id"], c["library"]), floor_key))
    return cols


def measure_untouched(run: Run) -> dict[str, Any]:
    """hashsession's own time for a request that never uses its session: the WSGI
    middleware around a bare app, and the bare app, timed in interleaved rounds."""
    mains = [w for w in run.workers if "hashsession" in {c["id"] for c in w.hello["contenders"]}]
    if not mains:
        return {}
    w = mains[0]  # the checkout's (a --baseline worker comes after it)
    out: dict[str, list[list[int]]] = {"untouched": [], "untouched-bare": []}
    try:
        for r in range(run.args.rounds):
            pair = (
                ("untouched", "untouched-bare") if r % 2 == 0 else ("untouched-bare", "untouched")
            )
            for op in pair:
                ns = w.call(cmd="time", cid="hashsession", table="request", op=op, n=run.args.iters)
                out[op].append(ns["ns"])
    except WorkerError as exc:
        run.fail("hashsession", "untouched request", str(exc))
        return {"error": str(exc)}
    return out


def measure_ops(run: Run, table: str) -> dict[str, Any]:
    """Rounds x batches of individually timed calls per column and op, interleaved."""
    rounds, iters = run.args.rounds, run.args.iters
    cols = op_columns(run, table)
    available: dict[str, list[Column]] = {op: [] for op in OPS}
    for col, _ in cols:
        if col.cid in ("floor", "afloor"):
            for op in OPS:
                available[op].append(col)
        else:
            item = run.contenders[col.key]
            for op in OPS:
                if item[table][op] is True:
                    available[op].append(col)
                elif str(item[table][op]).startswith("set-up failed"):
                    run.fail(
                        f"{col.worker.side.label}: {col.cid}", f"{table} {op}", str(item[table][op])
                    )
    samples: dict[str, dict[str, list[list[int]]]] = {col.key: {} for col, _ in cols}
    trips: dict[str, dict[str, float]] = {col.key: {} for col, _ in cols}
    broken: dict[str, dict[str, str]] = {col.key: {} for col, _ in cols}

    def timed(col: Column, op: str, n: int) -> list[int] | None:
        if op in broken[col.key]:
            return None
        try:
            ns: list[int] = col.worker.call(cmd="time", cid=col.cid, table=table, op=op, n=n)["ns"]
        except WorkerError as exc:
            broken[col.key][op] = str(exc)
            run.fail(f"{col.worker.side.label}: {col.cid}", f"{table} {op}", str(exc))
            return None
        return ns

    # round trips per op (client-side sends), then a discarded warm-up batch
    for op in OPS:
        for col in available[op]:
            try:
                trips[col.key][op] = col.worker.call(
                    cmd="trips", cid=col.cid, table=table, op=op, n=20
                )["round_trips"]
            except WorkerError as exc:
                broken[col.key][op] = str(exc)
                run.fail(f"{col.worker.side.label}: {col.cid}", f"{table} {op}", str(exc))
            timed(col, op, max(30, iters // 10))
    t0 = time.monotonic()
    for r in range(rounds):
        for op in OPS:
            order = available[op]
            k = r % len(order) if order else 0
            for col in order[k:] + order[:k]:
                ns = timed(col, op, iters)
                if ns is not None:
                    samples[col.key].setdefault(op, []).append(ns)
        print(f"  {table}: round {r + 1}/{rounds} ({time.monotonic() - t0:.0f} s)", flush=True)
    return {
        "columns": [
            {"key": col.key, "cid": col.cid, "label": col.label, "floor": fk} for col, fk in cols
        ],
        "samples": samples,
        "trips": trips,
        "broken": broken,
    }


# ------------------------------------------------------------------ request-level figures


def start_sessions(run: Run) -> list[str]:
    """A session per app contender (its cookie kept by the worker); checks that the session
    was written to this run's Redis (and not, say, to a server of the library's own)."""
    ok = []
    client = redis.Redis.from_url(run.url)
    try:
        for k in run.app_keys():
            w, c = run.owner[k], run.contenders[k]
            before = int(client.dbsize())
            try:
                w.call(cmd="start", cid=c["id"])
            except WorkerError as exc:
                run.fail(label_of(c), "app (first request)", str(exc))
                continue
            if int(client.dbsize()) <= before:
                run.fail(label_of(c), "app", "its first request wrote no key to this Redis")
                continue
            ok.append(k)
    finally:
        client.close()
    return ok


def measure_shapes(run: Run, keys: list[str]) -> dict[str, Any]:
    """Commands per request for each shape: MONITOR at the server, sends at the client."""
    out: dict[str, Any] = {}
    mon = Monitor(run.url)
    try:
        for n_key, k in enumerate(keys):
            w, c = run.owner[k], run.contenders[k]
            out[k] = {}
            for shape in SHAPES:
                token = f"bench-mark-{os.getpid()}-{n_key}-{shape}"
                n = run.args.shape_requests
                try:
                    reply = w.call(cmd="shape", cid=c["id"], shape=shape, n=n, token=token)
                    seen = mon.between(token)
                except WorkerError as exc:
                    out[k][shape] = {"error": str(exc)}
                    run.fail(label_of(c), f"commands per request ({shape})", str(exc))
                    continue
                sent = Counter(cmd for client, cmd in seen if client != "lua")
                inner = Counter(cmd for client, cmd in seen if client == "lua")
                out[k][shape] = {
                    "round_trips": reply["round_trips"],
                    "set_cookie": reply["set_cookie"],
                    "sent": {cmd: v / n for cmd, v in sent.items()},
                    "in_scripts": {cmd: v / n for cmd, v in inner.items()},
                }
    finally:
        mon.close()
    return out


def measure_rps(run: Run, keys: list[str]) -> dict[str, Any]:
    samples: dict[str, list[list[int]]] = {k: [] for k in keys}
    errors: dict[str, str] = {}
    rounds, n = run.args.rps_rounds, run.args.rps_requests
    live = list(keys)
    for k in live:  # warm-up, discarded
        with contextlib.suppress(WorkerError):
            run.owner[k].call(cmd="rps", cid=run.contenders[k]["id"], n=max(20, n // 5))
    for r in range(rounds):
        order = live[r % len(live) :] + live[: r % len(live)] if live else []
        for k in order:
            if k in errors:
                continue
            try:
                reply = run.owner[k].call(cmd="rps", cid=run.contenders[k]["id"], n=n, timeout=300)
                samples[k].append(reply["ns"])
            except WorkerError as exc:
                errors[k] = str(exc)
                run.fail(label_of(run.contenders[k]), "typical request", str(exc))
        print(f"  typical requests: round {r + 1}/{rounds}", flush=True)
    return {"samples": samples, "errors": errors}


def http_get(port: int, path: str, cookie: str | None) -> tuple[int, list[str], bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        headers = {"Connection": "close"}
        if cookie:
            headers["Cookie"] = cookie
        conn.request("GET", path, headers=headers)
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, resp.headers.get_all("Set-Cookie") or [], body
    finally:
        conn.close()


def fire(port: int, paths: list[str], cookie: str) -> list[str]:
    """Send every path at once, each on its own new connection; the failures."""
    barrier = threading.Barrier(len(paths))
    failures: list[str] = []
    lock = threading.Lock()

    def one(path: str) -> None:
        try:
            barrier.wait(30)
            status, _, body = http_get(port, path, cookie)
            if status != 200:
                raise RuntimeError(f"{status} {body[:120]!r}")
        except Exception as exc:
            with lock:
                failures.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=one, args=(p,)) for p in paths]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    return failures


def race_one(port: int, n: int, action: str) -> dict[str, Any]:
    from peerkit import cookie_from

    status, set_cookies, body = http_get(port, "/start", None)
    cookie = cookie_from(set_cookies)
    if status != 200 or not cookie:
        raise WorkerError(f"/start over HTTP answered {status} {body[:200]!r}, cookie {cookie!r}")
    t0 = time.monotonic()
    paths = [f"/{action}?i={i}" for i in range(n)]
    failures = fire(port, paths, cookie)
    elapsed = time.monotonic() - t0
    status, _, body = http_get(port, "/dump", cookie)
    if status != 200:
        raise WorkerError(f"/dump answered {status} {body[:200]!r}")
    dump = json.loads(body)
    survived = dump["keys"] if action == "race_key" else dump["n"]
    return {
        "survived": survived,
        "failed_requests": len(failures),
        "first_failure": failures[0] if failures else None,
        "seconds": elapsed,
    }


def measure_race(run: Run, keys: list[str]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    n = run.args.race
    for k in keys:
        w, c = run.owner[k], run.contenders[k]
        try:
            port = w.call(cmd="serve", cid=c["id"], timeout=60)["port"]
        except WorkerError as exc:
            out[k] = {"error": str(exc)}
            run.fail(label_of(c), "race test (server)", str(exc))
            continue
        try:
            out[k] = {
                "keys": race_one(port, n, "race_key"),
                "incr": race_one(port, n, "race_incr"),
            }
            print(
                f"  race {label_of(c)}: keys {out[k]['keys']['survived']}/{n}, "
                f"increments {out[k]['incr']['survived']}/{n}",
                flush=True,
            )
        except Exception as exc:
            out[k] = {"error": f"{type(exc).__name__}: {exc}"}
            run.fail(label_of(c), "race test", out[k]["error"])
        finally:
            with contextlib.suppress(WorkerError):
                w.call(cmd="unserve", cid=c["id"], timeout=60)
    return out


#: The real-HTTP throughput figure: (server, floor app, hashsession app), ids of the
#: contenders in ``bench/peers/hashsession_peer.py``.
HTTP_PAIRS = (("waitress", "raw", "hs-wsgi"), ("uvicorn", "raw-asgi", "hs-asgi"))


def keepalive_round(port: int, cookies: list[str], seconds: float, warm: int = 5) -> dict[str, Any]:
    """One round of keep-alive HTTP/1.1 load: a thread per cookie, each on its own new
    connection (``warm`` untimed requests first), GET ``/typical`` until ``seconds`` have
    passed; requests/s over the time until the last in-flight request came back."""
    n = len(cookies)
    ready = threading.Barrier(n + 1)
    stop = threading.Event()
    counts = [0] * n
    set_cookie = [0] * n
    errors: list[str] = []

    def client(i: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        headers = {"Cookie": cookies[i]}
        try:
            for _ in range(warm):
                conn.request("GET", "/typical", headers=headers)
                conn.getresponse().read()
        except Exception as exc:
            errors.append(f"warm-up: {type(exc).__name__}: {exc}")
        try:
            ready.wait(30)
            done = sets = 0
            while not stop.is_set():
                conn.request("GET", "/typical", headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                if resp.status != 200:
                    raise RuntimeError(f"/typical answered {resp.status}: {body[:120]!r}")
                if resp.getheader("Set-Cookie"):
                    sets += 1
                done += 1
            counts[i], set_cookie[i] = done, sets
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
            stop.set()
        finally:
            conn.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    ready.wait(60)
    t0 = time.perf_counter()
    stop.wait(seconds)
    stop.set()
    for t in threads:
        t.join(120)
    elapsed = time.perf_counter() - t0
    if errors:
        raise WorkerError(errors[0])
    total = sum(counts)
    return {"rps": total / elapsed, "requests": total, "set_cookie": sum(set_cookie) / total}


def versions_of(*dists: str) -> dict[str, str]:
    """Installed versions of the HTTP servers' packages (this venv is the main worker's)."""
    from importlib import metadata

    out = {}
    for dist in dists:
        with contextlib.suppress(metadata.PackageNotFoundError):
            out[dist] = metadata.version(dist)
    return out


@contextlib.contextmanager
def serving(w: WorkerProc, cid: str, server: str) -> Iterator[int]:
    """One contender's app on a real server in its worker for the block; the port."""
    port: int = w.call(cmd="serve", cid=cid, server=server, timeout=60)["port"]
    try:
        yield port
    finally:
        with contextlib.suppress(WorkerError):
            w.call(cmd="unserve", cid=cid, timeout=60)


def measure_http(run: Run) -> dict[str, Any]:
    """Requests/s of the typical request over real HTTP (waitress for WSGI, uvicorn for
    ASGI): hashsession's middleware against the floor app on the same server, keep-alive
    clients in this process, rounds interleaved (floor first, then hashsession first).
    Only the measured app's server runs: each is started for its turn and stopped after,
    so no other server's threads share the worker process while one is measured."""
    from peerkit import cookie_from

    a = run.args
    main = next((w for w in run.workers if w.side.label == MAIN_SIDE), None)
    out: dict[str, Any] = {
        "clients": a.http_clients,
        "seconds": a.http_seconds,
        "rounds": a.http_rounds,
        "servers": {},
        "versions": versions_of("waitress", "uvicorn", "h11", "httptools"),
    }
    if main is None:
        return out
    cookies: dict[str, list[str]] = {}
    pairs: list[tuple[str, list[tuple[str, str]]]] = []
    for server, floor_id, hs_id in HTTP_PAIRS:
        entry: dict[str, Any] = {
            "floor": key_of(main, floor_id),
            "hashsession": key_of(main, hs_id),
            "rps": {},
            "set_cookie": {},
        }
        out["servers"][server] = entry
        try:
            for cid in (floor_id, hs_id):
                k = key_of(main, cid)
                cookies[k] = []
                with serving(main, cid, server) as port:
                    for _ in range(a.http_clients):
                        status, set_cookies, body = http_get(port, "/start", None)
                        cookie = cookie_from(set_cookies)
                        if status != 200 or not cookie:
                            raise WorkerError(f"/start over {server} answered {status} {body!r}")
                        cookies[k].append(cookie)
                entry["rps"][k], entry["set_cookie"][k] = [], []
            pairs.append((server, [(floor_id, entry["floor"]), (hs_id, entry["hashsession"])]))
        except (WorkerError, KeyError, OSError) as exc:
            entry["error"] = f"{type(exc).__name__}: {exc}"
            run.fail(f"real HTTP ({server})", "server", entry["error"])
    for r in range(a.http_rounds):
        for server, apps in pairs:
            entry = out["servers"][server]
            if "error" in entry:
                continue
            for cid, k in apps if r % 2 == 0 else apps[::-1]:
                try:
                    with serving(main, cid, server) as port:
                        got = keepalive_round(port, cookies[k], a.http_seconds)
                except (WorkerError, OSError) as exc:
                    entry["error"] = f"{type(exc).__name__}: {exc}"
                    run.fail(f"real HTTP ({server})", label_of(run.contenders[k]), str(exc))
                    break
                entry["rps"][k].append(got["rps"])
                entry["set_cookie"][k].append(got["set_cookie"])
            if "error" not in entry:
                f, h = (entry["rps"][k][-1] for _, k in apps)
                print(
                    f"  real HTTP {server}, round {r + 1}/{a.http_rounds}: floor {f:.0f}/s, "
                    f"hashsession {h:.0f}/s ({h / f:.3f}x)",
                    flush=True,
                )
    return out


def memory_now(client: redis.Redis) -> tuple[int, int]:
    """(used_memory, mem_clients_normal) once the server has settled."""
    time.sleep(1.0)  # let clientsCron shrink buffers and expiry work finish
    info = client.info("memory")
    return int(info["used_memory"]), int(info.get("mem_clients_normal", 0))


def measure_memory(run: Run, keys: list[str]) -> dict[str, Any]:
    """``used_memory`` delta per session over a flushed server, minus the change in client
    buffers (connections' query/output buffers are not session data)."""
    client = redis.Redis.from_url(run.url)
    out: dict[str, Any] = {}
    n = run.args.sessions
    try:
        for k in keys:
            w, c = run.owner[k], run.contenders[k]
            client.flushall()
            used0, clients0 = memory_now(client)
            try:
                reply = w.call(cmd="fill", cid=c["id"], n=n, timeout=600)
            except WorkerError as exc:
                out[k] = {"error": str(exc)}
                run.fail(label_of(c), "memory", str(exc))
                continue
            used1, clients1 = memory_now(client)
            keys_now = int(client.dbsize())
            sample = client.randomkey()
            ttl = int(client.ttl(sample)) if sample is not None else -2
            raw_type: Any = client.type(sample) if sample is not None else b"none"
            kind = raw_type.decode() if isinstance(raw_type, bytes) else str(raw_type)
            usage = int(client.memory_usage(sample) or 0) if sample is not None else 0
            out[k] = {
                "bytes_per_session": ((used1 - used0) - (clients1 - clients0)) / n,
                "used_memory_delta": used1 - used0,
                "clients_delta": clients1 - clients0,
                "keys_per_session": keys_now / n,
                "sample_ttl": ttl,
                "sample_type": kind,
                "sample_memory_usage": usage,
                "errors": reply["errors"],
            }
            print(
                f"  memory {label_of(c)}: {out[k]['bytes_per_session']:.0f} B/session, "
                f"{keys_now / n:g} keys/session, TTL {ttl}",
                flush=True,
            )
        client.flushall()
    finally:
        client.close()
    return out


# ------------------------------------------------------------------ facts about the run


def measure_near(run: Run, cpu: int | None) -> dict[str, Any]:
    """The near cache's staleness window, refresh cost and memory (``bench/near_cache.py``),
    measured here in the coordinator; the writer process goes to the server's CPU."""
    import near_cache

    a = run.args
    try:
        return near_cache.measure(run.url, a.near_rounds, a.near_checks, a.sessions, cpu)
    except Exception as exc:
        run.fail("hashsession (near_cache)", "near cache figures", repr(exc))
        return {"error": repr(exc)}


def git_head() -> str:
    """The checked-out commit, read from .git without running git."""
    git = REPO / ".git"
    try:
        if git.is_file():  # a worktree: .git names its own folder, refs live in the common one
            git = (REPO / git.read_text().split("gitdir:", 1)[1].strip()).resolve()
        head = (git / "HEAD").read_text().strip()
        if (git / "commondir").exists():
            git = (git / (git / "commondir").read_text().strip()).resolve()
        if head.startswith("ref: "):
            ref = head[5:]
            path = git / ref
            if path.exists():
                return path.read_text().strip()[:7]
            packed = (git / "packed-refs").read_text()
            for line in packed.splitlines():
                if line.endswith(" " + ref):
                    return line.split()[0][:7]
            return "unknown"
        return head[:7]
    except OSError:
        return "unknown"


def machine_facts(url: str) -> dict[str, Any]:
    model = "unknown"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    client = redis.Redis.from_url(url)
    try:
        info = client.info("server")
    finally:
        client.close()
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": model,
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "redis_server": str(server_identity(info)),
        "hashsession": hashsession.__version__,
        "commit": git_head(),
        "redis_py": redis.__version__,
        "hiredis": bool(redis.utils.HIREDIS_AVAILABLE),
    }


@contextlib.contextmanager
def placed(enabled: bool, server_pid: int, cpu: int | None) -> Iterator[str]:
    """redis-server on the workers' CPU; this coordinator on the other one."""
    if not enabled or cpu is None:
        yield "none (the kernel places every process)"
        return
    from core_ops import usable_cpus

    cpus = usable_cpus()
    mine = os.sched_getaffinity(0)
    other = next((c for c in cpus if c != cpu), cpu)
    os.sched_setaffinity(server_pid, {cpu})
    os.sched_setaffinity(0, {other})
    try:
        yield (
            f"redis-server and every worker on CPU {cpu}; this coordinator (and the race "
            f"test's HTTP clients) on CPU {other}"
        )
    finally:
        os.sched_setaffinity(0, mine)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10, help="interleaved rounds per op (10)")
    parser.add_argument("--iters", type=int, default=300, help="timed calls per batch (300)")
    parser.add_argument("--rps-rounds", type=int, default=7, help="typical-request rounds (7)")
    parser.add_argument("--rps-requests", type=int, default=150, help="requests per round (150)")
    parser.add_argument("--shape-requests", type=int, default=50, help="requests per shape (50)")
    parser.add_argument("--race", type=int, default=200, help="concurrent requests (200)")
    parser.add_argument("--sessions", type=int, default=10000, help="sessions for memory (10000)")
    parser.add_argument("--http-rounds", type=int, default=6, help="real-HTTP rounds (6)")
    parser.add_argument(
        "--http-seconds", type=float, default=3.0, help="real-HTTP seconds per app per round (3)"
    )
    parser.add_argument(
        "--http-clients", type=int, default=4, help="real-HTTP keep-alive clients (4)"
    )
    parser.add_argument("--only", default="", help="comma-separated side labels to run")
    parser.add_argument(
        "--skip",
        default="",
        help="figures to skip: ops,request,shapes,rps,http,race,memory,near",
    )
    parser.add_argument(
        "--near-rounds", type=int, default=1000, help="near cache: changes timed (1000)"
    )
    parser.add_argument(
        "--near-checks", type=int, default=200, help="near cache: reads 1 ms after (200)"
    )
    parser.add_argument("--no-busy", action="store_true", help="let the CPUs sleep")
    parser.add_argument("--no-pin", action="store_true", help="let the kernel place processes")
    parser.add_argument("--rebuild", action="store_true", help="rebuild every peer venv")
    parser.add_argument(
        "--python",
        default=os.environ.get("BENCH_PYTHON") or getattr(sys, "_base_executable", sys.executable),
        help="interpreter for the peer venvs",
    )
    parser.add_argument(
        "--baseline",
        default="",
        help="a git revision: also measure hashsession as it was there, side by side",
    )
    parser.add_argument("--out", default=str(REPO / "docs" / "benchmarks.md"))
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    sides = [s for s in SIDES if not only or s.label in only or s.venv is None]
    if args.baseline:
        sides.append(baseline_side(args.baseline))

    from core_ops import busy_loops, usable_cpus

    t_start = time.monotonic()
    load_before = os.getloadavg()[0]
    run = Run(args)
    cpu = None if args.no_pin else usable_cpus()[0]
    with EmbeddedRedis() as server:
        run.url = server.url
        print(f"redis-server pid {server.pid} on {server.url}", flush=True)
        try:
            start_workers(run, sides, cpu)
            with (
                busy_loops(not args.no_busy) as busy,
                placed(not args.no_pin, server.pid or 0, cpu) as pin,
            ):
                print(f"busy loops {busy}\nplacement: {pin}", flush=True)
                run.results["placement"] = pin
                run.results["busy"] = busy
                if "ops" not in skip:
                    print("per operation, open session ...", flush=True)
                    run.results["steady"] = measure_ops(run, "steady")
                if "request" not in skip:
                    print("per operation, one-operation request ...", flush=True)
                    run.results["request"] = measure_ops(run, "request")
                    run.results["untouched"] = measure_untouched(run)
                keys = start_sessions(run)
                if "shapes" not in skip:
                    print("commands per request ...", flush=True)
                    run.results["shapes"] = measure_shapes(run, keys)
                if "rps" not in skip:
                    print("typical requests ...", flush=True)
                    run.results["rps"] = measure_rps(run, keys)
                if "http" not in skip:
                    print("requests per second over real HTTP ...", flush=True)
                    run.results["http"] = measure_http(run)
                if "race" not in skip:
                    print("race test ...", flush=True)
                    run.results["race"] = measure_race(run, keys)
                if "memory" not in skip:
                    print("memory per session ...", flush=True)
                    mem_keys = [k for k in keys if run.contenders[k]["memory"]]
                    run.results["memory"] = measure_memory(run, mem_keys)
                if "near" not in skip:
                    print("near cache: staleness, refreshes, memory ...", flush=True)
                    run.results["near"] = measure_near(run, cpu)
            run.results["machine"] = machine_facts(run.url)
        finally:
            for w in run.workers:
                w.stop()
    run.results["seconds"] = time.monotonic() - t_start
    run.results["load"] = [load_before, os.getloadavg()[0]]
    run.results["contenders"] = run.contenders
    run.results["failures"] = run.failures
    run.results["settings"] = {k: v for k, v in vars(args).items() if k != "python"}
    RESULTS.mkdir(parents=True, exist_ok=True)
    raw = RESULTS / "peers.json"
    raw.write_text(json.dumps(run.results, indent=1, default=str), encoding="utf-8")
    from peers_report import write_report

    out = Path(args.out)
    text = write_report(run.results, out)
    (RESULTS / "peers.md").write_text(text, encoding="utf-8")
    print()
    print(text)
    print(f"(written to {out} and {out.with_suffix('.png')}; raw results in {raw})")
    digest = hashlib.sha1(raw.read_bytes()).hexdigest()[:10]
    print(f"whole run {run.results['seconds']:.0f} s; results digest {digest}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
