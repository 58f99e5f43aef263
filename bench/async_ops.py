"""asyncio cost of hashsession: per operation against raw ``redis.asyncio``, per ASGI request
against starsessions.

Run it through ``bench/run-async`` (which builds ``bench/.venv-core`` with
starsessions added). In one run against one private redis-server it measures:

1. set, get, ``in``, delete and incr through a steady-state ``AsyncSession``,
   through raw ``redis.asyncio`` (``hset``/``hget``/``hexists``/``hdel``/
   ``hincrby``) and through raw ``redis.asyncio`` sending exactly the commands
   the session sends (``execute_command``), interleaved round by round,
   every call timed on its own, medians;
2. a typical request (read one key, increment one counter) through a
   Starlette app wrapped in ``hashsession.asgi.SessionMiddleware`` and the
   same app under starsessions' ``SessionMiddleware`` with its ``RedisStore``,
   called in-process (no HTTP), interleaved blocks, requests per second as
   the median of blocks, and the Redis commands each request costs (counted at
   the server with ``INFO commandstats``) for three request shapes.

Both CPUs are kept awake and this process shares one CPU with its
redis-server, as in ``core_ops.py`` (see bench/README.md).
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import gc
import json
import platform
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from importlib.metadata import version
from pathlib import Path
from typing import Any

import redis
import redis.asyncio as aioredis
import starsessions
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starsessions.stores.redis import RedisStore

import hashsession
from core_ops import busy_loops, calls_delta, pinned, server_calls, sh
from hashsession.aio import AsyncSessionStore
from hashsession.asgi import SessionMiddleware, session_of
from hashsession.embedded import EmbeddedRedis, server_identity
from hashsession.scripts import LIVE

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "async_ops.md"
OPS = ("set", "get", "in", "delete", "incr")
VALUE = [101, 202, 303]
ENCODED = b"[101,202,303]"
Op = Callable[[], Awaitable[Any]]


# -- per operation ----------------------------------------------------------


async def op_columns(url: str) -> tuple[dict[str, dict[str, Op]], list[Any]]:
    """For each column, the five operations as zero-argument coroutine functions."""
    store = AsyncSessionStore(redis=url)
    s = store.open(None)
    await s.update({"cart": VALUE, "n": 0})  # created: the session is live from here on
    key = s.core.key
    assert key is not None
    raw = aioredis.Redis.from_url(url)
    same = aioredis.Redis.from_url(url)
    await raw.hset(key + ":raw", mapping={"cart": ENCODED, "n": 0})
    limit = store.config.max_keys
    set_sha, incr_sha, delete_sha = LIVE["set"].sha, LIVE["incr"].sha, LIVE["delete"].sha
    rkey = key + ":raw"
    cols: dict[str, dict[str, Op]] = {
        "hashsession": {
            "set": lambda: s.set("cart", VALUE),
            "get": lambda: s.get("cart"),
            "in": lambda: s.has("cart"),
            "delete": lambda: s.delete("gone"),
            "incr": lambda: s.incr("n"),
        },
        "raw redis.asyncio": {
            "set": lambda: raw.hset(rkey, "cart", ENCODED),
            "get": lambda: raw.hget(rkey, "cart"),
            "in": lambda: raw.hexists(rkey, "cart"),
            "delete": lambda: raw.hdel(rkey, "gone"),
            "incr": lambda: raw.hincrby(rkey, "n", 1),
        },
        "raw same-commands": {
            "set": lambda: same.execute_command("EVALSHA", set_sha, 1, key, limit, "cart", ENCODED),
            "get": lambda: same.execute_command("HGET", key, "cart"),
            "in": lambda: same.execute_command("HEXISTS", key, "cart"),
            "delete": lambda: same.execute_command("EVALSHA", delete_sha, 1, key, "gone"),
            "incr": lambda: same.execute_command("EVALSHA", incr_sha, 1, key, limit, "n", 1),
        },
    }
    return cols, [store, raw, same]


async def per_op(url: str, rounds: int, iters: int) -> dict[str, dict[str, float]]:
    cols, closers = await op_columns(url)
    names = list(cols)
    times: dict[tuple[str, str], list[int]] = {(c, o): [] for c in names for o in OPS}
    for fn in (f for c in cols.values() for f in c.values()):  # warm up every path
        for _ in range(200):
            await fn()
    clock = time.perf_counter_ns
    gc.disable()
    try:
        for r in range(rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for op in OPS:
                for col in order:
                    fn, out = cols[col][op], times[(col, op)]
                    for _ in range(iters):
                        t0 = clock()
                        await fn()
                        out.append(clock() - t0)
    finally:
        gc.enable()
    for c in closers:
        await (c.aclose() if hasattr(c, "aclose") else c.close())
    return {c: {o: statistics.median(times[(c, o)]) / 1000 for o in OPS} for c in names}


# -- per ASGI request -------------------------------------------------------


class CountingConnection(aioredis.Connection):
    """Counts the packed writes (round trips) it sends."""

    sent = 0

    async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        CountingConnection.sent += 1
        await super().send_packed_command(command, check_health)


def counting_client(url: str) -> aioredis.Redis:
    pool = aioredis.ConnectionPool.from_url(url, connection_class=CountingConnection)
    return aioredis.Redis(connection_pool=pool)


def hs_app(url: str | aioredis.Redis) -> Any:
    async def typical(request: Request) -> PlainTextResponse:
        s = session_of(request.scope)
        user = await s.get("user")
        n = await s.incr("n")
        return PlainTextResponse(f"{user} {n}")

    async def read(request: Request) -> PlainTextResponse:
        return PlainTextResponse(str(await session_of(request.scope).get("user")))

    async def write(request: Request) -> PlainTextResponse:
        await session_of(request.scope).set("user", "alice")
        return PlainTextResponse("ok")

    async def nothing(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(routes=_routes(typical, read, write, nothing))
    return SessionMiddleware(app, store=AsyncSessionStore(redis=url))


def star_app(url: str | aioredis.Redis) -> Any:
    async def typical(request: Request) -> PlainTextResponse:
        await starsessions.load_session(request)
        user = request.session.get("user")
        request.session["n"] = request.session.get("n", 0) + 1
        return PlainTextResponse(f"{user} {request.session['n']}")

    async def read(request: Request) -> PlainTextResponse:
        await starsessions.load_session(request)
        return PlainTextResponse(str(request.session.get("user")))

    async def write(request: Request) -> PlainTextResponse:
        await starsessions.load_session(request)
        request.session["user"] = "alice"
        return PlainTextResponse("ok")

    async def nothing(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    mw = [
        Middleware(
            starsessions.SessionMiddleware,
            store=RedisStore(url) if isinstance(url, str) else RedisStore(connection=url),
            lifetime=14 * 24 * 3600,
            cookie_https_only=False,
        )
    ]
    return Starlette(routes=_routes(typical, read, write, nothing), middleware=mw)


def _routes(*views: Any) -> list[Route]:
    return [Route(f"/{v.__name__}", v, methods=["GET", "POST"]) for v in views]


class Caller:
    """Calls an ASGI app in-process with a fixed cookie; keeps the newest cookie it is sent."""

    def __init__(self, app: Any, cookie_name: str) -> None:
        self.app = app
        self.cookie_name = cookie_name
        self.cookie: bytes | None = None

    async def get(self, path: str) -> int:
        headers = [(b"host", b"bench")]
        if self.cookie:
            headers.append((b"cookie", self.cookie))
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": headers,
            "client": ("127.0.0.1", 1),
            "server": ("bench", 80),
        }
        status = 0

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                for k, v in message.get("headers", ()):
                    if k == b"set-cookie" and v.startswith(self.cookie_name.encode() + b"="):
                        self.cookie = v.split(b";", 1)[0]

        await self.app(scope, receive, send)
        return status


async def per_request(
    url: str, admin: redis.Redis, blocks: int, per_block: int
) -> dict[str, dict[str, Any]]:
    callers = {
        "hashsession": Caller(hs_app(url), "session"),
        "starsessions": Caller(star_app(url), "session"),
    }
    counting = {
        "hashsession": Caller(hs_app(counting_client(url)), "session"),
        "starsessions": Caller(star_app(counting_client(url)), "session"),
    }
    for c in (*callers.values(), *counting.values()):  # a session holding the user
        assert await c.get("/write") == 200, "write failed"
        assert c.cookie, "no session cookie"
        await c.get("/typical")  # scripts loaded, connections made
    out: dict[str, dict[str, Any]] = {name: {} for name in callers}
    for name, c in counting.items():  # round trips at the client, commands at the server
        for shape in ("nothing", "read", "write", "typical"):
            for _ in range(2):  # its scripts loaded (a one-time EVAL is not per request)
                await c.get(f"/{shape}")
            before = server_calls(admin)
            CountingConnection.sent = 0
            for _ in range(20):
                await c.get(f"/{shape}")
            delta = calls_delta(before, server_calls(admin))
            out[name][f"round trips: {shape}"] = CountingConnection.sent / 20
            out[name][f"commands: {shape}"] = sum(delta.values()) / 20
            out[name][f"which: {shape}"] = " ".join(
                f"{k}x{v / 20:g}" for k, v in sorted(delta.items())
            )
    for c in callers.values():
        for _ in range(300):
            await c.get("/typical")
    rates: dict[str, list[float]] = {n: [] for n in callers}
    names = list(callers)
    gc.disable()
    try:
        for b in range(blocks):
            for name in names[b % 2 :] + names[: b % 2]:
                c = callers[name]
                t0 = time.perf_counter()
                for _ in range(per_block):
                    await c.get("/typical")
                rates[name].append(per_block / (time.perf_counter() - t0))
    finally:
        gc.enable()
    for name in names:
        out[name]["req/s"] = statistics.median(rates[name])
        out[name]["req/s spread"] = (min(rates[name]), max(rates[name]))
    return out


# -- report -----------------------------------------------------------------


def report(
    ops: dict[str, dict[str, float]], reqs: dict[str, dict[str, Any]], head: list[str]
) -> str:
    hs, raw, same = ops["hashsession"], ops["raw redis.asyncio"], ops["raw same-commands"]
    lines = ["# hashsession asyncio: per operation and per ASGI request", "", *head, ""]
    lines += [
        "| operation | AsyncSession µs | raw redis.asyncio µs | raw same-commands µs "
        "| vs raw | vs same-commands |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for op in OPS:
        lines.append(
            f"| {op} | {hs[op]:.1f} | {raw[op]:.1f} | {same[op]:.1f} "
            f"| {hs[op] / raw[op]:.3f} | {hs[op] / same[op]:.3f} |"
        )
    h, st = reqs["hashsession"], reqs["starsessions"]
    lines += [
        "",
        "Typical request (read one key, increment one counter), in-process ASGI through "
        "Starlette, median of interleaved blocks:",
        "",
        "| library | requests/s | x starsessions | round trips per request: nothing / read "
        "/ write / typical | commands Redis ran (scripts' inner calls included) |",
        "|---|---:|---:|---|---|",
    ]
    shapes = ("nothing", "read", "write", "typical")
    for name, r in (("hashsession", h), ("starsessions", st)):
        trips = " / ".join(f"{r[f'round trips: {s}']:g}" for s in shapes)
        counts = " / ".join(f"{r[f'commands: {s}']:g}" for s in shapes)
        lines.append(
            f"| {name} | {r['req/s']:.0f} | {r['req/s'] / st['req/s']:.2f} | {trips} | {counts} |"
        )
    lines += ["", "Commands Redis ran per request (INFO commandstats deltas):", ""]
    for name, r in (("hashsession", h), ("starsessions", st)):
        for s in ("nothing", "read", "write", "typical"):
            lines.append(f"- {name}, {s}: {r[f'which: {s}'] or 'none'}")
    return "\n".join(lines) + "\n"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=20)
    ap.add_argument("--iters", type=int, default=500)
    ap.add_argument("--blocks", type=int, default=12)
    ap.add_argument("--per-block", type=int, default=300)
    ap.add_argument("--no-busy", action="store_true", help="do not start the busy loops")
    args = ap.parse_args()
    started = time.time()
    server = EmbeddedRedis().start()
    try:
        url = server.url
        admin = redis.Redis.from_url(url)
        with busy_loops(not args.no_busy) as busy, pinned("same", server.pid) as pin:
            ops = asyncio.run(per_op(url, args.rounds, args.iters))
            reqs = asyncio.run(per_request(url, admin, args.blocks, args.per_block))
        load = sh("cat", "/proc/loadavg").split()[:3]
        head = [
            f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC",
            f"- Python {platform.python_version()}, redis-py {redis.__version__}, "
            f"{server_identity(admin)}, hashsession {hashsession.__version__}, "
            f"starsessions {version('starsessions')}, starlette {version('starlette')}",
            f"- busy loops: {busy}; pinning: {pin}",
            f"- per operation: {args.rounds} rounds x {args.iters} calls per column, interleaved; "
            "medians of individually timed calls",
            f"- per request: {args.blocks} blocks x {args.per_block} requests per library, "
            "interleaved; load average after: " + " ".join(load),
        ]
        text = report(ops, reqs, head)
        text += f"\nWhole run: {time.time() - started:.0f} s.\n"
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text(text)
        (RESULTS.with_suffix(".json")).write_text(
            json.dumps({"ops": ops, "requests": reqs}, default=str)
        )
        print(text)
        admin.close()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
