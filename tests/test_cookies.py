"""Tests for hashsession.cookies: signing, cookie policy validation, rendering and parsing."""

from __future__ import annotations

import base64
import email.utils
import hashlib
import hmac
import time
from datetime import timedelta
from typing import Any

import pytest

from hashsession.cookies import CookiePolicy, Signer, cookie_value_is_safe
from hashsession.errors import ConfigurationError

# --------------------------------------------------------------------------- Signer


def test_sign_unsign_round_trip() -> None:
    signer = Signer(["k1"])
    signed = signer.sign("abc123")
    assert signed.startswith("abc123.")
    assert signed != "abc123."
    assert signer.unsign(signed) == "abc123"


def test_sign_matches_documented_format() -> None:
    signer = Signer([b"secret"])
    digest = hmac.new(b"secret", b"value", hashlib.sha256).digest()
    sig = base64.urlsafe_b64encode(digest).rstrip(b"=").decode()
    assert signer.sign("value") == f"value.{sig}"
    assert "=" not in sig and len(sig) == 43


def test_str_key_is_utf8_encoded() -> None:
    assert Signer(["clé"]).sign("v") == Signer(["clé".encode()]).sign("v")


def test_value_with_dots_splits_on_last_dot() -> None:
    signer = Signer(["k"])
    assert signer.unsign(signer.sign("a.b.c")) == "a.b.c"
    assert signer.unsign(signer.sign("")) == ""


@pytest.mark.parametrize("position", [0, 3, -1, -20])
def test_tampered_signed_value_is_rejected(position: int) -> None:
    signer = Signer(["k"])
    signed = signer.sign("abcdef")
    chars = list(signed)
    chars[position] = "A" if chars[position] != "A" else "B"
    assert signer.unsign("".join(chars)) is None


def test_tampered_value_keeps_no_signature() -> None:
    signer = Signer(["k"])
    value, _, sig = signer.sign("user1").rpartition(".")
    assert signer.unsign(f"user2.{sig}") is None
    assert signer.unsign(f"{value}x.{sig}") is None


def test_non_canonical_base64_spelling_rejected() -> None:
    signer = Signer(["k"])
    signed = signer.sign("v")
    # Standard-alphabet characters would decode leniently; they must not verify.
    swapped = signed.replace("-", "+").replace("_", "/")
    if swapped != signed:
        assert signer.unsign(swapped) is None
    assert signer.unsign(signed + "=") is None


def test_signature_from_other_key_rejected() -> None:
    assert Signer(["other"]).unsign(Signer(["k"]).sign("v")) is None


def test_rotation_old_key_still_verifies() -> None:
    old = Signer(["old"])
    signed_with_old = old.sign("session-id")
    rotated = Signer(["new", "old"])
    assert rotated.unsign(signed_with_old) == "session-id"


def test_rotation_signs_with_first_key() -> None:
    rotated = Signer(["new", "old"])
    signed = rotated.sign("v")
    assert signed == Signer(["new"]).sign("v")
    assert signed != Signer(["old"]).sign("v")
    assert Signer(["new"]).unsign(signed) == "v"
    assert Signer(["old"]).unsign(signed) is None


def test_removed_key_no_longer_verifies() -> None:
    signed_with_old = Signer(["old"]).sign("v")
    assert Signer(["newer", "new"]).unsign(signed_with_old) is None


@pytest.mark.parametrize(
    "garbage",
    [
        "",
        ".",
        "a.",
        "a.b",
        "a.!!!",
        "..",
        "noseparator",
        "a." + "!" * 43,
        "a." + "A" * 42,
        "a." + "A" * 44,
        "a." + "é" * 43,
        "\ud800." + "A" * 43,
        "x" * 100_000,
        "x" * 100_000 + "." + "y" * 100_000,
    ],
)
def test_unsign_garbage_returns_none(garbage: str) -> None:
    assert Signer(["k"]).unsign(garbage) is None


@pytest.mark.parametrize("keys", [[], [""], [b""], ["good", ""], ()])
def test_empty_keys_rejected(keys: Any) -> None:
    with pytest.raises(ConfigurationError) as info:
        Signer(keys)
    assert info.value.setting == "secret_keys"


@pytest.mark.parametrize("keys", ["a-single-string", b"single-bytes", [123], [None]])
def test_bad_key_types_rejected(keys: Any) -> None:
    with pytest.raises(ConfigurationError) as info:
        Signer(keys)
    assert info.value.setting == "secret_keys"


def test_signer_repr_hides_keys() -> None:
    assert "topsecret" not in repr(Signer(["topsecret"]))


try:
    from hypothesis import given
    from hypothesis import strategies as st
except ImportError:  # pragma: no cover - hypothesis is a dev-only extra
    HAVE_HYPOTHESIS = False
else:
    HAVE_HYPOTHESIS = True

if HAVE_HYPOTHESIS:
    _safe_text = st.text(
        alphabet=st.sampled_from([chr(c) for c in range(0x21, 0x7F) if chr(c) not in '",;\\']),
        max_size=200,
    )

    @given(value=_safe_text, key=st.binary(min_size=1, max_size=64))
    def test_property_round_trip(value: str, key: bytes) -> None:
        assert cookie_value_is_safe(value)
        signer = Signer([key])
        signed = signer.sign(value)
        assert cookie_value_is_safe(signed)
        assert signer.unsign(signed) == value

else:

    @pytest.mark.skip(reason="hypothesis is not installed")
    def test_property_round_trip() -> None:
        pass


# --------------------------------------------------------------------------- cookie_value_is_safe


@pytest.mark.parametrize("value", ["", "abc", "a.b-c_d~!#$%&'()*+/:<=>?@[]^`{|}", "x" * 5000])
def test_cookie_value_is_safe_accepts(value: str) -> None:
    assert cookie_value_is_safe(value)


@pytest.mark.parametrize("value", ["a b", 'a"b', "a,b", "a;b", "a\\b", "a\x00", "a\x7f", "é", "\t"])
def test_cookie_value_is_safe_rejects(value: str) -> None:
    assert not cookie_value_is_safe(value)


# --------------------------------------------------------------------------- set_cookie / delete


def test_set_cookie_defaults() -> None:
    policy = CookiePolicy()
    assert policy.set_cookie("abc") == "session=abc; Path=/; Secure; HttpOnly; SameSite=Lax"
    # Plain http to a loopback host (development, test clients): no Secure.
    local = policy.set_cookie("abc", plain_local=True)
    assert local == "session=abc; Path=/; HttpOnly; SameSite=Lax"


def test_set_cookie_every_option() -> None:
    policy = CookiePolicy(
        name="sid",
        path="/app",
        domain="example.com",
        secure=True,
        httponly=True,
        samesite="Strict",
        max_age=3600,
    )
    before = time.time()
    header = policy.set_cookie("v.sig")
    after = time.time()
    parts = header.split("; ")
    assert parts[0] == "sid=v.sig"
    assert parts[1] == "Path=/app"
    assert parts[2] == "Domain=example.com"
    assert parts[3] == "Max-Age=3600"
    assert parts[4].startswith("Expires=")
    assert parts[4].endswith(" GMT")
    expires = email.utils.parsedate_to_datetime(parts[4][len("Expires=") :]).timestamp()
    assert int(before) + 3600 - 1 <= expires <= after + 3600 + 1
    assert parts[5:] == ["Secure", "HttpOnly", "SameSite=Strict"]


def test_set_cookie_minimal_attributes() -> None:
    policy = CookiePolicy(secure=False, httponly=False, samesite=None)
    assert policy.set_cookie("x") == "session=x; Path=/"


def test_set_cookie_samesite_none_secure() -> None:
    policy = CookiePolicy(secure=True, samesite="None")
    assert policy.set_cookie("x") == "session=x; Path=/; Secure; HttpOnly; SameSite=None"


def test_set_cookie_max_age_zero() -> None:
    header = CookiePolicy(max_age=0).set_cookie("x")
    assert "; Max-Age=0; Expires=" in header


def test_set_cookie_host_prefix() -> None:
    policy = CookiePolicy(host_prefix=True, secure=True)
    assert policy.cookie_name == "__Host-session"
    assert policy.set_cookie("x") == "__Host-session=x; Path=/; Secure; HttpOnly; SameSite=Lax"


def test_cookie_name_without_prefix() -> None:
    assert CookiePolicy(name="sid").cookie_name == "sid"


@pytest.mark.parametrize("value", ["a b", "a;b", 'a"b', "a,b", "a\\b", "a\r\nSet-Cookie: x=y", "é"])
def test_set_cookie_rejects_unsafe_value(value: str) -> None:
    with pytest.raises(ValueError):
        CookiePolicy().set_cookie(value)


def test_delete_cookie_defaults() -> None:
    assert CookiePolicy().delete_cookie(plain_local=True) == (
        "session=; Path=/; Max-Age=0; Expires=Thu, 01 Jan 1970 00:00:00 GMT; HttpOnly; SameSite=Lax"
    )
    assert "; Secure; " in CookiePolicy().delete_cookie()


def test_delete_cookie_keeps_attributes_and_ignores_max_age() -> None:
    policy = CookiePolicy(
        name="sid", path="/app", domain="example.com", secure=True, samesite="Strict", max_age=99
    )
    assert policy.delete_cookie() == (
        "sid=; Path=/app; Domain=example.com; Max-Age=0; "
        "Expires=Thu, 01 Jan 1970 00:00:00 GMT; Secure; HttpOnly; SameSite=Strict"
    )


def test_delete_cookie_host_prefix() -> None:
    policy = CookiePolicy(host_prefix=True, secure=True)
    assert policy.delete_cookie().startswith("__Host-session=; Path=/; Max-Age=0; ")


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    ("kwargs", "setting"),
    [
        ({"name": ""}, "cookie.name"),
        ({"name": "a b"}, "cookie.name"),
        ({"name": "a=b"}, "cookie.name"),
        ({"name": "a;b"}, "cookie.name"),
        ({"name": "a,b"}, "cookie.name"),
        ({"name": "a\x01"}, "cookie.name"),
        ({"name": "a\tb"}, "cookie.name"),
        ({"name": "a(b)"}, "cookie.name"),
        ({"name": "sé"}, "cookie.name"),
        ({"name": 5}, "cookie.name"),
        ({"name": "__Secure-sid", "secure": False}, "cookie.name"),
        ({"name": "__Host-sid", "secure": True, "path": "/app"}, "cookie.name"),
        ({"path": ""}, "cookie.path"),
        ({"path": "app"}, "cookie.path"),
        ({"path": "/a;b"}, "cookie.path"),
        ({"path": "/a\nb"}, "cookie.path"),
        ({"path": None}, "cookie.path"),
        ({"domain": "a;b.com"}, "cookie.domain"),
        ({"domain": "a b.com"}, "cookie.domain"),
        ({"domain": "a.com\r\n"}, "cookie.domain"),
        ({"domain": ""}, "cookie.domain"),
        ({"domain": 1}, "cookie.domain"),
        ({"samesite": "lax"}, "cookie.samesite"),
        ({"samesite": "none"}, "cookie.samesite"),
        ({"samesite": "Off"}, "cookie.samesite"),
        ({"samesite": "None", "secure": False}, "cookie.samesite"),
        ({"host_prefix": True, "secure": False}, "cookie.host_prefix"),
        ({"host_prefix": True, "secure": True, "path": "/app"}, "cookie.host_prefix"),
        ({"host_prefix": True, "secure": True, "domain": "example.com"}, "cookie.host_prefix"),
        ({"secure": "yes"}, "cookie.secure"),
        ({"httponly": 1}, "cookie.httponly"),
        ({"host_prefix": "true"}, "cookie.host_prefix"),
        ({"max_age": -1}, "cookie.max_age"),
        ({"max_age": True}, "cookie.max_age"),
        ({"max_age": 1.5}, "cookie.max_age"),
        ({"max_age": "60"}, "cookie.max_age"),
        ({"max_age": timedelta(seconds=-5)}, "cookie.max_age"),
        ({"max_length": 63}, "cookie.max_length"),
        ({"max_length": True}, "cookie.max_length"),
        ({"max_length": 100.0}, "cookie.max_length"),
    ],
)
def test_validation_names_the_setting(kwargs: dict[str, Any], setting: str) -> None:
    with pytest.raises(ConfigurationError) as info:
        CookiePolicy(**kwargs)
    assert info.value.setting == setting
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": "sid!#$%&'*+-.^_`|~"},
        {"path": "/a/b"},
        {"domain": ".example.com"},
        {"samesite": "Strict"},
        {"samesite": None},
        {"samesite": "None", "secure": True},
        {"host_prefix": True, "secure": True},
        {"name": "__Host-sid", "secure": True},
        {"name": "__Secure-sid", "secure": True, "path": "/x"},
        {"max_age": 0},
        {"max_length": 64},
    ],
)
def test_valid_policies_accepted(kwargs: dict[str, Any]) -> None:
    CookiePolicy(**kwargs)


def test_max_age_timedelta_converted() -> None:
    policy = CookiePolicy(max_age=timedelta(hours=1, milliseconds=500))  # type: ignore[arg-type]
    assert policy.max_age == 3600
    assert type(policy.max_age) is int
    assert "Max-Age=3600" in policy.set_cookie("x")


def test_policy_is_frozen() -> None:
    policy = CookiePolicy()
    with pytest.raises(AttributeError):
        policy.name = "other"  # type: ignore[misc]


# --------------------------------------------------------------------------- values_from_header


@pytest.mark.parametrize("header", [None, "", "   ", "other=1", "sessionx=1", "xsession=1"])
def test_values_from_header_none_found(header: str | None) -> None:
    assert CookiePolicy().values_from_header(header) == []


def test_values_from_header_several_cookies() -> None:
    header = "a=1; session=abc; b=2"
    assert CookiePolicy().values_from_header(header) == ["abc"]


def test_values_from_header_duplicates_in_order() -> None:
    header = "session=first; other=x; session=second;session=third"
    assert CookiePolicy().values_from_header(header) == ["first", "second", "third"]


def test_values_from_header_quotes_stripped_once() -> None:
    header = 'session="abc"; session=""xyz""; session="'
    assert CookiePolicy().values_from_header(header) == ["abc", '"xyz"', '"']


def test_values_from_header_whitespace() -> None:
    header = '  session  =  abc  ;\tsession=\t"def" '
    assert CookiePolicy().values_from_header(header) == ["abc", "def"]


def test_values_from_header_value_with_equals() -> None:
    assert CookiePolicy().values_from_header("session=a=b==") == ["a=b=="]


def test_values_from_header_junk_parts() -> None:
    header = ';; =x; noequals; session; =; session=ok; ;session=;=session; session="" ;'
    assert CookiePolicy().values_from_header(header) == ["ok"]


def test_values_from_header_is_case_sensitive() -> None:
    assert CookiePolicy().values_from_header("Session=a; SESSION=b; session=c") == ["c"]


def test_values_from_header_oversized_values_ignored() -> None:
    policy = CookiePolicy(max_length=64)
    ok = "a" * 64
    header = f'session={"b" * 65}; session={ok}; session="{"c" * 65}"'
    assert policy.values_from_header(header) == [ok]


def test_values_from_header_host_prefix_name() -> None:
    policy = CookiePolicy(host_prefix=True, secure=True)
    header = "session=plain; __Host-session=real; __host-session=wrongcase"
    assert policy.values_from_header(header) == ["real"]


def test_values_from_header_round_trip_with_set_cookie() -> None:
    policy = CookiePolicy(name="sid")
    signer = Signer(["k"])
    signed = signer.sign("abc")
    set_value = policy.set_cookie(signed).split(";", 1)[0]
    [value] = policy.values_from_header(f"other=1; {set_value}")
    assert signer.unsign(value) == "abc"


# --------------------------------------------------------------------------- coerce


def test_coerce_none_gives_defaults() -> None:
    assert CookiePolicy.coerce(None) == CookiePolicy()


def test_coerce_policy_returned_as_is() -> None:
    policy = CookiePolicy(name="sid")
    assert CookiePolicy.coerce(policy) is policy


def test_coerce_from_dict() -> None:
    policy = CookiePolicy.coerce({"name": "sid", "secure": True, "max_age": 60})
    assert policy == CookiePolicy(name="sid", secure=True, max_age=60)
    assert policy.set_cookie("x").startswith("sid=x; Path=/; Max-Age=60; ")


def test_coerce_dict_is_validated() -> None:
    with pytest.raises(ConfigurationError) as info:
        CookiePolicy.coerce({"samesite": "None", "secure": False})
    assert info.value.setting == "cookie.samesite"


def test_coerce_unknown_key() -> None:
    with pytest.raises(ConfigurationError) as info:
        CookiePolicy.coerce({"name": "sid", "expires": 10})
    assert info.value.setting == "cookie"
    assert "unknown setting" in str(info.value)
    assert "expires" in str(info.value)


def test_coerce_wrong_type() -> None:
    with pytest.raises(ConfigurationError) as info:
        CookiePolicy.coerce("session")  # type: ignore[arg-type]
    assert info.value.setting == "cookie"


def test_a_leading_dot_in_the_domain_is_left_out() -> None:
    policy = CookiePolicy(domain=".example.com")
    assert "; Domain=example.com;" in policy.set_cookie("v")
    assert "; Domain=example.com;" in policy.delete_cookie()
