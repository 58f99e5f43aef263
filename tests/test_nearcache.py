"""The near cache's foundation (hashsession.nearcache) against a real private server.

Writes come from another process; the tracking link is killed with CLIENT KILL; FLUSHALL
and expiry must empty what they touch. No wall-clock assertion: waits are bounded polls.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from hashsession.embedded import EmbeddedRedis
from hashsession.nearcache import NearCache, Tracker, invalidations

PREFIX = "hs:"

WRITER = r"""
import sys, redis
r = redis.Redis.from_url(sys.argv[1])
for line in sys.stdin:
    op, key, n = line.split()
    if op == "set":
        r.hset(key, "cart", n)
    else:
        r.delete(key)
    print("ok", flush=True)
"""


@pytest.fixture
def server(make_server: Callable[..., EmbeddedRedis]) -> EmbeddedRedis:
    return make_server()


@pytest.fixture
def tracked(server: EmbeddedRedis) -> Iterator[tuple[NearCache, Tracker]]:
    pool = redis.ConnectionPool.from_url(server.url, protocol=3)
    cache = NearCache()
    tracker = Tracker(cache, pool.make_connection, PREFIX, interval=0.02).start()
    try:
        yield cache, tracker
    finally:
        tracker.close()
        pool.disconnect()


def cached(cache: NearCache, key: str) -> bool:
    return cache.get(key, "cart")[0]


def fill(cache: NearCache, key: str) -> None:
    assert cache.put(key, "cart", b"[1]", cache.stamp())
    assert cached(cache, key)


def kill_tracking_links(admin: redis.Redis) -> int:
    """CLIENT KILL every connection with tracking on (flag ``t``); how many."""
    ids = [c["id"] for c in admin.client_list() if "t" in c["flags"]]
    for client_id in ids:
        admin.client_kill_filter(_id=client_id)
    return len(ids)


def until(check: Callable[[], bool], tracker: Tracker, limit: float = 10.0) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        tracker.drain()
        if check():
            return True
        time.sleep(0.005)
    return False


def test_a_write_or_logout_in_another_process_is_seen_1_ms_after_its_ack(
    server: EmbeddedRedis, tracked: tuple[NearCache, Tracker]
) -> None:
    cache, tracker = tracked
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, server.url],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert writer.stdin is not None and writer.stdout is not None
    reader = server.client()
    stale = kept_after_change = 0
    try:
        for n in range(400):
            key = f"{PREFIX}{n % 7}"
            stamp = cache.stamp()  # a reader fills the cache from a real read
            assert cache.put(key, "cart", reader.hget(key, "cart"), stamp)
            writer.stdin.write(f"{'set' if n % 4 else 'del'} {key} {n}\n")  # write or logout
            writer.stdin.flush()
            assert writer.stdout.readline().strip() == "ok"  # acknowledged
            time.sleep(0.001)
            tracker.drain()  # what a request does before answering from the cache
            hit, raw = cache.get(key, "cart")
            stale += hit and raw != reader.hget(key, "cart")
            kept_after_change += hit and n % 4 != 0  # every set changes the value
    finally:
        writer.stdin.close()
        writer.wait(timeout=10)
    assert (stale, kept_after_change) == (0, 0)


def test_a_value_read_before_an_invalidation_is_not_kept(
    server: EmbeddedRedis, tracked: tuple[NearCache, Tracker]
) -> None:
    cache, tracker = tracked
    stamp = cache.stamp()  # taken before the read is sent
    server.client().hset(f"{PREFIX}a", "cart", "[9]")  # a change lands meanwhile
    assert until(lambda: cache.stamp() != stamp, tracker)
    assert not cache.put(f"{PREFIX}a", "cart", b"[1]", stamp)
    assert not cached(cache, f"{PREFIX}a")


def test_keys_outside_the_prefix_do_not_invalidate(
    server: EmbeddedRedis, tracked: tuple[NearCache, Tracker]
) -> None:
    cache, tracker = tracked
    fill(cache, f"{PREFIX}a")
    before = cache.stamp()
    admin = server.client()
    admin.set("other", "1")
    admin.set(f"{PREFIX}marker", "1")  # in the prefix: its invalidation follows the other's
    assert until(lambda: cache.stamp() != before, tracker)
    assert cached(cache, f"{PREFIX}a")


def test_flushall_empties_the_cache(
    server: EmbeddedRedis, tracked: tuple[NearCache, Tracker]
) -> None:
    cache, tracker = tracked
    for n in range(5):
        fill(cache, f"{PREFIX}{n}")
    server.client().flushall()
    assert until(lambda: cache.size[0] == 0, tracker)
    assert cache.on


def test_expiry_is_seen(server: EmbeddedRedis, tracked: tuple[NearCache, Tracker]) -> None:
    cache, tracker = tracked
    admin = server.client()
    admin.hset(f"{PREFIX}e", "cart", "[1]")
    admin.pexpire(f"{PREFIX}e", 30)
    assert until(lambda: cache.stamp() is not None, tracker)
    fill(cache, f"{PREFIX}e")
    assert until(lambda: not cached(cache, f"{PREFIX}e"), tracker)


def test_a_killed_tracking_link_empties_the_cache_until_it_is_back(
    server: EmbeddedRedis, tracked: tuple[NearCache, Tracker]
) -> None:
    cache, tracker = tracked
    fill(cache, f"{PREFIX}a")
    admin = server.client()
    assert kill_tracking_links(admin) == 1
    # Nothing may be served from the moment the link is found dead ...
    seen_off = until(lambda: not cache.on, tracker)
    assert seen_off
    assert cache.size == (0, 0)
    assert cache.stamp() is None
    assert not cache.put(f"{PREFIX}a", "cart", b"[1]", cache.stamp())
    # ... and the thread brings it back; invalidations then flow again.
    assert until(lambda: cache.on, tracker)
    fill(cache, f"{PREFIX}a")
    admin.hset(f"{PREFIX}a", "cart", "[3]")
    assert until(lambda: not cached(cache, f"{PREFIX}a"), tracker)


def test_a_restarted_server_turns_the_cache_off_then_on(
    make_server: Callable[..., EmbeddedRedis],
) -> None:
    server = make_server()
    pool = redis.ConnectionPool.from_url(server.url, protocol=3)
    cache = NearCache()
    tracker = Tracker(cache, pool.make_connection, PREFIX, interval=0.02).start()
    try:
        fill(cache, f"{PREFIX}a")
        port = server.port
        server.stop()
        assert until(lambda: not cache.on, tracker)
        assert cache.size == (0, 0)
        make_server(port=port)
        assert until(lambda: cache.on, tracker)
    finally:
        tracker.close()
        pool.disconnect()


def test_least_recently_used_sessions_go_first() -> None:
    cache = NearCache(max_entries=3)
    cache.switch(True)
    for key in ("a", "b", "c"):
        assert cache.put(key, "f", b"1", cache.stamp())
    assert cache.get("a", "f") == (True, b"1")  # a is now the most recent
    assert cache.put("d", "f", None, cache.stamp())  # known missing: cached as None
    assert [cache.get(k, "f")[0] for k in "abcd"] == [True, False, True, True]
    assert cache.get("d", "f") == (True, None)


def test_the_byte_bound_holds() -> None:
    cache = NearCache(max_bytes=2000)
    cache.switch(True)
    for n in range(50):
        cache.put(f"k{n}", "f", b"x" * 100, cache.stamp())
    held, size = cache.size
    assert size <= 2000
    assert 1 <= held < 50
    assert cache.get("k49", "f") == (True, b"x" * 100)


def test_an_off_cache_serves_nothing(server: EmbeddedRedis) -> None:
    cache = NearCache()
    assert cache.stamp() is None
    assert not cache.put("k", "f", b"1", 0)
    assert cache.get("k", "f") == (False, None)
    with pytest.raises(ValueError):
        NearCache(max_entries=0)


# ------------------------------------------------ reading the link's pushes ourselves


def _push(keys: list[bytes] | None) -> bytes:
    """An invalidation push as tracking sends it over RESP3."""
    head = b">2\r\n$10\r\ninvalidate\r\n"
    if keys is None:
        return head + b"_\r\n"
    return head + b"*%d\r\n" % len(keys) + b"".join(b"$%d\r\n%s\r\n" % (len(k), k) for k in keys)


def test_pushes_are_read_whole_and_a_cut_one_is_left_for_the_next_read() -> None:
    pushes: list[list[bytes] | None] = [[b"hs:a"], None, [b"hs:b\r\n", b"", b"hs:" + b"c" * 300]]
    stream = b"".join(_push(p) for p in pushes)
    assert invalidations(stream) == (pushes, len(stream))
    for cut in range(len(stream) + 1):  # cut anywhere, then the rest arrives
        first = invalidations(stream[:cut])
        assert first is not None, cut
        got, end = first
        assert end <= cut and stream[:end] == b"".join(_push(p) for p in got)
        rest = invalidations(stream[end:])
        assert rest is not None and got + rest[0] == pushes and end + rest[1] == len(stream)


@pytest.mark.parametrize(
    "data",
    [
        b"+OK\r\n",
        b">3\r\n$10\r\ninvalidate\r\n*0\r\n",
        b">2\r\n$7\r\nmessage\r\n*0\r\n",
        b">2\r\n$10\r\ninvalidate\r\n:1\r\n",
        b">2\r\n$10\r\ninvalidate\r\n*x\r\n",
        b">2\r\n$10\r\ninvalidate\r\n*1\r\n:4\r\nhs:a\r\n",
        b">2\r\n$10\r\ninvalidate\r\n*1\r\n$2\r\nhs:a\r\n",
        _push([b"hs:a"]) + b"-ERR\r\n",
    ],
)
def test_anything_but_invalidation_pushes_is_refused(data: bytes) -> None:
    assert invalidations(data) is None


@pytest.fixture
def link(server: EmbeddedRedis) -> Iterator[tuple[NearCache, Tracker]]:
    """A tracking link no thread drains: only the test reads it."""
    pool = redis.ConnectionPool.from_url(server.url, protocol=3)
    cache = NearCache(max_entries=100_000, max_bytes=1 << 30)
    tracker = Tracker(cache, pool.make_connection, PREFIX).start(thread=False)
    try:
        yield cache, tracker
    finally:
        tracker.close()
        pool.disconnect()


def _arrived(tracker: Tracker) -> None:
    """Wait until the link's socket has something to read."""
    import select

    assert select.select([tracker._conn._sock], [], [], 10)[0]


def test_a_burst_of_pushes_longer_than_one_read_is_applied_whole(
    server: EmbeddedRedis, link: tuple[NearCache, Tracker]
) -> None:
    cache, tracker = link
    assert tracker._raw  # a plain TCP link: read by the tracker itself
    keys = [f"{PREFIX}{n:05d}-" + "k" * 100 for n in range(4000)]  # about 500 kB of pushes
    for key in keys:
        fill(cache, key)
    tracker.drain()  # marks the link clean: the next drains take the fast path
    writer = server.client().pipeline(transaction=False)
    for key in keys:
        writer.hset(key, "cart", "[2]")
    writer.execute()
    assert until(lambda: not any(cached(cache, key) for key in keys), tracker)
    assert tracker.up


def test_a_push_read_in_part_is_finished_by_the_next_drain_or_command(
    server: EmbeddedRedis, link: tuple[NearCache, Tracker]
) -> None:
    cache, tracker = link
    writer = server.client()
    for finish in ("drain", "command"):
        key = f"{PREFIX}{finish}"
        fill(cache, key)
        tracker.drain()
        writer.hset(key, "cart", "[3]")
        _arrived(tracker)
        tracker._partial = tracker._conn._sock.recv(9)  # as a read that got only this far
        if finish == "drain":
            assert until(lambda key=key: not cached(cache, key), tracker)
        else:
            assert tracker.execute("PING") in (b"PONG", "PONG")
            assert not cached(cache, key)
        assert tracker._partial == b"" and tracker.up
