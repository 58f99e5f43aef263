"""Loaded (``-p flask_suite_plugin``) into the pytest run of Flask's own test suite.

Flask's session tests take an ``app`` fixture (a bare ``Flask`` with ``SECRET_KEY``)
from Flask's conftest and configure it further inside the test, before its first
request. This plugin keeps the session-related tests among those that take ``app``,
and makes each such app use hashsession: on its first request (which is when the
test has finished configuring it, as an app factory would before ``init_app``),
``HashSession(app)`` is installed from ``app.config`` plus ``HASHSESSION_REDIS``,
the private redis-server the harness started. Each test's outcome goes to the JSON
file named by ``HASHSESSION_SUITE_REPORT``.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

import _pytest.monkeypatch
import pytest
from _pytest.compat import NOTSET
from flask import Flask
from flask.sessions import SessionInterface

from hashsession.flask import HashSession

#: Which tests are session-related: their name says so.
SELECTED = re.compile(r"session|flash", re.IGNORECASE)

# Flask's conftest (3.1) names pytest's "no old value" marker by its pre-9 name.
if not hasattr(_pytest.monkeypatch, "notset"):
    _pytest.monkeypatch.notset = NOTSET  # type: ignore[attr-defined]

_outcomes: dict[str, str] = {}
_stores: list[Any] = []


class InstallOnFirstRequest(SessionInterface):
    """Installs ``HashSession(app)`` from ``app.config`` as it is at the first request."""

    def _installed(self, app: Flask) -> SessionInterface:
        app.config.setdefault("HASHSESSION_REDIS", os.environ["HASHSESSION_SUITE_REDIS"])
        interface = HashSession().init_app(app)
        _stores.append(interface.store)
        return interface

    def open_session(self, app: Flask, request: Any) -> Any:
        return self._installed(app).open_session(app, request)

    def save_session(self, app: Flask, session: Any, response: Any) -> None:
        raise AssertionError("save_session before open_session")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    keep, drop = [], []
    for item in items:
        fixtures = getattr(item, "fixturenames", ())
        (keep if "app" in fixtures and SELECTED.search(item.name) else drop).append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
    items[:] = keep


@pytest.fixture(autouse=True)
def _hashsession(request: pytest.FixtureRequest) -> Any:
    if "app" in request.fixturenames:
        app = request.getfixturevalue("app")
        app.session_interface = InstallOnFirstRequest()
    yield
    while _stores:
        _stores.pop().close()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.failed:
        _outcomes[report.nodeid] = "failed"
    elif report.when == "call" and report.nodeid not in _outcomes:
        _outcomes[report.nodeid] = "skipped" if report.skipped else "passed"
    elif report.skipped and report.nodeid not in _outcomes:
        _outcomes[report.nodeid] = "skipped"


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = os.environ.get("HASHSESSION_SUITE_REPORT")
    if path:
        with open(path, "w", encoding="utf-8") as out:
            json.dump(_outcomes, out, indent=1, sort_keys=True)
