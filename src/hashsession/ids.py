"""Session ids and the Redis keys derived from them.

A native id is a 4-character slot tag followed by 43 characters of ``secrets``
randomness (256 bits). The Redis key is ``<prefix>{<tag>}<digest of the id>``:
a listing of keys reveals neither usable ids nor more than the tag, and an id
regenerated with the same tag lands in the same Redis Cluster slot, so
``regenerate()`` can move a session with one atomic ``RENAME`` anywhere.
"""

from __future__ import annotations

import binascii
import hashlib
import itertools
import re
import secrets
from functools import cache

__all__ = [
    "ID_LENGTH",
    "digest_key",
    "in_slot_of",
    "is_native_id",
    "key_slot",
    "new_id",
    "raw_key",
    "tag_of",
]

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
    text = binascii.b2a_base64(digest, newline=False).translate(_URLSAFE).decode("ascii")
    return f"{prefix}{{{session_id[:_TAG_LENGTH]}}}{text}"


#: Standard base64 to its URL-safe alphabet (what ``base64.urlsafe_b64encode`` does).
_URLSAFE = bytes.maketrans(b"+/", b"-_")


def raw_key(prefix: str, session_id: str) -> str:
    """The Redis key of the raw layout (DRSession's): prefix plus the id itself."""
    return prefix + session_id


# -- Redis Cluster slots, for the raw layout -----------------------------------

_SLOTS = 16384
_TAG_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def key_slot(key: str) -> int:
    """The Redis Cluster slot of ``key``: CRC16 of its ``{hash tag}``, or of all of it."""
    raw = key.encode("utf-8")
    start = raw.find(b"{")
    if start != -1:
        end = raw.find(b"}", start + 1)
        if end > start + 1:
            raw = raw[start + 1 : end]
    return binascii.crc_hqx(raw, 0) % _SLOTS


@cache
def _slot_tags() -> tuple[str, ...]:
    """A 3-character hash tag for every slot (built once, about 0.1 s, on first need)."""
    tags: list[str | None] = [None] * _SLOTS
    missing = _SLOTS
    for letters in itertools.product(_TAG_ALPHABET, repeat=3):
        tag = "".join(letters)
        slot = binascii.crc_hqx(tag.encode("ascii"), 0) % _SLOTS
        if tags[slot] is None:
            tags[slot] = tag
            missing -= 1
            if not missing:
                break
    assert not missing, "every slot has a 3-character tag"
    return tuple(t for t in tags if t is not None)


def in_slot_of(prefix: str, old_id: str, made: str) -> str:
    """``made``, or ``{tag}`` plus ``made``, so that its raw key shares ``old_id``'s slot.

    A raw key is the prefix plus the id, so a fresh id usually lands in another
    Redis Cluster slot, and moving a session there in one atomic command is
    impossible. A hash tag chosen for the old key's slot keeps it in place.
    """
    slot = key_slot(prefix + old_id)
    if key_slot(prefix + made) == slot:
        return made
    tagged = "{" + _slot_tags()[slot] + "}" + made
    if key_slot(prefix + tagged) != slot:  # the prefix holds an unclosed "{"
        raise ValueError(f"cannot place an id in slot {slot} under the prefix {prefix!r}")
    return tagged
