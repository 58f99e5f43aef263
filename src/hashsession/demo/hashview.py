"""The live view's data: the raw Redis hash behind a session, and its TTL.

Read with the store's plain client (``HGETALL`` and ``PTTL``), not through the
session, so looking does not slide the TTL it shows.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from hashsession.store import SessionStore

__all__ = ["RawHash", "Row", "escaped", "read_hash"]

#: What each reserved field (a NUL byte, then a name) holds; see docs/data-layout.md.
RESERVED = {
    b"\x00c": "reserved: created at (ms since the epoch)",
    b"\x00t": "reserved: this session's own idle timeout (ms)",
    b"\x00k": "reserved: this session's own cookie lifetime (s)",
    b"\x00u": "reserved: owner (NUL + keyed digest of the user id, never the id)",
    b"\x00s": "reserved: last seen (ms since the epoch)",
    b"\x00i": "reserved: owner's index entry good until (ms since the epoch)",
    b"\x00csrf": "reserved: this demo's CSRF token (adapter metadata)",
}
_TIMES = {b"\x00c", b"\x00s", b"\x00i"}


@dataclass(frozen=True)
class Row:
    """One field of the hash as shown: its escaped name and value, and what it is."""

    field: str
    value: str
    label: str
    reserved: bool


@dataclass(frozen=True)
class RawHash:
    """A session's Redis key, its fields (reserved ones last) and ``PTTL`` (-2: no key)."""

    key: str | None
    rows: list[Row]
    pttl: int

    def as_json(self) -> dict[str, Any]:
        """For the live view's poll."""
        return {
            "key": self.key,
            "pttl": self.pttl,
            "rows": [[r.field, r.value, r.label, r.reserved] for r in self.rows],
        }


def escaped(raw: bytes) -> str:
    """UTF-8 text with every unprintable character escaped (a NUL shows as ``\\x00``);
    bytes that are not UTF-8 escaped one by one."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return "".join(chr(b) if 32 <= b < 127 and b != 92 else _escape(chr(b)) for b in raw)
    return "".join(c if c.isprintable() and c != "\\" else _escape(c) for c in text)


def _escape(c: str) -> str:
    if c == "\\":
        return "\\\\"
    n = ord(c)
    return f"\\x{n:02x}" if n < 256 else f"\\u{n:04x}"


def _label(field: bytes, value: bytes) -> str:
    if field[:1] != b"\x00":
        return "your data (JSON)"
    label = RESERVED.get(field, "reserved: library or adapter metadata")
    if field in _TIMES and value.isdigit():
        when = datetime.fromtimestamp(int(value) / 1000, timezone.utc)
        label += f" = {when:%Y-%m-%d %H:%M:%S} UTC"
    return label


def read_hash(store: SessionStore, key: str | None) -> RawHash:
    """``HGETALL`` and ``PTTL`` of ``key`` in one pipeline (nothing for ``None``)."""
    if key is None:
        return RawHash(None, [], -2)
    pipe = store.client.pipeline(transaction=False)
    pipe.hgetall(key)
    pipe.pttl(key)
    fields, pttl = pipe.execute()
    rows = [
        Row(escaped(f), escaped(v), _label(f, v), f[:1] == b"\x00")
        for f, v in sorted(fields.items(), key=lambda fv: (fv[0][:1] == b"\x00", fv[0]))
    ]
    return RawHash(key, rows, int(pttl))
