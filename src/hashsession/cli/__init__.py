"""The ``hashsession`` command: the demo app, and operations on the sessions in Redis.

``main`` parses the command line, runs one command of
:data:`~hashsession.cli.commands.COMMANDS` and turns any error into one line on
stderr and an exit code (see :mod:`hashsession.cli.frame`; docs/cli.md). Nothing
here imports rich: the commands that need it import it when they run.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hashsession`` command; returns the exit code."""
    from hashsession import __version__
    from hashsession.cli.commands import COMMANDS
    from hashsession.cli.frame import (
        EXIT_ERROR,
        EXIT_INTERRUPTED,
        UsageError,
        build_parser,
        dash_hint,
        describe,
    )

    debug = False
    try:
        try:
            args = build_parser(COMMANDS, __version__).parse_args(argv)
        except UsageError as exc:
            given = sys.argv[1:] if argv is None else list(argv)
            raise UsageError(f"{exc}{dash_hint(given)}") from None
        debug = getattr(args, "debug", False)
        return args.command_spec.start(args)  # type: ignore[no-any-return]
    except SystemExit as exc:  # --help, --version
        return exc.code if isinstance(exc.code, int) else 0
    except BrokenPipeError:  # stdout's reader left (``| head``): nothing more to say
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return EXIT_ERROR
    except KeyboardInterrupt:
        if debug:
            raise
        print("hashsession: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:
        if debug:
            raise
        code, message = describe(exc)
        print(f"hashsession: error: {message}", file=sys.stderr)
        return code
