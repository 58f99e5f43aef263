"""Flask's own session tests, run against hashsession.flask (see harness.py).

The session-related tests of Flask's suite that build on its ``app`` fixture run
with ``HashSession`` installed (flask_suite_plugin.py) on a private redis-server;
the ones that cannot pass are listed with their reason in docs/compatibility.md.
"""

from __future__ import annotations

from pathlib import Path

from suites.harness import check, run_suite, source_tree

#: Flask's test modules that hold session tests on the ``app`` fixture.
MODULES = ["tests/test_basic.py", "tests/test_testing.py", "tests/test_helpers.py",
           "tests/test_signals.py"]  # fmt: skip


def test_flasks_session_tests(redis_url: str, tmp_path: Path) -> None:
    tree = source_tree("flask")
    run = run_suite(
        tree,
        MODULES,
        "flask_suite_plugin",
        {"HASHSESSION_SUITE_REDIS": redis_url},
        tmp_path / "outcomes.json",
        extra=("-p", "no:asyncio"),  # Flask's suite runs without pytest-asyncio
    )
    check(run, "Flask", at_least=20)
