"""Concurrent requests on one session: nothing lost, nothing resurrected.

Each thread plays one or more requests: it opens its own Session from the same
cookie, as two requests of one browser would, and all threads share one store
(one redis-py connection pool), as the threads of a web server do.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
import redis

from hashsession import ConflictError, Session, SessionStore
from threads import run_threads

pytestmark = pytest.mark.all_topologies

StoreFactory = Callable[..., SessionStore]


def cookie_of(store: SessionStore, session: Session) -> str:
    cookies = [v for k, v in store.response_headers(session) if k == "Set-Cookie"]
    assert len(cookies) == 1, store.response_headers(session)
    return cookies[0].split(";", 1)[0]


def new_session(store: SessionStore, **data: Any) -> tuple[str, str]:
    s = store.open(None)
    s.update(data or {"seed": 0})
    assert s.core.key is not None
    return cookie_of(store, s), s.core.key


# --------------------------------------------------------------------------- no lost updates


def test_two_requests_writing_different_keys_lose_nothing(
    make_store: StoreFactory, redis_client: redis.Redis
) -> None:
    store = make_store(max_keys=3000)
    cookie, key = new_session(store)

    def writer(name: str) -> Callable[[], None]:
        def run() -> None:
            s = store.open(cookie)  # one request per thread, on the same session
            for i in range(1000):
                s[f"{name}{i}"] = i

        return run

    run_threads([writer("a"), writer("b")])
    data = store.open(cookie).to_dict()
    assert len(data) == 2001
    for name in ("a", "b"):
        for i in range(1000):
            assert data[f"{name}{i}"] == i
    assert redis_client.dbsize() == 1
    assert redis_client.pttl(key) > 0


def test_many_short_requests_writing_different_keys(
    make_store: StoreFactory, redis_client: redis.Redis
) -> None:
    store = make_store()
    cookie, _ = new_session(store)

    def writer(name: str) -> Callable[[], None]:
        def run() -> None:
            for i in range(150):
                store.open(cookie)[f"{name}{i}"] = i  # a fresh request for every write

        return run

    run_threads([writer(n) for n in "abcd"])
    data = store.open(cookie).to_dict()
    assert len(data) == 1 + 4 * 150
    assert redis_client.dbsize() == 1


def test_concurrent_incr_is_exact(make_store: StoreFactory) -> None:
    store = make_store()
    cookie, _ = new_session(store, n=0)

    def worker() -> None:
        s = store.open(cookie)
        for _ in range(250):
            s.incr("n")

    run_threads([worker] * 4)
    assert store.open(cookie)["n"] == 1000


def test_concurrent_augmented_assignment_is_exact(make_store: StoreFactory) -> None:
    store = make_store()
    cookie, _ = new_session(store, n=0)

    def worker() -> None:
        for _ in range(100):
            s = store.open(cookie)
            s["n"] += 1

    run_threads([worker] * 4)
    assert store.open(cookie)["n"] == 400


def test_concurrent_edit_appends_are_all_kept(make_store: StoreFactory) -> None:
    store = make_store()  # the default time budget: no edit gives up
    cookie, _ = new_session(store, items=[])

    def worker(t: int) -> Callable[[], None]:
        def run() -> None:
            for i in range(50):
                s = store.open(cookie)
                with s.edit("items", []) as items:
                    items.append([t, i])

        return run

    run_threads([worker(t) for t in range(4)])
    items = store.open(cookie)["items"]
    assert len(items) == 200
    assert sorted(map(tuple, items)) == [(t, i) for t in range(4) for i in range(50)]
    for t in range(4):  # each request's appends stay in its own order
        assert [i for tt, i in items if tt == t] == list(range(50))


@pytest.mark.parametrize(
    "settings", [{"edit_retries": 2}, {"edit_timeout": 0.002}], ids=["2-tries", "2ms-budget"]
)
def test_edits_that_give_up_fail_loudly_and_write_nothing(
    make_store: StoreFactory, settings: dict[str, Any]
) -> None:
    """Every edit either lands exactly once or raises ConflictError and writes nothing."""
    store = make_store(**settings)
    cookie, _ = new_session(store, items=[])
    landed: list[list[int]] = []
    failed: list[ConflictError] = []
    lock = threading.Lock()

    def worker(t: int) -> Callable[[], None]:
        def run() -> None:
            for i in range(50):
                try:
                    with store.open(cookie).edit("items", []) as items:
                        items.append([t, i])
                except ConflictError as exc:
                    assert exc.key == "items"
                    with lock:
                        failed.append(exc)
                else:
                    with lock:
                        landed.append([t, i])

        return run

    run_threads([worker(t) for t in range(8)])
    items = store.open(cookie)["items"]
    assert sorted(map(tuple, items)) == sorted(map(tuple, landed))
    assert len(landed) + len(failed) == 400


def test_sixteen_editors_under_the_default_budget_never_conflict(
    make_store: StoreFactory,
) -> None:
    """Issue 13: 16 concurrent edit()s of one list, one request each; none gives up."""
    store = make_store()
    cookie, _ = new_session(store, items=[])
    conflicts: list[ConflictError] = []

    def worker(t: int) -> Callable[[], None]:
        def run() -> None:
            for i in range(25):
                try:
                    with store.open(cookie).edit("items", []) as items:
                        items.append([t, i])
                except ConflictError as exc:  # collected: the assertion below shows them
                    conflicts.append(exc)

        return run

    run_threads([worker(t) for t in range(16)])
    assert conflicts == []
    items = store.open(cookie)["items"]
    assert sorted(map(tuple, items)) == [(t, i) for t in range(16) for i in range(25)]
    for t in range(16):
        assert [i for tt, i in items if tt == t] == list(range(25))


def test_sixteen_appenders_are_exact(make_store: StoreFactory) -> None:
    """The same race with append(): one script per edit, nothing to retry."""
    store = make_store()
    cookie, _ = new_session(store, items=[])

    def worker(t: int) -> Callable[[], None]:
        def run() -> None:
            for i in range(25):
                store.open(cookie).append("items", [t, i])

        return run

    run_threads([worker(t) for t in range(16)])
    items = store.open(cookie)["items"]
    assert sorted(map(tuple, items)) == [(t, i) for t in range(16) for i in range(25)]


def test_concurrent_apply_is_exact(make_store: StoreFactory) -> None:
    store = make_store()
    cookie, _ = new_session(store, total=0)

    def worker() -> None:
        s = store.open(cookie)
        for _ in range(40):
            s.apply("total", lambda v: v + 1, 0)

    run_threads([worker] * 4)
    assert store.open(cookie)["total"] == 160


def test_concurrent_setdefault_has_one_winner(make_store: StoreFactory) -> None:
    store = make_store()
    cookie, _ = new_session(store)
    lock = threading.Lock()
    for round_ in range(20):
        seen: list[Any] = []

        def worker(t: int, r: int = round_, out: list[Any] = seen) -> Callable[[], None]:
            def run() -> None:
                got = store.open(cookie).setdefault(f"k{r}", t)
                with lock:
                    out.append(got)

            return run

        run_threads([worker(t) for t in range(4)])
        assert len(set(seen)) == 1, seen  # everybody saw the same, single winner
        assert store.open(cookie)[f"k{round_}"] == seen[0]


def test_concurrent_pop_returns_the_value_once(make_store: StoreFactory) -> None:
    store = make_store()
    cookie, _ = new_session(store)
    lock = threading.Lock()
    for round_ in range(20):
        store.open(cookie)[f"token{round_}"] = round_
        got: list[Any] = []

        def worker(r: int = round_, out: list[Any] = got) -> None:
            value = store.open(cookie).pop(f"token{r}", None)
            with lock:
                out.append(value)

        run_threads([worker] * 4)
        assert sorted(got, key=repr) == sorted([round_, None, None, None], key=repr)


# --------------------------------------------------------------------------- logout races


def _wait_for(condition: Callable[[], bool], timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting for the other threads"
        time.sleep(0.001)


def test_logout_racing_writes_never_resurrects(
    make_store: StoreFactory, redis_client: redis.Redis
) -> None:
    store = make_store()
    old_cookie, old_key = new_session(store, user="ann")
    old_id = store.open(old_cookie).id
    n_writers = 3
    logout_started: list[float] = []
    logout_done: list[float] = []
    writes: list[tuple[float, float, str | None]] = []  # (start, end, id written to)
    lock = threading.Lock()
    stop = threading.Event()

    def writer(t: int) -> Callable[[], None]:
        def run() -> None:
            i = 0
            while not stop.is_set() and i < 20_000:
                start = time.monotonic()
                s = store.open(old_cookie)  # every write is a new request with the old cookie
                s[f"w{t}-{i}"] = i
                end = time.monotonic()
                with lock:
                    writes.append((start, end, s.id))
                i += 1

        return run

    def logout() -> None:
        try:
            _wait_for(lambda: len(writes) >= 30 * n_writers)  # the writers are going
            s = store.open(old_cookie)
            logout_started.append(time.monotonic())
            s.invalidate()
            logout_done.append(time.monotonic())
            _wait_for(lambda: sum(w[0] > logout_done[0] for w in writes) >= 30 * n_writers)
        finally:
            stop.set()

    run_threads([writer(t) for t in range(n_writers)] + [logout])

    assert redis_client.exists(old_key) == 0, "the logged-out session came back"
    for k in redis_client.scan_iter(count=1000):
        assert redis_client.pttl(k) > 0, f"{k!r} has no TTL"
    before = [w for w in writes if w[1] < logout_started[0]]
    after = [w for w in writes if w[0] > logout_done[0]]
    assert len(before) >= 30 * n_writers and len(after) >= 30 * n_writers
    for _, _, sid in before:
        assert sid == old_id
    for _, _, sid in after:
        assert sid is not None and sid != old_id
    new_ids = {sid for _, _, sid in after}
    assert len(new_ids) == len(after)  # every such request started its own new session
    for sid in new_ids:
        assert sid is not None and redis_client.exists(store.config.key_of(sid))


def test_logout_racing_a_long_request(make_store: StoreFactory, redis_client: redis.Redis) -> None:
    """A request that holds the session live across the logout must not bring it back."""
    store = make_store()
    old_cookie, old_key = new_session(store, user="ann")
    old_id = store.open(old_cookie).id
    holder = store.open(old_cookie)
    assert holder["user"] == "ann"  # live in this request
    done = threading.Event()
    ids: list[str | None] = []

    def long_request() -> None:
        after = 0
        for i in range(20_000):
            holder[f"k{i}"] = i
            holder.incr("count")
            ids.append(holder.id)
            if done.is_set():
                after += 1
                if after > 20:
                    break

    def logout() -> None:
        _wait_for(lambda: len(ids) >= 20)
        store.open(old_cookie).invalidate()
        done.set()

    run_threads([long_request, logout])
    assert redis_client.exists(old_key) == 0
    for k in redis_client.scan_iter():
        assert redis_client.pttl(k) > 0
    assert ids[0] == old_id
    assert holder.id is not None and holder.id != old_id
    assert ids[-1] == holder.id
    new_data = store.open(cookie_of(store, holder)).to_dict()
    assert "user" not in new_data  # nothing of the old session leaked into the new one
    assert redis_client.dbsize() == 1


def test_concurrent_first_writes_without_cookie_make_separate_sessions(
    make_store: StoreFactory, redis_client: redis.Redis
) -> None:
    store = make_store()
    ids: list[str | None] = []
    lock = threading.Lock()

    def worker() -> None:
        for _ in range(50):
            s = store.open(None)
            s["x"] = 1
            with lock:
                ids.append(s.id)

    run_threads([worker] * 4)
    assert len(set(ids)) == 200
    assert redis_client.dbsize() == 200
