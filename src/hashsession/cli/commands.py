"""The ``hashsession`` subcommands: one small function each, listed in :data:`COMMANDS`.

Adding a command is a function ``name(args) -> int`` (plus one adding its arguments,
if any) and one :class:`~hashsession.cli.frame.Command` in :data:`COMMANDS`.
"""

from __future__ import annotations

import argparse
import logging
import time

from hashsession.cli import ops
from hashsession.cli.frame import Command, NotFoundError, UsageError, emit, open_store, progress
from hashsession.store import SessionStore
from hashsession.users import revoke_key, run

__all__ = ["COMMANDS"]


# -- demo -------------------------------------------------------------------------------


def _demo_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--redis", default=None, help="Redis URL (default: an embedded server)")


def demo(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    from hashsession.demo import serve

    serve(host=args.host, port=args.port, redis=args.redis)
    return 0


def server(args: argparse.Namespace) -> int:
    from hashsession.devserver import serve

    return serve()


# -- read ---------------------------------------------------------------------------------


def _human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def stats(args: argparse.Namespace) -> int:
    store = _store(args)
    layout = ops.Layout(store.config.prefix)
    totals = ops.Stats()
    with progress("counting sessions") as advance:
        for node, keys in ops.scan(store.client, layout.match, advance):
            totals.indexes += sum(1 for key in keys if layout.is_index(key))
            sessions = [key for key in keys if layout.is_session(key)]
            for row in ops.describe_keys(node, layout, sessions) if sessions else ():
                totals.add(row)
    data = totals.as_json()
    users = data["users"]
    lines = [
        f"sessions      {data['sessions']}",
        f"index keys    {data['index_keys']}",
        f"memory        {_human_size(data['memory_bytes'])} (MEMORY USAGE summed over sessions)",
        "ttl           " + "  ".join(f"{k}: {v}" for k, v in data["ttl_histogram"].items()),
        f"users         {users['distinct']} ({users['logged_in_sessions']} sessions logged in,"
        f" {users['anonymous_sessions']} anonymous)",
        "per user      "
        + "  ".join(f"{k}: {v}" for k, v in users["sessions_per_user"].items())
        + "  (users by their number of sessions)",
    ]
    emit(args, data, "\n".join(lines))
    return 0


def _ls_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--user", metavar="UID", help="only this user's sessions (needs --user-key)"
    )
    parser.add_argument("--limit", type=int, metavar="N", help="list at most N sessions")


def ls(args: argparse.Namespace) -> int:
    if args.limit is not None and args.limit < 0:
        raise UsageError("--limit must be 0 or more")
    store = _store(args)
    layout = ops.Layout(store.config.prefix)
    if args.user is not None:
        _need_user_key(store, "ls --user")
        rows = ops.user_sessions(store.client, store.config, args.user)[: args.limit]
    else:
        rows = []
        with progress("listing sessions") as advance:
            for node, keys in ops.scan(store.client, layout.match, advance):
                sessions = [key for key in keys if layout.is_session(key)]
                rows += ops.describe_keys(node, layout, sessions) if sessions else []
                if args.limit is not None and len(rows) >= args.limit:
                    break
        rows = rows[: args.limit]
    emit(args, [row.as_json() for row in rows], ops.table(rows))
    return 0


def _session_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("session", metavar="ID", help="a session id, a cookie value or a key")


def show(args: argparse.Namespace) -> int:
    store = _store(args)
    key = _key(store, args.session)
    data = ops.read_session(store.client, store.config, key)
    if data is None:
        raise NotFoundError("no live session there (expired, revoked or never stored)")
    ttl = "none" if data["ttl"] is None else f"{data['ttl']:.0f} s"
    lines = [f"{'key':10} {data['key']}", f"{'tag':10} {data['tag']}", f"{'ttl':10} {ttl}"]
    lines += [f"{name:10} {data[name] or '-'}" for name in ("created", "last_seen")]
    lines.append(f"{'user':10} {data['user_id'] or data['user'] or '-'}")
    for title in ("fields", "undecoded", "meta"):
        if data[title]:
            lines.append(f"{title}:")
            lines += [f"  {name} = {value!r}" for name, value in data[title].items()]
    emit(args, data, "\n".join(lines))
    return 0


def ping(args: argparse.Namespace) -> int:
    from hashsession.embedded import server_identity

    store = _store(args)
    identity = server_identity(store.client)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        store.client.ping()
        times.append((time.perf_counter() - start) * 1000)
    data = {
        "server": identity.name,
        "version": identity.version,
        "mode": identity.mode,
        "latency_ms": round(min(times), 3),
        "latency_avg_ms": round(sum(times) / len(times), 3),
    }
    text = (
        f"{identity.name} {identity.version} ({identity.mode}):"
        f" PING {data['latency_ms']} ms (best of 5; mean {data['latency_avg_ms']} ms)"
    )
    emit(args, data, text)
    return 0


# -- write --------------------------------------------------------------------------------


def revoke(args: argparse.Namespace) -> int:
    store = _store(args)
    key = _key(store, args.session)
    config = store.config
    if not run(store.client, revoke_key(config, key), config.connection_wait):
        raise NotFoundError("no live session there (expired, revoked or never stored)")
    emit(args, {"key": key, "revoked": True}, f"revoked {key}")
    return 0


def _user_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("user", metavar="UID", help="the user id the app passed to login()")


def revoke_user(args: argparse.Namespace) -> int:
    store = _store(args)
    _need_user_key(store, "revoke-user")
    count = store.revoke_user(args.user)
    emit(args, {"user_id": args.user, "revoked": count}, f"revoked {count} session(s)")
    return 0


def _purge_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--yes", action="store_true", help="really delete them")


def purge(args: argparse.Namespace) -> int:
    if not args.yes:
        raise UsageError("purge deletes every session and index key of the prefix; add --yes")
    store = _store(args)
    with progress("deleting sessions") as advance:
        deleted = ops.purge(store.client, ops.Layout(store.config.prefix), advance)
    emit(args, {"prefix": store.config.prefix, "deleted": deleted}, f"deleted {deleted} key(s)")
    return 0


# -- helpers ------------------------------------------------------------------------------


def _store(args: argparse.Namespace) -> SessionStore:
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING, format="%(name)s: %(message)s"
    )
    return open_store(args)


def _key(store: SessionStore, text: str) -> str:
    try:
        return ops.resolve(store.config, text)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


def _need_user_key(store: SessionStore, what: str) -> None:
    if store.config.user_key is None:
        raise UsageError(
            f"{what} needs the store's user_key (user ids are stored as keyed digests):"
            " give --user-key or set HASHSESSION_USER_KEY"
        )


#: Every subcommand, in the order ``--help`` lists them.
COMMANDS: tuple[Command, ...] = (
    Command(
        "demo",
        "serve the demo app (embedded Redis by default)",
        demo,
        _demo_arguments,
        connects=False,
    ),
    Command(
        "server",
        "run this project's development server in the foreground (port and socket printed)",
        server,
        connects=False,
    ),
    Command("stats", "count sessions, their memory, TTLs and owners", stats, needs_rich=True),
    Command(
        "ls",
        "list sessions (key, tag, owner, created, TTL, size)",
        ls,
        _ls_arguments,
        needs_rich=True,
    ),
    Command(
        "show", "show one session's fields, TTL, creation time and owner", show, _session_argument
    ),
    Command("revoke", "delete one session", revoke, _session_argument),
    Command("revoke-user", "delete every session of a user", revoke_user, _user_argument),
    Command(
        "purge",
        "delete every session and index key of the prefix",
        purge,
        _purge_arguments,
        needs_rich=True,
    ),
    Command("ping", "name, version and latency of the server", ping),
)
