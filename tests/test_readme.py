"""Every python block of README.md runs as written, on a machine with no Redis.

The examples leave ``redis`` out, so each runs on the embedded development server it
starts, in a child process of its own with a fresh ``HASHSESSION_DEV_DIR`` (so that
server is the child's own):

- Each framework section's blocks are served by the framework's real server
  (``tests/readme_server.py``), which reports its embedded server's URL. One request
  creates a session; then 800 requests carrying its cookie arrive at once, each on a new
  connection: 16 threads x 50 requests for the WSGI frameworks, 200 asyncio tasks x 4
  requests for ASGI and Tornado. Every counter must come out exact: every response
  reports a different count, and the stored session holds each increment and each item.
- The store API sections run in ``tests/readme_block.py``, which checks what they did.
- The Sentinel and Cluster block runs here on the test's own deployments, with only the
  hosts and ports of its URLs replaced by theirs.

A python block no test runs fails :func:`test_every_python_block_of_the_readme_is_run`;
one that cannot run alone says why in an ``<!-- not run: reason -->`` comment just before
its fence, and is listed in :data:`NOT_RUN`.
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

from hashsession import SessionStore
from readme_block import CHECKS, run_block
from topologies import ClusterSetup, SentinelSetup, admin_client

ROOT = Path(__file__).resolve().parent.parent
SERVER = Path(__file__).resolve().parent / "readme_server.py"
BLOCK = Path(__file__).resolve().parent / "readme_block.py"

THREADS, PER_THREAD = 16, 50
TASKS, PER_TASK = 200, 4
HITS = THREADS * PER_THREAD
assert TASKS * PER_TASK == HITS

#: Headings of README blocks marked ``<!-- not run: reason -->``; none today.
NOT_RUN: tuple[str, ...] = ()

TOPOLOGY_HEADING = "Sentinel and Cluster"


# --------------------------------------------------------------------------- README


@dataclass(frozen=True)
class Block:
    """One fenced ``python`` block of README.md."""

    heading: str  # the ``##`` or ``###`` heading it sits under
    line: int  # the line of its opening fence
    code: str
    not_run: str | None  # the reason an ``<!-- not run: ... -->`` just before it gives


def readme_blocks() -> list[Block]:
    """Every fenced ``python`` block of README.md, in order."""
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines(keepends=True)
    blocks: list[Block] = []
    heading, previous = "", ""  # the last heading; the last line with text before a fence
    fence: int | None = None  # the line of the open fence, if any
    reason: str | None = None  # the open block's not-run reason
    body: list[str] = []
    for number, line in enumerate(lines, 1):
        text = line.rstrip()
        if fence is not None:
            if text == "```":
                if lines[fence - 1].rstrip() == "```python":
                    blocks.append(Block(heading, fence, "".join(body), reason))
                fence, body = None, []
            else:
                body.append(line)
            continue
        if text.startswith("```"):
            assert text in ("```python", "```sh", "```text"), f"README.md:{number}: {text}"
            fence = number
            marker = re.fullmatch(r"<!-- not run: (.+?) -->", previous)
            reason = marker.group(1) if marker else None
        elif found_heading := re.match(r"#{2,3} (.+)", text):
            heading = found_heading.group(1).strip()
        if text:
            previous = text
    assert fence is None, f"README.md:{fence}: fence never closed"
    return blocks


def python_blocks(heading: str) -> str:
    """The python blocks under the README heading ``heading`` that are run, joined."""
    blocks = [b.code for b in readme_blocks() if b.heading == heading and b.not_run is None]
    assert blocks, f"no python block under {heading}"
    return "\n".join(blocks)


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
    redis_url: str  # the embedded server the example's store uses
    log: Path

    def tail(self) -> str:
        return "\n".join(self.log.read_text(errors="replace").splitlines()[-40:])


Serve = Callable[[str, str], Served]


def dev_env(tmp_path: Path, name: str) -> dict[str, str]:
    """The environment for a child running README code: a fresh ``HASHSESSION_DEV_DIR``.

    The embedded default then belongs to that child alone, whether it is a private
    server per process or one shared through that directory.
    """
    dev_dir = tmp_path / f"dev-{name}"
    dev_dir.mkdir()
    return {**os.environ, "HASHSESSION_DEV_DIR": str(dev_dir)}


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Serve]:
    """Start ``tests/readme_server.py`` for a framework and code. Stopped by pid."""
    procs: list[subprocess.Popen[str]] = []

    def start(framework: str, code: str) -> Served:
        code_file = tmp_path / f"{framework}.py"
        code_file.write_text(code, encoding="utf-8")
        log_path = tmp_path / f"{framework}.log"
        log = log_path.open("w")
        proc = subprocess.Popen(
            [sys.executable, str(SERVER), framework, str(code_file)],
            stdout=subprocess.PIPE,
            stderr=log,
            text=True,
            env=dev_env(tmp_path, framework),
            cwd=tmp_path,
        )
        procs.append(proc)
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            ready, _, _ = select.select([proc.stdout], [], [], 0.5)
            if ready:
                line = proc.stdout.readline()
                if line.startswith("PORT "):  # PORT <n> REDIS <url>
                    _, port, _, redis_url = line.split()
                    return Served(int(port), redis_url, log_path)
            if proc.poll() is not None:
                break
        log.flush()
        raise AssertionError(f"{framework} server did not start:\n{log_path.read_text()}")

    yield start
    for proc in procs:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def the_session(client: redis.Redis) -> dict[bytes, bytes]:
    """The one session hash on the example's server (the burst must not have made others)."""
    hashes = [k for k in client.scan_iter() if client.type(k) == b"hash"]
    assert len(hashes) == 1, hashes
    return client.hgetall(hashes[0])  # type: ignore[return-value]


def run_example(example: Example, code: str, serve: Serve) -> None:
    served = serve(example.framework, code)
    # The embedded server: on loopback, never the conventional 6379.
    embedded = r"redis://(:[\w-]+@)?127\.0\.0\.1:\d+/0|unix://.+"
    assert re.fullmatch(embedded, served.redis_url), served
    assert ":6379/" not in served.redis_url
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
    client = redis.Redis.from_url(served.redis_url)
    try:
        stored = the_session(client)
    finally:
        client.close()
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
def test_readme_example_loses_no_update(example: Example, serve: Serve) -> None:
    code = python_blocks(example.heading)
    assert "://" not in code, "framework examples leave redis out (the embedded server)"
    run_example(example, code, serve)


# --------------------------------------------------------------------------- store API


@pytest.mark.parametrize("heading", sorted(CHECKS))
def test_readme_store_example_runs_as_written(heading: str, tmp_path: Path) -> None:
    code = python_blocks(heading)
    assert "://" not in code, "store examples leave redis out (the embedded server)"
    code_file = tmp_path / "example.py"
    code_file.write_text(code, encoding="utf-8")
    proc = subprocess.run(
        [sys.executable, str(BLOCK), heading, str(code_file)],
        capture_output=True,
        text=True,
        env=dev_env(tmp_path, "block"),
        cwd=tmp_path,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1:] == [f"CHECKED {heading}"], proc.stdout


# --------------------------------------------------------------------------- topologies


def hosts_replaced(code: str, hosts: dict[str, str]) -> str:
    """``code`` with the host list of each ``<scheme>://`` URL replaced by ``hosts[scheme]``.

    Nothing else changes: the service name, database and options stay as written.
    """
    seen = []

    def swap(found: re.Match[str]) -> str:
        seen.append(found.group(1))
        return f"{found.group(1)}://{hosts[found.group(1)]}"

    out = re.sub(r"([a-z+]+)://([^/?\"]+)", swap, code)
    assert sorted(seen) == sorted(hosts), seen
    return out


def test_readme_sentinel_and_cluster_example_runs_on_real_topologies(
    sentinel_setup: SentinelSetup, cluster_setup: ClusterSetup
) -> None:
    code = python_blocks(TOPOLOGY_HEADING)
    local = hosts_replaced(
        code,
        {
            "redis+sentinel": ",".join(f"127.0.0.1:{s.port}" for s in sentinel_setup.sentinels),
            "redis+cluster": ",".join(f"127.0.0.1:{s.port}" for s in cluster_setup.masters),
        },
    )
    steps = run_block(local, {"__name__": "readme_example"})
    stores = [v for step in steps for v in step.names.values() if isinstance(v, SessionStore)]
    assert len(stores) == 2, steps
    for store, deployment in zip(stores, ["sentinel", "cluster"], strict=True):
        setup = sentinel_setup if deployment == "sentinel" else cluster_setup
        admin = admin_client(deployment, setup)
        session = store.open()
        try:
            assert session.incr("visits") == 1
            assert admin.hget(session.core.key, "visits") == b"1", deployment
        finally:
            session.invalidate()
            store.close()
            admin.close()


# --------------------------------------------------------------------------- coverage


def test_every_python_block_of_the_readme_is_run() -> None:
    blocks = readme_blocks()
    run = {e.heading for e in EXAMPLES} | set(CHECKS) | {TOPOLOGY_HEADING}
    for name in ("WSGI", "ASGI", "Tornado", "Flask", "Bottle", "Pyramid", "Django"):
        assert any(name in h for h in run), name
    unrun = [
        f"README.md:{b.line} under {b.heading!r}"
        for b in blocks
        if b.not_run is None and b.heading not in run
    ]
    assert unrun == [], "add a test that runs these, or an <!-- not run: reason --> comment"
    for heading in run:  # no test runs a heading the README no longer has
        assert any(b.heading == heading and b.not_run is None for b in blocks), heading
    skipped = [b for b in blocks if b.not_run is not None]
    assert sorted(b.heading for b in skipped) == sorted(NOT_RUN), skipped
    assert len(blocks) - len(skipped) >= 10
