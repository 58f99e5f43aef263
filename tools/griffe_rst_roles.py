"""A Griffe extension for the documentation site: Sphinx markup in docstrings as Markdown.

The docstrings cross-reference with Sphinx roles (``:class:`Session```,
``:meth:`~hashsession.SessionStore.sessions_of```), which Markdown would show as
literal text. This rewrites each role into an optional mkdocs-autorefs reference: a
link where the target is rendered in the API reference, plain code where it is not
(a private module, the standard library), and never a warning either way. A literal
block's ``::`` marker is dropped as Sphinx drops it; the indented block stays code.
"""

from __future__ import annotations

import html
import re
from typing import Any

from griffe import Extension, NameResolutionError, Object

ROLE = re.compile(
    r":(?:py:)?(?P<role>mod|class|func|meth|attr|data|exc|obj|const):"
    r"`(?P<text>[^`]+)`"
)
EXPLICIT_TITLE = re.compile(r"^(?P<title>.+?)\s*<(?P<target>[^<>]+)>$")
# reStructuredText's literal-block marker, as Sphinx shows it: a line of only "::" goes,
# "text::" keeps one colon, "text ::" keeps none (the indented block is code to Markdown).
LITERAL_ALONE = re.compile(r"^[ \t]*::[ \t]*$", re.MULTILINE)
LITERAL_SPACED = re.compile(r"[ \t]+::[ \t]*$", re.MULTILINE)
LITERAL_AFTER_TEXT = re.compile(r"(?<=\S)::[ \t]*$", re.MULTILINE)


def _target(obj: Object, name: str) -> str | None:
    """The full path ``name`` means where ``obj`` is written, or None for a name from elsewhere."""
    if name.startswith("hashsession.") or name == "hashsession":
        return name
    head, _, rest = name.lstrip(".").partition(".")
    try:
        resolved = obj.resolve(head)
    except NameResolutionError:
        return None
    if not resolved.startswith("hashsession"):
        return None
    return f"{resolved}.{rest}" if rest else resolved


def _replace(obj: Object, match: re.Match[str]) -> str:
    text = match["text"].strip()
    explicit = EXPLICIT_TITLE.match(text)
    if explicit:
        title, name = explicit["title"], explicit["target"].strip()
    else:
        name = text.lstrip("!")
        title = name.lstrip("~.").rsplit(".", 1)[-1] if name.startswith("~") else name
        name = name.lstrip("~")
    code = f"<code>{html.escape(title)}</code>"
    target = _target(obj, name)
    if target is None:
        return code
    return f'<autoref identifier="{html.escape(target)}" optional>{code}</autoref>'


def _markdown(obj: Object, text: str) -> str:
    text = ROLE.sub(lambda match: _replace(obj, match), text)
    text = LITERAL_ALONE.sub("", text)
    text = LITERAL_SPACED.sub("", text)
    return LITERAL_AFTER_TEXT.sub(":", text)


class SphinxRoles(Extension):
    """Rewrite the Sphinx markup of every docstring into Markdown once the package is loaded."""

    def on_object(self, *, obj: Object, **kwargs: Any) -> None:
        if obj.docstring is not None and ":" in obj.docstring.value:
            obj.docstring.value = _markdown(obj, obj.docstring.value)
