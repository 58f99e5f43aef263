"""The synchronous session: a live ``MutableMapping`` over one Redis hash.

Every operation is one Redis command, sent when it is called. There is no
``save()``: ``session["cart"] = [1, 2]`` has reached Redis when the line returns,
or it has raised. Mutating a value read from the session (``session["cart"]
.append(3)``) changes only your copy; use :meth:`Session.append` and the other
value edits (atomic on the server), or :meth:`Session.edit` for any other change.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator, Mapping, MutableMapping
from contextlib import contextmanager
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from hashsession.config import MAX_SECONDS
from hashsession.errors import ConfigurationError, ValueTypeError
from hashsession.protocol import (
    AGAIN,
    BACKEND_ERRORS,
    CACHED,
    I64_MAX,
    I64_MIN,
    MISSING,
    After,
    Command,
    SessionCore,
    SessionView,
    Step,
    ValueEdit,
    dump_meta,
    load_meta,
    pairs_of,
)
from hashsession.transport import pipeline, resend
from hashsession.users import UserId, user_text
from hashsession.values import Counter, FloatCounter, Recorder, adder, counted, increment_of

if TYPE_CHECKING:
    from hashsession.topology import SyncClient

__all__ = ["Session", "ttl_ms"]


def ttl_ms(ttl: int | float | timedelta) -> int:
    """Milliseconds from seconds or a timedelta; positive, finite, at most 1000 years.

    Anything else raises :class:`~hashsession.ConfigurationError` (a ``ValueError``)
    naming ``ttl``: a timeout Redis cannot take, once stored, would fail every later
    request of the session.
    """
    secs = ttl.total_seconds() if isinstance(ttl, timedelta) else ttl
    if (
        isinstance(secs, bool)
        or not isinstance(secs, (int, float))
        or not 0 < secs <= MAX_SECONDS  # False for NaN too
    ):
        raise ConfigurationError(
            "ttl", f"a timeout must be a positive number of seconds up to 1000 years, not {ttl!r}"
        )
    return max(1, int(secs * 1000))


class Session(SessionView, MutableMapping[str, Any]):
    """One request's session: a dict whose every change is written to Redis at once.

    Reads and writes each cost one round trip; a session never touched costs
    none. ``incr``, ``setdefault``, ``pop``, ``session[k] += n`` and the value
    edits (``append``, ``extend``, ``add``, ``discard``, ``set_in``,
    ``delete_in``) are atomic on the server, so concurrent requests never lose
    each other's updates.
    """

    __slots__ = ("_client", "_core", "_execute", "_late", "_opening", "_snapshot")

    def __init__(self, core: SessionCore | Callable[[], SessionCore], client: SyncClient) -> None:
        if isinstance(core, SessionCore):
            self._core, self._opening = core, None
        else:  # worked out when first needed (see SessionView)
            self._opening, self._late = core, False
        self._client = client
        self._execute: Callable[..., Any] = client.execute_command
        # Values fetched by keys()'s HGETALL, each served once to the __getitem__ that
        # dict(session) calls right after, so dict(session) is one round trip.
        self._snapshot: dict[str, bytes] | None = None

    # ------------------------------------------------------------ transport

    def _send(self, cmd: Command | list[Command], key: str | None) -> Any:
        if isinstance(cmd, list):  # a write and its WAIT, or deletes and their unindexing
            try:
                return pipeline(self._client, cmd, *self._core.config.patience)
            except BACKEND_ERRORS as exc:
                raise self._core.error(exc, key) from exc
        link = self._core.link
        if link is not None:  # the near cache's TTL refresh goes on its tracking link
            self._core.link = None
            try:
                return link.execute(*cmd)
            except BACKEND_ERRORS as exc:
                return self._resend(cmd, key, exc)
        try:
            return self._execute(*cmd)
        except BACKEND_ERRORS as exc:
            return self._resend(cmd, key, exc)

    def _ready(self, cmd: Command, field: str) -> Any:
        """The reply to a command the core handed ready (or the value it had cached)."""
        if cmd[0] is CACHED:
            return cmd[1]
        try:
            return self._execute(*cmd)
        except BACKEND_ERRORS as exc:
            return self._resend(cmd, field, exc)

    def _resend(self, cmd: Command, key: str | None, exc: Exception) -> Any:
        """After ``cmd`` raised ``exc``: its reply if sending it again is safe and works
        (see :mod:`hashsession.transport`), else the session's error for ``key``."""
        if self._core.near is not None:  # it may have changed the session: not cached
            self._core.near_drop()
        try:
            return resend(self._client, cmd, exc, *self._core.config.patience)
        except BACKEND_ERRORS as error:
            raise self._core.error(error, key) from error

    def _run(self, plan: Callable[..., Step], key: str | None, *args: Any) -> Any:
        self._snapshot = None
        core = self._core
        while True:
            cmd, finish, value = plan(*args)
            if cmd is None:
                return value
            if core.before:
                self._upkeep(core.before)
            if core.near is None:
                reply = self._send(cmd, key)
            else:
                try:
                    reply = self._send(cmd, key)
                finally:
                    core.near_sent(finish)
            if finish is None:
                return reply
            out = finish(reply)
            if out is not AGAIN:
                if core.after:
                    self._upkeep(core.after)
                return out

    def _run_critical(self, plan: Callable[..., Step], *args: Any) -> None:
        """Run a security-critical step; under ``wait_for_replicas`` it carries a ``WAIT``.

        :class:`~hashsession.NotReplicatedError` is raised once the step has finished
        (see :meth:`SessionCore._critical <hashsession.protocol.SessionCore._critical>`).
        """
        self._run(plan, None, *args)
        self._core.settle()

    def _upkeep(self, queue: list[After]) -> None:
        """Send the commands a plan left before or after its step (a user's index)."""
        try:
            while queue:
                cmd, finish = queue.pop(0)
                reply = self._send(cmd, None)
                if finish is not None:
                    finish(reply)
        finally:
            queue.clear()

    def __repr__(self) -> str:
        return f"<Session {self._core.state.value} id={'set' if self.id else None}>"

    # ---------------------------------------------------------------- reads

    def __getitem__(self, key: str) -> Any:
        core = self._core
        field = core.field(key)
        snapshot = self._snapshot
        cmd = core.ready_get(field) if snapshot is None else None
        if cmd is not None:
            raw = self._ready(cmd, field)
        else:
            raw = snapshot.pop(field, None) if snapshot is not None else None
            if raw is None:
                raw = self._run(core.plan_get, field, field)
        if raw is None:
            raise KeyError(key)
        config = core.config
        if len(raw) > config.max_value_bytes:
            value = core.decode(field, raw)  # raises the LimitExceededError that names the key
        else:
            try:
                value = config.codec.loads(raw)
            except Exception:
                value = core.decode(field, raw)  # raises the DecodeError that names the key
        kind = type(value)
        return counted(value, core, field) if kind is int or kind is float else value

    def get(self, key: str, default: Any = None) -> Any:
        """The value under ``key``, or ``default``; one ``HGET``."""
        core = self._core
        field = core.field(key)
        cmd = core.ready_get(field)
        if cmd is not None:
            self._snapshot = None
            raw = self._ready(cmd, field)
        else:
            raw = self._run(core.plan_get, field, field)
        return default if raw is None else core.decode(field, raw)

    def __contains__(self, key: object) -> bool:
        core = self._core
        field = core.field(key)
        cmd = core.ready_has(field)
        if cmd is not None:
            self._snapshot = None
            return bool(self._ready(cmd, field))
        return bool(self._run(core.plan_has, field, field))

    def __iter__(self) -> Iterator[str]:
        return iter(self._run(self._core.plan_keys, None))

    def __len__(self) -> int:
        return int(self._run(self._core.plan_len, None))

    def to_dict(self) -> dict[str, Any]:
        """Every key and value, from one ``HGETALL``."""
        raw = self._run(self._core.plan_all, None)
        decode = self._core.decode
        return {k: decode(k, v) for k, v in raw.items()}

    def keys(self) -> Any:
        """The keys, from one ``HGETALL`` whose values serve the reads that follow at once.

        That makes ``dict(session)`` (which calls ``keys()`` then ``session[k]`` for each)
        one round trip; any other operation drops the fetched values.
        """
        raw = self._run(self._core.plan_all, None)
        self._snapshot = raw
        return dict.fromkeys(raw).keys()

    def items(self) -> Any:
        """Key/value pairs, from one ``HGETALL``."""
        return self.to_dict().items()

    def values(self) -> Any:
        """The values, from one ``HGETALL``."""
        return self.to_dict().values()

    def get_many(self, *keys: str) -> list[Any]:
        """Several values (``None`` where missing) in one ``HMGET``."""
        fields = [self._core.field(k) for k in keys]
        raws = self._run(self._core.plan_hmget, None, fields)
        return [
            None if r is None else self._core.decode(f, r)
            for f, r in zip(fields, raws, strict=True)
        ]

    # --------------------------------------------------------------- writes

    def __setitem__(self, key: str, value: Any) -> None:
        core = self._core
        field = core.field(key)
        kind = type(value)
        if kind is Counter or kind is FloatCounter:
            delta = increment_of(value, core, field)
            if delta is not None:
                if type(delta) is int:
                    core.int_amount(field, delta)
                self._incr(field, delta)
                return
        self._set(field, core.encode(field, value))

    def set(self, key: str, value: Any) -> None:
        """Store ``value`` under ``key`` now (the same as ``session[key] = value``)."""
        core = self._core
        field = core.field(key)
        self._set(field, core.encode(field, value))

    def _set(self, field: str, raw: bytes) -> None:
        core = self._core
        cmd = core.ready_set(field, raw)
        if cmd is not None:
            self._snapshot = None
            if core.written(self._ready(cmd, field)):
                return
        self._run(core.plan_set, field, [(field, raw)])

    def _incr(self, field: str, amount: int | float) -> Any:
        bound = self._core.config.bound_codec
        if bound is None:
            return self._hincr(field, amount)
        if bound.counter_field(field):
            try:
                return self._hincr(field, amount)
            except ValueTypeError:  # a sealed number, which the server cannot add to
                pass
        return self.apply(field, adder(field, amount), 0)

    def _hincr(self, field: str, amount: int | float) -> Any:
        core = self._core
        cmd = core.ready_incr(field, amount)
        if cmd is not None:
            self._snapshot = None
            reply = self._send(cmd, field)
            if core.written(reply):
                return reply
        return self._run(core.plan_incr, field, field, amount)

    def update(self, other: Any = (), /, **kwargs: Any) -> None:
        """Store many keys in one ``HSET``: all of them or, on error, none."""
        pairs = pairs_of(self._core, other)
        if kwargs:
            pairs += pairs_of(self._core, kwargs)
        if pairs:
            self._run(self._core.plan_set, pairs[0][0], pairs)

    def __delitem__(self, key: str) -> None:
        if not self.delete(key):
            raise KeyError(key)

    def delete(self, key: str) -> bool:
        """Remove ``key`` if present; whether it was."""
        core = self._core
        field = core.field(key)
        cmd = core.ready_delete(field)
        if cmd is not None:
            self._snapshot = None
            return core.deleted(self._ready(cmd, field))
        return bool(self._run(core.plan_delete, field, field))

    def incr(self, key: str, amount: int = 1) -> int:
        """Add ``amount`` to the integer under ``key`` (0 if missing) with ``HINCRBY``."""
        core = self._core
        field = core.field(key)
        if type(amount) is not int or not I64_MIN <= amount <= I64_MAX:
            core.int_amount(field, amount)  # raises, naming the key
        return int(self._incr(field, amount))

    def incr_float(self, key: str, amount: float = 1.0) -> float:
        """Add ``amount`` to the number under ``key`` with ``HINCRBYFLOAT``."""
        core = self._core
        field = core.field(key)
        return float(self._incr(field, core.float_amount(field, amount)))

    def setdefault(self, key: str, default: Any = None) -> Any:
        """The value under ``key``, storing ``default`` first if missing; one atomic step."""
        field = self._core.field(key)
        raw = self._run(self._core.plan_setdefault, field, field, self._core.encode(field, default))
        return self._core.decode(field, raw)

    def pop(self, key: str, default: Any = MISSING) -> Any:
        """Remove ``key`` and return its value, atomically."""
        field = self._core.field(key)
        raw = self._run(self._core.plan_pop, field, field)
        if raw is None:
            if default is MISSING:
                raise KeyError(key)
            return default
        return self._core.decode(field, raw)

    def clear(self) -> None:
        """End the session, as :meth:`invalidate` does: one ``DEL``; the response expires
        its cookie, and a later write starts a new session under a new id.

        This is what Flask, Flask-Session and starsessions do with an emptied session
        (``session.clear()`` is Flask's usual logout). Metadata goes too.
        """
        self.invalidate()

    def compare_and_set(self, expected: Mapping[str, Any], changes: Mapping[str, Any]) -> bool:
        """Apply ``changes`` only if every key in ``expected`` holds that value.

        ``MISSING`` in ``expected`` means "absent"; in ``changes`` it deletes.
        Values are compared by their encoding. One atomic round trip.
        """
        core = self._core
        exp = [
            (core.field(k), None if v is MISSING else core.encode(k, v))
            for k, v in expected.items()
        ]
        chg = [
            (core.field(k), None if v is MISSING else core.encode(k, v)) for k, v in changes.items()
        ]
        return bool(self._run(core.plan_cas, None, exp, chg))

    # ---------------------------------------------------------- value edits
    # One list or dict value changed in place, atomically on the server: one Lua script,
    # one round trip, never a conflict. They need the built-in JSON codec (the default);
    # with another codec each is an optimistic read and compare-and-set, like apply().

    def append(self, key: str, item: Any, *, max_len: int | None = None) -> int:
        """Append ``item`` to the list under ``key`` (created if missing); its new length.

        With ``max_len``, only the newest ``max_len`` items are kept (a bounded
        history). A value that is not a list raises :class:`ValueTypeError` and
        a list that would outgrow ``max_value_size`` :class:`LimitExceededError`;
        both name the key, and nothing is written.
        """
        return int(self._edit_value(self._core.edit_append(key, (item,), max_len)))

    def extend(self, key: str, items: Iterable[Any], *, max_len: int | None = None) -> int:
        """Append every item of ``items`` to the list under ``key`` at once; its new length.

        As :meth:`append`: the list is created if missing, ``max_len`` keeps the newest.
        """
        return int(self._edit_value(self._core.edit_append(key, items, max_len)))

    def add(self, key: str, item: Any) -> bool:
        """Append ``item`` to the list under ``key`` unless it is in it; whether it was added.

        A list used as a set (JSON has no sets). Items are the same when their
        encodings are (so ``1`` and ``1.0`` differ, and so do dicts with their keys in
        another order). The list is created if missing.
        """
        return bool(self._edit_value(self._core.edit_add(key, item)))

    def discard(self, key: str, item: Any) -> bool:
        """Remove ``item`` (every copy) from the list under ``key``; whether it was there.

        Items are compared as by :meth:`add`. A missing key is left missing.
        """
        return bool(self._edit_value(self._core.edit_discard(key, item)))

    def set_in(self, key: str, sub: str, value: Any) -> None:
        """Set ``session[key][sub] = value`` in the dict under ``key`` (created if missing).

        Other keys of the dict, and their order, are kept; a concurrent ``set_in``
        of another sub-key is never lost.
        """
        self._edit_value(self._core.edit_set_in(key, sub, value))

    def delete_in(self, key: str, sub: str) -> bool:
        """Remove ``sub`` from the dict under ``key``; whether it was there."""
        return bool(self._edit_value(self._core.edit_delete_in(key, sub)))

    def _edit_value(self, edit: ValueEdit) -> Any:
        if edit.plan is not None:
            return self._run(edit.plan, edit.field)
        assert edit.change is not None
        return self._optimistic(edit.field, edit.change)

    def _optimistic(self, field: str, change: Callable[[bytes | None], Any]) -> Any:
        """Read ``field``, ``change`` it, compare-and-set; again while the write loses."""
        core = self._core
        retries = core.retries()
        while True:
            raw = self._run(core.plan_get, field, field)
            new_raw, result = change(raw)
            if new_raw is None or self._run(
                core.plan_cas, field, [(field, raw)], [(field, new_raw)]
            ):
                return result
            time.sleep(retries.wait(field))

    # ----------------------------------------------------- optimistic edits

    @contextmanager
    def edit(self, key: str, default: Any = None) -> Iterator[Any]:
        """Read-modify-write one value without losing concurrent changes.

        ``with session.edit("cart", []) as cart: cart.append(3)`` reads the value,
        lets the block change it, then writes it only if nobody changed it
        meanwhile; otherwise it re-reads, replays the block's calls on the newer
        value and tries again after a random wait that grows with each lost race.
        It gives up with :class:`ConflictError` only once ``edit_timeout`` seconds
        (5 by default) have passed since the first write (or after ``edit_retries``
        tries, if that cap is set). An exception in the block writes nothing.

        For a list or a dict, :meth:`append`, :meth:`add`, :meth:`discard`,
        :meth:`set_in` and the like are atomic on the server and never conflict.
        """
        core = self._core
        field = core.field(key)
        raw = self._run(core.plan_get, field, field)
        recorder = Recorder(core.initial_value(field, raw, default))
        yield recorder
        retries = core.retries()
        while True:
            new_raw = core.encode(field, recorder.target)
            if self._run(core.plan_cas, field, [(field, raw)], [(field, new_raw)]):
                return
            time.sleep(retries.wait(key))
            raw = self._run(core.plan_get, field, field)
            recorder = recorder.replay_on(core.initial_value(field, raw, default))

    def apply(self, key: str, fn: Callable[[Any], Any], default: Any = None) -> Any:
        """Set ``key`` to ``fn(current value)`` atomically, rerunning ``fn`` on conflict.

        Retries and gives up as :meth:`edit` does. Returns the value written.
        """
        core = self._core
        field = core.field(key)

        def change(raw: bytes | None) -> tuple[bytes, Any]:
            new = fn(core.initial_value(field, raw, default))
            return core.encode(field, new), new

        return self._optimistic(field, change)

    # ------------------------------------------------------------- metadata
    # Reserved fields for adapters (flash queues, CSRF token, owner): same hash, same TTL,
    # hidden from iteration and len(), always JSON whatever the codec.

    def meta_get(self, name: str) -> Any:
        """Metadata ``name``, or ``None``; one ``HGET``."""
        field = self._core.meta_field(name)
        return load_meta(self._run(self._core.plan_get, None, field), name)

    def meta_set(self, name: str, value: Any) -> None:
        """Store metadata ``name`` now."""
        field = self._core.meta_field(name, write=True)
        self._run(self._core.plan_set, None, [(field, dump_meta(value, name))])

    def meta_setdefault(self, name: str, value: Any) -> Any:
        """Metadata ``name``, storing ``value`` first if it is unset; one atomic step."""
        field = self._core.meta_field(name, write=True)
        raw = self._run(self._core.plan_setdefault, None, field, dump_meta(value, name))
        return load_meta(raw, name)

    def meta_pop(self, name: str) -> Any:
        """Remove metadata ``name`` and return its raw bytes (or ``None``), atomically."""
        return self._run(self._core.plan_pop, None, self._core.meta_field(name, write=True))

    def meta_push(self, name: str, item: Any, unique: bool = False) -> bool:
        """Append ``item`` to queue ``name`` atomically; ``unique`` skips one already queued."""
        field = self._core.meta_field(name, write=True)
        return bool(self._run(self._core.plan_push, None, field, dump_meta(item, name), unique))

    # ------------------------------------------------------------ lifecycle

    def set_cookie_lifetime(self, seconds: int) -> None:
        """Give this session's cookie a lifetime of its own, in seconds (0: a browser-session
        cookie), instead of the cookie policy's ``max_age``; one write. Every response that
        sends the cookie uses it, and (with ``refresh_cookie``) every request that uses
        the session sends it again, learning it from its first command at no extra cost."""
        self._run(self._core.plan_lifetime, None, seconds)

    def touch(self, ttl: int | float | timedelta | None = None) -> None:
        """Slide the idle timeout now; with ``ttl``, make it this session's timeout from now on."""
        self._run(self._core.plan_touch, None, None if ttl is None else ttl_ms(ttl))

    def adjust_timeout(self, ttl: int | float | timedelta) -> None:
        """Change this session's idle timeout for the rest of its life."""
        self.touch(ttl)

    def regenerate(self) -> None:
        """Give the session a new id, keeping its data and expiry; the old id stops working."""
        moved_from = self._core.key
        self._run_critical(self._core.plan_regenerate)
        self._rebind(moved_from)

    def invalidate(self) -> None:
        """Delete the session now; the response expires its cookie."""
        self._run_critical(self._core.plan_invalidate)

    def login(self, user_id: UserId) -> None:
        """Make ``user_id`` the owner under a new id (data and expiry kept), and index it.

        Two round trips: the rename, then the owner's index (one more per session
        evicted by ``max_sessions_per_user``, and one when another user owned it).
        """
        moved_from = self._core.key
        self._run_critical(self._core.plan_login, user_text(user_id))
        self._rebind(moved_from)

    def _rebind(self, old_key: str | None) -> None:
        """After a move from ``old_key``, bind the values to the new key (sealed stores only).

        Two more round trips: ``HGETALL``, then one compare-and-set of every sealed value.
        """
        core = self._core
        if core.config.bound_codec is None or old_key is None or core.key in (None, old_key):
            return
        retries = core.retries()
        while True:
            expected, changes = core.rebound(self._run(core.plan_all, None), old_key)
            if not changes or self._run(core.plan_cas, None, expected, changes):
                return
            time.sleep(retries.wait("(the values sealed for the old id)"))

    def save(self) -> None:
        """Nothing to do: every change was written when it was made."""
