"""Session ids, Redis keys and the cookie round trip: signing, forgery, rotation, login, logout."""

from __future__ import annotations

import re
import secrets
from collections.abc import Callable
from typing import Any

import pytest
import redis

from hashsession import CookiePolicy, Session, SessionStore
from hashsession.ids import ID_LENGTH, new_id
from hashsession.scripts import EVERY

pytestmark = pytest.mark.all_topologies

StoreFactory = Callable[..., SessionStore]
URLSAFE = re.compile(r"[A-Za-z0-9_-]+")


def set_cookies(store: SessionStore, session: Session) -> list[str]:
    return [v for k, v in store.response_headers(session) if k == "Set-Cookie"]


def cookie_of(store: SessionStore, session: Session) -> str:
    cookies = set_cookies(store, session)
    assert len(cookies) == 1, store.response_headers(session)
    return cookies[0].split(";", 1)[0]


def attributes(set_cookie: str) -> list[str]:
    return [part.strip() for part in set_cookie.split(";")[1:]]


@pytest.fixture
def signed(make_store: StoreFactory) -> SessionStore:
    return make_store(secret_keys=["s3cret-key"])


@pytest.fixture
def warm(redis_client: redis.Redis) -> None:
    for script in EVERY:
        redis_client.script_load(script.source)


# --------------------------------------------------------------------------- ids and keys


def test_id_shape(store: SessionStore) -> None:
    s = store.open(None)
    s["a"] = 1
    assert s.id is not None
    assert len(s.id) == 47 == ID_LENGTH
    assert URLSAFE.fullmatch(s.id)
    assert cookie_of(store, s) == f"session={s.id}"


def test_thousand_ids_are_unique() -> None:
    ids = {new_id() for _ in range(1000)}
    assert len(ids) == 1000
    assert all(len(i) == 47 and URLSAFE.fullmatch(i) for i in ids)


def test_session_ids_are_unique(store: SessionStore, redis_client: redis.Redis) -> None:
    seen = set()
    for _ in range(200):
        s = store.open(None)
        s["x"] = 1
        seen.add(s.id)
    assert len(seen) == 200
    assert redis_client.dbsize() == 200


def test_redis_key_is_prefix_tag_digest(
    make_store: StoreFactory, redis_client: redis.Redis
) -> None:
    store = make_store(prefix="app:sess:")
    s = store.open(None)
    s["a"] = 1
    sid = s.id
    assert sid is not None
    [key] = [k.decode() for k in redis_client.keys("*")]
    assert key == s.core.key
    m = re.fullmatch(r"app:sess:\{([A-Za-z0-9_-]{4})\}([A-Za-z0-9_=-]+)", key)
    assert m is not None, key
    assert m.group(1) == sid[:4]
    assert sid not in key
    assert sid[4:] not in key
    assert sid[4:20] not in key  # not even a good piece of the secret part
    # the digest is a function of the id: the same id gives the same key
    assert store.open(cookie_of(store, s)).core.key == key


def test_raw_key_layout(make_store: StoreFactory, redis_client: redis.Redis) -> None:
    store = make_store(key_layout="raw", prefix="dr:")
    s = store.open(None)
    s["a"] = 1
    assert redis_client.exists(f"dr:{s.id}") == 1


def test_id_factory_with_raw_layout(make_store: StoreFactory, redis_client: redis.Redis) -> None:
    made: list[str] = []

    def factory() -> str:
        made.append(f"custom-{secrets.token_hex(8)}")
        return made[-1]

    store = make_store(key_layout="raw", id_factory=factory)
    s = store.open(None)
    s["a"] = 1
    assert s.id == made[-1]
    assert redis_client.exists(f"hs:{made[-1]}") == 1
    assert store.open(cookie_of(store, s))["a"] == 1


# --------------------------------------------------------------------------- signed cookies


def test_signed_cookie_round_trip(signed: SessionStore) -> None:
    s = signed.open(None)
    s["a"] = 1
    cookie = cookie_of(signed, s)
    value = cookie.split("=", 1)[1]
    sid, dot, sig = value.rpartition(".")
    assert dot and sid == s.id and len(sig) == 43
    assert signed.open(cookie)["a"] == 1


def _mutate(text: str, index: int) -> str:
    ch = text[index]
    return text[:index] + ("A" if ch != "A" else "B") + text[index + 1 :]


BAD_COOKIES: dict[str, Callable[[str], str]] = {
    "tampered-signature": lambda v: _mutate(v, len(v) - 5),
    "tampered-id": lambda v: _mutate(v, 10),
    "missing-signature": lambda v: v.rpartition(".")[0],
    "empty-signature": lambda v: v.rpartition(".")[0] + ".",
    "other-key-signature": lambda v: v.rpartition(".")[0] + "." + "x" * 43,
    "empty": lambda v: "",
    "quotes-only": lambda v: '""',
    "garbage": lambda v: "!!not-a-cookie@@",
    "dots": lambda v: "....",
    "oversized": lambda v: v + "A" * 5000,
    "oversized-plain": lambda v: "A" * 5000,
    "non-ascii": lambda v: "sëssïon-☃." + v.rpartition(".")[2],
    "non-ascii-id": lambda v: v.replace(v[5], "é", 1),
    "control-chars": lambda v: v[:10] + "\x01\x7f" + v[12:],
}


@pytest.mark.parametrize("bad", list(BAD_COOKIES.values()), ids=list(BAD_COOKIES))
def test_bad_cookie_gives_a_fresh_lazy_session(
    make_store: StoreFactory,
    counted: Any,
    warm: None,
    redis_client: redis.Redis,
    bad: Callable[[str], str],
) -> None:
    store = make_store(redis=counted.client, secret_keys=["k1"])
    good = store.open(None)
    good["secret"] = "data"
    good_value = cookie_of(store, good).split("=", 1)[1]
    header = f"session={bad(good_value)}"
    with counted.expect(0):  # a forged cookie never reaches Redis, even when read
        s = store.open(header)
        assert s.new is True
        assert s.id is None
        assert s.get("secret") is None
        assert s.to_dict() == {}
        assert len(s) == 0
    assert redis_client.dbsize() == 1
    assert set_cookies(store, s) == []  # left alone: no deletion either
    with counted.expect(1):
        s["mine"] = 1
    assert s.id is not None and s.id != good.id
    assert store.open(cookie_of(store, s)).to_dict() == {"mine": 1}
    assert store.open(f"session={good_value}").to_dict() == {"secret": "data"}


def test_bad_signature_untouched_costs_nothing_and_sends_nothing(
    make_store: StoreFactory, counted: Any, warm: None
) -> None:
    store = make_store(redis=counted.client, secret_keys=["k1"])
    with counted.expect(0):
        s = store.open("session=" + new_id() + "." + "A" * 43)
        headers = store.response_headers(s)
    assert headers == []


def test_unsigned_cookie_refused_by_signing_store(
    store: SessionStore, signed: SessionStore
) -> None:
    s = store.open(None)  # made by a store that does not sign
    s["a"] = 1
    fresh = signed.open(cookie_of(store, s))
    assert fresh.new is True and fresh.get("a") is None


def test_key_rotation(make_store: StoreFactory) -> None:
    old_store = make_store(secret_keys=["old"])
    rotated = make_store(secret_keys=["new", "old"])
    new_only = make_store(secret_keys=["new"])
    s = old_store.open(None)
    s["a"] = 1
    old_cookie = cookie_of(old_store, s)
    assert rotated.open(old_cookie)["a"] == 1  # every key verifies
    t = rotated.open(None)
    t["b"] = 2
    new_cookie = cookie_of(rotated, t)
    assert new_cookie != f"session={t.id}"
    assert new_only.open(new_cookie)["b"] == 2  # the first key signs
    assert old_store.open(new_cookie).get("b") is None
    assert new_only.open(old_cookie).get("a") is None  # a retired key no longer verifies


def test_rolling_deploy_of_a_new_key_logs_nobody_out(make_store: StoreFactory) -> None:
    """An instance that does not know the new signing key yet leaves its cookies alone."""
    behind = make_store(secret_keys=["old"])  # not redeployed yet
    ahead = make_store(secret_keys=["new", "old"])
    s = ahead.open(None)
    s["user"] = "ann"
    cookie = cookie_of(ahead, s)
    for step in (
        lambda t: t.get("user"),
        lambda t: t.to_dict(),
        lambda t: t.invalidate(),
        lambda t: t.clear(),
    ):
        t = behind.open(cookie)
        step(t)
        assert t.new is True
        assert behind.response_headers(t) in ([], [("Vary", "Cookie")])
    assert ahead.open(cookie)["user"] == "ann"  # the browser's cookie still opens it


def test_bytes_secret_keys(make_store: StoreFactory) -> None:
    as_bytes = make_store(secret_keys=[b"k\xffey"])
    s = as_bytes.open(None)
    s["a"] = 1
    assert as_bytes.open(cookie_of(as_bytes, s))["a"] == 1


def test_several_session_cookies_first_valid_wins(signed: SessionStore) -> None:
    s = signed.open(None)
    s["a"] = 1
    good = cookie_of(signed, s)
    header = f"session=forged.{'A' * 43}; other=1; {good}"
    assert signed.open(header)["a"] == 1


# --------------------------------------------------------------------------- unknown ids


@pytest.mark.parametrize("signing", [False, True], ids=["unsigned", "signed"])
def test_unknown_well_formed_id_is_never_adopted(
    make_store: StoreFactory, redis_client: redis.Redis, signing: bool
) -> None:
    store = make_store(secret_keys=["k"] if signing else None)
    planted = new_id()
    value = store.config.cookie_value(planted)
    s = store.open(f"session={value}")
    assert s.get("a") is None
    s["a"] = 1
    assert s.id is not None and s.id != planted
    assert redis_client.exists(store.config.key_of(planted)) == 0
    assert cookie_of(store, s) != f"session={value}"
    assert redis_client.dbsize() == 1


def test_unknown_id_read_only_drops_the_cookie(
    store: SessionStore, redis_client: redis.Redis
) -> None:
    s = store.open(f"session={new_id()}")
    assert s.get("a") is None
    [cookie] = set_cookies(store, s)
    assert cookie.startswith("session=;") and "Max-Age=0" in cookie
    assert redis_client.dbsize() == 0


def test_unknown_id_in_raw_layout_is_not_adopted(
    make_store: StoreFactory, redis_client: redis.Redis
) -> None:
    store = make_store(key_layout="raw")
    s = store.open("session=attacker-chosen-id")
    s["a"] = 1
    assert s.id != "attacker-chosen-id"
    assert redis_client.exists("hs:attacker-chosen-id") == 0


def test_adopt_unknown_ids_when_asked(make_store: StoreFactory, redis_client: redis.Redis) -> None:
    store = make_store(adopt_unknown_ids=True)
    planted = new_id()
    s = store.open(f"session={planted}")
    s["a"] = 1
    assert s.id == planted
    assert redis_client.pttl(store.config.key_of(planted)) > 0


# --------------------------------------------------------------------------- regenerate


def test_regenerate_keeps_data_and_ttl_and_changes_id(
    store: SessionStore, redis_client: redis.Redis
) -> None:
    s = store.open(None)
    s.update(a=1, cart=[1, 2])
    s.touch(300)
    old_cookie = cookie_of(store, s)
    old_id, old_key = s.id, s.core.key
    t = store.open(old_cookie)
    assert t["a"] == 1
    t.regenerate()
    assert t.id is not None and t.id != old_id
    assert t.id[:4] == old_id[:4]  # same slot tag: one atomic rename, cluster-safe
    assert t["cart"] == [1, 2]  # still readable in the same request
    assert redis_client.exists(old_key) == 0
    assert 290_000 < redis_client.pttl(t.core.key) <= 300_000
    new_cookie = cookie_of(store, t)
    assert new_cookie != old_cookie and new_cookie == f"session={t.id}"
    assert store.open(new_cookie).to_dict() == {"a": 1, "cart": [1, 2]}
    stale = store.open(old_cookie)
    assert stale.to_dict() == {}
    assert stale.get("a") is None


def test_regenerated_session_is_not_new(store: SessionStore) -> None:
    """``new`` says whether the session existed when the request began; a new id does not
    change that (the data is the same session's)."""
    s = store.open(None)
    s["a"] = 1
    t = store.open(cookie_of(store, s))
    assert t.new is False
    t.regenerate()
    assert t["a"] == 1
    assert t.new is False


def test_regenerate_then_write(signed: SessionStore, redis_client: redis.Redis) -> None:
    s = signed.open(None)
    s["anon"] = True
    old_cookie = cookie_of(signed, s)
    login = signed.open(old_cookie)
    login.regenerate()
    login["user"] = "ann"
    new_cookie = cookie_of(signed, login)
    assert signed.open(new_cookie).to_dict() == {"anon": True, "user": "ann"}
    assert signed.open(old_cookie).get("user") is None
    assert redis_client.dbsize() == 1


def test_regenerate_twice(store: SessionStore) -> None:
    s = store.open(None)
    s["a"] = 1
    first = s.id
    s.regenerate()
    second = s.id
    s.regenerate()
    assert len({first, second, s.id}) == 3
    assert store.open(cookie_of(store, s))["a"] == 1


def test_regenerate_of_expired_session(store: SessionStore, redis_client: redis.Redis) -> None:
    s = store.open(None)
    s["a"] = 1
    cookie = cookie_of(store, s)
    redis_client.delete(s.core.key)
    t = store.open(cookie)
    t.regenerate()
    assert redis_client.dbsize() == 0
    t["b"] = 1
    assert store.open(cookie_of(store, t)).to_dict() == {"b": 1}


# --------------------------------------------------------------------------- invalidate


def test_invalidate_deletes_and_expires_the_cookie(
    store: SessionStore, redis_client: redis.Redis
) -> None:
    s = store.open(None)
    s["a"] = 1
    cookie = cookie_of(store, s)
    key = s.core.key
    t = store.open(cookie)
    t.invalidate()
    assert t.invalidated is True
    assert redis_client.exists(key) == 0
    [set_cookie] = set_cookies(store, t)
    assert set_cookie.startswith("session=;")
    assert "Max-Age=0" in attributes(set_cookie)
    assert ("Vary", "Cookie") in store.response_headers(t)
    assert t.get("a") is None
    assert store.open(cookie).get("a") is None


def test_invalidate_then_write_starts_a_new_session(
    store: SessionStore, redis_client: redis.Redis
) -> None:
    s = store.open(None)
    s["a"] = 1
    cookie = cookie_of(store, s)
    t = store.open(cookie)
    t.invalidate()
    t["b"] = 2
    assert t.id is not None and t.id != s.id
    new_cookie = cookie_of(store, t)
    assert new_cookie != cookie and "Max-Age=0" not in new_cookie
    assert store.open(new_cookie).to_dict() == {"b": 2}
    assert redis_client.dbsize() == 1


def test_invalidate_after_writes_in_the_same_request(
    store: SessionStore, redis_client: redis.Redis
) -> None:
    s = store.open(None)
    s["a"] = 1
    s.invalidate()
    assert redis_client.dbsize() == 0
    assert set_cookies(store, s) == []  # the browser never had a cookie to delete


# --------------------------------------------------------------------------- cookie policy


def test_default_cookie_attributes(store: SessionStore) -> None:
    s = store.open(None)
    s["a"] = 1
    [cookie] = set_cookies(store, s)
    attrs = attributes(cookie)
    assert "HttpOnly" in attrs
    assert "SameSite=Lax" in attrs
    assert "Path=/" in attrs
    assert "Secure" in attrs  # nothing says this is plain http to a loopback host
    assert not any(a.startswith(("Max-Age", "Expires", "Domain")) for a in attrs)
    local = store.open(None, plain_local=True)
    local["a"] = 1
    assert "Secure" not in attributes(set_cookies(store, local)[0])


@pytest.mark.parametrize(
    "policy",
    [
        CookiePolicy(
            name="sid",
            secure=True,
            domain="example.com",
            path="/app",
            samesite="Strict",
            max_age=3600,
        ),
        {
            "name": "sid",
            "secure": True,
            "domain": "example.com",
            "path": "/app",
            "samesite": "Strict",
            "max_age": 3600,
        },
    ],
    ids=["object", "dict"],
)
def test_cookie_policy_attributes(
    make_store: StoreFactory, policy: CookiePolicy | dict[str, Any]
) -> None:
    store = make_store(cookie=policy)
    s = store.open(None)
    s["a"] = 1
    [cookie] = set_cookies(store, s)
    assert cookie.startswith(f"sid={s.id};")
    attrs = attributes(cookie)
    for expected in (
        "Secure",
        "Domain=example.com",
        "Path=/app",
        "SameSite=Strict",
        "Max-Age=3600",
        "HttpOnly",
    ):
        assert expected in attrs, (expected, cookie)
    assert any(a.startswith("Expires=") for a in attrs)
    # the session cookie is looked up by the configured name
    assert store.open(f"session={s.id}").get("a") is None
    assert store.open(f"sid={s.id}")["a"] == 1
    # deleting keeps path and domain, so the browser really drops it
    t = store.open(f"sid={s.id}")
    t.invalidate()
    [gone] = set_cookies(store, t)
    assert gone.startswith("sid=;")
    assert {"Path=/app", "Domain=example.com", "Max-Age=0"} <= set(attributes(gone))


def test_httponly_and_samesite_can_be_turned_off(make_store: StoreFactory) -> None:
    store = make_store(cookie={"httponly": False, "samesite": None})
    s = store.open(None)
    s["a"] = 1
    [cookie] = set_cookies(store, s)
    assert "HttpOnly" not in attributes(cookie)
    assert not any(a.startswith("SameSite") for a in attributes(cookie))


def test_max_age_cookie_is_refreshed_when_used(make_store: StoreFactory) -> None:
    store = make_store(cookie={"max_age": 600})
    s = store.open(None)
    s["a"] = 1
    cookie = cookie_of(store, s)
    untouched = store.open(cookie)
    assert store.response_headers(untouched) == []
    used = store.open(cookie)
    assert used["a"] == 1
    assert cookie_of(store, used) == cookie  # sliding cookie lifetime, same value
    quiet = make_store(cookie={"max_age": 600}, refresh_cookie=False)
    read = quiet.open(cookie)
    assert read["a"] == 1
    assert set_cookies(quiet, read) == []


def test_existing_session_sends_no_cookie_again(store: SessionStore) -> None:
    s = store.open(None)
    s["a"] = 1
    cookie = cookie_of(store, s)
    t = store.open(cookie)
    t["a"] = 2
    t.incr("n")
    assert store.response_headers(t) == [("Vary", "Cookie")]


def test_vary_cookie_only_when_accessed(store: SessionStore) -> None:
    s = store.open(None)
    s["a"] = 1
    cookie = cookie_of(store, s)
    assert store.response_headers(store.open(cookie)) == []
    assert store.response_headers(store.open(None)) == []
    read = store.open(cookie)
    read.get("zzz")
    assert store.response_headers(read) == [("Vary", "Cookie")]
    fresh = store.open(None)
    "x" in fresh  # noqa: B015
    assert store.response_headers(fresh) == [("Vary", "Cookie")]
