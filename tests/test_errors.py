"""The error tree: what is raised, what it names, and that failures are never silent."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from typing import Any

import pytest
import redis
import redis.exceptions

import hashsession
from hashsession import (
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
    Session,
    SessionStore,
    ValueTypeError,
)
from hashsession.embedded import EmbeddedRedis
from hashsession.topology import sync_client

pytestmark = pytest.mark.all_topologies

StoreFactory = Callable[..., SessionStore]


def cookie_of(store: SessionStore, session: Session) -> str:
    cookies = [v for k, v in store.response_headers(session) if k == "Set-Cookie"]
    assert len(cookies) == 1, store.response_headers(session)
    return cookies[0].split(";", 1)[0]


@pytest.fixture
def existing(store: SessionStore) -> str:
    s = store.open(None)
    s.update(n=1, name="ann", lst=[1], f=1.5)
    return cookie_of(store, s)


# --------------------------------------------------------------------------- the tree


@pytest.mark.parametrize(
    ("cls", "bases"),
    [
        (ConfigurationError, (HashSessionError, ValueError)),
        (BackendError, (HashSessionError,)),
        (InvalidKeyError, (HashSessionError, TypeError, ValueError)),
        (CodecError, (HashSessionError, ValueError)),
        (EncodeError, (CodecError,)),
        (DecodeError, (CodecError,)),
        (ValueTypeError, (HashSessionError, TypeError)),
        (LimitExceededError, (HashSessionError, ValueError)),
        (ConflictError, (HashSessionError,)),
        (HeadersSentError, (HashSessionError, RuntimeError)),
    ],
)
def test_every_error_derives_from_the_root(cls: type, bases: tuple[type, ...]) -> None:
    for base in bases:
        assert issubclass(cls, base)
    assert issubclass(cls, HashSessionError)


def test_every_exported_error_is_in_the_tree() -> None:
    errors = [
        getattr(hashsession, name)
        for name in hashsession.__all__
        if isinstance(getattr(hashsession, name), type)
        and issubclass(getattr(hashsession, name), BaseException)
    ]
    assert len(errors) >= 10
    assert all(issubclass(e, HashSessionError) for e in errors)


# --------------------------------------------------------------------------- invalid keys


BAD_KEYS: list[Any] = [1, b"bytes", None, ("t",), 1.5]
OPS: dict[str, Callable[[Session, Any], Any]] = {
    "getitem": lambda s, k: s[k],
    "get": lambda s, k: s.get(k),
    "setitem": lambda s, k: s.__setitem__(k, 1),
    "set": lambda s, k: s.set(k, 1),
    "delitem": lambda s, k: s.__delitem__(k),
    "delete": lambda s, k: s.delete(k),
    "update": lambda s, k: s.update({k: 1}),
    "update_pairs": lambda s, k: s.update([(k, 1)]),
    "incr": lambda s, k: s.incr(k),
    "incr_float": lambda s, k: s.incr_float(k, 1.0),
    "setdefault": lambda s, k: s.setdefault(k, 1),
    "pop": lambda s, k: s.pop(k, None),
    "get_many": lambda s, k: s.get_many("n", k),
    "cas": lambda s, k: s.compare_and_set({}, {k: 1}),
    "apply": lambda s, k: s.apply(k, lambda v: v),
}


@pytest.mark.parametrize("op", list(OPS.values()), ids=list(OPS))
def test_non_str_keys_are_refused(
    store: SessionStore, existing: str, redis_client: redis.Redis, op: Callable[..., Any]
) -> None:
    before = redis_client.dump(store.open(existing).core.key)
    for bad in BAD_KEYS:
        for s in (store.open(existing), store.open(None)):
            with pytest.raises(InvalidKeyError) as info:
                op(s, bad)
            assert info.value.key == bad
            assert isinstance(info.value, HashSessionError)
    assert redis_client.dbsize() == 1
    assert redis_client.dump(store.open(existing).core.key) == before


@pytest.mark.parametrize("op", list(OPS.values()), ids=list(OPS))
def test_reserved_keys_are_refused(
    store: SessionStore, existing: str, redis_client: redis.Redis, op: Callable[..., Any]
) -> None:
    key = store.open(existing).core.key
    created = redis_client.hget(key, "\x00c")
    for reserved in ("\x00c", "\x00t", "\x00", "\x00user"):
        with pytest.raises(InvalidKeyError) as info:
            op(store.open(existing), reserved)
        assert info.value.key == reserved
    assert redis_client.hget(key, "\x00c") == created
    assert not redis_client.hexists(key, "\x00user")
    assert not redis_client.hexists(key, "\x00t")


def test_str_subclass_keys_work(store: SessionStore) -> None:
    class Name(str):
        pass

    s = store.open(None)
    s[Name("k")] = 1
    assert s["k"] == 1
    assert list(s) == ["k"]


def test_keys_with_odd_but_valid_characters(store: SessionStore, existing: str) -> None:
    s = store.open(existing)
    for key in ("", " ", "a\x00b", "ключ", "emoji 🎉", "with\nnewline", "x" * 200):
        s[key] = key
    again = store.open(existing)
    for key in ("", " ", "a\x00b", "ключ", "emoji 🎉", "with\nnewline", "x" * 200):
        assert again[key] == key


# --------------------------------------------------------------------------- value types


def test_incr_on_a_non_number(
    store: SessionStore, existing: str, redis_client: redis.Redis
) -> None:
    key = store.open(existing).core.key
    for first in (True, False):
        s = store.open(existing)
        if not first:
            s.get("n")
        for field in ("name", "lst", "f"):
            with pytest.raises(ValueTypeError) as info:
                s.incr(field)
            assert info.value.key == field
            assert field in str(info.value)
            assert isinstance(info.value, TypeError)
        for field in ("name", "lst"):
            with pytest.raises(ValueTypeError) as info:
                s.incr_float(field, 1)
            assert info.value.key == field
    assert redis_client.hget(key, "name") == b'"ann"'
    assert redis_client.hget(key, "f") == b"1.5"
    assert store.open(existing).to_dict() == {"n": 1, "name": "ann", "lst": [1], "f": 1.5}


def test_augmented_assignment_on_a_string_is_a_plain_set(
    store: SessionStore, existing: str
) -> None:
    s = store.open(existing)
    s["name"] += "!"
    s["lst"] += [2]
    assert store.open(existing)["name"] == "ann!"
    assert store.open(existing)["lst"] == [1, 2]


# --------------------------------------------------------------------------- backend failures


@pytest.fixture
def doomed(make_server: Callable[..., EmbeddedRedis]) -> Iterator[tuple[EmbeddedRedis, Any]]:
    server = make_server()
    store = SessionStore(redis=server.url, ttl=100)
    yield server, store
    store.close()


def _assert_backend_error(info: pytest.ExceptionInfo[BackendError]) -> None:
    assert isinstance(info.value, HashSessionError)
    assert isinstance(info.value.__cause__, redis.exceptions.RedisError)


@pytest.mark.parametrize(
    "op",
    [
        lambda s: s.__setitem__("x", 1),
        lambda s: s.update(x=1, y=2),
        lambda s: s.incr("x"),
        lambda s: s.setdefault("x", 1),
        lambda s: s.compare_and_set({}, {"x": 1}),
        lambda s: s.pop("a"),
        lambda s: s.__delitem__("a"),
        lambda s: s.clear(),
        lambda s: s.touch(10),
        lambda s: s.regenerate(),
        lambda s: s.invalidate(),
        lambda s: s["a"],
        lambda s: s.to_dict(),
    ],
    ids=[
        "setitem",
        "update",
        "incr",
        "setdefault",
        "cas",
        "pop",
        "delitem",
        "clear",
        "touch",
        "regenerate",
        "invalidate",
        "getitem",
        "to_dict",
    ],
)
def test_stopped_redis_raises_backend_error(
    doomed: tuple[EmbeddedRedis, SessionStore], op: Callable[[Session], Any]
) -> None:
    server, store = doomed
    s = store.open(None)
    s["a"] = 1
    cookie = cookie_of(store, s)
    live = store.open(cookie)
    live.get("a")  # live in this request
    server.stop()
    for session in (store.open(cookie), live):
        with pytest.raises(BackendError) as info:
            op(session)
        _assert_backend_error(info)


def test_stopped_redis_new_session_write_fails_loudly_and_sends_no_cookie(
    doomed: tuple[EmbeddedRedis, SessionStore],
) -> None:
    server, store = doomed
    server.stop()
    s = store.open(None)
    with pytest.raises(BackendError) as info:
        s["a"] = 1
    _assert_backend_error(info)
    assert isinstance(info.value.__cause__, redis.exceptions.ConnectionError)
    assert "Redis failed on a new session:" in str(info.value)
    assert s.id is None
    assert all(name != "Set-Cookie" for name, _ in store.response_headers(s))
    with pytest.raises(BackendError):
        s.incr("n")
    with pytest.raises(BackendError):
        s.update(a=1)
    # reads of a session that was never stored need no Redis, so they still work
    assert s.get("a") is None


def test_backend_error_on_a_wrong_type_key(
    store: SessionStore, existing: str, redis_client: redis.Redis
) -> None:
    key = store.open(existing).core.key
    redis_client.delete(key)
    redis_client.set(key, "a string, not a hash")  # someone else's key in the way
    s = store.open(existing)
    with pytest.raises(BackendError) as info:
        s["x"] = 1
    _assert_backend_error(info)
    assert redis_client.get(key) == b"a string, not a hash"


# --------------------------------------------------------------------------- configuration


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"ttl": 0}, "ttl"),
        ({"ttl": -5}, "ttl"),
        ({"ttl": "x"}, "ttl"),
        ({"ttl": None}, "ttl"),
        ({"ttl": True}, "ttl"),
        ({"ttl": timedelta(0)}, "ttl"),
        ({"absolute_ttl": 0}, "absolute_ttl"),
        ({"absolute_ttl": "1d"}, "absolute_ttl"),
        ({"prefix": None}, "prefix"),
        ({"prefix": 5}, "prefix"),
        ({"prefix": "hs\x00"}, "prefix"),
        ({"codec": "nope"}, "codec"),
        ({"codec": object()}, "codec"),
        ({"key_layout": "x"}, "key_layout"),
        ({"cookie": {"samesite": "x"}}, "samesite"),
        ({"cookie": {"nope": 1}}, "cookie"),
        ({"cookie": "session"}, "cookie"),
        ({"cookie": {"samesite": "None", "secure": False}}, "samesite"),
        ({"max_keys": 0}, "max_keys"),
        ({"max_keys": "10"}, "max_keys"),
        ({"max_key_length": 0}, "max_key_length"),
        ({"max_value_size": 0}, "max_value_size"),
        ({"edit_retries": 0}, "edit_retries"),
        ({"edit_retries": 2.5}, "edit_retries"),
        ({"edit_timeout": 0}, "edit_timeout"),
        ({"edit_timeout": -1}, "edit_timeout"),
        ({"edit_timeout": float("nan")}, "edit_timeout"),
        ({"edit_timeout": "5"}, "edit_timeout"),
        ({"edit_timeout": True}, "edit_timeout"),
        ({"edit_timeout": timedelta(0)}, "edit_timeout"),
        ({"edit_timeout": 7200}, "edit_timeout"),
        ({"secret_keys": "single-string"}, "secret_keys"),
        ({"secret_keys": []}, "secret_keys"),
        ({"secret_keys": [""]}, "secret_keys"),
        ({"secret_keys": [1]}, "secret_keys"),
        ({"id_factory": "not callable", "key_layout": "raw"}, "id_factory"),
        ({"id_factory": lambda: "x"}, "id_factory"),
        ({"redis": 42}, "redis"),
        ({"redis": "not-a-url://x"}, "redis"),
    ],
)
def test_bad_settings_raise_configuration_error(
    redis_url: str, kwargs: dict[str, Any], setting: str
) -> None:
    kwargs.setdefault("redis", redis_url)
    with pytest.raises(ConfigurationError) as info:
        SessionStore(**kwargs)
    assert setting in info.value.setting, info.value.setting
    assert setting.split(".")[-1] in str(info.value)
    assert isinstance(info.value, HashSessionError)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("how", ["client", "url"])
def test_decode_responses_is_refused(redis_url: str, how: str) -> None:
    """Codecs need the stored bytes; a client that decodes replies must be refused up front."""
    decoding = redis_url + ("&" if "?" in redis_url else "?") + "decode_responses=True"
    target: Any = sync_client(decoding) if how == "client" else decoding
    try:
        with pytest.raises(ConfigurationError) as info:
            SessionStore(redis=target, codec="pickle")
        assert info.value.setting == "redis"
    finally:
        if how == "client":
            target.close()


def test_good_settings_are_accepted(redis_url: str) -> None:
    store = SessionStore(
        redis=redis_url,
        prefix="",
        ttl=timedelta(hours=1),
        absolute_ttl=timedelta(days=1),
        secret_keys=["a", b"b"],
        codec="json",
        cookie={"name": "sid", "secure": True, "samesite": "None"},
        max_key_length=1,
        max_value_size=1,
        max_keys=3000,
        key_layout="raw",
        adopt_unknown_ids=True,
        refresh_cookie=False,
        edit_retries=1,
        edit_timeout=timedelta(milliseconds=1),
    )
    store.close()


def test_configuration_error_is_raised_before_any_redis_command(
    make_server: Callable[..., EmbeddedRedis],
) -> None:
    server = make_server()
    url = server.url
    server.stop()  # nothing listens: a store that talked to Redis would fail differently
    with pytest.raises(ConfigurationError):
        SessionStore(redis=url, ttl=0)
    SessionStore(redis=url).close()  # creating a store needs no connection either


# --------------------------------------------------------------------------- conflicts


def test_conflict_error_names_the_key(make_store: StoreFactory) -> None:
    store = make_store(edit_retries=4)
    s = store.open(None)
    s["cart"] = []
    cookie = cookie_of(store, s)
    other = store.open(cookie)
    writes = 0

    class Meddler:
        """Each time it is iterated (the block, then every replay) another request writes."""

        def __iter__(self) -> Iterator[int]:
            nonlocal writes
            writes += 1
            other["cart"] = [-writes]
            yield writes

    with pytest.raises(ConflictError) as info, store.open(cookie).edit("cart", []) as cart:
        cart.extend(Meddler())
    assert info.value.key == "cart"
    assert isinstance(info.value, HashSessionError)
    assert 4 <= writes <= 5  # edit_retries attempts (a last replay may be made), no more
    assert store.open(cookie)["cart"] == [-writes]  # the losing edit wrote nothing
