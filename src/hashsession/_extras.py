"""A framework adapter imported without its extra names the ``pip install`` that fixes it."""

from __future__ import annotations

from typing import NoReturn

#: Top-level modules each extra brings; only their absence is translated.
_PROVIDES: dict[str, tuple[str, ...]] = {
    "bottle": ("bottle",),
    "cli": ("rich",),
    "crypto": ("cryptography",),
    "django": ("django", "asgiref"),
    "flask": ("flask", "werkzeug", "itsdangerous", "markupsafe"),
    "pyramid": ("pyramid", "zope", "webob"),
    "tornado": ("tornado",),
}


def missing_extra(exc: ModuleNotFoundError, extra: str, adapter: str) -> NoReturn:
    """Raise ``exc`` again, as an ImportError naming ``hashsession[extra]`` if that is the cause.

    An import that fails for another reason (a bug, a broken install of something else)
    is raised unchanged.
    """
    missing = (exc.name or "").partition(".")[0]
    if missing not in _PROVIDES[extra]:
        raise exc
    raise ImportError(
        f"{adapter} needs the {extra} extra, which is not installed "
        f"(no module named {missing!r}): pip install 'hashsession[{extra}]'",
        name=missing,
    ) from exc
