"""hashsession.crypto.SealedCodec: values sealed with AES-GCM, bound to field and session.

Everything runs against a real redis-server: values are read, altered and moved with
a plain client (HGET/HSET), the way someone with access to Redis would.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from hashsession import (
    MISSING,
    ConfigurationError,
    DecodeError,
    SessionStore,
    ValueTypeError,
)
from hashsession.aio import AsyncSessionStore
from hashsession.crypto import OVERHEAD, SealedCodec
from hashsession.scripts import EVERY

K1 = "k1-" + "a" * 40
K2 = "k2-" + "b" * 40
K3 = b"\x03" * 32
#: Per-user features (login) need a key for user digests.
USER_KEY = "a user key for the sealing tests"

StoreFactory = Callable[..., SessionStore]


def cookie_of(store: SessionStore, session: Any) -> str:
    cookies = [v for k, v in store.response_headers(session) if k == "Set-Cookie"]
    assert len(cookies) == 1, store.response_headers(session)
    return cookies[0].split(";", 1)[0]


def sealed_store(
    make_store: StoreFactory, keys: list[Any] | None = None, **kw: Any
) -> SessionStore:
    counters = kw.pop("counters", None)
    return make_store(codec=SealedCodec(keys or [K1], counters=counters), **kw)


VALUES: dict[str, Any] = {
    "n": 5,
    "f": 1.5,
    "s": "héllo",
    "l": [1, "a", None],
    "d": {"k": [True, False]},
    "t": True,
    "z": None,
    "e": "",
}


@pytest.fixture
def sealed(make_store: StoreFactory) -> SessionStore:
    return sealed_store(make_store, user_key=USER_KEY)


@pytest.fixture
def stored(sealed: SessionStore) -> tuple[str, str]:
    """The cookie and Redis key of a sealed session holding VALUES."""
    s = sealed.open(None)
    s.update(VALUES)
    assert s.core.key is not None
    return cookie_of(sealed, s), s.core.key


# --------------------------------------------------------------------------- round trip


def test_round_trip_and_nothing_readable_in_redis(
    sealed: SessionStore, stored: tuple[str, str], redis_client: redis.Redis
) -> None:
    cookie, key = stored
    raw = redis_client.hgetall(key)
    for field, value in VALUES.items():
        data = raw[field.encode()]
        assert data[:1] == b"\x01"  # the version byte: sealed, not JSON, not a number
        assert len(data) == OVERHEAD + len(sealed.config.codec._inner.dumps(value).encode())  # type: ignore[attr-defined]
    assert b"h\xc3\xa9llo" not in b"".join(raw.values())
    s = sealed.open(cookie)
    assert s.to_dict() == VALUES
    assert dict(s) == VALUES  # keys() then __getitem__ from one HGETALL
    fresh = sealed.open(cookie)
    assert {k: fresh[k] for k in VALUES} == VALUES  # __getitem__ on a live session
    assert fresh.get_many("s", "missing", "l") == ["héllo", None, [1, "a", None]]
    assert fresh.get("missing", 7) == 7
    assert fresh.pop("s") == "héllo"
    assert fresh.setdefault("s", "again") == "again"
    assert fresh.setdefault("s", "not stored") == "again"


def test_every_write_path_seals(sealed: SessionStore, redis_client: redis.Redis) -> None:
    s = sealed.open(None)
    s["a"] = [1]
    s.set("b", {"x": 1})
    s.setdefault("c", "c")
    with s.edit("a", []) as a:
        a.append(2)
    s.apply("n", lambda v: v + 1, 0)
    assert s.compare_and_set({"b": {"x": 1}, "nope": MISSING}, {"b": {"x": 2}, "e": 1})
    assert not s.compare_and_set({"b": {"x": 1}}, {"b": "lost"})
    assert s.core.key is not None
    raw = redis_client.hgetall(s.core.key)
    assert all(v[:1] == b"\x01" for k, v in raw.items() if not k.startswith(b"\x00"))
    again = sealed.open(cookie_of(sealed, s))
    assert again.to_dict() == {"a": [1, 2], "b": {"x": 2}, "c": "c", "n": 1, "e": 1}


def test_sealing_is_deterministic_per_place(sealed: SessionStore) -> None:
    # compare_and_set and Pyramid's change detection compare encodings.
    s = sealed.open(None)
    s["a"] = 1
    core = s.core
    assert core.encode("a", [1, 2]) == core.encode("a", [1, 2])
    assert core.encode("a", [1, 2]) != core.encode("b", [1, 2])
    other = sealed.open(None)
    other["a"] = 1
    assert other.core.encode("a", [1, 2]) != core.encode("a", [1, 2])


def test_inner_codec_by_name(make_store: StoreFactory) -> None:
    store = make_store(codec=SealedCodec([K1], inner="pickle"))
    s = store.open(None)
    s["p"] = {1, 2}  # a set: pickle only
    assert store.open(cookie_of(store, s))["p"] == {1, 2}


# --------------------------------------------------------------------------- tampering


@pytest.mark.parametrize("where", [1, 2, 13, 14, -17, -1])  # key id, nonce, ciphertext, tag
def test_a_flipped_byte_fails_to_open_and_the_rest_still_reads(
    sealed: SessionStore, stored: tuple[str, str], redis_client: redis.Redis, where: int
) -> None:
    cookie, key = stored
    data = bytearray(redis_client.hget(key, "l"))  # type: ignore[arg-type]
    data[where] ^= 0x01
    redis_client.hset(key, "l", bytes(data))
    s = sealed.open(cookie)
    with pytest.raises(DecodeError) as raised:
        s.get("l")
    assert raised.value.key == "l"
    assert "'l'" in str(raised.value)
    with pytest.raises(DecodeError):
        s["l"]
    with pytest.raises(DecodeError):
        s.to_dict()
    assert s.get("s") == "héllo"
    assert s.get_many("n", "d") == [5, {"k": [True, False]}]
    s["l"] = "repaired"  # a sound value can be written over it
    assert sealed.open(cookie)["l"] == "repaired"


@pytest.mark.parametrize(
    "planted",
    [b'"plain json"', b"[1,2]", b"\x01", b"\x01\x02short", b"", b"\x80pickle", b"12abc"],
)
def test_unsealed_or_truncated_data_fails_to_open(
    sealed: SessionStore, stored: tuple[str, str], redis_client: redis.Redis, planted: bytes
) -> None:
    cookie, key = stored
    redis_client.hset(key, "d", planted)
    with pytest.raises(DecodeError) as raised:
        sealed.open(cookie).get("d")
    assert raised.value.key == "d"


def test_a_value_moved_to_another_field_fails_to_open(
    sealed: SessionStore, stored: tuple[str, str], redis_client: redis.Redis
) -> None:
    cookie, key = stored
    redis_client.hset(key, "t", redis_client.hget(key, "f"))  # type: ignore[arg-type]
    redis_client.hset(key, "copy", redis_client.hget(key, "f"))  # type: ignore[arg-type]
    s = sealed.open(cookie)
    for field in ("t", "copy"):
        with pytest.raises(DecodeError, match="does not open here") as raised:
            s.get(field)
        assert raised.value.key == field
    assert s.get("f") == 1.5


def test_a_value_moved_to_another_session_fails_to_open(
    sealed: SessionStore, stored: tuple[str, str], redis_client: redis.Redis
) -> None:
    _, key = stored
    other = sealed.open(None)
    other["d"] = "mine"
    other["x"] = 1
    assert other.core.key is not None
    redis_client.hset(other.core.key, "d", redis_client.hget(key, "d"))  # type: ignore[arg-type]
    s = sealed.open(cookie_of(sealed, other))
    with pytest.raises(DecodeError, match="does not open here"):
        s.get("d")
    assert s.get("x") == 1


def test_a_whole_session_copied_to_another_key_fails_to_open(
    sealed: SessionStore, stored: tuple[str, str], redis_client: redis.Redis
) -> None:
    # Someone who can write Redis copies a victim's session over their own.
    _, key = stored
    mine = sealed.open(None)
    mine["x"] = 1
    assert mine.core.key is not None
    redis_client.delete(mine.core.key)
    redis_client.copy(key, mine.core.key)
    s = sealed.open(cookie_of(sealed, mine))
    for field in VALUES:
        with pytest.raises(DecodeError):
            s.get(field)


# --------------------------------------------------------------------------- rotation


def test_rotation_newest_seals_all_open_retired_fails_cleanly(
    make_store: StoreFactory, redis_client: redis.Redis
) -> None:
    old = sealed_store(make_store, [K1])
    s = old.open(None)
    s.update(a="old", b=[1])
    cookie, key = cookie_of(old, s), s.core.key
    assert key is not None
    k1_id = redis_client.hget(key, "a")[1]  # type: ignore[index]

    rotated = sealed_store(make_store, [K2, K1])
    s = rotated.open(cookie)
    assert s.to_dict() == {"a": "old", "b": [1]}  # the older key still opens
    s["c"] = "new"
    k2_id = redis_client.hget(key, "c")[1]  # type: ignore[index]
    assert k2_id != k1_id  # the newest key sealed it
    assert redis_client.hget(key, "a")[1] == k1_id  # type: ignore[index]  # untouched

    retired = sealed_store(make_store, [K2])
    s = retired.open(cookie)
    assert s["c"] == "new"
    with pytest.raises(DecodeError, match="not configured") as raised:
        s.get("a")
    assert raised.value.key == "a"
    s["a"] = "resealed"  # a new write seals it with the current key
    assert retired.open(cookie).get_many("a", "c") == ["resealed", "new"]
    with pytest.raises(DecodeError, match="not configured"):
        retired.open(cookie).get("b")
    # Key ids come from the keys, not their position: reordering changes nothing.
    assert sealed_store(make_store, [K1, K2]).open(cookie).get_many("a", "c") == [
        "resealed",
        "new",
    ]


def test_bad_keys_are_refused_at_start_up() -> None:
    with pytest.raises(ConfigurationError, match="list of keys"):
        SealedCodec(K1)  # type: ignore[arg-type]
    with pytest.raises(ConfigurationError, match="list of keys"):
        SealedCodec([])
    with pytest.raises(ConfigurationError, match="at least 32 bytes"):
        SealedCodec(["short"])
    with pytest.raises(ConfigurationError, match="listed twice"):
        SealedCodec([K1, K1])
    with pytest.raises(ConfigurationError, match="str or bytes"):
        SealedCodec([123])  # type: ignore[list-item]
    with pytest.raises(ConfigurationError, match="another bound codec"):
        SealedCodec([K1], inner=SealedCodec([K2]))
    with pytest.raises(ConfigurationError, match="collection of field names"):
        SealedCodec([K1], counters="visits")
    # Keys whose id bytes collide are refused: find two among generated ones.
    seen: dict[int, bytes] = {}
    for i in range(2000):
        key = i.to_bytes(4, "big") * 8
        ident = SealedCodec([key])._keys[0].ident
        if ident in seen:
            with pytest.raises(ConfigurationError, match="share an id byte"):
                SealedCodec([key, seen[ident]])
            break
        seen[ident] = key
    else:
        pytest.fail("no colliding key ids among 2000 keys")
    assert SealedCodec([K3]).counter_field("anything")


def test_plain_codec_methods_refuse() -> None:
    codec = SealedCodec([K1])
    with pytest.raises(TypeError):
        codec.dumps(1)
    with pytest.raises(TypeError):
        codec.loads(b"1")


# --------------------------------------------------------------------------- counters


def test_counters_stay_plain_numbers(sealed: SessionStore, redis_client: redis.Redis) -> None:
    s = sealed.open(None)
    assert s.incr("visits") == 1  # creates the session with a plain number
    assert s.incr("visits", 4) == 5
    assert s.incr_float("ratio", 0.5) == 0.5
    assert s.incr_float("ratio", 0.25) == 0.75
    n = s["visits"]
    n += 10  # one HINCRBY
    s["visits"] = n
    key = s.core.key
    assert key is not None
    assert redis_client.hget(key, "visits") == b"15"
    assert redis_client.hget(key, "ratio") == b"0.75"
    again = sealed.open(cookie_of(sealed, s))
    assert again.get_many("visits", "ratio") == [15, 0.75]
    assert again.to_dict() == {"visits": 15, "ratio": 0.75}
    assert type(again["visits"]) is not float


def test_incr_on_a_sealed_number_adds_by_compare_and_set(
    sealed: SessionStore, redis_client: redis.Redis
) -> None:
    s = sealed.open(None)
    s["n"] = 5  # assigned: sealed
    s["x"] = 1.5
    s["word"] = "five"
    assert s.incr("n") == 6
    n = s["n"]
    n += 2
    s["n"] = n
    assert s.incr_float("x", 1) == 2.5
    assert s.incr_float("n", 0.5) == 8.5
    key = s.core.key
    assert key is not None
    assert redis_client.hget(key, "n")[:1] == b"\x01"  # type: ignore[index]  # still sealed
    assert sealed.open(cookie_of(sealed, s)).get_many("n", "x") == [8.5, 2.5]
    with pytest.raises(ValueTypeError) as raised:
        s.incr("word")
    assert raised.value.key == "word"
    with pytest.raises(ValueTypeError):
        s.incr("x")  # HINCRBY's rule: an integer increment needs an integer
    s.incr_float("c", 1.5)
    with pytest.raises(ValueTypeError):
        s.incr("c")  # a plain float counter, as without sealing


def test_listed_counters_only(make_store: StoreFactory, redis_client: redis.Redis) -> None:
    store = sealed_store(make_store, counters=["visits"])
    s = store.open(None)
    assert s.incr("visits") == 1
    assert s.incr("other") == 1  # not listed: a sealed number, added by compare-and-set
    assert s.incr("other", 2) == 3
    key = s.core.key
    assert key is not None
    assert redis_client.hget(key, "visits") == b"1"
    assert redis_client.hget(key, "other")[:1] == b"\x01"  # type: ignore[index]
    # A plain number planted in a field not listed does not pass for a value.
    redis_client.hset(key, "user_id", b"1")
    fresh = store.open(cookie_of(store, s))
    with pytest.raises(DecodeError, match="not listed in counters"):
        fresh.get("user_id")
    assert fresh.get_many("visits", "other") == [1, 3]


def test_plain_counter_is_exact_under_concurrency(sealed: SessionStore) -> None:
    s = sealed.open(None)
    s["seed"] = 1
    cookie = cookie_of(sealed, s)

    def work() -> None:
        for _ in range(50):
            sealed.open(cookie).incr("hits")

    threads = [threading.Thread(target=work) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sealed.open(cookie)["hits"] == 400


# --------------------------------------------------------------------------- new keys


@pytest.mark.all_topologies
@pytest.mark.parametrize("move", ["regenerate", "login"])
def test_values_follow_the_session_to_its_new_id(
    sealed: SessionStore, stored: tuple[str, str], redis_client: redis.Redis, move: str
) -> None:
    cookie, key = stored
    s = sealed.open(cookie)
    s.incr("hits")
    if move == "login":
        s.login("alice")
    else:
        s.regenerate()
    assert s.core.key not in (None, key)
    assert not redis_client.exists(key)
    new_cookie = cookie_of(sealed, s)
    assert sealed.open(new_cookie).to_dict() == {**VALUES, "hits": 1}
    assert s.to_dict() == {**VALUES, "hits": 1}
    # Bound to the new key now: the old key's bytes would not open there.
    s["after"] = 1
    assert sealed.open(new_cookie)["after"] == 1


def test_regenerate_leaves_values_that_did_not_open_as_they_were(
    sealed: SessionStore, stored: tuple[str, str], redis_client: redis.Redis
) -> None:
    cookie, key = stored
    redis_client.hset(key, "bad", b"\x01" + b"\x00" * 40)
    s = sealed.open(cookie)
    s.regenerate()
    fresh = sealed.open(cookie_of(sealed, s))
    with pytest.raises(DecodeError):
        fresh.get("bad")
    assert fresh.get("l") == [1, "a", None]


def test_a_session_that_vanished_is_recreated_with_readable_values(
    sealed: SessionStore, stored: tuple[str, str], redis_client: redis.Redis
) -> None:
    cookie, key = stored
    redis_client.delete(key)  # expired, or revoked, between two requests
    s = sealed.open(cookie)
    s["a"] = [1]  # sealed for the old key, then the write finds the session gone
    assert s.core.key not in (None, key)
    assert s.setdefault("b", "bee") == "bee"
    fresh = sealed.open(cookie_of(sealed, s))
    assert fresh.to_dict() == {"a": [1], "b": "bee"}

    # The same on a live session (the fast path), with setdefault creating it afresh.
    live = sealed.open(cookie_of(sealed, s))
    assert live["a"] == [1]
    assert live.core.key is not None
    redis_client.delete(live.core.key)
    assert live.setdefault("c", {"x": 1}) == {"x": 1}
    assert sealed.open(cookie_of(sealed, live)).to_dict() == {"c": {"x": 1}}


def test_invalidate_then_write(sealed: SessionStore, stored: tuple[str, str]) -> None:
    cookie, _ = stored
    s = sealed.open(cookie)
    s.invalidate()
    s["after"] = "logout"
    assert sealed.open(cookie_of(sealed, s)).to_dict() == {"after": "logout"}


# --------------------------------------------------------------------------- round trips


@pytest.fixture
def warm(redis_client: redis.Redis) -> None:
    for script in EVERY:
        assert redis_client.script_load(script.source) == script.sha


def test_sealing_costs_no_extra_round_trip(counted: Any, warm: None) -> None:
    store = SessionStore(redis=counted.client, ttl=100, codec=SealedCodec([K1]))
    with counted.expect(1):
        s = store.open(None)
        s["a"] = [1, 2]
    cookie = cookie_of(store, s)
    with counted.expect(3):
        s = store.open(cookie)
        assert s["a"] == [1, 2]
        s["b"] = "x"
        assert s.incr("n") == 1
    with counted.expect(1):
        assert dict(store.open(cookie)) == {"a": [1, 2], "b": "x", "n": 1}


# --------------------------------------------------------------------------- asyncio


@pytest.fixture
async def async_sealed(redis_url: str) -> Iterator[AsyncSessionStore]:
    store = AsyncSessionStore(
        redis=redis_url, ttl=100, codec=SealedCodec([K2, K1]), user_key=USER_KEY
    )
    yield store  # type: ignore[misc]
    await store.aclose()


@pytest.mark.all_topologies
async def test_async_flavour(async_sealed: AsyncSessionStore, redis_client: redis.Redis) -> None:
    store = async_sealed
    s = store.open(None)
    await s.update(VALUES)
    assert await s.incr("visits") == 1
    assert await s.incr("n", 2) == 7  # sealed: compare-and-set
    assert await s.incr_float("f", 1) == 2.5
    cookie = cookie_of(store, s)  # type: ignore[arg-type]
    key = s.core.key
    assert key is not None
    assert redis_client.hget(key, "visits") == b"1"
    assert redis_client.hget(key, "n")[:1] == b"\x01"  # type: ignore[index]
    expected = {**VALUES, "visits": 1, "n": 7, "f": 2.5}
    assert await store.open(cookie).to_dict() == expected

    redis_client.hset(key, "s", redis_client.hget(key, "l"))  # type: ignore[arg-type]
    fresh = store.open(cookie)
    with pytest.raises(DecodeError) as raised:
        await fresh.get("s")
    assert raised.value.key == "s"
    assert await fresh.get("l") == [1, "a", None]
    await fresh.set("s", "back")

    await fresh.regenerate()
    moved = store.open(cookie_of(store, fresh))  # type: ignore[arg-type]
    assert await moved.to_dict() == {**expected, "s": "back"}
    await moved.login("bob")
    assert await store.open(cookie_of(store, moved)).to_dict() == {**expected, "s": "back"}  # type: ignore[arg-type]


# --------------------------------------------------------------------------- the extra


def test_missing_extra_names_the_pip_command() -> None:
    import subprocess
    import sys

    code = (
        "import sys\n"
        "sys.modules['cryptography'] = None\n"
        "try:\n"
        "    import hashsession.crypto\n"
        "except ImportError as exc:\n"
        "    print(type(exc).__name__, exc.name, exc, sep='|')\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    ).stdout.strip()
    kind, name, message = out.split("|", 2)
    assert (kind, name) == ("ImportError", "cryptography")
    assert "pip install 'hashsession[crypto]'" in message
    # The core does not need the extra.
    code = "import sys\nsys.modules['cryptography'] = None\nimport hashsession, hashsession.aio"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
