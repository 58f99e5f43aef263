"""Running another project's test suite against hashsession, and checking the result.

The suite's source distribution is fetched at test time from the package index
(``pip download --no-binary :all:``), for the version installed here, and unpacked
under ``build/suites/`` (gitignored; kept between runs). Nothing of it is copied into
this repository. The suite runs in a pytest subprocess with a plugin of ours that
points it at our adapter; every test it selects must pass, except those listed, each
with its reason, in the suite's section of ``docs/compatibility.md``. A failure that
is not listed fails the harness, and so does a listed test that now passes (the list
would be out of date).
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

from suites import upstream

ROOT = Path(__file__).resolve().parents[2]
CACHE = ROOT / "build" / "suites"
HERE = Path(__file__).resolve().parent


def source_tree(project: str, wanted: str | None = None) -> Path:
    """The unpacked sdist of ``project`` (the installed version, or ``wanted``)."""
    release = wanted or version(project)
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:  # xdist workers may ask at once
        fcntl.flock(lock, fcntl.LOCK_EX)
        tree = CACHE / f"{project.lower()}-{release}"
        if (tree / ".unpacked").exists():
            return tree
        archive = CACHE / f"{project.lower()}-{release}.tar.gz"
        if not archive.exists():
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--quiet", "--no-binary", ":all:",
                 "--no-deps", f"{project}=={release}", "-d", str(CACHE)],
                check=True, timeout=300,
            )  # fmt: skip
        with tarfile.open(archive) as tar:
            if hasattr(tarfile, "data_filter"):
                tar.extractall(CACHE, filter="data")
            else:  # pragma: no cover - Python without extraction filters
                tar.extractall(CACHE)
        (tree / ".unpacked").touch()
        return tree


@dataclass
class SuiteRun:
    outcomes: dict[str, str]
    output: str

    def failed(self) -> set[str]:
        return {t for t, o in self.outcomes.items() if o == "failed"}

    def passed(self) -> set[str]:
        return {t for t, o in self.outcomes.items() if o == "passed"}


def run_suite(
    tree: Path,
    tests: list[str],
    plugin: str,
    env: dict[str, str],
    report: Path,
    extra: tuple[str, ...] = (),
) -> SuiteRun:
    """Run ``tests`` (paths in ``tree``) under ``plugin`` in a pytest subprocess."""
    environ = {**os.environ, **env, "HASHSESSION_SUITE_REPORT": str(report)}
    environ["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(HERE), environ.get("PYTHONPATH", "")) if p
    )
    environ.pop("PYTEST_XDIST_WORKER", None)
    environ.pop("PYTEST_ADDOPTS", None)
    command = [
        sys.executable, "-m", "pytest", *tests, "-p", plugin, "-p", "no:cacheprovider",
        "-p", "no:xdist", "-q", "-rfE", "--tb=short", "--rootdir", str(tree), *extra,
    ]  # fmt: skip
    config = tree / "pyproject.toml"
    if config.exists():
        command += ["-c", str(config)]
    done = subprocess.run(
        command, cwd=tree, env=environ, capture_output=True, text=True, timeout=600, check=False
    )
    output = done.stdout + done.stderr
    if not report.exists():
        raise AssertionError(f"the suite did not run (exit {done.returncode}):\n{output}")
    return SuiteRun(json.loads(report.read_text(encoding="utf-8")), output)


def check(run: SuiteRun, section: str, at_least: int) -> None:
    """Every selected test passes, except exactly those listed under ``## section``."""
    listed = upstream.listed(section)
    ran = len(run.outcomes)
    assert ran >= at_least, f"only {ran} tests ran (expected {at_least}+):\n{run.output}"
    unlisted = sorted(run.failed() - listed.keys())
    fixed = sorted(listed.keys() & run.passed())
    missing = sorted(listed.keys() - run.outcomes.keys())
    problems = []
    if unlisted:
        problems.append("failures not listed in docs/compatibility.md: " + ", ".join(unlisted))
    if fixed:
        problems.append("listed in docs/compatibility.md but passing now: " + ", ".join(fixed))
    if missing:
        problems.append("listed in docs/compatibility.md but not run: " + ", ".join(missing))
    summary = f"{section}: {len(run.passed())} passed, {len(run.failed())} failed of {ran}"
    assert not problems, "\n".join([summary, *problems, run.output])
    print(summary)
