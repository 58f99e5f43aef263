"""Local state follows the server: an operation that failed changes nothing the session believes.

A session's id, key, state and the cookie its response sends change only after
Redis answered the command that makes them true. When the command fails (here:
it never reaches the server, the connection breaking on its way in, or too few
replicas confirm it), the session is as it was, the response does not pretend
otherwise, and calling the operation again sends it again.

And a login is failure-atomic for "log out everywhere": whichever of its
commands fails, no session ends up owned by the user without being in the
user's index, so ``revoke_user`` never misses one.

Commands are lost by :class:`LossyProxy` (``"refuse"``: the proxy closes the
connection instead of forwarding the command, so it never runs), in front of
the suite's standalone server; replication shortfalls come from a private
master whose replica is detached (``REPLICAOF NO ONE``), so ``WAIT`` answers 0.
"""

from __future__ import annotations

import hashlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from typing import Any

import pytest
import redis

from hashsession import BackendError, NotReplicatedError, Session, SessionStore
from hashsession.aio import AsyncSession, AsyncSessionStore
from hashsession.embedded import EmbeddedRedis
from hashsession.scripts import CREATE, EVERY, OPEN, OWNER_FIELD
from hashsession.wsgi import SessionMiddleware
from lossy_proxy import LossyProxy

SOCKET_TIMEOUT = 0.5
DEL = b"\r\nDEL\r\n"
#: Per-user features (login, sessions_of, revoke_user) need a key for user digests.
USER_KEY = "a user key for the state tests"


# --------------------------------------------------------------------------- helpers


@pytest.fixture
def direct(redis_server: EmbeddedRedis) -> Iterator[SessionStore]:
    """A store straight on the emptied shared server, with every script loaded there.

    Loaded scripts mean the command a test loses is the one it aims at, never an
    ``EVALSHA`` refused with ``NOSCRIPT`` and resent.
    """
    store = SessionStore(redis=redis_server.url, ttl=100, user_key=USER_KEY)
    store.client.flushall()
    for script in EVERY:
        store.client.script_load(script.source)
    try:
        yield store
    finally:
        store.close()


@pytest.fixture
def lossy(redis_server: EmbeddedRedis) -> Iterator[Callable[[Any], LossyProxy]]:
    """``lossy(marker)``: a proxy to the shared server that loses commands holding ``marker``."""
    proxies: list[LossyProxy] = []

    def make(marker: bytes | tuple[bytes, ...]) -> LossyProxy:
        assert redis_server.port is not None
        proxy = LossyProxy("127.0.0.1", redis_server.port, count=marker)
        proxies.append(proxy)
        return proxy

    try:
        yield make
    finally:
        for proxy in proxies:
            proxy.close()


def sha(script: Any) -> bytes:
    return str(script.sha).encode("ascii")


def cookies(session: Session | AsyncSession) -> list[str]:
    return [v for k, v in session.core.response_headers() if k == "Set-Cookie"]


def expires_cookie(store: SessionStore | AsyncSessionStore, session: Any) -> bool:
    return store.cookie.delete_cookie() in cookies(session)


def live_session(direct: SessionStore, **values: Any) -> tuple[str, str]:
    """A stored session holding ``values``: its cookie value and Redis key."""
    session = direct.open()
    session.update(values or {"n": 1})
    assert session.id is not None and session.core.key is not None
    return direct.config.cookie_value(session.id), session.core.key


def owned_keys(direct: SessionStore, user: str) -> set[bytes]:
    """Every session key in Redis whose owner field names ``user`` (keyed or legacy)."""
    client, mine = direct.client, direct.config.owner_values(user)
    return {
        name
        for name in client.scan_iter(count=1000)
        if client.type(name) == b"hash" and client.hget(name, OWNER_FIELD) in mine
    }


def reference(key: str) -> str:
    """The short, non-secret name errors give a session: the start of its key's SHA1."""
    return hashlib.sha1(key.encode("utf-8")).hexdigest()[:12]


# --------------------------------------------------------------------------- invalidate


def test_a_failed_logout_changes_nothing_and_a_retry_deletes(
    direct: SessionStore, lossy: Callable[[bytes], LossyProxy]
) -> None:
    cookie, key = live_session(direct)
    proxy = lossy(DEL)
    store = SessionStore(redis=proxy.url(socket_timeout=SOCKET_TIMEOUT), ttl=100)
    try:
        session = store.open_id(cookie)
        assert session["n"] == 1
        old_id = session.id
        proxy.lose_next("refuse")
        with pytest.raises(BackendError) as caught:
            session.invalidate()
        assert proxy.refused  # the DEL never reached the server
        message = str(caught.value)
        assert "a new session" not in message
        assert reference(key) in message
        assert old_id is not None and old_id not in message
        assert direct.client.exists(key) == 1
        assert not session.invalidated and session.id == old_id
        assert not expires_cookie(store, session)  # the old cookie still names a live session
        session.invalidate()  # the retry sends the DEL again
        assert direct.client.exists(key) == 0
        assert session.invalidated and session.id is None
        assert expires_cookie(store, session)
        assert direct.open_id(cookie).get("n") is None
    finally:
        store.close()


async def test_async_a_failed_logout_changes_nothing_and_a_retry_deletes(
    direct: SessionStore, lossy: Callable[[bytes], LossyProxy]
) -> None:
    cookie, key = live_session(direct)
    proxy = lossy(DEL)
    store = AsyncSessionStore(redis=proxy.url(socket_timeout=SOCKET_TIMEOUT), ttl=100)
    try:
        session = store.open_id(cookie)
        assert await session.get("n") == 1
        proxy.lose_next("refuse")
        with pytest.raises(BackendError) as caught:
            await session.invalidate()
        assert proxy.refused
        assert reference(key) in str(caught.value)
        assert direct.client.exists(key) == 1
        assert not session.invalidated and session.id is not None
        assert not expires_cookie(store, session)
        await session.invalidate()
        assert direct.client.exists(key) == 0
        assert session.invalidated and expires_cookie(store, session)
    finally:
        await store.aclose()


def test_a_failed_logout_through_an_adapter_keeps_the_cookie(
    direct: SessionStore, lossy: Callable[[bytes], LossyProxy]
) -> None:
    """An app that catches the error and answers: its response must not drop the cookie."""
    cookie, key = live_session(direct)
    proxy = lossy(DEL)
    store = SessionStore(redis=proxy.url(socket_timeout=SOCKET_TIMEOUT), ttl=100)
    seen: list[list[tuple[str, str]]] = []

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        session = environ["hashsession"]
        assert session["n"] == 1
        proxy.lose_next("refuse")
        try:
            session.invalidate()
        except BackendError:
            start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
            return [b"could not log you out, try again"]
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"bye"]

    def start_response(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        seen.append(headers)
        return lambda data: None

    try:
        middleware = SessionMiddleware(app, store=store)
        environ = {"HTTP_COOKIE": f"{store.cookie.cookie_name}={cookie}"}
        assert b"".join(middleware(environ, start_response)) == b"could not log you out, try again"
        (headers,) = seen
        assert store.cookie.delete_cookie() not in [v for k, v in headers if k == "Set-Cookie"]
        assert direct.client.exists(key) == 1
    finally:
        store.close()


# --------------------------------------------------------------------------- wait_for_replicas


@pytest.fixture
def detached(
    make_server: Callable[..., EmbeddedRedis],
) -> Iterator[tuple[EmbeddedRedis, redis.Redis, Callable[[], None]]]:
    """A master, a client on its replica (detached from it), and ``attach()`` to reattach it."""
    master = make_server()
    replica = make_server("--replicaof", "127.0.0.1", str(master.port))
    client = replica.client()

    def synced() -> bool:
        info = client.info("replication")
        if info.get("master_link_status") != "up":
            return False
        primary = master.client()
        try:
            offset = int(primary.info("replication")["master_repl_offset"])
        finally:
            primary.close()
        return int(info.get("slave_repl_offset", -1)) >= offset

    def attach() -> None:
        client.execute_command("REPLICAOF", "127.0.0.1", str(master.port))
        deadline = time.monotonic() + 10
        while not synced():
            assert time.monotonic() < deadline, "the replica did not sync"
            time.sleep(0.02)

    attach()
    try:
        yield master, client, attach
    finally:
        client.close()


def test_an_unconfirmed_logout_is_sent_again_until_replicas_confirm(
    detached: tuple[EmbeddedRedis, redis.Redis, Callable[[], None]],
) -> None:
    master, replica, attach = detached
    store = SessionStore(redis=master.url, ttl=100, wait_for_replicas=1, wait_timeout=0.05)
    try:
        session = store.open()
        session["n"] = 1
        key = session.core.key
        assert key is not None
        attach()  # the replica has the session
        assert replica.exists(key) == 1
        replica.execute_command("REPLICAOF", "NO", "ONE")  # now it hears nothing more
        with pytest.raises(NotReplicatedError):
            session.invalidate()
        assert replica.exists(key) == 1  # a failover now would bring the session back
        assert not session.invalidated
        with pytest.raises(NotReplicatedError):
            session.invalidate()  # a retry waits again, and says it fell short again
        assert replica.exists(key) == 1
        attach()
        session.invalidate()  # confirmed this time
        assert session.invalidated
        assert replica.exists(key) == 0
    finally:
        store.close()


async def test_async_an_unconfirmed_logout_is_sent_again_until_replicas_confirm(
    detached: tuple[EmbeddedRedis, redis.Redis, Callable[[], None]],
) -> None:
    master, replica, attach = detached
    store = AsyncSessionStore(redis=master.url, ttl=100, wait_for_replicas=1, wait_timeout=0.05)
    try:
        session = store.open()
        await session.set("n", 1)
        key = session.core.key
        assert key is not None
        attach()
        replica.execute_command("REPLICAOF", "NO", "ONE")
        with pytest.raises(NotReplicatedError):
            await session.invalidate()
        with pytest.raises(NotReplicatedError):
            await session.invalidate()
        assert replica.exists(key) == 1 and not session.invalidated
        attach()
        await session.invalidate()
        assert session.invalidated and replica.exists(key) == 0
    finally:
        await store.aclose()


def test_a_retried_logout_on_a_fresh_connection_still_waits_for_the_replica(
    detached: tuple[EmbeddedRedis, redis.Redis, Callable[[], None]],
) -> None:
    # The replica stays connected but stops answering (SIGSTOP), so WAIT can only count it
    # by its last acknowledged offset. The retry's DEL changes nothing (the master deleted
    # the key the first time) and goes out on a new connection: Redis 7 and Valkey give
    # that connection no replication offset for a no-op, so a bare WAIT would confirm at
    # once; the PUBLISH fence in front of it makes the WAIT count from now.
    master, replica, attach = detached
    store = SessionStore(redis=master.url, ttl=100, wait_for_replicas=1, wait_timeout=0.05)
    stopped = False
    try:
        session = store.open()
        session["n"] = 1
        key = session.core.key
        assert key is not None
        attach()
        assert replica.exists(key) == 1
        pid = int(replica.info("server")["process_id"])
        os.kill(pid, signal.SIGSTOP)
        stopped = True
        with pytest.raises(NotReplicatedError):
            session.invalidate()
        store.client.connection_pool.disconnect()  # the retry gets a new connection
        with pytest.raises(NotReplicatedError) as again:
            session.invalidate()
        assert again.value.replicas == 0
        assert not session.invalidated
        os.kill(pid, signal.SIGCONT)
        stopped = False
        session.invalidate()  # the replica catches up and confirms
        assert session.invalidated
        assert replica.exists(key) == 0
    finally:
        if stopped:
            os.kill(pid, signal.SIGCONT)
        store.close()


# --------------------------------------------------------------------------- regenerate, create


def test_a_failed_regenerate_keeps_the_id_and_a_retry_moves_it(
    direct: SessionStore, lossy: Callable[[bytes], LossyProxy]
) -> None:
    cookie, key = live_session(direct)
    proxy = lossy(sha(OPEN))
    store = SessionStore(redis=proxy.url(socket_timeout=SOCKET_TIMEOUT), ttl=100)
    try:
        session = store.open_id(cookie)
        old_id = session.id
        proxy.lose_next("refuse")
        with pytest.raises(BackendError) as caught:
            session.regenerate()
        assert reference(key) in str(caught.value)
        assert session.id == old_id and direct.client.exists(key) == 1
        assert cookies(session) == []
        session.regenerate()
        assert session.id != old_id and direct.client.exists(key) == 0
        assert direct.open_id(store.config.cookie_value(session.id or ""))["n"] == 1
    finally:
        store.close()


def test_a_failed_first_write_leaves_no_id_and_no_cookie(
    direct: SessionStore, lossy: Callable[[bytes], LossyProxy]
) -> None:
    proxy = lossy(sha(CREATE))
    store = SessionStore(redis=proxy.url(socket_timeout=SOCKET_TIMEOUT), ttl=100)
    try:
        session = store.open()
        proxy.lose_next("refuse")
        with pytest.raises(BackendError) as caught:
            session["n"] = 1
        assert "a new session" in str(caught.value)
        assert session.id is None and session.core.key is None and cookies(session) == []
        session["n"] = 2
        assert direct.open_id(store.config.cookie_value(session.id or ""))["n"] == 2
    finally:
        store.close()


# --------------------------------------------------------------------------- login

#: What every command a login sends holds (scripts, and the Cluster path's evictions).
LOGIN_MARKS = (b"EVALSHA", b"\r\nEVAL\r\n", DEL)
PATHS = ["one-node", "cluster-path"]


def on_path(store: SessionStore | AsyncSessionStore, path: str) -> None:
    """Make ``store`` plan logins as on a Cluster (index first), on this one server."""
    if path == "cluster-path":
        store.config = replace(store.config, same_slot_ids=True)


def assert_every_owned_session_indexed(client: redis.Redis, config: Any) -> None:
    """The invariant behind "log out everywhere": no owned session is missing from its index."""
    for name in client.scan_iter(count=1000):
        if client.type(name) != b"hash":
            continue
        owner = client.hget(name, OWNER_FIELD)
        if owner is not None:
            score = client.zscore(config.index_of_owner(owner), name)
            assert score is not None, f"{name!r}, owned by {owner!r}, is not in the index"
            assert score >= time.time() * 1000 + client.pttl(name) - 1000


def assert_follows_the_server(
    direct: SessionStore, session: Session | AsyncSession, old_id: str | None
) -> None:
    """The session names a session Redis has (or none), and its response says just that."""
    if session.id is None:
        assert cookies(session) == []
        return
    assert direct.client.exists(direct.config.key_of(session.id)) == 1
    if session.id != old_id:  # it moved: the response carries the new id
        assert any(direct.config.cookie_value(session.id) in c for c in cookies(session))
    else:
        assert cookies(session) == []


SCENARIOS = ["stored", "new", "again", "another-user", "over-the-cap"]


def prepare(direct: SessionStore, store: SessionStore, scenario: str) -> Session:
    """A session about to log in as ann, in ``scenario``, opened through ``store``."""
    if scenario == "new":
        return store.open()
    seed = direct.open()
    seed["cart"] = [1]
    if scenario == "again":
        seed.login("ann")
    elif scenario == "another-user":
        seed.login("bob")
    elif scenario == "over-the-cap":  # ann has two sessions; the store's cap is 2
        for _ in range(2):
            direct.open().login("ann")
    assert seed.id is not None
    session = store.open_id(direct.config.cookie_value(seed.id))
    assert session.get("cart") == [1]
    return session


@pytest.mark.parametrize("scenario", SCENARIOS)
@pytest.mark.parametrize("path", PATHS)
def test_a_login_that_fails_at_any_command_leaves_no_unindexed_session(
    direct: SessionStore, lossy: Callable[[Any], LossyProxy], path: str, scenario: str
) -> None:
    """Lose the first command of the login, then the second, and so on, until one goes through.

    Whatever reached Redis, every session owned by anyone is in its owner's index
    (ahead of its expiry), the session names what Redis has, and a retried login
    works; "log out everywhere" then leaves nothing of ann's.
    """
    proxy = lossy(LOGIN_MARKS)
    cap = 2 if scenario == "over-the-cap" else None
    store = SessionStore(
        redis=proxy.url(socket_timeout=SOCKET_TIMEOUT),
        ttl=100,
        max_sessions_per_user=cap,
        user_key=USER_KEY,
    )
    on_path(store, path)
    on_path(direct, path)
    try:
        for lost in range(8):
            direct.client.flushall()
            session = prepare(direct, store, scenario)
            old_id = session.id
            proxy.refused.clear()
            proxy.lose_next("refuse", after=lost)
            try:
                session.login("ann")
            except BackendError:
                assert proxy.refused, "an error, yet nothing was lost"
            else:
                assert not proxy.refused
                proxy.lose_next("refuse", after=10**9)  # disarmed
                break
            assert_every_owned_session_indexed(direct.client, direct.config)
            assert_follows_the_server(direct, session, old_id)
            session.login("ann")  # the retry logs in (again)
            assert_every_owned_session_indexed(direct.client, direct.config)
            mine = [i for i in direct.sessions_of("ann", current=session.id) if i.current]
            assert len(mine) == 1
            assert len(direct.sessions_of("ann")) <= (cap or 10)
            direct.revoke_user("ann")
            assert owned_keys(direct, "ann") == set()
        else:
            pytest.fail("the login never went through")
        assert lost >= 1  # at least its one command was lost once
    finally:
        store.close()


@pytest.mark.parametrize("path", PATHS)
async def test_async_a_login_that_fails_at_any_command_leaves_no_unindexed_session(
    direct: SessionStore, lossy: Callable[[Any], LossyProxy], path: str
) -> None:
    proxy = lossy(LOGIN_MARKS)
    store = AsyncSessionStore(
        redis=proxy.url(socket_timeout=SOCKET_TIMEOUT), ttl=100, user_key=USER_KEY
    )
    on_path(store, path)
    try:
        for lost in range(4):
            direct.client.flushall()
            cookie, _ = live_session(direct)
            session = store.open_id(cookie)
            assert await session.get("n") == 1
            proxy.refused.clear()
            proxy.lose_next("refuse", after=lost)
            try:
                await session.login("ann")
            except BackendError:
                assert proxy.refused
            else:
                proxy.lose_next("refuse", after=10**9)
                break
            assert_every_owned_session_indexed(direct.client, direct.config)
            assert_follows_the_server(direct, session, direct.config.id_from_cookie(cookie))
            await session.login("ann")
            assert len(direct.sessions_of("ann")) == 1
            direct.revoke_user("ann")
            assert owned_keys(direct, "ann") == set()
        assert lost >= 1
    finally:
        await store.aclose()


# --------------------------------------------------------------------------- log out everywhere


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("how", ["revoke_user", "revoke by handle"])
def test_a_failed_revoke_finds_the_sessions_again(
    direct: SessionStore, lossy: Callable[[Any], LossyProxy], path: str, how: str
) -> None:
    """The index loses a session's entry only after the session is deleted."""
    for _ in range(3):
        session = direct.open()
        session["n"] = 1
        session.login("ann")
    proxy = lossy(DEL)
    store = SessionStore(redis=proxy.url(socket_timeout=SOCKET_TIMEOUT), ttl=100, user_key=USER_KEY)
    on_path(store, path)
    try:
        handle = direct.sessions_of("ann")[0].handle
        proxy.lose_next("refuse")
        with pytest.raises(BackendError):
            if how == "revoke_user":
                store.revoke_user("ann")
            else:
                store.revoke(handle)
        assert proxy.refused
        assert_every_owned_session_indexed(direct.client, direct.config)
        if how == "revoke_user":
            assert store.revoke_user("ann") == 3
            assert owned_keys(direct, "ann") == set()
        else:
            assert store.revoke(handle) is True
            assert len(owned_keys(direct, "ann")) == 2
    finally:
        store.close()
