"""What the fault runs share: settings, small server helpers, and each run's figures."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fault_load import Load, Op, Tally
from hashsession import SessionStore
from hashsession.embedded import EmbeddedRedis

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# The test deployments (tests/topologies.py) and the lossy proxy (tests/lossy_proxy.py)
# serve the fault runs too; every fault module imports this one first.
sys.path.insert(0, str(REPO / "tests"))
HOST = "127.0.0.1"
PREFIX = "hsfault:"
TTL = 3600
POOL = 64  # sessions shared by the load's threads
WARM = 1.5  # seconds of load before the fault
SETTLE = 2.0  # seconds without a failure that end a run

Rows = dict[str, str]
WHEN = "failures, from the fault"
WINDOW = "error window (first failure to first success after the last)"


@dataclass
class Run:
    """One variant of a scenario: its column of figures."""

    name: str
    rows: Rows = field(default_factory=dict)
    tally: Tally | None = None
    facts: dict[str, float] = field(default_factory=dict)
    error: str | None = None
    #: Failure kind -> its first message.
    examples: dict[str, str] = field(default_factory=dict)
    #: Exception class -> first traceback, for failures that were not a BackendError.
    unexpected: dict[str, str] = field(default_factory=dict)


@dataclass
class Scenario:
    key: str
    title: str
    setup: str
    runs: list[Run]
    notes: list[str]
    #: When set, the runs shown as several tables: (caption, runs) each.
    tables: list[tuple[str, list[Run]]] = field(default_factory=list)
    seconds: float = 0.0


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def make_store(target: Any, **extra: Any) -> SessionStore:
    return SessionStore(redis=target, prefix=PREFIX, ttl=TTL, max_keys=3000, **extra)


def close_quietly(client: Any) -> None:
    with contextlib.suppress(Exception):
        client.close()


@contextlib.contextmanager
def loaded(load: Load) -> Iterator[Load]:
    """Run ``load``; its threads stop even if the block fails."""
    load.start()
    try:
        yield load
    finally:
        load.stop()


def info(server: EmbeddedRedis, section: str) -> dict[str, Any]:
    client = server.client(socket_timeout=2)
    try:
        return dict(client.info(section))
    finally:
        client.close()


def role(server: EmbeddedRedis) -> str:
    return str(info(server, "replication")["role"])


def call(client: Any, *args: Any) -> Any:
    """``client.execute_command(*args)``, which redis-py leaves untyped."""
    return client.execute_command(*args)


def kill9(server: EmbeddedRedis) -> None:
    """SIGKILL, as a crash or the OOM killer would; :meth:`EmbeddedRedis.stop` cleans up."""
    assert server.pid is not None
    os.kill(server.pid, signal.SIGKILL)


def guarded(name: str, fn: Callable[..., Run], *args: Any) -> Run:
    """``fn(*args)``; a run that fails is reported with its error, never dropped."""
    try:
        return fn(*args)
    except Exception as exc:
        log(f"{name} failed:\n{traceback.format_exc()}")
        return Run(name, error=f"{type(exc).__name__}: {exc}")


# ------------------------------------------------------------------- figures


def common_rows(t: Tally, ops: Sequence[Op]) -> Rows:
    classes = "; ".join(f"{name}: {n}" for name, n in t.classes.most_common()) or "none"
    return {
        "operations acknowledged / failed": f"{t.acked} / {t.failed}",
        "failed, by class (cause)": classes,
        "failed but not a BackendError": str(t.not_backend),
        "acknowledged writes lost": f"{t.writes_lost} of {t.writes_acked}",
        "acknowledged increments lost": f"{t.incr_lost} of {t.incr_acked}",
        "failed increments applied anyway": str(t.incr_failed_applied),
        "increments applied twice": str(t.incr_double),
        "acknowledged writes that met a vanished session (new id)": str(t.replaced),
        "session keys without a TTL": f"{t.no_ttl} of {t.keys}",
        "longest operation": longest(ops),
    }


def share(part: float, whole: float) -> str:
    """``part`` as a percentage of ``whole``, with two decimals below 1%."""
    if not whole:
        return "-"
    ratio = part / whole
    return f"{ratio:.2%}" if 0 < ratio < 0.01 else f"{ratio:.1%}"


def longest(ops: Sequence[Op]) -> str:
    """The longest operation's time and outcome."""
    if not ops:
        return "-"
    op = max(ops, key=lambda o: o.took)
    return f"{op.took:.2f} s ({op.kind}, " + ("acknowledged)" if op.ok else f"{op.label})")


def window_rows(ops: Sequence[Op], t0: float, facts: dict[str, float]) -> Rows:
    """When operations failed, relative to the fault at ``t0``."""
    fails = [op.end for op in ops if not op.ok and op.end >= t0]
    if not fails:
        facts["window"] = 0.0
        return {WHEN: "no failure", WINDOW: "none"}
    first, last = min(fails), max(fails)
    after = [op.end for op in ops if op.ok and op.start >= last]
    facts["window"] = min(after) - first if after else float("inf")
    return {
        WHEN: f"+{first - t0:.2f} s to +{last - t0:.2f} s",
        WINDOW: f"{min(after) - first:.2f} s" if after else "no success after the last failure",
    }


def security_rows(t: Tally) -> Rows:
    return {
        "acknowledged invalidations lost (key exists)": f"{t.invalidations_lost} of "
        f"{t.invalidations}",
        "acknowledged regenerations undone (old id works)": f"{t.regenerations_undone} of "
        f"{t.regenerations}",
        "acknowledged regenerations whose new key is missing": str(t.regenerations_dropped),
    }


# The shared rows' labels, which tables put last, in this order.
COMMON = [*common_rows(Tally(), ())]
SECURITY_ROWS = [*security_rows(Tally())]


def unexpected_note(runs: Sequence[Run]) -> str:
    """What to say when failures escaped as something other than a BackendError."""
    classes = sorted({name for r in runs for name in r.unexpected})
    count = sum(r.tally.not_backend for r in runs if r.tally)
    where = "; ".join(r.name for r in runs if r.unexpected)
    text = (
        f"**{count} failed operations raised "
        + ", ".join(f"`{c}`" for c in classes)
        + f" instead of a `BackendError`** ({where})."
    )
    if set(classes) <= {"ValueError", "AttributeError"}:
        text += (
            " The stack shows redis-py's reply parser reading a connection that had been "
            "closed under it (by another thread reacting to the failure, by all appearances); "
            "hashsession wraps only redis-py's own errors, so these reach the caller as they "
            "are, against the promise that every error is a `HashSessionError`."
        )
    return text
