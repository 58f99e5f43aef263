"""``python -m hashsession``: the ``hashsession`` command."""

from hashsession.cli import main

raise SystemExit(main())
