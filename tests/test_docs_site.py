"""The documentation site's navigation and API reference match the files in docs/.

``./run docs`` (MkDocs, strict) fails on a page left out of the navigation only as a
warning of the whole build; these checks name the page, read nothing but mkdocs.yml
and the files, and run with the suite.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"
DIRECTIVE = re.compile(r"^::: ([\w.]+)\s*$", re.MULTILINE)

# The public surface the API reference must render (the package's own names, the asyncio
# flavour, every framework adapter, and the modules users import directly).
DOCUMENTED_MODULES = {
    "hashsession",
    "hashsession.aio",
    "hashsession.errors",
    "hashsession.codecs",
    "hashsession.crypto",
    "hashsession.embedded",
    "hashsession.devserver",
    "hashsession.users",
    "hashsession.wsgi",
    "hashsession.asgi",
    "hashsession.flask",
    "hashsession.django",
    "hashsession.pyramid",
    "hashsession.bottle",
    "hashsession.tornado",
}


class _AnyTagLoader(yaml.SafeLoader):
    """Reads mkdocs.yml's ``!!python/name:`` and ``!relative`` tags as plain values."""


def _any_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node)
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node)
    return loader.construct_scalar(node)


_AnyTagLoader.add_multi_constructor("", _any_tag)


def _config() -> dict[str, Any]:
    with (ROOT / "mkdocs.yml").open(encoding="utf-8") as file:
        config: dict[str, Any] = yaml.load(file, Loader=_AnyTagLoader)
    return config


def _nav_files(entry: Any) -> list[str]:
    """Every page path a nav entry names: a path, ``{title: path}`` or ``{title: [entries]}``."""
    if isinstance(entry, str):
        return [entry]
    if isinstance(entry, list):
        return [path for item in entry for path in _nav_files(item)]
    if isinstance(entry, dict):
        return [path for value in entry.values() for path in _nav_files(value)]
    raise AssertionError(f"unexpected nav entry {entry!r}")


def _pages() -> set[str]:
    return {page.relative_to(DOCS).as_posix() for page in DOCS.rglob("*.md")}


def test_the_site_builds_strictly_from_docs_into_build() -> None:
    config = _config()
    assert config["strict"] is True
    assert config["docs_dir"] == "docs"
    assert config["site_dir"] == "build/site"
    assert config["theme"]["font"] is False  # no font download at build time
    links = config["validation"]["links"]
    assert {links[name] for name in ("not_found", "anchors", "unrecognized_links")} == {"warn"}


def test_every_docs_page_is_in_the_nav_once() -> None:
    named = _nav_files(_config()["nav"])
    assert len(named) >= 20
    assert sorted(set(_pages()) - set(named)) == []
    assert sorted(path for path in set(named) if named.count(path) > 1) == []


def test_the_nav_names_no_missing_page() -> None:
    named = _nav_files(_config()["nav"])
    assert sorted(set(named) - _pages()) == []


def test_the_api_reference_renders_every_public_module() -> None:
    rendered = {
        name
        for page in sorted(DOCS.rglob("*.md"))
        for name in DIRECTIVE.findall(page.read_text(encoding="utf-8"))
    }
    assert sorted(DOCUMENTED_MODULES - rendered) == []
    src = ROOT / "src"
    unknown = [
        name
        for name in rendered
        if not (src / (name.replace(".", "/") + ".py")).is_file()
        and not (src / name.replace(".", "/") / "__init__.py").is_file()
    ]
    assert unknown == []
