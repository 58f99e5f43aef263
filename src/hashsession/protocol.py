"""The sans-I/O heart of a session: which Redis command each operation sends.

:class:`SessionCore` holds one request's view of one session (its id, whether it
is known to exist, what the response must say) and, for every operation,
*plans* a step: the command to send and how to turn the reply into the result.
It never talks to Redis. :class:`~hashsession.session.Session` and
:class:`~hashsession.aio.AsyncSession` only send what it plans, so the two
flavours cannot drift apart.

A step is ``(command, finish, value)``:

* ``command is None``: no round trip is needed; ``value`` is the result;
* ``command`` is a list: the commands go out as one pipeline (a write with the
  ``WAIT`` that ``wait_for_replicas`` asks for behind it) and the reply is the list
  of their replies;
* ``finish is None``: the raw reply is the result;
* otherwise ``finish(reply)`` is the result, or :data:`AGAIN` when the session
  turned out to be gone and the operation must be planned afresh (the core has
  already switched to a new, empty session, so the next plan creates it).

Planning changes nothing the session believes: its id, key, state and the
cookie its response sends change in ``finish``, once Redis has answered. A step
that fails on its way (the session raises) leaves the session as it was, so the
operation can be called again and sends its command again.

A plan may leave commands in :attr:`SessionCore.before`, sent before the step's
command (its index entry, which ``login`` writes before the session takes an
owner), and a finished step may leave some in :attr:`SessionCore.after`: upkeep of
the owner's index (see :mod:`hashsession.users`) sent right after the step, in
order. Only ``login``, ``regenerate`` of an owned session and, about once per
half idle timeout, the first command of an owned session's request leave any.
After a critical step (``invalidate``, ``regenerate``, ``login``) the session calls
:meth:`SessionCore.settle`, which raises the ``NotReplicatedError`` the step's
``WAIT`` called for, if any.
"""

from __future__ import annotations

import hashlib
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
    NotReplicatedError,
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
    LOGIN_APART,
    LOGIN_NEW,
    MARKER,
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
    "session_reference",
]

Command = tuple[Any, ...]
#: What redis-py raises when Redis fails: its error tree, plus the cluster client's own
#: exceptions (CROSSSLOT refusals, uncovered slots), which do not derive from RedisError.
BACKEND_ERRORS: tuple[type[Exception], ...] = (RedisError, RedisClusterException)
Step = tuple[Command | list[Command] | None, Callable[[Any], Any] | None, Any]
#: A command (or a pipeline of them) sent before or after a step, and what to do with its
#: reply (which may queue more).
After = tuple[Command | list[Command], Callable[[Any], None] | None]


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


#: The least time a login on a Cluster has, once its index entry is in, to make its session
#: (see :func:`marker_grace_ms`).
LOGIN_GRACE_MS: Final = 30_000


def index_command(index: str, op: str, *args: Any) -> Command:
    """The ``INDEX`` script on a user's index key (see :data:`hashsession.scripts.INDEX`)."""
    return ("EVALSHA", INDEX.sha, 1, index, _now_ms(), op, *args)


def index_put(
    index: str,
    removes: Iterable[str | bytes] = (),
    adds: Iterable[tuple[int, str]] = (),
    cap: int = 0,
    spare: str = "",
    dead: Iterable[str | bytes] = (),
) -> Command:
    """Remove and add (good-until ms, session key) entries of a user's index, then prune.

    ``removes`` are sessions known to be gone for good or moved (deleted, renamed): their
    entries go, with any login marker naming them. ``dead`` are sessions found missing:
    their entries go unless a live marker says a login is still making them (see
    :data:`~hashsession.scripts.INDEX`). With ``cap``, the entries beyond it that expire
    soonest are to be evicted (never one added here, nor ``spare``, which does not count:
    the old key of the session logging in); the reply lists their session keys. They stay
    indexed: the caller deletes those sessions, then removes their entries.
    """
    gone, missing = list(removes), list(dead)
    flat: list[Any] = []
    for good, member in adds:
        flat += [good, member]
    return index_command(index, "put", cap, spare, len(gone), *gone, len(missing), *missing, *flat)


def login_marker(new_key: str, old_key: str | None) -> str:
    """The member that marks, in a user's index, a login making ``new_key`` (from ``old_key``).

    Only a login on a Cluster puts one in: there its index entry is written before the
    session, in another slot (see :data:`~hashsession.scripts.INDEX`).
    """
    return f"{MARKER}{new_key}\x00{old_key or ''}"


def marker_grace_ms(config: SessionConfig) -> int:
    """How long a login's marker holds: 30 s, plus room for both of the login's commands
    to wait ``connection_wait_timeout`` for a connection."""
    return LOGIN_GRACE_MS + int(2000 * config.connection_wait)


def session_reference(key: str) -> str:
    """A short name for a session in errors and logs: the first 12 hex digits of its key's SHA1.

    It reveals neither the id nor the key (so not the id of the raw layout, whose key
    holds it), and the session's handle from :meth:`~hashsession.SessionStore.sessions_of`
    starts with it after the dot, so the two can be matched.
    """
    return hashlib.sha1(key.encode("utf-8")).hexdigest()[:12]


class _Indexed:
    """The entry a login put in its user's index before the session took the owner."""

    __slots__ = ("evicted", "good", "id", "key", "user")

    def __init__(self, user: str, session_id: str, key: str, good: int) -> None:
        self.user = user
        self.id = session_id
        self.key = key
        self.good = good
        #: Sessions the entry's put chose to evict to honour the user's cap.
        self.evicted: list[bytes] = []


class SessionCore:
    """One request's session, as state plus plans; no I/O."""

    __slots__ = (
        "_id",
        "_incoming_id",
        "_indexed",
        "_key",
        "_state",
        "_ttl_override",
        "accessed",
        "after",
        "before",
        "config",
        "had_cookie",
        "invalidated",
        "live_key",
        "lost",
        "modified",
        "rejected",
        "short",
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
        #: Commands to send before the step just planned (``None`` or empty: nothing).
        self.before: list[After] | None = None
        #: The shortfall of the last critical step's ``WAIT``, raised by :meth:`settle`.
        self.short: NotReplicatedError | None = None
        #: A login's index entry, put before a step that found the session gone.
        self._indexed: _Indexed | None = None

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
        try:
            return self.config.codec.loads(raw)
        except Exception as exc:
            raise DecodeError(key, f"stored value cannot be decoded: {exc}") from exc

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
        where = f"session {session_reference(self.key)}" if self.key else "a new session"
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
        session_id: str | None = None,
    ) -> Step:
        """``CREATE`` a session under ``session_id``, else its adopted id, else a new one.

        The session takes the id only when Redis has created it.
        """
        c = self.config
        if len(pairs) > c.max_keys:
            raise LimitExceededError(
                pairs[c.max_keys][0], f"the session would hold more than {c.max_keys} keys"
            )
        if session_id is None:
            session_id = self._id if self._id is not None else c.new_id()
        key = c.key_of(session_id)
        now = now or _now_ms()
        ttl = self._ttl_override or c.idle_ms
        if c.absolute_ms:
            ttl = min(ttl, c.absolute_ms)
        cmd: list[Any] = ["EVALSHA", CREATE.sha, 1, key, ttl, CREATED_FIELD, now]
        if self._ttl_override:
            cmd += [TTL_FIELD, self._ttl_override]
        for f, v in meta:
            cmd += [f, v]
        for f, v in pairs:
            cmd += [f, v]

        def created(reply: Any) -> Any:
            if reply == 1:
                self._id, self._key = session_id, key
                self._enter(State.LIVE)
                return result
            # The key exists already: an adopted id someone else just created, or a
            # vanishingly unlikely collision of fresh ids.
            if c.adopt_unknown_ids and session_id == self._incoming_id:
                self._id, self._key = session_id, key
                self._enter(State.LIVE)
            elif session_id == self._id:
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
            if ttl_ms is not None:  # this session's timeout now (or its successor's, if gone)
                self._ttl_override = ttl_ms
            if reply is None:
                self._lose()
                return None
            self._opened(reply)  # [ttl] or [ttl, owner, good-until]
            return None

        return cmd, touched, None

    def plan_regenerate(self) -> Step:
        """Move the data to a new id in one atomic ``RENAMENX`` (same slot by construction).

        An owned session's index entry moves too: one more command, on the index key.
        The session takes the new id once Redis has renamed it.
        """
        self.accessed = self.modified = True
        if self._state is State.NEW:
            if self._id is not None:  # an adopted id that holds nothing: stop adopting it
                self._id = self._key = None
            return self._critical((None, None, None))
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

        # Under wait_for_replicas a shortfall still leaves the new id: the master renamed.
        return self._critical((cmd, renamed, None))

    def plan_login(self, user: str) -> Step:
        """Regenerate the id and record ``user`` as the owner, indexed in the same step.

        No session is ever owned without being in its owner's index, whichever command
        fails, so "log out everywhere" cannot miss one. Off a Cluster, one script renames
        a stored session (``LOGIN``) or creates a new one (``LOGIN_NEW``), puts it in the
        index and deletes the sessions beyond the user's cap, atomically. On a Cluster the
        index lives in another slot: the entry for the new key goes in first
        (:attr:`before`; under a cap it names the sessions to evict), then ``LOGIN_APART``
        or ``CREATE`` makes the session; if that fails, the index holds an entry for a key
        that does not exist, which costs nothing. Then the evicted sessions are deleted
        before they are unindexed (with the old key's entry, when ``user`` owned the
        session already). When another user owned it, the old key leaves that user's
        index last (:attr:`after`).
        """
        self.accessed = self.modified = True
        c = self.config
        now = _now_ms()
        if c.same_slot_ids:
            return self._plan_login_apart(user, now)
        cap = c.max_sessions_per_user or 0
        index = c.index_key(user)
        if self._state is State.NEW:  # never under an id the client chose: a new one
            new_id = c.new_id()
            new_key = c.key_of(new_id)
            ttl = self._ttl_override or c.idle_ms
            good = now + ttl + ttl // 2
            if c.absolute_ms:
                good = min(good, now + c.absolute_ms)
            meta = [(OWNER_FIELD, user), (SEEN_FIELD, now), (INDEXED_FIELD, good)]
            create, created, _ = self._plan_create([], None, meta, now, session_id=new_id)
            assert created is not None and isinstance(create, tuple)
            # CREATE's arguments after its key (ttl, fields) follow LOGIN_NEW's own.
            ttl_arg, fields = create[4], create[5:]
            cmd = ("EVALSHA", LOGIN_NEW.sha, 2, new_key, index, ttl_arg, now, cap, good, *fields)
            return self._critical((cmd, created, None))
        new_id = c.new_id(like=self._id)
        new_key = c.key_of(new_id)
        args = (c.idle_ms, now, c.absolute_ms, user, cap)
        login = ("EVALSHA", LOGIN.sha, 3, self._key, new_key, index, *args)

        def logged_in(reply: Any) -> Any:
            if reply is None:  # gone: the next plan creates a new session
                return self._lose()
            if reply == 0:  # the new key exists: impossible with fresh ids, so try another
                return AGAIN
            old_key = self._key
            self._id, self._key = new_id, new_key
            self._enter(State.LIVE)
            before = reply[1]
            if before is not None and before != user.encode("utf-8") and old_key:
                self._queue(index_put(c.index_key(before), [old_key]))
            return None

        # Under wait_for_replicas a shortfall still leaves the new id: the master renamed.
        return self._critical((login, logged_in, None))

    def _plan_login_apart(self, user: str, now: int) -> Step:
        """:meth:`plan_login` on a Cluster: the index entry first, then the session."""
        c = self.config
        indexed, self._indexed = self._indexed, None
        if indexed is not None and indexed.user != user:
            indexed = None
        if self._state is State.NEW:
            # Never under an id the client chose: a new one (or the one indexed already).
            if indexed is None:
                ttl = self._ttl_override or c.idle_ms
                good = now + ttl + ttl // 2
                if c.absolute_ms:
                    good = min(good, now + c.absolute_ms)
                indexed = self._index_first(user, c.new_id(), good, None, now)
            meta = [(OWNER_FIELD, user), (SEEN_FIELD, now), (INDEXED_FIELD, indexed.good)]
            cmd, created, _ = self._plan_create([], None, meta, now, session_id=indexed.id)
            assert created is not None
            entry = indexed

            def done(reply: Any) -> Any:
                out = created(reply)
                if out is not AGAIN:
                    self._logged_in_apart(entry, None, None)
                return out

            return self._critical((cmd, done, None))
        # The session's own timeout, if an earlier request set one, is unknown here:
        # LOGIN_APART caps the session to this entry, and its next request moves both along.
        ttl = self._ttl_override or c.idle_ms
        good = now + ttl + ttl // 2
        entry = self._index_first(user, c.new_id(like=self._id), good, self._key, now)
        args = (c.idle_ms, now, c.absolute_ms, user, entry.good)
        login = ("EVALSHA", LOGIN_APART.sha, 2, self._key, entry.key, *args)

        def logged_in(reply: Any) -> Any:
            if reply is None:  # gone: the next plan creates a new session, indexed already
                self._indexed = entry
                return self._lose()
            if reply == 0:  # the new key exists: impossible with fresh ids, so try another
                return AGAIN
            old_key = self._key
            self._id, self._key = entry.id, entry.key
            self._enter(State.LIVE)
            self._logged_in_apart(entry, old_key, reply[1])
            return None

        return self._critical((login, logged_in, None))

    def _index_first(
        self, user: str, new_id: str, good: int, old_key: str | None, now: int
    ) -> _Indexed:
        """Plan the ``INDEX`` put of ``new_id``'s key in ``user``'s index, sent first.

        With it goes the login's marker (the new key and ``old_key``, the session's key
        before the login, if it has one): until the marker's score, the entry is not
        pruned for naming a key that does not exist yet, and whoever drops the entry
        (``revoke_user``, ``revoke``) deletes ``old_key`` too, so the login cannot bring
        the session in after them (see :data:`~hashsession.scripts.INDEX`).
        """
        c = self.config
        entry = _Indexed(user, new_id, c.key_of(new_id), good)
        cap = c.max_sessions_per_user or 0
        adds = [(good, entry.key), (now + marker_grace_ms(c), login_marker(entry.key, old_key))]
        put = index_put(c.index_key(user), adds=adds, cap=cap, spare=old_key or "")

        def chosen(reply: Any) -> None:
            entry.evicted = list(reply or ())

        self.before = [(put, chosen)]
        return entry

    def _logged_in_apart(self, entry: _Indexed, old_key: str | None, before: bytes | None) -> None:
        """Queue what follows a login on a Cluster: the old key leaves another owner's index;
        evictions are deleted, then unindexed with the old key (if ``user`` owned it).

        An evicted session the ``DEL`` found missing may be one another login is still
        making: it leaves the index only if no live marker says so (``dead``).
        """
        c = self.config
        same = before is not None and before == entry.user.encode("utf-8")
        if before is not None and not same and old_key:
            self._queue(index_put(c.index_key(before), [old_key]))
        index = c.index_key(entry.user)
        ended: list[str | bytes] = [old_key] if same and old_key else []
        dead: list[str | bytes] = []
        evicted = list(entry.evicted)

        def unindex() -> None:
            if ended or dead:
                self._queue(index_put(index, ended, dead=dead))

        # Deleted before they are unindexed, so a failure leaves them indexed; the last
        # DEL's reply queues the unindexing, once every reply is known.
        for n, key in enumerate(evicted):

            def sort(reply: Any, key: bytes = key, last: bool = n == len(evicted) - 1) -> None:
                (ended if reply else dead).append(key)
                if last:
                    unindex()

            self._queue(("DEL", key), sort)
        if not evicted:
            unindex()

    def plan_invalidate(self) -> Step:
        """Delete the session; the response expires the cookie; later writes start a new one.

        The session ends here once Redis has deleted it (and, under ``wait_for_replicas``,
        enough replicas confirmed): until then it is as it was, so calling this again
        sends the ``DEL`` (and the ``WAIT``) again, and the response does not drop a
        cookie that still names a live session.
        """
        self.accessed = self.modified = True
        key = self._key if self._state is not State.NEW else None

        def ended(reply: Any = None) -> None:
            self.invalidated = True
            self._enter(State.NEW)
            self._id = self._key = None
            self._ttl_override = None

        if key is None:
            ended()
            return self._critical((None, None, None))
        return self._critical((("DEL", key), ended, None), hold=True)

    def _critical(self, step: Step, *, hold: bool = False) -> Step:
        """``step`` as a security-critical write: with the ``WAIT`` ``wait_for_replicas`` asks for.

        The write and the ``WAIT`` go out as one pipeline. When too few replicas confirm,
        :meth:`settle` raises :class:`NotReplicatedError` after the step has finished: the
        session follows the master (a rename is in force there), or with ``hold`` stays
        as it was, so that calling the operation again sends the write and waits again.
        """
        self.short = None
        c = self.config
        cmd, finish, value = step
        if not c.wait_replicas or cmd is None:
            return step
        assert not isinstance(cmd, list)

        def waited(replies: Any) -> Any:
            reply, confirmed = replies
            if confirmed < c.wait_replicas:
                self.short = NotReplicatedError(c.wait_replicas, confirmed)
                if hold:
                    return None
            return reply if finish is None else finish(reply)

        return [cmd, ("WAIT", c.wait_replicas, c.wait_timeout_ms)], waited, value

    def settle(self) -> None:
        """Raise the :class:`NotReplicatedError` of the last critical step, if it fell short."""
        short, self.short = self.short, None
        if short is not None:
            raise short

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
