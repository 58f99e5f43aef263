"""The race page's experiment: concurrent increments on hashsession and on a naive foil.

``NaiveSession`` is NOT part of hashsession: it is the load-then-save pattern many
session libraries follow (GET the whole session as one JSON blob, change it, SET it
back), written here only so the demo can show what that pattern loses.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hashsession.session import Session
from hashsession.store import SessionStore

__all__ = ["COUNT", "NaiveSession", "RaceResult", "run_race"]

#: How many concurrent increments each side receives.
COUNT = 50
#: What each simulated request does between reading its session and writing it back
#: (rendering, a database call...): the same pause on both sides.
WORK_SECONDS = 0.002
#: One race at a time: visitors racing at once would only race for connections.
_ONE_AT_A_TIME = threading.Lock()


class NaiveSession:
    """THE FOIL: a whole-blob session, loaded at the start of a request, saved at the end."""

    def __init__(self, client: Any, key: str, ttl: int = 60) -> None:
        self.client, self.key, self.ttl = client, key, ttl

    def load(self) -> dict[str, Any]:
        """One ``GET`` of the whole session."""
        raw = self.client.get(self.key)
        data: dict[str, Any] = json.loads(raw) if raw else {}
        return data

    def save(self, data: dict[str, Any]) -> None:
        """One ``SET`` of the whole session: whatever another request wrote meanwhile is lost."""
        self.client.set(self.key, json.dumps(data), ex=self.ttl)


@dataclass(frozen=True)
class RaceResult:
    """What each side counted out of ``expected`` concurrent increments."""

    expected: int
    hashsession: int
    naive: int


def _all_at_once(count: int, job: Callable[[], None]) -> None:
    """Run ``job`` in ``count`` threads released together; re-raise the first error."""
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait()
            job()
        except BaseException as exc:  # reported to the caller below
            errors.append(exc)

    threads = [threading.Thread(target=run, daemon=True) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def run_race(store: SessionStore, mine: Session, count: int = COUNT) -> RaceResult:
    """Fire ``count`` concurrent increments at session ``mine`` (field ``race``, reset to 0
    first) and at a fresh naive session; what each one kept."""
    with _ONE_AT_A_TIME:
        return _race(store, mine, count)


def _race(store: SessionStore, mine: Session, count: int) -> RaceResult:
    mine["race"] = 0
    assert mine.id is not None  # it was just written
    cookie = store.config.cookie_value(mine.id)

    def hashsession_request() -> None:
        session = store.open_id(cookie)  # a request carrying the visitor's cookie
        time.sleep(WORK_SECONDS)
        session.incr("race")  # one HINCRBY

    naive = NaiveSession(store.client, f"demo-naive:{secrets.token_hex(8)}")
    naive.save({"race": 0})

    def naive_request() -> None:
        data = naive.load()
        time.sleep(WORK_SECONDS)
        data["race"] = data.get("race", 0) + 1
        naive.save(data)

    _all_at_once(count, hashsession_request)
    _all_at_once(count, naive_request)
    kept_naive = int(naive.load().get("race", 0))
    store.client.delete(naive.key)
    return RaceResult(expected=count, hashsession=int(mine["race"]), naive=kept_naive)
