"""How values are stored (codecs) and the limits on keys, values and key counts."""

from __future__ import annotations

import datetime as dt
import json
import math
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
import redis

from hashsession import (
    MISSING,
    DecodeError,
    EncodeError,
    HashSessionError,
    LimitExceededError,
    Session,
    SessionStore,
)

pytestmark = pytest.mark.all_topologies

StoreFactory = Callable[..., SessionStore]


def cookie_of(store: SessionStore, session: Session) -> str:
    cookies = [v for k, v in store.response_headers(session) if k == "Set-Cookie"]
    assert len(cookies) == 1, store.response_headers(session)
    return cookies[0].split(";", 1)[0]


def user_fields(client: redis.Redis, key: str | None) -> dict[bytes, bytes]:
    assert key is not None
    return {k: v for k, v in client.hgetall(key).items() if not k.startswith(b"\x00")}


class Point:
    """A plain class, for pickle."""

    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)


# --------------------------------------------------------------------------- JSON (default)


def test_json_is_the_default_and_stores_plain_text(
    store: SessionStore, redis_client: redis.Redis
) -> None:
    s = store.open(None)
    s.update(n=5, f=1.5, s="héllo", l=[1, "a"], d={"k": None}, b=True)
    raw = user_fields(redis_client, s.core.key)
    assert raw[b"n"] == b"5"
    assert raw[b"f"] == b"1.5"
    assert raw[b"s"] == '"héllo"'.encode()  # UTF-8, not \u escapes
    assert json.loads(raw[b"l"]) == [1, "a"]
    assert json.loads(raw[b"d"]) == {"k": None}
    assert raw[b"b"] == b"true"


def test_json_integers_work_with_hincrby(store: SessionStore, redis_client: redis.Redis) -> None:
    s = store.open(None)
    s["n"] = 5
    assert redis_client.hincrby(s.core.key, "n", 10) == 15
    assert store.open(cookie_of(store, s))["n"] == 15
    assert s.incr("n") == 16
    assert redis_client.hget(s.core.key, "n") == b"16"


def test_json_refuses_what_it_cannot_store(store: SessionStore, redis_client: redis.Redis) -> None:
    s = store.open(None)
    for key, bad in (("set", {1, 2}), ("obj", object()), ("nan", math.nan), ("dec", Decimal(1))):
        with pytest.raises(EncodeError) as info:
            s[key] = bad
        assert info.value.key == key
        assert key in str(info.value)
        assert isinstance(info.value, HashSessionError)
    assert redis_client.dbsize() == 0  # nothing written, not even an empty session
    assert s.id is None
    assert all(name != "Set-Cookie" for name, _ in store.response_headers(s))


def test_encode_error_on_existing_session_writes_nothing(
    store: SessionStore, redis_client: redis.Redis
) -> None:
    s = store.open(None)
    s.update(a=1, b=2)
    cookie = cookie_of(store, s)
    t = store.open(cookie)
    with pytest.raises(EncodeError) as info:
        t["a"] = {1, 2}
    assert info.value.key == "a"
    with pytest.raises(EncodeError) as info:
        t.update({"a": 10, "bad": object(), "c": 3})
    assert info.value.key == "bad"
    with pytest.raises(EncodeError):
        t.set("x", object())
    with pytest.raises(EncodeError):
        t.setdefault("x", object())
    with pytest.raises(EncodeError):
        t.compare_and_set({"a": 1}, {"a": object()})
    with pytest.raises(EncodeError), t.edit("x", []) as x:
        x.append(object())
    assert user_fields(redis_client, s.core.key) == {b"a": b"1", b"b": b"2"}


def test_corrupt_value_raises_decode_error_naming_the_key(
    store: SessionStore, redis_client: redis.Redis
) -> None:
    s = store.open(None)
    s.update(good=1, other="fine")
    redis_client.hset(s.core.key, "bad", b"{not json")
    t = store.open(cookie_of(store, s))
    with pytest.raises(DecodeError) as info:
        t["bad"]
    assert info.value.key == "bad"
    assert "bad" in str(info.value)
    assert isinstance(info.value, HashSessionError)
    with pytest.raises(DecodeError):
        t.get("bad")
    with pytest.raises(DecodeError):
        t.get_many("good", "bad")
    with pytest.raises(DecodeError) as info:
        t.to_dict()
    assert info.value.key == "bad"
    # everything else stays readable, and the bad value can be replaced or removed
    assert t["good"] == 1
    assert t.get("other") == "fine"
    assert "bad" in t
    assert sorted(t) == ["bad", "good", "other"]
    t["bad"] = "repaired"
    assert t["bad"] == "repaired"
    redis_client.hset(s.core.key, "bad", b"\xff\xfe")  # not even UTF-8
    with pytest.raises(DecodeError):
        t["bad"]
    assert t.delete("bad") is True
    assert t.to_dict() == {"good": 1, "other": "fine"}


# --------------------------------------------------------------------------- pickle


def test_pickle_codec_by_name(make_store: StoreFactory, redis_client: redis.Redis) -> None:
    store = make_store(codec="pickle")
    s = store.open(None)
    values = {
        "set": {1, 2},
        "tuple": (1, "a"),
        "when": dt.datetime(2024, 1, 2, 3, 4, 5),
        "point": Point(1, 2),
        "dec": Decimal("1.10"),
        "n": 7,
        "f": 0.5,
    }
    s.update(values)
    again = store.open(cookie_of(store, s))
    assert again.to_dict() == values
    raw = user_fields(redis_client, s.core.key)
    assert raw[b"n"] == b"7"  # numbers stay text, so increments work
    assert raw[b"f"] == b"0.5"
    assert again.incr("n", 3) == 10
    assert again.incr_float("f", 1) == 1.5
    again["n"] += 1
    assert store.open(cookie_of(store, s))["n"] == 11


def test_pickle_corrupt_value(make_store: StoreFactory, redis_client: redis.Redis) -> None:
    store = make_store(codec="pickle")
    s = store.open(None)
    s["ok"] = [1]
    redis_client.hset(s.core.key, "bad", b"\x80\x05garbage")
    redis_client.hset(s.core.key, "bad2", b"not a number")
    t = store.open(cookie_of(store, s))
    for key in ("bad", "bad2"):
        with pytest.raises(DecodeError) as info:
            t[key]
        assert info.value.key == key
    assert t["ok"] == [1]


def test_pickle_unpicklable_value(make_store: StoreFactory, redis_client: redis.Redis) -> None:
    store = make_store(codec="pickle")
    s = store.open(None)
    with pytest.raises(EncodeError) as info:
        s["fn"] = lambda: 1
    assert info.value.key == "fn"
    assert redis_client.dbsize() == 0


# --------------------------------------------------------------------------- custom codecs


class TaggedCodec:
    """Tags strings with ``s:``; ints stay bare decimal text so HINCRBY still works."""

    def __init__(self) -> None:
        self.dumped: list[Any] = []

    def dumps(self, value: Any) -> str:
        self.dumped.append(value)
        if type(value) is int:
            return str(value)
        if isinstance(value, str):
            return "s:" + value
        raise TypeError(f"only int and str, not {type(value).__name__}")

    def loads(self, data: bytes) -> Any:
        text = data.decode("utf-8")
        if text.startswith("s:"):
            return text[2:]
        return int(text)


def test_custom_codec_object(make_store: StoreFactory, redis_client: redis.Redis) -> None:
    codec = TaggedCodec()
    store = make_store(codec=codec)
    s = store.open(None)
    s["name"] = "ann"
    s["n"] = 3
    assert user_fields(redis_client, s.core.key) == {b"name": b"s:ann", b"n": b"3"}
    assert codec.dumped == ["ann", 3]
    again = store.open(cookie_of(store, s))
    assert again.to_dict() == {"name": "ann", "n": 3}
    assert again.incr("n") == 4
    with pytest.raises(EncodeError) as info:
        again["bad"] = [1]
    assert info.value.key == "bad"
    assert isinstance(info.value.__cause__, TypeError)
    assert "bad" not in again


def test_custom_codec_returning_bytes(make_store: StoreFactory, redis_client: redis.Redis) -> None:
    class Reversed:
        def dumps(self, value: Any) -> bytes:
            return value.encode("utf-8")[::-1]

        def loads(self, data: bytes) -> Any:
            return data[::-1].decode("utf-8")

    store = make_store(codec=Reversed())
    s = store.open(None)
    s["k"] = "abc"
    assert redis_client.hget(s.core.key, "k") == b"cba"
    assert store.open(cookie_of(store, s))["k"] == "abc"


# --------------------------------------------------------------------------- key length


def test_key_length_limit(store: SessionStore, redis_client: redis.Redis) -> None:
    s = store.open(None)
    s["k" * 256] = 1  # exactly the limit: fine
    s["é" * 128] = 1  # 256 UTF-8 bytes: fine
    assert redis_client.dbsize() == 1
    for too_long in ("k" * 257, "é" * 129, "☃" * 86):
        for write in (
            lambda k: s.__setitem__(k, 1),
            lambda k: s.set(k, 1),
            lambda k: s.update({k: 1}),
            lambda k: s.incr(k),
            lambda k: s.setdefault(k, 1),
        ):
            with pytest.raises(LimitExceededError) as info:
                write(too_long)
            assert info.value.key == too_long
            assert isinstance(info.value, HashSessionError)
    assert len(s) == 2


def test_custom_key_length_limit(make_store: StoreFactory, redis_client: redis.Redis) -> None:
    store = make_store(max_key_length=8)
    s = store.open(None)
    s["12345678"] = 1
    with pytest.raises(LimitExceededError) as info:
        s["123456789"] = 1
    assert info.value.key == "123456789"
    with pytest.raises(LimitExceededError):
        s.update({"ok": 1, "123456789": 2})
    assert sorted(s) == ["12345678"]


# --------------------------------------------------------------------------- value size


def test_value_size_limit(make_store: StoreFactory, redis_client: redis.Redis) -> None:
    store = make_store(max_value_size=100)
    s = store.open(None)
    with pytest.raises(LimitExceededError) as info:
        s["big"] = "x" * 99  # 101 bytes as JSON
    assert info.value.key == "big"
    assert redis_client.dbsize() == 0
    s["fits"] = "x" * 98  # exactly 100 bytes
    assert redis_client.hget(s.core.key, "fits") == b'"' + b"x" * 98 + b'"'
    cookie = cookie_of(store, s)
    t = store.open(cookie)
    for write in (
        lambda: t.__setitem__("fits", "y" * 99),
        lambda: t.set("fits", "y" * 99),
        lambda: t.update({"small": 1, "fits": "y" * 99}),
        lambda: t.setdefault("other", "y" * 99),
        lambda: t.compare_and_set({}, {"fits": "y" * 99}),
        lambda: t.apply("fits", lambda v: v + "yy"),
    ):
        with pytest.raises(LimitExceededError) as info:
            write()
        assert info.value.key in ("fits", "other")
    assert store.open(cookie).to_dict() == {"fits": "x" * 98}


def test_default_value_size_limit_is_512_kib(store: SessionStore) -> None:
    s = store.open(None)
    s["ok"] = "x" * (512 * 1024 - 2)
    with pytest.raises(LimitExceededError):
        s["too_big"] = "x" * (512 * 1024 - 1)
    assert store.open(cookie_of(store, s)).get("too_big") is None
    assert len(store.open(cookie_of(store, s))["ok"]) == 512 * 1024 - 2


def test_multibyte_value_size_counts_bytes(make_store: StoreFactory) -> None:
    store = make_store(max_value_size=10)
    s = store.open(None)
    s["a"] = "éééé"  # 8 bytes + 2 quotes = 10
    with pytest.raises(LimitExceededError):
        s["b"] = "ééééé"  # 5 characters but 12 bytes
    assert store.open(cookie_of(store, s)).to_dict() == {"a": "éééé"}


# --------------------------------------------------------------------------- key count


@pytest.fixture
def full(make_store: StoreFactory) -> tuple[SessionStore, str]:
    """A store with max_keys=3 and the cookie of a session holding exactly 3 keys."""
    store = make_store(max_keys=3)
    s = store.open(None)
    s.update(a=1, b=2, c=3)
    return store, cookie_of(store, s)


def _edit(s: Session) -> None:
    with s.edit("d", []) as d:
        d.append(4)


FULL_WRITES: dict[str, Callable[[Session], Any]] = {
    "setitem": lambda s: s.__setitem__("d", 4),
    "set": lambda s: s.set("d", 4),
    "update": lambda s: s.update({"a": 10, "d": 4}),
    "update_kwargs": lambda s: s.update(d=4, e=5),
    "incr": lambda s: s.incr("d"),
    "incr_float": lambda s: s.incr_float("d", 1.5),
    "setdefault": lambda s: s.setdefault("d", 4),
    "edit": _edit,
    "apply": lambda s: s.apply("d", lambda v: 4, 0),
    "cas": lambda s: s.compare_and_set({}, {"d": 4}),
}


@pytest.mark.parametrize("first", [True, False], ids=["first-command", "live"])
@pytest.mark.parametrize("write", list(FULL_WRITES.values()), ids=list(FULL_WRITES))
def test_max_keys_refuses_a_new_key(
    full: tuple[SessionStore, str],
    redis_client: redis.Redis,
    write: Callable[[Session], Any],
    first: bool,
) -> None:
    store, cookie = full
    s = store.open(cookie)
    if not first:
        assert s["a"] == 1  # make the session live in this request first
    with pytest.raises(LimitExceededError) as info:
        write(s)
    if write is not FULL_WRITES["cas"]:
        assert info.value.key in ("a", "d", "e")  # one of the keys written
    assert isinstance(info.value, HashSessionError)
    assert store.open(cookie).to_dict() == {"a": 1, "b": 2, "c": 3}


@pytest.mark.parametrize("first", [True, False], ids=["first-command", "live"])
def test_update_over_max_keys_names_a_key_that_does_not_fit(
    full: tuple[SessionStore, str], first: bool
) -> None:
    """The error must name a key that is new, not an existing one merely overwritten."""
    store, cookie = full
    s = store.open(cookie)
    if not first:
        s.get("a")
    with pytest.raises(LimitExceededError) as info:
        s.update({"a": 10, "b": 20, "d": 4})
    assert info.value.key == "d"


def test_max_keys_allows_overwrites_and_replacing(
    full: tuple[SessionStore, str], redis_client: redis.Redis
) -> None:
    store, cookie = full
    s = store.open(cookie)
    s["a"] = 100  # an existing key: fine
    s.update(b=200, c=300)
    assert s.incr("a") == 101
    del s["c"]
    s["d"] = 4  # room again
    with pytest.raises(LimitExceededError):
        s["e"] = 5
    assert store.open(cookie).to_dict() == {"a": 101, "b": 200, "d": 4}


def test_max_keys_on_a_new_session(make_store: StoreFactory, redis_client: redis.Redis) -> None:
    store = make_store(max_keys=3)
    s = store.open(None)
    with pytest.raises(LimitExceededError) as info:
        s.update(a=1, b=2, c=3, d=4)
    assert info.value.key in ("a", "b", "c", "d")
    assert redis_client.dbsize() == 0
    assert s.id is None
    s.update(a=1, b=2, c=3)
    with pytest.raises(LimitExceededError) as info:
        s.incr("d")
    assert info.value.key == "d"
    assert len(store.open(cookie_of(store, s))) == 3


def test_max_keys_ignores_metadata(make_store: StoreFactory) -> None:
    store = make_store(max_keys=2)
    s = store.open(None)
    s["a"] = 1
    s.touch(50)  # adds a reserved field
    s["b"] = 2  # still only 2 user keys
    assert len(store.open(cookie_of(store, s))) == 2


def test_compare_and_set_over_the_limit_changes_nothing(
    full: tuple[SessionStore, str],
) -> None:
    """A refused compare-and-set is all or nothing: its deletes must not happen either."""
    store, cookie = full
    s = store.open(cookie)
    with pytest.raises(LimitExceededError):
        s.compare_and_set({"a": 1}, {"a": MISSING, "d": 4, "e": 5})
    assert store.open(cookie).to_dict() == {"a": 1, "b": 2, "c": 3}


def test_compare_and_set_delete_makes_room(full: tuple[SessionStore, str]) -> None:
    store, cookie = full
    s = store.open(cookie)
    assert s.compare_and_set({"a": 1}, {"a": MISSING, "d": 4}) is True
    assert store.open(cookie).to_dict() == {"b": 2, "c": 3, "d": 4}


def test_compare_and_set_deleting_an_absent_key_makes_no_room(
    full: tuple[SessionStore, str],
) -> None:
    store, cookie = full
    s = store.open(cookie)
    with pytest.raises(LimitExceededError):
        s.compare_and_set({}, {"zzz": MISSING, "d": 4})
    assert store.open(cookie).to_dict() == {"a": 1, "b": 2, "c": 3}
    live = store.open(cookie)
    live.get("a")
    with pytest.raises(LimitExceededError):
        live.compare_and_set({}, {"zzz": MISSING, "d": 4})
    assert live.compare_and_set({}, {"c": MISSING, "d": 4}) is True
    assert store.open(cookie).to_dict() == {"a": 1, "b": 2, "d": 4}
