"""The one tree of errors hashsession raises.

::

    HashSessionError
     ├── ConfigurationError (ValueError)   a setting is wrong; at start-up; names it
     ├── BackendError                      Redis failed; the redis-py error is __cause__
     │    └── NotReplicatedError           too few replicas confirmed a critical write
     ├── InvalidKeyError (TypeError, ValueError)   a key is not a str, is reserved, or is
     │                                     not valid Unicode (a lone surrogate)
     ├── CodecError (ValueError)           a value could not be encoded or decoded
     │    ├── EncodeError                  (text with a lone surrogate, NaN or infinity in JSON)
     │    └── DecodeError                  (stored bytes or metadata the codec cannot read)
     ├── ValueTypeError (TypeError)        an increment met a value that is not a number
     ├── LimitExceededError (ValueError)   a value, key or key count is over its limit (a
     │                                     stored value read back, too), or a number
     │                                     outside what Redis can count with
     ├── ConflictError                     an optimistic edit kept losing races until edit_timeout
     └── HeadersSentError (RuntimeError)   a step needs a cookie, but the headers are out

Errors about one session key carry it as ``.key``; ``ConfigurationError`` has ``.setting``;
``HeadersSentError`` has ``.operation``.
Errors about an adapter's metadata (``meta_get`` and friends) carry its name as ``.key``
and say "session metadata" instead of "session key".

Bad cookies are not errors: they give a fresh session.
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "CodecError",
    "ConfigurationError",
    "ConflictError",
    "DecodeError",
    "EncodeError",
    "HashSessionError",
    "HeadersSentError",
    "InvalidKeyError",
    "LimitExceededError",
    "NotReplicatedError",
    "ValueTypeError",
]


class HashSessionError(Exception):
    """Root of every error hashsession raises."""


class ConfigurationError(HashSessionError, ValueError):
    """A setting is wrong. ``setting`` names it."""

    def __init__(self, setting: str, message: str) -> None:
        super().__init__(f"{setting}: {message}")
        self.setting = setting


class BackendError(HashSessionError):
    """Redis could not do what was asked; the redis-py error is ``__cause__``."""


class NotReplicatedError(BackendError):
    """The master made a critical write but too few replicas confirmed it in time.

    Raised under ``wait_for_replicas`` after ``invalidate``, ``regenerate``,
    ``login``, ``revoke`` and ``revoke_user``: the write is in force on the master,
    and a failover now could undo it. ``replicas`` is how many confirmed.
    """

    def __init__(self, wanted: int, replicas: int) -> None:
        super().__init__(
            f"the write reached {replicas} of the {wanted} replica(s) asked for by"
            " wait_for_replicas in time; a failover now could undo it"
        )
        self.wanted = wanted
        self.replicas = replicas


class _KeyedError(HashSessionError):
    def __init__(self, key: object, message: str, *, what: str = "session key") -> None:
        super().__init__(f"{what} {key!r}: {message}")
        self.key = key


class InvalidKeyError(_KeyedError, TypeError, ValueError):
    """A session key (or metadata name) cannot name a field.

    It is not a ``str``, starts with the reserved NUL byte, or is not valid Unicode
    text (it holds a lone surrogate, which has no UTF-8 form). A metadata name is
    also refused when a write would touch one of the core's own reserved fields.
    """


class CodecError(_KeyedError, ValueError):
    """A value could not be turned into bytes, or back. ``key`` names it."""


class EncodeError(CodecError):
    """The codec could not encode the value stored under ``key``; nothing was written.

    Also raised for text holding a lone surrogate (it has no UTF-8 form), for NaN and
    infinities under JSON (standard JSON cannot read them back), and for a float
    increment that is not a finite number.
    """


class DecodeError(CodecError):
    """The bytes stored under ``key`` (or in metadata ``key``) cannot be read back."""


class ValueTypeError(_KeyedError, TypeError):
    """An increment met a value that is not a number it can add: the stored one, or the amount.

    ``incr`` counts in Redis' signed 64-bit integers, so a stored integer beyond them
    (which JSON holds well enough) cannot be incremented either.
    """


class LimitExceededError(_KeyedError, ValueError):
    """A value, key or the number of keys is over the store's limit; nothing was written.

    Also raised when a number leaves the range Redis counts in: an ``incr`` amount
    outside signed 64 bits, or an increment whose result would overflow; and, naming
    the key, when a value read back is longer than ``max_value_size`` (planted in
    Redis by something else): it is not decoded.
    """


class ConflictError(_KeyedError):
    """An optimistic edit of ``key`` kept losing its race until ``edit_timeout`` (or the
    ``edit_retries`` cap) ran out; it wrote nothing."""


class HeadersSentError(HashSessionError, RuntimeError):
    """A session step needs a ``Set-Cookie`` the response can no longer carry.

    Raised once the response headers have gone out (a streamed body, a Tornado
    ``flush()``) by a step that would give the browser a new id: the first write
    of a session that does not exist yet, ``regenerate()``, ``login()``, or an
    adapter's own cookie change (Flask's ``permanent``, Django's ``set_expiry()``).
    It is raised before anything is sent to Redis, so the session is as it was.
    ``operation`` names the step.
    """

    def __init__(self, operation: str, needs: str = "it needs") -> None:
        super().__init__(
            f"{operation} after the response headers were sent: {needs} a Set-Cookie"
            " header that can no longer be sent; nothing was written. Do it before the"
            " response starts (before start_response, the first flush, or the first"
            " chunk of a streamed body)"
        )
        self.operation = operation
