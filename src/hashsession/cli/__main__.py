"""``python -m hashsession.cli``: the ``hashsession`` command."""

from hashsession.cli import main

raise SystemExit(main())
