"""Each framework adapter imported without its extra names the pip command that fixes it.

The framework is made unimportable in a fresh interpreter (``sys.modules[name] = None``
makes ``import name`` fail with ModuleNotFoundError), as it is where the extra is absent.
"""

from __future__ import annotations

import subprocess
import sys

import pytest

ADAPTERS = [
    ("flask", "flask", "flask"),
    ("django", "django", "django"),
    ("django", "asgiref", "django"),
    ("tornado", "tornado", "tornado"),
    ("pyramid", "pyramid", "pyramid"),
    ("pyramid", "zope", "pyramid"),
    ("bottle", "bottle", "bottle"),
    ("crypto", "cryptography", "crypto"),
    ("compat.redis_session.flask_session", "flask", "flask"),
    ("compat.redis_session.tornado_session", "tornado", "tornado"),
    ("compat.pyramid_redis_sessions", "pyramid", "pyramid"),
    ("compat.bottle_session", "bottle", "bottle"),
]


def _import_without(adapter: str, blocked: str) -> subprocess.CompletedProcess[str]:
    code = (
        "import sys\n"
        f"sys.modules[{blocked!r}] = None\n"
        "try:\n"
        f"    import hashsession.{adapter}\n"
        "except ImportError as exc:\n"
        "    print(type(exc).__name__, exc.name, exc, sep='|')\n"
        "else:\n"
        "    print('imported')\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )


@pytest.mark.parametrize(("adapter", "blocked", "extra"), ADAPTERS)
def test_missing_framework_names_the_extra(adapter: str, blocked: str, extra: str) -> None:
    kind, name, message = _import_without(adapter, blocked).stdout.strip().split("|", 2)
    assert kind == "ImportError"
    assert name == blocked
    assert f"pip install 'hashsession[{extra}]'" in message
    assert f"no module named {blocked!r}" in message


def test_an_unrelated_missing_module_is_raised_unchanged() -> None:
    # The adapter imports fine when only something it does not need is missing ...
    assert _import_without("flask", "pyramid").stdout.strip() == "imported"
    # ... and a missing module that is no framework's is not blamed on an extra.
    from hashsession._extras import missing_extra

    try:
        import hashsession_no_such_module  # type: ignore[import-not-found]  # noqa: F401
    except ModuleNotFoundError as exc:
        with pytest.raises(ModuleNotFoundError) as raised:
            missing_extra(exc, "flask", "hashsession.flask")
        assert raised.value is exc


def test_core_and_plain_adapters_need_no_extra() -> None:
    # The core, WSGI and ASGI adapters depend on redis-py alone.
    for adapter in ("wsgi", "asgi", "compat.drsession"):
        assert _import_without(adapter, "flask").stdout.strip() == "imported"
