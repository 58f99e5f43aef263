"""Sessions per user: login, the per-user index, listing and revoking, both flavours.

Every test runs on each topology (one server, Sentinel, Cluster; see conftest).
Round trips are counted exactly; a pipeline over several sessions costs one round
trip per node holding them on a Cluster (``pipeline_cost``). Time is driven
forward by rewriting the stored fields (``\\x00i``, index scores) instead of
sleeping. After every test, every key left in Redis must carry a TTL.
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

import httpx
import pytest
import redis
import webtest
from redis.crc import key_slot

from conftest import Counted
from counting import AsyncCounter
from hashsession import ConfigurationError, LimitExceededError, Session, SessionInfo, SessionStore
from hashsession.aio import AsyncSession, AsyncSessionStore
from hashsession.asgi import SessionMiddleware as ASGISessionMiddleware
from hashsession.asgi import session_of
from hashsession.protocol import AGAIN
from hashsession.scripts import (
    CREATED_FIELD,
    EVERY,
    INDEXED_FIELD,
    OWNER_FIELD,
    SEEN_FIELD,
)
from hashsession.topology import is_cluster
from hashsession.wsgi import SessionMiddleware as WSGISessionMiddleware

pytestmark = pytest.mark.all_topologies

StoreFactory = Callable[..., SessionStore]
TTL_MS = 100_000  # the stores' idle timeout (make_store's default of 100 s)
#: The secret the stores here key user digests with (per-user features need one).
USER_KEY = "a user key for the tests"


@pytest.fixture
def make_store(make_store: StoreFactory) -> StoreFactory:
    """conftest's ``make_store``, with a ``user_key``."""

    def make(**kwargs: Any) -> SessionStore:
        kwargs.setdefault("user_key", USER_KEY)
        return make_store(**kwargs)

    return make


# --------------------------------------------------------------------------- helpers


def now_ms() -> int:
    return int(time.time() * 1000)


def cookie_of(store: SessionStore | AsyncSessionStore, session: Session | AsyncSession) -> str:
    """The ``name=value`` of the Set-Cookie the response carries (the next Cookie header)."""
    cookies = [v for k, v in store.response_headers(session) if k == "Set-Cookie"]
    assert len(cookies) == 1, store.response_headers(session)
    return cookies[0].split(";", 1)[0]


def index_of(store: SessionStore | AsyncSessionStore, user: str | int) -> str:
    return store.config.index_key(str(user))


def owner_of(store: SessionStore | AsyncSessionStore, user: str) -> bytes:
    """What the owner field holds for ``user``: NUL and the keyed digest."""
    return store.config.owner_value(user).encode()


def index_cost(counted: Counted | AsyncCounter, store: Any, user: str) -> int:
    """Round trips of the first step of sessions_of/revoke_user: the keyed and the legacy
    index, in one pipeline (one per node on a Cluster)."""
    digests = store.config.user_digests(user)
    return counted.pipeline_cost([store.config.index_key_of(d) for d in digests])


def members(client: Any, store: SessionStore | AsyncSessionStore, user: str) -> set[bytes]:
    """The session keys in ``user``'s index (not the markers of logins on a Cluster)."""
    return {m for m in client.zrange(index_of(store, user), 0, -1) if not m.startswith(b"\x00")}


def markers(client: Any, store: SessionStore | AsyncSessionStore, user: str) -> set[bytes]:
    """The login markers in ``user``'s index (on a Cluster, for a while after each login)."""
    return {m for m in client.zrange(index_of(store, user), 0, -1) if m.startswith(b"\x00")}


def grace_over(client: Any, store: SessionStore | AsyncSessionStore, user: str) -> None:
    """As if the logins' grace time had passed: their markers are gone from the index."""
    gone = markers(client, store, user)
    if gone:
        client.zrem(index_of(store, user), *gone)


def key(session: Session | AsyncSession) -> str:
    assert session.core.key is not None
    return session.core.key


def assert_every_key_expires(client: Any) -> None:
    for name in client.scan_iter(count=1000):
        assert client.pttl(name) > 0, f"{name!r} has no TTL"


@pytest.fixture(autouse=True)
def every_key_expires(redis_client: redis.Redis) -> Iterator[None]:
    """After each test, nothing it left on the shared server lacks a TTL."""
    yield
    assert_every_key_expires(redis_client)


@pytest.fixture
def warm(redis_client: redis.Redis) -> None:
    """Load every script, so EVALSHA never meets NOSCRIPT during a counted block."""
    for script in EVERY:
        assert redis_client.script_load(script.source) == script.sha


@pytest.fixture
def cstore(counted: Counted, warm: None, make_store: StoreFactory) -> SessionStore:
    """A store whose round trips ``counted`` counts."""
    return make_store(redis=counted.client)


def apart(store: SessionStore | AsyncSessionStore) -> bool:
    """Whether the store's logins index first, then make the session: on a Cluster, where
    the index lives in another slot. Elsewhere a login is one script that does both."""
    return store.config.same_slot_ids


def logged_in(store: SessionStore, user: str, **data: Any) -> tuple[Session, str]:
    """A new session holding ``data``, logged in as ``user``: it and its cookie."""
    session = store.open(None)
    session.update(data or {"a": 1})
    session.login(user)
    return session, cookie_of(store, session)


# --------------------------------------------------------------------------- login


def test_login_sets_the_owner_under_a_new_id(
    cstore: SessionStore, counted: Counted, redis_client: redis.Redis
) -> None:
    session = cstore.open(None)
    session.update(a=1, cart=[1, 2])
    old_id, old_key = session.id, key(session)
    later = cstore.open(cookie_of(cstore, session))
    # LOGIN: slide, index, rename, owner; on a Cluster, INDEX first, then LOGIN_APART.
    with counted.expect(2 if apart(cstore) else 1):
        later.login("ann")
    assert later.id not in (None, old_id)
    assert redis_client.exists(old_key) == 0
    stored = redis_client.hgetall(key(later))
    assert stored[OWNER_FIELD.encode()] == owner_of(cstore, "ann")
    assert int(stored[SEEN_FIELD.encode()]) <= now_ms()
    good = int(stored[INDEXED_FIELD.encode()])
    assert good >= now_ms() + TTL_MS  # the entry outlasts the session...
    assert good <= now_ms() + TTL_MS * 3 // 2  # ...by half an idle timeout at most
    assert dict(cstore.open(cookie_of(cstore, later))) == {"a": 1, "cart": [1, 2]}
    assert len(later) == 2  # the owner's fields are hidden
    stale = cstore.open_id(cstore.config.cookie_value(old_id or ""))
    assert stale.get("a") is None and stale.new
    index = index_of(cstore, "ann")
    entries = redis_client.zrange(index, 0, -1, withscores=True)
    if apart(cstore):  # and the login's marker, new key and old key, for the grace time
        marker = b"\x00p" + key(later).encode() + b"\x00" + old_key.encode()
        assert entries[0][0] == marker
        assert 0 < entries[0][1] - now_ms() <= 30_000 + 2 * 10_000 + 5_000
        entries = entries[1:]
    assert entries == [(key(later).encode(), good)]
    # expires with its entry (client and server clocks and rounding differ by a few ms)
    assert abs(good - now_ms() - redis_client.pttl(index)) < 1000


def test_login_of_a_new_session_creates_it_in_two_round_trips(
    cstore: SessionStore, counted: Counted, redis_client: redis.Redis
) -> None:
    session = cstore.open(None)
    # LOGIN_NEW: index, create with the owner's fields; on a Cluster, INDEX, then CREATE.
    with counted.expect(2 if apart(cstore) else 1):
        session.login(42)
    assert session.id is not None and session.new
    assert len(session) == 0
    assert redis_client.hget(key(session), OWNER_FIELD) == owner_of(cstore, "42")
    assert members(redis_client, cstore, "42") == {key(session).encode()}
    assert [i.current for i in cstore.sessions_of("42", current=session)] == [True]


def test_login_never_keeps_a_client_chosen_id(
    make_store: StoreFactory, redis_client: redis.Redis
) -> None:
    store = make_store(key_layout="raw", adopt_unknown_ids=True)
    session = store.open_id("chosen-by-the-client")
    session.login("ann")
    assert session.id != "chosen-by-the-client"
    assert redis_client.exists(store.config.key_of("chosen-by-the-client")) == 0
    assert members(redis_client, store, "ann") == {key(session).encode()}


def test_login_after_expiry_starts_a_new_session(
    cstore: SessionStore, counted: Counted, redis_client: redis.Redis
) -> None:
    session = cstore.open(None)
    session["a"] = 1
    cookie = cookie_of(cstore, session)
    redis_client.delete(key(session))  # as if it had expired
    later = cstore.open(cookie)
    # LOGIN finds it gone, LOGIN_NEW; on a Cluster INDEX, LOGIN_APART, CREATE (the same entry).
    with counted.expect(3 if apart(cstore) else 2):
        later.login("ann")
    assert later.id not in (None, session.id)
    assert later.new
    assert cookie_of(cstore, later) != cookie
    assert members(redis_client, cstore, "ann") == {key(later).encode()}


def test_login_again_replaces_the_entry(
    cstore: SessionStore, counted: Counted, redis_client: redis.Redis
) -> None:
    session, cookie = logged_in(cstore, "ann")
    later = cstore.open(cookie)
    # One LOGIN; on a Cluster, INDEX, LOGIN_APART, then INDEX to drop the old key's entry.
    with counted.expect(3 if apart(cstore) else 1):
        later.login("ann")
    assert members(redis_client, cstore, "ann") == {key(later).encode()}
    assert redis_client.exists(key(session)) == 0


def test_login_as_someone_else_moves_the_session_between_indexes(
    cstore: SessionStore, counted: Counted, redis_client: redis.Redis
) -> None:
    session, cookie = logged_in(cstore, "ann")
    later = cstore.open(cookie)
    # LOGIN (with bob's index), INDEX (ann: drop the old key); on a Cluster INDEX (bob) first.
    with counted.expect(3 if apart(cstore) else 2):
        later.login("bob")
    assert redis_client.hget(key(later), OWNER_FIELD) == owner_of(cstore, "bob")
    assert members(redis_client, cstore, "bob") == {key(later).encode()}
    assert redis_client.exists(index_of(cstore, "ann")) == 0  # emptied, so gone
    assert cstore.open(cookie_of(cstore, later))["a"] == 1  # data kept
    assert redis_client.exists(key(session)) == 0


def test_cookie_after_login_through_a_wsgi_app(
    store: SessionStore, redis_client: redis.Redis
) -> None:
    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        session: Session = environ["hashsession"]
        path = environ["PATH_INFO"]
        if path == "/login":
            session.login(environ["QUERY_STRING"])
        elif path == "/visit":
            session.incr("visits")
        body = f"{session.id}|{session.get('visits')}".encode()
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body]

    client = webtest.TestApp(WSGISessionMiddleware(app, store=store))
    anonymous_id = client.get("/visit").text.split("|")[0]
    response = client.get("/login?ann")
    new_id = response.text.split("|")[0]
    assert new_id != anonymous_id
    assert store.config.cookie_value(new_id) in response.headers["Set-Cookie"]
    assert client.get("/visit").text == f"{new_id}|2"  # the browser now sends the new id
    assert [i.current for i in store.sessions_of("ann", current=new_id)] == [True]
    assert redis_client.exists(store.config.key_of(anonymous_id)) == 0


def test_user_ids_and_the_cap_setting_are_checked(make_store: StoreFactory) -> None:
    session = make_store().open(None)
    for bad in (True, None, 1.5, b"ann"):
        with pytest.raises(TypeError):
            session.login(bad)  # type: ignore[arg-type]
    for bad in ("", "x" * 1025, "\ud800"):
        with pytest.raises(ValueError):
            session.login(bad)
    assert session.id is None  # nothing was sent
    for cap in (0, -1, True, 2.0, "3"):
        with pytest.raises(ConfigurationError) as info:
            make_store(max_sessions_per_user=cap)
        assert info.value.setting == "max_sessions_per_user"
    assert make_store(max_sessions_per_user=1).config.max_sessions_per_user == 1


def test_int_and_str_user_ids_name_the_same_user(
    store: SessionStore, redis_client: redis.Redis
) -> None:
    first, _ = logged_in(store, "7")
    second = store.open(None)
    second.login(7)
    assert members(redis_client, store, "7") == {key(first).encode(), key(second).encode()}
    assert index_of(store, 7) == store.config.prefix + "u:" + store.config.user_tag("7")
    assert len(store.config.user_tag("7")) == 32


# --------------------------------------------------------------------------- sessions_of


def test_sessions_of_lists_created_and_last_seen(
    cstore: SessionStore, counted: Counted, redis_client: redis.Redis
) -> None:
    before = datetime.now(timezone.utc).replace(microsecond=0)
    one, cookie_one = logged_in(cstore, "ann")
    two, _ = logged_in(cstore, "ann")
    redis_client.hset(key(one), SEEN_FIELD, now_ms() - 60_000)  # seen a minute ago
    redis_client.hset(key(two), SEEN_FIELD, now_ms() - 30_000)
    # The indexes (keyed, legacy) in one pipeline, then one pipeline over both sessions
    # (on a cluster, one per node each).
    both = counted.pipeline_cost([key(one), key(two)])
    with counted.expect(index_cost(counted, cstore, "ann") + both):
        infos = cstore.sessions_of("ann")
    tag = cstore.config.user_tag("ann")
    assert [i.handle for i in infos] == [
        tag + "." + hashlib.sha1(key(s).encode()).hexdigest() for s in (two, one)
    ]  # most recently seen first
    for info in infos:
        assert isinstance(info, SessionInfo)
        assert before <= info.created <= datetime.now(timezone.utc)
        assert info.created.tzinfo is timezone.utc
        ahead = (info.expires_at - datetime.now(timezone.utc)).total_seconds()
        assert 90 < ahead <= 100
        assert info.current is False
    assert infos[1].last_seen < infos[0].last_seen
    assert (datetime.now(timezone.utc) - infos[1].last_seen).total_seconds() >= 59
    cstore.open(cookie_one).get("a")  # a later request sees session one again
    infos = cstore.sessions_of("ann", current=one)
    assert infos[0].current and infos[0].last_seen > infos[1].last_seen
    assert (datetime.now(timezone.utc) - infos[0].last_seen).total_seconds() < 5
    with pytest.raises(AttributeError):
        infos[0].handle = "x"  # type: ignore[misc]


def test_sessions_of_prunes_vanished_sessions(
    cstore: SessionStore, counted: Counted, redis_client: redis.Redis
) -> None:
    alive, _ = logged_in(cstore, "ann")
    invalidated, _ = logged_in(cstore, "ann")
    expired, _ = logged_in(cstore, "ann")
    old_key = key(invalidated)
    invalidated.invalidate()
    redis_client.delete(key(expired))  # as if its TTL had run out
    assert len(members(redis_client, cstore, "ann")) == 3  # invalidated entries stay...
    if apart(cstore):
        # On a Cluster a login's entry stays for its grace time even if the session is
        # missing (it may be a login still making it), but it is never listed.
        assert len(cstore.sessions_of("ann")) == 1
        assert len(members(redis_client, cstore, "ann")) == 3
        grace_over(redis_client, cstore, "ann")
    # The index, the pipeline (one per node on a cluster), the removal of two dead entries.
    pipeline = counted.pipeline_cost([key(alive), old_key, key(expired)])
    with counted.expect(index_cost(counted, cstore, "ann") + pipeline + 1):
        infos = cstore.sessions_of("ann")
    assert len(infos) == 1
    assert members(redis_client, cstore, "ann") == {key(alive).encode()}  # ...until pruned
    assert old_key.encode() not in members(redis_client, cstore, "ann")
    with counted.expect(index_cost(counted, cstore, "ann") + 1):  # one session left: one node
        assert len(cstore.sessions_of("ann")) == 1
    with counted.expect(index_cost(counted, cstore, "nobody")):
        assert cstore.sessions_of("nobody") == []


def test_entries_past_their_score_are_pruned_and_the_index_expires(
    store: SessionStore, redis_client: redis.Redis
) -> None:
    one, _ = logged_in(store, "ann")
    two, _ = logged_in(store, "ann")
    index = index_of(store, "ann")
    redis_client.zadd(index, {key(one): now_ms() - 1})  # an entry whose time is up
    assert [i.handle[-40:] for i in store.sessions_of("ann")] == [
        hashlib.sha1(key(two).encode()).hexdigest()
    ]
    assert members(redis_client, store, "ann") == {key(two).encode()}
    score = redis_client.zscore(index, key(two))
    assert score is not None
    assert abs(score - now_ms() - redis_client.pttl(index)) < 1000  # expires with its last entry
    redis_client.zadd(index, {key(two): now_ms() - 1})
    assert store.sessions_of("ann") == []
    assert redis_client.exists(index) == 0


def test_handles_are_not_cookies(store: SessionStore) -> None:
    session, _ = logged_in(store, "ann", secret="s")
    (info,) = store.sessions_of("ann")
    assert session.id is not None and session.id not in info.handle
    assert key(session) not in info.handle
    assert store.open_id(info.handle).get("secret") is None
    assert store.open(f"{store.cookie.name}={info.handle}").get("secret") is None


# --------------------------------------------------------------------------- revoking


def test_revoke_by_id(cstore: SessionStore, counted: Counted, redis_client: redis.Redis) -> None:
    one, cookie_one = logged_in(cstore, "ann")
    two, _ = logged_in(cstore, "ann")
    assert one.id is not None
    with counted.expect(2):  # REVOKE on the session, INDEX on the owner's index
        assert cstore.revoke(one.id) is True
    assert redis_client.exists(key(one)) == 0
    assert members(redis_client, cstore, "ann") == {key(two).encode()}
    assert cstore.open(cookie_one).get("a") is None  # that browser is logged out
    with counted.expect(1):
        assert cstore.revoke(one.id) is False  # already gone
    assert cstore.revoke("not an id") is False
    assert two.id is not None
    assert cstore.revoke(two.id, user_id="bob") is False  # not bob's
    assert redis_client.exists(key(two)) == 1
    assert cstore.revoke(two.id, user_id="ann") is True
    assert redis_client.exists(index_of(cstore, "ann")) == 0


def test_revoke_an_unowned_session(store: SessionStore, redis_client: redis.Redis) -> None:
    session = store.open(None)
    session["a"] = 1
    assert session.id is not None
    assert store.revoke(session.id, user_id="ann") is False
    assert store.revoke(session.id) is True
    assert redis_client.dbsize() == 0


def test_revoke_takes_bare_ids_when_cookies_are_signed(
    make_store: StoreFactory, redis_client: redis.Redis
) -> None:
    store = make_store(secret_keys=["k1"])
    session, cookie = logged_in(store, "ann")
    assert session.id is not None and session.id not in (cookie, cookie.split("=", 1)[1])
    assert store.revoke(cookie.split("=", 1)[1]) is False  # a cookie value is not an id
    assert store.revoke(session.id) is True
    assert redis_client.dbsize() == 0


def test_revoke_by_handle(
    cstore: SessionStore, counted: Counted, redis_client: redis.Redis
) -> None:
    one, _ = logged_in(cstore, "ann")
    two, _ = logged_in(cstore, "ann")
    handles = {i.handle: i for i in cstore.sessions_of("ann", current=two)}
    (handle_one,) = [h for h, i in handles.items() if not i.current]
    assert cstore.revoke(handle_one, user_id="bob") is False  # a handle of someone else's
    # INDEX finds the entry, then DEL and INDEX dropping the entry, in one pipeline (the
    # entry goes only once the session is gone); on a Cluster, one after the other.
    with counted.expect(3 if apart(cstore) else 2):
        assert cstore.revoke(handle_one) is True
    assert redis_client.exists(key(one)) == 0
    assert members(redis_client, cstore, "ann") == {key(two).encode()}
    assert cstore.revoke(handle_one) is False


def test_revoke_user_keeps_the_given_session(
    cstore: SessionStore, counted: Counted, redis_client: redis.Redis
) -> None:
    sessions = [logged_in(cstore, "ann")[0] for _ in range(4)]
    other, _ = logged_in(cstore, "bob")
    here = sessions[0]
    # The indexes (keyed, legacy) name the others, then one pipeline of DEL and the INDEX
    # dropping their entries (on a cluster, the DEL pipeline costs one per node, and the
    # INDEX follows it).
    doomed = [key(s) for s in sessions[1:]]
    dels = counted.pipeline_cost(doomed)
    with counted.expect(index_cost(counted, cstore, "ann") + dels + apart(cstore)):
        assert cstore.revoke_user("ann", keep=here) == 3
    assert [redis_client.exists(key(s)) for s in sessions] == [1, 0, 0, 0]
    assert members(redis_client, cstore, "ann") == {key(here).encode()}
    assert redis_client.exists(key(other)) == 1
    assert cstore.revoke_user("ann", keep=here) == 0
    assert here["a"] == 1  # the kept session goes on


@pytest.mark.parametrize("how", ["id", "handle"])
def test_revoke_user_keep_by_id_or_handle(
    store: SessionStore, redis_client: redis.Redis, how: str
) -> None:
    keep, _ = logged_in(store, "ann")
    gone, _ = logged_in(store, "ann")
    if how == "id":
        assert keep.id is not None
        token = keep.id
    else:
        (token,) = [i.handle for i in store.sessions_of("ann", current=keep) if i.current]
    assert store.revoke_user("bob", keep=token) == 0  # bob has no sessions
    assert store.revoke_user("ann", keep=token) == 1
    assert redis_client.exists(key(keep)) == 1
    assert redis_client.exists(key(gone)) == 0


def test_revoke_user_without_keep_logs_out_everywhere(
    store: SessionStore, redis_client: redis.Redis
) -> None:
    for _ in range(3):
        logged_in(store, "ann")
    invalidated, _ = logged_in(store, "ann")
    dead_key = key(invalidated)
    invalidated.invalidate()  # its entry is still indexed, but it is not live
    assert store.revoke_user("ann") == 3
    if apart(store):  # a missing session's entry stays for its login's grace time
        assert members(redis_client, store, "ann") == {dead_key.encode()}
        assert store.sessions_of("ann") == []
        grace_over(redis_client, store, "ann")
        assert store.revoke_user("ann") == 0
    assert redis_client.dbsize() == 0


# --------------------------------------------------------------------------- the cap


def test_the_cap_evicts_the_session_that_expires_first(
    make_store: StoreFactory, counted: Counted, warm: None, redis_client: redis.Redis
) -> None:
    store = make_store(redis=counted.client, max_sessions_per_user=2)
    one, _ = logged_in(store, "ann")
    two, _ = logged_in(store, "ann")
    index = index_of(store, "ann")
    redis_client.zadd(index, {key(two): now_ms() + 10 * TTL_MS})  # one is the older
    three = store.open(None)
    # LOGIN_NEW indexes, deletes and unindexes the evicted one, creates; on a Cluster:
    # INDEX (names one to evict), CREATE, DEL of it, INDEX (unindexes it).
    with counted.expect(4 if apart(store) else 1):
        three.login("ann")
    assert redis_client.exists(key(one)) == 0
    assert members(redis_client, store, "ann") == {key(two).encode(), key(three).encode()}
    # The newest login is never evicted, even when its entry expires first.
    redis_client.zadd(index, {key(two): now_ms() + 20 * TTL_MS, key(three): now_ms() + 30 * TTL_MS})
    four = store.open(None)
    four.login("ann")
    assert members(redis_client, store, "ann") == {key(three).encode(), key(four).encode()}
    assert redis_client.exists(key(two)) == 0
    assert len(store.sessions_of("ann")) == 2


def test_the_cap_holds_for_concurrent_logins(
    make_store: StoreFactory, redis_client: redis.Redis
) -> None:
    store = make_store(max_sessions_per_user=3)
    errors: list[BaseException] = []

    def login() -> None:
        try:
            for _ in range(3):
                store.open(None).login("ann")
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=login) for _ in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    if is_cluster(store.client):
        # On a Cluster an eviction that meets a login still making its session cannot
        # stop it, and the user is over the cap until the next login
        # (docs/sessions-per-user.md): that next login restores it.
        store.open(None).login("ann")
    assert len(store.sessions_of("ann")) == 3
    assert redis_client.dbsize() == 4  # three sessions and the index


def test_concurrent_logins_of_one_user_are_all_indexed(
    store: SessionStore, redis_client: redis.Redis
) -> None:
    anonymous = []
    for n in range(8):
        session = store.open(None)
        session["n"] = n
        anonymous.append(cookie_of(store, session))
    ids: list[str] = []
    lock = threading.Lock()

    def login(cookie: str) -> None:
        session = store.open(cookie)
        session.login("ann")
        with lock:
            ids.append(session.id or "")

    threads = [threading.Thread(target=login, args=(c,)) for c in anonymous]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(ids)) == 8
    assert members(redis_client, store, "ann") == {store.config.key_of(i).encode() for i in ids}
    assert len(store.sessions_of("ann")) == 8


# ------------------------------------------------------------------ a login's two steps, raced
#
# On a Cluster a login puts the new key's entry (and its marker) in the index first, then
# renames or creates the session in another slot. These tests run the two steps by hand,
# as the session does, with another request in between. Off a Cluster the store is made
# to log in that way too (on_the_cluster_path), so every topology runs them.


def on_the_cluster_path(store: SessionStore | AsyncSessionStore) -> None:
    store.config = replace(store.config, same_slot_ids=True)


def login_around(
    session: Session, user: str, meanwhile: Callable[[], Any], *, renamed: bool = False
) -> None:
    """``session.login(user)``, with ``meanwhile()`` run between its index entry and its
    session (or, ``renamed``, between the session and the upkeep after it); the rest of
    the login, a retry included, runs as ``login`` runs it."""
    core = session.core
    cmd, finish, _ = core.plan_login(user)
    assert core.before and cmd is not None and finish is not None, "not a login on a Cluster"
    session._upkeep(core.before)  # the INDEX put: the new key and its marker
    if not renamed:
        meanwhile()
    out = finish(session._send(cmd, None))  # LOGIN_APART or CREATE
    if out is AGAIN:  # the session was gone: login() plans again
        session.login(user)
        return
    if renamed:
        meanwhile()
    if core.after:
        session._upkeep(core.after)


async def alogin_around(session: AsyncSession, user: str, meanwhile: Callable[[], Any]) -> None:
    core = session.core
    cmd, finish, _ = core.plan_login(user)
    assert core.before and cmd is not None and finish is not None
    await session._upkeep(core.before)
    await meanwhile()
    out = finish(await session._send(cmd, None))
    if out is AGAIN:
        await session.login(user)
    elif core.after:
        await session._upkeep(core.after)


def assert_every_owned_session_indexed(client: Any, store: SessionStore | AsyncSessionStore) -> int:
    """No session is owned without being in its owner's index; how many are owned."""
    owned = 0
    for name in client.scan_iter(count=1000):
        if client.type(name) != b"hash":
            continue
        owner = client.hget(name, OWNER_FIELD)
        if owner is not None:
            owned += 1
            index = store.config.index_of_owner(owner)
            assert client.zscore(index, name) is not None, f"{name!r} is not indexed"
    return owned


def about_to_log_in(store: SessionStore, scenario: str) -> Session:
    """A session about to log in as ann: ``stored`` (anonymous, holding a=1), ``again``
    (ann's already), or ``new`` (nothing stored yet)."""
    if scenario == "new":
        return store.open(None)
    seed = store.open(None)
    seed["a"] = 1
    if scenario == "again":
        seed.login("ann")
    session = store.open(cookie_of(store, seed))
    assert session.get("a") == 1
    return session


RACED = ["stored", "again", "new"]


@pytest.mark.parametrize("scenario", RACED)
def test_a_listing_between_a_logins_two_steps_keeps_its_entry(
    store: SessionStore, redis_client: redis.Redis, scenario: str
) -> None:
    on_the_cluster_path(store)
    session = about_to_log_in(store, scenario)
    listed: list[list[SessionInfo]] = []
    # The listing finds the new key missing: before markers, it pruned the entry, and the
    # session made a moment later was owned but out of the index.
    login_around(session, "ann", lambda: listed.append(store.sessions_of("ann")))
    assert len(listed[0]) == (1 if scenario == "again" else 0)  # the old key, if ann's
    assert key(session).encode() in members(redis_client, store, "ann")
    assert [i.current for i in store.sessions_of("ann", current=session)] == [True]
    assert assert_every_owned_session_indexed(redis_client, store) == 1
    assert store.revoke_user("ann") == 1  # log out everywhere finds it
    assert assert_every_owned_session_indexed(redis_client, store) == 0


@pytest.mark.parametrize("scenario", RACED)
def test_a_logout_everywhere_between_a_logins_two_steps_misses_nothing(
    store: SessionStore, redis_client: redis.Redis, scenario: str
) -> None:
    on_the_cluster_path(store)
    session = about_to_log_in(store, scenario)
    old_key = session.core.key
    revoked: list[int] = []
    # revoke_user deletes the new key (missing still) and, named by the marker, the old
    # one: the rename then finds the session gone, and the login makes a new, empty one
    # under the entry it put in, which stays (before markers: the rename brought the
    # session in after the logout, owned and out of the index, its data kept).
    login_around(session, "ann", lambda: revoked.append(store.revoke_user("ann")))
    assert assert_every_owned_session_indexed(redis_client, store) == 1
    assert session.get("a") is None  # nothing survived the logout
    if old_key is not None:
        assert redis_client.exists(old_key) == 0
    assert revoked == [0 if scenario == "new" else 1]
    assert [i.current for i in store.sessions_of("ann", current=session)] == [True]
    assert store.revoke_user("ann") == 1
    assert assert_every_owned_session_indexed(redis_client, store) == 0
    assert members(redis_client, store, "ann") == set()


@pytest.mark.parametrize("renamed", [False, True], ids=["before-the-rename", "after-it"])
def test_a_revoke_by_handle_during_a_relogin_ends_the_session(
    store: SessionStore, redis_client: redis.Redis, renamed: bool
) -> None:
    on_the_cluster_path(store)
    session = about_to_log_in(store, "again")
    (info,) = store.sessions_of("ann")
    revoked: list[bool] = []
    # The handle names the old key, indexed until the login's upkeep removes it; the
    # marker names the new key as its successor, so the session ends wherever it is
    # (before markers, once renamed it survived: the old key alone was deleted).
    revoke = lambda: revoked.append(store.revoke(info.handle))  # noqa: E731
    login_around(session, "ann", revoke, renamed=renamed)
    assert revoked == [True]
    assert session.get("a") is None
    assert assert_every_owned_session_indexed(redis_client, store) == (0 if renamed else 1)


def test_an_eviction_between_a_logins_two_steps_leaves_it_indexed(
    make_store: StoreFactory, redis_client: redis.Redis
) -> None:
    store = make_store(max_sessions_per_user=1)
    on_the_cluster_path(store)
    session = about_to_log_in(store, "stored")
    other: list[Session] = []

    def another_login() -> None:  # over the cap: evicts the entry of the login under way
        other.append(logged_in(store, "ann")[0])

    login_around(session, "ann", another_login)
    assert session.get("a") == 1
    # The cap could not stop a session it found missing; it is indexed, over the cap
    # until the next login.
    assert assert_every_owned_session_indexed(redis_client, store) == 2
    third, _ = logged_in(store, "ann")
    assert assert_every_owned_session_indexed(redis_client, store) == 1
    assert [i.current for i in store.sessions_of("ann", current=third)] == [True]


async def test_async_races_between_a_logins_two_steps(
    redis_url: str, redis_client: redis.Redis
) -> None:
    store = AsyncSessionStore(redis=redis_url, ttl=100, user_key=USER_KEY)
    on_the_cluster_path(store)
    try:
        session = store.open(None)
        await session.set("a", 1)

        async def listing() -> None:
            assert await store.sessions_of("ann") == []

        await alogin_around(session, "ann", listing)
        assert assert_every_owned_session_indexed(redis_client, store) == 1
        later = store.open(cookie_of(store, session))
        assert await later.get("a") == 1

        async def logout() -> None:
            assert await store.revoke_user("ann") == 1  # the one logged in above

        await alogin_around(later, "ann", logout)
        assert await later.get("a") is None
        assert assert_every_owned_session_indexed(redis_client, store) == 1
        assert await store.revoke_user("ann") == 1
        assert assert_every_owned_session_indexed(redis_client, store) == 0
    finally:
        await store.aclose()


# --------------------------------------------------------------------------- keeping it fresh


def test_the_index_entry_is_refreshed_once_per_half_idle_timeout(
    cstore: SessionStore, counted: Counted, redis_client: redis.Redis
) -> None:
    session, cookie = logged_in(cstore, "ann")
    index, name = index_of(cstore, "ann"), key(session)
    with counted.expect(2):  # not due: N operations, N round trips
        later = cstore.open(cookie)
        assert later["a"] == 1
        later["b"] = 2
    # Half the idle timeout has not yet gone by: the entry outlasts the new expiry.
    redis_client.hset(name, INDEXED_FIELD, now_ms() + TTL_MS + 5_000)
    with counted.expect(1):
        assert cstore.open(cookie).get("a") == 1
    # Now it has: the first command reports it, and one INDEX follows it.
    redis_client.hset(name, INDEXED_FIELD, now_ms() + TTL_MS - 5_000)
    redis_client.zadd(index, {name: now_ms() + TTL_MS - 5_000})
    with counted.expect(3) as c:
        later = cstore.open(cookie)
        assert later["a"] == 1
        later["b"] = 3
    assert c.commands == ["EVALSHA"] * 3  # OPEN + get, INDEX, the live set script
    good = int(redis_client.hget(name, INDEXED_FIELD) or 0)
    assert redis_client.zscore(index, name) == good
    assert good >= now_ms() + redis_client.pttl(name)  # outlasts the session again
    assert redis_client.pttl(index) > TTL_MS
    with counted.expect(1):  # and is not due again
        assert cstore.open(cookie).get("b") == 3


@pytest.mark.parametrize(
    "first",
    [
        lambda s: s.get("a"),
        lambda s: s.__setitem__("a", 2),
        lambda s: s.incr("n"),
        lambda s: dict(s),
        lambda s: s.touch(),
        lambda s: "a" in s,
    ],
    ids=["get", "set", "incr", "dict", "touch", "contains"],
)
def test_any_first_command_refreshes_a_due_entry(
    cstore: SessionStore,
    counted: Counted,
    redis_client: redis.Redis,
    first: Callable[[Session], Any],
) -> None:
    session, cookie = logged_in(cstore, "ann")
    name, index = key(session), index_of(cstore, "ann")
    redis_client.hset(name, INDEXED_FIELD, 0)
    redis_client.zadd(index, {name: now_ms() + 1000})
    with counted.expect(2):
        first(cstore.open(cookie))
    assert (redis_client.zscore(index, name) or 0) >= now_ms() + TTL_MS


def test_a_failed_first_command_does_not_record_the_refresh(
    make_store: StoreFactory, redis_client: redis.Redis
) -> None:
    store = make_store(max_keys=1)
    session, cookie = logged_in(store, "ann")
    redis_client.hset(key(session), INDEXED_FIELD, 0)
    with pytest.raises(LimitExceededError):
        store.open(cookie)["b"] = 2  # over the limit: OPEN answers an error
    assert redis_client.hget(key(session), INDEXED_FIELD) == b"0"  # still due
    store.open(cookie).get("a")
    assert int(redis_client.hget(key(session), INDEXED_FIELD) or 0) > now_ms()


def test_a_longer_timeout_moves_the_entry_along(
    cstore: SessionStore, counted: Counted, redis_client: redis.Redis
) -> None:
    session, cookie = logged_in(cstore, "ann")
    with counted.expect(2):  # touch (which reports the entry due), INDEX
        cstore.open(cookie).adjust_timeout(1000)
    score = redis_client.zscore(index_of(cstore, "ann"), key(session)) or 0
    assert score >= now_ms() + 1_000_000 - 1000


def test_the_absolute_lifetime_caps_the_entry(
    make_store: StoreFactory, redis_client: redis.Redis
) -> None:
    store = make_store(ttl=100, absolute_ttl=120)
    session, _ = logged_in(store, "ann")
    created = int(redis_client.hget(key(session), CREATED_FIELD) or 0)
    good = int(redis_client.hget(key(session), INDEXED_FIELD) or 0)
    assert created + 100_000 <= good <= created + 120_000
    fresh = store.open(None)
    fresh.login("bob")
    created = int(redis_client.hget(key(fresh), CREATED_FIELD) or 0)
    assert redis_client.zscore(index_of(store, "bob"), key(fresh)) == created + 120_000


def test_regenerate_moves_an_owned_entry(
    cstore: SessionStore, counted: Counted, redis_client: redis.Redis
) -> None:
    session, cookie = logged_in(cstore, "ann")
    old = key(session)
    later = cstore.open(cookie)
    with counted.expect(2):  # OPEN + rename, then INDEX (drop old key, add new)
        later.regenerate()
    assert members(redis_client, cstore, "ann") == {key(later).encode()}
    with counted.expect(2):  # a live regenerate too
        later.regenerate()
    assert members(redis_client, cstore, "ann") == {key(later).encode()}
    assert old.encode() not in members(redis_client, cstore, "ann")
    score = redis_client.zscore(index_of(cstore, "ann"), key(later))
    assert score == int(redis_client.hget(key(later), INDEXED_FIELD) or 0)
    unowned = cstore.open(None)
    unowned["a"] = 1
    with counted.expect(1):  # unowned sessions regenerate as before
        cstore.open(cookie_of(cstore, unowned)).regenerate()


def test_unowned_sessions_keep_their_round_trip_budget(
    cstore: SessionStore, counted: Counted, redis_client: redis.Redis
) -> None:
    session = cstore.open(None)
    session["a"] = 1
    cookie = cookie_of(cstore, session)
    redis_client.hset(key(session), INDEXED_FIELD, 0)  # meaningless without an owner
    with counted.expect(3):
        later = cstore.open(cookie)
        later.get("a")
        later["b"] = 2
        later.touch(200)
    assert redis_client.hget(key(session), SEEN_FIELD) is None


# --------------------------------------------------------------------------- asyncio


@pytest.fixture
async def astore(redis_url: str, warm: None) -> AsyncIterator[AsyncSessionStore]:
    counter = await AsyncCounter(redis_url).ready()
    store = AsyncSessionStore(redis=counter.client, ttl=100, user_key=USER_KEY)
    store.counter = counter  # type: ignore[attr-defined]
    yield store
    await counter.aclose()


def counter_of(store: AsyncSessionStore) -> AsyncCounter:
    counter: AsyncCounter = store.counter  # type: ignore[attr-defined]
    counter.count = 0
    return counter


async def alogged_in(store: AsyncSessionStore, user: str) -> tuple[AsyncSession, str]:
    session = store.open(None)
    await session.set("a", 1)
    await session.login(user)
    return session, cookie_of(store, session)


async def test_async_login(astore: AsyncSessionStore, redis_client: redis.Redis) -> None:
    session = astore.open(None)
    await session.update(a=1)
    later = astore.open(cookie_of(astore, session))
    counter = counter_of(astore)
    await later.login("ann")
    assert counter.count == (2 if apart(astore) else 1)
    assert later.id not in (None, session.id)
    assert redis_client.exists(key(session)) == 0
    assert redis_client.hget(key(later), OWNER_FIELD) == owner_of(astore, "ann")
    assert await astore.open(cookie_of(astore, later)).get("a") == 1
    fresh = astore.open(None)
    counter = counter_of(astore)
    await fresh.login("ann")
    assert counter.count == (2 if apart(astore) else 1)
    assert members(redis_client, astore, "ann") == {key(later).encode(), key(fresh).encode()}


async def test_async_sessions_of_and_revoke(
    astore: AsyncSessionStore, redis_client: redis.Redis
) -> None:
    one, cookie_one = await alogged_in(astore, "ann")
    two, _ = await alogged_in(astore, "ann")
    three, _ = await alogged_in(astore, "ann")
    redis_client.hset(key(one), SEEN_FIELD, now_ms() - 60_000)
    counter = counter_of(astore)
    infos = await astore.sessions_of("ann", current=three)
    sessions = counter.pipeline_cost([key(s) for s in (one, two, three)])
    assert counter.count == index_cost(counter, astore, "ann") + sessions
    assert len(infos) == 3 and infos[-1].last_seen < infos[0].last_seen
    assert [i.current for i in infos].count(True) == 1
    assert one.id is not None
    assert await astore.revoke(one.id, user_id="bob") is False
    assert await astore.revoke(one.id) is True
    assert await astore.open(cookie_one).get("a") is None
    (handle,) = [i.handle for i in await astore.sessions_of("ann", current=two) if i.current]
    assert await astore.revoke_user("ann", keep=handle) == 1
    assert members(redis_client, astore, "ann") == {key(two).encode()}
    assert await astore.revoke(handle) is True
    assert redis_client.dbsize() == 0


async def test_async_refresh_and_regenerate(
    astore: AsyncSessionStore, redis_client: redis.Redis
) -> None:
    session, cookie = await alogged_in(astore, "ann")
    name, index = key(session), index_of(astore, "ann")
    counter = counter_of(astore)
    assert await astore.open(cookie).get("a") == 1
    assert counter.count == 1
    redis_client.hset(name, INDEXED_FIELD, 0)
    redis_client.zadd(index, {name: now_ms() + 1000})
    counter = counter_of(astore)
    later = astore.open(cookie)
    assert await later.get("a") == 1
    await later.set("b", 2)
    assert counter.count == 3
    assert (redis_client.zscore(index, name) or 0) >= now_ms() + TTL_MS
    counter = counter_of(astore)
    await later.regenerate()
    assert counter.count == 2
    assert members(redis_client, astore, "ann") == {key(later).encode()}


async def test_async_cap_and_concurrent_logins(redis_url: str, redis_client: redis.Redis) -> None:
    store = AsyncSessionStore(redis=redis_url, ttl=100, max_sessions_per_user=3, user_key=USER_KEY)
    try:

        async def login() -> str:
            session = store.open(None)
            await session.login("ann")
            return key(session)

        keys = await asyncio.gather(*(login() for _ in range(8)))
        assert len(set(keys)) == 8
        if is_cluster(store.client):  # as in test_the_cap_holds_for_concurrent_logins
            await login()
        assert len(await store.sessions_of("ann")) == 3
        assert redis_client.dbsize() == 4
    finally:
        await store.aclose()


async def test_async_cookie_after_login_through_an_asgi_app(
    redis_url: str, redis_client: redis.Redis
) -> None:
    store = AsyncSessionStore(redis=redis_url, ttl=100, user_key=USER_KEY)

    async def app(scope: Any, receive: Any, send: Any) -> None:
        session = session_of(scope)
        if scope["path"] == "/login":
            await session.login("ann")
        else:
            await session.incr("visits")
        body = f"{session.id}|{await session.get('visits')}".encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})

    transport = httpx.ASGITransport(app=ASGISessionMiddleware(app, store=store))
    try:
        # A loopback host: over plain http, a Secure cookie would not be sent back.
        async with httpx.AsyncClient(transport=transport, base_url="http://localhost") as client:
            anonymous_id = (await client.get("/visit")).text.split("|")[0]
            response = await client.get("/login")
            new_id = response.text.split("|")[0]
            assert new_id != anonymous_id
            assert store.config.cookie_value(new_id) in response.headers["set-cookie"]
            assert (await client.get("/visit")).text == f"{new_id}|2"
        assert [i.current for i in await store.sessions_of("ann", current=new_id)] == [True]
    finally:
        await store.aclose()


# --------------------------------------------------------------------------- many slots


def test_a_users_sessions_in_many_slots(redis_url: str, redis_client: Any) -> None:
    """Each session has a slot (on a cluster, a node) of its own; the index spans them."""
    store = SessionStore(redis=redis_url, ttl=100, max_sessions_per_user=5, user_key=USER_KEY)
    try:
        sessions = [logged_in(store, "ann")[0] for _ in range(6)]  # one evicted by the cap
        assert len({key_slot(key(s).encode()) for s in sessions}) > 1
        infos = store.sessions_of("ann", current=sessions[-1])
        assert len(infos) == 5
        # An older one was evicted (which one, when logins share a millisecond, is open).
        alive = [key(s) for s in sessions if redis_client.exists(key(s))]
        assert len(alive) == 5 and key(sessions[-1]) in alive
        later = store.open(cookie_of(store, sessions[-1]))
        later.regenerate()
        (mine,) = [i for i in store.sessions_of("ann", current=later) if i.current]
        assert store.revoke_user("ann", keep=mine.handle) == 4
        assert [i.handle for i in store.sessions_of("ann")] == [mine.handle]
        assert store.revoke(mine.handle) is True
        assert redis_client.keys() == []
        other, _ = logged_in(store, "bob")
        assert other.id is not None and store.revoke(other.id) is True
        logged_in(store, "cid")  # left for the TTL check after the test
    finally:
        store.close()


async def test_async_a_users_sessions_in_many_slots(redis_url: str, redis_client: Any) -> None:
    store = AsyncSessionStore(redis=redis_url, ttl=100, user_key=USER_KEY)
    try:
        sessions = [(await alogged_in(store, "ann"))[0] for _ in range(4)]
        assert len(await store.sessions_of("ann")) == 4
        assert await store.revoke_user("ann", keep=sessions[0]) == 3
        (info,) = await store.sessions_of("ann")
        assert await store.revoke(info.handle) is True
        assert redis_client.keys() == []
        await alogged_in(store, "cid")
    finally:
        await store.aclose()
