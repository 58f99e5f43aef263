"""Encryption at rest: each value sealed with AES-256-GCM, bound to its session and field.

::

    from hashsession.crypto import SealedCodec

    store = SessionStore(codec=SealedCodec(keys=[os.environ["SESSION_SEAL_KEY"]]), ...)

``pip install 'hashsession[crypto]'`` brings the ``cryptography`` package it needs.

What a stored value looks like (``docs/data-layout.md`` has the contract)::

    0x01 | key id (1 byte) | nonce (12 bytes) | AES-256-GCM ciphertext | tag (16 bytes)

The associated data is the header (``0x01``, key id), the session's Redis key and the
field, each length-prefixed: a sealed value copied to another field or another session
does not open there. The nonce is a keyed BLAKE2b of the associated data and the
plaintext (a synthetic IV), so sealing is deterministic: the same value in the same field
of the same session seals to the same bytes, which ``compare_and_set`` and Pyramid's
change detection compare. Someone who reads Redis learns only when one field of one
session holds again a value it held before.

Keys rotate like cookie signing keys: newest first, the newest seals, every listed key
opens. Each key's id byte is derived from the key, so reordering or adding keys never
changes which key a stored value names; a key that is no longer listed leaves its values
unreadable (:class:`~hashsession.DecodeError` naming the key, the other keys still read).

Counters stay plain: ``HINCRBY`` cannot add to ciphertext, so ``incr()`` and
``incr_float()`` store decimal text, which reads back as a number. A sealed value's first
byte is ``0x01``, which decimal text never starts with. A plain number is neither secret
nor authenticated: give ``counters=`` the field names that may hold one, and a plain
number anywhere else fails to open, while ``incr()`` on those other fields adds to a
sealed number by compare-and-set. Metadata (reserved fields: creation time, owner,
last seen, Pyramid's CSRF token and flash queues, ...) is not sealed.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import struct
from collections.abc import Iterable, Sequence
from typing import Any

from hashsession._extras import missing_extra

try:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM
except ModuleNotFoundError as exc:  # the extra is not installed
    missing_extra(exc, "crypto", "hashsession.crypto")

from hashsession.codecs import Codec, bound_codec, resolve_codec
from hashsession.errors import ConfigurationError

__all__ = ["SealedCodec"]

VERSION = 0x01
_HEADER = 2  # version, key id
_NONCE = 12
_TAG = 16
#: Bytes a sealed value adds to what the inner codec writes.
OVERHEAD = _HEADER + _NONCE + _TAG
_MIN_KEY_BYTES = 32
_NUMBER = re.compile(rb"-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?")
_LEN = struct.Struct(">I")


class _Sealed(bytes):
    """Sealed bytes made in this process, remembering their plaintext and their Redis key.

    They let a value sealed for a key the session then lost (it expired, or a fresh id
    was drawn) be sealed again for the new key without decrypting, and let a value just
    written be read back without decrypting. Bytes read from Redis are never of this type.
    """

    plain: bytes
    key: str


class _Key:
    """One configured secret: its id byte, AES-256-GCM cipher and nonce key."""

    __slots__ = ("aead", "ident", "nonce_key")

    def __init__(self, secret: bytes) -> None:
        def derive(label: bytes) -> bytes:
            return hmac.new(secret, b"hashsession sealed v1 " + label, hashlib.sha256).digest()

        self.ident = derive(b"key id")[0]
        self.aead = AESGCM(derive(b"aes-256-gcm"))
        self.nonce_key = derive(b"nonce")


def _secret(key: object) -> bytes:
    if isinstance(key, str):
        key = key.encode("utf-8")
    if not isinstance(key, bytes):
        raise ConfigurationError("codec", f"SealedCodec keys must be str or bytes, not {key!r}")
    if len(key) < _MIN_KEY_BYTES:
        raise ConfigurationError(
            "codec",
            f"a SealedCodec key must be at least {_MIN_KEY_BYTES} bytes; make one with"
            ' python -c "import secrets; print(secrets.token_urlsafe(32))"',
        )
    return key


class SealedCodec:
    """Seal every value with AES-256-GCM, bound to its field and its session's Redis key.

    ``keys``: secrets of at least 32 bytes (``str`` as UTF-8, or ``bytes``), newest
    first; the newest seals, all open. ``inner``: the codec that turns values into the
    plaintext (JSON by default; a name or a codec object, as the store's ``codec``).
    ``counters``: the field names that may hold a plain number for ``HINCRBY``;
    ``None`` (the default) lets any field hold one.
    """

    name = "sealed"
    binds_location = True

    def __init__(
        self,
        keys: Sequence[str | bytes],
        inner: str | Codec | None = None,
        *,
        counters: Iterable[str] | None = None,
    ) -> None:
        if isinstance(keys, (str, bytes)) or not keys:
            raise ConfigurationError("codec", "SealedCodec takes a list of keys, newest first")
        secrets = [_secret(k) for k in keys]
        if len(set(secrets)) != len(secrets):
            raise ConfigurationError("codec", "a SealedCodec key is listed twice")
        self._keys = [_Key(s) for s in secrets]
        self._by_id = {k.ident: k for k in self._keys}
        if len(self._by_id) != len(self._keys):
            raise ConfigurationError(
                "codec", "two SealedCodec keys share an id byte (1 chance in 256): make a new key"
            )
        self._inner = resolve_codec(inner)
        if bound_codec(self._inner) is not None:
            raise ConfigurationError("codec", "a SealedCodec cannot seal another bound codec")
        if isinstance(counters, str):
            raise ConfigurationError("codec", "counters must be a collection of field names")
        self._counters = None if counters is None else frozenset(counters)

    def __repr__(self) -> str:
        return f"<SealedCodec keys={len(self._keys)} inner={self._inner!r}>"

    # -- the plain Codec methods: a sealed value needs its place ----------------

    def dumps(self, value: Any, /) -> bytes:
        raise TypeError("a SealedCodec seals a value for its field and session: use dumps_at")

    def loads(self, data: bytes, /) -> Any:
        # The sessions' fast path tries ``loads`` first and, when it raises, decodes
        # through the session core, which calls ``loads_at``.
        raise TypeError("a SealedCodec opens a value for its field and session: use loads_at")

    # -- BoundCodec ------------------------------------------------------------

    def counter_field(self, field: str, /) -> bool:
        """Whether ``field`` may hold a plain number (a counter ``HINCRBY`` works on)."""
        return self._counters is None or field in self._counters

    def dumps_at(self, value: Any, field: str, key: str, /) -> bytes:
        """``value`` encoded by the inner codec, sealed for ``field`` of session ``key``."""
        plain = self._inner.dumps(value)
        if isinstance(plain, str):
            plain = plain.encode("utf-8")
        return self._seal(bytes(plain), field, key)

    def loads_at(self, data: bytes, field: str, key: str, /) -> Any:
        """The value sealed in ``data`` for ``field`` of session ``key``, or a plain counter.

        Raises ``ValueError`` (the session reports a :class:`~hashsession.DecodeError`
        naming the field) when ``data`` does not open there.
        """
        if type(data) is _Sealed:
            return self._inner.loads(data.plain)
        if data[:1] != b"\x01":
            return self._plain_number(data, field)
        return self._inner.loads(self._open(data, field, key))

    def rebind(self, data: bytes, field: str, key: str, old_key: str | None = None, /) -> bytes:
        """``data`` sealed again for session ``key``.

        Bytes from :meth:`dumps_at` know their key; stored bytes are opened with
        ``old_key``. Plain numbers, and values that do not open, come back unchanged.
        """
        if type(data) is _Sealed:
            return data if data.key == key else self._seal(data.plain, field, key)
        if old_key is None or data[:1] != b"\x01":
            return data
        try:
            plain = self._open(data, field, old_key)
        except ValueError:
            return data
        return self._seal(plain, field, key)

    # -- sealing -----------------------------------------------------------------

    @staticmethod
    def _associated(ident: int, field: str, key: str) -> bytes:
        k = key.encode("utf-8", "surrogatepass")
        f = field.encode("utf-8", "surrogatepass")
        return bytes((VERSION, ident)) + _LEN.pack(len(k)) + k + _LEN.pack(len(f)) + f

    def _seal(self, plain: bytes, field: str, key: str) -> _Sealed:
        sealer = self._keys[0]
        ad = self._associated(sealer.ident, field, key)
        nonce = hashlib.blake2b(
            ad + _LEN.pack(len(plain)) + plain, key=sealer.nonce_key, digest_size=_NONCE
        ).digest()
        out = _Sealed(ad[:_HEADER] + nonce + sealer.aead.encrypt(nonce, plain, ad))
        out.plain = plain
        out.key = key
        return out

    def _open(self, data: bytes, field: str, key: str) -> bytes:
        if len(data) < OVERHEAD:
            raise ValueError("a sealed value too short to be one")
        opener = self._by_id.get(data[1])
        if opener is None:
            raise ValueError("sealed with a key that is not configured (retired?)")
        ad = self._associated(opener.ident, field, key)
        try:
            return opener.aead.decrypt(
                data[_HEADER : _HEADER + _NONCE], data[_HEADER + _NONCE :], ad
            )
        except InvalidTag:
            raise ValueError(
                "the sealed value does not open here: altered, or moved from another"
                " field or session"
            ) from None

    def _plain_number(self, data: bytes, field: str) -> int | float:
        match = _NUMBER.fullmatch(data)
        if match is None:
            raise ValueError("not a sealed value")
        if not self.counter_field(field):
            raise ValueError("a plain number in a field not listed in counters")
        if match.group(1) is None and match.group(2) is None:
            return int(data)
        return float(data)
