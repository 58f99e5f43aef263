"""Another project's test files, fetched from its source distribution, and our list of
the tests of it that are expected to fail (docs/compatibility.md).

:func:`fetch_tests` runs ``pip download --no-binary :all: --no-deps NAME==VERSION`` once
per release and keeps the extracted folder under ``build/suites/`` (or
``$HASHSESSION_SUITES_DIR``), so later runs use no network. Both xdist workers may fetch at
once: each works in its own temporary folder and the first to finish renames it into place.

:func:`expect_failures` marks the listed tests ``xfail(strict=True)``: a listed test that
fails is reported as expected, one that passes fails the run, and so does any failure
that is not listed.
"""

from __future__ import annotations

import functools
import inspect
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("HASHSESSION_SUITES_DIR") or ROOT / "build" / "suites")
COMPATIBILITY = ROOT / "docs" / "compatibility.md"


class FetchError(RuntimeError):
    """The source distribution could not be downloaded or read."""


def fetch_tests(project: str, version: str, folder: str) -> Path:
    """A folder holding ``folder`` (a path inside the sdist, e.g. ``tests/sessions_tests``)
    of ``project==version``'s source distribution, as in the sdist without its top folder.

    Downloaded and extracted on first use only; the tarball is kept beside the folder.
    """
    target = CACHE / f"{project.lower()}-{version}"
    if (target / ".complete").exists():
        return target
    CACHE.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{project}-{version}-", dir=CACHE))
    try:
        tarball = _download(project, version, work)
        tree = work / "tree"
        _extract(tarball, folder, tree)
        (tree / ".complete").write_text(f"{project}=={version}: {folder} of {tarball.name}\n")
        shutil.move(str(tarball), tree / tarball.name)
        try:
            tree.rename(target)
        except OSError:  # another worker finished first
            if not (target / ".complete").exists():
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _download(project: str, version: str, into: Path) -> Path:
    command = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-binary",
        ":all:",
        "--no-deps",
        "--no-build-isolation",  # the metadata step uses our setuptools: no second download
        "--dest",
        str(into),
        f"{project}=={version}",
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, check=False)
    found = sorted(into.glob("*.tar.gz"))
    if done.returncode != 0 or len(found) != 1:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise FetchError(
            f"could not download the source distribution of {project}=={version} "
            f"({' '.join(command[2:])}): " + " | ".join(tail)
        )
    return found[0]


def _extract(tarball: Path, folder: str, into: Path) -> None:
    """The regular files under ``<top>/<folder>/`` of ``tarball``, into ``into/<folder>/``."""
    prefix = PurePosixPath(folder).parts
    count = 0
    with tarfile.open(tarball) as tar:
        for member in tar:
            parts = PurePosixPath(member.name).parts[1:]  # without "django-5.2.19/"
            if not member.isfile() or parts[: len(prefix)] != prefix or ".." in parts:
                continue
            source = tar.extractfile(member)
            assert source is not None
            path = into.joinpath(*parts)
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(source.read())
            count += 1
    if not count:
        raise FetchError(f"{tarball.name} has no {folder}/")


# ----------------------------------------------------------------- expected failures

_ROW = re.compile(r"^\|(?P<test>[^|]+)\|(?P<reason>.*)\|\s*$")


def listed(section: str, path: Path = COMPATIBILITY) -> dict[str, str]:
    """The table under ``## <section>`` of docs/compatibility.md: test id -> reason.

    A row is ``| `Class.test_name` | reason |``; the header row and its ``|---|`` line
    are skipped. A row without a reason, or a test listed twice, is an error.
    """
    rows: dict[str, str] = {}
    inside = False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.startswith("## "):
            inside = line[3:].strip() == section
            continue
        match = _ROW.match(line) if inside else None
        if match is None:
            continue
        test = match["test"].strip().strip("`").strip()
        reason = match["reason"].strip()
        if test.lower() == "test" or set(test) <= set("-: "):
            continue  # the header and the line under it
        if not reason:
            raise ValueError(f"{path.name}, ## {section}: {test} has no reason")
        if test in rows:
            raise ValueError(f"{path.name}, ## {section}: {test} is listed twice")
        rows[test] = reason
    return rows


def expect_failures(classes: Iterable[type], rows: dict[str, str], where: str) -> set[str]:
    """Mark each listed ``Class.test_name`` of ``classes`` ``xfail(strict=True)``.

    The mark goes on a wrapper set on that class itself, so neither the upstream function
    nor a sibling class running the same test is marked. Returns the listed ids that name
    no test of ``classes`` (a stale row).
    """
    return _mark(
        classes,
        rows,
        lambda why: pytest.mark.xfail(reason=f"listed in {where}: {why}", strict=True),
    )


def skip_listed(classes: Iterable[type], rows: dict[str, str], where: str) -> set[str]:
    """Mark each listed ``Class.test_name`` of ``classes`` ``skip``, with its row's reason.

    For tests deliberately not run (a documented selection): they are reported as skipped,
    each with its reason. Marks and the return value as in :func:`expect_failures`.
    """
    return _mark(classes, rows, lambda why: pytest.mark.skip(reason=f"not run ({where}): {why}"))


def _mark(classes: Iterable[type], rows: dict[str, str], mark: Any) -> set[str]:
    left = set(rows)
    for cls in classes:
        for name in dir(cls):
            test_id = f"{cls.__name__}.{name}"
            if test_id not in rows or not name.startswith("test"):
                continue
            setattr(cls, name, mark(rows[test_id])(_wrap(cls, name)))
            left.discard(test_id)
    return left


def _wrap(cls: type, name: str) -> Any:
    test = getattr(cls, name)
    if inspect.iscoroutinefunction(test):

        async def run_async(self: Any) -> Any:
            return await test(self)

        wrapper: Any = run_async
    else:

        def run(self: Any) -> Any:
            return test(self)

        wrapper = run
    functools.update_wrapper(wrapper, test)
    wrapper.__dict__.pop("pytestmark", None)  # marks of the upstream function stay its own
    return wrapper
