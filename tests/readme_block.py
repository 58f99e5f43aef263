"""Run one README store-API example as written and check what it did, for tests/test_readme.py.

``python tests/readme_block.py <heading> <code file>`` runs the code of the README section
``<heading>`` (its python blocks, in order), then the check :data:`CHECKS` keeps for that
heading, and prints ``CHECKED <heading>``. The examples leave ``redis`` out, so their
stores use the embedded development server; the test gives this process a fresh
``HASHSESSION_DEV_DIR``, so that server is this process's own.

:func:`run_block` runs code one top-level statement at a time in one namespace and keeps
what each statement gave: the value bound to each name (a name bound twice is seen twice)
and the value of each expression statement (``store.revoke(...)`` returns whether it
ended a session). The test uses it in its own process for the Sentinel and Cluster block.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hashsession import DecodeError, SessionStore
from hashsession.crypto import SealedCodec


@dataclass
class Step:
    """What one top-level statement of a block gave."""

    source: str  # the statement's text
    names: dict[str, Any]  # the names it bound (or bound again), with their values
    value: Any = None  # an expression statement's value


def run_block(code: str, namespace: dict[str, Any]) -> list[Step]:
    """Run ``code`` in ``namespace`` statement by statement; what each statement gave."""
    tree = ast.parse(code, "README.md")
    steps = []
    for statement in tree.body:
        source = ast.get_source_segment(code, statement) or ""
        before = dict(namespace)
        value = None
        if isinstance(statement, ast.Expr):
            value = eval(compile(ast.Expression(statement.value), "README.md", "eval"), namespace)
        else:
            module = ast.Module(body=[statement], type_ignores=[])
            exec(compile(module, "README.md", "exec"), namespace)
        names = {
            name: bound
            for name, bound in namespace.items()
            if name != "__builtins__" and (name not in before or before[name] is not bound)
        }
        steps.append(Step(source, names, value))
    return steps


def value_of(steps: list[Step], start: str) -> Any:
    """The value of the one expression statement whose text starts with ``start``."""
    (value,) = [s.value for s in steps if s.source.startswith(start)]
    return value


def check_sessions_per_user(ns: dict[str, Any], steps: list[Step]) -> None:
    """Two logins listed, the laptop's revoked by id, nothing else to log out; no user id
    stored in the clear."""
    store: SessionStore = ns["store"]
    laptop, phone = ns["laptop"], ns["phone"]
    listed = value_of(steps, "store.sessions_of(")
    assert sorted(info.current for info in listed) == [False, True], listed
    assert value_of(steps, "store.revoke(laptop.id") is True
    assert value_of(steps, "store.revoke_user(") == 0  # the laptop's was already gone
    assert [info.current for info in store.sessions_of("alice", current=phone)] == [True]
    client = store.client
    assert client.exists(laptop.core.key) == 0 and client.exists(phone.core.key) == 1
    assert not [key for key in client.scan_iter() if b"alice" in key]
    assert not [v for v in client.hvals(phone.core.key) if b"alice" in v]


def check_encryption_at_rest(ns: dict[str, Any], steps: list[Step]) -> None:
    """Values are sealed in Redis, read back through the cookie, and the newest key seals."""
    store: SessionStore = ns["store"]
    session = store.open()
    session["card"] = {"last4": "4242"}
    raw = store.client.hget(session.core.key, "card")
    assert raw is not None and b"4242" not in raw
    (set_cookie,) = [v for k, v in store.response_headers(session) if k == "Set-Cookie"]
    cookie = set_cookie.split(";", 1)[0]
    assert store.open(cookie)["card"] == {"last4": "4242"}
    new_key, old_key = literal_keys(steps)
    assert read_with([new_key], store, cookie) == {"last4": "4242"}
    assert read_with([old_key], store, cookie) is None  # the newest key sealed it


def read_with(keys: list[str], store: SessionStore, cookie: str) -> Any:
    """The session's ``card`` as a store whose codec holds only ``keys`` reads it (or None)."""
    other = SessionStore(redis=store.client, secret_keys=["change me"], codec=SealedCodec(keys))
    try:
        return other.open(cookie)["card"]
    except DecodeError:
        return None


def literal_keys(steps: list[Step]) -> list[str]:
    """The keys the block hands ``SealedCodec``, as written."""
    (source,) = [s.source for s in steps if isinstance(s.names.get("codec"), SealedCodec)]
    (call,) = [node for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Call)]
    (keys,) = [k.value for k in call.keywords if k.arg == "keys"]
    found: list[str] = ast.literal_eval(keys)
    return found


CHECKS: dict[str, Callable[[dict[str, Any], list[Step]], None]] = {
    "Sessions per user": check_sessions_per_user,
    "Encryption at rest": check_encryption_at_rest,
}
"""The README sections this file runs, each with what its example must have done."""


if __name__ == "__main__":
    heading, code_file = sys.argv[1], sys.argv[2]
    with open(code_file, encoding="utf-8") as f:
        source = f.read()
    namespace: dict[str, Any] = {"__name__": "readme_example"}
    CHECKS[heading](namespace, run_block(source, namespace))
    print(f"CHECKED {heading}", flush=True)
