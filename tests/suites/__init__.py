"""Other projects' own test suites, run against hashsession's adapters.

Each ``test_<project>_suite.py`` fetches the tests of the installed release with
:func:`suites.upstream.fetch_tests` and runs them unmodified; the failures expected of
each are the rows of its section in docs/compatibility.md (:func:`suites.upstream.listed`);
tests deliberately not run are the rows of a ``## <Project>: not run`` section, reported as
skipped with their reason (:func:`suites.upstream.skip_listed`).
"""
