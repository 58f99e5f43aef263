"""hashsession: live Redis sessions, one hash per session."""

from hashsession.cookies import CookiePolicy
from hashsession.errors import (
    BackendError,
    CodecError,
    ConfigurationError,
    ConflictError,
    DecodeError,
    EncodeError,
    HashSessionError,
    HeadersSentError,
    InvalidKeyError,
    LimitExceededError,
    NotReplicatedError,
    ValueTypeError,
)
from hashsession.protocol import MISSING
from hashsession.session import Session
from hashsession.store import SessionStore
from hashsession.users import SessionInfo

__version__ = "0.1.0"

__all__ = [
    "MISSING",
    "BackendError",
    "CodecError",
    "ConfigurationError",
    "ConflictError",
    "CookiePolicy",
    "DecodeError",
    "EncodeError",
    "HashSessionError",
    "HeadersSentError",
    "InvalidKeyError",
    "LimitExceededError",
    "NotReplicatedError",
    "Session",
    "SessionInfo",
    "SessionStore",
    "ValueTypeError",
]
