"""Property-based tests of cookie parsing, signing and id handling (issue 13, item 4).

Hypothesis throws generated input at the pure functions (cookie header parsing,
signatures, ids, the loopback rule) and, against a real redis-server, at a store
opening sessions from arbitrary ``Cookie`` headers: no exception escapes, and an
input that cannot be a valid cookie never costs a Redis command (counted on the wire
with ``counted``). The example counts add up to more than 10,000 per run
(``EXAMPLES`` below); the pure ones take a few thousand a second.
"""

from __future__ import annotations

import string
from collections.abc import Callable
from typing import Any

import pytest

hypothesis = pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, assume, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from conftest import Counted  # noqa: E402
from hashsession import SessionStore  # noqa: E402
from hashsession.cookies import CookiePolicy, Signer, is_plain_local  # noqa: E402
from hashsession.ids import ID_LENGTH, is_native_id, new_id  # noqa: E402
from hashsession.scripts import OPEN  # noqa: E402

#: Examples per test; the total is asserted below to stay over 10,000.
EXAMPLES = {
    "header_parsing": 2000,
    "sign_round_trip": 1000,
    "rotation": 1000,
    "tampering": 1500,
    "unsign_anything": 2000,
    "ids": 1000,
    "loopback": 1000,
    "store_garbage": 1500,
    "store_valid_among_garbage": 300,
    "store_unsigned": 800,
}


def test_the_suite_runs_over_ten_thousand_examples() -> None:
    assert sum(EXAMPLES.values()) >= 10_000


def _settings(name: str, **extra: Any) -> Callable[[Any], Any]:
    return settings(
        max_examples=EXAMPLES[name],
        deadline=None,
        database=None,  # nothing written to .hypothesis/ in the work tree
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        **extra,
    )


# Text that looks like what a Cookie header may carry, and bits of real cookies in it.
_COOKIE_CHARS = string.ascii_letters + string.digits + "=;, \t\"'.-_~!#$%&*+/:<>?@[]^`{|}\\"
_header_text = st.one_of(
    st.text(max_size=120),  # anything, control characters and non-ASCII included
    st.text(alphabet=_COOKIE_CHARS, max_size=120),
    st.lists(
        st.tuples(
            st.sampled_from(["session", "Session", " session", "sid", "", "session "]),
            st.sampled_from(["=", "==", ""]),
            st.text(alphabet=_COOKIE_CHARS, max_size=60),
        ).map("".join),
        max_size=4,
    ).map("; ".join),
)
_SIGNATURE_CHARS = string.ascii_letters + string.digits + "-_"


# --------------------------------------------------------------------------- parsing


@_settings("header_parsing")
@given(header=st.one_of(st.none(), _header_text), max_length=st.integers(64, 512))
def test_header_parsing_never_raises_and_bounds_what_it_returns(
    header: str | None, max_length: int
) -> None:
    policy = CookiePolicy(max_length=max_length)
    values = policy.values_from_header(header)
    for value in values:
        assert value and len(value) <= max_length
        assert ";" not in value
        assert value == value.strip()
    if header is None or "session" not in header:
        assert values == []


# --------------------------------------------------------------------------- signing

_keys = st.lists(st.binary(min_size=1, max_size=48), min_size=1, max_size=4)


@_settings("sign_round_trip")
@given(value=st.text(max_size=200), keys=_keys)
def test_every_signed_value_verifies_with_the_newest_key(value: str, keys: list[bytes]) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return  # lone surrogates: nothing signs them (ids are ASCII)
    signer = Signer(keys)
    signed = signer.sign(value)
    assert signer.verify(signed) == (value, 0)
    assert signer.unsign(signed) == value


@_settings("rotation")
@given(value=st.text(alphabet=_SIGNATURE_CHARS, min_size=1, max_size=80), keys=_keys)
def test_an_older_key_verifies_and_says_which(value: str, keys: list[bytes]) -> None:
    newest = b"the newest key " + bytes(len(keys))
    assume(newest not in keys)
    signed = Signer([keys[-1]]).sign(value)
    found = Signer([newest, *keys]).verify(signed)
    assert found is not None and found[0] == value
    assert found[1] == 1 + keys.index(keys[-1])  # the first key equal to the signing one
    assert Signer([newest]).verify(signed) is None


@_settings("tampering")
@given(
    value=st.text(alphabet=_SIGNATURE_CHARS + ".", min_size=1, max_size=60),
    position=st.integers(min_value=0),
    replacement=st.characters(),
    how=st.sampled_from(["replace", "insert", "delete", "truncate", "append"]),
)
def test_any_change_to_a_signed_value_is_refused(
    value: str, position: int, replacement: str, how: str
) -> None:
    signer = Signer([b"the key"])
    signed = signer.sign(value)
    at = position % len(signed)
    if how == "replace":
        changed = signed[:at] + replacement + signed[at + 1 :]
    elif how == "insert":
        changed = signed[:at] + replacement + signed[at:]
    elif how == "delete":
        changed = signed[:at] + signed[at + 1 :]
    elif how == "truncate":
        changed = signed[:at]
    else:
        changed = signed + replacement
    if changed == signed:
        return
    assert signer.unsign(changed) is None
    assert signer.verify(changed) is None


@_settings("unsign_anything")
@given(text=st.one_of(st.text(max_size=120), _header_text))
def test_unsigning_anything_never_raises_and_never_forges(text: str) -> None:
    signer = Signer([b"k1", b"k0"])
    assert signer.verify(text) is None  # a random text never carries a valid signature
    assert signer.unsign(text) is None


# --------------------------------------------------------------------------- ids


@_settings("ids")
@given(text=st.text(max_size=80), tag=st.text(alphabet=_SIGNATURE_CHARS, min_size=4, max_size=4))
def test_ids_have_one_exact_shape(text: str, tag: str) -> None:
    made = new_id(tag)
    assert is_native_id(made) and made.startswith(tag) and len(made) == ID_LENGTH
    expected = len(text) == ID_LENGTH and all(c in _SIGNATURE_CHARS for c in text)
    assert is_native_id(text) is expected


@_settings("loopback")
@given(
    scheme=st.one_of(st.none(), st.sampled_from(["http", "https", "HTTP", "ws", "wss"]), st.text()),
    host=st.one_of(
        st.none(),
        st.text(max_size=60),
        st.builds(
            "{}:{}".format,
            st.sampled_from(["localhost", "127.0.0.1", "[::1]", "example.com", "10.0.0.1"]),
            st.integers(0, 70000),
        ),
    ),
)
def test_the_loopback_rule_never_raises(scheme: str | None, host: str | None) -> None:
    local = is_plain_local(scheme, host)
    assert isinstance(local, bool)
    if scheme is None or scheme.lower() not in ("http", "ws") or not host:
        assert not local


# --------------------------------------------------------------------------- a real server


@pytest.fixture
def signed_store(counted: Counted, make_store: Callable[..., SessionStore]) -> SessionStore:
    counted.client.script_load(OPEN.source)
    return make_store(redis=counted.client, secret_keys=["newest", "older"])


def _use(store: SessionStore, header: str | None) -> tuple[Any, list[tuple[str, str]]]:
    session = store.open(header)
    value = session.get("anything")
    "anything" in session  # noqa: B015 - a second read: one more command if it lived
    return value, store.response_headers(session)


@_settings("store_garbage")
@given(header=st.one_of(st.none(), _header_text))
def test_a_store_sends_nothing_to_redis_for_a_garbage_cookie(
    signed_store: SessionStore, counted: Counted, header: str | None
) -> None:
    with counted.expect(0):
        value, headers = _use(signed_store, header)
    assert value is None
    # A cookie that does not verify is left alone: no Set-Cookie, not even a deletion.
    assert [v for k, v in headers if k == "Set-Cookie"] == []


@_settings("store_valid_among_garbage")
@given(before=_header_text, after=_header_text, older=st.booleans())
def test_a_valid_cookie_among_garbage_costs_one_command_per_read(
    signed_store: SessionStore, counted: Counted, before: str, after: str, older: bool
) -> None:
    session_id = signed_store.config.new_id()
    signer = Signer(["older"]) if older else signed_store.config.signer
    assert signer is not None
    header = f"{before}; session={signer.sign(session_id)}; {after}"
    with counted.expect(1):  # the session does not exist: OPEN says so, then it is NEW
        value, _ = _use(signed_store, header)
    assert value is None


@pytest.fixture
def unsigned_store(counted: Counted, make_store: Callable[..., SessionStore]) -> SessionStore:
    counted.client.script_load(OPEN.source)
    return make_store(redis=counted.client)


@_settings("store_unsigned")
@given(
    value=st.one_of(
        st.text(alphabet=_COOKIE_CHARS.replace(";", ""), max_size=80),
        st.builds(lambda: new_id()),  # a well-formed id: one command (OPEN), found missing
        st.builds(lambda: new_id()[:-1] + "!"),
    )
)
def test_an_unsigned_store_sends_nothing_for_a_value_that_is_not_an_id(
    unsigned_store: SessionStore, counted: Counted, value: str
) -> None:
    header = f"session={value}"
    values = unsigned_store.cookie.values_from_header(header)
    expected = 1 if any(is_native_id(v) for v in values) else 0
    with counted.expect(expected):
        session = unsigned_store.open(header)
        assert session.get("k") is None
