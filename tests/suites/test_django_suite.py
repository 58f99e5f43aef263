"""Django's own session tests, run unmodified against ``hashsession.django``.

``tests/sessions_tests`` is taken from the source distribution of the installed Django
(see :mod:`suites.upstream`; downloaded once, then kept under ``build/suites/``) and
imported as Django's test runner imports it. Then, as Django runs them for its cache
engine:

- ``SessionTestsMixin`` (every test a session engine must pass) runs in a
  ``SimpleTestCase`` whose ``backend`` is our ``SessionStore``, once with ``USE_TZ=True``
  (:class:`HashSessionTests`) and once with ``USE_TZ=False``
  (:class:`HashSessionWithoutTimeZoneTests`); a ``SimpleTestCase`` also proves that the
  engine never touches the database;
- ``SessionMiddlewareTests`` runs as it is, with ``SESSION_ENGINE = "hashsession.django"``
  behind Django's own ``SessionMiddleware``.

Each test uses the process's private redis-server, emptied first (the ``redis_url``
fixture). The tests expected to fail are the rows of the "Django" table in
docs/compatibility.md, with the reason for each: they are marked ``xfail(strict=True)``,
so an unlisted failure fails the run and so does a listed test that passes.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import django
import pytest
from django.conf import settings
from django.core.management import call_command
from django.test import SimpleTestCase, override_settings

from django_setup import configure
from hashsession.django import SessionStore
from suites.upstream import FetchError, expect_failures, fetch_tests, listed

configure()

SECTION = "Django"
try:
    SUITE = fetch_tests("django", django.__version__, "tests/sessions_tests")
except FetchError as exc:
    SUITE = None
    FETCH_ERROR = str(exc)


if SUITE is None:

    def test_django_suite_is_available() -> None:
        """Without the network the suite cannot be fetched: say so, loudly."""
        pytest.fail(FETCH_ERROR, pytrace=False)

else:
    sys.path.append(str(SUITE / "tests"))
    # Its models module declares a model of the app "sessions_tests": the app is installed
    # while the module is imported, as Django's runtests.py installs each test app.
    with override_settings(INSTALLED_APPS=[*settings.INSTALLED_APPS, "sessions_tests"]):
        from sessions_tests import tests as upstream

    class HashSessionTests(upstream.SessionTestsMixin, SimpleTestCase):  # type: ignore[misc]
        """Every test of Django's ``SessionTestsMixin``, on our engine."""

        backend = SessionStore

    @override_settings(USE_TZ=False)
    class HashSessionWithoutTimeZoneTests(upstream.SessionTestsMixin, SimpleTestCase):  # type: ignore[misc]
        """The same, with naive datetimes."""

        backend = SessionStore

    class SessionMiddlewareTests(upstream.SessionMiddlewareTests):  # type: ignore[misc]
        """Django's middleware tests; ``SESSION_ENGINE`` is ``hashsession.django``."""

    STALE = expect_failures(
        [HashSessionTests, HashSessionWithoutTimeZoneTests, SessionMiddlewareTests],
        listed(SECTION),
        "docs/compatibility.md",
    )

    @pytest.fixture(scope="module", autouse=True)
    def database() -> None:
        """The tables ``SessionMiddlewareTests`` reads (Django's ``Session`` model)."""
        call_command("migrate", run_syncdb=True, verbosity=0)

    @pytest.fixture(autouse=True)
    def engine(redis_url: str) -> Iterator[None]:
        """``hashsession.django`` on the process's redis-server, emptied for each test."""
        with override_settings(HASHSESSION={"redis": redis_url}):
            yield

    def test_every_listed_failure_names_a_test() -> None:
        """A row of docs/compatibility.md that names no test is stale: remove it."""
        assert not STALE, f"docs/compatibility.md, ## {SECTION}: no such test: {sorted(STALE)}"
