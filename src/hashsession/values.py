"""Helpers shared by both session flavours for values read from a session.

``Counter``/``FloatCounter`` make ``session["n"] += 1`` one ``HINCRBY``; the
``Recorder`` lets ``with session.edit(key) as value:`` replay its mutations on
a fresher value when an optimistic write loses a race.
"""

from __future__ import annotations

from typing import Any

from hashsession.errors import ValueTypeError

__all__ = ["Counter", "FloatCounter", "Recorder", "adder", "counted"]


class Counter(int):
    """An ``int`` read from a session; ``+=``/``-=`` on it become an atomic increment."""

    _owner: object
    _key: str
    _delta: int | float

    def __iadd__(self, other: object) -> Any:
        if type(other) is int:
            return counted(int(self) + other, self._owner, self._key, self._delta + other)
        if type(other) is float:
            return counted(int(self) + other, self._owner, self._key, float(self._delta + other))
        return NotImplemented

    def __isub__(self, other: object) -> Any:
        if type(other) is int or type(other) is float:
            return self.__iadd__(-other)
        return NotImplemented


class FloatCounter(float):
    """A ``float`` read from a session; ``+=``/``-=`` on it become ``HINCRBYFLOAT``."""

    _owner: object
    _key: str
    _delta: int | float

    def __iadd__(self, other: object) -> Any:
        if type(other) is int or type(other) is float:
            return counted(float(self) + other, self._owner, self._key, float(self._delta + other))
        return NotImplemented

    def __isub__(self, other: object) -> Any:
        if type(other) is int or type(other) is float:
            return self.__iadd__(-other)
        return NotImplemented


def counted(value: Any, owner: object, key: str, delta: int | float = 0) -> Any:
    """Wrap a plain ``int``/``float`` read from ``owner[key]`` so ``+=`` increments in Redis."""
    kind = type(value)
    if kind is int:
        out: Counter | FloatCounter = Counter(value)
    elif kind is float:
        out = FloatCounter(value)
    else:
        return value
    out._owner, out._key, out._delta = owner, key, delta
    return out


def increment_of(value: object, owner: object, key: str) -> int | float | None:
    """The pending increment if ``value`` came from ``owner[key]`` and was ``+=``-ed.

    The increment is handed out once: assigning the same value again is a plain write.
    """
    if (
        (type(value) is Counter or type(value) is FloatCounter)
        and value._owner is owner
        and value._key == key
        and value._delta
    ):
        delta = value._delta
        value._delta = 0
        return delta
    return None


def adder(key: str, amount: int | float) -> Any:
    """``current + amount``, with ``HINCRBY``'s rules (``HINCRBYFLOAT``'s for a float amount).

    For increments the server cannot do itself (a sealed value, see
    :mod:`hashsession.crypto`), applied by compare-and-set.
    """

    def add(current: Any) -> Any:
        kind = type(current)
        if kind is not int and (kind is not float or type(amount) is int):
            raise ValueTypeError(key, "the stored value is not a number to increment")
        return current + amount

    return add


_INPLACE = frozenset({"__iadd__", "__isub__", "__ior__", "__iand__"})


class Recorder:
    """Stands in for a value being edited and remembers every method called on it.

    If the edit loses a race, the same calls are replayed on the value that
    won, so ``cart.append(3)`` lands on top of another request's change.
    """

    __slots__ = ("_calls", "_target")

    def __init__(self, target: Any) -> None:
        object.__setattr__(self, "_target", target)
        object.__setattr__(self, "_calls", [])

    @property
    def target(self) -> Any:
        """The edited value itself."""
        return self._target

    def replay_on(self, fresh: Any) -> Recorder:
        """A recorder over ``fresh`` with every recorded call applied again."""
        out = Recorder(fresh)
        for name, args, kwargs in self._calls:
            if name in _INPLACE:
                out._inplace(name, *args)
            else:
                out._call(name, *args, **kwargs)
        return out

    def _call(self, name: str, *args: Any, **kwargs: Any) -> Any:
        self._calls.append((name, args, kwargs))
        if name in _INPLACE and not hasattr(self._target, name):
            name = "__" + name[3:]  # immutable values: x += y means x = x + y
        return getattr(self._target, name)(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._target, name)
        if not callable(attr):
            return attr

        def method(*args: Any, **kwargs: Any) -> Any:
            return self._call(name, *args, **kwargs)

        return method

    def __setattr__(self, name: str, value: Any) -> None:
        self._call("__setattr__", name, value)

    def __setitem__(self, key: Any, value: Any) -> None:
        self._call("__setitem__", key, value)

    def __delitem__(self, key: Any) -> None:
        self._call("__delitem__", key)

    def _inplace(self, name: str, other: Any) -> Recorder:
        result = self._call(name, other)
        object.__setattr__(self, "_target", result)
        return self

    def __iadd__(self, other: Any) -> Recorder:
        return self._inplace("__iadd__", other)

    def __isub__(self, other: Any) -> Recorder:
        return self._inplace("__isub__", other)

    def __ior__(self, other: Any) -> Recorder:
        return self._inplace("__ior__", other)

    def __iand__(self, other: Any) -> Recorder:
        return self._inplace("__iand__", other)

    def __getitem__(self, key: Any) -> Any:
        return self._target[key]

    def __len__(self) -> int:
        return len(self._target)

    def __iter__(self) -> Any:
        return iter(self._target)

    def __contains__(self, item: Any) -> bool:
        return item in self._target

    def __bool__(self) -> bool:
        return bool(self._target)

    def __eq__(self, other: object) -> bool:
        return bool(self._target == (other._target if isinstance(other, Recorder) else other))

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return repr(self._target)
