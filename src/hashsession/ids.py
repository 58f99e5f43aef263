"""Session ids and the Redis keys derived from them.

A native id is a 4-character slot tag followed by 43 characters of ``secrets``
randomness (256 bits). The Redis key is ``<prefix>{<tag>}<digest of the id>``:
a listing of keys reveals neither usable ids nor more than the tag, and an id
regenerated with the same tag lands in the same Redis Cluster slot, so
``regenerate()`` can move a session with one atomic ``RENAME`` anywhere.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets

__all__ = ["ID_LENGTH", "digest_key", "is_native_id", "new_id", "raw_key", "tag_of"]

_TAG_LENGTH = 4
_RANDOM_LENGTH = 43  # base64url of 32 bytes, padding stripped
ID_LENGTH = _TAG_LENGTH + _RANDOM_LENGTH
_NATIVE = re.compile(rf"[A-Za-z0-9_-]{{{ID_LENGTH}}}")


def new_id(tag: str | None = None) -> str:
    """A fresh id: ``tag`` (or a new random one) plus 256 random bits."""
    if tag is None:
        tag = secrets.token_urlsafe(3)  # 3 bytes -> 4 characters
    return tag + secrets.token_urlsafe(32)


def is_native_id(value: str) -> bool:
    """Whether ``value`` has the exact shape of an id made by :func:`new_id`."""
    return _NATIVE.fullmatch(value) is not None


def tag_of(session_id: str) -> str:
    """The slot tag a native id carries."""
    return session_id[:_TAG_LENGTH]


def digest_key(prefix: str, session_id: str) -> str:
    """The Redis key of a native id: prefix, hash-tagged slot tag, 144-bit digest."""
    digest = hashlib.blake2b(session_id.encode("ascii"), digest_size=18).digest()
    return (
        f"{prefix}{{{session_id[:_TAG_LENGTH]}}}{base64.urlsafe_b64encode(digest).decode('ascii')}"
    )


def raw_key(prefix: str, session_id: str) -> str:
    """The Redis key of the raw layout (DRSession's): prefix plus the id itself."""
    return prefix + session_id
