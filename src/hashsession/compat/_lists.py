"""The Python 2 era mapping views the older libraries returned: plain lists."""

from __future__ import annotations

from typing import Any

from hashsession.session import Session

__all__ = ["ListSession"]


class ListSession(Session):
    """A :class:`Session` whose ``keys()``, ``values()`` and ``items()`` are lists.

    Each is one ``HGETALL`` (``keys()`` keeps the values to serve the reads right after).
    """

    __slots__ = ()

    def keys(self) -> list[str]:  # type: ignore[override]
        """The keys, as a list."""
        return list(super().keys())

    def values(self) -> list[Any]:  # type: ignore[override]
        """The values, as a list."""
        return list(self.to_dict().values())

    def items(self) -> list[tuple[str, Any]]:  # type: ignore[override]
        """Key/value pairs, as a list."""
        return list(self.to_dict().items())
