"""The README's framework examples lose no update under concurrent requests.

Each framework section's fenced ``python`` blocks are taken from README.md as they are,
pointed at the test's private redis-server (see :func:`pointed_at`), and served by the
framework's real server in a child process (``tests/readme_server.py``). One request
creates a session; then 800 requests carrying its cookie arrive at once, each on a new
connection: 16 threads x 50 requests for the WSGI frameworks, 200 asyncio tasks x 4
requests for ASGI and Tornado. Every counter must come out exact: every response reports
a different count, and the stored session holds each increment and each item added.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import redis

ROOT = Path(__file__).resolve().parent.parent
SERVER = Path(__file__).resolve().parent / "readme_server.py"

THREADS, PER_THREAD = 16, 50
TASKS, PER_TASK = 200, 4
HITS = THREADS * PER_THREAD
assert TASKS * PER_TASK == HITS

#: The Redis URLs the examples may name: all of them the conventional local server.
LOCAL_REDIS = re.compile(r"redis://localhost(?::6379)?(?:/0)?")


# --------------------------------------------------------------------------- README


def python_blocks(heading: str) -> str:
    """The fenced ``python`` blocks of the README section ``## <heading>``, joined."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    sections = re.split(r"^## ", text, flags=re.MULTILINE)
    section = next(s for s in sections if s.splitlines()[0].strip() == heading)
    blocks = re.findall(r"^```python\n(.*?)^```", section, flags=re.MULTILINE | re.DOTALL)
    assert blocks, f"no python block under ## {heading}"
    return "\n".join(blocks)


def pointed_at(code: str, url: str) -> str:
    """``code`` with every Redis URL it names replaced by ``url``, the test's server.

    A block that names no Redis is left as it is: the server process hands the test's
    URL to hashsession's embedded-server default instead (``README_REDIS_URL``). Either
    way nothing reaches port 6379.
    """
    out = LOCAL_REDIS.sub(url, code)
    assert "6379" not in out and "localhost" not in out, out
    return out


# --------------------------------------------------------------------------- HTTP


Response = tuple[int, list[tuple[str, str]], str]


def fetch(port: int, method: str, path: str, cookie: str | None) -> Response:
    """One request on a connection of its own."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, headers={"Cookie": cookie} if cookie else {})
        reply = conn.getresponse()
        return reply.status, reply.getheaders(), reply.read().decode("utf-8")
    finally:
        conn.close()


async def afetch(port: int, method: str, path: str, cookie: str | None) -> Response:
    """One request on a connection of its own, from an asyncio task."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}", "Connection: close"]
        lines += ["Content-Length: 0"] + ([f"Cookie: {cookie}"] if cookie else [])
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        await writer.drain()
        data = await reader.read()
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = [tuple(h.split(": ", 1)) for h in header_lines]
    return int(status_line.split()[1]), headers, body.decode("utf-8")  # type: ignore[misc]


def cookie_from(headers: list[tuple[str, str]]) -> str:
    pairs = [v.split(";", 1)[0] for k, v in headers if k.lower() == "set-cookie"]
    assert pairs, headers
    return "; ".join(pairs)


def hammer_threads(port: int, cookie: str, request: Callable[[int], tuple[str, str]]) -> list[str]:
    """THREADS threads, each sending PER_THREAD requests; the response bodies."""

    def worker(t: int) -> list[str]:
        out = []
        for n in range(PER_THREAD):
            status, _, body = fetch(port, *request(t * PER_THREAD + n), cookie)
            assert status == 200, body
            out.append(body)
        return out

    with ThreadPoolExecutor(THREADS) as pool:
        return [body for bodies in pool.map(worker, range(THREADS)) for body in bodies]


def hammer_tasks(port: int, cookie: str, request: Callable[[int], tuple[str, str]]) -> list[str]:
    """TASKS asyncio tasks, each sending PER_TASK requests; the response bodies."""

    async def worker(t: int) -> list[str]:
        out = []
        for n in range(PER_TASK):
            status, _, body = await afetch(port, *request(t * PER_TASK + n), cookie)
            assert status == 200, body
            out.append(body)
        return out

    async def main() -> list[list[str]]:
        return await asyncio.gather(*(worker(t) for t in range(TASKS)))

    return [body for bodies in asyncio.run(main()) for body in bodies]


# --------------------------------------------------------------------------- the examples


@dataclass
class Example:
    heading: str
    framework: str
    setup: tuple[str, str]  # the request that creates the session
    request: Callable[[int], tuple[str, str]]  # request number i of the burst
    concurrency: str  # "threads" or "tasks"
    count: Callable[[str], int] | None  # the count a response reports
    first_count: int  # the count the burst's first increment reports
    stored: dict[str, Any] = field(default_factory=dict)  # expected fields afterwards
    cart: str | None = None  # the prefix of the fields counting each request's item
    flashes: int | None = None  # messages expected in Pyramid's default flash queue


def _visit(body: str) -> int:
    return int(re.search(r"visit (\d+)", body).group(1))  # type: ignore[union-attr]


EXAMPLES = [
    Example(
        "Plain WSGI", "wsgi", ("GET", "/"), lambda i: ("GET", "/"), "threads", _visit, 2,
        {"visits": 1 + HITS},
    ),
    Example(
        "asyncio and ASGI (Starlette, FastAPI)", "asgi", ("GET", "/"),
        lambda i: ("GET", "/"), "tasks", lambda b: json.loads(b)["visits"], 2,
        {"visits": 1 + HITS},
    ),
    Example(
        "Tornado", "tornado", ("POST", "/cart/setup"), lambda i: ("POST", f"/cart/i{i}"),
        "tasks", lambda b: json.loads(b)["items"], 2, {"items": 1 + HITS}, cart="cart:",
    ),
    Example(
        "Flask", "flask", ("GET", "/"), lambda i: ("GET", "/"), "threads", _visit, 2,
        {"visits": 1 + HITS},
    ),
    Example(
        "Bottle", "bottle", ("GET", "/login/alice"), lambda i: ("GET", "/"), "threads",
        _visit, 1, {"visits": HITS, "user": "alice"},
    ),
    Example(
        "Pyramid", "pyramid", ("GET", "/cart"), lambda i: ("GET", "/cart"), "threads", None, 0,
        {"items": 1 + HITS}, flashes=1 + HITS,
    ),
    Example(
        "Django", "django", ("GET", "/add/setup"), lambda i: ("GET", f"/add/i{i}"), "threads",
        None, 0, {"adds": 1 + HITS}, cart="cart:",
    ),
]  # fmt: skip


@dataclass
class Served:
    port: int
    log: Path

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])


Serve = Callable[[str, str], Served]


@pytest.fixture
def serve(tmp_path: Path, redis_url: str) -> Iterator[Serve]:
    """Start ``tests/readme_server.py`` for a framework and code. Stopped by pid."""
    procs: list[subprocess.Popen[str]] = []

    def start(framework: str, code: str) -> Served:
        code_file = tmp_path / f"{framework}.py"
        code_file.write_text(code, encoding="utf-8")
        log = (tmp_path / f"{framework}.log").open("w")
        proc = subprocess.Popen(
            [sys.executable, str(SERVER), framework, str(code_file)],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env={**os.environ, "README_REDIS_URL": redis_url},
            cwd=tmp_path,
        )
        procs.append(proc)
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 0.5)
            if ready:
                line = proc.stdout.readline()
                if line.startswith("PORT "):
                    return Served(int(line.split()[1]), tmp_path / f"{framework}.log")
            if proc.poll() is not None:
                break
        log.flush()
        raise AssertionError(
            f"{framework} server did not start:\n{(tmp_path / f'{framework}.log').read_text()}"
        )

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def the_session(client: redis.Redis) -> dict[bytes, bytes]:
    """The one session hash on the test's server (the burst must not have made others)."""
    hashes = [k for k in client.scan_iter() if client.type(k) == b"hash"]
    assert len(hashes) == 1, hashes
    return client.hgetall(hashes[0])  # type: ignore[return-value]


def run_example(example: Example, code: str, serve: Serve, client: redis.Redis) -> None:
    served = serve(example.framework, code)
    port = served.port
    status, headers, body = fetch(port, *example.setup, None)
    assert status in (200, 302, 303), body
    cookie = cookie_from(headers)
    hammer = hammer_threads if example.concurrency == "threads" else hammer_tasks
    started = time.monotonic()
    try:
        bodies = hammer(port, cookie, example.request)
    except AssertionError as exc:
        raise AssertionError(f"{exc}\nserver log:\n{served.tail()}") from None
    elapsed = time.monotonic() - started
    print(f"{example.framework}: {HITS} concurrent requests in {elapsed:.2f} s")
    if example.count is not None:  # each response saw its own increment
        counts = sorted(example.count(b) for b in bodies)
        first = example.first_count
        assert counts == list(range(first, first + HITS))
    stored = the_session(client)
    for name, value in example.stored.items():
        assert json.loads(stored[name.encode()]) == value, name
    if example.cart is not None:
        prefix = example.cart.encode()
        items = {k[len(prefix) :]: int(v) for k, v in stored.items() if k.startswith(prefix)}
        assert items == {i.encode(): 1 for i in ["setup"] + [f"i{n}" for n in range(HITS)]}
    if example.flashes is not None:
        queue = stored[b"\x00flash:"].split(b"\n")
        assert len([m for m in queue if m]) == example.flashes


@pytest.mark.parametrize("example", EXAMPLES, ids=[e.framework for e in EXAMPLES])
def test_readme_example_loses_no_update(
    example: Example,
    serve: Serve,
    redis_url: str,
    redis_client: redis.Redis,
) -> None:
    code = pointed_at(python_blocks(example.heading), redis_url)
    run_example(example, code, serve, redis_client)


def test_an_example_that_names_no_redis_uses_the_test_server(
    serve: Serve, redis_url: str, redis_client: redis.Redis
) -> None:
    # The WSGI example with its Redis URL taken out, as when examples rely on the
    # embedded development default: the server process points that default here.
    code = python_blocks("Plain WSGI")
    without = re.sub(r'redis="[^"]*",\s*', "", code)
    assert without != code and "redis://" not in without
    assert pointed_at(without, redis_url) == without
    run_example(EXAMPLES[0], without, serve, redis_client)


def test_every_framework_section_is_covered() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    headings = {e.heading for e in EXAMPLES}
    for name in ("WSGI", "ASGI", "Tornado", "Flask", "Bottle", "Pyramid", "Django"):
        assert any(name in h for h in headings), name
    for heading in headings:
        assert f"\n## {heading}\n" in text
