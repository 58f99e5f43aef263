"""Value edits: a list or dict changed in place, atomically on the server.

``append``/``extend`` (with ``max_len``), ``add``/``discard`` and ``set_in``/
``delete_in`` are each one Lua script on the stored JSON text: one round trip,
no conflicts under any concurrency, the value's bytes exactly what the Python
codec writes, and no resurrection of a session deleted meanwhile. With another
codec they fall back to an optimistic compare-and-set. Every test runs on each
topology (see conftest); round trips are counted with ``counted``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from hashsession import (
    DecodeError,
    LimitExceededError,
    Session,
    SessionStore,
    ValueTypeError,
)
from hashsession.codecs import FunctionCodec, JSONCodec
from hashsession.scripts import CREATED_FIELD, EVERY
from threads import run_threads

pytestmark = pytest.mark.all_topologies

StoreFactory = Callable[..., SessionStore]
JSON = JSONCodec()


def cookie_of(store: SessionStore, session: Session) -> str:
    cookies = [v for k, v in store.response_headers(session) if k == "Set-Cookie"]
    assert len(cookies) == 1, store.response_headers(session)
    return cookies[0].split(";", 1)[0]


def stored(client: redis.Redis, session: Session, key: str) -> bytes | None:
    assert session.core.key is not None
    raw: bytes | None = client.hget(session.core.key, key)
    return raw


@pytest.fixture
def existing(store: SessionStore) -> str:
    s = store.open(None)
    s.update({"l": [1, 2], "d": {"a": 1, "b": 2}, "n": 5, "s": "text"})
    return cookie_of(store, s)


# --------------------------------------------------------------------------- semantics


def test_append_and_extend_return_the_new_length(store: SessionStore, existing: str) -> None:
    s = store.open(existing)
    assert s.append("l", 3) == 3
    assert s.extend("l", [4, [5, 6]]) == 5
    assert s.extend("l", []) == 5
    assert s.extend("l", (x for x in "ab")) == 7
    assert store.open(existing)["l"] == [1, 2, 3, 4, [5, 6], "a", "b"]


def test_append_and_extend_create_a_missing_list(store: SessionStore, existing: str) -> None:
    s = store.open(existing)
    assert s.append("new", {"x": 1}) == 1
    assert s.extend("other", [1, 2]) == 2
    assert s.extend("empty", []) == 0
    again = store.open(existing)
    assert again["new"] == [{"x": 1}]
    assert again["other"] == [1, 2]
    assert again["empty"] == []


def test_max_len_keeps_the_newest(store: SessionStore, existing: str) -> None:
    s = store.open(existing)
    assert s.append("recent", "a", max_len=3) == 1
    for item in "bcd":
        s.append("recent", item, max_len=3)
    assert store.open(existing)["recent"] == ["b", "c", "d"]
    assert s.extend("recent", ["e", "f"], max_len=3) == 3
    assert store.open(existing)["recent"] == ["d", "e", "f"]
    assert s.extend("recent", list("uvwxyz"), max_len=2) == 2  # more new items than room
    assert store.open(existing)["recent"] == ["y", "z"]
    assert s.append("recent", [1, [2, "]"]], max_len=2) == 2  # nested items are dropped whole
    assert s.append("recent", {"k": ","}, max_len=2) == 2
    assert store.open(existing)["recent"] == [[1, [2, "]"]], {"k": ","}]
    assert s.append("l", 3, max_len=10) == 3  # under the bound: nothing dropped
    fresh = store.open(None)
    assert fresh.extend("h", [1, 2, 3, 4], max_len=3) == 3  # the creating write too
    assert store.open(cookie_of(store, fresh))["h"] == [2, 3, 4]


@pytest.mark.parametrize("bad", [0, -1, 1.5, "3", True])
def test_max_len_must_be_a_positive_int(store: SessionStore, existing: str, bad: Any) -> None:
    s = store.open(existing)
    with pytest.raises((TypeError, ValueError)):
        s.append("l", 3, max_len=bad)
    assert store.open(existing)["l"] == [1, 2]


def test_add_and_discard_use_a_list_as_a_set(store: SessionStore, existing: str) -> None:
    s = store.open(existing)
    assert s.add("l", 3) is True
    assert s.add("l", 3) is False
    assert s.add("l", 1) is False
    assert s.add("tags", "a") is True  # creates the list
    assert s.add("tags", "b") is True
    assert s.add("tags", "a") is False
    assert s.discard("tags", "a") is True
    assert s.discard("tags", "a") is False
    assert s.discard("missing", "a") is False
    assert s.discard("l", 99) is False
    again = store.open(existing)
    assert again["l"] == [1, 2, 3]
    assert again["tags"] == ["b"]
    assert "missing" not in again


def test_items_are_compared_by_their_encoding(store: SessionStore, existing: str) -> None:
    s = store.open(existing)
    assert s.add("set", 1) is True
    assert s.add("set", 1.0) is True  # 1 and 1.0 encode differently
    assert s.add("set", True) is True
    assert s.add("set", "1") is True
    assert s.add("set", {"a": 1, "b": 2}) is True
    assert s.add("set", {"a": 1, "b": 2}) is False
    assert s.add("set", {"b": 2, "a": 1}) is True  # another key order, another encoding
    assert s.add("set", [1, "1"]) is True
    assert s.add("set", [1, "1"]) is False
    assert store.open(existing)["set"] == [
        1,
        1.0,
        True,
        "1",
        {"a": 1, "b": 2},
        {"b": 2, "a": 1},
        [1, "1"],
    ]


def test_discard_removes_every_copy_and_only_whole_items(
    store: SessionStore, existing: str
) -> None:
    s = store.open(existing)
    s["l"] = [1, 11, "1", [1], {"1": 1}, "a,1,b", 1, 21, 1]
    assert s.discard("l", 1) is True
    assert store.open(existing)["l"] == [11, "1", [1], {"1": 1}, "a,1,b", 21]
    assert s.discard("l", "1") is True
    assert s.discard("l", [1]) is True
    assert s.discard("l", {"1": 1}) is True
    assert store.open(existing)["l"] == [11, "a,1,b", 21]
    s["flat"] = [7, 8, 7]
    assert s.discard("flat", 7) is True
    assert s.discard("flat", 8) is True
    assert store.open(existing)["flat"] == []
    assert s.add("flat", 8) is True
    assert store.open(existing)["flat"] == [8]


def test_add_finds_items_among_nested_values(store: SessionStore, existing: str) -> None:
    s = store.open(existing)
    s["l"] = [[1, 2], {"a": "]"}, 'x"y', 3]
    assert s.add("l", 1) is True  # only inside a nested list so far
    assert s.add("l", 'x"y') is False
    assert s.add("l", {"a": "]"}) is False
    assert s.add("l", "]") is True
    assert store.open(existing)["l"] == [[1, 2], {"a": "]"}, 'x"y', 3, 1, "]"]


def test_set_in_and_delete_in_edit_a_dict(store: SessionStore, existing: str) -> None:
    s = store.open(existing)
    assert s.set_in("d", "c", [3]) is None
    assert s.set_in("d", "a", {"x": 1}) is None  # replaced in place: order kept
    assert list(store.open(existing)["d"].items()) == [("a", {"x": 1}), ("b", 2), ("c", [3])]
    assert s.delete_in("d", "b") is True
    assert s.delete_in("d", "b") is False
    assert s.delete_in("missing", "b") is False
    assert s.set_in("prefs", "theme", "dark") is None  # creates the dict
    again = store.open(existing)
    assert again["d"] == {"a": {"x": 1}, "c": [3]}
    assert again["prefs"] == {"theme": "dark"}
    assert "missing" not in again
    assert s.delete_in("prefs", "theme") is True
    assert store.open(existing)["prefs"] == {}


def test_sub_keys_are_matched_whole(store: SessionStore, existing: str) -> None:
    s = store.open(existing)
    s["d"] = {"ab": 1, 'a"b': 2, "x": "a", "n": {"a": 3}, "é": 4}
    s.set_in("d", "a", 0)
    s.set_in("d", 'a"b', 20)
    s.set_in("d", "é", 40)
    assert store.open(existing)["d"] == {
        "ab": 1,
        'a"b': 20,
        "x": "a",
        "n": {"a": 3},
        "é": 40,
        "a": 0,
    }
    assert s.delete_in("d", "a") is True
    assert s.delete_in("d", "a") is False  # the value "a" and the nested "a" are not keys
    assert store.open(existing)["d"] == {"ab": 1, 'a"b': 20, "x": "a", "n": {"a": 3}, "é": 40}


def test_sub_keys_must_be_str(store: SessionStore, existing: str) -> None:
    s = store.open(existing)
    with pytest.raises(TypeError, match="sub-key"):
        s.set_in("d", 1, "x")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="sub-key"):
        s.delete_in("d", None)  # type: ignore[arg-type]


# --------------------------------------------------------------------------- exact values


ROUND_TRIP_VALUES: list[Any] = [
    0,
    -1,
    2**53,
    -(2**53),
    2**53 + 1,
    2**64,
    10**30,
    0.1,
    0.1 + 0.2,
    1e300,
    5e-324,
    -0.0,
    1.5e-7,
    123456789.12345678,
    "",
    "é",
    "日本語",
    "😀",
    'quote " and backslash \\ and , ] } [ {',
    "line\nbreak\ttab\x00nul\x1f",
    "\u2028\u2029",
    None,
    True,
    False,
    [],
    {},
    [[]],
    [{}],
    {"": {"nested": [1, [2, [3, {"deep": "é"}]]]}},
    {"b": 1, "a": 2},
]


def test_values_round_trip_exactly(
    store: SessionStore, existing: str, redis_client: redis.Redis
) -> None:
    """The stored bytes are exactly what the Python codec writes for the result."""
    s = store.open(existing)
    expected: list[Any] = []
    for value in ROUND_TRIP_VALUES:
        s.append("list", value)
        expected.append(value)
        assert stored(redis_client, s, "list") == JSON.dumps(expected).encode()
    assert repr(store.open(existing)["list"]) == repr(expected)
    assert s.extend("list2", ROUND_TRIP_VALUES) == len(ROUND_TRIP_VALUES)
    assert stored(redis_client, s, "list2") == JSON.dumps(ROUND_TRIP_VALUES).encode()
    as_dict: dict[str, Any] = {}
    for i, value in enumerate(ROUND_TRIP_VALUES):
        sub = ["", "é", 'q"', "\\", "a:b", ",", "}", "😀"][i % 8] + str(i)
        s.set_in("dict", sub, value)
        as_dict[sub] = value
        assert stored(redis_client, s, "dict") == JSON.dumps(as_dict).encode()
    assert repr(store.open(existing)["dict"]) == repr(as_dict)
    for value in ROUND_TRIP_VALUES:
        assert s.add("list", value) is False, value
    for value in ROUND_TRIP_VALUES:
        assert s.discard("list", value) is True, value
    assert store.open(existing)["list"] == []


def test_a_hand_written_value_with_whitespace_is_still_read(
    store: SessionStore, existing: str, redis_client: redis.Redis
) -> None:
    s = store.open(existing)
    assert s.core.key is not None
    redis_client.hset(s.core.key, "w", ' [ 1 , [2, 3] , "a b" ] ')
    assert s.append("w", 4) == 4
    assert s.add("w", "a b") is False
    assert s.discard("w", 1) is True
    assert store.open(existing)["w"] == [[2, 3], "a b", 4]
    redis_client.hset(s.core.key, "o", ' { "a" : 1 , "b":2 } ')
    s.set_in("o", "a", 5)
    assert s.delete_in("o", "b") is True
    assert store.open(existing)["o"] == {"a": 5}


# --------------------------------------------------------------------------- errors


@pytest.mark.parametrize(
    ("op", "key", "found", "wanted"),
    [
        (lambda s: s.append("d", 1), "d", "dict", "list"),
        (lambda s: s.extend("n", [1]), "n", "number", "list"),
        (lambda s: s.add("s", 1), "s", "str", "list"),
        (lambda s: s.discard("d", 1), "d", "dict", "list"),
        (lambda s: s.set_in("l", "a", 1), "l", "list", "dict"),
        (lambda s: s.delete_in("s", "a"), "s", "str", "dict"),
        (lambda s: s.append("t", 1), "t", "bool", "list"),
        (lambda s: s.set_in("z", "a", 1), "z", "null", "dict"),
    ],
)
def test_a_value_of_the_wrong_kind_raises_naming_the_key(
    store: SessionStore,
    existing: str,
    op: Callable[[Session], Any],
    key: str,
    found: str,
    wanted: str,
) -> None:
    s = store.open(existing)
    s.update(t=True, z=None)
    before = store.open(existing).to_dict()
    with pytest.raises(ValueTypeError) as info:
        op(s)
    assert info.value.key == key
    assert f"holds a {found}, not a {wanted}" in str(info.value)
    assert store.open(existing).to_dict() == before  # nothing written
    with pytest.raises(ValueTypeError):  # as the first command of a request too
        op(store.open(existing))


def test_a_stored_value_that_is_not_json_raises_decode_error(
    store: SessionStore, existing: str, redis_client: redis.Redis
) -> None:
    key = store.open(existing).core.key
    assert key is not None
    redis_client.hset(key, "bad", "[1, 2")
    with pytest.raises(DecodeError) as info:
        store.open(existing).append("bad", 3)
    assert info.value.key == "bad"
    assert redis_client.hget(key, "bad") == b"[1, 2"


def test_a_list_outgrowing_max_value_size_raises(
    make_store: StoreFactory, redis_client: redis.Redis
) -> None:
    store = make_store(max_value_size=20)
    s = store.open(None)
    assert s.extend("l", [1, 2, 3]) == 3  # [1,2,3]: 7 bytes
    assert s.append("l", "x" * 8) == 4  # [1,2,3,"xxxxxxxx"]: 18 bytes
    with pytest.raises(LimitExceededError) as info:
        s.append("l", 1234)
    assert info.value.key == "l"
    assert "over the 20 limit" in str(info.value)
    with pytest.raises(LimitExceededError):
        s.set_in("d", "k", "x" * 20)  # the item alone is over: refused before sending
    with pytest.raises(LimitExceededError):
        store.open(None).extend("l", ["12345", "12345", "12345"])  # a new session's list
    assert store.open(cookie_of(store, s))["l"] == [1, 2, 3, "x" * 8]
    assert s.append("l", 5, max_len=4) == 4  # bounded: fits again
    assert store.open(cookie_of(store, s))["l"] == [2, 3, "x" * 8, 5]


def test_a_new_field_counts_against_max_keys(make_store: StoreFactory) -> None:
    store = make_store(max_keys=2)
    s = store.open(None)
    s.update(a=1, b=[])
    with pytest.raises(LimitExceededError) as info:
        s.append("c", 1)
    assert info.value.key == "c"
    assert s.append("b", 1) == 1  # an existing field grows freely
    with pytest.raises(LimitExceededError):
        s.set_in("c", "x", 1)
    with pytest.raises(LimitExceededError):
        s.add("c", 1)
    assert store.open(cookie_of(store, s)).to_dict() == {"a": 1, "b": [1]}


# --------------------------------------------------------------------------- sessions


@pytest.mark.parametrize(
    ("op", "value"),
    [
        (lambda s: s.append("k", 1), [1]),
        (lambda s: s.extend("k", [1, 2], max_len=1), [2]),
        (lambda s: s.add("k", 1), [1]),
        (lambda s: s.set_in("k", "a", 1), {"a": 1}),
    ],
    ids=["append", "extend", "add", "set_in"],
)
def test_the_first_write_of_a_new_session_creates_it(
    cstore: SessionStore,
    counted: Any,
    redis_client: redis.Redis,
    op: Callable[[Session], Any],
    value: Any,
) -> None:
    s = cstore.open(None)
    with counted.expect(1):
        op(s)
    assert counted.batches[0] == ["EVALSHA"]
    key = s.core.key
    assert key is not None
    assert 99_000 < redis_client.pttl(key) <= 100_000
    assert redis_client.hexists(key, CREATED_FIELD)
    assert cstore.open(cookie_of(cstore, s))["k"] == value


@pytest.mark.parametrize(
    "op", [lambda s: s.discard("k", 1), lambda s: s.delete_in("k", "a")], ids=["discard", "del_in"]
)
def test_removing_from_a_new_session_costs_nothing(
    cstore: SessionStore,
    counted: Any,
    redis_client: redis.Redis,
    op: Callable[[Session], Any],
) -> None:
    s = cstore.open(None)
    with counted.expect(0):
        assert op(s) is False
    assert s.id is None
    assert redis_client.dbsize() == 0


@pytest.mark.parametrize("live", [True, False], ids=["live", "first-command"])
@pytest.mark.parametrize(
    ("op", "value"),
    [
        (lambda s: s.append("k", 1), [1]),
        (lambda s: s.extend("k", [1]), [1]),
        (lambda s: s.add("k", 1), [1]),
        (lambda s: s.set_in("k", "a", 1), {"a": 1}),
    ],
    ids=["append", "extend", "add", "set_in"],
)
def test_a_deleted_session_is_never_resurrected(
    store: SessionStore,
    redis_client: redis.Redis,
    op: Callable[[Session], Any],
    value: Any,
    live: bool,
) -> None:
    first = store.open(None)
    first["user"] = "ann"
    cookie = cookie_of(store, first)
    old_key = first.core.key
    s = store.open(cookie)
    if live:
        assert s["user"] == "ann"  # live in this request before the logout
    store.open(cookie).invalidate()  # another request logs out
    op(s)
    assert redis_client.exists(old_key) == 0, "the logged-out session came back"
    assert s.id is not None and s.core.key != old_key
    assert store.open(cookie_of(store, s)).to_dict() == {"k": value}
    assert redis_client.pttl(s.core.key) > 0


def test_removals_on_a_deleted_session_write_nothing(
    store: SessionStore, redis_client: redis.Redis
) -> None:
    first = store.open(None)
    first.update(k=[1], d={"a": 1})
    cookie = cookie_of(store, first)
    old_key = first.core.key
    live = store.open(cookie)
    assert live["k"] == [1]
    store.open(cookie).invalidate()
    assert live.discard("k", 1) is False
    assert live.delete_in("d", "a") is False
    pending = store.open(cookie)
    assert pending.discard("k", 1) is False
    assert pending.delete_in("d", "a") is False
    assert redis_client.exists(old_key) == 0
    assert redis_client.dbsize() == 0


# --------------------------------------------------------------------------- round trips


@pytest.fixture
def cstore(counted: Any, redis_client: redis.Redis) -> Iterator[SessionStore]:
    for script in EVERY:
        assert redis_client.script_load(script.source) == script.sha
    store = SessionStore(redis=counted.client, ttl=100)
    yield store


VALUE_OPS: list[tuple[str, Callable[[Session], Any]]] = [
    ("append", lambda s: s.append("l", 3)),
    ("append-max_len", lambda s: s.append("l", 3, max_len=2)),
    ("extend", lambda s: s.extend("l", [3, 4])),
    ("add", lambda s: s.add("l", 3)),
    ("add-present", lambda s: s.add("l", 1)),
    ("discard", lambda s: s.discard("l", 1)),
    ("discard-absent", lambda s: s.discard("l", 9)),
    ("set_in", lambda s: s.set_in("d", "c", 3)),
    ("delete_in", lambda s: s.delete_in("d", "a")),
    ("new-field", lambda s: s.append("fresh", 1)),
]


@pytest.mark.parametrize("op", [op for _, op in VALUE_OPS], ids=[n for n, _ in VALUE_OPS])
def test_each_value_edit_is_one_round_trip(
    cstore: SessionStore, counted: Any, redis_client: redis.Redis, op: Callable[[Session], Any]
) -> None:
    first = cstore.open(None)
    first.update(l=[1, 2], d={"a": 1, "b": 2})
    cookie = cookie_of(cstore, first)
    key = first.core.key
    redis_client.pexpire(key, 3000)
    s = cstore.open(cookie)
    with counted.expect(1):  # as the request's first command: it slides the TTL too
        op(s)
    assert 90_000 < redis_client.pttl(key) <= 100_000
    with counted.expect(1):  # and once the session is live
        op(s)
    assert counted.batches == [["EVALSHA"]]


def test_a_flushed_script_cache_is_survived(
    store: SessionStore, existing: str, redis_client: redis.Redis
) -> None:
    s = store.open(existing)
    redis_client.script_flush()
    assert s.append("l", 3) == 3
    redis_client.script_flush()
    assert s.set_in("d", "c", 3) is None
    redis_client.script_flush()
    assert store.open(existing).add("l", 4) is True
    assert store.open(existing).to_dict()["l"] == [1, 2, 3, 4]


# --------------------------------------------------------------------------- concurrency


def test_sixteen_threads_appending_lose_nothing(store: SessionStore, existing: str) -> None:
    def editor(t: int) -> Callable[[], None]:
        def run() -> None:
            for i in range(40):
                store.open(existing).append("log", [t, i])  # one request per edit

        return run

    run_threads([editor(t) for t in range(16)])
    log = store.open(existing)["log"]
    assert len(log) == 16 * 40
    assert sorted(map(tuple, log)) == [(t, i) for t in range(16) for i in range(40)]
    for t in range(16):  # each editor's items in its own order
        assert [i for tt, i in log if tt == t] == list(range(40))


def test_sixteen_threads_on_a_set_and_a_dict(store: SessionStore, existing: str) -> None:
    def editor(t: int) -> Callable[[], None]:
        def run() -> None:
            for i in range(20):
                s = store.open(existing)
                s.add("set", i)  # everybody adds the same 20 items
                s.add("set", f"{t}-{i}")
                s.set_in("d", f"{t}-{i}", i)
                if i % 2:
                    assert s.discard("set", f"{t}-{i}") is True
                    assert s.delete_in("d", f"{t}-{i}") is True
                s.append("recent", [t, i], max_len=10)

        return run

    run_threads([editor(t) for t in range(16)])
    data = store.open(existing).to_dict()
    assert sorted(x for x in data["set"] if isinstance(x, int)) == list(range(20))
    assert sorted(x for x in data["set"] if isinstance(x, str)) == sorted(
        f"{t}-{i}" for t in range(16) for i in range(0, 20, 2)
    )
    assert data["d"] == {"a": 1, "b": 2} | {
        f"{t}-{i}": i for t in range(16) for i in range(0, 20, 2)
    }
    assert len(data["recent"]) == 10


def test_other_codecs_fall_back_to_an_optimistic_write(
    make_store: StoreFactory, redis_client: redis.Redis
) -> None:
    for codec in ("pickle", FunctionCodec(loads=JSON.loads, dumps=JSON.dumps)):
        store = make_store(codec=codec)
        s = store.open(None)
        assert s.append("l", 1) == 1
        assert s.extend("l", [2, 3], max_len=2) == 2
        assert s.add("l", 3) is False
        assert s.add("l", (4,) if codec == "pickle" else [4]) is True
        assert s.discard("l", 2) is True
        assert s.discard("none", 2) is False
        s.set_in("d", "a", 1)
        s.set_in("d", "b", 2)
        assert s.delete_in("d", "a") is True
        assert s.delete_in("d", "a") is False
        with pytest.raises(ValueTypeError) as info:
            s.append("d", 1)
        assert info.value.key == "d"
        cookie = cookie_of(store, s)
        assert store.open(cookie)["d"] == {"b": 2}
        assert len(store.open(cookie)["l"]) == 2

        def editor(t: int, cookie: str = cookie, store: SessionStore = store) -> Callable[[], None]:
            def run() -> None:
                for i in range(15):
                    store.open(cookie).append("log", [t, i])

            return run

        run_threads([editor(t) for t in range(8)])  # optimistic, with the time budget
        assert len(store.open(cookie)["log"]) == 8 * 15


# --------------------------------------------------------------------------- against Python


try:
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - hypothesis is a dev-only extra
    st = None

if st is not None:
    _text = st.text(
        st.characters(blacklist_categories=("Cs",)) | st.sampled_from('",]}[{\\: \n'),
        max_size=6,
    )
    _scalars = (
        st.none()
        | st.booleans()
        | st.integers(-(2**70), 2**70)
        | st.floats(allow_nan=False, allow_infinity=False)
        | _text
    )
    _values = st.recursive(
        _scalars,
        lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3),
        max_leaves=6,
    )
    _small = st.sampled_from([0, 1, "1", "a", "", [1], {"a": 1}, True, None, 1.0])
    _items = _small | _values
    _subs = st.sampled_from(["a", "b", "", 'q"', "é"]) | _text
    _max_len = st.none() | st.integers(1, 4)
    _ops = st.lists(
        st.one_of(
            st.tuples(st.just("append"), st.tuples(st.just("l"), _items), _max_len),
            st.tuples(
                st.just("extend"), st.tuples(st.just("l"), st.lists(_items, max_size=3)), _max_len
            ),
            st.tuples(st.just("add"), st.tuples(st.just("l"), _items), st.none()),
            st.tuples(st.just("discard"), st.tuples(st.just("l"), _items), st.none()),
            st.tuples(st.just("set_in"), st.tuples(st.just("d"), _subs, _values), st.none()),
            st.tuples(st.just("delete_in"), st.tuples(st.just("d"), _subs), st.none()),
        ),
        max_size=8,
    )

    @pytest.mark.standalone_only
    @settings(
        max_examples=150,
        deadline=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture],
    )
    @given(
        start_list=st.lists(_items, max_size=4),
        start_dict=st.dictionaries(_subs, _values, max_size=3),
        ops=_ops,
    )
    def test_scripts_agree_with_the_python_edits(
        make_store: StoreFactory,
        redis_client: redis.Redis,
        start_list: list[Any],
        start_dict: dict[str, Any],
        ops: list[tuple[str, tuple[Any, ...], int | None]],
    ) -> None:
        """The Lua edits give what the optimistic Python ones give, byte for byte."""
        server = make_store().open(None)
        python = make_store(codec=FunctionCodec(loads=JSON.loads, dumps=JSON.dumps)).open(None)
        for s in (server, python):
            s.update(l=start_list, d=start_dict)
        for name, args, max_len in ops:
            kwargs = {} if max_len is None else {"max_len": max_len}
            got = getattr(server, name)(*args, **kwargs)
            want = getattr(python, name)(*args, **kwargs)
            assert got == want, (name, args, max_len)
        assert repr(server.to_dict()) == repr(python.to_dict())
        for field in ("l", "d"):
            raw = stored(redis_client, server, field)
            assert raw == stored(redis_client, python, field)
            assert raw is not None and raw == JSON.dumps(JSON.loads(raw)).encode()
