"""How hashsession sends, when a send fails before reaching Redis.

Every command and pipeline the library sends goes out through the client a
store was given, most of them straight through its ``execute_command`` (the
fast paths of :mod:`hashsession.session` and :mod:`hashsession.aio`). When that
raises, the sessions, the per-user flows and the Django engine hand the error to
:func:`resend` / :func:`aresend` here, and they send pipelines with
:func:`pipeline` / :func:`apipeline`; this module alone decides what may be
sent again:

- ``NoScriptError``: the server does not know a script (after a restart or
  ``SCRIPT FLUSH``); the command goes again once, with the script's source.
- ``MaxConnectionsError``: the client's connection pool is full. redis-py's
  default pool (what ``redis.Redis(...)``, ``redis.asyncio.Redis(...)``,
  Sentinel's ``master_for(...)`` and every cluster node get) holds at most 100
  connections and raises this instead of waiting, so a burst of concurrent
  requests would fail. It is raised while taking a connection from the pool,
  before anything is written (``ConnectionPool.get_connection``, a cluster
  node's ``acquire_connection``, a pipeline's connections all taken before its
  first write), so the command never reached Redis and is sent again as soon as
  a connection is free, for up to the store's ``connection_wait_timeout``
  (10 s by default); then :class:`~hashsession.BackendError` says so.

- A slot being migrated (a Redis Cluster reshard): a command naming two keys
  (``regenerate()``'s rename, ``login()``'s ``LOGIN_APART``) gets ``ASK`` while
  one of them has moved to the new node, and ``TRYAGAIN`` whenever the two are
  not on one node, which lasts until the slot is moved. redis-py follows a few
  of these redirects, then raises ``ClusterError("TTL exhausted.")``. Each of
  them is a refusal before the command runs (redis-py follows nothing else), so
  the command is sent again, after pauses growing from 5 ms to 100 ms, for up
  to the store's ``migration_retry_timeout`` (5 s by default); then
  :class:`~hashsession.BackendError` names that setting.

Waiting commands queue per client, first come first served, and only the first
:data:`POLLERS` of them try the pool again, after short random pauses growing
from 0.1 ms to 5 ms; the others sleep until one of those is done. So a burst of
hundreds of threads or tasks on a small pool costs little CPU while it waits.

Everything else (a lost reply, a timeout, a refusal by the server) is raised:
whether a command that may have run should run again is the caller's choice.

Pipelines on a cluster need care. redis-py's asyncio cluster pipeline sends to
its nodes in parallel tasks, so when one node's pool is full the others may
have run their part: :func:`apipeline` splits a cluster pipeline per node itself
(one pipeline per node, sent concurrently, as redis-py does), each part is sent
whole or not at all, and only a part that found its node's pool full is sent
again. The sync cluster pipeline takes a connection to every node before it
writes to any, so it is all or nothing; but it needs all of them at once, so
after a full pool :func:`pipeline` sends it one node at a time. A command a
cluster pipeline had to resend alone (after ``MOVED``) and that found a full
pool comes back as that command's error, and is resent alone.

A client that resends commands itself (redis-py's default retry policy resends
after a lost reply or a timeout; the clients built from URLs do not, see
:mod:`hashsession.topology`) may meet the full pool on such a resend; the
command is then sent once more here, as the client's own policy would have.
"""

from __future__ import annotations

import asyncio
import logging
import random
import threading
import time
import weakref
from collections import deque
from typing import Any

from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster
from redis.exceptions import (
    AskError,
    ClusterError,
    MaxConnectionsError,
    NoScriptError,
    TryAgainError,
)

from hashsession.config import DEFAULT_MIGRATION_RETRY
from hashsession.errors import BackendError
from hashsession.protocol import BACKEND_ERRORS, Command
from hashsession.scripts import with_source

__all__ = [
    "POLLERS",
    "Patience",
    "apipeline",
    "aresend",
    "asend",
    "never_ran",
    "pipeline",
    "resend",
    "send",
]

log = logging.getLogger(__name__)

#: Commands per client that try a full pool again; the other waiting ones queue.
POLLERS = 16
# Pauses between tries for a free connection: random up to this, doubling each try...
_FIRST_PAUSE = 0.0002
# ...up to this.
_LONGEST_PAUSE = 0.005
# Pauses before sending again a command refused while its slot moves: random up to
# this, doubling each time...
_FIRST_MOVING_PAUSE = 0.005
# ...up to this.
_LONGEST_MOVING_PAUSE = 0.1
# Commands that name no key (only ever sent to one server, never in a cluster pipeline).
_KEYLESS = frozenset({"WAIT", "PING", "PUBLISH"})


# --------------------------------------------------------------------------- turns


class _Turns:
    """A first-come-first-served semaphore for threads, with a timeout."""

    def __init__(self, size: int) -> None:
        self.lock = threading.Lock()
        self.free = size
        self.waiting: deque[threading.Event] = deque()

    def acquire(self, timeout: float) -> bool:
        with self.lock:
            if self.free and not self.waiting:
                self.free -= 1
                return True
            granted = threading.Event()
            self.waiting.append(granted)
        if granted.wait(max(timeout, 0)):
            return True
        with self.lock:
            if granted.is_set():  # handed over just as the wait ended
                return True
            self.waiting.remove(granted)
            return False

    def release(self) -> None:
        with self.lock:
            if self.waiting:
                self.waiting.popleft().set()  # the turn passes straight on
            else:
                self.free += 1


class _AsyncTurns:
    """The asyncio twin of :class:`_Turns` (one event loop)."""

    def __init__(self, size: int) -> None:
        self.free = size
        self.waiting: deque[asyncio.Future[None]] = deque()

    async def acquire(self, timeout: float) -> bool:
        if self.free and not self.waiting:
            self.free -= 1
            return True
        granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.waiting.append(granted)
        try:
            await asyncio.wait((granted,), timeout=max(timeout, 0))
        except BaseException:  # cancelled: pass on a turn handed over meanwhile
            if granted.done():
                self.release()
            else:
                self.waiting.remove(granted)
            raise
        if granted.done():
            return True
        self.waiting.remove(granted)
        return False

    def release(self) -> None:
        while self.waiting:
            granted = self.waiting.popleft()
            if not granted.done():
                granted.set_result(None)
                return
        self.free += 1


_turns: weakref.WeakKeyDictionary[Any, _Turns] = weakref.WeakKeyDictionary()
_async_turns: weakref.WeakKeyDictionary[Any, _AsyncTurns] = weakref.WeakKeyDictionary()
_turns_lock = threading.Lock()


def _turns_of(client: Any) -> _Turns:
    with _turns_lock:
        turns = _turns.get(client)
        if turns is None:
            turns = _turns[client] = _Turns(POLLERS)
        return turns


def _async_turns_of(client: Any) -> _AsyncTurns:
    with _turns_lock:  # event loops in other threads have clients of their own
        turns = _async_turns.get(client)
        if turns is None:
            turns = _async_turns[client] = _AsyncTurns(POLLERS)
        return turns


# --------------------------------------------------------------------------- the policy


class Patience:
    """What to send again after a failed send, and when.

    One per command or pipeline: it counts ``limit`` seconds down from the first
    time it finds the pool full, holds one of the client's :data:`POLLERS` turns
    while it tries the pool again, resends a script with its source at most
    once, and resends a command a migrating slot refused for ``moving`` seconds
    from the first refusal. :meth:`done` gives the turn back.
    """

    __slots__ = (
        "client",
        "deadline",
        "limit",
        "moving",
        "moving_deadline",
        "moving_pause",
        "next_pause",
        "sourced",
        "turn",
    )

    def __init__(self, client: Any, limit: float, moving: float = DEFAULT_MIGRATION_RETRY) -> None:
        self.client = client
        self.limit = limit
        self.deadline: float | None = None
        self.next_pause = _FIRST_PAUSE
        self.moving = moving
        self.moving_deadline: float | None = None
        self.moving_pause = _FIRST_MOVING_PAUSE
        self.sourced = False
        self.turn: _Turns | _AsyncTurns | None = None

    def again(self, exc: Exception, cmd: Command) -> tuple[Command, float | None]:
        """The command to send after ``exc``, and the seconds to wait first (``None``:
        wait for a turn first); raises ``exc`` when sending again is not safe."""
        if isinstance(exc, NoScriptError) and not self.sourced:
            self.sourced = True
            return with_source(cmd), 0.0
        if isinstance(exc, MaxConnectionsError):
            return cmd, self.pause(exc)
        if never_ran(exc):
            return cmd, self.moving_wait(exc)
        raise exc

    def again_all(
        self, exc: Exception, commands: list[Command]
    ) -> tuple[list[Command], float | None]:
        """As :meth:`again`, for a pipeline that raised ``exc`` as a whole."""
        if isinstance(exc, NoScriptError) and not self.sourced:
            self.sourced = True
            return [with_source(cmd) for cmd in commands], 0.0
        if isinstance(exc, MaxConnectionsError):
            return commands, self.pause(exc)
        if never_ran(exc):
            return commands, self.moving_wait(exc)
        raise exc

    def moving_wait(self, exc: Exception) -> float:
        """Seconds to wait before sending again a command a migrating slot refused;
        :class:`BackendError` once ``migration_retry_timeout`` is spent."""
        now = time.monotonic()
        if self.moving_deadline is None:
            self.moving_deadline = now + self.moving
            log.debug(
                "Redis Cluster slot moving (%s): sending again for up to %g s"
                " (migration_retry_timeout)",
                exc,
                self.moving,
            )
        left = self.moving_deadline - now
        if left <= 0:
            raise BackendError(
                f"the Redis Cluster kept refusing the command for"
                f" {self.moving:g} s: its keys' slot is being migrated ({exc}); raise the"
                " store's migration_retry_timeout if a slot takes longer to move"
            ) from exc
        pause = random.uniform(0.5, 1.0) * self.moving_pause
        self.moving_pause = min(2 * self.moving_pause, _LONGEST_MOVING_PAUSE)
        return min(pause, left)

    def pause(self, exc: MaxConnectionsError) -> float | None:
        """Seconds to wait before trying a full pool again, ``None`` for "wait for a
        turn first"; :class:`BackendError` once the wait is spent."""
        now = time.monotonic()
        if self.deadline is None:
            self.deadline = now + self.limit
            log.debug(
                "Redis connection pool full: waiting up to %g s (connection_wait_timeout)",
                self.limit,
            )
        left = self.deadline - now
        if left <= 0:
            raise self.gave_up(exc) from exc
        if self.turn is None:
            return None
        pause = random.uniform(0.5, 1.0) * self.next_pause
        self.next_pause = min(2 * self.next_pause, _LONGEST_PAUSE)
        return min(pause, left)

    def take_turn(self, exc: MaxConnectionsError) -> None:
        """Wait (blocking) for a turn to try the pool, until the deadline."""
        assert self.deadline is not None
        turns = _turns_of(self.client)
        if not turns.acquire(self.deadline - time.monotonic()):
            raise self.gave_up(exc) from exc
        self.turn = turns

    async def atake_turn(self, exc: MaxConnectionsError) -> None:
        """The asyncio twin of :meth:`take_turn`."""
        assert self.deadline is not None
        turns = _async_turns_of(self.client)
        if not await turns.acquire(self.deadline - time.monotonic()):
            raise self.gave_up(exc) from exc
        self.turn = turns

    def done(self) -> None:
        """Give back the turn held, if any."""
        if self.turn is not None:
            self.turn.release()
            self.turn = None

    def gave_up(self, exc: MaxConnectionsError) -> BackendError:
        """The error to raise (from ``exc``) when the wait is spent."""
        return BackendError(
            f"no free Redis connection for {self.limit:g} s: the client's connection"
            f" pool{_size_of(self.client)} stayed exhausted ({exc}); raise the store's"
            " connection_wait_timeout or the pool's max_connections"
        )


def never_ran(exc: BaseException) -> bool:
    """Whether ``exc`` says a Redis Cluster refused the command before running it
    because the slot of its keys is moving (or the client's slot map was stale).

    ``TRYAGAIN``, ``ASK`` and ``MOVED`` replies come before a command runs, and
    redis-py's "TTL exhausted" means every one of its tries got one of them.
    """
    if isinstance(exc, (TryAgainError, AskError)):  # MovedError is an AskError
        return True
    return isinstance(exc, ClusterError) and "TTL exhausted" in str(exc)


def _size_of(client: Any) -> str:
    pool = getattr(client, "connection_pool", None)
    size = getattr(pool, "max_connections", None)
    return f" (max_connections={size})" if isinstance(size, int) else ""


def _unsent(replies: list[Any]) -> list[int]:
    """Positions of pipeline replies that say their command never ran: it found the
    pool full, or a migrating slot refused it; the first other error reply is raised."""
    unsent: list[int] = []
    for n, reply in enumerate(replies):
        if isinstance(reply, Exception):
            if not isinstance(reply, MaxConnectionsError) and not never_ran(reply):
                raise reply
            unsent.append(n)
    return unsent


def _key_of(cmd: Command) -> Any:
    """The key ``cmd`` works on (the first, for a script), or ``None``."""
    name = str(cmd[0]).upper()
    if name in ("EVALSHA", "EVAL"):
        return cmd[3] if int(cmd[2]) > 0 else None
    if name in _KEYLESS or len(cmd) < 2:
        return None
    return cmd[1]


def _parts(client: Any, commands: list[Command]) -> list[list[int]] | None:
    """Positions of ``commands`` per cluster node holding their keys; ``None`` when they
    all go to one node (or their nodes are unknown: the pipeline then raises)."""
    parts: dict[str | None, list[int]] = {}
    try:
        for n, cmd in enumerate(commands):
            key = _key_of(cmd)
            node = None if key is None else client.get_node_from_key(key)
            parts.setdefault(None if node is None else node.name, []).append(n)
    except BACKEND_ERRORS:
        return None
    return list(parts.values()) if len(parts) > 1 else None


# --------------------------------------------------------------------------- sync


def send(client: Any, cmd: Command, wait: float, moving: float = DEFAULT_MIGRATION_RETRY) -> Any:
    """Send ``cmd`` on ``client``, resending it when that is safe (see the module)."""
    try:
        return client.execute_command(*cmd)
    except BACKEND_ERRORS as exc:
        return resend(client, cmd, exc, wait, moving)


def resend(
    client: Any, cmd: Command, exc: Exception, wait: float, moving: float = DEFAULT_MIGRATION_RETRY
) -> Any:
    """The reply of ``cmd`` sent again after its send raised ``exc``, waiting up to
    ``wait`` seconds for a free connection and ``moving`` seconds for a migrating slot;
    raises when it must not be sent again, or still failed."""
    patience = Patience(client, wait, moving)
    try:
        return _resend(client, cmd, exc, patience)
    finally:
        patience.done()


def _resend(client: Any, cmd: Command, exc: Exception, patience: Patience) -> Any:
    while True:
        cmd, pause = patience.again(exc, cmd)
        _sleep(patience, pause, exc)
        try:
            return client.execute_command(*cmd)
        except BACKEND_ERRORS as error:
            exc = error


def _sleep(patience: Patience, pause: float | None, exc: Exception) -> None:
    if pause is None:
        assert isinstance(exc, MaxConnectionsError)
        patience.take_turn(exc)
    elif pause:
        time.sleep(pause)


def pipeline(
    client: Any, commands: list[Command], wait: float, moving: float = DEFAULT_MIGRATION_RETRY
) -> list[Any]:
    """Send ``commands`` as one non-transactional pipeline (one round trip per node).

    A full pool is waited for (on a cluster, then one node at a time), and a script
    the server does not know is sent with its source, and a command a migrating slot
    refused is sent again alone. Raises the first error reply.
    """
    patience = Patience(client, wait, moving)
    try:
        return _pipeline(client, commands, patience, isinstance(client, RedisCluster))
    finally:
        patience.done()


def _pipeline(client: Any, commands: list[Command], patience: Patience, split: bool) -> list[Any]:
    while True:
        try:
            replies = _send_pipeline(client, commands)
            unsent = _unsent(replies)
        except BACKEND_ERRORS as exc:
            commands, pause = patience.again_all(exc, commands)
            exhausted = isinstance(exc, MaxConnectionsError)
            parts = _parts(client, commands) if split and exhausted else None
            if parts is not None:  # nothing was sent; each node's part needs one connection
                replies = [None] * len(commands)
                for part in parts:
                    sent = _pipeline(client, [commands[n] for n in part], patience, False)
                    for n, reply in zip(part, sent, strict=True):
                        replies[n] = reply
                return replies
            _sleep(patience, pause, exc)
            continue
        for n in unsent:
            replies[n] = _resend(client, commands[n], replies[n], patience)
        return replies


def _send_pipeline(client: Any, commands: list[Command]) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for cmd in commands:
        pipe.execute_command(*cmd)
    return pipe.execute(raise_on_error=False)  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- asyncio


async def asend(
    client: Any, cmd: Command, wait: float, moving: float = DEFAULT_MIGRATION_RETRY
) -> Any:
    """The asyncio twin of :func:`send`."""
    try:
        return await client.execute_command(*cmd)
    except BACKEND_ERRORS as exc:
        return await aresend(client, cmd, exc, wait, moving)


async def aresend(
    client: Any, cmd: Command, exc: Exception, wait: float, moving: float = DEFAULT_MIGRATION_RETRY
) -> Any:
    """The asyncio twin of :func:`resend`."""
    patience = Patience(client, wait, moving)
    try:
        return await _aresend(client, cmd, exc, patience)
    finally:
        patience.done()


async def _aresend(client: Any, cmd: Command, exc: Exception, patience: Patience) -> Any:
    while True:
        cmd, pause = patience.again(exc, cmd)
        await _asleep(patience, pause, exc)
        try:
            return await client.execute_command(*cmd)
        except BACKEND_ERRORS as error:
            exc = error


async def _asleep(patience: Patience, pause: float | None, exc: Exception) -> None:
    if pause is None:
        assert isinstance(exc, MaxConnectionsError)
        await patience.atake_turn(exc)
    elif pause:
        await asyncio.sleep(pause)


async def apipeline(
    client: Any, commands: list[Command], wait: float, moving: float = DEFAULT_MIGRATION_RETRY
) -> list[Any]:
    """The asyncio twin of :func:`pipeline`; a cluster pipeline goes as one per node,
    each waited for on its own."""
    parts = None
    if len(commands) > 1 and isinstance(client, AsyncRedisCluster):
        try:
            await client.initialize()  # the slot map (no I/O once read)
        except BACKEND_ERRORS:
            pass  # the pipeline raises it
        else:
            parts = _parts(client, commands)
    if parts is None:
        return await _apipeline_part(client, commands, wait, moving)
    results = await asyncio.gather(
        *(_apipeline_part(client, [commands[n] for n in part], wait, moving) for part in parts),
        return_exceptions=True,  # every part settles before an error is raised
    )
    replies: list[Any] = [None] * len(commands)
    for part, result in zip(parts, results, strict=True):
        if isinstance(result, BaseException):
            raise result
        for n, reply in zip(part, result, strict=True):
            replies[n] = reply
    return replies


async def _apipeline_part(
    client: Any, commands: list[Command], wait: float, moving: float
) -> list[Any]:
    patience = Patience(client, wait, moving)
    try:
        while True:
            try:
                replies = await _asend_pipeline(client, commands)
                unsent = _unsent(replies)
            except BACKEND_ERRORS as exc:
                commands, pause = patience.again_all(exc, commands)
                await _asleep(patience, pause, exc)
                continue
            for n in unsent:
                replies[n] = await _aresend(client, commands[n], replies[n], patience)
            return replies
    finally:
        patience.done()


async def _asend_pipeline(client: Any, commands: list[Command]) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for cmd in commands:
        pipe.execute_command(*cmd)
    return await pipe.execute(raise_on_error=False)  # type: ignore[no-any-return]
