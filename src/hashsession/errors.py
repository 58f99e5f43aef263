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
     ├── ConflictError                     an optimistic edit kept losing races
     └── HeadersSentError (RuntimeError)   a step needs a cookie, but the headers are out

Errors about one session key carry it as ``.key``; ``ConfigurationError`` has ``.setting``;
``HeadersSentError`` has ``.operation``.

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
    """An optimistic edit of ``key`` lost the race more times than allowed."""


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
