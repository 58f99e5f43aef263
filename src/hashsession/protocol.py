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

Once the response headers are out, an adapter sets :attr:`SessionCore.headers_sent`.
From then on a step that would need a new cookie raises
:class:`~hashsession.HeadersSentError` before planning any command: the first write
of a session not stored yet (its new id would have no cookie: an orphan key),
``regenerate()`` and ``login()`` (the browser would keep the old, dead id). Writes
to a session the browser already names keep working, and ``invalidate()`` still
deletes the session (the logout holds server-side; the browser keeps a dead cookie
until a later response expires it) with a warning logged.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from enum import Enum
from functools import partial
from typing import Any, Final, NamedTuple

from redis.exceptions import RedisClusterException, RedisError, ResponseError

from hashsession.config import SessionConfig
from hashsession.cookies import CookiePolicy
from hashsession.errors import (
    BackendError,
    ConflictError,
    DecodeError,
    EncodeError,
    HashSessionError,
    HeadersSentError,
    InvalidKeyError,
    LimitExceededError,
    NotReplicatedError,
    ValueTypeError,
)
from hashsession.nearcache import NearCache, NearLink, TrackingLink
from hashsession.scripts import (
    CREATE,
    CREATED_FIELD,
    INDEX,
    INDEXED_FIELD,
    JSON_ERROR,
    LIFETIME_FIELD,
    LIMIT_ERROR,
    LIVE,
    LOGIN,
    LOGIN_APART,
    LOGIN_NEW,
    MARKER,
    OPEN,
    OPEN_NEAR,
    OWNER_FIELD,
    PLAIN,
    QUICK,
    SEEN_FIELD,
    SIZE_ERROR,
    TTL_FIELD,
    TYPE_ERROR,
)

log = logging.getLogger("hashsession")

__all__ = [
    "AGAIN",
    "BACKEND_ERRORS",
    "CACHED",
    "DELETE_SHA",
    "I64_MAX",
    "I64_MIN",
    "INCR_SHA",
    "MISSING",
    "SET_SHA",
    "After",
    "Command",
    "Retries",
    "SessionCore",
    "SessionView",
    "Step",
    "ValueEdit",
    "dump_meta",
    "index_command",
    "index_put",
    "load_meta",
    "load_queue",
    "session_reference",
]

log = logging.getLogger("hashsession")

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
    CACHED = "cached"


AGAIN: Final = _Marker.AGAIN
#: "No value": the default of ``pop`` (raise ``KeyError`` when absent); in a compare-and-set
#: (``Session.compare_and_set``) it means "absent" in the expected values and "delete" in
#: the changes.
MISSING: Final = _Marker.MISSING
#: First item of a "command" a ready read hands back when the near cache answered it:
#: ``(CACHED, answer)``, no round trip (see :mod:`hashsession.nearcache`).
CACHED: Final = _Marker.CACHED

_SET, _INCR, _INCR_FLOAT = LIVE["set"].sha, LIVE["incr"].sha, LIVE["incr_float"].sha
_SETDEFAULT, _POP, _LEN = LIVE["setdefault"].sha, LIVE["pop"].sha, LIVE["len"].sha
_PUSH, _DELETE = LIVE["push"].sha, LIVE["delete"].sha
#: The quick first commands (``QUICK``) by operation, and how many arguments of the
#: operation's own each takes (a ``set`` of several fields goes through ``OPEN``).
_QUICK = {op: script.sha for op, script in QUICK.items()}
_QUICK_ARGS = {"get": 1, "has": 1, "set": 3, "incr": 3, "delete": 1}
#: The ``PLAIN`` first writes (no slide due) by operation, and their arguments' count.
_PLAIN = {op: script.sha for op, script in PLAIN.items()}
_PLAIN_ARGS = {"set": 3, "incr": 3, "delete": 1}
#: Plain sessions a store remembers having slid (``SessionConfig.slid``) at most; past
#: this the memory starts afresh (each session then slides once more).
_SLID_MAX = 16384
#: The live set and incr scripts, for the sessions' fast paths.
SET_SHA, INCR_SHA, DELETE_SHA = _SET, _INCR, _DELETE
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


def _before(created: bytes, lifetime_ms: int) -> bool:
    """Whether a session created at ``created`` (ms, decimal) is still within its
    absolute lifetime now (``False`` too for junk that is no number)."""
    try:
        return int(created) + lifetime_ms > _now_ms()
    except ValueError:
        return False


def _now_ms() -> int:
    return int(time.time() * 1000)


def _text(name: bytes | str) -> str:
    return name.decode("utf-8") if isinstance(name, bytes) else name


def _is_user_field(name: bytes | str) -> bool:
    return not (name[:1] == b"\x00" or name[:1] == "\x00")


#: Signed 64-bit integers: what ``HINCRBY`` counts with.
I64_MIN, I64_MAX = -(2**63), 2**63 - 1
#: The core's own reserved fields, by metadata name: adapters may read them, never write.
_CORE_META = frozenset(
    f[1:]
    for f in (CREATED_FIELD, TTL_FIELD, OWNER_FIELD, SEEN_FIELD, INDEXED_FIELD, LIFETIME_FIELD)
)
_NO_UTF8 = "it holds a lone surrogate, which has no UTF-8 form"
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


def _text_or_none(raw: bytes) -> str | None:
    """``raw`` as UTF-8 text, or ``None`` (a legacy owner field another client planted)."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def login_marker(new_key: str, old_key: str | None) -> str:
    """The member that marks, in a user's index, a login making ``new_key`` (from ``old_key``).

    Only a login on a Cluster puts one in: there its index entry is written before the
    session, in another slot (see :data:`~hashsession.scripts.INDEX`).
    """
    return f"{MARKER}{new_key}\x00{old_key or ''}"


def marker_grace_ms(config: SessionConfig) -> int:
    """How long a login's marker holds: 30 s, plus room for both of the login's commands
    to wait ``connection_wait_timeout`` for a connection, and for its second to wait
    ``migration_retry_timeout`` for a migrating slot."""
    return LOGIN_GRACE_MS + int(2000 * config.connection_wait + 1000 * config.migration_retry)


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


#: Sent between a critical write and its ``WAIT``. ``PUBLISH`` always reaches the replicas,
#: so the ``WAIT`` counts from it even when the write changed nothing (a ``DEL`` sent again
#: after :class:`~hashsession.NotReplicatedError`): Redis 7 and Valkey move a connection's
#: replication offset only for commands that propagate, and without it a no-op write on a
#: fresh connection would let ``WAIT`` confirm at once while a replica still holds the
#: session. Nobody subscribes to the channel.
WAIT_FENCE: Command = ("PUBLISH", "__hashsession__:wait", "")


def wait_commands(config: SessionConfig, replicas: int | None = None) -> list[Command]:
    """What follows a critical write under ``wait_for_replicas``: the fence, then ``WAIT``
    for ``replicas`` (by default, as many as the settings ask for now)."""
    if replicas is None:
        replicas = config.replicas_to_wait()
    return [WAIT_FENCE, ("WAIT", replicas, config.wait_timeout_ms)]


class SessionCore:
    """One request's session, as state plus plans; no I/O."""

    __slots__ = (
        "_id",
        "_incoming_id",
        "_indexed",
        "_keyc",
        "_near_finish",
        "_provisional",
        "_sent_at",
        "_state",
        "_ttl_override",
        "accessed",
        "after",
        "before",
        "config",
        "cookie_policy",
        "had_cookie",
        "headers_sent",
        "invalidated",
        "lifetime",
        "lifetime_known",
        "link",
        "live_key",
        "lost",
        "modified",
        "near",
        "plain_local",
        "rejected",
        "resign",
        "short",
    )

    def __init__(
        self, config: SessionConfig, session_id: str | None, *, had_cookie: bool = False
    ) -> None:
        self.config = config
        self._id = session_id
        self._incoming_id = session_id
        # The Redis key, worked out when first needed ("": not yet): a request that never
        # touches its session pays no key digest.
        self._keyc: str | None = "" if session_id is not None else None
        self._state = State.PENDING if session_id is not None else State.NEW
        #: The Redis key while the session is LIVE (checked and slid in this request), else
        #: ``None``: the sessions' fast paths send plain commands only when it is set.
        self.live_key: str | None = None
        self._ttl_override: int | None = None
        #: When the request's first command was made (ms), for the slides remembered.
        self._sent_at = 0
        self.had_cookie = had_cookie
        self.rejected = had_cookie and session_id is None
        #: The cookie policy this response's ``Set-Cookie`` follows, when an adapter gives
        #: one of its own (the ASGI middleware's path under a mount); else the store's.
        self.cookie_policy: CookiePolicy | None = None
        #: This session's own cookie lifetime in seconds (0: a browser-session cookie), or
        #: ``None``: the cookie policy's ``max_age``. Known once the request's first command
        #: answered (it returns it), or from the start for a session not stored yet.
        self.lifetime: int | None = None
        self.lifetime_known = session_id is None
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
        #: Set by the adapter once the response headers (and so any ``Set-Cookie``) are
        #: committed; steps that would need a new cookie then raise ``HeadersSentError``.
        self.headers_sent = False
        #: The id (and key) a new session's sealed values were bound to, if any.
        self._provisional: tuple[str, str] | None = None
        #: The cookie was signed by an older key: once the session is known to live, the
        #: response signs it again with the newest (set by the store, see ``resign_due``).
        self.resign = False
        #: The request came over plain http to a loopback host (set by the adapter): a
        #: ``CookiePolicy(secure=None)`` cookie then goes without ``Secure``.
        self.plain_local = False
        #: The store's near cache while this request may use it (set by the store for a
        #: session named by a cookie; dropped at the request's first write), else ``None``.
        self.near: NearLink | None = None
        #: Where the step just planned must be sent instead of the client: the near
        #: cache's tracking link (the shells send it there once, then reset this).
        self.link: TrackingLink | None = None
        self._near_finish: Callable[[Any], Any] | None = None

    # ------------------------------------------------------------------ views

    @property
    def _key(self) -> str | None:
        key = self._keyc
        if key == "":
            assert self._id is not None
            key = self._keyc = self.config.key_of(self._id)
        return key

    @_key.setter
    def _key(self, key: str | None) -> None:
        self._keyc = key

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
        if key.isascii():  # O(1) in CPython: the common case costs one flag test
            size = len(key)
        else:
            try:
                size = len(key.encode("utf-8"))
            except UnicodeEncodeError:
                raise InvalidKeyError(key, f"not valid Unicode text: {_NO_UTF8}") from None
        if size > limit:
            raise LimitExceededError(key, f"key longer than {limit} bytes")
        return key

    @staticmethod
    def meta_field(name: object, *, write: bool = False) -> str:
        """The reserved hash field for library metadata ``name`` (no user key can name it).

        ``write``: the field is about to be changed, which the core's own fields (creation
        time, timeout, owner, last seen, index) never are through metadata.
        """
        if type(name) is not str and not isinstance(name, str):
            raise InvalidKeyError(name, "metadata names must be str", what="session metadata")
        if not name.isascii():
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:
                raise InvalidKeyError(
                    name, f"not valid Unicode text: {_NO_UTF8}", what="session metadata"
                ) from None
        if write and name in _CORE_META:
            raise InvalidKeyError(
                name,
                "reserved for the session itself; adapters may only read it",
                what="session metadata",
            )
        return "\x00" + name

    @property
    def reference(self) -> str:
        """A name for the session that is safe to log: never its id, nor a key holding it.

        The Redis key under the digest layout (a digest, not the id); under the raw
        layout, whose keys hold the id, ``sha1:`` and the SHA1 of the key (as in the
        handles of :mod:`hashsession.users`).
        """
        key = self._key
        if key is None:
            return "a new session"
        if self.config.key_layout == "digest":
            return key
        return "sha1:" + hashlib.sha1(key.encode("utf-8")).hexdigest()

    def readable_names(self, names: Iterable[bytes | str]) -> list[str]:
        """The user fields among ``names`` as text, skipping (and logging) any not UTF-8.

        Another client can write any bytes as a field name; no ``str`` key can name
        such a field, so listings leave it out (``clear()`` still removes it).
        """
        out = []
        for name in names:
            if not _is_user_field(name):
                continue
            try:
                out.append(_text(name))
            except UnicodeDecodeError:
                self.unreadable(name)
        return out

    def _readable_items(self, reply: Mapping[bytes | str, Any]) -> dict[str, Any]:
        out = {}
        for name, value in reply.items():
            if _is_user_field(name):
                try:
                    out[_text(name)] = value
                except UnicodeDecodeError:
                    self.unreadable(name)
        return out

    def unreadable(self, name: bytes | str) -> None:
        log.warning(
            "session %s: skipping field %r, whose name is not UTF-8 text (written by "
            "another client?); no str key can name it, clear() removes it",
            self.reference,
            name,
        )

    def encode(self, key: str, value: Any) -> bytes:
        """The stored bytes of ``value``; errors name ``key``."""
        config = self.config
        try:
            bound = config.bound_codec
            if bound is not None:  # sealed for this field of this session
                sealed = bound.dumps_at(value, key, self._bound_key())
                # bytes that remember their binding: kept as they are (see rebind)
                raw = sealed.encode("utf-8") if isinstance(sealed, str) else sealed
            else:
                text = config.codec.dumps(value)
                if type(text) is str:
                    raw = text.encode("utf-8")  # a lone surrogate fails here
                elif type(text) is not bytes:
                    raw = _bytes_of(text)
                else:
                    raw = text
        except UnicodeEncodeError as exc:
            raise EncodeError(key, f"cannot store {type(value).__name__}: {_NO_UTF8}") from exc
        except Exception as exc:
            raise EncodeError(key, f"cannot encode {type(value).__name__}: {exc}") from exc
        if len(raw) > config.max_value_bytes:
            raise LimitExceededError(
                key, f"value of {len(raw)} bytes is over the {config.max_value_bytes} limit"
            )
        return raw

    def decode(self, key: str, raw: bytes) -> Any:
        """The value stored as ``raw`` under ``key``; a :class:`DecodeError` names the key.

        A stored value longer than ``max_value_size`` (which no write of ours makes) is
        not decoded: :class:`LimitExceededError` names the key.
        """
        config = self.config
        limit = config.max_value_bytes
        if len(raw) > limit:
            raise LimitExceededError(
                key, f"stored value of {len(raw)} bytes is over the {limit} limit; not decoded"
            )
        try:
            if config.bound_codec is not None:
                return config.bound_codec.loads_at(raw, key, self._bound_key())
            return config.codec.loads(raw)
        except Exception as exc:
            raise DecodeError(key, f"stored value cannot be decoded: {exc}") from exc

    def _bound_key(self) -> str:
        """The Redis key values are bound to. A session not stored yet draws the id it
        will be created under; the session takes it only once Redis created it."""
        if self._key is not None:
            return self._key
        if self._provisional is None:
            new_id = self.config.new_id()
            self._provisional = (new_id, self.config.key_of(new_id))
        return self._provisional[1]

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
    def int_amount(key: object, amount: object) -> int:
        """``amount`` if ``incr`` can add it: an ``int`` within signed 64 bits."""
        if type(amount) is not int:
            raise ValueTypeError(key, f"incr() takes an int amount, not {type(amount).__name__}")
        if not I64_MIN <= amount <= I64_MAX:
            raise LimitExceededError(
                key, "the amount is outside the signed 64-bit range Redis counts in"
            )
        return amount

    @staticmethod
    def float_amount(key: object, amount: object) -> float:
        """``amount`` as the float ``incr_float`` adds: a finite number."""
        if isinstance(amount, bool) or not isinstance(amount, (int, float)):
            raise ValueTypeError(key, f"incr_float() takes a number, not {type(amount).__name__}")
        try:
            out = float(amount)
        except OverflowError:
            out = math.inf
        if out - out != 0.0:  # NaN or an infinity
            raise EncodeError(
                key, "an increment must be a finite number (JSON and Redis have no NaN or infinity)"
            )
        return out

    def retries(self) -> Retries:
        """The budget of one optimistic write starting now (``edit()``, ``apply()``)."""
        return Retries(self.config)

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
            if message.startswith(TYPE_ERROR):
                found, _, wanted = message[len(TYPE_ERROR) + 1 :].partition(" ")
                return ValueTypeError(key, f"holds a {found}, not a {wanted}")
            if message.startswith(SIZE_ERROR):
                size = message[len(SIZE_ERROR) + 1 :]
                return LimitExceededError(
                    key,
                    f"value of {size} bytes would be over the {self.config.max_value_bytes} limit",
                )
            if message.startswith(JSON_ERROR):
                return DecodeError(key, "the stored value is not JSON")
            if "would overflow" in message:  # HINCRBY past signed 64 bits
                return LimitExceededError(
                    key, "the increment would overflow Redis' signed 64-bit integers"
                )
            if "NaN or Infinity" in message:  # HINCRBYFLOAT past the float range
                return LimitExceededError(key, "the increment would not give a finite number")
            if "hash value is not an integer" in message:  # HINCRBY on what it cannot add to
                return ValueTypeError(
                    key,
                    "the stored value is not an integer in the signed 64-bit range Redis counts in",
                )
            if "hash value is not a float" in message:
                return ValueTypeError(key, "the stored value is not a number to increment")
        where = f"session {session_reference(self.key)}" if self.key else "a new session"
        return BackendError(f"Redis failed on {where}: {message}")

    def require_cookie(self, operation: str, needs: str = "it needs") -> None:
        """Raise :class:`HeadersSentError` for ``operation`` if the headers are out.

        For steps that need the response to carry a cookie; adapters call it for their
        own (a changed cookie lifetime), the core for a new id.
        """
        if self.headers_sent:
            raise HeadersSentError(operation, needs)

    # ---------------------------------------------------------- state changes

    # ------------------------------------------------------- ready commands
    # The one place that decides the fast path of both shells: while the session is
    # LIVE (checked and slid in this request), the plain command a single-key operation
    # needs, built without a plan or a closure; ``None``: run the operation's plan.

    def ready_get(self, field: str) -> Command | None:
        """``HGET`` of ``field`` while live (``(CACHED, raw)`` when the near cache holds
        it), else ``None``."""
        if self.near is not None:
            return self._near_ready(field, True)
        key = self.live_key
        if key is None:
            return None
        self.accessed = True
        return ("HGET", key, field)

    def ready_has(self, field: str) -> Command | None:
        """``HEXISTS`` of ``field`` while live (``(CACHED, bool)`` when the near cache
        knows), else ``None``."""
        if self.near is not None:
            return self._near_ready(field, False)
        key = self.live_key
        if key is None:
            return None
        self.accessed = True
        return ("HEXISTS", key, field)

    def ready_set(self, field: str, raw: bytes) -> Command | None:
        """The live ``set`` script for one field while live, else ``None``; see :meth:`written`."""
        key = self.live_key
        if key is None:
            return None
        self.accessed = self.modified = True
        return ("EVALSHA", _SET, 1, key, self.config.max_keys, field, raw)

    def ready_incr(self, field: str, amount: int | float) -> Command | None:
        """The live ``incr`` script for an int amount while live, else ``None``; see
        :meth:`written`."""
        key = self.live_key
        if key is None or type(amount) is not int:
            return None
        self.accessed = self.modified = True
        return ("EVALSHA", _INCR, 1, key, self.config.max_keys, field, amount)

    def ready_delete(self, field: str) -> Command | None:
        """The live ``delete`` script while live, else ``None``; see :meth:`deleted`."""
        key = self.live_key
        if key is None:
            return None
        self.accessed = True
        return ("EVALSHA", _DELETE, 1, key, field)

    def written(self, reply: Any) -> bool:
        """Whether a ready write found the session; if not, it starts afresh and the
        operation's plan (run next) creates it."""
        if self.near is not None:
            self.near_drop()
        if reply is not None:
            return True
        self._lose()
        return False

    def deleted(self, reply: Any) -> bool:
        """The result of a ready delete (ending a session it emptied, as :meth:`emptied`)."""
        if self.near is not None:
            self.near_drop()
        gone = bool(self.emptied(reply))
        if gone:
            self.modified = True
        return gone

    # ----------------------------------------------------------- near cache
    # A session named by a cookie, while the store's near cache is on: its first read
    # drains the tracking link, then either finds the session servable from the cache
    # (alive, no TTL refresh due: LIVE with no round trip) or sends OPEN_NEAR on the
    # link, which slides the TTL only once per refresh share. A write ends it for the
    # request and drops the session from the cache at once.

    def _near_ready(self, field: str, value: bool) -> Command | None:
        near = self.near
        assert near is not None
        if self._state is State.PENDING:
            key = self._key
            assert key is not None
            if not near.tracker.drain():
                self.near = None
                return None
            served = near.cache.serving(key, _now_ms())
            if served is None:
                return None  # the plan sends OPEN_NEAR on the link
            self._enter(State.LIVE)
            self.lifetime, self.lifetime_known = served[1], True
        elif self._state is not State.LIVE:
            self.near = None
            return None
        self.accessed = True
        hit, raw = near.cache.get(self.live_key or "", field)
        if hit:
            return (CACHED, raw if value else raw is not None)
        return None  # the plan reads the field and keeps it

    def _near_read(self, near: NearLink, op: str, field: str) -> Step:
        """A read of one field through the near cache: kept in it once answered."""
        cache = near.cache
        stamp = cache.stamp()
        if stamp is None:
            self.near = None
            return self.plan_get(field) if op == "get" else self.plan_has(field)
        key = self._key
        assert key is not None
        if self._state is State.LIVE:

            def kept(reply: Any) -> Any:
                cache.put(key, field, reply, stamp)
                return reply if op == "get" else reply is not None

            self._near_finish = kept
            return ("HGET", key, field), kept, None
        c = self.config
        now = _now_ms()
        until = cache.slide_due(key, now)
        if until is not None:
            return self._near_check(cache, stamp, key, until, op, field)
        b = b"%d"
        cmd: Command = ("EVALSHA", OPEN_NEAR.sha, 1, key, b % c.idle_ms, b % now)
        cmd += (b % c.absolute_ms, near.share, op.encode(), field)
        self.link = near.tracker

        def opened(reply: Any) -> Any:
            out = self._opened(reply)
            if out is AGAIN:
                return AGAIN
            plain = reply[1] is None and reply[3] is None and reply[5] == 0
            cache.opened(key, now + int(reply[4]), self.lifetime, stamp, plain=plain)
            if op == "get":
                cache.put(key, field, out, stamp)
            return out

        self._near_finish = opened
        return cmd, opened, None

    def _near_check(
        self, cache: NearCache, stamp: int, key: str, until: int, op: str, field: str
    ) -> Step:
        """A near-cache miss on a plain session with no slide due (a write dropped it, here
        or elsewhere): one ``HMGET`` of the field with the metadata that tells it still
        lives and is plain, as :meth:`_skip_slide`; otherwise ``OPEN_NEAR`` decides."""

        def keep(raw: bytes | None) -> None:
            cache.opened(key, until, None, stamp, plain=True)
            cache.put(key, field, raw, stamp)

        step = self._plain_read(key, field, op, partial(cache.not_plain, key), keep)
        self._near_finish = step[1]
        return step

    def near_sent(self, finish: Callable[[Any], Any] | None) -> None:
        """After a step was sent while the near cache is in use: anything but one of its
        own reads may have changed the session, which leaves the cache at once."""
        if finish is None or finish is not self._near_finish:
            self.near_drop()

    def near_drop(self) -> None:
        """Stop using the near cache in this request and forget the session in it."""
        near, self.near = self.near, None
        key = self._keyc
        if near is not None and key:
            near.cache.drop(key)

    def _enter(self, state: State) -> None:
        self._state = state
        self.live_key = self._key if state is State.LIVE else None

    def _lose(self) -> _Marker:
        """The session vanished (expired, invalidated, never existed): start afresh."""
        self._enter(State.NEW)
        self.lost = True
        self.lifetime, self.lifetime_known = None, True
        if not (self.config.adopt_unknown_ids and not self.invalidated):
            self._id = None
            self._key = None
        return AGAIN

    def _open(self, op: str, *args: Any, keys: tuple[str, ...] = ()) -> Command:
        assert self._key is not None
        c = self.config
        # Numbers and the op name as bytes: redis-py passes bytes through untouched, so
        # packing the request's first command costs less (see docs/benchmarks.md).
        now = self._sent_at = _now_ms()
        timing = (c.idle_bytes, b"%d" % now, c.absolute_bytes)
        quick = _QUICK.get(op)
        if quick is not None and not keys and len(args) == _QUICK_ARGS[op]:
            return ("EVALSHA", quick, 1, self._key, *timing, *args)
        head = ("EVALSHA", OPEN.sha, 1 + len(keys), self._key, *keys)
        return (*head, *timing, op.encode(), *args)

    def _opened(self, reply: Any) -> Any:
        if type(reply) is not list:  # a quick script's bare result: a plain session, slid
            if reply is None:
                return self._lose()
            self._enter(State.LIVE)
            self.lifetime, self.lifetime_known = None, True
            slid = self.config.slid
            if len(slid) >= _SLID_MAX:
                slid.clear()
            slid[self.live_key] = self._sent_at  # type: ignore[index]
            return reply
        self._enter(State.LIVE)
        self._learn(reply)
        if len(reply) > 1 and reply[1] is not None:  # the owner's index entry is due
            self._refresh_index(reply[1], reply[2])
        return reply[0] if reply else None

    def _learn(self, reply: list[Any]) -> None:
        """Note the session's own cookie lifetime from a reply that slid it:
        ``[result]`` or ``[result, owner or nil, good-until, lifetime or nil]``."""
        self.lifetime, self.lifetime_known = None, True
        if len(reply) > 3 and reply[3] is not None:
            try:
                self.lifetime = max(0, int(reply[3]))
            except ValueError:
                log.warning(
                    "session %s: ignoring its cookie lifetime %r, which is not a number "
                    "(written by another client?)",
                    self.reference,
                    reply[3],
                )

    def _refresh_index(self, owner: bytes, good: int) -> None:
        key = self._key
        assert key is not None
        c = self.config
        user = None if c.owner_is_keyed(owner) else _text_or_none(owner)
        if user is None or c.user_key is None:
            self._queue(index_put(c.index_of_owner(owner), adds=[(good, key)]))
            return
        # A legacy owner (the user id itself, from before user_key): key it now, then
        # move the entry to the keyed index, unless the owner changed meanwhile.
        keyed = c.owner_value(user)
        expect: Command = (OWNER_FIELD, "1", owner)
        cas: Command = ("EVALSHA", _CAS, 1, key, c.max_keys, 1, *expect, OWNER_FIELD, "s", keyed)

        def moved(reply: Any) -> None:
            if reply == 1:
                self._queue(index_put(c.index_of_owner(keyed), adds=[(good, key)]))
                self._queue(index_put(c.index_of_owner(owner), [key]))

        self._queue(cas, moved)

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
        if self._id is None and self.headers_sent:
            first = pairs[0][0] if pairs else ""
            what = f"metadata {first[1:]!r}" if first[:1] == "\x00" else repr(first)
            raise HeadersSentError(
                f"writing {what}",
                "the session is not stored yet, and creating it under a new id needs",
            )
        if len(pairs) > c.max_keys:
            raise LimitExceededError(
                pairs[c.max_keys][0], f"the session would hold more than {c.max_keys} keys"
            )
        if session_id is None:
            if self._id is not None:
                session_id = self._id
            elif self._provisional is not None:  # values were sealed for it already
                session_id = self._provisional[0]
            else:
                session_id = c.new_id()
        key = c.key_of(session_id)
        if c.bound_codec is not None:  # sealed values bind to the key they are stored under
            rebind = c.bound_codec.rebind
            pairs = [(f, rebind(v, f, key)) for f, v in pairs]
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

        plain = self._plain(op, args)
        if plain is not None:
            return plain, partial(self._as_plain, finish), None

        def first(reply: Any) -> Any:
            out = self._opened(reply)
            return out if out is AGAIN else finish(out)

        return self._open(op, *args), first, None

    def _plain(self, op: str, args: tuple[Any, ...]) -> Command | None:
        """The ``PLAIN`` script for a first write of ``op`` when no slide is due (a plain
        session this process slid less than ``slide_share`` ago), else ``None``."""
        c = self.config
        sha = _PLAIN.get(op)
        if sha is None or not c.slide_cut_ms or len(args) != _PLAIN_ARGS[op]:
            return None
        key = self._key
        if not self._slid_lately(key):
            return None
        return ("EVALSHA", sha, 1, key, *args)

    def _slid_lately(self, key: str | None) -> bool:
        """Whether this process slid the (plain) session ``key`` less than ``slide_share``
        of the idle timeout ago, so that its first command need not slide it."""
        slid = self.config.slid.get(key)  # type: ignore[arg-type]
        return slid is not None and _now_ms() - slid < self.config.slide_cut_ms

    def _as_plain(self, finish: Callable[[Any], Any], reply: Any) -> Any:
        """A ``PLAIN`` script's reply: the write's result, or (false: gone or no longer
        plain) the session forgotten as slid, and the step planned again (it slides)."""
        if reply is None:
            self.config.slid.pop(self._key, None)  # type: ignore[arg-type]
            return AGAIN
        self._enter(State.LIVE)
        self.lifetime, self.lifetime_known = None, True
        return finish(reply)

    def _read(self, live: Command, op: str, args: tuple[Any, ...], empty: Any) -> Step:
        if self._state is State.LIVE:
            return live, None, None
        if self._state is State.NEW:
            return None, None, empty
        if op == "get":  # the quick script answers 0 for a missing field
            return self._open(op, *args), self._opened_get, None
        return self._open(op, *args), self._opened, None

    def _opened_get(self, reply: Any) -> Any:
        out = self._opened(reply)
        return None if out == 0 else out

    # A plain session this process slid less than ``slide_share`` of the idle timeout ago
    # needs no slide yet: its first read is a plain HMGET of the field with the metadata
    # that would make it other than plain (created-at, present while it lives; its own
    # timeout and cookie lifetime, which another process may have set since). An owner
    # comes only with a new key (login renames), so it needs no check. Anything but a
    # plain live session goes through the quick script, which slides and tells.

    def _skip_slide(self, field: str, op: str) -> Step | None:
        key = self._key
        if not self._slid_lately(key):
            return None
        return self._plain_read(key, field, op, partial(self.config.slid.pop, key, None))

    def _plain_read(
        self,
        key: Any,
        field: str,
        op: str,
        forget: Callable[[], Any],
        keep: Callable[[bytes | None], None] | None = None,
    ) -> Step:
        """One ``HMGET`` of ``field`` with the metadata that tells the session still lives
        and is plain (and before its absolute deadline): then LIVE, the value kept by
        ``keep``; otherwise ``forget()`` and the step is planned again (a script decides)."""
        c = self.config

        def read(reply: Any) -> Any:
            created = reply[1]
            if (
                created is None
                or reply[2] is not None
                or reply[3] is not None
                or (c.absolute_ms and not _before(created, c.absolute_ms))
            ):
                forget()
                return AGAIN  # not (or no longer) plain, or past its end
            self._enter(State.LIVE)
            self.lifetime, self.lifetime_known = None, True
            if keep is not None:
                keep(reply[0])
            return reply[0] if op == "get" else reply[0] is not None

        return ("HMGET", key, field, CREATED_FIELD, TTL_FIELD, LIFETIME_FIELD), read, None

    # ------------------------------------------------------------------ reads

    def plan_get(self, field: str) -> Step:
        """``HGET``: the raw value of ``field`` or ``None``."""
        self.accessed = True
        if self.near is not None and self._state is not State.NEW:
            return self._near_read(self.near, "get", field)
        if self._state is State.PENDING and self.config.slide_cut_ms:
            step = self._skip_slide(field, "get")
            if step is not None:
                return step
        return self._read(("HGET", self._key, field), "get", (field,), None)

    def plan_has(self, field: str) -> Step:
        self.accessed = True
        if self.near is not None and self._state is not State.NEW:
            return self._near_read(self.near, "has", field)
        if self._state is State.PENDING and self.config.slide_cut_ms:
            quick = self._skip_slide(field, "has")
            if quick is not None:
                return quick
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
            try:
                return [_text(n) for n in reply or () if _is_user_field(n)]
            except UnicodeDecodeError:
                return self.readable_names(reply)

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
            try:
                return {_text(k): v for k, v in (reply or {}).items() if _is_user_field(k)}
            except UnicodeDecodeError:
                return self._readable_items(reply)

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
        is_float = isinstance(amount, float)
        amount = self.float_amount(field, amount) if is_float else self.int_amount(field, amount)
        self.accessed = self.modified = True
        if self._state is State.NEW:
            return self._plan_create([(field, repr(amount).encode("ascii"))], amount)
        args = (self.config.max_keys, field, repr(amount))
        if is_float:
            return self._write(
                ("EVALSHA", _INCR_FLOAT, 1, self._key, *args), "incr_float", args, float
            )
        return self._write(("EVALSHA", _INCR, 1, self._key, *args), "incr", args, _same)

    def plan_setdefault(self, field: str, raw: bytes) -> Step:
        """Store ``raw`` unless ``field`` is set; the raw value stored afterwards.

        :attr:`modified` is set only if ``raw`` was stored.
        """
        self.accessed = True
        if self._state is State.NEW:
            self.modified = True
            return self._plan_create([(field, raw)], raw)

        def stored(reply: Any) -> Any:  # [1 if this stored it, else 0; the value now stored]
            if reply[0]:
                self.modified = True
            return reply[1]

        args = (self.config.max_keys, field, raw)
        return self._write(
            ("EVALSHA", _SETDEFAULT, 1, self._key, *args), "setdefault", args, stored
        )

    def plan_push(self, field: str, item: bytes, unique: bool) -> Step:
        """Append ``item`` to the newline-separated queue in reserved ``field``, atomically.

        With ``unique``, an item already queued is not added again. 1 if appended, else 0.
        """
        self.accessed = self.modified = True
        if self._state is State.NEW:
            return self._plan_create([(field, item)], 1)
        args = (field, item, "1" if unique else "0")
        return self._write(("EVALSHA", _PUSH, 1, self._key, *args), "push", args, _same)

    # ------------------------------------------------------------ value edits
    # Each edits one stored list or dict in place. When the codec allows it for that kind
    # (see hashsession.codecs: the built-in JSON codec does for both) that is one Lua script
    # (see scripts.VALUE_OPS), atomic and one round trip; otherwise an optimistic read and
    # compare-and-set, like apply(). Items are compared by their encoding, dict keys by
    # their text.

    def edit_append(self, key: object, items: Iterable[Any], max_len: int | None) -> ValueEdit:
        """Append ``items`` to the list under ``key`` (created if missing), keeping the newest
        ``max_len``; the result is the list's new length."""
        field = self.field(key)
        cap = _max_len(max_len)
        if not self.config.in_place("list"):
            values = list(items)

            def edit(current: Any) -> tuple[Any, Any]:
                out = [] if current is MISSING else list(current)
                out += values
                if cap and len(out) > cap:
                    out = out[-cap:]
                return out, len(out)

            return self._local(field, list, edit)
        raws = [self.encode(field, item) for item in items]
        kept = raws[-cap:] if cap else raws
        created = b"[" + b",".join(kept) + b"]"

        def plan() -> Step:
            return self._value_step("append", field, (cap, *raws), created, len(kept), int)

        return ValueEdit(field, plan, None)

    def edit_add(self, key: object, item: Any) -> ValueEdit:
        """Append ``item`` to the list under ``key`` (created if missing) unless an item with
        the same encoding is in it; the result is whether it was added."""
        field = self.field(key)
        raw = self.encode(field, item)
        if not self.config.in_place("list"):

            def edit(current: Any) -> tuple[Any, Any]:
                if current is MISSING:
                    return [item], True
                if any(self.encode(field, x) == raw for x in current):
                    return MISSING, False
                return [*current, item], True

            return self._local(field, list, edit)

        def plan() -> Step:
            return self._value_step("add", field, (raw,), b"[" + raw + b"]", True, _truth)

        return ValueEdit(field, plan, None)

    def edit_discard(self, key: object, item: Any) -> ValueEdit:
        """Remove every item with the encoding of ``item`` from the list under ``key``; the
        result is whether any was there."""
        field = self.field(key)
        raw = self.encode(field, item)
        if not self.config.in_place("list"):

            def edit(current: Any) -> tuple[Any, Any]:
                if current is MISSING:
                    return MISSING, False
                kept = [x for x in current if self.encode(field, x) != raw]
                return (MISSING, False) if len(kept) == len(current) else (kept, True)

            return self._local(field, list, edit)

        def plan() -> Step:
            return self._value_step("discard", field, (raw,), None, False, _truth)

        return ValueEdit(field, plan, None)

    def edit_set_in(self, key: object, sub: str, value: Any) -> ValueEdit:
        """Set ``sub`` to ``value`` in the dict under ``key`` (created if missing)."""
        field = self.field(key)
        _check_sub(sub)
        raw = self.encode(field, value)
        if not self.config.in_place("dict"):

            def edit(current: Any) -> tuple[Any, Any]:
                out = {} if current is MISSING else dict(current)
                out[sub] = value
                return out, None

            return self._local(field, dict, edit)
        name = self.encode(field, sub)
        created = b"{" + name + b":" + raw + b"}"

        def plan() -> Step:
            return self._value_step("set_in", field, (name, raw), created, None, _none)

        return ValueEdit(field, plan, None)

    def edit_delete_in(self, key: object, sub: str) -> ValueEdit:
        """Remove ``sub`` from the dict under ``key``; the result is whether it was there."""
        field = self.field(key)
        _check_sub(sub)
        if not self.config.in_place("dict"):

            def edit(current: Any) -> tuple[Any, Any]:
                if current is MISSING or sub not in current:
                    return MISSING, False
                out = dict(current)
                del out[sub]
                return out, True

            return self._local(field, dict, edit)
        name = self.encode(field, sub)

        def plan() -> Step:
            return self._value_step("delete_in", field, (name,), None, False, _truth)

        return ValueEdit(field, plan, None)

    def _value_step(
        self,
        op: str,
        field: str,
        args: tuple[Any, ...],
        created: bytes | None,
        result: Any,
        finish: Callable[[Any], Any],
    ) -> Step:
        """The script ``op`` on ``field``. ``created`` is the value a new session starts
        with (``None``: the edit cannot create one, and needs no round trip) and ``result``
        what that first write returns."""
        self.accessed = self.modified = True
        c = self.config
        if self._state is State.NEW:
            if created is None:
                return None, None, result
            if len(created) > c.max_value_bytes:
                raise LimitExceededError(
                    field, f"value of {len(created)} bytes is over the {c.max_value_bytes} limit"
                )
            return self._plan_create([(field, created)], result)
        if created is not None:  # a write that may add the field checks both limits
            args = (c.max_keys, c.max_value_bytes, field, *args)
        else:
            args = (field, *args)
        return self._write(("EVALSHA", LIVE[op].sha, 1, self._key, *args), op, args, finish)

    def _local(self, field: str, kind: type, edit: Callable[[Any], tuple[Any, Any]]) -> ValueEdit:
        """A value edit for a codec Lua cannot read: ``edit(current value or MISSING)``
        gives the new value (``MISSING``: no write) and the result."""

        def change(raw: bytes | None) -> tuple[bytes | None, Any]:
            current = MISSING if raw is None else self.decode(field, raw)
            if current is not MISSING and not isinstance(current, kind):
                raise ValueTypeError(field, f"holds a {_kind(current)}, not a {kind.__name__}")
            new, result = edit(current)
            return (None if new is MISSING else self.encode(field, new)), result

        return ValueEdit(field, None, change)

    def plan_lifetime(self, seconds: int) -> Step:
        """Give the session a cookie lifetime of its own (0: a browser-session cookie);
        the response sends the cookie again with it. Creates a session not stored yet."""
        if type(seconds) is not int or seconds < 0:
            raise ValueTypeError(
                "lifetime", f"must be a whole number of seconds >= 0, not {seconds!r}"
            )
        cmd, finish, value = self.plan_set([(LIFETIME_FIELD, str(seconds).encode("ascii"))])

        def done(reply: Any) -> Any:
            out = reply if finish is None else finish(reply)
            if out is not AGAIN:
                self.lifetime, self.lifetime_known = seconds, True
                self.config.slid.pop(self._key, None)  # type: ignore[arg-type]  # not plain now
            return out

        return cmd, done, value

    def plan_pop(self, field: str) -> Step:
        """Read and delete ``field`` atomically; its raw value or ``None``.

        :attr:`modified` is set only if the field was there. When that leaves the
        session empty, Redis deletes it: the session ends (see :meth:`emptied`).
        """
        self.accessed = True
        step = self._removal(("EVALSHA", _POP, 1, self._key, field), "pop", field, None)
        return self._marking(step, _is_value)

    def plan_delete(self, field: str) -> Step:
        """Delete ``field``: 1 if it existed (and only then is :attr:`modified` set); ends
        a session it empties, as :meth:`plan_pop`."""
        self.accessed = True
        step = self._removal(("EVALSHA", _DELETE, 1, self._key, field), "delete", field, 0)
        return self._marking(step, bool)

    def _marking(self, step: Step, changed: Callable[[Any], bool]) -> Step:
        """``step``, setting :attr:`modified` once its result shows it changed something."""
        cmd, finish, value = step
        if cmd is None:
            return step

        def done(reply: Any) -> Any:
            out = reply if finish is None else finish(reply)
            if out is not AGAIN and changed(out):
                self.modified = True
            return out

        return cmd, done, value

    def _removal(self, live: Command, op: str, field: str, empty: Any) -> Step:
        if self._state is State.LIVE:
            return live, self.emptied, None
        if self._state is State.NEW:
            return None, None, empty

        plain = self._plain(op, (field,))
        if plain is not None:
            return plain, partial(self._as_plain, self.emptied), None

        def first(reply: Any) -> Any:
            out = self._opened(reply)
            return out if out is AGAIN else self.emptied(out)

        return self._open(op, field), first, None

    def emptied(self, reply: Any) -> Any:
        """The result of a removal's reply; a one-item array means it emptied the session.

        A session left with no user key and no adapter metadata has been deleted by the
        same script, so it ends as :meth:`plan_invalidate` ends it: the response expires
        the cookie (if the browser had one) and a later write starts a new session.
        """
        if type(reply) is list:
            self._ended()
            return reply[0]
        return reply

    def _ended(self) -> None:
        self.lifetime, self.lifetime_known = None, True
        self.invalidated = True
        self._enter(State.NEW)
        self._id = self._key = None
        self._ttl_override = None

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
        if ttl_ms is not None:  # a timeout of its own: the session is not plain any more
            c.slid.pop(self._key, None)  # type: ignore[arg-type]
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
        Once the headers are out it raises :class:`HeadersSentError` (the new id could
        not reach the browser), whether or not the session is stored.
        """
        self.require_cookie("regenerate()", "the new id needs")
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
            self._learn(reply)
            if len(reply) > 1 and reply[1] is not None:
                assert old_key is not None
                index = c.index_of_owner(reply[1])
                self._queue(index_put(index, [old_key], [(reply[2], new_key)]))
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
        session already). When another user owned it (or this user, under a legacy owner
        field from before ``user_key``), the old key leaves that index last
        (:attr:`after`). Once the headers are out it raises :class:`HeadersSentError`.

        The owner field holds NUL and the keyed digest of ``user``, which also names the
        index (see :meth:`SessionConfig.user_tag`): without ``user_key`` this raises
        :class:`ConfigurationError` naming it, before any command.
        """
        self.require_cookie("login()", "the new id needs")
        c = self.config
        owner = c.owner_value(user)  # the keyed digest; refuses without user_key
        self.accessed = self.modified = True
        now = _now_ms()
        if c.same_slot_ids:
            return self._plan_login_apart(user, owner, now)
        cap = c.max_sessions_per_user or 0
        index = c.index_key(user)
        if self._state is State.NEW:  # never under an id the client chose: a new one
            new_id = c.new_id()
            new_key = c.key_of(new_id)
            ttl = self._ttl_override or c.idle_ms
            good = now + ttl + ttl // 2
            if c.absolute_ms:
                good = min(good, now + c.absolute_ms)
            meta = [(OWNER_FIELD, owner), (SEEN_FIELD, now), (INDEXED_FIELD, good)]
            create, created, _ = self._plan_create([], None, meta, now, session_id=new_id)
            assert created is not None and isinstance(create, tuple)
            # CREATE's arguments after its key (ttl, fields) follow LOGIN_NEW's own.
            ttl_arg, fields = create[4], create[5:]
            cmd = ("EVALSHA", LOGIN_NEW.sha, 2, new_key, index, ttl_arg, now, cap, good, *fields)
            return self._critical((cmd, created, None))
        new_id = c.new_id(like=self._id)
        new_key = c.key_of(new_id)
        args = (c.idle_ms, now, c.absolute_ms, owner, cap)
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
            if before is not None and before != owner.encode("utf-8") and old_key:
                # another user's index, or this user's legacy one (see legacy_user_index)
                self._queue(index_put(c.index_of_owner(before), [old_key]))
            return None

        # Under wait_for_replicas a shortfall still leaves the new id: the master renamed.
        return self._critical((login, logged_in, None))

    def _plan_login_apart(self, user: str, owner: str, now: int) -> Step:
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
            meta = [(OWNER_FIELD, owner), (SEEN_FIELD, now), (INDEXED_FIELD, indexed.good)]
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
        args = (c.idle_ms, now, c.absolute_ms, owner, entry.good)
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
        same = before is not None and before == c.owner_value(entry.user).encode("utf-8")
        if before is not None and not same and old_key:
            # another user's index, or this user's legacy one (see legacy_user_index)
            self._queue(index_put(c.index_of_owner(before), [old_key]))
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

        After the headers went out the session is still deleted (the logout holds), but
        the browser keeps its cookie until a later response expires it; a warning says so.
        """
        self.accessed = self.modified = True
        key = self._key if self._state is not State.NEW else None

        def ended(reply: Any = None) -> None:
            self._ended()

        if key is None:
            ended()
            return self._critical((None, None, None))
        if self.headers_sent:

            def ended_late(reply: Any = None) -> None:
                _late_delete(reply)
                ended(reply)

            return self._critical((("DEL", key), ended_late, None), hold=True)
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
        wanted = c.replicas_to_wait()
        if not wanted or cmd is None:
            return step
        assert not isinstance(cmd, list)

        def waited(replies: Any) -> Any:
            reply, confirmed = replies[0], replies[-1]
            if confirmed < wanted:
                self.short = NotReplicatedError(wanted, confirmed)
                if hold:
                    return None
            return reply if finish is None else finish(reply)

        return [cmd, *wait_commands(c, wanted)], waited, value

    def settle(self) -> None:
        """Raise the :class:`NotReplicatedError` of the last critical step, if it fell short."""
        short, self.short = self.short, None
        if short is not None:
            raise short

    # ---------------------------------------------------------------- cookies

    def set_cookie_header(self) -> str | None:
        """The ``Set-Cookie`` value this response must carry, if any.

        A cookie with a ``max_age`` is sent again when the session was used in this
        request (``refresh_cookie``), or at least changed, so its expiry slides. A cookie
        an older key signed is sent again, signed by the newest, once the session is
        known to live (:attr:`resign`).
        """
        c = self.config
        policy = self.cookie_policy or c.cookie
        if self.lifetime is not None and self.lifetime != (policy.max_age or 0):
            policy = dataclasses.replace(policy, max_age=self.lifetime or None)
        local = self.plain_local
        if self._state is not State.NEW and self._id is not None:
            if self._id != self._incoming_id or self.lost:
                return policy.set_cookie(c.cookie_value(self._id), plain_local=local)
            if self._state is State.LIVE and (
                self.resign or (policy.max_age and (c.refresh_cookie or self.modified))
            ):
                return policy.set_cookie(c.cookie_value(self._id), plain_local=local)
            return None
        # A cookie that does not verify (forged, malformed, or signed with a key this process
        # does not know yet, as in a rolling deploy of a new key) is left alone.
        if self.had_cookie and not self.rejected and (self.invalidated or self.lost):
            if c.adopt_unknown_ids and self._id is not None and not self.invalidated:
                return None
            return policy.delete_cookie(plain_local=local)
        return None

    @property
    def resign_due(self) -> bool:
        """Whether the response must send the cookie again, signed with the newest key."""
        return self.resign and self._state is State.LIVE and self._id == self._incoming_id

    def response_headers(self) -> list[tuple[str, str]]:
        """``Set-Cookie`` and ``Vary: Cookie`` headers for the response, as needed."""
        if self._state is State.PENDING and not self.accessed:
            return []  # untouched: the cookie stands as it came
        headers: list[tuple[str, str]] = []
        cookie = self.set_cookie_header()
        if cookie is not None:
            headers.append(("Set-Cookie", cookie))
        if self.accessed:
            headers.append(("Vary", "Cookie"))
        return headers


class ValueEdit(NamedTuple):
    """One in-place edit of a stored value, as a session runs it.

    When the codec lets it (the built-in JSON codec does), ``plan`` is its atomic step
    (one Lua script, one round trip) and ``change`` is ``None``. Otherwise ``plan`` is
    ``None`` and the session runs ``change`` in an optimistic loop: ``change(stored bytes
    or None)`` is the new bytes (``None``: nothing to write) and the edit's result.
    """

    field: str
    plan: Callable[[], Step] | None
    change: Callable[[bytes | None], tuple[bytes | None, Any]] | None


class Retries:
    """The budget of one optimistic write (``edit()``, ``apply()``): when to try again.

    A write that lost its race is tried again after a random wait that grows with each
    loss (full jitter, its bound doubling from 5 ms up to 100 ms), so racing writers
    spread out instead of colliding again in step. :meth:`wait` raises
    :class:`ConflictError` once ``edit_timeout`` seconds have passed since the first
    try, or once ``edit_retries`` tries were made when that cap is set.
    """

    __slots__ = ("_cap", "_start", "_timeout", "tries")

    #: The longest first wait, in seconds; it doubles with each loss up to :attr:`LONGEST`.
    FIRST: Final = 0.005
    LONGEST: Final = 0.1

    def __init__(self, config: SessionConfig) -> None:
        self._timeout = config.edit_timeout
        self._cap = config.edit_retries
        self._start = time.monotonic()
        #: Tries made so far (the first one included).
        self.tries = 1

    def wait(self, key: str) -> float:
        """Seconds to wait before the next try, now that the last one lost its race."""
        elapsed = time.monotonic() - self._start
        left = self._timeout - elapsed
        capped = self._cap is not None and self.tries >= self._cap
        if capped or left <= 0:
            why = f"edit_retries={self._cap}" if capped else f"edit_timeout={self._timeout:g} s"
            raise ConflictError(
                key, f"gave up after {self.tries} conflicting writes in {elapsed:.3f} s ({why})"
            )
        longest = min(self.LONGEST, self.FIRST * 2 ** min(self.tries - 1, 16))
        self.tries += 1
        return min(random.uniform(0, longest), left)


def _max_len(max_len: int | None) -> int:
    """``max_len`` checked: a positive int, or 0 for ``None`` (no bound)."""
    if max_len is None:
        return 0
    if isinstance(max_len, bool) or not isinstance(max_len, int):
        raise TypeError(f"max_len must be an int or None, not {type(max_len).__name__}")
    if max_len < 1:
        raise ValueError(f"max_len must be at least 1, not {max_len}")
    return max_len


def _check_sub(sub: object) -> None:
    if not isinstance(sub, str):
        raise TypeError(f"a sub-key must be a str (JSON object keys are), not {type(sub).__name__}")


def _kind(value: Any) -> str:
    """The word the scripts use for the kind of a decoded value."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, (int, float)):
        return "number"
    for kind, word in ((list, "list"), (dict, "dict"), (str, "str")):
        if isinstance(value, kind):
            return word
    return type(value).__name__


def _none(reply: Any) -> None:
    return None


def _late_delete(reply: Any) -> None:
    log.warning(
        "session invalidated after the response headers were sent: it is deleted in"
        " Redis (logged out), but the browser keeps its dead cookie until a later"
        " response expires it"
    )


def _same(reply: Any) -> Any:
    return reply


def _is_value(reply: Any) -> bool:
    return reply is not None


def _truth(reply: Any) -> bool:
    return bool(reply)


_META_JSON = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def dump_meta(value: Any, name: str = "") -> bytes:
    """Library metadata as compact JSON (never the user's codec); one line, no newline.

    What JSON cannot hold (NaN, infinities, lone surrogates, other types) raises
    :class:`EncodeError` naming metadata ``name``.
    """
    try:
        return _META_JSON.encode(value).encode("utf-8")
    except UnicodeEncodeError as exc:
        raise EncodeError(name, f"cannot store it: {_NO_UTF8}", what="session metadata") from exc
    except Exception as exc:
        raise EncodeError(
            name, f"cannot encode {type(value).__name__}: {exc}", what="session metadata"
        ) from exc


def load_meta(raw: bytes | None, name: str = "") -> Any:
    """Metadata written by :func:`dump_meta`, or ``None``; junk raises :class:`DecodeError`."""
    if raw is None:
        return None
    try:
        return json.loads(raw)
    except Exception as exc:  # JSONDecodeError, UnicodeDecodeError, RecursionError
        raise DecodeError(
            name, f"stored metadata cannot be decoded: {exc}", what="session metadata"
        ) from exc


def load_queue(raw: bytes | None, name: str = "") -> list[Any]:
    """The items of a queue built by ``meta_push`` (newline-separated JSON)."""
    if raw is None:
        return []
    try:
        return [json.loads(line) for line in raw.split(b"\n") if line]
    except Exception as exc:
        raise DecodeError(
            name, f"stored queue cannot be decoded: {exc}", what="session metadata"
        ) from exc


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


def _bytes_of(raw: Any) -> bytes:
    """What a codec returned, as bytes: ``str`` as UTF-8, bytes-like as it is."""
    if isinstance(raw, str):
        return raw.encode("utf-8")
    if isinstance(raw, (bytes, bytearray, memoryview)):
        return bytes(raw)
    raise TypeError(f"the codec returned {type(raw).__name__}, not str or bytes")


class SessionView:
    """The request-level facts both session flavours expose, read from their core.

    A session from a store's ``open()`` works its core out (the cookie read, its id
    checked) only when first used, so a request that never touches its session costs
    little more than making this object.
    """

    __slots__ = ()
    _core: SessionCore
    #: What makes the core when it is first needed, or ``None`` once it is made.
    _opening: Callable[[], SessionCore] | None
    #: The response headers went before the core was made (it is told when made).
    _late: bool

    def __getattr__(self, name: str) -> Any:
        if name == "_core":  # the slot is unset until the core is needed
            opening = self._opening
            if opening is None:
                raise AttributeError(name)
            core = opening()
            if self._late:  # made after the response headers went: it knows they did
                core.headers_sent = True
            object.__setattr__(self, "_core", core)
            object.__setattr__(self, "_opening", None)
            return core
        raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def _headers_out(self) -> None:
        """Note that the response headers are committed (no ``Set-Cookie`` can follow);
        for adapters, like :attr:`core`, without working the core out if it is not yet."""
        if self._opening is None:
            self._core.headers_sent = True
        else:
            self._late = True  # type: ignore[misc]  # (a slot of each concrete class)

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
