"""Load for the fault runs: threads using sessions, every operation recorded, then checked.

:class:`Load` runs worker threads, each in a loop opening a session by its
cookie from a shared pool, writing a key of its own (``set``) and adding one to
a counter (``incr``); with ``security`` > 0 a share of the requests instead
invalidates or regenerates a session made before the run (``victims``).
Every operation is recorded: acknowledged (it returned) or failed (which
exception, and whether it is a :class:`hashsession.BackendError`).

:func:`tally` then reads what the servers hold and counts acknowledged writes
that are missing, counters that disagree with the acknowledged increments, and
session keys left without a TTL.
"""

from __future__ import annotations

import random
import threading
import time
import traceback
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from hashsession import BackendError, Session, SessionStore
from hashsession.config import SessionConfig

__all__ = ["COUNTER", "Load", "Op", "Tally", "seed", "tally"]

COUNTER = "n"
THREADS = 8
# A failed request is followed by this pause, as a client's next request would be.
ERROR_PAUSE = 0.01
_BATCH = 500


@dataclass(slots=True)
class Op:
    """One session operation as the load saw it (times are ``time.monotonic()``)."""

    kind: str  # set, incr, create, invalidate, regenerate
    start: float
    end: float
    before: str | None  # the session id the operation was sent for
    after: str | None  # the session's id afterwards: where an acknowledged write landed
    field: str | None = None
    error: str | None = None  # exception class name; None when acknowledged
    backend: bool = True  # the exception is a BackendError
    cause: str | None = None  # class of the exception's __cause__

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def took(self) -> float:
        return self.end - self.start

    @property
    def label(self) -> str:
        """``Error (Cause)``, for tables."""
        return f"{self.error} ({self.cause})" if self.cause else str(self.error)


def seed(store: SessionStore, count: int, ids: Sequence[str] = ()) -> list[str]:
    """Create ``count`` sessions holding ``n = 0`` (with the given ids, if any); their ids.

    Given ids are only kept by a store with ``adopt_unknown_ids=True``.
    """
    made = []
    for index in range(count):
        cookie = store.config.cookie_value(ids[index]) if ids else None
        session = store.open_id(cookie)
        session.set(COUNTER, 0)
        assert session.id is not None
        if ids and session.id != ids[index]:
            raise RuntimeError("the store did not keep the given id (adopt_unknown_ids?)")
        made.append(session.id)
    return made


class Load:
    """Worker threads using sessions from ``ids`` through ``store`` until :meth:`stop`."""

    def __init__(
        self,
        store: SessionStore,
        ids: Iterable[str],
        *,
        threads: int = THREADS,
        security: float = 0.0,
        victims: Iterable[str] = (),
    ) -> None:
        self.store = store
        self.pool = list(ids)
        self.security = security
        self.victims = list(victims)
        self.last_failure = 0.0
        self.last_success = 0.0
        #: The first traceback of each exception class that was not a BackendError.
        self.unexpected: dict[str, str] = {}
        #: The first message of each kind of failure (``Op.label``).
        self.examples: dict[str, str] = {}
        self._stop = threading.Event()
        self._records: list[list[Op]] = [[] for _ in range(threads)]
        # When each thread's operation in flight began (0.0: none in flight).
        self._busy_since = [0.0] * threads
        self._threads = [
            threading.Thread(target=self._work, args=(i,), daemon=True, name=f"load-{i}")
            for i in range(threads)
        ]

    def start(self) -> Load:
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> list[Op]:
        """Stop the workers; every operation, in order of start."""
        self._stop.set()
        for thread in self._threads:
            thread.join(60)
        ops = [op for ops in self._records for op in ops]
        ops.sort(key=lambda op: op.start)
        return ops

    def wait_steady(self, since: float, settle: float = 2.0, limit: float = 25.0) -> bool:
        """Wait until ``settle`` s passed after ``since`` and after the last failure, with a
        success since and no operation in flight from before; ``False`` if that did not
        happen within ``limit`` s of ``since``."""
        while time.monotonic() < since + limit:
            calm = max(since, self.last_failure)
            stuck = any(0.0 < began < calm for began in self._busy_since)
            if not stuck and time.monotonic() - calm >= settle and self.last_success > calm:
                return True
            time.sleep(0.05)
        return False

    # ------------------------------------------------------------ the workers

    def _op(
        self,
        out: list[Op],
        kind: str,
        session: Session,
        before: str | None,
        call: Callable[[], object],
        name: str | None = None,
    ) -> bool:
        index = int(threading.current_thread().name.rpartition("-")[2])
        start = self._busy_since[index] = time.monotonic()
        try:
            call()
        except Exception as exc:
            end = time.monotonic()
            self._busy_since[index] = 0.0
            cause = exc.__cause__
            op = Op(
                kind,
                start,
                end,
                before,
                None,
                name,
                type(exc).__name__,
                isinstance(exc, BackendError),
                type(cause).__name__ if cause is not None else None,
            )
            out.append(op)
            self.examples.setdefault(op.label, str(exc))
            self.last_failure = end
            if not isinstance(exc, BackendError):
                self.unexpected.setdefault(type(exc).__name__, traceback.format_exc())
            return False
        end = time.monotonic()
        self._busy_since[index] = 0.0
        out.append(Op(kind, start, end, before, session.id, name))
        self.last_success = end
        return True

    def _work(self, index: int) -> None:
        rng = random.Random(index)
        out = self._records[index]
        store = self.store
        cookie_value = store.config.cookie_value
        n = 0
        while not self._stop.is_set():
            if self.security and rng.random() < self.security:
                ok = self._security(rng, out)
            else:
                slot = rng.randrange(len(self.pool))
                sid = self.pool[slot]
                session = store.open_id(cookie_value(sid))
                n += 1
                name = f"w{index}-{n}"
                ok = self._op(out, "set", session, sid, partial(session.set, name, n), name)
                if ok:
                    ok = self._op(
                        out, "incr", session, session.id, partial(session.incr, COUNTER), COUNTER
                    )
                if session.id is not None and session.id != sid:
                    self.pool[slot] = session.id  # the new cookie a browser would be sent
            if not ok:
                time.sleep(ERROR_PAUSE)

    def _security(self, rng: random.Random, out: list[Op]) -> bool:
        """Invalidate or regenerate one of the victims (sessions made before the run).

        When they run out: one request creates a session, the next one ends it.
        """
        store = self.store
        try:
            sid: str | None = self.victims.pop()
        except IndexError:
            sid = None
        if sid is None:
            fresh = store.open()
            if not self._op(out, "create", fresh, None, partial(fresh.set, "user", 1), "user"):
                return False
            sid = fresh.id
        later = store.open_id(store.config.cookie_value(sid or ""))
        if rng.random() < 0.5:
            return self._op(out, "invalidate", later, sid, later.invalidate)
        return self._op(out, "regenerate", later, sid, later.regenerate)


# ------------------------------------------------------------------ checking


@dataclass
class Tally:
    """What the servers hold, against what the load was told."""

    ops: int = 0
    acked: int = 0
    failed: int = 0
    classes: Counter[str] = field(default_factory=Counter)
    not_backend: int = 0
    writes_acked: int = 0
    writes_lost: int = 0
    incr_acked: int = 0
    incr_lost: int = 0
    incr_failed_applied: int = 0  # failed increments that the server had applied after all
    incr_double: int = 0  # more on the server than acknowledged + failed: applied twice
    replaced: int = 0  # acknowledged writes that found their session gone and made a new one
    invalidations: int = 0
    invalidations_lost: int = 0  # acknowledged, yet the session key exists
    regenerations: int = 0
    regenerations_undone: int = 0  # acknowledged, yet the old id's key exists
    regenerations_dropped: int = 0  # acknowledged, yet the new id's key is missing
    keys: int = 0
    no_ttl: int = 0


def _fetch(client: Any, keys: Sequence[str], command: str) -> list[Any]:
    """``command`` for each key, pipelined in batches (a cluster pipeline splits by node)."""
    out: list[Any] = []
    for first in range(0, len(keys), _BATCH):
        pipe = client.pipeline(transaction=False)
        for key in keys[first : first + _BATCH]:
            pipe.execute_command(command, key)
        out += pipe.execute()
    return out


def _hashes(client: Any, keys: Sequence[str]) -> dict[str, dict[bytes, bytes]]:
    replies = _fetch(client, keys, "HGETALL")
    out: dict[str, dict[bytes, bytes]] = {}
    for key, reply in zip(keys, replies, strict=True):
        if isinstance(reply, list):  # RESP2 without the client's HGETALL callback
            reply = dict(zip(reply[::2], reply[1::2], strict=True))
        out[key] = reply
    return out


def tally(
    ops: Sequence[Op],
    config: SessionConfig,
    client: Any,
    masters: Iterable[Any],
    seeded: Iterable[str] = (),
) -> Tally:
    """Check ``ops`` against the data: ``client`` reads any key, ``masters`` are SCANned."""
    t = Tally(ops=len(ops))
    acked_incr: Counter[str] = Counter()
    failed_incr: Counter[str] = Counter()
    sessions: set[str] = set(seeded)
    for op in ops:
        if op.ok:
            t.acked += 1
        else:
            t.failed += 1
            t.classes[op.label] += 1
            t.not_backend += not op.backend
        if op.kind in ("set", "incr"):
            if op.ok and op.after is not None:
                sessions.add(op.after)
                t.replaced += op.after != op.before
                if op.kind == "incr":
                    acked_incr[op.after] += 1
            elif not op.ok and op.kind == "incr" and op.before is not None:
                failed_incr[op.before] += 1
                sessions.add(op.before)

    ids = sorted(sessions)
    data = _hashes(client, [config.key_of(i) for i in ids])
    held = {i: data[config.key_of(i)] for i in ids}
    for op in ops:
        if op.kind == "set" and op.ok and op.after is not None:
            t.writes_acked += 1
            t.writes_lost += (op.field or "").encode() not in held[op.after]
    for sid in ids:
        raw = held[sid].get(COUNTER.encode())
        value = int(raw) if raw is not None else 0
        acked, failed = acked_incr[sid], failed_incr[sid]
        t.incr_acked += acked
        extra = value - acked
        if extra < 0:
            t.incr_lost += -extra
        elif extra > failed:
            t.incr_failed_applied += failed
            t.incr_double += extra - failed
        else:
            t.incr_failed_applied += extra

    gone = [op for op in ops if op.ok and op.kind in ("invalidate", "regenerate")]
    old_keys = [config.key_of(op.before or "") for op in gone]
    new_keys = [config.key_of(op.after) for op in gone if op.kind == "regenerate" and op.after]
    exists = _fetch(client, old_keys + new_keys, "EXISTS")
    old_exists, new_exists = exists[: len(old_keys)], iter(exists[len(old_keys) :])
    for op, still in zip(gone, old_exists, strict=True):
        if op.kind == "invalidate":
            t.invalidations += 1
            t.invalidations_lost += bool(still)
        else:
            t.regenerations += 1
            t.regenerations_undone += bool(still)
            if op.after:
                t.regenerations_dropped += not next(new_exists)

    for master in masters:
        keys = list(master.scan_iter(match=config.prefix + "*", count=1000))
        t.keys += len(keys)
        t.no_ttl += sum(1 for ttl in _fetch(master, keys, "PTTL") if ttl == -1)
    return t
