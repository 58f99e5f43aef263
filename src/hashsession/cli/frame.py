"""What every command shares: the parser, settings from flags or environment, errors
with their exit codes, and output (one result on stdout, progress on stderr).

A command is a :class:`Command`: a name, a help line, a function taking the parsed
arguments, and optionally one adding its own arguments. ``commands.COMMANDS`` lists them.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn

import redis
from redis.exceptions import RedisClusterException

from hashsession.errors import ConfigurationError, HashSessionError
from hashsession.store import SessionStore

__all__ = [
    "EXIT_ERROR",
    "EXIT_INTERRUPTED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_USAGE",
    "CliError",
    "Command",
    "NotFoundError",
    "Settings",
    "UsageError",
    "build_parser",
    "dash_hint",
    "describe",
    "emit",
    "open_store",
    "progress",
    "require_rich",
]

EXIT_OK = 0
#: Redis unreachable or failing, a missing extra, anything else that went wrong.
EXIT_ERROR = 1
#: Bad flags, a bad setting (URL, key), a refused command (``purge`` without ``--yes``).
EXIT_USAGE = 2
#: The session named does not exist (expired, revoked, never stored).
EXIT_NOT_FOUND = 3
#: Interrupted (Ctrl-C), as shells report SIGINT.
EXIT_INTERRUPTED = 130


class CliError(Exception):
    """A failure the command reports as one line on stderr, with its exit code."""

    code = EXIT_ERROR


class UsageError(CliError):
    """The command line or a setting is wrong; nothing was sent to Redis."""

    code = EXIT_USAGE


class NotFoundError(CliError):
    """No live session is stored under the id, cookie value or key given."""

    code = EXIT_NOT_FOUND


class _Parser(argparse.ArgumentParser):
    """argparse, reporting a usage error as a :class:`UsageError` (one line, exit 2)."""

    def error(self, message: str) -> NoReturn:
        raise UsageError(f"{message} (see {self.prog} --help)")


#: A long token that starts with "-": session ids and cookie values are URL-safe base64,
#: so 1 in 64 starts with a dash, and argparse reads it as an option.
_DASHED = re.compile(r"-[\w-]{20,}(\.[\w-]+)?")


def dash_hint(argv: Sequence[str]) -> str:
    """What to add to a usage error when ``argv`` holds an id that reads as an option."""
    if any(_DASHED.fullmatch(token) for token in argv):
        return "; a session id starting with '-' goes after '--' (hashsession show -- ID)"
    return ""


@dataclass(frozen=True)
class Command:
    """One subcommand: ``run(args)`` returns the exit code.

    ``connects`` gives it the Redis settings (``--redis``, ``--prefix``, ``--secret-key``,
    ``--user-key``) and ``--json``/``--debug``; ``needs_rich`` makes it refuse to start,
    naming the ``cli`` extra, when rich is missing.
    """

    name: str
    help: str
    run: Callable[[argparse.Namespace], int]
    arguments: Callable[[argparse.ArgumentParser], None] | None = None
    connects: bool = True
    needs_rich: bool = False

    def start(self, args: argparse.Namespace) -> int:
        if self.needs_rich:
            require_rich(self.name)
        return self.run(args)


def _connection_options() -> _Parser:
    common = _Parser(add_help=False)
    group = common.add_argument_group("connection (flags win over the environment)")
    group.add_argument(
        "--redis",
        metavar="URL",
        help="redis://, rediss://, unix://, redis+sentinel:// or redis+cluster:// URL"
        " [HASHSESSION_REDIS]",
    )
    group.add_argument(
        "--prefix", help="the store's key prefix (default: the store's, hs:) [HASHSESSION_PREFIX]"
    )
    group.add_argument(
        "--secret-key",
        action="append",
        metavar="KEY",
        help="cookie signing key, to verify a cookie value; repeat or comma-separate"
        " [HASHSESSION_SECRET_KEYS]",
    )
    group.add_argument(
        "--user-key",
        metavar="KEY",
        help="the store's user_key, to find a user's sessions [HASHSESSION_USER_KEY]",
    )
    common.add_argument("--json", action="store_true", help="print the result as JSON")
    common.add_argument("--debug", action="store_true", help="show tracebacks")
    return common


def build_parser(commands: Sequence[Command], version: str) -> argparse.ArgumentParser:
    """The ``hashsession`` parser: ``--version`` and one subparser per command."""
    parser = _Parser(
        prog="hashsession",
        description="hashsession: the demo app and operations on the sessions in Redis.",
    )
    parser.add_argument("--version", action="version", version=f"hashsession {version}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    common = _connection_options()
    for command in commands:
        sub = subparsers.add_parser(
            command.name,
            help=command.help,
            description=command.help,
            parents=[common] if command.connects else [],
        )
        if command.arguments is not None:
            command.arguments(sub)
        sub.set_defaults(command_spec=command)
    return parser


# -- settings -------------------------------------------------------------------


@dataclass(frozen=True)
class Settings:
    """Where the sessions are and how the store names and signs them."""

    redis: str
    prefix: str | None
    secret_keys: list[str] | None
    user_key: str | None

    @classmethod
    def of(cls, args: argparse.Namespace, environ: Mapping[str, str] | None = None) -> Settings:
        """From the flags, else the ``HASHSESSION_*`` environment variables."""
        env = os.environ if environ is None else environ

        def pick(flag: str | None, name: str) -> str | None:
            return flag if flag else (env.get(name) or None)

        url = pick(args.redis, "HASHSESSION_REDIS")
        if url is None:
            from hashsession.devserver import running_url

            url = running_url()  # the project's development server, if one runs
        if not url:
            raise UsageError(
                "no Redis to talk to: give --redis URL or set HASHSESSION_REDIS"
                " (or run it in a project whose development server runs)"
            )
        keys_text = ",".join(args.secret_key) if args.secret_key else None
        keys_text = pick(keys_text, "HASHSESSION_SECRET_KEYS")
        keys = [k for k in (keys_text or "").split(",") if k] or None
        return cls(
            redis=url,
            prefix=pick(args.prefix, "HASHSESSION_PREFIX"),
            secret_keys=keys,
            user_key=pick(args.user_key, "HASHSESSION_USER_KEY"),
        )


def open_store(args: argparse.Namespace) -> SessionStore:
    """A store on the sessions the settings name (no command sent yet, but on a Cluster,
    whose slot map is read here)."""
    settings = Settings.of(args)
    options: dict[str, Any] = {
        "secret_keys": settings.secret_keys,
        "user_key": settings.user_key,
    }
    if settings.prefix is not None:
        options["prefix"] = settings.prefix
    return SessionStore(redis=settings.redis, **options)


# -- errors -----------------------------------------------------------------------


def require_rich(command: str) -> None:
    """Raise :class:`CliError` naming ``pip install 'hashsession[cli]'`` if rich is missing."""
    from hashsession._extras import missing_extra

    try:
        import rich  # noqa: F401
    except ModuleNotFoundError as exc:
        try:
            missing_extra(exc, "cli", f"hashsession {command}")
        except ImportError as named:
            raise CliError(str(named)) from exc


def describe(exc: BaseException) -> tuple[int, str]:
    """The exit code and the one-line message for an error that ended a command."""
    if isinstance(exc, CliError):
        code, message = exc.code, str(exc)
    elif isinstance(exc, ConfigurationError):
        code, message = EXIT_USAGE, str(exc)
    elif isinstance(exc, HashSessionError):
        code, message = EXIT_ERROR, str(exc)
    elif isinstance(exc, (redis.RedisError, RedisClusterException)):
        code, message = EXIT_ERROR, f"Redis failed: {exc or type(exc).__name__}"
    else:
        code, message = EXIT_ERROR, f"{type(exc).__name__}: {exc} (--debug shows where)"
    return code, " ".join(message.split())


# -- output -------------------------------------------------------------------------


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    """Print the result: ``data`` as one JSON document with ``--json``, else ``text``."""
    if args.json:
        print(json.dumps(data, ensure_ascii=False, default=str))
    else:
        print(text)


@contextmanager
def progress(description: str) -> Iterator[Callable[[int], None]]:
    """A function advancing a progress display by n keys: on stderr when it is a
    terminal (rich), else nothing at all."""
    if not sys.stderr.isatty():
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    columns = (
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TextColumn("{task.completed} keys"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=None)
        yield lambda n: bar.advance(task, n)
