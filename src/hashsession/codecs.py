"""Codecs turn session values into the bytes of one hash field and back.

A codec is anything with ``dumps(value) -> str | bytes`` and ``loads(bytes) ->
value``. JSON is the default; pickle only when asked for by name, because
unpickling data an attacker could write runs code. Both store ``int`` and
``float`` as decimal text, so ``HINCRBY`` and ``HINCRBYFLOAT`` work on them.

A codec may also say, in ``in_place``, which kinds of value the session's
value edits (``append``, ``add``, ``set_in``...) may change on the server
without decoding them: ``"list"`` when it encodes a list as the compact JSON
array of its own encodings of the items (``[item,item]``), ``"dict"`` when it
encodes a dict as the compact JSON object of its encodings of the keys and
values (``{"key":value}``). Edits of other kinds, or with a codec that does
not say, are optimistic compare-and-set writes instead.

A :class:`BoundCodec` (``binds_location = True``) is also told where a value
lives, the field and the session's Redis key, so that its stored form can be
bound to that place (:class:`hashsession.crypto.SealedCodec`).
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from hashsession.errors import ConfigurationError

__all__ = [
    "BoundCodec",
    "Codec",
    "FunctionCodec",
    "JSONCodec",
    "PickleCodec",
    "bound_codec",
    "resolve_codec",
]


@runtime_checkable
class Codec(Protocol):
    """What a codec offers: ``dumps`` to the stored form, ``loads`` back."""

    def dumps(self, value: Any, /) -> str | bytes: ...

    def loads(self, data: bytes, /) -> Any: ...


@runtime_checkable
class BoundCodec(Protocol):
    """A codec whose stored form depends on where the value is stored.

    The session calls these instead of ``dumps``/``loads`` when the codec says
    ``binds_location = True``; ``field`` is the hash field (the session key) and
    ``key`` the session's Redis key.
    """

    binds_location: bool

    def dumps_at(self, value: Any, field: str, key: str, /) -> bytes: ...

    def loads_at(self, data: bytes, field: str, key: str, /) -> Any: ...

    def rebind(self, data: bytes, field: str, key: str, old_key: str | None = None, /) -> bytes:
        """``data`` stored again for ``key``: bytes from ``dumps_at`` (which know their place),
        or stored bytes read from ``old_key``; anything else is returned unchanged."""
        ...

    def counter_field(self, field: str, /) -> bool:
        """Whether ``field`` may hold a plain number that ``HINCRBY`` can work on."""
        ...


def bound_codec(codec: Codec) -> BoundCodec | None:
    """``codec`` if it binds values to their location, else ``None``."""
    return codec if getattr(codec, "binds_location", False) is True else None  # type: ignore[return-value]


class JSONCodec:
    """Compact UTF-8 JSON; NaN and infinities are refused, as JSON has no words for them.

    Encoding and decoding call the standard library's C encoder and scanner
    directly, built once, instead of through ``json.dumps``/``json.loads``,
    which rebuild or re-check them on every call; the results are identical.
    """

    name = "json"
    #: Lists and dicts are plain compact JSON: value edits change them on the server.
    in_place: frozenset[str] = frozenset({"list", "dict"})

    def __init__(self) -> None:
        encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        decoder = json.JSONDecoder()
        self._encode = encoder.encode
        self._decode = decoder.decode
        self._scan: Callable[[str, int], tuple[Any, int]] = decoder.scan_once  # type: ignore[attr-defined]
        self._chunks = _c_encoder(encoder)

    def dumps(self, value: Any, /) -> str:
        kind = type(value)
        if kind is int:
            return int.__repr__(value)
        chunks = self._chunks
        if chunks is None or kind is str:
            return self._encode(value)
        return "".join(chunks(value, 0))

    def loads(self, data: bytes | str, /) -> Any:
        text = data.decode("utf-8") if isinstance(data, bytes) else data
        try:
            value, end = self._scan(text, 0)
        except StopIteration:
            end = -1
        if end != len(text):  # leading or trailing text, or not JSON: the full parser decides
            return self._decode(text)
        return value


def _c_encoder(encoder: json.JSONEncoder) -> Callable[[Any, int], Any] | None:
    """The C encoder behind ``encoder``, built once, or ``None`` when it is not available.

    It is built without the circular-reference table (a cycle ends in RecursionError,
    which :meth:`SessionCore.encode` reports like any other encoding error) and checked
    against the pure ``encode`` on a sample before it is trusted.
    """
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:
        return None
    try:
        chunks = make(
            None,
            encoder.default,
            json.encoder.encode_basestring,
            None,
            encoder.key_separator,
            encoder.item_separator,
            False,
            False,
            False,
        )
        sample = {"a": [1, 2.5, "é\n", None, True], "b": {"c": -3}}
        if "".join(chunks(sample, 0)) != encoder.encode(sample):
            return None
    except Exception:
        return None
    return chunks  # type: ignore[no-any-return]


class PickleCodec:
    """Pickle, for trusted Redis only; numbers stay decimal text so increments work."""

    name = "pickle"

    def dumps(self, value: Any, /) -> bytes:
        kind = type(value)
        if kind is int or kind is float:
            return repr(value).encode("ascii")
        return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)

    def loads(self, data: bytes, /) -> Any:
        if data[:1] == b"\x80":
            return pickle.loads(data)
        text = data.decode("ascii")
        try:
            return int(text)
        except ValueError:
            return float(text)


class FunctionCodec:
    """A codec made of a ``loads`` and a ``dumps`` function."""

    def __init__(
        self, *, loads: Callable[[bytes], Any], dumps: Callable[[Any], str | bytes]
    ) -> None:
        self._loads = loads
        self._dumps = dumps

    def dumps(self, value: Any, /) -> str | bytes:
        return self._dumps(value)

    def loads(self, data: bytes, /) -> Any:
        return self._loads(data)


_NAMED: dict[str, Callable[[], Codec]] = {"json": JSONCodec, "pickle": PickleCodec}


def resolve_codec(codec: str | Codec | None) -> Codec:
    """A codec from a name (``"json"``, ``"pickle"``), an object, or ``None`` for JSON."""
    if codec is None:
        return JSONCodec()
    if isinstance(codec, str):
        try:
            return _NAMED[codec]()
        except KeyError:
            raise ConfigurationError(
                "codec", f"unknown codec name {codec!r}; use one of {sorted(_NAMED)}"
            ) from None
    if callable(getattr(codec, "dumps", None)) and callable(getattr(codec, "loads", None)):
        return codec
    raise ConfigurationError("codec", "a codec needs callable dumps() and loads()")
