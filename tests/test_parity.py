"""The asyncio flavour offers exactly the operations of the sync one.

The sync :class:`~hashsession.Session` is a ``MutableMapping``; dunder methods
cannot await, so :class:`~hashsession.aio.AsyncSession` spells them as named
methods. After that renaming, and after leaving out the few ``Mapping`` mixins
that make no sense for an awaitable object (listed below, by name), both
classes must expose the same set of operations with the same signatures, so an
operation added to one flavour and not the other fails here.
"""

from __future__ import annotations

import asyncio
import inspect
from contextlib import AbstractAsyncContextManager
from typing import Any

import pytest

from hashsession import Session, SessionStore
from hashsession.aio import AsyncSession, AsyncSessionStore
from hashsession.protocol import SessionCore
from hashsession.store import StoreBase

#: Sync dunder -> the async method standing for it.
DUNDER_TWINS: dict[str, str] = {
    "__getitem__": "get",
    "__setitem__": "set",
    "__delitem__": "delete",
    "__contains__": "has",
    "__len__": "length",
    "__iter__": "keys",
}

#: What ``Session`` has only because it is a ``MutableMapping``, with no async sense:
#: ``popitem`` (pick an arbitrary key, then pop it: not one operation on a hash) and
#: ``__eq__`` (comparing with ``==`` cannot await).
SYNC_ONLY_MIXINS: frozenset[str] = frozenset({"popitem", "__eq__"})

#: Class machinery that ``Session`` inherits from ``MutableMapping``/``Generic``/``ABC``;
#: none of it is a session operation.
CLASS_MACHINERY: frozenset[str] = frozenset(
    {
        "__init__",
        "__getattr__",
        "__repr__",
        "__doc__",
        "__hash__",
        "__abstractmethods__",
        "__class_getitem__",
        "__orig_bases__",
        "__parameters__",
        "__reversed__",
        "__slots__",
        "__subclasshook__",
        "__annotations__",
        "__dict__",
        "__weakref__",
        "__module__",
        "__static_attributes__",
        "__firstlineno__",
    }
)

#: Read-only state both flavours expose as properties.
PROPERTIES: frozenset[str] = frozenset({"id", "new", "accessed", "modified", "invalidated", "core"})


def _operations(cls: type) -> dict[str, object]:
    """Every public name ``cls`` offers beyond ``object``, dunders included, as static attrs."""
    out: dict[str, object] = {}
    for name in dir(cls):
        attr = inspect.getattr_static(cls, name)
        if name in CLASS_MACHINERY or attr is inspect.getattr_static(object, name, None):
            continue
        is_dunder = name.startswith("__") and name.endswith("__")
        if name.startswith("_") and not is_dunder:
            continue  # private helpers (_run, _send, _core, _abc_impl, name-mangled markers)
        out[name] = attr
    return out


def _sync_as_async_names() -> set[str]:
    names = set()
    for name in _operations(Session):
        if name in SYNC_ONLY_MIXINS:
            continue
        names.add(DUNDER_TWINS.get(name, name))
    return names


def _methods(cls: type) -> set[str]:
    return {n for n, attr in _operations(cls).items() if not isinstance(attr, property)}


def _params(fn: Any) -> list[tuple[str, Any, Any]]:
    sig = inspect.signature(fn)
    return [(p.name, p.kind, p.default) for p in sig.parameters.values()]


# --------------------------------------------------------------------------- sessions


def test_every_sync_operation_has_an_async_twin_and_back() -> None:
    sync_names = _sync_as_async_names()
    async_names = set(_operations(AsyncSession))
    assert sync_names - async_names == set(), "sync operations missing from AsyncSession"
    assert async_names - sync_names == set(), "async operations missing from Session"


def test_the_exclusions_are_real() -> None:
    """Every name excluded or renamed exists on Session, so the lists cannot rot silently."""
    sync_ops = _operations(Session)
    for name in (*DUNDER_TWINS, *SYNC_ONLY_MIXINS):
        assert name in sync_ops, f"{name} is listed but Session does not have it"
    for name in SYNC_ONLY_MIXINS:
        assert name not in _operations(AsyncSession)
    for twin in DUNDER_TWINS.values():
        assert twin in _operations(AsyncSession)
    # no dunder operation on the async side: it could not await anyway
    assert not [n for n in _operations(AsyncSession) if n.startswith("__")]


def test_properties_match() -> None:
    sync_props = {n for n, a in _operations(Session).items() if isinstance(a, property)}
    async_props = {n for n, a in _operations(AsyncSession).items() if isinstance(a, property)}
    assert sync_props == async_props == PROPERTIES


def test_same_named_operations_take_the_same_arguments() -> None:
    shared = (_methods(Session) & _methods(AsyncSession)) - set(DUNDER_TWINS)
    assert shared  # sanity: the bulk of the API
    mismatched = {
        name: (_params(getattr(Session, name)), _params(getattr(AsyncSession, name)))
        for name in sorted(shared)
        if _params(getattr(Session, name)) != _params(getattr(AsyncSession, name))
    }
    assert mismatched == {}


@pytest.mark.parametrize(
    ("dunder", "twin", "sync_params"),
    [
        ("__getitem__", "get", ["self", "key"]),
        ("__setitem__", "set", ["self", "key", "value"]),
        ("__delitem__", "delete", ["self", "key"]),
        ("__contains__", "has", ["self", "key"]),
        ("__len__", "length", ["self"]),
        ("__iter__", "keys", ["self"]),
    ],
)
def test_dunder_twins_take_the_dunders_arguments(
    dunder: str, twin: str, sync_params: list[str]
) -> None:
    assert [p[0] for p in _params(getattr(Session, dunder))] == sync_params
    async_required = [
        p[0]
        for p in _params(getattr(AsyncSession, twin))
        if p[2] is inspect.Parameter.empty and p[1] is not inspect.Parameter.VAR_KEYWORD
    ]
    assert async_required == sync_params


def test_every_async_operation_is_awaitable() -> None:
    not_awaitable = []
    for name in sorted(_methods(AsyncSession)):
        fn = getattr(AsyncSession, name)
        if name == "edit":
            continue
        if not inspect.iscoroutinefunction(fn):
            not_awaitable.append(name)
    assert not_awaitable == []


class _NoCalls:
    """A client that fails the test if anything is sent through it."""

    async def execute_command(self, *args: object) -> None:
        raise AssertionError(f"sent {args!r}")


def test_edit_is_an_async_context_manager() -> None:
    edit = AsyncSession.edit
    assert inspect.isasyncgenfunction(inspect.unwrap(edit))
    assert not inspect.iscoroutinefunction(edit)
    # Calling it (without entering) makes an async context manager and sends nothing.
    session = AsyncSession(SessionCore(StoreBase().config, None), client=_NoCalls())  # type: ignore[arg-type]
    cm = session.edit("cart", [])
    assert isinstance(cm, AbstractAsyncContextManager)
    assert hasattr(cm, "__aenter__") and hasattr(cm, "__aexit__")
    assert session.accessed is False
    # while the sync one is a plain context manager
    assert inspect.isgeneratorfunction(inspect.unwrap(Session.edit))


def test_sync_operations_are_not_coroutines() -> None:
    for name in _methods(Session):
        assert not inspect.iscoroutinefunction(getattr(Session, name)), name


# --------------------------------------------------------------------------- stores

#: Sync store method -> async name.
STORE_TWINS: dict[str, str] = {"close": "aclose"}


def _store_api(cls: type) -> set[str]:
    return {n for n in set(dir(cls)) - set(dir(object)) if not n.startswith("_")}


def test_store_operations_match() -> None:
    sync_api = {STORE_TWINS.get(n, n) for n in _store_api(SessionStore)}
    assert sync_api == _store_api(AsyncSessionStore)
    assert {"open", "open_id", "aclose"} <= _store_api(AsyncSessionStore)
    assert "close" not in _store_api(AsyncSessionStore)


def test_store_open_takes_the_same_arguments_and_is_lazy() -> None:
    for name in ("open", "open_id"):
        assert _params(getattr(SessionStore, name)) == _params(getattr(AsyncSessionStore, name))
        # opening a session costs no round trip, so it is a plain call, not a coroutine
        assert not inspect.iscoroutinefunction(getattr(AsyncSessionStore, name)), name
    assert inspect.iscoroutinefunction(AsyncSessionStore.aclose)
    assert not inspect.iscoroutinefunction(SessionStore.close)


def test_store_constructors_take_the_same_arguments() -> None:
    assert _params(SessionStore.__init__) == _params(AsyncSessionStore.__init__)


def test_both_stores_share_the_settings_and_cookie_logic() -> None:
    assert issubclass(SessionStore, StoreBase)
    assert issubclass(AsyncSessionStore, StoreBase)
    for name in ("core_for", "core_for_value", "response_headers", "cookie"):
        assert inspect.getattr_static(SessionStore, name) is inspect.getattr_static(
            AsyncSessionStore, name
        )


def test_async_open_returns_async_sessions(redis_url: str) -> None:
    store = AsyncSessionStore(redis=redis_url)
    assert isinstance(store.open(None), AsyncSession)
    assert isinstance(store.open_id(None), AsyncSession)
    sync_store = SessionStore(redis=redis_url)
    try:
        assert isinstance(sync_store.open(None), Session)
    finally:
        sync_store.close()


# --------------------------------------------------------------------------- value edits

#: The in-place edits of a list or dict value, and a sequence of calls exercising them.
VALUE_EDITS = ("append", "extend", "add", "discard", "set_in", "delete_in")
VALUE_EDIT_CALLS: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
    ("append", ("l", 1), {}),
    ("append", ("l", [2, "é"]), {}),
    ("extend", ("l", [3, 4, 5]), {"max_len": 4}),
    ("append", ("l", 6), {"max_len": 3}),
    ("add", ("l", 6), {}),
    ("add", ("l", 7), {}),
    ("discard", ("l", 5), {}),
    ("discard", ("l", 5), {}),
    ("set_in", ("d", "a", {"x": 2**53}), {}),
    ("set_in", ("d", "b", 0.1), {}),
    ("delete_in", ("d", "a"), {}),
    ("delete_in", ("d", "a"), {}),
    ("discard", ("nothing", 1), {}),
]


def test_value_edits_are_in_both_flavours_with_the_same_arguments() -> None:
    for name in VALUE_EDITS:
        sync_op, async_op = getattr(Session, name), getattr(AsyncSession, name)
        assert _params(sync_op) == _params(async_op), name
        assert inspect.iscoroutinefunction(async_op), name
        assert not inspect.iscoroutinefunction(sync_op), name


@pytest.mark.parametrize("codec", ["json", "pickle"])
def test_value_edits_give_the_same_results_in_both_flavours(redis_url: str, codec: str) -> None:
    sync_store = SessionStore(redis=redis_url, codec=codec)
    try:
        s = sync_store.open(None)
        sync_results = [getattr(s, name)(*args, **kw) for name, args, kw in VALUE_EDIT_CALLS]
        sync_data = s.to_dict()
    finally:
        sync_store.close()

    async def run() -> tuple[list[Any], dict[str, Any]]:
        store = AsyncSessionStore(redis=redis_url, codec=codec)
        try:
            a = store.open(None)
            results = [await getattr(a, name)(*args, **kw) for name, args, kw in VALUE_EDIT_CALLS]
            return results, await a.to_dict()
        finally:
            await store.aclose()

    async_results, async_data = asyncio.run(run())
    assert sync_results == async_results
    assert sync_results == [1, 2, 4, 3, False, True, True, False, None, None, True, False, False]
    assert sync_data == async_data == {"l": [4, 6, 7], "d": {"b": 0.1}}
