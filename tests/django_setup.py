"""Django's settings for the tests that use Django, configured once per process.

``tests/test_django.py`` and ``tests/suites/test_django_suite.py`` may run in the same
pytest process (an xdist worker), and Django's settings can be configured only once, so
both call :func:`configure`. An in-memory SQLite database serves ``django.contrib.auth``
(and Django's suite, which reads the database-backed ``Session`` model in one test);
``test_django`` is the URLconf; sessions use ``hashsession.django``, pointed at each test's
Redis with ``override_settings(HASHSESSION=...)``.
"""

from __future__ import annotations

import django
from django.conf import settings


def configure() -> None:
    """Configure Django for the tests, unless this process did already."""
    if settings.configured:
        return
    settings.configure(
        SECRET_KEY="hashsession-django-tests",
        ALLOWED_HOSTS=["testserver"],
        INSTALLED_APPS=[
            "django.contrib.auth",
            "django.contrib.contenttypes",
            "django.contrib.sessions",
        ],
        MIDDLEWARE=[
            "hashsession.django.SessionMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
        ],
        ROOT_URLCONF="test_django",
        DATABASES={"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}},
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
        PASSWORD_HASHERS=["django.contrib.auth.hashers.MD5PasswordHasher"],
        SESSION_ENGINE="hashsession.django",
        USE_TZ=True,
    )
    django.setup()
