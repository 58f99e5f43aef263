"""Pyramid's own session tests, run against ``hashsession.pyramid``.

``tests/test_session.py`` is taken from the source distribution of the installed Pyramid
(see :mod:`suites.upstream`; downloaded once, then kept under ``build/suites/``) and
imported as it is. Its ``SharedCookieSessionTests`` are the tests Pyramid runs against
each of its cookie session factories, through a ``_makeOne(request, **kw)`` that returns
the session a factory makes for a ``pyramid.testing.DummyRequest``. :class:`HashSessionTests`
runs them with a ``_makeOne`` that returns the session our :class:`SessionFactory` makes
for that request, on the test process's private redis-server (the ``redis_url`` fixture,
emptied for each test). The factory's keyword arguments become the ``hashsession.*``
settings that mean the same thing (``timeout`` is ``ttl``, ``path`` is ``cookie_path``...).

docs/compatibility.md has two tables for it:

- ``## Pyramid``: the tests expected to fail, each with its reason; they are marked
  ``xfail(strict=True)``, so an unlisted failure fails the run and so does a listed test
  that passes;
- ``## Pyramid: not run``: the tests of Pyramid's cookie format and of private methods of
  its cookie session, which have no counterpart here; they are reported as skipped, with
  the reason from that table.

A row of either table that names no test fails the run.
"""

from __future__ import annotations

import base64
import json
import sys
import unittest
from collections.abc import Iterator
from http.cookies import SimpleCookie
from importlib.metadata import version
from typing import Any

import pyramid.response
import pytest
from pyramid import testing
from pyramid.interfaces import ISession
from zope.interface.verify import verifyObject

from hashsession.pyramid import PyramidSession, SessionFactory, session_factory_from_settings
from suites.upstream import FetchError, expect_failures, fetch_tests, listed, skip_listed

SECTION = "Pyramid"
NOT_RUN = "Pyramid: not run"

#: Pyramid's cookie factory keywords -> the ``hashsession.*`` setting that means the same.
SETTINGS = {
    "cookie_name": "cookie_name",
    "path": "cookie_path",
    "domain": "cookie_domain",
    "secure": "cookie_secure",
    "httponly": "cookie_httponly",
    "samesite": "cookie_samesite",
    "max_age": "cookie_max_age",
    "timeout": "ttl",
    "set_on_exception": "cookie_on_exception",
}

#: The ``redis_url`` of the running test, and the factories to close after it.
_state: dict[str, Any] = {"url": None, "factories": []}

try:
    SUITE = fetch_tests("pyramid", version("pyramid"), "tests")
except FetchError as exc:
    SUITE = None
    FETCH_ERROR = str(exc)


def make_session(request: Any, **kw: Any) -> PyramidSession:
    """The session our factory makes for ``request``, configured as Pyramid's ``kw`` say.

    A ``DummyRequest`` keeps its cookies in ``request.cookies``, which a real request
    parses from the ``Cookie`` header: they are given to our factory as that header.
    """
    settings = {"hashsession.redis": _state["url"], "hashsession.secret": "pyramid suite"}
    for name, value in kw.items():
        settings["hashsession." + SETTINGS[name]] = value
    factory = session_factory_from_settings(settings)
    _state["factories"].append(factory)
    if request.cookies and "HTTP_COOKIE" not in request.environ:
        jar = SimpleCookie()
        for name, value in request.cookies.items():
            jar[name] = value.decode("ascii") if isinstance(value, bytes) else value
        request.environ["HTTP_COOKIE"] = jar.output(header="", sep=";").strip()
    return factory(request)


@pytest.fixture(autouse=True)
def redis_for_pyramid(redis_url: str) -> Iterator[None]:
    """Every session of the test talks to the process's redis-server, emptied first."""
    _state["url"] = redis_url
    yield
    while _state["factories"]:
        _state["factories"].pop().close()
    _state["url"] = None


if SUITE is None:

    def test_pyramid_suite_is_available() -> None:
        """Without the network the suite cannot be fetched: say so, loudly."""
        pytest.fail(FETCH_ERROR, pytrace=False)

else:
    sys.path.insert(0, str(SUITE))
    try:
        from tests import test_session as upstream
    finally:
        sys.path.remove(str(SUITE))
        sys.modules.pop("tests", None)  # the name stays free for anyone else's "tests"

    class HashSessionTests(upstream.SharedCookieSessionTests, unittest.TestCase):  # type: ignore[misc]
        """The tests every Pyramid cookie session factory passes, on our factory."""

        def _makeOne(self, request: Any, **kw: Any) -> PyramidSession:
            return make_session(request, **kw)

        def _serialize(self, value: Any) -> bytes:
            """A cookie in the format of Pyramid's ``BaseCookieSessionFactory`` tests."""
            return base64.b64encode(json.dumps(value).encode("utf-8"))

    FAILING = listed(SECTION)
    NOT_RUN_ROWS = listed(NOT_RUN)
    STALE = expect_failures([HashSessionTests], FAILING, "docs/compatibility.md")
    STALE |= skip_listed([HashSessionTests], NOT_RUN_ROWS, "docs/compatibility.md")

    def test_every_row_names_a_test() -> None:
        """A row of docs/compatibility.md that names no test is stale: remove it."""
        both = f"## {SECTION} or ## {NOT_RUN}"
        assert not STALE, f"docs/compatibility.md, {both}: no such test: {sorted(STALE)}"
        assert not NOT_RUN_ROWS.keys() & FAILING.keys(), "a test is in both tables"

    def test_the_sessions_provide_isession() -> None:
        """``verifyObject(ISession, ...)`` on a new session and on a stored one, which
        Pyramid's ``test_instance_conforms`` does not reach."""
        first = testing.DummyRequest()
        session = make_session(first)
        assert verifyObject(ISession, session)
        session["a"] = 1
        response = pyramid.response.Response()
        for callback in first.response_callbacks:
            callback(first, response)
        cookie = response.headers["Set-Cookie"].partition(";")[0]
        again = testing.DummyRequest(environ={"HTTP_COOKIE": cookie})
        stored = make_session(again)
        assert verifyObject(ISession, stored)
        assert not stored.new and dict(stored) == {"a": 1}
        assert isinstance(stored.created, float)
        assert isinstance(make_session(testing.DummyRequest()), SessionFactory.session_class)
