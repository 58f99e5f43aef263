"""The one tree of errors hashsession raises.

::

    HashSessionError
     ├── ConfigurationError (ValueError)   a setting is wrong; at start-up; names it
     ├── BackendError                      Redis failed; the redis-py error is __cause__
     │    └── NotReplicatedError           too few replicas confirmed a critical write
     ├── InvalidKeyError (TypeError, ValueError)   a key is not a str or is reserved
     ├── CodecError (ValueError)           a value could not be encoded or decoded
     │    ├── EncodeError
     │    └── DecodeError
     ├── ValueTypeError (TypeError)        an increment met a value that is not a number
     ├── LimitExceededError (ValueError)   a value, key or key count is over its limit
     └── ConflictError                     an optimistic edit kept losing races until edit_timeout

Errors about one session key carry it as ``.key``; ``ConfigurationError`` has ``.setting``.

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
    def __init__(self, key: object, message: str) -> None:
        super().__init__(f"session key {key!r}: {message}")
        self.key = key


class InvalidKeyError(_KeyedError, TypeError, ValueError):
    """A session key is not a ``str``, is too long, or starts with the reserved NUL byte."""


class CodecError(_KeyedError, ValueError):
    """A value could not be turned into bytes, or back. ``key`` names it."""


class EncodeError(CodecError):
    """The codec could not encode the value stored under ``key``."""


class DecodeError(CodecError):
    """The bytes stored under ``key`` are not something the codec can read."""


class ValueTypeError(_KeyedError, TypeError):
    """An increment met a stored value that is not a number."""


class LimitExceededError(_KeyedError, ValueError):
    """A value, key or the number of keys is over the store's limit; nothing was written."""


class ConflictError(_KeyedError):
    """An optimistic edit of ``key`` kept losing its race until ``edit_timeout`` (or the
    ``edit_retries`` cap) ran out; it wrote nothing."""
