"""Validated, immutable settings shared by every session of a store."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from enum import Enum
from typing import Any, Final, Literal, Protocol

from hashsession import ids
from hashsession.codecs import BoundCodec, Codec, bound_codec, resolve_codec
from hashsession.cookies import CookiePolicy, Signer
from hashsession.errors import ConfigurationError

__all__ = [
    "DEFAULT_ABSOLUTE_TTL",
    "DEFAULT_MIGRATION_RETRY",
    "MAX_SECONDS",
    "MIN_USER_KEY_BYTES",
    "KeyLayout",
    "NearCacheSettings",
    "SessionConfig",
    "seconds",
    "user_digest",
]

KeyLayout = Literal["digest", "raw"]
#: The absolute lifetime a store gets when ``absolute_ttl`` is not given: 30 days (or the
#: idle timeout, if that is longer). ``absolute_ttl=None`` turns the cap off.
DEFAULT_ABSOLUTE_TTL = 30 * 24 * 3600


class ReplicaView(Protocol):
    """Anything that says how many replicas a critical write should wait for now."""

    def wanted(self, asked: int = 1) -> int: ...


class _Unset(Enum):
    UNSET = "unset"


_UNSET: Final = _Unset.UNSET
_RAW_ID = re.compile(r"[!#-+\--:<-\[\]-~]{1,256}")  # printable ASCII cookie octets


#: Seconds a command a migrating Redis Cluster slot refuses is sent again for, by default
#: (the ``migration_retry_timeout`` setting).
DEFAULT_MIGRATION_RETRY = 5.0
#: The share of the idle timeout after which a read-only request slides a plain session's
#: TTL again (``slide_share``): a session left alone expires between 63/64 of its idle
#: timeout and the whole of it after its last request.
DEFAULT_SLIDE_SHARE = 1 / 64

#: The longest timeout or lifetime accepted (1000 years): its milliseconds, added to now,
#: stay exact in the scripts' Lua numbers and within what Redis' PEXPIRE takes.
MAX_SECONDS = 1000 * 365 * 24 * 3600


@dataclass(frozen=True)
class NearCacheSettings:
    """The bounds of the near cache (the ``near_cache`` store setting).

    ``max_sessions`` and ``max_bytes`` bound what one store keeps in memory (least
    recently used sessions go first); ``refresh_share`` is the share of the idle timeout
    after which a request slides the TTL again (one round trip, once per share).
    """

    max_sessions: int = 10_000
    max_bytes: int = 16 * 1024 * 1024
    refresh_share: float = 0.25

    @classmethod
    def coerce(cls, value: object) -> NearCacheSettings | None:
        """``None`` for ``False``; the defaults for ``True``; a mapping's or our own values
        checked. Anything else raises :class:`ConfigurationError` naming ``near_cache``."""
        if value is False or value is None:
            return None
        if value is True:
            return cls()
        if isinstance(value, Mapping):
            try:
                value = cls(**value)
            except TypeError as exc:
                raise ConfigurationError("near_cache", str(exc)) from None
        if not isinstance(value, cls):
            raise ConfigurationError(
                "near_cache", f"must be True, False, a mapping or NearCacheSettings, not {value!r}"
            )
        for name in ("max_sessions", "max_bytes"):
            bound = getattr(value, name)
            if isinstance(bound, bool) or not isinstance(bound, int) or bound < 1:
                raise ConfigurationError("near_cache", f"{name} must be a whole number >= 1")
        share = value.refresh_share
        if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 0.5:
            raise ConfigurationError(
                "near_cache", f"refresh_share must be more than 0 and at most 0.5, not {share!r}"
            )
        return value


def seconds(setting: str, value: object, *, allow_none: bool = False) -> int | None:
    """Whole seconds from an int or a timedelta; a clear error naming ``setting`` otherwise."""
    if value is None and allow_none:
        return None
    if isinstance(value, timedelta):
        value = int(value.total_seconds())
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ConfigurationError(setting, f"must be a positive number of seconds, not {value!r}")
    if value > MAX_SECONDS:
        raise ConfigurationError(setting, f"must be at most {MAX_SECONDS} seconds (1000 years)")
    return value


def user_digest(user: str | bytes) -> str:
    """The legacy (unkeyed) digest of a user id: BLAKE2b (18 bytes) of its UTF-8, as 24
    URL-safe characters. Indexes written before ``user_key`` existed are named by it;
    anyone can compute it, so new data uses :meth:`SessionConfig.user_tag` instead."""
    raw = user.encode("utf-8") if isinstance(user, str) else user
    return base64.urlsafe_b64encode(hashlib.blake2b(raw, digest_size=18).digest()).decode("ascii")


#: The context every user digest is computed in, so that it can pass for no other HMAC.
_USER_CONTEXT = b"hashsession user index\x00"
#: The shortest ``user_key`` accepted, in bytes.
MIN_USER_KEY_BYTES = 16
#: What the owner field of a session holds before the keyed digest of its owner (a
#: legacy owner field holds the user id itself, which never starts with NUL).
_KEYED_OWNER = "\x00"


def _no_user_key(feature: str) -> ConfigurationError:
    return ConfigurationError(
        "user_key",
        f"{feature} needs a secret to key the digests of user ids (index keys and owner"
        f" fields in Redis): set user_key to a random secret of at least"
        f" {MIN_USER_KEY_BYTES} bytes (32 recommended), and keep it: changing it loses the"
        " per-user index",
    )


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """Everything a session needs to know about its store, checked once at start-up."""

    prefix: str
    idle_ms: int
    absolute_ms: int
    codec: Codec
    signer: Signer | None
    cookie: CookiePolicy
    max_key_bytes: int
    max_value_bytes: int
    max_keys: int
    key_layout: KeyLayout
    adopt_unknown_ids: bool
    id_factory: Callable[[], str] | None
    refresh_cookie: bool
    #: A cap on the tries of an optimistic ``edit()``/``apply()``; ``None``: only the time budget.
    edit_retries: int | None
    max_sessions_per_user: int | None = None
    #: Seconds an optimistic ``edit()``/``apply()`` keeps retrying before ``ConflictError``.
    edit_timeout: float = 5.0
    #: Replicas that must confirm a critical write (``WAIT``), and how long to wait, in ms.
    wait_replicas: int = 0
    wait_timeout_ms: int = 1000
    #: ``wait_for_replicas="auto"``: on Sentinel, wait for one replica whenever the
    #: sentinels know a healthy one (the store sets ``replica_view``); elsewhere, none.
    wait_auto: bool = False
    #: What tells an ``"auto"`` store how many replicas to wait for (a Sentinel
    #: :class:`~hashsession.failover.Watch`), set by the store; ``None`` elsewhere.
    replica_view: ReplicaView | None = None
    #: Seconds a command waits for a free connection when the client's pool is full.
    connection_wait: float = 10.0
    #: Seconds a command a migrating Cluster slot refuses (ASK, TRYAGAIN) is sent again.
    migration_retry: float = DEFAULT_MIGRATION_RETRY
    #: Set by the store on a Redis Cluster: a regenerated raw id keeps its key's slot.
    same_slot_ids: bool = False
    #: ``codec`` again when it binds values to their field and session (sealing), else None.
    bound_codec: BoundCodec | None = None
    #: The secret the per-user digests are keyed with (``None``: per-user features refuse).
    user_key: bytes | None = None
    #: Also find (and lazily migrate) sessions indexed under unkeyed digests.
    legacy_user_index: bool = True
    #: The near cache's bounds, or ``None``: no near cache (the ``near_cache`` setting).
    near_cache: NearCacheSettings | None = None
    #: How long after this process slid a plain session's TTL its first read may skip the
    #: slide (``slide_share`` of the idle timeout, in ms; 0: slide on every request).
    slide_cut_ms: int = 0
    #: Plain sessions (no timeout, cookie lifetime or owner of their own) this process slid
    #: lately: key -> when (ms since the epoch, this host's clock). See :mod:`hashsession.protocol`.
    slid: dict[str, int] = field(init=False, repr=False, compare=False)
    #: ``idle_ms`` and ``absolute_ms`` as the decimal bytes the first command of a request
    #: sends (worked out once, not per request).
    idle_bytes: bytes = field(init=False, repr=False, compare=False)
    absolute_bytes: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "slid", {})
        object.__setattr__(self, "idle_bytes", b"%d" % self.idle_ms)
        object.__setattr__(self, "absolute_bytes", b"%d" % self.absolute_ms)

    @classmethod
    def build(
        cls,
        *,
        prefix: str = "hs:",
        ttl: int | timedelta = 14 * 24 * 3600,
        absolute_ttl: int | timedelta | _Unset | None = _UNSET,
        secret_keys: Sequence[str | bytes] | None = None,
        codec: str | Codec | None = None,
        cookie: CookiePolicy | Mapping[str, Any] | None = None,
        max_key_length: int = 256,
        max_value_size: int = 512 * 1024,
        max_keys: int = 1000,
        key_layout: KeyLayout = "digest",
        adopt_unknown_ids: bool = False,
        id_factory: Callable[[], str] | None = None,
        refresh_cookie: bool = True,
        edit_retries: int | None = None,
        edit_timeout: float | timedelta = 5.0,
        max_sessions_per_user: int | None = None,
        wait_for_replicas: int | Literal["auto"] = "auto",
        wait_timeout: float | timedelta = 1.0,
        connection_wait_timeout: float | timedelta = 10.0,
        migration_retry_timeout: float | timedelta = DEFAULT_MIGRATION_RETRY,
        user_key: str | bytes | None = None,
        legacy_user_index: bool = True,
        near_cache: bool | NearCacheSettings | Mapping[str, Any] = False,
        slide_share: float = DEFAULT_SLIDE_SHARE,
    ) -> SessionConfig:
        """Check every setting, naming the first bad one."""
        # No NUL either: a user's index tells session keys from login markers by it.
        if not isinstance(prefix, str) or "\n" in prefix or "\x00" in prefix:
            raise ConfigurationError(
                "prefix", f"must be a str without newlines or NUL bytes, not {prefix!r}"
            )
        try:
            prefix.encode("utf-8")
        except UnicodeEncodeError:
            raise ConfigurationError(
                "prefix", "holds a lone surrogate, which has no UTF-8 form"
            ) from None
        idle = seconds("ttl", ttl)
        if absolute_ttl is _UNSET:  # ASVS 7.3.2: an absolute lifetime unless told otherwise
            absolute: int | None = max(DEFAULT_ABSOLUTE_TTL, idle or 0)
        else:
            absolute = seconds("absolute_ttl", absolute_ttl, allow_none=True)
        if isinstance(secret_keys, (str, bytes)):
            raise ConfigurationError("secret_keys", "must be a list of keys, newest first")
        signer = Signer(list(secret_keys)) if secret_keys is not None else None
        for name, value, low in (
            ("max_key_length", max_key_length, 1),
            ("max_value_size", max_value_size, 1),
            ("max_keys", max_keys, 1),
            ("edit_retries", 1 if edit_retries is None else edit_retries, 1),
            ("wait_for_replicas", 0 if wait_for_replicas == "auto" else wait_for_replicas, 0),
            (
                "max_sessions_per_user",
                1 if max_sessions_per_user is None else max_sessions_per_user,
                1,
            ),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigurationError(name, f"must be a whole number >= {low}, not {value!r}")
        if isinstance(wait_timeout, timedelta):
            wait_timeout = wait_timeout.total_seconds()
        if isinstance(wait_timeout, bool) or not isinstance(wait_timeout, (int, float)):
            raise ConfigurationError("wait_timeout", f"must be seconds, not {wait_timeout!r}")
        if not 0.001 <= wait_timeout <= 60:
            raise ConfigurationError("wait_timeout", "must be from 0.001 to 60 seconds")
        if isinstance(connection_wait_timeout, timedelta):
            connection_wait_timeout = connection_wait_timeout.total_seconds()
        if isinstance(connection_wait_timeout, bool) or not isinstance(
            connection_wait_timeout, (int, float)
        ):
            raise ConfigurationError(
                "connection_wait_timeout", f"must be seconds, not {connection_wait_timeout!r}"
            )
        if not 0 <= connection_wait_timeout <= 3600:
            raise ConfigurationError("connection_wait_timeout", "must be from 0 to 3600 seconds")
        if isinstance(migration_retry_timeout, timedelta):
            migration_retry_timeout = migration_retry_timeout.total_seconds()
        if isinstance(migration_retry_timeout, bool) or not isinstance(
            migration_retry_timeout, (int, float)
        ):
            raise ConfigurationError(
                "migration_retry_timeout", f"must be seconds, not {migration_retry_timeout!r}"
            )
        if not 0 <= migration_retry_timeout <= 3600:
            raise ConfigurationError("migration_retry_timeout", "must be from 0 to 3600 seconds")
        if isinstance(edit_timeout, timedelta):
            edit_timeout = edit_timeout.total_seconds()
        if isinstance(edit_timeout, bool) or not isinstance(edit_timeout, (int, float)):
            raise ConfigurationError("edit_timeout", f"must be seconds, not {edit_timeout!r}")
        if not 0 < edit_timeout <= 3600:
            raise ConfigurationError("edit_timeout", "must be more than 0 and at most 3600 seconds")
        if max_keys > 3000:
            raise ConfigurationError("max_keys", "must be at most 3000 (one Lua call's arguments)")
        if key_layout not in ("digest", "raw"):
            raise ConfigurationError("key_layout", f"must be 'digest' or 'raw', not {key_layout!r}")
        if id_factory is not None and not callable(id_factory):
            raise ConfigurationError("id_factory", "must be a callable returning a new id")
        if id_factory is not None and key_layout != "raw":
            raise ConfigurationError("id_factory", "custom ids need key_layout='raw'")
        resolved = resolve_codec(codec)
        if isinstance(user_key, str):
            user_key = user_key.encode("utf-8")
        if user_key is not None and not isinstance(user_key, (bytes, bytearray)):
            raise ConfigurationError(
                "user_key", f"must be str or bytes, not {type(user_key).__name__}"
            )
        if user_key is not None and len(user_key) < MIN_USER_KEY_BYTES:
            raise ConfigurationError(
                "user_key", f"must be at least {MIN_USER_KEY_BYTES} bytes (a random secret)"
            )
        if max_sessions_per_user is not None and user_key is None:
            raise _no_user_key("max_sessions_per_user")
        if not isinstance(legacy_user_index, bool):
            raise ConfigurationError(
                "legacy_user_index", f"must be True or False, not {legacy_user_index!r}"
            )
        near = NearCacheSettings.coerce(near_cache)
        if (
            isinstance(slide_share, bool)
            or not isinstance(slide_share, (int, float))
            or not 0 <= slide_share <= 0.5
        ):
            raise ConfigurationError(
                "slide_share", f"must be a number from 0 to 0.5, not {slide_share!r}"
            )
        return cls(
            near_cache=near,
            slide_cut_ms=int(slide_share * idle * 1000),  # type: ignore[operator]
            prefix=prefix,
            idle_ms=idle * 1000,  # type: ignore[operator]
            absolute_ms=(absolute or 0) * 1000,
            codec=resolved,
            bound_codec=bound_codec(resolved),
            signer=signer,
            cookie=CookiePolicy.coerce(cookie),
            max_key_bytes=max_key_length,
            max_value_bytes=max_value_size,
            max_keys=max_keys,
            key_layout=key_layout,
            adopt_unknown_ids=bool(adopt_unknown_ids),
            id_factory=id_factory,
            refresh_cookie=bool(refresh_cookie),
            edit_retries=edit_retries,
            edit_timeout=float(edit_timeout),
            max_sessions_per_user=max_sessions_per_user,
            wait_replicas=0 if wait_for_replicas == "auto" else wait_for_replicas,
            wait_auto=wait_for_replicas == "auto",
            wait_timeout_ms=round(wait_timeout * 1000),
            connection_wait=float(connection_wait_timeout),
            migration_retry=float(migration_retry_timeout),
            user_key=None if user_key is None else bytes(user_key),
            legacy_user_index=legacy_user_index,
        )

    @property
    def patience(self) -> tuple[float, float]:
        """What :mod:`hashsession.transport` waits for, in seconds: a free connection
        (``connection_wait_timeout``), a migrating slot (``migration_retry_timeout``)."""
        return self.connection_wait, self.migration_retry

    def replicas_to_wait(self) -> int:
        """Replicas the next critical write waits for (``WAIT``); 0: it does not wait."""
        view = self.replica_view
        if view is None:
            return self.wait_replicas
        return view.wanted(self.wait_replicas or 1)

    def may_wait(self) -> bool:
        """Whether critical writes may ever wait for replicas with these settings."""
        return bool(self.wait_replicas or self.replica_view is not None)

    def in_place(self, kind: str) -> bool:
        """Whether the codec lets the value edits change a ``kind`` value on the server.

        See :mod:`hashsession.codecs`: ``"list"`` or ``"dict"`` in the codec's ``in_place``.
        """
        return kind in getattr(self.codec, "in_place", ())

    # ids, keys and cookies -------------------------------------------------

    def new_id(self, like: str | None = None) -> str:
        """A fresh id; given the id it replaces, one whose key shares that key's slot."""
        if self.id_factory is not None:
            made = self.id_factory()
            if not isinstance(made, str) or not _RAW_ID.fullmatch(made):
                raise ConfigurationError(
                    "id_factory", f"made {made!r}; ids must be 1-256 printable cookie-safe chars"
                )
        elif self.key_layout == "digest":
            return ids.new_id(ids.tag_of(like) if like else None)
        else:
            made = ids.new_id()
        if like is None or not self.same_slot_ids:
            return made
        try:
            placed = ids.in_slot_of(self.prefix, like, made)
        except ValueError as exc:
            raise ConfigurationError("prefix", str(exc)) from None
        if len(placed) > 256:
            raise ConfigurationError(
                "id_factory", "on a Redis Cluster, ids must leave room for a 5-character slot tag"
            )
        return placed

    def key_of(self, session_id: str) -> str:
        """The Redis key holding the session ``session_id``."""
        if self.key_layout == "digest":
            return ids.digest_key(self.prefix, session_id)
        return ids.raw_key(self.prefix, session_id)

    # the per-user index (see hashsession.users and docs/sessions-per-user.md) ------

    def user_tag(self, user: str) -> str:
        """The keyed digest of a user id: 32 URL-safe characters, the first 24 bytes of
        HMAC-SHA256 by ``user_key``. It names the user's index and, after a NUL, fills
        the owner field, so neither reveals the id to whoever can read Redis.

        Raises :class:`ConfigurationError` naming ``user_key`` when it is not set.
        """
        if self.user_key is None:
            raise _no_user_key("sessions per user")
        mac = hmac.digest(self.user_key, _USER_CONTEXT + user.encode("utf-8"), "sha256")
        return base64.urlsafe_b64encode(mac[:24]).decode("ascii")

    def owner_value(self, user: str) -> str:
        """What a session's owner field holds for ``user``: NUL, then :meth:`user_tag`."""
        return _KEYED_OWNER + self.user_tag(user)

    def owner_values(self, user: str) -> list[bytes]:
        """Every owner field value that means ``user``: the keyed one, and the legacy one
        (the id itself) unless ``legacy_user_index`` is off."""
        values = [self.owner_value(user).encode("utf-8")]
        if self.legacy_user_index:
            values.append(user.encode("utf-8"))
        return values

    def user_digests(self, user: str) -> list[str]:
        """The digests naming ``user``'s indexes: keyed, then (unless off) the legacy one."""
        digests = [self.user_tag(user)]
        if self.legacy_user_index:
            digests.append(user_digest(user))
        return digests

    def index_key(self, user: str) -> str:
        """The Redis key of a user's session index: ``<prefix>u:`` plus :meth:`user_tag`."""
        return self.index_key_of(self.user_tag(user))

    def index_key_of(self, digest: str) -> str:
        """The index key named by a digest (:meth:`user_tag`, or a legacy :func:`user_digest`)."""
        return f"{self.prefix}u:{digest}"

    @staticmethod
    def owner_is_keyed(owner: bytes | str) -> bool:
        """Whether an owner field value is a keyed digest (else a legacy, plain user id)."""
        return owner[:1] in (b"\x00", "\x00")

    def index_of_owner(self, owner: bytes | str) -> str:
        """The index key of the user an owner field value names, keyed or legacy (any
        bytes give a key: an owner field planted by another client raises nothing)."""
        raw = owner.encode("utf-8") if isinstance(owner, str) else owner
        if self.owner_is_keyed(raw):
            return self.index_key_of(raw[1:].decode("utf-8", "replace"))
        return self.index_key_of(user_digest(raw))

    def cookie_value(self, session_id: str) -> str:
        """What the cookie carries for ``session_id``: the id, signed when keys are set."""
        return self.signer.sign(session_id) if self.signer is not None else session_id

    def id_from_cookie(self, value: str) -> str | None:
        """The session id a cookie value carries, or ``None`` if it is forged or malformed."""
        return self.read_cookie(value)[0]

    def read_cookie(self, value: str) -> tuple[str | None, bool]:
        """The session id a cookie value carries (or ``None``), and whether an older key
        signed it.

        A value signed by any key but the newest is valid; the session's next response
        that uses it signs it again with the newest key, so an old key can be retired
        one idle timeout after a new one is put first.
        """
        if self.signer is None:  # the common case: an unsigned cookie
            return self.id_from_unsigned(value), False
        stale = False
        if self.signer is not None:
            checked = self.signer.verify(value)
            if checked is None:
                return None, False
            value, position = checked
            stale = position > 0
        session_id = self.id_from_unsigned(value)
        return session_id, stale and session_id is not None

    def id_from_unsigned(self, value: str) -> str | None:
        """The session id named by a cookie value whose signature (if any) was checked."""
        return value if self.is_id(value) else None

    def is_id(self, value: str) -> bool:
        """Whether ``value`` has the shape of a session id of this layout (unsigned)."""
        if self.key_layout == "digest":
            return ids.is_native_id(value)
        return _RAW_ID.fullmatch(value) is not None
