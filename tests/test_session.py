"""Session as a live MutableMapping, and the round-trip budget of every operation.

Every test runs on each topology (one server, Sentinel, Cluster; see conftest).
Round trips are counted exactly with the ``counted`` fixture; every Lua script is
loaded first (``warm``) so that a NOSCRIPT retry on a fresh server never skews a
count.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from hashsession import MISSING, ConflictError, Session, SessionStore
from hashsession.config import SessionConfig
from hashsession.protocol import Retries
from hashsession.scripts import CREATED_FIELD, EVERY

pytestmark = pytest.mark.all_topologies

StoreFactory = Callable[..., SessionStore]


# --------------------------------------------------------------------------- helpers


def cookie_of(store: SessionStore, session: Session) -> str:
    """The ``name=value`` part of the Set-Cookie the response carries (the next Cookie header)."""
    cookies = [v for k, v in store.response_headers(session) if k == "Set-Cookie"]
    assert len(cookies) == 1, store.response_headers(session)
    return cookies[0].split(";", 1)[0]


def user_fields(client: redis.Redis, key: str) -> dict[bytes, bytes]:
    return {k: v for k, v in client.hgetall(key).items() if not k.startswith(b"\x00")}


@pytest.fixture
def warm(redis_client: redis.Redis) -> None:
    """Load every script, so EVALSHA never meets NOSCRIPT during a counted block."""
    for script in EVERY:
        assert redis_client.script_load(script.source) == script.sha


@pytest.fixture
def existing(store: SessionStore) -> str:
    """The cookie of a stored session holding a=1, b="two", c=[1, 2]."""
    s = store.open(None)
    s.update({"a": 1, "b": "two", "c": [1, 2]})
    return cookie_of(store, s)


# --------------------------------------------------------------------------- reads


def test_brand_new_session_reads_empty(store: SessionStore, redis_client: redis.Redis) -> None:
    s = store.open(None)
    assert s.new is True
    assert s.id is None
    with pytest.raises(KeyError):
        s["a"]
    assert s.get("a") is None
    assert s.get("a", 7) == 7
    assert "a" not in s
    assert len(s) == 0
    assert list(iter(s)) == []
    assert list(s.keys()) == []
    assert list(s.values()) == []
    assert list(s.items()) == []
    assert s.to_dict() == {}
    assert dict(s) == {}
    assert s.get_many("a", "b") == [None, None]
    assert s.pop("a", "dflt") == "dflt"
    with pytest.raises(KeyError):
        s.pop("a")
    with pytest.raises(KeyError):
        del s["a"]
    assert s.delete("a") is False
    s.clear()
    assert s.id is None
    assert redis_client.dbsize() == 0
    assert s.accessed is True


def test_existing_session_reads(store: SessionStore, existing: str) -> None:
    s = store.open(existing)
    assert s.new is False
    assert s.id is not None
    assert s["a"] == 1
    assert s["b"] == "two"
    assert s["c"] == [1, 2]
    assert s.get("b") == "two"
    assert s.get("zzz") is None
    assert s.get("zzz", "d") == "d"
    with pytest.raises(KeyError) as info:
        s["zzz"]
    assert info.value.args == ("zzz",)
    assert "a" in s and "zzz" not in s
    assert len(s) == 3
    assert sorted(s) == ["a", "b", "c"]
    assert sorted(s.keys()) == ["a", "b", "c"]
    assert sorted(map(repr, s.values())) == sorted(map(repr, [1, "two", [1, 2]]))
    assert dict(s.items()) == {"a": 1, "b": "two", "c": [1, 2]}
    assert s.to_dict() == {"a": 1, "b": "two", "c": [1, 2]}
    assert dict(s) == {"a": 1, "b": "two", "c": [1, 2]}
    assert s.get_many("c", "nope", "a") == [[1, 2], None, 1]
    assert s == {"a": 1, "b": "two", "c": [1, 2]}
    assert s.accessed is True
    assert s.modified is False


def test_keys_view_then_item_reads(store: SessionStore, existing: str) -> None:
    """The usual idioms over ``keys()`` work, and a keys view does not change under reads."""
    expected = {"a": 1, "b": "two", "c": [1, 2]}
    s = store.open(existing)
    for k in s.keys():  # noqa: SIM118 - keys() itself is under test
        assert s[k] == expected[k]
    ks = s.keys()
    assert s["a"] == 1
    assert s.get("b") == "two"
    assert sorted(ks) == ["a", "b", "c"]
    assert len(ks) == 3
    assert {k: s[k] for k in s.keys()} == expected  # noqa: SIM118
    assert {k: s[k] for k in s} == expected


def test_reads_after_keys_see_later_writes_of_this_request(
    store: SessionStore, existing: str
) -> None:
    s = store.open(existing)
    ks = list(s.keys())
    s["a"] = 5
    del s["b"]
    assert s["a"] == 5
    with pytest.raises(KeyError):
        s["b"]
    assert set(ks) == {"a", "b", "c"}


def test_reserved_metadata_is_hidden(
    store: SessionStore, existing: str, redis_client: redis.Redis
) -> None:
    s = store.open(existing)
    raw = redis_client.hgetall(s.core.key)
    assert CREATED_FIELD.encode() in raw  # metadata really is in the hash ...
    assert len(s) == 3  # ... but not visible
    assert all(not k.startswith("\x00") for k in s)
    assert all(not k.startswith("\x00") for k in list(s.keys()))
    assert all(not k.startswith("\x00") for k in s.to_dict())
    s.clear()
    assert len(s) == 0 and list(s) == []


def test_values_keep_their_types(store: SessionStore) -> None:
    s = store.open(None)
    values = {
        "int": 5,
        "neg": -3,
        "float": 2.5,
        "str": "héllo ✓",
        "empty": "",
        "none": None,
        "true": True,
        "false": False,
        "list": [1, "x", None],
        "dict": {"k": {"n": [1]}},
    }
    for k, v in values.items():
        s[k] = v
    cookie = cookie_of(store, s)
    again = store.open(cookie)
    for k, v in values.items():
        got = again[k]
        assert got == v and isinstance(got, type(v)), k
        assert isinstance(got, bool) == isinstance(v, bool), k


# --------------------------------------------------------------------------- writes


def test_setitem_is_live(store: SessionStore, existing: str, redis_client: redis.Redis) -> None:
    s = store.open(existing)
    s["a"] = 10
    s["new"] = {"x": 1}
    # visible at once, without save(), to another request and to Redis itself
    other = store.open(existing)
    assert other["a"] == 10
    assert other["new"] == {"x": 1}
    assert redis_client.hget(s.core.key, "a") == b"10"
    assert s.modified is True


def test_set_method(store: SessionStore) -> None:
    s = store.open(None)
    s.set("k", [1])
    assert s["k"] == [1]
    s.set("k", "v")
    assert store.open(cookie_of(store, s))["k"] == "v"


def test_update_with_dict_pairs_and_kwargs(store: SessionStore, existing: str) -> None:
    s = store.open(existing)
    s.update({"d1": 1, "a": "changed"})
    s.update([("p1", 1), ("p2", [2])])
    s.update(k1="x", k2=None)
    s.update({"m": 1}, m=2, n=3)  # kwargs win, as with dict.update
    s.update()  # nothing at all: fine
    s.update({})
    again = store.open(existing)
    assert again.to_dict() == {
        "a": "changed",
        "b": "two",
        "c": [1, 2],
        "d1": 1,
        "p1": 1,
        "p2": [2],
        "k1": "x",
        "k2": None,
        "m": 2,
        "n": 3,
    }


def test_update_on_new_session_creates_it(store: SessionStore, redis_client: redis.Redis) -> None:
    s = store.open(None)
    s.update([("a", 1)], b=2)
    assert s.id is not None
    assert store.open(cookie_of(store, s)).to_dict() == {"a": 1, "b": 2}
    assert redis_client.dbsize() == 1


def test_delitem_and_delete(store: SessionStore, existing: str) -> None:
    s = store.open(existing)
    del s["a"]
    assert "a" not in s
    with pytest.raises(KeyError) as info:
        del s["a"]
    assert info.value.args == ("a",)
    assert s.delete("b") is True
    assert s.delete("b") is False
    assert store.open(existing).to_dict() == {"c": [1, 2]}


def test_delitem_missing_on_existing_session_first_command(
    store: SessionStore, existing: str
) -> None:
    s = store.open(existing)
    with pytest.raises(KeyError):
        del s["missing"]
    assert store.open(existing).to_dict() == {"a": 1, "b": "two", "c": [1, 2]}


def test_incr_and_incr_float(store: SessionStore, existing: str) -> None:
    s = store.open(existing)
    assert s.incr("a") == 2
    assert s.incr("a", 5) == 7
    assert s.incr("a", -10) == -3
    assert s.incr("fresh") == 1
    assert s.incr_float("f", 0.5) == 0.5
    assert s.incr_float("f", 2) == 2.5
    assert s.incr_float("a", 0.5) == -2.5
    again = store.open(existing)
    assert again["fresh"] == 1
    assert again["f"] == 2.5
    assert again["a"] == -2.5
    with pytest.raises(TypeError):
        s.incr("a", 1.5)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        s.incr("a", True)
    with pytest.raises(TypeError):
        s.incr_float("a", "1")  # type: ignore[arg-type]


def test_incr_on_new_session(store: SessionStore, redis_client: redis.Redis) -> None:
    s = store.open(None)
    assert s.incr("hits", 3) == 3
    assert s.incr("hits") == 4
    cookie = cookie_of(store, s)
    assert store.open(cookie)["hits"] == 4
    t = store.open(None)
    assert t.incr_float("x", 1.5) == 1.5
    assert store.open(cookie_of(store, t))["x"] == 1.5


def test_setdefault(store: SessionStore, existing: str) -> None:
    s = store.open(existing)
    assert s.setdefault("a", 99) == 1
    assert s.setdefault("lst", [0]) == [0]
    assert s.setdefault("lst", [1]) == [0]
    assert s.setdefault("nothing") is None
    assert "nothing" in s
    again = store.open(existing)
    assert again["a"] == 1 and again["lst"] == [0] and again["nothing"] is None


def test_setdefault_on_new_session_creates_it(store: SessionStore) -> None:
    s = store.open(None)
    assert s.setdefault("k", {"v": 1}) == {"v": 1}
    assert s.id is not None
    assert s.setdefault("k", "other") == {"v": 1}
    assert store.open(cookie_of(store, s))["k"] == {"v": 1}


def test_pop(store: SessionStore, existing: str) -> None:
    s = store.open(existing)
    assert s.pop("c") == [1, 2]
    assert "c" not in s
    assert s.pop("c", None) is None
    assert s.pop("c", 0) == 0
    with pytest.raises(KeyError) as info:
        s.pop("c")
    assert info.value.args == ("c",)
    assert store.open(existing).to_dict() == {"a": 1, "b": "two"}


def test_popitem_and_mapping_mixins(store: SessionStore, existing: str) -> None:
    s = store.open(existing)
    k, _ = s.popitem()
    assert k in ("a", "b", "c")
    assert k not in s
    assert len(s) == 2
    assert store.open(existing).get(k) is None


@pytest.mark.parametrize(
    "remove",
    [
        lambda s, k: s.pop(k),
        lambda s, k: s.__delitem__(k),
        lambda s, k: s.delete(k),
    ],
    ids=["pop", "del", "delete"],
)
@pytest.mark.parametrize("first", [True, False], ids=["first-command", "live"])
def test_removing_the_last_key_ends_the_session(
    cstore: SessionStore,
    redis_client: redis.Redis,
    counted: Any,
    remove: Callable[[Session, str], Any],
    first: bool,
) -> None:
    made = cstore.open(None)
    made.update(a=1, b=2)
    cookie = cookie_of(cstore, made)
    key = made.core.key
    s = cstore.open(cookie)
    if not first:
        s.get("a")  # the session is checked and slid: later commands go straight to it
    with counted.expect(1):
        remove(s, "b")
    assert redis_client.exists(key) == 1 and s.id is not None
    with counted.expect(1):  # the same round trip deletes the emptied session
        remove(s, "a")
    assert redis_client.exists(key) == 0
    assert s.id is None and s.new and len(s) == 0
    [(name, expired), *_] = cstore.response_headers(s)
    assert name == "Set-Cookie" and "Max-Age=0" in expired
    s["c"] = 3  # a later write starts a new session under a new id
    assert s.core.key != key
    assert "Max-Age=0" not in dict(cstore.response_headers(s))["Set-Cookie"]


def test_a_session_with_metadata_or_an_owner_is_not_empty(
    make_store: StoreFactory, redis_client: redis.Redis
) -> None:
    store = make_store(user_key="a user key for the session tests")  # login() needs one
    flagged = store.open(None)
    flagged.update(a=1)
    flagged.meta_set("csrf", "token")
    owned = store.open(None)
    owned.update(a=1)
    owned.login("ann")
    for s in (flagged, owned):
        again = store.open(cookie_of(store, s))
        assert again.pop("a") == 1
        assert again.id is not None and redis_client.exists(again.core.key) == 1
        assert [n for n, _ in store.response_headers(again)] == ["Vary"]


def test_a_session_made_and_emptied_in_one_request_sends_nothing(
    store: SessionStore, redis_client: redis.Redis
) -> None:
    s = store.open(None)
    s["a"] = 1
    del s["a"]
    assert redis_client.dbsize() == 0
    assert store.response_headers(s) == [("Vary", "Cookie")]


def test_clear_ends_the_session(
    cstore: SessionStore, cexisting: str, redis_client: redis.Redis, counted: Any
) -> None:
    s = cstore.open(cexisting)
    s.meta_set("csrf", "token")
    key = s.core.key
    ended = cstore.open(cexisting)
    with counted.expect(1):  # one DEL, metadata and all
        ended.clear()
    assert redis_client.exists(key) == 0
    assert len(ended) == 0 and ended.id is None and ended.new
    [(name, expired), *_] = cstore.response_headers(ended)
    assert name == "Set-Cookie" and "Max-Age=0" in expired  # the browser drops its cookie
    ended["after"] = 1  # a new session, under a new id
    assert ended.id is not None and ended.core.key != key
    assert "Max-Age=0" not in dict(cstore.response_headers(ended))["Set-Cookie"]
    assert cstore.open(cexisting).to_dict() == {}  # the old id opens nothing
    fresh = cstore.open(None)
    fresh["x"] = 1
    fresh.clear()  # made and ended in one request: no cookie at all
    assert cstore.response_headers(fresh) == [("Vary", "Cookie")]
    assert redis_client.dbsize() == 1


def test_compare_and_set(store: SessionStore, existing: str) -> None:
    s = store.open(existing)
    assert s.compare_and_set({"a": 1}, {"a": 2, "x": "y"}) is True
    assert s.to_dict() == {"a": 2, "b": "two", "c": [1, 2], "x": "y"}
    assert s.compare_and_set({"a": 1}, {"a": 3}) is False
    assert s["a"] == 2
    # MISSING: "absent" in expected, "delete" in changes
    assert s.compare_and_set({"nope": MISSING}, {"nope": 1, "x": MISSING}) is True
    assert s["nope"] == 1 and "x" not in s
    assert s.compare_and_set({"nope": MISSING}, {"nope": 2}) is False
    assert s["nope"] == 1
    # every expectation must hold
    assert s.compare_and_set({"a": 2, "b": "other"}, {"a": 100}) is False
    assert s["a"] == 2
    assert s.compare_and_set({"a": 2, "b": "two", "c": [1, 2]}, {"a": 100}) is True
    assert store.open(existing)["a"] == 100


def test_compare_and_set_as_first_command(store: SessionStore, existing: str) -> None:
    assert store.open(existing).compare_and_set({"a": 1}, {"a": 5}) is True
    assert store.open(existing).compare_and_set({"a": 1}, {"a": 6}) is False
    assert store.open(existing)["a"] == 5


def test_compare_and_set_on_new_session(store: SessionStore, redis_client: redis.Redis) -> None:
    s = store.open(None)
    assert s.compare_and_set({"a": 1}, {"a": 2}) is False
    assert redis_client.dbsize() == 0
    assert s.compare_and_set({"a": MISSING}, {"a": 2}) is True
    assert s.id is not None
    assert store.open(cookie_of(store, s))["a"] == 2


def test_edit_mutates_in_place(store: SessionStore, existing: str) -> None:
    s = store.open(existing)
    with s.edit("c", []) as c:
        c.append(3)
        c.extend([4, 5])
    assert s["c"] == [1, 2, 3, 4, 5]
    with s.edit("cart", []) as cart:
        cart.append("apple")
    with s.edit("d", {}) as d:
        d["k"] = 1
        d.setdefault("l", []).append(1)
    with s.edit("n", 0) as n:
        n += 5
    again = store.open(existing)
    assert again["c"] == [1, 2, 3, 4, 5]
    assert again["cart"] == ["apple"]
    assert again["d"] == {"k": 1, "l": [1]}
    assert again["n"] == 5


def test_edit_default_is_not_shared(store: SessionStore) -> None:
    default: list[int] = []
    s = store.open(None)
    with s.edit("x", default) as x:
        x.append(1)
    assert default == []
    assert s["x"] == [1]


def test_edit_on_new_session_creates_it(store: SessionStore) -> None:
    s = store.open(None)
    with s.edit("cart", []) as cart:
        cart.append(1)
    assert s.id is not None
    assert store.open(cookie_of(store, s))["cart"] == [1]


def test_edit_exception_writes_nothing(store: SessionStore, existing: str) -> None:
    s = store.open(existing)
    with pytest.raises(RuntimeError), s.edit("c", []) as c:
        c.append(99)
        raise RuntimeError("boom")
    assert store.open(existing)["c"] == [1, 2]


def test_edit_replays_on_conflict(store: SessionStore, existing: str) -> None:
    s = store.open(existing)
    with s.edit("c", []) as c:
        c.append(3)
        # another request changes the value while this edit is open
        store.open(existing)["c"] = [1, 2, "other"]
    assert store.open(existing)["c"] == [1, 2, "other", 3]


def test_edit_gives_up_with_conflict_error(make_store: StoreFactory) -> None:
    store = make_store(edit_retries=3)
    s = store.open(None)
    s["c"] = [0]
    cookie = cookie_of(store, s)
    other = store.open(cookie)
    attempts = 0

    def meddle(value: list[int]) -> list[int]:
        nonlocal attempts
        attempts += 1
        other["c"] = [-attempts]  # always changes the value behind apply's back
        return [*value, 1]

    with pytest.raises(ConflictError) as info:
        store.open(cookie).apply("c", meddle, [])
    assert info.value.key == "c"
    assert attempts == 3
    assert store.open(cookie)["c"] == [-3]


@pytest.mark.parametrize("how", ["edit", "apply"])
def test_a_losing_edit_retries_until_edit_timeout(
    make_store: StoreFactory, redis_client: redis.Redis, how: str
) -> None:
    """With no edit_retries cap, only the time budget ends the retries."""
    store = make_store(edit_timeout=1.0)  # room for many tries on a loaded machine
    s = store.open(None)
    s["c"] = [0]
    cookie = cookie_of(store, s)
    key = s.core.key
    assert key is not None
    tries = 0

    def meddle(value: Any) -> Any:
        nonlocal tries
        tries += 1
        redis_client.hset(key, "c", f"[{-tries}]")  # a racing writer, every time
        return [*value, 1]

    class Meddler:
        def __iter__(self) -> Iterator[int]:
            meddle([])
            yield 1

    start = time.monotonic()
    with pytest.raises(ConflictError) as info:
        if how == "apply":
            store.open(cookie).apply("c", meddle, [])
        else:
            with store.open(cookie).edit("c", []) as c:
                c.extend(Meddler())
    took = time.monotonic() - start
    assert info.value.key == "c"
    assert "edit_timeout=1 s" in str(info.value)
    assert 1.0 <= took < 6
    assert tries > 5  # many tries in the budget, not a fixed few
    assert store.open(cookie)["c"] == [-tries]  # the losing edit wrote nothing


def test_retry_waits_are_jittered_growing_and_bounded() -> None:
    retries = Retries(SessionConfig.build(edit_timeout=60))
    waits = [retries.wait("k") for _ in range(200)]
    assert retries.tries == 201
    assert all(0 <= w <= Retries.LONGEST for w in waits)
    assert len(set(waits)) == 200  # random: racing editors do not retry in step
    for n, w in enumerate(waits[:4]):
        assert w <= Retries.FIRST * 2**n  # the bound doubles ...
    assert max(waits[:2]) <= 2 * Retries.FIRST < max(waits[50:])  # ... up to LONGEST
    capped = Retries(SessionConfig.build(edit_retries=3))
    capped.wait("k")
    capped.wait("k")
    with pytest.raises(ConflictError, match=r"after 3 conflicting writes .*edit_retries=3"):
        capped.wait("k")
    short = Retries(SessionConfig.build(edit_timeout=0.02))
    assert short.wait("k") <= 0.02  # never past the budget
    time.sleep(0.03)
    with pytest.raises(ConflictError, match=r"edit_timeout=0\.02 s"):
        short.wait("k")


def test_apply(store: SessionStore, existing: str) -> None:
    s = store.open(existing)
    assert s.apply("c", lambda v: [*v, 3]) == [1, 2, 3]
    assert s.apply("new", lambda v: v + 1, 0) == 1
    assert s.apply("new", lambda v: v + 1, 0) == 2
    again = store.open(existing)
    assert again["c"] == [1, 2, 3] and again["new"] == 2


def test_augmented_assignment_increments(store: SessionStore, existing: str) -> None:
    s = store.open(existing)
    s["a"] += 1
    assert s["a"] == 2
    x = s["a"]
    x += 10
    x -= 2
    s["a"] = x
    assert store.open(existing)["a"] == 10
    s["a"] += 0.5  # an int counter plus a float: HINCRBYFLOAT
    assert store.open(existing)["a"] == 10.5


def test_augmented_assignment_on_a_float(store: SessionStore, existing: str) -> None:
    s = store.open(existing)
    s["f"] = 1.5
    s["f"] += 0.25
    assert store.open(existing)["f"] == 1.75
    s["f"] += 1  # a float plus an int is still a float increment
    assert store.open(existing)["f"] == 2.75
    s["f"] -= 2
    assert store.open(existing)["f"] == 0.75


def test_augmented_assignment_is_race_free(store: SessionStore, existing: str) -> None:
    s = store.open(existing)
    n = s["a"]  # 1
    store.open(existing)["a"] = 100  # another request moves the counter meanwhile
    n += 1
    s["a"] = n
    assert store.open(existing)["a"] == 101


def test_incremented_value_assigned_twice_is_stored_once(
    store: SessionStore, existing: str
) -> None:
    """``s[k] = v`` twice must leave the same value as once (as with any mapping)."""
    s = store.open(existing)
    n = s["a"]  # 1
    n += 1
    s["a"] = n
    s["a"] = n
    assert n == 2
    assert store.open(existing)["a"] == 2


def test_counter_copied_to_another_key_is_a_plain_set(store: SessionStore, existing: str) -> None:
    s = store.open(existing)
    n = s["a"]
    n += 4
    s["copy"] = n
    assert store.open(existing)["copy"] == 5
    assert store.open(existing)["a"] == 1


def test_save_is_a_noop(store: SessionStore, existing: str, redis_client: redis.Redis) -> None:
    s = store.open(existing)
    s.save()
    assert s.accessed is False
    s["z"] = 1
    s.save()
    assert store.open(existing)["z"] == 1


def test_open_id_with_bare_cookie_value(store: SessionStore, existing: str) -> None:
    value = existing.split("=", 1)[1]
    assert store.open_id(value)["b"] == "two"
    fresh = store.open_id(None)
    assert fresh.new is True and fresh.get("b") is None
    assert store.open_id("garbage").get("b") is None


def test_cookie_header_with_other_cookies(store: SessionStore, existing: str) -> None:
    header = f"theme=dark; {existing}; lang=en"
    assert store.open(header)["a"] == 1


def test_session_flags(store: SessionStore, existing: str) -> None:
    s = store.open(existing)
    assert (s.accessed, s.modified, s.invalidated) == (False, False, False)
    s.get("a")
    assert (s.accessed, s.modified) == (True, False)
    s["a"] = 2
    assert s.modified is True
    s.invalidate()
    assert s.invalidated is True


def test_modified_only_when_something_changed(store: SessionStore, existing: str) -> None:
    """pop of a missing key, setdefault of a set one and del of a missing one change
    nothing, so the session is not modified; every read marks it accessed."""
    for first in (True, False):  # the request's first command, then on the live session
        s = store.open(existing)
        if not first:
            assert s.get("a") == 1
            s.core.accessed = False
        assert s.pop("missing", None) is None
        assert (s.accessed, s.modified) == (True, False)
        assert s.setdefault("a", 5) == 1
        assert s.delete("missing") is False
        with pytest.raises(KeyError):
            del s["missing"]
        assert (s.accessed, s.modified) == (True, False)
        reads: list[Callable[[Session], Any]] = [
            lambda s: s["a"],
            lambda s: s.get("a"),
            lambda s: "a" in s,
        ]
        for read in reads:
            s.core.accessed = False
            read(s)
            assert (s.accessed, s.modified) == (True, False)
    changes: list[Callable[[Session], Any]] = [
        lambda s: s.pop("a"),
        lambda s: s.delete("b"),
        lambda s: s.setdefault("d", 4),
    ]
    for first in (True, False):
        for change in changes:
            s = store.open(existing)
            if not first:
                s.get("x")
            change(s)
            assert s.modified is True
        changes = [lambda s: s.pop("c"), lambda s: s.delete("d"), lambda s: s.setdefault("e", 5)]
    # Deleting "d" emptied the session, which ended it: "e" went to a new session.
    assert store.open(existing).to_dict() == {}

    fresh = store.open(None)  # nothing stored: no command, nothing changed
    assert fresh.pop("a", None) is None and fresh.delete("a") is False
    assert (fresh.accessed, fresh.modified, fresh.id) == (True, False, None)
    assert fresh.setdefault("a", 1) == 1
    assert fresh.modified is True and fresh.id is not None


# --------------------------------------------------------------------------- round trips


@pytest.fixture
def cstore(counted: Any, warm: None) -> Iterator[SessionStore]:
    store = SessionStore(redis=counted.client, ttl=100)
    yield store


@pytest.fixture
def cexisting(cstore: SessionStore) -> str:
    s = cstore.open(None)
    s.update(a=1, b="two", n=5)
    return cookie_of(cstore, s)


def test_untouched_session_costs_nothing(
    cstore: SessionStore, cexisting: str, counted: Any
) -> None:
    with counted.expect(0):
        s = cstore.open(cexisting)
        _ = s.id, s.new, s.accessed, s.modified
        s.save()
        headers = cstore.response_headers(s)
    assert headers == []
    with counted.expect(0):
        fresh = cstore.open(None)
        headers = cstore.response_headers(fresh)
    assert headers == []


def test_reads_on_new_session_cost_nothing(
    cstore: SessionStore, counted: Any, redis_client: redis.Redis
) -> None:
    with counted.expect(0):
        s = cstore.open(None)
        assert s.get("a") is None
        with pytest.raises(KeyError):
            s["a"]
        assert "a" not in s
        assert len(s) == 0
        assert list(s) == []
        assert list(s.keys()) == []
        assert list(s.items()) == []
        assert list(s.values()) == []
        assert s.to_dict() == {}
        assert dict(s) == {}
        assert s.get_many("a", "b", "c") == [None, None, None]
        assert s.pop("a", None) is None
        assert s.delete("a") is False
        s.clear()
        s.touch()
        s.regenerate()
        s.invalidate()
    assert redis_client.dbsize() == 0
    headers = cstore.response_headers(s)
    assert headers == [("Vary", "Cookie")]


def test_n_single_key_operations_cost_n(
    cstore: SessionStore, cexisting: str, counted: Any, redis_client: redis.Redis
) -> None:
    key = cstore.open(cexisting).core.key
    assert key is not None
    redis_client.pexpire(key, 2000)
    s = cstore.open(cexisting)
    with counted.expect(1):
        assert s["a"] == 1
    assert redis_client.pttl(key) > 90_000, "the first command must slide the TTL"
    with counted.expect(12):
        assert s.get("b") == "two"
        assert "n" in s
        s["c"] = 3
        s.set("d", 4)
        assert s.incr("n") == 6
        assert s.incr_float("f", 0.5) == 0.5
        assert s.setdefault("e", 1) == 1
        assert s.pop("e") == 1
        del s["d"]
        assert s.delete("c") is True
        assert s.get_many("a", "b") == [1, "two"]
        assert len(s) == 4
    assert cstore.response_headers(s) == [("Vary", "Cookie")]


@pytest.mark.parametrize(
    "op",
    [
        lambda s: s.get("a"),
        lambda s: s["a"],
        lambda s: "a" in s,
        lambda s: s.__setitem__("a", 2),
        lambda s: s.set("x", 2),
        lambda s: s.incr("a"),
        lambda s: s.incr_float("a", 1.0),
        lambda s: s.setdefault("q", 1),
        lambda s: s.pop("b"),
        lambda s: s.delete("b"),
        lambda s: s.get_many("a", "b"),
        lambda s: len(s),
        lambda s: s.to_dict(),
        lambda s: s.keys(),
        lambda s: s.update(x=1, y=2),
        lambda s: s.compare_and_set({"a": 1}, {"a": 3}),
        lambda s: s.touch(),
    ],
    ids=[
        "get",
        "getitem",
        "contains",
        "setitem",
        "set",
        "incr",
        "incr_float",
        "setdefault",
        "pop",
        "delete",
        "get_many",
        "len",
        "to_dict",
        "keys",
        "update",
        "cas",
        "touch",
    ],
)
def test_every_first_operation_is_one_round_trip_and_slides(
    cstore: SessionStore,
    cexisting: str,
    counted: Any,
    redis_client: redis.Redis,
    op: Callable[[Session], Any],
) -> None:
    s = cstore.open(cexisting)
    key = s.core.key
    redis_client.pexpire(key, 3000)
    with counted.expect(1):
        op(s)
    assert 90_000 < redis_client.pttl(key) <= 100_000


def test_read_everything_is_one_round_trip(
    cstore: SessionStore, cexisting: str, counted: Any
) -> None:
    expected = {"a": 1, "b": "two", "n": 5}
    reads: list[tuple[Callable[[Session], Any], Any]] = [
        (lambda s: s.to_dict(), expected),
        (lambda s: dict(s.items()), expected),
        (lambda s: sorted(map(repr, s.values())), sorted(map(repr, expected.values()))),
        (lambda s: sorted(s.keys()), sorted(expected)),
    ]
    for read, want in reads:
        s = cstore.open(cexisting)
        with counted.expect(1):  # as the first command of a request ...
            assert read(s) == want
        with counted.expect(1):  # ... and again once the session is live
            assert read(s) == want


def test_dict_of_session_is_one_round_trip(
    cstore: SessionStore, cexisting: str, counted: Any
) -> None:
    """DESIGN.md: read everything (``dict(session)``, ``items()``) costs 1 round trip."""
    s = cstore.open(cexisting)
    with counted.expect(1):
        assert dict(s) == {"a": 1, "b": "two", "n": 5}


def test_update_of_fifty_keys_is_one_round_trip(
    cstore: SessionStore, cexisting: str, counted: Any
) -> None:
    data = {f"k{i}": i for i in range(50)}
    s = cstore.open(cexisting)
    with counted.expect(1):
        s.update(data)
    with counted.expect(1):
        s.update({k: v + 1 for k, v in data.items()})
    assert cstore.open(cexisting).get_many("k0", "k49") == [1, 50]
    fresh = cstore.open(None)
    with counted.expect(1):
        fresh.update(data)
    assert len(cstore.open(cookie_of(cstore, fresh))) == 50


def test_first_write_of_new_session_is_one_round_trip(
    cstore: SessionStore, counted: Any, redis_client: redis.Redis
) -> None:
    s = cstore.open(None)
    with counted.expect(1):
        s["user"] = "ann"
    key = s.core.key
    assert key is not None
    assert 99_000 < redis_client.pttl(key) <= 100_000
    raw = redis_client.hgetall(key)
    assert raw[b"user"] == b'"ann"'
    assert CREATED_FIELD.encode() in raw
    assert abs(int(raw[CREATED_FIELD.encode()]) - redis_client.time()[0] * 1000) < 5_000
    headers = cstore.response_headers(s)
    assert headers[0][0] == "Set-Cookie" and headers[0][1].startswith(f"session={s.id}")
    assert headers[1] == ("Vary", "Cookie")
    with counted.expect(1):  # the next write of this request: one more
        s["x"] = 1


@pytest.mark.parametrize(
    "first",
    [
        lambda s: s.incr("n"),
        lambda s: s.setdefault("n", 1),
        lambda s: s.update(a=1, b=2),
        lambda s: s.compare_and_set({"n": MISSING}, {"n": 1}),
    ],
    ids=["incr", "setdefault", "update", "cas"],
)
def test_every_creating_write_is_one_round_trip(
    cstore: SessionStore,
    counted: Any,
    redis_client: redis.Redis,
    first: Callable[[Session], Any],
) -> None:
    s = cstore.open(None)
    with counted.expect(1):
        first(s)
    assert redis_client.pttl(s.core.key) > 0
    assert redis_client.hexists(s.core.key, CREATED_FIELD)


def test_augmented_assignment_is_two_round_trips(
    cstore: SessionStore, cexisting: str, counted: Any, redis_client: redis.Redis
) -> None:
    s = cstore.open(cexisting)
    with counted.expect(2):
        s["n"] += 1
    assert counted.batches[1] == ["EVALSHA"]  # the incr script (HINCRBY), not a plain set
    assert redis_client.hget(s.core.key, "n") == b"6"
    with counted.expect(1):
        assert s.incr("n") == 7
    with counted.expect(2):
        s["n"] += 1
    assert cstore.open(cexisting)["n"] == 8


def test_script_cache_flush_is_survived(
    store: SessionStore, existing: str, redis_client: redis.Redis
) -> None:
    redis_client.script_flush()
    s = store.open(existing)
    assert s["a"] == 1
    s["a"] = 2
    s.incr("a")
    redis_client.script_flush()
    s["b"] = "x"
    assert store.open(existing).to_dict() == {"a": 3, "b": "x", "c": [1, 2]}
    redis_client.script_flush()
    fresh = store.open(None)
    fresh["q"] = 1
    assert store.open(cookie_of(store, fresh))["q"] == 1
