"""Sessions per user: who is logged in where, and logging them out from afar.

``session.login(user_id)`` records the owner in the session's hash and adds
the session to a per-user index: a sorted set at ``<prefix>u:<digest of the
user id>`` whose members are session *keys* (never ids, so the index reveals
no usable cookie) scored by the time until which each entry is known to
outlast its session. The digest, in the key's name and in the owner field, is
an HMAC keyed with the store's ``user_key`` (see
:meth:`~hashsession.config.SessionConfig.user_tag`), so whoever can list or
read Redis learns no user id; without ``user_key`` these features refuse.
Sessions indexed before ``user_key`` existed (an unkeyed digest, the id itself
in the owner field) are still found, and are moved to the keyed index the next
time their entry is refreshed (see ``legacy_user_index``).

Entries are pruned lazily and the index key expires with its last entry, so it
never grows without bound. Whose session a key is lives in the session itself;
the index is only a way to find them, and it need not share the session's
cluster slot.

The store-level operations here are sans-I/O generators ("flows") that yield
a command (or a list of commands, sent as one non-transactional pipeline) and
receive its reply; :func:`run` and :func:`arun` drive them for the sync and
asyncio stores, so the two flavours share every decision.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, TypeVar

from hashsession.config import DEFAULT_MIGRATION_RETRY, SessionConfig
from hashsession.errors import BackendError
from hashsession.protocol import BACKEND_ERRORS, Command, SessionView, index_command, index_put
from hashsession.replication import check, waited
from hashsession.scripts import CREATED_FIELD, OWNER_FIELD, REVOKE, SEEN_FIELD
from hashsession.transport import apipeline, asend, pipeline, send

__all__ = [
    "SessionInfo",
    "UserId",
    "arun",
    "handle_of",
    "revoke",
    "revoke_key",
    "revoke_user",
    "run",
    "sessions_of",
    "user_text",
]

#: A user id as the API takes it; an int is stored as its decimal text (so 42 and "42"
#: name the same user).
UserId = str | int
#: What a flow asks for: one command, or several sent as one pipeline (a list of replies).
Request = Command | list[Command]
T = TypeVar("T")
Flow = Generator[Request, Any, T]

_MAX_USER_ID = 1024
# The digest naming the index (32 characters keyed, 24 legacy), a dot, the key's SHA1.
_HANDLE = re.compile(r"[A-Za-z0-9_-]{24}(?:[A-Za-z0-9_-]{8})?\.[0-9a-f]{40}")


def user_text(user_id: UserId) -> str:
    """The text a user id is stored as; ``TypeError``/``ValueError`` for unusable ids."""
    if isinstance(user_id, bool) or not isinstance(user_id, (str, int)):
        raise TypeError(f"a user id is a str or an int, not {type(user_id).__name__}")
    text = str(user_id)
    if not text or len(text) > _MAX_USER_ID:
        raise ValueError(f"a user id must be 1 to {_MAX_USER_ID} characters long")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("a user id must be encodable as UTF-8") from None
    return text


def handle_of(digest: str, key: str | bytes) -> str:
    """The opaque handle of session ``key`` in the index named by ``digest``.

    The digest naming the index, a dot, and the SHA1 of the session key: it lets
    :func:`revoke` find the entry (the ``INDEX`` script compares SHA1s), yet it is
    neither a session id nor a Redis key, so it cannot be used as a cookie.
    """
    raw = key.encode("utf-8") if isinstance(key, str) else key
    return f"{digest}.{hashlib.sha1(raw).hexdigest()}"


def _is_handle(value: str) -> bool:
    return _HANDLE.fullmatch(value) is not None


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """One live session of a user, as :meth:`SessionStore.sessions_of` lists it.

    ``handle`` is opaque and safe to show or send to the browser (it is not a
    cookie); pass it to ``revoke()`` or as ``revoke_user(keep=...)``. Times are
    timezone-aware UTC datetimes; ``last_seen`` is the first command of the last
    request that used the session, ``current`` whether it is the session given
    as ``current=``.
    """

    handle: str
    created: datetime
    last_seen: datetime
    expires_at: datetime
    current: bool = False


def _when(ms: float) -> datetime:
    return datetime.fromtimestamp(ms / 1000, timezone.utc)


def _key_of_id(config: SessionConfig, session_id: str) -> str | None:
    """The key of a session id, or ``None`` for a string that cannot be one of ours."""
    return config.key_of(session_id) if config.is_id(session_id) else None


def _key_of_session(config: SessionConfig, session: SessionView | str | None) -> str | None:
    if session is None:
        return None
    if isinstance(session, SessionView):
        return session.core.key
    return _key_of_id(config, session)


# --------------------------------------------------------------------------- flows


def sessions_of(
    config: SessionConfig, user_id: UserId, current: SessionView | str | None = None
) -> Flow[list[SessionInfo]]:
    """List ``user_id``'s live sessions, most recently seen first; prune dead entries.

    Two round trips (the indexes, keyed and legacy, in one pipeline, then one pipeline
    over the sessions; each split per node on a Cluster), and one more when entries of
    vanished sessions are removed.
    """
    user = user_text(user_id)
    digests = config.user_digests(user)
    lists = yield from _each_index(config, digests, "list")
    found: dict[bytes, list[str]] = {}  # member -> the digests of the indexes holding it
    for digest, members in zip(digests, lists, strict=True):
        for member in members or ():
            found.setdefault(member, []).append(digest)
    if not found:
        return []
    batch: list[Command] = []
    for member in found:
        batch.append(("HMGET", member, CREATED_FIELD, SEEN_FIELD, OWNER_FIELD))
        batch.append(("PTTL", member))
    replies = yield batch
    now_ms = time.time() * 1000
    mine = config.owner_values(user)
    current_key = _key_of_session(config, current)
    current_raw = current_key.encode("utf-8") if current_key else None
    infos: list[SessionInfo] = []
    dead: dict[str, list[bytes]] = {}
    for n, (member, where) in enumerate(found.items()):
        (created, seen, owner), pttl = replies[2 * n], replies[2 * n + 1]
        if owner not in mine or pttl is None or pttl < 0:  # gone, or not this user's any more
            for digest in where:
                dead.setdefault(digest, []).append(member)
            continue
        born = int(created or 0)
        infos.append(
            SessionInfo(
                handle=handle_of(where[0], member),
                created=_when(born),
                last_seen=_when(int(seen or born)),
                expires_at=_when(now_ms + pttl),
                current=member == current_raw,
            )
        )
    if dead:  # but not the entries of logins still making their sessions (see INDEX)
        prunes = [index_put(config.index_key_of(d), dead=members) for d, members in dead.items()]
        yield prunes[0] if len(prunes) == 1 else prunes
    infos.sort(key=lambda info: info.last_seen, reverse=True)
    return infos


def revoke(config: SessionConfig, id_or_handle: str, user_id: UserId | None = None) -> Flow[bool]:
    """Delete one session, by id or by handle; whether a live session was deleted.

    With ``user_id``, only a session that user owns is deleted. Two round trips (on a
    Cluster, three by handle).
    """
    user = None if user_id is None else user_text(user_id)
    if not isinstance(id_or_handle, str):
        raise TypeError(f"revoke() takes a session id or a handle, not {id_or_handle!r}")
    if _is_handle(id_or_handle):
        digest, sha = id_or_handle.split(".")
        if user is not None and digest not in config.user_digests(user):
            return False
        index = config.index_key_of(digest)
        # The session, and the new keys of logins in progress from it (on a Cluster).
        found: list[bytes] | None = yield index_command(index, "find", sha)
        if not found:
            return False
        replies = yield from _delete(config, {index: found})
        return any(replies)
    key = _key_of_id(config, id_or_handle)
    if key is None:
        return False
    owners = () if user is None else config.owner_values(user)
    return (yield from revoke_key(config, key, owners))


def revoke_key(config: SessionConfig, key: str, owners: Sequence[bytes] = ()) -> Flow[bool]:
    """Delete the session stored at ``key``, then its owner's index entry; whether it lived.

    For tools that hold a key (a listing of Redis keys) rather than an id. With
    ``owners`` (owner field values, see :meth:`SessionConfig.owner_values`), only a
    session one of them owns is deleted. Two round trips when the session had an owner.
    """
    (reply,) = yield from _critical(config, [("EVALSHA", REVOKE.sha, 1, key, *owners)])
    if not reply:  # gone (None), or someone else's (0)
        return False
    if reply[1] is not None:
        yield index_put(config.index_of_owner(reply[1]), [key])
    return True


def revoke_user(
    config: SessionConfig, user_id: UserId, keep: SessionView | str | None = None
) -> Flow[int]:
    """Delete every indexed session of ``user_id`` but ``keep``; how many were live.

    One round trip for the indexes (keyed and legacy, one pipeline; on a Cluster, split
    per node), one pipeline of ``DEL`` for the sessions (which takes them out of the
    indexes too; on a Cluster, one more round trip does). On a Cluster the keyed index
    also names the logins in progress: their new keys and their old ones are deleted, so
    such a login cannot bring its session in afterwards.
    """
    user = user_text(user_id)
    digests = config.user_digests(user)
    keep_key, keep_sha = "", ""
    if isinstance(keep, str) and _is_handle(keep):
        digest, sha = keep.split(".")
        keep_sha = sha if digest in digests else ""
    else:
        keep_key = _key_of_session(config, keep) or ""
    dropped = yield from _each_index(config, digests, "drop", keep_key, keep_sha)
    doomed = {
        config.index_key_of(digest): members
        for digest, members in zip(digests, dropped, strict=True)
        if members
    }
    if not doomed:
        return 0
    replies = yield from _delete(config, doomed)
    return sum(1 for deleted in replies if deleted)


def _each_index(config: SessionConfig, digests: list[str], op: str, *args: Any) -> Flow[list[Any]]:
    """Run ``INDEX op`` on the index of each digest: one command, or one pipeline."""
    commands = [index_command(config.index_key_of(digest), op, *args) for digest in digests]
    if len(commands) == 1:
        return [(yield commands[0])]
    replies: list[Any] = yield commands
    return replies


def _delete(config: SessionConfig, indexes: dict[str, list[bytes]]) -> Flow[list[Any]]:
    """Delete the sessions named in ``indexes`` (index key -> members; a critical write),
    then take them out of those indexes; the ``DEL`` replies, one per session.

    Never the other way round: a delete that fails leaves them indexed, so calling
    again finds them. On one server the deletes and the unindexing (one command per
    index) go out as one pipeline, run in order; on a Cluster (nodes apart) the
    unindexing follows the deletes, as one more pipeline, and an entry whose session
    the ``DEL`` found missing stays while a login marker says that session is still
    being made (its old key was among the deletes, so that login fails; if it makes a
    new session instead, the entry covers it).
    """
    members = list(dict.fromkeys(m for found in indexes.values() for m in found))
    deletes: list[Command] = [("DEL", member) for member in members]
    if config.same_slot_ids:
        replies = yield from _critical(config, deletes)
        deleted = dict(zip(members, replies, strict=True))
        puts = [
            index_put(
                index,
                [m for m in found if deleted[m]],
                dead=[m for m in found if not deleted[m]],
            )
            for index, found in indexes.items()
        ]
        yield puts[0] if len(puts) == 1 else puts
        return replies
    puts = [index_put(index, found) for index, found in indexes.items()]
    out = yield from _critical(config, [*deletes, *puts])
    return out[: len(deletes)]


def _critical(config: SessionConfig, commands: list[Command]) -> Flow[list[Any]]:
    """Send a security-critical write; under ``wait_for_replicas``, ``WAIT`` behind it.

    Raises :class:`~hashsession.NotReplicatedError` (after the write) when too few
    replicas confirmed it.
    """
    wanted = config.replicas_to_wait()
    if not wanted:
        if len(commands) == 1:
            return [(yield commands[0])]
        replies: list[Any] = yield commands
        return replies
    *replies, _fence, replicas = yield waited(config, commands, wanted)
    check(wanted, replicas)
    return replies


# --------------------------------------------------------------------------- drivers


def _error(exc: Exception) -> BackendError:
    return BackendError(f"Redis failed on a user's session index: {exc}")


def run(client: Any, flow: Flow[T], wait: float, moving: float = DEFAULT_MIGRATION_RETRY) -> T:
    """Drive ``flow`` on a sync redis-py client (or cluster client); a full connection
    pool is waited for up to ``wait`` seconds per request, a migrating Cluster slot up to
    ``moving`` seconds (see :mod:`hashsession.transport`)."""
    reply: Any = None
    while True:
        try:
            request = flow.send(reply)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        try:
            if isinstance(request, list):
                reply = pipeline(client, request, wait, moving)
            else:
                reply = send(client, request, wait, moving)
        except BACKEND_ERRORS as exc:
            raise _error(exc) from exc


async def arun(
    client: Any, flow: Flow[T], wait: float, moving: float = DEFAULT_MIGRATION_RETRY
) -> T:
    """The asyncio twin of :func:`run`, on a ``redis.asyncio`` client (or cluster client)."""
    reply: Any = None
    while True:
        try:
            request = flow.send(reply)
        except StopIteration as stop:
            return stop.value  # type: ignore[no-any-return]
        try:
            if isinstance(request, list):
                reply = await apipeline(client, request, wait, moving)
            else:
                reply = await asend(client, request, wait, moving)
        except BACKEND_ERRORS as exc:
            raise _error(exc) from exc
