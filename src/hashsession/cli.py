"""The ``hashsession`` command: ``hashsession demo`` serves the demo app."""

from __future__ import annotations

import argparse
import logging
from collections.abc import Sequence

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``hashsession`` command."""
    from hashsession import __version__

    parser = argparse.ArgumentParser(prog="hashsession", description=__doc__)
    parser.add_argument("--version", action="version", version=f"hashsession {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
    demo = commands.add_parser("demo", help="serve the demo app (embedded Redis by default)")
    demo.add_argument("--host", default="127.0.0.1")
    demo.add_argument("--port", type=int, default=8000)
    demo.add_argument("--redis", default=None, help="Redis URL (default: an embedded server)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if args.command == "demo":
        from hashsession.demo import serve

        serve(host=args.host, port=args.port, redis=args.redis)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
