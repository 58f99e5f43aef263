"""The operations behind the commands: find session keys, describe them, count them.

Keys hold a digest of the session id (docs/data-layout.md), so a listing shows what a
key tells (its tag, owner digest, times, size), never an id. Scans go node by node
(every primary of a Cluster, the master under Sentinel) with ``SCAN ... COUNT``; each
batch of keys is described with one pipeline to the node that returned it.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from redis.cluster import RedisCluster

from hashsession.config import SessionConfig, user_digest
from hashsession.protocol import load_meta
from hashsession.scripts import CREATED_FIELD, OWNER_FIELD, SEEN_FIELD
from hashsession.topology import SyncClient

__all__ = [
    "SCAN_COUNT",
    "Layout",
    "Row",
    "Stats",
    "describe_keys",
    "node_clients",
    "purge",
    "read_session",
    "resolve",
    "scan",
    "table",
    "user_sessions",
]

#: Keys a ``SCAN`` step looks at, and so the largest batch described by one pipeline.
SCAN_COUNT = 1000
_B64 = "[A-Za-z0-9_-]"
_CORE_NAMES = {"c": "created", "u": "user", "s": "last_seen", "i": "indexed_until"}
_CORE_NAMES |= {"t": "timeout_ms", "k": "cookie_lifetime"}


@dataclass(frozen=True)
class Layout:
    """The shapes of the keys a store with ``prefix`` writes (digest layout)."""

    prefix: str

    @property
    def match(self) -> str:
        """A ``SCAN MATCH`` pattern for every key under the prefix (glob characters escaped)."""
        return re.sub(r"([*?\[\]\\])", r"\\\1", self.prefix) + "*"

    def is_session(self, key: str) -> bool:
        """``<prefix>{tag}<24-character digest>``."""
        return (
            re.fullmatch(rf"{re.escape(self.prefix)}\{{{_B64}{{4}}\}}{_B64}{{24}}", key) is not None
        )

    def is_index(self, key: str) -> bool:
        """``<prefix>u:<keyed (32) or legacy (24) user digest>``."""
        shape = rf"{re.escape(self.prefix)}u:{_B64}{{24}}(?:{_B64}{{8}})?"
        return re.fullmatch(shape, key) is not None

    def tag(self, key: str) -> str:
        return key[len(self.prefix) + 1 : len(self.prefix) + 5]


def resolve(config: SessionConfig, text: str) -> str:
    """The session key named by a key (as ``ls`` lists it), a session id, or a cookie value
    (``id.signature``, verified with the secret keys); ``ValueError`` says why not.

    The message never repeats ``text``: an id or a cookie value is a secret.
    """
    if Layout(config.prefix).is_session(text):
        return text
    if config.key_layout == "digest" and config.is_id(text):
        return config.key_of(text)
    if "." in text:
        if config.signer is None:
            raise ValueError(
                "that looks like a signed cookie value: give the store's --secret-key"
                " (or HASHSESSION_SECRET_KEYS) to verify it"
            )
        session_id = config.id_from_cookie(text)
        if session_id is None:
            raise ValueError("that cookie value does not verify with the secret keys given")
        return config.key_of(session_id)
    raise ValueError(
        f"that is not a session id, a cookie value or a session key of prefix {config.prefix!r}"
    )


# -- rows ---------------------------------------------------------------------------


def _when(ms: bytes | None) -> datetime | None:
    if ms is None:
        return None
    try:
        return datetime.fromtimestamp(int(ms) / 1000, timezone.utc)
    except ValueError:
        return None


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat(timespec="seconds").replace("+00:00", "Z")


def _owner(raw: bytes | None) -> tuple[str | None, str | None]:
    """The digest naming the owner's index and, for a legacy owner field, the user id."""
    if raw is None:
        return None, None
    if SessionConfig.owner_is_keyed(raw):
        return raw[1:].decode("utf-8", "replace"), None
    text = raw.decode("utf-8", "replace")
    return user_digest(raw), text


@dataclass
class Row:
    """What a session key tells without its id: ``ttl`` in seconds (``None``: no expiry),
    ``size`` in bytes as ``MEMORY USAGE`` reports it, ``user`` the owner's digest."""

    key: str
    tag: str
    user: str | None
    user_id: str | None
    created: datetime | None
    last_seen: datetime | None
    ttl: float | None
    size: int | None
    owner: bytes | None = field(default=None, repr=False)

    def as_json(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "tag": self.tag,
            "user": self.user,
            "user_id": self.user_id,
            "created": _iso(self.created),
            "last_seen": _iso(self.last_seen),
            "ttl": self.ttl,
            "size": self.size,
        }

    def as_text(self, width: int) -> str:
        ttl = "-" if self.ttl is None else f"{self.ttl:.0f}s"
        user = self.user_id or self.user or "-"
        created = _iso(self.created) or "-"
        return f"{self.key:{width}}  {ttl:>9}  {self.size or 0:>7}  {created:20}  {user}"


def table(rows: list[Row]) -> str:
    """``rows`` as aligned text under a header line."""
    width = max([len("KEY"), *(len(row.key) for row in rows)])
    header = f"{'KEY':{width}}  {'TTL':>9}  {'BYTES':>7}  {'CREATED':20}  USER"
    return "\n".join([header, *(row.as_text(width) for row in rows)])


def describe_keys(client: Any, layout: Layout, keys: list[str]) -> list[Row]:
    """One :class:`Row` per key still alive: one pipeline (``HMGET``, ``PTTL``,
    ``MEMORY USAGE`` per key) on ``client``, a node or a cluster client."""
    pipe = client.pipeline(transaction=False)
    for key in keys:
        pipe.hmget(key, [CREATED_FIELD, OWNER_FIELD, SEEN_FIELD])
        pipe.pttl(key)
        pipe.execute_command("MEMORY USAGE", key)
    replies = pipe.execute()
    rows = []
    for n, key in enumerate(keys):
        (created, owner, seen), pttl, size = replies[3 * n : 3 * n + 3]
        if pttl == -2:  # gone since it was listed
            continue
        user, user_id = _owner(owner)
        rows.append(
            Row(
                key=key,
                tag=layout.tag(key),
                user=user,
                user_id=user_id,
                created=_when(created),
                last_seen=_when(seen),
                ttl=None if pttl < 0 else pttl / 1000,
                size=size,
                owner=owner,
            )
        )
    return rows


# -- scans --------------------------------------------------------------------------


def node_clients(client: SyncClient) -> list[Any]:
    """Where to scan: each primary of a Cluster, else the client itself (the Sentinel
    client talks to the master)."""
    if isinstance(client, RedisCluster):
        primaries = client.get_primaries()  # type: ignore[no-untyped-call]
        return [client.get_redis_connection(node) for node in primaries]
    return [client]


def scan(
    client: SyncClient, match: str, advance: Callable[[int], None], count: int = SCAN_COUNT
) -> Iterator[tuple[Any, list[str]]]:
    """Batches of keys matching ``match``, with the node that holds them."""
    for node in node_clients(client):
        cursor = 0
        while True:
            cursor, found = node.scan(cursor, match=match, count=count)
            if found:
                advance(len(found))
                yield node, [key.decode("utf-8", "surrogateescape") for key in found]
            if cursor == 0:
                break


def user_sessions(client: Any, config: SessionConfig, user: str) -> list[Row]:
    """The live sessions ``user`` owns, found through the user's indexes (keyed and
    legacy); needs ``user_key``. Entries of other owners' or vanished sessions are skipped."""
    layout = Layout(config.prefix)
    members: dict[str, None] = {}
    for digest in config.user_digests(user):
        for member in client.zrange(config.index_key_of(digest), 0, -1):
            if not member.startswith(b"\x00"):  # a login marker, not a session
                members[member.decode("utf-8", "surrogateescape")] = None
    if not members:
        return []
    mine = config.owner_values(user)
    rows = [row for row in describe_keys(client, layout, list(members)) if row.owner in mine]
    for row in rows:
        row.user_id = user
    return rows


_TTL_BUCKETS = (
    (60, "<=1m"),
    (600, "<=10m"),
    (3600, "<=1h"),
    (86400, "<=1d"),
    (7 * 86400, "<=7d"),
    (30 * 86400, "<=30d"),
)
_PER_USER_BUCKETS = ((1, "1"), (2, "2"), (5, "3-5"), (10, "6-10"))


def _bucket(value: float, buckets: tuple[tuple[int, str], ...], above: str) -> str:
    return next((label for limit, label in buckets if value <= limit), above)


@dataclass
class Stats:
    """Counts over a scan: sessions, their memory, TTLs, and owners."""

    sessions: int = 0
    indexes: int = 0
    memory: int = 0
    ttl: Counter[str] = field(default_factory=Counter)
    owners: Counter[str] = field(default_factory=Counter)

    def add(self, row: Row) -> None:
        self.sessions += 1
        self.memory += row.size or 0
        self.ttl["none" if row.ttl is None else _bucket(row.ttl, _TTL_BUCKETS, ">30d")] += 1
        if row.user is not None:
            self.owners[row.user] += 1

    def as_json(self) -> dict[str, Any]:
        logged_in = sum(self.owners.values())
        labels = [label for _, label in _TTL_BUCKETS] + [">30d", "none"]
        per_user = Counter(_bucket(n, _PER_USER_BUCKETS, ">10") for n in self.owners.values())
        per_user_labels = [label for _, label in _PER_USER_BUCKETS] + [">10"]
        return {
            "sessions": self.sessions,
            "index_keys": self.indexes,
            "memory_bytes": self.memory,
            "ttl_histogram": {label: self.ttl[label] for label in labels},
            "users": {
                "distinct": len(self.owners),
                "logged_in_sessions": logged_in,
                "anonymous_sessions": self.sessions - logged_in,
                "sessions_per_user": {label: per_user[label] for label in per_user_labels},
                "top": [{"user": u, "sessions": n} for u, n in self.owners.most_common(10)],
            },
        }


def purge(client: SyncClient, layout: Layout, advance: Callable[[int], None]) -> int:
    """``UNLINK`` every session and index key under the prefix, one pipeline per batch;
    how many keys were deleted. Other keys under the prefix are left alone."""
    deleted = 0
    for node, keys in scan(client, layout.match, advance):
        ours = [key for key in keys if layout.is_session(key) or layout.is_index(key)]
        if ours:
            pipe = node.pipeline(transaction=False)
            for key in ours:
                pipe.unlink(key)
            deleted += sum(pipe.execute())
    return deleted


# -- one session ----------------------------------------------------------------------


def _decoded(config: SessionConfig, raw: bytes) -> tuple[bool, Any]:
    try:
        return True, config.codec.loads(raw)
    except Exception:
        return False, raw.decode("utf-8", "backslashreplace")


def read_session(client: SyncClient, config: SessionConfig, key: str) -> dict[str, Any] | None:
    """Everything stored at ``key``, decoded, or ``None`` if no session lives there.

    Read with ``HGETALL`` and ``PTTL``, so the idle timeout does not slide (opening the
    session would slide it). Values the store's codec cannot read go to ``undecoded``.
    """
    pipe = client.pipeline(transaction=False)
    pipe.hgetall(key)
    pipe.pttl(key)
    fields, pttl = pipe.execute()
    if not fields or pttl == -2:
        return None
    out: dict[str, Any] = {"key": key, "tag": Layout(config.prefix).tag(key)}
    out["ttl"] = None if pttl < 0 else pttl / 1000
    user, user_id = _owner(fields.get(OWNER_FIELD.encode()))
    out |= {
        "created": _iso(_when(fields.get(CREATED_FIELD.encode()))),
        "last_seen": _iso(_when(fields.get(SEEN_FIELD.encode()))),
        "user": user,
        "user_id": user_id,
    }
    values: dict[str, Any] = {}
    undecoded: dict[str, str] = {}
    meta: dict[str, Any] = {}
    for raw_name, raw in sorted(fields.items()):
        name = raw_name.decode("utf-8", "backslashreplace")
        if name.startswith("\x00"):
            if name[1:] not in _CORE_NAMES:
                try:
                    meta[name[1:]] = load_meta(raw, name[1:])
                except Exception:
                    meta[name[1:]] = raw.decode("utf-8", "backslashreplace")
            continue
        ok, value = _decoded(config, raw)
        (values if ok else undecoded)[name] = value
    out |= {"fields": values, "undecoded": undecoded, "meta": meta}
    return out
