"""``wait_for_replicas``: security-critical writes wait for replicas, and say when they fell short.

Run on the Sentinel deployment (one replica) and on one server (no replica, so
every wait falls short). A shortfall raises ``NotReplicatedError`` only after the
write took effect: the old id is dead, the session moved on. An ``invalidate()``
that fell short leaves the session as it was, so calling it again sends the
``DEL`` and the ``WAIT`` again.
"""

from __future__ import annotations

from datetime import timedelta
from functools import partial
from typing import Any

import pytest

from conftest import Counted, StoreFactory
from hashsession import BackendError, ConfigurationError, NotReplicatedError, SessionStore
from hashsession.aio import AsyncSessionStore

SENTINEL = pytest.mark.parametrize("topology", ["sentinel"])
#: Per-user features (login, sessions_of, revoke_user) need a key for user digests.
USER_KEY = "a user key for the replication tests"


@pytest.fixture
def make(topology_url: str, make_store: StoreFactory) -> StoreFactory:
    """Stores on the topology under test (the suite's factory, pointed there)."""
    return partial(make_store, redis=topology_url, user_key=USER_KEY)


def live(store: SessionStore, **values: Any) -> tuple[Any, str]:
    session = store.open()
    session.update(values)
    assert session.id is not None
    return session, session.id


@SENTINEL
def test_critical_writes_pass_when_the_replica_confirms(make: Any, topology_client: Any) -> None:
    store = make(wait_for_replicas=1, wait_timeout=5)
    session, old = live(store, user="ann")
    session.regenerate()
    assert session.id != old
    session.login("ann")
    assert [info.current for info in store.sessions_of("ann", current=session)] == [True]
    other, _ = live(store, x=1)
    other.login("ann")
    assert store.revoke_user("ann", keep=session) == 1
    assert store.revoke(session.id, user_id="ann") is True
    last, last_id = live(store, n=1)
    last.invalidate()
    assert topology_client.exists(store.config.key_of(last_id)) == 0


@SENTINEL
def test_asking_for_more_replicas_than_exist_raises_after_the_write(
    make: Any, topology_client: Any
) -> None:
    store = make(wait_for_replicas=2, wait_timeout=0.05)
    session, old = live(store, user="ann")
    with pytest.raises(NotReplicatedError) as caught:
        session.regenerate()
    assert (caught.value.wanted, caught.value.replicas) == (2, 1)
    assert isinstance(caught.value, BackendError)
    # The rename is in force: the session holds the new id, the old one is gone.
    assert session.id != old
    assert store.open_id(store.config.cookie_value(session.id))["user"] == "ann"
    assert topology_client.exists(store.config.key_of(old)) == 0
    with pytest.raises(NotReplicatedError):
        session.invalidate()
    # The master deleted it, but the logout is not confirmed: the session keeps its id,
    # so calling invalidate() again deletes and waits again (see test_state_follows_server).
    assert not session.invalidated
    assert topology_client.exists(store.config.key_of(session.id or "")) == 0


@pytest.mark.parametrize("topology", ["standalone"])
def test_every_critical_write_checks(make: Any, topology_client: Any) -> None:
    store = make(wait_for_replicas=1, wait_timeout=0.02)
    session, _ = live(store, n=1)
    with pytest.raises(NotReplicatedError):
        session.login("ann")
    assert len(store.sessions_of("ann")) == 1  # the login, and its index entry, took effect
    with pytest.raises(NotReplicatedError):
        store.revoke(session.id, user_id="ann")
    assert topology_client.exists(store.config.key_of(session.id)) == 0
    again, _ = live(store, n=2)
    with pytest.raises(NotReplicatedError):
        again.login("bob")
    with pytest.raises(NotReplicatedError):
        store.revoke_user("bob")
    assert topology_client.exists(store.config.key_of(again.id)) == 0
    # Ordinary writes never wait.
    plain, _ = live(store, n=3)
    plain["n"] = 4
    assert plain.incr("n") == 5


@pytest.mark.parametrize("topology", ["standalone"])
def test_the_wait_rides_in_the_same_round_trip(topology_url: str) -> None:
    counted = Counted(topology_url)
    try:
        store = SessionStore(redis=counted.client, wait_for_replicas=1, wait_timeout=0.01)
        warm = store.open()
        warm["n"] = 1
        with pytest.raises(NotReplicatedError):
            warm.invalidate()  # loads the script
        session = store.open()
        session["n"] = 1
        with counted.expect(1), pytest.raises(NotReplicatedError):
            session.invalidate()
        assert counted.commands == ["DEL", "PUBLISH", "WAIT"]  # one pipeline: one round trip
    finally:
        counted.close()


@pytest.mark.parametrize("topology", ["standalone"])
def test_off_by_default_and_no_wait_sent(topology_url: str) -> None:
    counted = Counted(topology_url)
    try:
        store = SessionStore(redis=counted.client)
        warm = store.open()
        warm["n"] = 1
        warm.regenerate()  # loads the script
        session = store.open()
        session["n"] = 1
        with counted.expect(1):
            session.regenerate()
        assert "WAIT" not in counted.commands
    finally:
        counted.close()


@SENTINEL
async def test_async_critical_writes_wait(topology_url: str, topology_client: Any) -> None:
    store = AsyncSessionStore(
        redis=topology_url, wait_for_replicas=1, wait_timeout=5, user_key=USER_KEY
    )
    session = store.open()
    await session.set("n", 1)
    old = session.id
    await session.regenerate()
    await session.login("ann")
    assert session.id != old
    short = AsyncSessionStore(
        redis=topology_url, wait_for_replicas=3, wait_timeout=0.02, user_key=USER_KEY
    )
    doomed = short.open_id(store.config.cookie_value(session.id or ""))
    with pytest.raises(NotReplicatedError) as caught:
        await doomed.invalidate()
    assert caught.value.replicas == 1
    assert topology_client.exists(store.config.key_of(session.id or "")) == 0
    with pytest.raises(NotReplicatedError):
        await short.revoke_user("ann")
    await store.aclose()
    await short.aclose()


@pytest.mark.parametrize("topology", ["cluster"])
def test_refused_on_a_cluster(topology_url: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        SessionStore(redis=topology_url, wait_for_replicas=1)
    assert caught.value.setting == "wait_for_replicas"


@pytest.mark.parametrize(
    ("settings", "setting"),
    [
        ({"wait_for_replicas": -1}, "wait_for_replicas"),
        ({"wait_for_replicas": True}, "wait_for_replicas"),
        ({"wait_for_replicas": "1"}, "wait_for_replicas"),
        ({"wait_timeout": 0}, "wait_timeout"),
        ({"wait_timeout": 61}, "wait_timeout"),
        ({"wait_timeout": "1"}, "wait_timeout"),
        ({"wait_timeout": timedelta(minutes=2)}, "wait_timeout"),
    ],
)
def test_bad_settings_are_named(redis_url: str, settings: dict[str, Any], setting: str) -> None:
    with pytest.raises(ConfigurationError) as caught:
        SessionStore(redis=redis_url, **settings)
    assert caught.value.setting == setting


def test_timedelta_timeout(redis_url: str) -> None:
    store = SessionStore(redis=redis_url, wait_for_replicas=1, wait_timeout=timedelta(seconds=2))
    assert store.config.wait_timeout_ms == 2000
    store.close()


@pytest.mark.parametrize("topology", ["sentinel"])
def test_scripts_unknown_to_the_server_are_resent_with_their_source(
    make: Any, topology_client: Any
) -> None:
    store = make(wait_for_replicas=1, wait_timeout=5)
    session, _ = live(store, n=1)
    session.login("ann")
    topology_client.script_flush()
    session.regenerate()  # EVALSHA + WAIT in one pipeline: NOSCRIPT, then EVAL + WAIT
    assert store.open_id(store.config.cookie_value(session.id))["n"] == 1
    topology_client.script_flush()
    assert store.revoke(session.id, user_id="ann") is True  # the REVOKE script, piped
    assert topology_client.exists(store.config.key_of(session.id)) == 0
