"""The session cookie: how it is signed, named, rendered and read back.

:class:`Signer` appends an HMAC-SHA256 signature to a cookie value and checks it again;
:class:`CookiePolicy` holds the cookie's name and attributes, renders ``Set-Cookie``
header values and picks the session cookie's values out of a request ``Cookie`` header.
"""

from __future__ import annotations

import base64
import dataclasses
import email.utils
import hmac
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Literal

from hashsession.errors import ConfigurationError

__all__ = [
    "CookiePolicy",
    "SameSite",
    "Signer",
    "cookie_value_is_safe",
    "environ_is_plain_local",
    "is_plain_local",
]

SameSite = Literal["Lax", "Strict", "None"]

_SAMESITE_VALUES = ("Lax", "Strict", "None")
_HOST_PREFIX = "__Host-"
_SECURE_PREFIX = "__Secure-"
_EPOCH_EXPIRES = "Thu, 01 Jan 1970 00:00:00 GMT"

# RFC 6265 section 4.1.1: cookie-octet = %x21 / %x23-2B / %x2D-3A / %x3C-5B / %x5D-7E
_COOKIE_OCTETS = frozenset(chr(c) for c in range(0x21, 0x7F) if chr(c) not in {'"', ",", ";", "\\"})
# RFC 2616 section 2.2 token (what RFC 6265 uses for cookie names): visible ASCII minus separators.
_TOKEN_CHARS = frozenset(chr(c) for c in range(0x21, 0x7F)) - frozenset('()<>@,;:\\"/[]?={}')

# An HMAC-SHA256 digest is 32 bytes: 43 characters of unpadded urlsafe base64.
_SIG_LENGTH = 43
_SIG_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


def cookie_value_is_safe(value: str) -> bool:
    """True if every character of ``value`` is an RFC 6265 cookie-octet.

    That excludes space, ``"``, ``,``, ``;``, ``\\``, control characters and anything
    outside ASCII. The empty string is safe.
    """
    return _COOKIE_OCTETS.issuperset(value)


def is_plain_local(scheme: str | None, host: str | None) -> bool:
    """Whether a request came over plain ``http`` to a loopback host.

    Loopback hosts are ``localhost`` and names under ``.localhost``, ``127.0.0.0/8``
    and ``[::1]``, with or without a port, and ``testserver``, the name Starlette's and
    Django's test clients use. That is where a ``Secure`` cookie cannot work without
    TLS (test clients do not send it back) and where a browser's cookie is not the
    site's, so ``CookiePolicy(secure=None)`` (the default) leaves the flag out there,
    and only there. An unknown scheme or host counts as not local.
    """
    if scheme is None or scheme.lower() not in ("http", "ws") or not host:
        return False
    host = host.strip().lower()
    if host.startswith("["):  # [IPv6] or [IPv6]:port
        return host.partition("]")[0] == "[::1"
    name = host.rpartition(":")[0] if host.count(":") == 1 else host
    if name == "::1":
        return True
    name = name.rstrip(".")
    if name in ("localhost", "testserver") or name.endswith(".localhost"):
        return True
    parts = name.split(".")
    return (
        len(parts) == 4 and parts[0] == "127" and all(p.isdigit() and int(p) < 256 for p in parts)
    )


def environ_is_plain_local(environ: Mapping[str, Any]) -> bool:
    """:func:`is_plain_local` for a WSGI request (``wsgi.url_scheme`` and its ``Host``)."""
    host = environ.get("HTTP_HOST") or environ.get("SERVER_NAME")
    return is_plain_local(environ.get("wsgi.url_scheme"), host)


def _has_control_or_non_ascii(text: str) -> bool:
    return any(ch < " " or ch >= "\x7f" for ch in text)


class Signer:
    """HMAC-SHA256 signatures for cookie values.

    The first key signs, every key verifies, so keys can be rotated.
    """

    __slots__ = ("_keys",)

    def __init__(self, keys: Sequence[str | bytes]) -> None:
        if isinstance(keys, (str, bytes, bytearray)):
            raise ConfigurationError("secret_keys", "must be a list of keys, not a single key")
        encoded: list[bytes] = []
        for key in keys:
            if isinstance(key, str):
                key_bytes = key.encode("utf-8")
            elif isinstance(key, (bytes, bytearray)):
                key_bytes = bytes(key)
            else:
                raise ConfigurationError(
                    "secret_keys", f"each key must be str or bytes, not {type(key).__name__}"
                )
            if not key_bytes:
                raise ConfigurationError("secret_keys", "a key must not be empty")
            encoded.append(key_bytes)
        if not encoded:
            raise ConfigurationError("secret_keys", "at least one key is required")
        self._keys: tuple[bytes, ...] = tuple(encoded)

    def __repr__(self) -> str:
        return f"<Signer with {len(self._keys)} key(s)>"

    @staticmethod
    def _signature(key: bytes, message: bytes) -> str:
        digest = hmac.digest(key, message, "sha256")
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")

    def sign(self, value: str) -> str:
        """Return ``value`` followed by ``.`` and its signature made with the first key."""
        return f"{value}.{self._signature(self._keys[0], value.encode('utf-8'))}"

    def mac(self, message: bytes) -> str:
        """The signature of ``message`` by the newest key (43 URL-safe characters)."""
        return self._signature(self._keys[0], message)

    def matches(self, message: bytes, signature: str) -> bool:
        """Whether ``signature`` is any key's signature of ``message`` (constant time per key)."""
        matched = False
        for key in self._keys:
            matched |= hmac.compare_digest(self._signature(key, message), signature)
        return matched

    def unsign(self, signed: str) -> str | None:
        """Return the value if ``signed`` carries a valid signature from any key, else ``None``.

        Never raises for bad input. Every key is checked, whichever one matches.
        """
        checked = self.verify(signed)
        return None if checked is None else checked[0]

    def verify(self, signed: str) -> tuple[str, int] | None:
        """The value and the position of the key whose signature ``signed`` carries, or ``None``.

        Position 0 is the newest key: any other means the cookie should be signed again
        with the newest one (see :attr:`SessionCore.resign`). Never raises for bad
        input; every key is checked, whichever one matches, so the time taken does
        not say which key did.
        """
        value, dot, signature = signed.rpartition(".")
        if not dot or len(signature) != _SIG_LENGTH or not _SIG_CHARS.issuperset(signature):
            return None
        try:
            message = value.encode("utf-8")
        except UnicodeEncodeError:
            return None
        # Comparing the canonical base64 text (not decoded bytes) means no other spelling
        # of a signature is accepted.
        found = -1
        for position, key in enumerate(self._keys):
            if hmac.compare_digest(self._signature(key, message), signature) and found < 0:
                found = position
        return None if found < 0 else (value, found)


def _check_bool(field: str, value: object) -> None:
    if not isinstance(value, bool):
        raise ConfigurationError(f"cookie.{field}", f"must be True or False, not {value!r}")


@dataclass(frozen=True, kw_only=True)
class CookiePolicy:
    """How the session cookie is named and which attributes it carries."""

    name: str = "session"
    path: str = "/"
    domain: str | None = None
    #: ``True``: always ``Secure``; ``False``: never (the store warns at start-up);
    #: ``None`` (the default): ``Secure`` except in a response to plain http on a loopback
    #: host (see :func:`is_plain_local`), which is what development servers and test
    #: clients use. Settings that browsers only accept with ``Secure`` (``SameSite=None``,
    #: ``__Host-``/``__Secure-`` names) always send it unless ``secure=False``, which they
    #: refuse.
    secure: bool | None = None
    httponly: bool = True
    samesite: SameSite | None = "Lax"
    #: Lifetime in seconds (a :class:`~datetime.timedelta` is converted); ``None`` makes a
    #: browser-session cookie without ``Max-Age``/``Expires``.
    max_age: int | None = None
    #: Prefix the real cookie name with ``__Host-``; needs ``secure``, path ``/`` and no domain.
    host_prefix: bool = False
    #: The longest incoming cookie value :meth:`values_from_header` accepts.
    max_length: int = 4096
    #: Add the ``Partitioned`` attribute (CHIPS: the browser keeps the cookie per top-level
    #: site, for an app embedded in other sites); needs ``secure``.
    partitioned: bool = False

    def __post_init__(self) -> None:
        max_age: object = self.max_age
        if isinstance(max_age, timedelta):
            max_age = int(max_age.total_seconds())
            object.__setattr__(self, "max_age", max_age)
        self._validate()

    def _validate(self) -> None:
        name: object = self.name
        if not isinstance(name, str) or not name:
            raise ConfigurationError("cookie.name", "must be a non-empty string")
        if not _TOKEN_CHARS.issuperset(name):
            raise ConfigurationError(
                "cookie.name",
                f"{name!r} is not a cookie name: use ASCII letters, digits and !#$%&'*+-.^_`|~",
            )

        path: object = self.path
        if not isinstance(path, str) or not path.startswith("/"):
            raise ConfigurationError(
                "cookie.path", f"must be a string starting with '/', not {path!r}"
            )
        if ";" in path or _has_control_or_non_ascii(path):
            raise ConfigurationError(
                "cookie.path", "must not contain ';', control or non-ASCII characters"
            )

        domain: object = self.domain
        if domain is not None:
            if not isinstance(domain, str) or not domain:
                raise ConfigurationError("cookie.domain", "must be None or a non-empty string")
            if ";" in domain or " " in domain or _has_control_or_non_ascii(domain):
                raise ConfigurationError(
                    "cookie.domain",
                    "must not contain ';', spaces, control or non-ASCII characters "
                    "(write international names in punycode)",
                )

        if self.secure is not None:
            _check_bool("secure", self.secure)
        _check_bool("httponly", self.httponly)
        _check_bool("host_prefix", self.host_prefix)
        _check_bool("partitioned", self.partitioned)
        if self.partitioned and not self.secure:
            raise ConfigurationError(
                "cookie.partitioned", "a Partitioned cookie requires secure=True"
            )

        samesite: object = self.samesite
        if samesite is not None and samesite not in _SAMESITE_VALUES:
            raise ConfigurationError(
                "cookie.samesite", f"must be 'Lax', 'Strict', 'None' or None, not {samesite!r}"
            )
        insecure = self.secure is False
        if samesite == "None" and insecure:
            raise ConfigurationError("cookie.samesite", "SameSite=None requires Secure")

        if self.host_prefix and (insecure or self.path != "/" or self.domain is not None):
            raise ConfigurationError(
                "cookie.host_prefix", "requires Secure, path='/' and domain=None"
            )
        # Browsers enforce the same rules on names that carry a prefix themselves.
        lowered = name.lower()
        if lowered.startswith(("__host-", "__secure-")) and insecure:
            raise ConfigurationError("cookie.name", f"a {name!r} cookie requires Secure")
        if lowered.startswith("__host-") and not (self.path == "/" and self.domain is None):
            raise ConfigurationError(
                "cookie.name", f"a {name!r} cookie requires path='/' and domain=None"
            )

        max_age: object = self.max_age
        if max_age is not None and (
            not isinstance(max_age, int) or isinstance(max_age, bool) or max_age < 0
        ):
            raise ConfigurationError(
                "cookie.max_age", f"must be None or a whole number of seconds >= 0, not {max_age!r}"
            )

        max_length: object = self.max_length
        if not isinstance(max_length, int) or isinstance(max_length, bool) or max_length < 64:
            raise ConfigurationError(
                "cookie.max_length", f"must be a whole number >= 64, not {max_length!r}"
            )

    @property
    def cookie_name(self) -> str:
        """The name the browser sees: ``"__Host-" + name`` with ``host_prefix``, else ``name``."""
        return _HOST_PREFIX + self.name if self.host_prefix else self.name

    def secure_for(self, plain_local: bool) -> bool:
        """Whether the cookie carries ``Secure`` in a response to a request that was
        (``plain_local=True``) or was not plain http to a loopback host."""
        if self.secure is not None:
            return self.secure
        if not plain_local:
            return True
        # SameSite=None and prefixed names are refused by browsers without Secure.
        return (
            self.samesite == "None"
            or self.host_prefix
            or self.name.lower().startswith(("__host-", "__secure-"))
        )

    def _attributes(self, parts: list[str], plain_local: bool) -> str:
        if self.secure_for(plain_local):
            parts.append("Secure")
        if self.httponly:
            parts.append("HttpOnly")
        if self.samesite is not None:
            parts.append(f"SameSite={self.samesite}")
        if self.partitioned:
            parts.append("Partitioned")
        return "; ".join(parts)

    def _head(self, value: str) -> list[str]:
        parts = [f"{self.cookie_name}={value}", f"Path={self.path}"]
        if self.domain is not None:
            # RFC 6265 5.2.3: a leading dot is ignored; some clients (werkzeug's test
            # client) mis-match a domain that keeps it, so it is left out.
            parts.append(f"Domain={self.domain.lstrip('.') or self.domain}")
        return parts

    def set_cookie(self, value: str, *, plain_local: bool = False) -> str:
        """The value of a ``Set-Cookie`` header that stores ``value``.

        ``plain_local`` says the response answers plain http on a loopback host (see
        :attr:`secure`). Raises :class:`ValueError` if ``value`` has a character that is
        not a cookie-octet.
        """
        if not cookie_value_is_safe(value):
            raise ValueError("cookie value contains characters not allowed in a cookie")
        parts = self._head(value)
        if self.max_age is not None:
            parts.append(f"Max-Age={self.max_age}")
            parts.append(
                f"Expires={email.utils.formatdate(time.time() + self.max_age, usegmt=True)}"
            )
        return self._attributes(parts, plain_local)

    def delete_cookie(self, *, plain_local: bool = False) -> str:
        """The value of a ``Set-Cookie`` header that makes the browser drop the cookie."""
        parts = self._head("")
        parts.append("Max-Age=0")
        parts.append(f"Expires={_EPOCH_EXPIRES}")
        return self._attributes(parts, plain_local)

    def values_from_header(self, header: str | None) -> list[str]:
        """Every value of the session cookie in a request ``Cookie`` header, in order.

        Surrounding whitespace and one pair of surrounding double quotes are removed.
        Malformed parts, empty values and values longer than ``max_length`` are skipped.
        """
        if not header:
            return []
        wanted = self.cookie_name
        if wanted not in header:
            return []
        limit = self.max_length
        values: list[str] = []
        for part in header.split(";"):
            name, eq, value = part.partition("=")
            if not eq or name.strip() != wanted:
                continue
            value = value.strip()
            if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
                value = value[1:-1]
            if value and len(value) <= limit:
                values.append(value)
        return values

    @classmethod
    def coerce(cls, value: CookiePolicy | Mapping[str, Any] | None) -> CookiePolicy:
        """Turn ``None`` (defaults), a mapping of settings or a policy into a policy."""
        if value is None:
            return cls()
        if isinstance(value, CookiePolicy):
            return value
        if isinstance(value, Mapping):
            known = {f.name for f in dataclasses.fields(cls) if f.init}
            unknown = sorted(str(k) for k in value if k not in known)
            if unknown:
                raise ConfigurationError(
                    "cookie", f"unknown setting {', '.join(map(repr, unknown))}"
                )
            return cls(**value)
        raise ConfigurationError(
            "cookie", f"must be a CookiePolicy, a mapping or None, not {type(value).__name__}"
        )
