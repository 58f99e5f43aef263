"""The sans-I/O heart of a session: which Redis command each operation sends.

:class:`SessionCore` holds one request's view of one session (its id, whether it
is known to exist, what the response must say) and, for every operation,
*plans* a step: the command to send and how to turn the reply into the result.
It never talks to Redis. :class:`~hashsession.session.Session` and
:class:`~hashsession.aio.AsyncSession` only send what it plans, so the two
flavours cannot drift apart.

A step is ``(command, finish, value)``:

* ``command is None``: no round trip is needed; ``value`` is the result;
* ``finish is None``: the raw reply is the result;
* otherwise ``finish(reply)`` is the result, or :data:`AGAIN` when the session
  turned out to be gone and the operation must be planned afresh (the core has
  already switched to a new, empty session, so the next plan creates it).

A finished step may leave commands in :attr:`SessionCore.after`: upkeep of the
owner's index (see :mod:`hashsession.users`) that the session sends right
after the step, in order. Only ``login``, ``regenerate`` of an owned session
and, about once per half idle timeout, the first command of an owned session's
request leave any.
"""

from __future__ import annotations

import json
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from enum import Enum
from typing import Any, Final

from redis.exceptions import RedisClusterException, RedisError, ResponseError

from hashsession.config import SessionConfig
from hashsession.errors import (
    BackendError,
    DecodeError,
    EncodeError,
    HashSessionError,
    InvalidKeyError,
    LimitExceededError,
    ValueTypeError,
)
from hashsession.scripts import (
    CREATE,
    CREATED_FIELD,
    INDEX,
    INDEXED_FIELD,
    LIMIT_ERROR,
    LIVE,
    LOGIN,
    OPEN,
    OWNER_FIELD,
    SEEN_FIELD,
    TTL_FIELD,
)

__all__ = [
    "AGAIN",
    "BACKEND_ERRORS",
    "INCR_SHA",
    "MISSING",
    "SET_SHA",
    "After",
    "Command",
    "SessionCore",
    "SessionView",
    "Step",
    "dump_meta",
    "index_command",
    "index_put",
    "load_meta",
    "load_queue",
]

Command = tuple[Any, ...]
#: What redis-py raises when Redis fails: its error tree, plus the cluster client's own
#: exceptions (CROSSSLOT refusals, uncovered slots), which do not derive from RedisError.
BACKEND_ERRORS: tuple[type[Exception], ...] = (RedisError, RedisClusterException)
Step = tuple[Command | None, Callable[[Any], Any] | None, Any]
#: A command sent after a step, and what to do with its reply (which may queue more).
After = tuple[Command, Callable[[Any], None] | None]


class _Marker(Enum):
    AGAIN = "again"
    MISSING = "missing"


AGAIN: Final = _Marker.AGAIN
MISSING: Final = _Marker.MISSING

_SET, _INCR, _INCR_FLOAT = LIVE["set"].sha, LIVE["incr"].sha, LIVE["incr_float"].sha
_SETDEFAULT, _POP, _LEN = LIVE["setdefault"].sha, LIVE["pop"].sha, LIVE["len"].sha
_PUSH = LIVE["push"].sha
#: The live set and incr scripts, for the sessions' fast paths.
SET_SHA, INCR_SHA = _SET, _INCR
_CLEAR, _CAS, _TOUCH, _RENAME = (
    LIVE["clear"].sha,
    LIVE["cas"].sha,
    LIVE["touch"].sha,
    LIVE["rename"].sha,
)


class State(Enum):
    """Where a session stands in this request."""

    NEW = "new"  # nothing in Redis for it (yet): reads are empty, the first write creates it
    PENDING = "pending"  # an id came with the request; the first command checks and slides it
    LIVE = "live"  # known to exist in this request; its TTL was slid already


def _now_ms() -> int:
    return int(time.time() * 1000)


def _text(name: bytes | str) -> str:
    return name.decode("utf-8") if isinstance(name, bytes) else name


def _is_user_field(name: bytes | str) -> bool:
    return not (name[:1] == b"\x00" or name[:1] == "\x00")


def index_command(index: str, op: str, *args: Any) -> Command:
    """The ``INDEX`` script on a user's index key (see :data:`hashsession.scripts.INDEX`)."""
    return ("EVALSHA", INDEX.sha, 1, index, _now_ms(), op, *args)


def index_put(
    index: str,
    removes: Iterable[str | bytes] = (),
    adds: Iterable[tuple[int, str]] = (),
    cap: int = 0,
) -> Command:
    """Remove and add (good-until ms, session key) entries of a user's index, then prune.

    With ``cap``, the entries beyond it that expire soonest are evicted (never one added
    here); the reply lists their session keys, which the caller must delete.
    """
    gone = list(removes)
    flat: list[Any] = []
    for good, member in adds:
        flat += [good, member]
    return index_command(index, "put", cap, len(gone), *gone, *flat)


class SessionCore:
    """One request's session, as state plus plans; no I/O."""

    __slots__ = (
        "_id",
        "_incoming_id",
        "_key",
        "_state",
        "_ttl_override",
        "accessed",
        "after",
        "config",
        "had_cookie",
        "invalidated",
        "live_key",
        "lost",
        "modified",
        "rejected",
    )

    def __init__(
        self, config: SessionConfig, session_id: str | None, *, had_cookie: bool = False
    ) -> None:
        self.config = config
        self._id = session_id
        self._incoming_id = session_id
        self._key = config.key_of(session_id) if session_id is not None else None
        self._state = State.PENDING if session_id is not None else State.NEW
        #: The Redis key while the session is LIVE (checked and slid in this request), else
        #: ``None``: the sessions' fast paths send plain commands only when it is set.
        self.live_key: str | None = None
        self._ttl_override: int | None = None
        self.had_cookie = had_cookie
        self.rejected = had_cookie and session_id is None
        self.accessed = False
        self.modified = False
        self.invalidated = False
        self.lost = False
        #: Index upkeep to send after the step just finished (``None`` or empty: nothing).
        self.after: list[After] | None = None

    # ------------------------------------------------------------------ views

    @property
    def id(self) -> str | None:
        """The session's id, or ``None`` while nothing is stored for it."""
        return self._id if self._state is not State.NEW else None

    @property
    def key(self) -> str | None:
        """The Redis key of the session, or ``None`` while nothing is stored for it."""
        return self._key if self._state is not State.NEW else None

    @property
    def state(self) -> State:
        return self._state

    @property
    def is_new(self) -> bool:
        """Whether the session did not exist in Redis when this request began."""
        return self._incoming_id is None or self.lost or self.invalidated

    def __repr__(self) -> str:
        return f"<session {self._state.value} key={self.key!r}>"

    # ------------------------------------------------------------ keys/values

    def field(self, key: object) -> str:
        """Check a session key and return it as the hash field it names."""
        if type(key) is not str and not isinstance(key, str):
            raise InvalidKeyError(key, "session keys must be str")
        if key[:1] == "\x00":
            raise InvalidKeyError(key, "keys starting with a NUL byte are reserved")
        limit = self.config.max_key_bytes
        if len(key) * 4 > limit and len(key.encode("utf-8", "surrogatepass")) > limit:
            raise LimitExceededError(key, f"key longer than {limit} bytes")
        return key

    @staticmethod
    def meta_field(name: str) -> str:
        """The reserved hash field for library metadata ``name`` (no user key can name it)."""
        return "\x00" + name

    def encode(self, key: str, value: Any) -> bytes:
        """The stored bytes of ``value``; errors name ``key``."""
        config = self.config
        try:
            if config.bound_codec is not None:  # sealed for this field of this session
                raw: str | bytes = config.bound_codec.dumps_at(value, key, self._bound_key())
            else:
                raw = config.codec.dumps(value)
        except Exception as exc:
            raise EncodeError(key, f"cannot encode {type(value).__name__}: {exc}") from exc
        if type(raw) is str:
            raw = raw.encode("utf-8")
        elif not isinstance(raw, bytes):
            raw = raw.encode("utf-8") if isinstance(raw, str) else bytes(raw)
        if len(raw) > config.max_value_bytes:
            raise LimitExceededError(
                key, f"value of {len(raw)} bytes is over the {config.max_value_bytes} limit"
            )
        return raw

    def decode(self, key: str, raw: bytes) -> Any:
        """The value stored as ``raw`` under ``key``; a :class:`DecodeError` names the key."""
        config = self.config
        try:
            if config.bound_codec is not None:
                return config.bound_codec.loads_at(raw, key, self._bound_key())
            return config.codec.loads(raw)
        except Exception as exc:
            raise DecodeError(key, f"stored value cannot be decoded: {exc}") from exc

    def _bound_key(self) -> str:
        """The Redis key values are bound to; a session not stored yet draws its id now."""
        if self._key is None:
            self._id = self.config.new_id()
            self._key = self.config.key_of(self._id)
        return self._key

    def rebound(
        self, stored: Mapping[str, bytes], old_key: str
    ) -> tuple[list[tuple[str, bytes | None]], list[tuple[str, bytes | None]]]:
        """After the session moved from ``old_key``: the compare-and-set that binds its
        values to the new key (expected, changes), for a codec that binds them."""
        bound = self.config.bound_codec
        assert bound is not None and self._key is not None
        expected: list[tuple[str, bytes | None]] = []
        changes: list[tuple[str, bytes | None]] = []
        for field, raw in stored.items():
            moved = bound.rebind(raw, field, self._key, old_key)
            if moved is not raw:
                expected.append((field, raw))
                changes.append((field, moved))
        return expected, changes

    @staticmethod
    def backoff(attempt: int) -> float:
        """Seconds to wait before retry ``attempt`` of a lost optimistic write.

        Random and growing (up to 50 ms), so racing writers spread out instead of
        colliding again in lockstep.
        """
        return random.uniform(0, min(0.05, 0.002 * 2**attempt))

    def initial_value(self, field: str, raw: bytes | None, default: Any) -> Any:
        """The value an edit starts from: the stored one, or a private copy of ``default``."""
        if raw is None:
            return self.decode(field, self.encode(field, default))
        return self.decode(field, raw)

    def raw_items(self, values: Mapping[str, Any]) -> list[tuple[str, bytes | None]]:
        """Checked fields and encoded values; ``MISSING`` becomes ``None`` (absent)."""
        out: list[tuple[str, bytes | None]] = []
        for key, value in values.items():
            field = self.field(key)
            out.append((field, None if value is MISSING else self.encode(field, value)))
        return out

    def error(self, exc: Exception, key: str | None) -> HashSessionError:
        """The hashsession error for a redis-py error met while working on ``key``."""
        message = str(exc)
        if isinstance(exc, ResponseError):
            if message.startswith(LIMIT_ERROR):
                over = message[len(LIMIT_ERROR) + 1 :] or key
                return LimitExceededError(
                    over, f"the session would hold more than {self.config.max_keys} keys"
                )
            if "not an integer" in message or "not a float" in message:
                return ValueTypeError(key, "the stored value is not a number to increment")
        where = f"session {self.key!r}" if self.key else "a new session"
        return BackendError(f"Redis failed on {where}: {message}")

    # ---------------------------------------------------------- state changes

    def _enter(self, state: State) -> None:
        self._state = state
        self.live_key = self._key if state is State.LIVE else None

    def vanished(self) -> None:
        """A fast-path write found the session gone: start afresh (the next plan creates it)."""
        self._lose()

    def _lose(self) -> _Marker:
        """The session vanished (expired, invalidated, never existed): start afresh."""
        self._enter(State.NEW)
        self.lost = True
        if not (self.config.adopt_unknown_ids and not self.invalidated):
            self._id = None
            self._key = None
        return AGAIN

    def _open(self, op: str, *args: Any, keys: tuple[str, ...] = ()) -> Command:
        assert self._key is not None
        c = self.config
        head = ("EVALSHA", OPEN.sha, 1 + len(keys), self._key, *keys)
        return (*head, c.idle_ms, _now_ms(), c.absolute_ms, op, *args)

    def _opened(self, reply: Any) -> Any:
        if reply is None:
            return self._lose()
        self._enter(State.LIVE)
        if len(reply) > 1:  # the owner's index entry is due: [result, owner, good-until]
            self._refresh_index(reply[1], reply[2])
        return reply[0] if reply else None

    def _refresh_index(self, owner: bytes, good: int) -> None:
        assert self._key is not None
        self._queue(index_put(self.config.index_key(owner), adds=[(good, self._key)]))

    def _queue(self, cmd: Command, finish: Callable[[Any], None] | None = None) -> None:
        if self.after is None:
            self.after = []
        self.after.append((cmd, finish))

    def _plan_create(
        self,
        pairs: list[tuple[str, bytes]],
        result: Any,
        meta: Sequence[tuple[str, Any]] = (),
        now: int | None = None,
    ) -> Step:
        c = self.config
        if len(pairs) > c.max_keys:
            raise LimitExceededError(
                pairs[c.max_keys][0], f"the session would hold more than {c.max_keys} keys"
            )
        if self._id is None:
            self._id = c.new_id()
            self._key = c.key_of(self._id)
        if c.bound_codec is not None and self._key is not None:  # bound to a key now gone?
            rebind, key = c.bound_codec.rebind, self._key
            pairs = [(f, rebind(v, f, key)) for f, v in pairs]
        now = now or _now_ms()
        ttl = self._ttl_override or c.idle_ms
        if c.absolute_ms:
            ttl = min(ttl, c.absolute_ms)
        cmd: list[Any] = ["EVALSHA", CREATE.sha, 1, self._key, ttl, CREATED_FIELD, now]
        if self._ttl_override:
            cmd += [TTL_FIELD, self._ttl_override]
        for f, v in meta:
            cmd += [f, v]
        for f, v in pairs:
            cmd += [f, v]

        def created(reply: Any) -> Any:
            if reply == 1:
                self._enter(State.LIVE)
                return result
            # The key exists already: an adopted id someone else just created, or a
            # vanishingly unlikely collision of fresh ids.
            if c.adopt_unknown_ids and self._id == self._incoming_id:
                self._enter(State.LIVE)
            else:
                self._id = self._key = None
            return AGAIN

        return tuple(cmd), created, None

    def _write(
        self, live: Command, op: str, args: tuple[Any, ...], finish: Callable[[Any], Any]
    ) -> Step:
        """A write on an existing session: the live script, or OPEN on the first command."""
        if self._state is State.LIVE:

            def done(reply: Any) -> Any:
                return self._lose() if reply is None else finish(reply)

            return live, done, None

        def first(reply: Any) -> Any:
            out = self._opened(reply)
            return out if out is AGAIN else finish(out)

        return self._open(op, *args), first, None

    def _read(self, live: Command, op: str, args: tuple[Any, ...], empty: Any) -> Step:
        if self._state is State.LIVE:
            return live, None, None
        if self._state is State.NEW:
            return None, None, empty
        return self._open(op, *args), self._opened, None

    # ------------------------------------------------------------------ reads

    def plan_get(self, field: str) -> Step:
        """``HGET``: the raw value of ``field`` or ``None``."""
        self.accessed = True
        return self._read(("HGET", self._key, field), "get", (field,), None)

    def plan_has(self, field: str) -> Step:
        self.accessed = True
        step = self._read(("HEXISTS", self._key, field), "has", (field,), False)
        return step

    def plan_keys(self) -> Step:
        self.accessed = True
        if self._state is State.NEW:
            return None, None, []
        step = self._read(("HKEYS", self._key), "keys", (), [])

        def names(reply: Any) -> Any:
            if step[1] is not None:
                reply = step[1](reply)
                if reply is AGAIN:
                    return AGAIN
            return [_text(n) for n in reply or () if _is_user_field(n)]

        return step[0], names, None

    def plan_all(self) -> Step:
        """``HGETALL`` of the user fields, as a dict of raw values."""
        self.accessed = True
        if self._state is State.NEW:
            return None, None, {}
        step = self._read(("HGETALL", self._key), "all", (), {})

        def pairs(reply: Any) -> Any:
            if step[1] is not None:
                reply = step[1](reply)
                if reply is AGAIN:
                    return AGAIN
            if isinstance(reply, list):
                reply = dict(zip(reply[::2], reply[1::2], strict=True))
            return {_text(k): v for k, v in (reply or {}).items() if _is_user_field(k)}

        return step[0], pairs, None

    def plan_len(self) -> Step:
        self.accessed = True
        return self._read(("EVALSHA", _LEN, 1, self._key), "len", (), 0)

    def plan_hmget(self, fields: list[str]) -> Step:
        """Raw values of several fields in one ``HMGET``."""
        self.accessed = True
        return self._read(
            ("HMGET", self._key, *fields), "hmget", tuple(fields), [None] * len(fields)
        )

    # ----------------------------------------------------------------- writes

    def plan_set(self, pairs: list[tuple[str, bytes]]) -> Step:
        """``HSET`` of one or more fields, after checking the session still exists."""
        self.accessed = self.modified = True
        if self._state is State.NEW:
            return self._plan_create(pairs, None)
        flat: list[Any] = [self.config.max_keys]
        for f, v in pairs:
            flat += [f, v]
        args = tuple(flat)
        return self._write(("EVALSHA", _SET, 1, self._key, *args), "set", args, _none)

    def plan_incr(self, field: str, amount: int | float) -> Step:
        """``HINCRBY`` (or ``HINCRBYFLOAT`` for a float amount) of ``field``."""
        self.accessed = self.modified = True
        is_float = isinstance(amount, float)
        if self._state is State.NEW:
            return self._plan_create([(field, repr(amount).encode("ascii"))], amount)
        args = (self.config.max_keys, field, repr(amount))
        if is_float:
            return self._write(
                ("EVALSHA", _INCR_FLOAT, 1, self._key, *args), "incr_float", args, float
            )
        return self._write(("EVALSHA", _INCR, 1, self._key, *args), "incr", args, _same)

    def plan_setdefault(self, field: str, raw: bytes) -> Step:
        """Store ``raw`` unless ``field`` is set; the raw value stored afterwards."""
        self.accessed = self.modified = True
        if self._state is State.NEW:
            return self._plan_create([(field, raw)], raw)
        args = (self.config.max_keys, field, raw)
        return self._write(("EVALSHA", _SETDEFAULT, 1, self._key, *args), "setdefault", args, _same)

    def plan_push(self, field: str, item: bytes, unique: bool) -> Step:
        """Append ``item`` to the newline-separated queue in reserved ``field``, atomically.

        With ``unique``, an item already queued is not added again. 1 if appended, else 0.
        """
        self.accessed = self.modified = True
        if self._state is State.NEW:
            return self._plan_create([(field, item)], 1)
        args = (field, item, "1" if unique else "0")
        return self._write(("EVALSHA", _PUSH, 1, self._key, *args), "push", args, _same)

    def plan_pop(self, field: str) -> Step:
        """Read and delete ``field`` atomically; its raw value or ``None``."""
        self.accessed = self.modified = True
        return self._read(("EVALSHA", _POP, 1, self._key, field), "pop", (field,), None)

    def plan_delete(self, field: str) -> Step:
        """``HDEL``: 1 if the field existed."""
        self.accessed = self.modified = True
        return self._read(("HDEL", self._key, field), "delete", (field,), 0)

    def plan_clear(self) -> Step:
        """Delete every user field, keeping the session (and its metadata) alive."""
        self.accessed = self.modified = True
        return self._read(("EVALSHA", _CLEAR, 1, self._key), "clear", (), 0)

    def plan_cas(
        self,
        expected: Iterable[tuple[str, bytes | None]],
        changes: Iterable[tuple[str, bytes | None]],
    ) -> Step:
        """Apply ``changes`` (raw, or ``None`` to delete) only if every field is as ``expected``."""
        self.accessed = self.modified = True
        expected = list(expected)
        changes = list(changes)
        if self._state is State.NEW:
            if any(raw is not None for _, raw in expected):
                return None, None, False
            sets = [(f, raw) for f, raw in changes if raw is not None]
            if not sets:
                return None, None, True
            return self._plan_create(sets, True)
        args: list[Any] = [self.config.max_keys, len(expected)]
        for f, raw in expected:
            args += [f, "0", ""] if raw is None else [f, "1", raw]
        for f, raw in changes:
            args += [f, "d", ""] if raw is None else [f, "s", raw]
        targs = tuple(args)
        return self._write(("EVALSHA", _CAS, 1, self._key, *targs), "cas", targs, _truth)

    def plan_touch(self, ttl_ms: int | None) -> Step:
        """Slide the expiry now; with ``ttl_ms``, also make it this session's idle timeout."""
        self.accessed = True
        if ttl_ms is not None:
            self.modified = True
        if self._state is State.NEW:
            self._ttl_override = ttl_ms or self._ttl_override
            return None, None, None
        c = self.config
        cmd = ("EVALSHA", _TOUCH, 1, self._key, ttl_ms or "", c.idle_ms, _now_ms(), c.absolute_ms)

        def touched(reply: Any) -> Any:
            if reply is None:
                if ttl_ms is not None:
                    self._ttl_override = ttl_ms
                self._lose()
                return None
            self._opened(reply)  # [ttl] or [ttl, owner, good-until]
            return None

        return cmd, touched, None

    def plan_regenerate(self) -> Step:
        """Move the data to a new id in one atomic ``RENAMENX`` (same slot by construction).

        An owned session's index entry moves too: one more command, on the index key.
        """
        self.accessed = self.modified = True
        if self._state is State.NEW:
            if self._id is not None:  # an adopted id that holds nothing: stop adopting it
                self._id = self._key = None
            return None, None, None
        c = self.config
        new_id = c.new_id(like=self._id)
        new_key = c.key_of(new_id)
        args = (c.idle_ms, _now_ms(), c.absolute_ms)
        if self._state is State.LIVE:
            cmd: Command = ("EVALSHA", _RENAME, 2, self._key, new_key, *args)
        else:  # the request's first command: slide the TTL too
            cmd = self._open("rename", *args, keys=(new_key,))

        def renamed(reply: Any) -> Any:
            # [1 | 0 | nil] or [1 | 0, owner, good-until]
            if reply is None or not reply or reply[0] is None:
                self._lose()
                return None
            if reply[0] == 0:  # the new key exists: impossible with fresh ids, so try another
                return AGAIN
            old_key = self._key
            self._id, self._key = new_id, new_key
            self._enter(State.LIVE)
            if len(reply) > 1:
                assert old_key is not None
                self._queue(index_put(c.index_key(reply[1]), [old_key], [(reply[2], new_key)]))
            return None

        return cmd, renamed, None

    def plan_login(self, user: str) -> Step:
        """Regenerate the id and record ``user`` as the owner, then index the session.

        A stored session is renamed by ``LOGIN``; a new one is created with only the
        owner's metadata. Either way the step leaves in :attr:`after` the ``INDEX``
        command adding the session to ``user``'s index (and, under a cap, a ``DEL`` per
        session evicted), and when another user owned the session, its removal from
        that user's index.
        """
        self.accessed = self.modified = True
        c = self.config
        now = _now_ms()
        if self._state is State.NEW:
            self._id = self._key = None  # never log in under an id the client chose
            ttl = self._ttl_override or c.idle_ms
            good = now + ttl + ttl // 2
            if c.absolute_ms:
                good = min(good, now + c.absolute_ms)
            meta = [(OWNER_FIELD, user), (SEEN_FIELD, now), (INDEXED_FIELD, good)]
            cmd, created, _ = self._plan_create([], None, meta, now)
            assert created is not None

            def done(reply: Any) -> Any:
                out = created(reply)
                if out is not AGAIN:
                    self._logged_in(user, None, None, good)
                return out

            return cmd, done, None
        new_id = c.new_id(like=self._id)
        new_key = c.key_of(new_id)
        login = ("EVALSHA", LOGIN.sha, 2, self._key, new_key, c.idle_ms, now, c.absolute_ms, user)

        def logged_in(reply: Any) -> Any:
            if reply is None:  # gone: the next plan creates a new session
                return self._lose()
            if reply == 0:  # the new key exists: impossible with fresh ids, so try another
                return AGAIN
            old_key = self._key
            self._id, self._key = new_id, new_key
            self._enter(State.LIVE)
            self._logged_in(user, old_key, reply[1], reply[2])
            return None

        return login, logged_in, None

    def _logged_in(self, user: str, old_key: str | None, before: bytes | None, good: int) -> None:
        c = self.config
        assert self._key is not None
        same = before is not None and before == user.encode("utf-8")
        removes = [old_key] if same and old_key else []
        cap = c.max_sessions_per_user or 0
        self._queue(index_put(c.index_key(user), removes, [(good, self._key)], cap), self._evict)
        if before is not None and not same and old_key:
            self._queue(index_put(c.index_key(before), [old_key]))

    def _evict(self, reply: Any) -> None:
        """Delete the sessions a login evicted from the index to honour the cap."""
        for key in reply or ():
            self._queue(("DEL", key))

    def plan_invalidate(self) -> Step:
        """Delete the session; the response expires the cookie; later writes start a new one."""
        self.accessed = self.modified = True
        key = self._key if self._state is not State.NEW else None
        self.invalidated = True
        self._enter(State.NEW)
        self._id = self._key = None
        self._ttl_override = None
        if key is None:
            return None, None, None
        return ("DEL", key), _none, None

    # ---------------------------------------------------------------- cookies

    def set_cookie_header(self) -> str | None:
        """The ``Set-Cookie`` value this response must carry, if any."""
        c = self.config
        if self._state is not State.NEW and self._id is not None:
            if self._id != self._incoming_id or self.lost:
                return c.cookie.set_cookie(c.cookie_value(self._id))
            if c.refresh_cookie and c.cookie.max_age and self._state is State.LIVE:
                return c.cookie.set_cookie(c.cookie_value(self._id))
            return None
        if self.had_cookie and (self.invalidated or self.lost or (self.rejected and self.accessed)):
            if c.adopt_unknown_ids and self._id is not None and not self.invalidated:
                return None
            return c.cookie.delete_cookie()
        return None

    def response_headers(self) -> list[tuple[str, str]]:
        """``Set-Cookie`` and ``Vary: Cookie`` headers for the response, as needed."""
        headers: list[tuple[str, str]] = []
        cookie = self.set_cookie_header()
        if cookie is not None:
            headers.append(("Set-Cookie", cookie))
        if self.accessed:
            headers.append(("Vary", "Cookie"))
        return headers


def _none(reply: Any) -> None:
    return None


def _same(reply: Any) -> Any:
    return reply


def _truth(reply: Any) -> bool:
    return bool(reply)


def dump_meta(value: Any) -> bytes:
    """Library metadata as compact JSON (never the user's codec); one line, no newline."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def load_meta(raw: bytes | None) -> Any:
    """Metadata written by :func:`dump_meta`, or ``None``."""
    return None if raw is None else json.loads(raw)


def load_queue(raw: bytes | None) -> list[Any]:
    """The items of a queue built by ``meta_push`` (newline-separated JSON)."""
    return [] if raw is None else [json.loads(line) for line in raw.split(b"\n") if line]


def pairs_of(
    core: SessionCore, items: Mapping[str, Any] | Iterable[tuple[str, Any]]
) -> list[tuple[str, bytes]]:
    """Checked fields and encoded values of ``update()``'s argument."""
    source = items.items() if isinstance(items, Mapping) else items
    out = []
    for key, value in source:
        field = core.field(key)
        out.append((field, core.encode(field, value)))
    return out


class SessionView:
    """The request-level facts both session flavours expose, read from their core."""

    __slots__ = ()
    _core: SessionCore

    @property
    def id(self) -> str | None:
        """The session id, or ``None`` until something is stored."""
        return self._core.id

    @property
    def new(self) -> bool:
        """Whether the session did not exist when this request began."""
        return self._core.is_new

    @property
    def accessed(self) -> bool:
        """Whether this request read or wrote the session (responses then vary on Cookie)."""
        return self._core.accessed

    @property
    def modified(self) -> bool:
        """Whether this request changed the session."""
        return self._core.modified

    @property
    def invalidated(self) -> bool:
        """Whether this request invalidated the session."""
        return self._core.invalidated

    @property
    def core(self) -> SessionCore:
        """The sans-I/O state behind this session (for adapters)."""
        return self._core
