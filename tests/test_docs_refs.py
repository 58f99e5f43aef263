"""Every test the documentation cites (``tests/file.py::test_name``) exists.

docs/security.md maps each ASVS requirement to the tests that prove it; a renamed or
removed test must not leave the map pointing at nothing.
"""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CITED = re.compile(r"tests/([\w/]+\.py)::(\w+)")


def test_every_cited_test_exists() -> None:
    cited = {
        (doc.name, path, name)
        for doc in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
        if doc.name != "compatibility.md"  # it names the frameworks' own tests
        for path, name in CITED.findall(doc.read_text(encoding="utf-8"))
    }
    assert len(cited) >= 60  # the ASVS map alone cites more
    missing = [
        f"{doc}: tests/{path}::{name}"
        for doc, path, name in sorted(cited)
        if not (ROOT / "tests" / path).is_file()
        or not re.search(rf"def {name}\b", (ROOT / "tests" / path).read_text(encoding="utf-8"))
    ]
    assert missing == []
