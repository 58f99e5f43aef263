"""The harness's reading of docs/compatibility.md, and its marks."""

from __future__ import annotations

import inspect
import unittest
from pathlib import Path

import pytest

from suites.upstream import COMPATIBILITY, expect_failures, listed, skip_listed

PAGE = """# Compatibility

| test | reason |
|---|---|
| `Intro.test_x` | not in a section |

## Django

Some text, and a | pipe.

| test | reason |
|---|---|
| `A.test_one` | reason one |
|B.test_two|reason | two|

## Flask

| test | reason |
| --- | --- |
| `A.test_one` | another section |
"""


def test_each_section_is_its_own_table(tmp_path: Path) -> None:
    page = tmp_path / "compatibility.md"
    page.write_text(PAGE)
    assert listed("Django", page) == {"A.test_one": "reason one", "B.test_two": "reason | two"}
    assert listed("Flask", page) == {"A.test_one": "another section"}
    assert listed("Pyramid", page) == {}


@pytest.mark.parametrize(
    ("rows", "error"),
    [("| `A.test_one` |  |", "has no reason"), ("| `A.t` | x |\n| `A.t` | y |", "twice")],
)
def test_a_bad_row_is_an_error(tmp_path: Path, rows: str, error: str) -> None:
    page = tmp_path / "compatibility.md"
    page.write_text(f"## Django\n\n| test | reason |\n|---|---|\n{rows}\n")
    with pytest.raises(ValueError, match=error):
        listed("Django", page)


def test_marks_go_on_the_listed_class_only() -> None:
    class Upstream(unittest.TestCase):
        def test_fails(self) -> None:
            raise AssertionError

        async def test_async(self) -> None:
            raise AssertionError

    class Ours(Upstream):
        pass

    class Sibling(Upstream):
        pass

    rows = {"Ours.test_fails": "why", "Ours.test_async": "why", "Ours.test_gone": "stale"}
    assert expect_failures([Ours, Sibling], rows, "here") == {"Ours.test_gone"}
    (mark,) = Ours.__dict__["test_fails"].pytestmark
    assert mark.name == "xfail" and mark.kwargs == {"reason": "listed in here: why", "strict": True}
    assert inspect.iscoroutinefunction(Ours.__dict__["test_async"])
    assert not hasattr(Upstream.__dict__["test_fails"], "pytestmark")
    assert "test_fails" not in Sibling.__dict__
    assert skip_listed([Sibling], {"Sibling.test_fails": "why not"}, "here") == set()
    (skip,) = Sibling.__dict__["test_fails"].pytestmark
    assert skip.name == "skip" and skip.kwargs == {"reason": "not run (here): why not"}
    assert not hasattr(Upstream.__dict__["test_fails"], "pytestmark")


def test_the_real_page_parses() -> None:
    assert COMPATIBILITY.exists()
    assert all(reason for reason in listed("Django").values())
