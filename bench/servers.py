"""Side by side: the servers the suite runs on, as the embedded default would use them.

For each server binary (``HASHSESSION_SERVER`` values: ``redis6``, ``valkey``,
``system`` or a path), in one run, interleaved:

- start-up: ``Popen`` to the first ``+PONG`` (median of ``--starts`` starts), and
  ``EmbeddedRedis().start()`` as the fixtures and the demo pay it;
- a 3+3 cluster ready (``tests/topologies.start_cluster``, median of ``--clusters``);
- memory per session: ``used_memory`` after minus before ``--sessions`` new
  sessions, each written through hashsession with one small value;
- ``HGET`` through redis-py: median of individually timed calls, per round, rounds
  interleaved across the servers; ratios against the first server, per round.

Usage: ``.venv/bin/python bench/servers.py [--servers redis6,valkey,/usr/bin/redis-server]``
prints a Markdown table (docs/servers.md quotes one).
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import redis

import hashsession
from hashsession import SessionStore
from hashsession.embedded import (
    SERVER_ENV,
    EmbeddedRedis,
    free_port,
    server_binary,
    server_identity,
)

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from topologies import start_cluster  # noqa: E402

PAYLOAD = [101, 202, 303]  # session["cart"]: 15 bytes of JSON


def first_pong(binary: str) -> float:
    """Seconds from Popen to the first +PONG, polling every millisecond."""
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="hashsession-bench-") as directory:
        command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        command += ["--appendonly", "no", "--daemonize", "no", "--dir", directory]
        begun = time.perf_counter()
        process = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=directory
        )
        try:
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=1) as sock:
                        sock.sendall(b"PING\r\n")
                        if sock.recv(16).startswith(b"+PONG"):
                            return time.perf_counter() - begun
                except OSError:
                    pass
                if process.poll() is not None:
                    raise RuntimeError(f"{binary} exited with {process.returncode}")
                time.sleep(0.001)
        finally:
            process.terminate()
            process.wait()


def embedded_start(binary: str) -> float:
    begun = time.perf_counter()
    server = EmbeddedRedis(binary=binary).start()
    took = time.perf_counter() - begun
    server.stop()
    return took


def cluster_ready(binary: str) -> float:
    saved = os.environ.get(SERVER_ENV)
    os.environ[SERVER_ENV] = binary
    try:
        setup = start_cluster()
    finally:
        if saved is None:
            os.environ.pop(SERVER_ENV, None)
        else:
            os.environ[SERVER_ENV] = saved
    setup.stop()
    return setup.started_in


def bytes_per_session(binary: str, sessions: int) -> tuple[float, str]:
    with EmbeddedRedis(binary=binary) as server:
        admin = server.client()
        store = SessionStore(redis=server.url, ttl=3600)
        try:
            before = int(admin.info("memory")["used_memory"])
            for _ in range(sessions):
                store.open()["cart"] = PAYLOAD
            after = int(admin.info("memory")["used_memory"])
            assert admin.dbsize() == sessions
            allocator = str(admin.info("memory")["mem_allocator"])
        finally:
            store.close()
            admin.close()
    return (after - before) / sessions, allocator


def hget_rounds(binaries: list[str], rounds: int, calls: int) -> list[list[float]]:
    """Per server, per round: the median of ``calls`` individually timed HGETs (µs)."""
    servers = [EmbeddedRedis(binary=b).start() for b in binaries]
    clients = [s.client() for s in servers]
    try:
        for client in clients:
            client.hset("h", "cart", "[101,202,303]")
            for _ in range(calls):  # warm the connection and the code paths
                client.hget("h", "cart")
        results: list[list[float]] = [[] for _ in binaries]
        clock = time.perf_counter_ns
        for r in range(rounds):
            order = list(range(len(binaries)))
            order = order[r % len(order) :] + order[: r % len(order)]
            for i in order:
                hget = clients[i].hget
                times = []
                for _ in range(calls):
                    t0 = clock()
                    hget("h", "cart")
                    times.append(clock() - t0)
                results[i].append(statistics.median(times) / 1000)
        return results
    finally:
        for client in clients:
            client.close()
        for server in servers:
            server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--servers", default="redis6,valkey,system")
    parser.add_argument("--starts", type=int, default=20)
    parser.add_argument("--clusters", type=int, default=3)
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=30)
    parser.add_argument("--calls", type=int, default=300)
    args = parser.parse_args()
    binaries = [server_binary(choice) for choice in args.servers.split(",")]
    names = []
    for binary in binaries:
        with EmbeddedRedis(binary=binary) as server:
            client = server.client()
            names.append(str(server_identity(client)))
            client.close()

    pong: list[list[float]] = [[] for _ in binaries]
    embedded: list[list[float]] = [[] for _ in binaries]
    for _ in range(args.starts):
        for i, binary in enumerate(binaries):
            pong[i].append(first_pong(binary))
            embedded[i].append(embedded_start(binary))
    clusters: list[list[float]] = [[] for _ in binaries]
    for _ in range(args.clusters):
        for i, binary in enumerate(binaries):
            clusters[i].append(cluster_ready(binary))
    memory = [bytes_per_session(b, args.sessions) for b in binaries]
    hget = hget_rounds(binaries, args.rounds, args.calls)
    ratios = [
        statistics.median(x / base for x, base in zip(times, hget[0], strict=True))
        for times in hget
    ]

    print(f"- {platform.platform()}, {os.cpu_count()} logical CPUs (shared), ", end="")
    print(f"Python {platform.python_version()}, redis-py {redis.__version__}, ", end="")
    print(f"hashsession {hashsession.__version__}")
    print(f"- `bench/servers.py --servers {args.servers}` (defaults otherwise)\n")
    ms = 1000
    print(
        f"| server | first PONG, ms (median of {args.starts}) | EmbeddedRedis.start(), ms "
        f"| 3+3 cluster ready, s (median of {args.clusters}) "
        f"| bytes per session ({args.sessions:,}) | allocator | HGET, µs | HGET ratio |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for i, name in enumerate(names):
        print(
            f"| {name} | {statistics.median(pong[i]) * ms:.1f} "
            f"| {statistics.median(embedded[i]) * ms:.1f} "
            f"| {statistics.median(clusters[i]):.2f} "
            f"| {memory[i][0]:.0f} | {memory[i][1]} "
            f"| {statistics.median(hget[i]):.1f} | {ratios[i]:.3f} |"
        )
    print(f"\n(HGET: {args.rounds} rounds x {args.calls} calls, ratio to {names[0]} per round)")
    print(f"(binaries: {', '.join(binaries)})")


if __name__ == "__main__":
    main()
