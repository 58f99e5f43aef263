"""Clients built from URLs send commands straight on a pooled connection
(:mod:`hashsession.direct`), on one server and on Sentinel; a Cluster client is redis-py's.

What must not change: every reply is what redis-py gives (converted as it converts it),
and a command whose reply comes too late, or that is cancelled, leaves no connection
behind that would hand that reply to the next command.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import redis

from hashsession.direct import AsyncDirectRedis, DirectRedis
from hashsession.topology import async_client, sync_client

pytestmark = pytest.mark.all_topologies

# Busy for ARGV[1] rounds, then answers "late".
SLOW = "local x = 0 for i = 1, tonumber(ARGV[1]) do x = x + i end return 'late'"
#: The timeout the late reply misses; the script is made to run about 1.5 s.
TIMEOUT = 0.4


def _rounds_for_a_second(client: Any) -> int:
    """How many rounds of :data:`SLOW` take about 1.5 s on this server and machine, by
    the fastest of three timings (a busy moment only makes the script run longer)."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        client.execute_command("EVAL", SLOW, 1, "hs:late", 2_000_000)
        best = min(best, time.perf_counter() - started)
    return int(1.5 * 2_000_000 / max(best, 0.0005))


COMMANDS: list[tuple[Any, ...]] = [
    ("HSET", "{k}", "f", "v", "g", "2"),
    ("HGET", "{k}", "f"),
    ("HMGET", "{k}", "f", "nope", "g"),
    ("HEXISTS", "{k}", "f"),  # converted by redis-py: a bool
    ("PEXPIRE", "{k}", 100_000),  # converted too
    ("HINCRBY", "{k}", "g", 3),
    ("HINCRBYFLOAT", "{k}", "g", 0.5),  # converted: a float
    ("EVAL", "return {KEYS[1], ARGV[1]}", 1, "{k}", "x"),
    ("HGETALL", "{k}"),
    ("HKEYS", "{k}"),
    ("PTTL", "{k}"),
    ("DEL", "{k}"),
]


def test_replies_are_redis_pys(redis_url: str, redis_topology: str) -> None:
    client = sync_client(redis_url)
    direct = redis_topology != "cluster"
    assert isinstance(client, DirectRedis) is direct
    # redis-py's own way of sending, on the same client and a twin key
    redis_py = redis.Redis.execute_command if direct else type(client).execute_command
    try:
        for template in COMMANDS:
            ours = client.execute_command(*_filled(template, "hs:ours"))
            theirs = redis_py(client, *_filled(template, "hs:theirs"))
            if template[0] == "PTTL":
                ours, theirs = ours // 1000, theirs // 1000
            elif template[0] == "EVAL":
                theirs = [ours[0], theirs[1]]  # (the key's name differs)
            assert ours == theirs, template
    finally:
        client.close()


def _filled(template: tuple[Any, ...], key: str) -> list[Any]:
    return [key if a == "{k}" else a for a in template]


# The late-reply tests keep the server busy for a second: on one server only, since the
# sentinels would fail a master that busy over. (The connection code is the same there.)
@pytest.mark.standalone_only
def test_a_late_reply_never_answers_the_next_command(redis_url: str) -> None:
    client = sync_client(redis_url, socket_timeout=TIMEOUT)
    waiter = sync_client(redis_url)  # answered once the script is done
    try:
        rounds = _rounds_for_a_second(waiter)
        client.execute_command("HSET", "hs:late", "f", "v")
        for _ in range(3):  # the pool's one connection each time
            with pytest.raises(redis.exceptions.TimeoutError):
                client.execute_command("EVAL", SLOW, 1, "hs:late", rounds)
            assert waiter.execute_command("HGET", "hs:late", "f") == b"v"
            # the script's reply went to the timed-out connection, which was dropped
            assert client.execute_command("HGET", "hs:late", "f") == b"v"
            assert client.execute_command("HMGET", "hs:late", "f") == [b"v"]
    finally:
        client.close()
        waiter.close()


async def test_async_replies(redis_url: str, redis_topology: str) -> None:
    client = async_client(redis_url)
    try:
        assert isinstance(client, AsyncDirectRedis) is (redis_topology != "cluster")
        assert await client.execute_command("HSET", "hs:a", "f", "v", "n", 1) == 2
        assert await client.execute_command("HEXISTS", "hs:a", "f") is True  # converted
        assert await client.execute_command("HINCRBYFLOAT", "hs:a", "n", 0.5) == 1.5
        assert await client.execute_command("HMGET", "hs:a", "f", "x") == [b"v", None]
        assert await client.execute_command("EVAL", "return ARGV[1]", 0, "x") == b"x"
    finally:
        await client.aclose()


@pytest.mark.standalone_only
async def test_async_late_or_cancelled_replies(redis_url: str) -> None:
    import asyncio

    client = async_client(redis_url, socket_timeout=TIMEOUT)
    waiter = sync_client(redis_url)
    try:
        rounds = _rounds_for_a_second(waiter)
        assert await client.execute_command("HSET", "hs:late", "f", "v") == 1
        for _ in range(3):
            with pytest.raises(redis.exceptions.TimeoutError):
                await client.execute_command("EVAL", SLOW, 1, "hs:late", rounds)
            assert waiter.execute_command("HGET", "hs:late", "f") == b"v"
            assert await client.execute_command("HGET", "hs:late", "f") == b"v"
        # A command cancelled while it waits for its reply leaves no reply behind either.
        task = asyncio.ensure_future(client.execute_command("EVAL", SLOW, 1, "hs:late", rounds))
        await asyncio.sleep(0.05)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert waiter.execute_command("HGET", "hs:late", "f") == b"v"
        assert await client.execute_command("HGET", "hs:late", "f") == b"v"
    finally:
        await client.aclose()
        waiter.close()
