"""hashsession.django: the Django session engine, through Django's test client and auth.

Django is configured by ``django_setup.configure()`` (shared with Django's own session
tests in ``suites/test_django_suite.py``): an in-memory SQLite database for
``django.contrib.auth``, this module as the URLconf, and
``SESSION_ENGINE = "hashsession.django"``. Each test points ``HASHSESSION`` at the
test's emptied Redis with ``override_settings``. Besides logging in and out through
the test client, the tests check the behaviours Django's own session tests check.
``MIDDLEWARE`` has hashsession's ``SessionMiddleware`` (Django's, plus the signal that
the headers are final, which streamed bodies need) in place of Django's.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from datetime import timedelta
from importlib import import_module
from typing import Any

import pytest
import redis
from django.conf import settings
from django.contrib import auth
from django.contrib.sessions.backends.base import CreateError
from django.core.management import call_command
from django.http import HttpRequest, HttpResponse, StreamingHttpResponse
from django.test import AsyncClient, Client, override_settings
from django.urls import path
from django.utils import timezone

from conftest import Counted
from django_setup import configure
from hashsession import ConfigurationError, DecodeError, HeadersSentError, Session
from hashsession import SessionStore as HashStore
from hashsession.django import EXPIRY_META, SessionStore, get_store

configure()

COOKIE = "sessionid"
DEFAULT_AGE = 1209600  # Django's SESSION_COOKIE_AGE, the store's ttl by default


# --------------------------------------------------------------------------- views


def set_view(request: HttpRequest, key: str, value: str) -> HttpResponse:
    request.session[key] = value
    return HttpResponse("ok")


def get_view(request: HttpRequest, key: str) -> HttpResponse:
    return HttpResponse(json.dumps(request.session.get(key)))


def nothing_view(request: HttpRequest) -> HttpResponse:
    return HttpResponse("nothing")


def login_view(request: HttpRequest) -> HttpResponse:
    user = auth.authenticate(
        request, username=request.POST["username"], password=request.POST["password"]
    )
    if user is None:
        return HttpResponse("no", status=403)
    auth.login(request, user)
    return HttpResponse("ok")


def logout_view(request: HttpRequest) -> HttpResponse:
    auth.logout(request)
    return HttpResponse("bye")


def whoami_view(request: HttpRequest) -> HttpResponse:
    user: Any = request.user
    return HttpResponse(user.username if user.is_authenticated else "anonymous")


def live_view(request: HttpRequest) -> HttpResponse:
    """Writes, then reads the value back through another store before responding."""
    request.session["live"] = "yes"
    other = SessionStore(request.session.session_key)
    return HttpResponse(json.dumps(other.get("live")))


def unchanged_view(request: HttpRequest) -> HttpResponse:
    """Writes that change nothing; answers whether the session counts as modified."""
    session = request.session
    session.pop("missing", None)
    session.setdefault("a", "other")
    with contextlib.suppress(KeyError):
        del session["missing"]
    return HttpResponse(json.dumps(session.modified))


def expiry_view(request: HttpRequest, seconds: int) -> HttpResponse:
    request.session["seen"] = True
    request.session.set_expiry(seconds)
    return HttpResponse("ok")


async def async_set_view(request: HttpRequest, key: str, value: str) -> HttpResponse:
    session: Any = request.session
    await session.aset(key, value)
    return HttpResponse(json.dumps(await session.aget(key)))


def stream_then_view(request: HttpRequest, what: str) -> StreamingHttpResponse:
    """A streamed body that uses the session after the middleware wrote the cookie.

    ``write`` writes, ``cycle`` cycles the key, ``login`` logs alice in, ``expiry`` sets
    an expiry; ``seed`` writes before the response.
    """
    if what == "seed":
        request.session["cart"] = ["apple"]

    def body() -> Iterator[bytes]:
        yield b"first "
        if what == "write":
            request.session["late"] = True
        elif what == "cycle":
            request.session.cycle_key()
        elif what == "login":
            from django.contrib.auth.models import User

            auth.login(request, User.objects.get(username="alice"))
        elif what == "expiry":
            request.session.set_expiry(60)
        yield b"second"

    return StreamingHttpResponse(body())


urlpatterns = [
    path("stream-then/<str:what>", stream_then_view),
    path("set/<str:key>/<str:value>", set_view),
    path("get/<str:key>", get_view),
    path("nothing", nothing_view),
    path("login", login_view),
    path("logout", logout_view),
    path("whoami", whoami_view),
    path("live", live_view),
    path("unchanged", unchanged_view),
    path("expiry/<int:seconds>", expiry_view),
    path("async/set/<str:key>/<str:value>", async_set_view),
]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module", autouse=True)
def database() -> None:
    """The auth tables and two users, once per process."""
    from django.contrib.auth.models import User

    call_command("migrate", run_syncdb=True, verbosity=0)
    for name in ("alice", "bob"):
        if not User.objects.filter(username=name).exists():
            User.objects.create_user(name, password=f"pw-{name}")


@pytest.fixture
def hs(redis_url: str) -> Iterator[HashStore]:
    """The engine pointed at the test's Redis; yields the hashsession store it uses."""
    with override_settings(HASHSESSION={"redis": redis_url}):
        yield get_store()


@pytest.fixture
def counted_store(counted: Counted) -> Iterator[HashStore]:
    """The engine using a ready store whose round trips ``counted`` counts."""
    store = HashStore(redis=counted.client, secret_keys=["counted"])
    with override_settings(HASHSESSION={"store": store}):
        yield store


def key_of(store: HashStore, cookie_value: str) -> str:
    session_id = store.config.id_from_cookie(cookie_value)
    assert session_id is not None, cookie_value
    return store.config.key_of(session_id)


def user_fields(client: redis.Redis, key: str) -> dict[str, Any]:
    raw: dict[bytes, bytes] = client.hgetall(key)  # type: ignore[assignment]
    return {k.decode(): json.loads(v) for k, v in raw.items() if not k.startswith(b"\x00")}


def log_in(client: Client, name: str = "alice") -> str:
    response = client.post("/login", {"username": name, "password": f"pw-{name}"})
    assert response.status_code == 200
    return str(response.cookies[COOKIE].value)


# --------------------------------------------------------------------------- configuration


def test_the_engine_setting_names_this_module(hs: HashStore) -> None:
    engine = import_module(settings.SESSION_ENGINE)
    assert engine.SessionStore is SessionStore
    assert get_store() is hs  # one store per process, cached
    assert hs.config.idle_ms == DEFAULT_AGE * 1000  # ttl defaults to SESSION_COOKIE_AGE
    assert hs.config.signer is not None  # secret_keys default to SECRET_KEY


def test_settings_build_the_store(redis_url: str) -> None:
    with override_settings(
        HASHSESSION={"redis": redis_url, "prefix": "dj:", "secret_keys": None},
        SESSION_COOKIE_AGE=600,
    ):
        store = get_store()
        assert store.config.idle_ms == 600_000
        assert store.config.prefix == "dj:"
        session = SessionStore()
        session["a"] = 1
        assert session.session_key == session.live.id  # unsigned: the bare id
        assert store.config.key_of(session.live.id or "").startswith("dj:")
    with override_settings(HASHSESSION={"redis": redis_url}):
        assert get_store() is not store  # a settings change drops the cached store


@pytest.mark.parametrize(
    ("options", "setting"),
    [
        ({"store": "not a store"}, "HASHSESSION.store"),
        ({"store": None, "prefix": "x"}, "HASHSESSION"),
        ({"cookie": {"name": "s"}}, "HASHSESSION.cookie"),
        ({"redis": "redis://localhost:1/0", "ttl": -5}, "ttl"),
        ({"redis": "redis://localhost:1/0", "colour": "red"}, "settings"),
    ],
)
def test_bad_settings_are_named(options: dict[str, Any], setting: str) -> None:
    with override_settings(HASHSESSION=options), pytest.raises(ConfigurationError) as info:
        get_store()
    assert info.value.setting == setting


def test_rotated_secret_keys_still_open_old_cookies(redis_url: str) -> None:
    with override_settings(SECRET_KEY="old-key", HASHSESSION={"redis": redis_url}):
        session = SessionStore()
        session["a"] = 1
        value = session.session_key
    assert value is not None
    with override_settings(
        SECRET_KEY="new-key", SECRET_KEY_FALLBACKS=["old-key"], HASHSESSION={"redis": redis_url}
    ):
        assert SessionStore(value).get("a") == 1
    with override_settings(SECRET_KEY="new-key", HASHSESSION={"redis": redis_url}):
        refused = SessionStore(value)
        assert refused.session_key is None
        assert refused.get("a") is None


# --------------------------------------------------------------------------- auth, test client


def test_login_and_logout_through_the_test_client(hs: HashStore, redis_client: redis.Redis) -> None:
    from django.contrib.auth.models import User

    client = Client()
    assert client.get("/whoami").content == b"anonymous"
    value = log_in(client)
    assert "." in value  # the id, signed
    key = key_of(hs, value)
    alice = User.objects.get(username="alice")
    assert user_fields(redis_client, key)["_auth_user_id"] == str(alice.pk)
    assert client.get("/whoami").content == b"alice"

    response = client.post("/logout")
    assert response.cookies[COOKIE].value == ""  # the cookie is deleted
    assert response.cookies[COOKIE]["max-age"] == 0
    assert redis_client.exists(key) == 0
    assert redis_client.dbsize() == 0
    assert client.get("/whoami").content == b"anonymous"


def test_login_cycles_the_key_and_keeps_the_data(hs: HashStore, redis_client: redis.Redis) -> None:
    client = Client()
    before = client.get("/set/colour/red").cookies[COOKIE].value
    old_key = key_of(hs, before)
    assert redis_client.exists(old_key) == 1

    after = log_in(client)
    assert after != before
    assert redis_client.exists(old_key) == 0
    fields = user_fields(redis_client, key_of(hs, after))
    assert fields["colour"] == "red"
    assert "_auth_user_id" in fields
    assert client.get("/get/colour").content == b'"red"'


def test_wrong_password_writes_nothing(hs: HashStore, redis_client: redis.Redis) -> None:
    response = Client().post("/login", {"username": "alice", "password": "nope"})
    assert response.status_code == 403
    assert COOKIE not in response.cookies
    assert redis_client.dbsize() == 0


def test_force_login_logout_and_client_session(hs: HashStore, redis_client: redis.Redis) -> None:
    from django.contrib.auth.models import User

    client = Client()
    client.force_login(User.objects.get(username="bob"))
    assert client.get("/whoami").content == b"bob"
    session = client.session
    assert isinstance(session, SessionStore)
    assert session.get("_auth_user_id") == str(User.objects.get(username="bob").pk)
    key = key_of(hs, client.cookies[COOKIE].value)

    client.logout()
    assert redis_client.exists(key) == 0
    assert client.get("/whoami").content == b"anonymous"


def test_client_session_property_makes_a_stored_session(
    hs: HashStore, redis_client: redis.Redis
) -> None:
    client = Client()
    session = client.session  # Django saves a new, empty session and sets the cookie
    assert session.session_key == client.cookies[COOKIE].value
    assert redis_client.exists(key_of(hs, session.session_key)) == 1
    session["x"] = 5  # live: no save() needed
    assert client.get("/get/x").content == b"5"


def test_a_logout_is_not_undone_by_a_racing_request(
    hs: HashStore, redis_client: redis.Redis
) -> None:
    first = Client()
    value = log_in(first)
    racer = Client()
    racer.cookies[COOKIE] = value  # a second tab, holding the same cookie
    reader = Client()
    reader.cookies[COOKIE] = value

    first.post("/logout")
    response = racer.get("/set/x/1")  # writes with the logged-out session's cookie
    new_value = response.cookies[COOKIE].value
    assert new_value and new_value != value
    assert redis_client.exists(key_of(hs, value)) == 0  # the old session stays gone
    assert user_fields(redis_client, key_of(hs, new_value)) == {"x": "1"}  # no login in it
    assert racer.get("/whoami").content == b"anonymous"

    read = reader.get("/get/x")  # a read with the old cookie creates nothing
    assert read.content == b"null"
    assert read.cookies[COOKIE].value == ""
    assert redis_client.dbsize() == 1


def test_direct_write_after_a_delete_elsewhere_starts_a_new_session(
    hs: HashStore, redis_client: redis.Redis
) -> None:
    s1 = SessionStore()
    s1["test_data"] = "value1"
    s1.save(must_create=True)
    old = s1.session_key
    assert old is not None
    SessionStore(old).delete()  # logout in another context
    s1["test_data"] = "value2"
    s1.save()
    assert s1.session_key != old
    assert not s1.exists(old)
    assert s1.load() == {"test_data": "value2"}
    assert redis_client.dbsize() == 1


# --------------------------------------------------------------------------- live writes, costs


def test_a_write_is_visible_to_other_requests_before_the_response(hs: HashStore) -> None:
    response = Client().get("/live")
    assert response.content == b'"yes"'


def test_an_untouched_session_costs_nothing_and_sets_no_cookie(
    counted_store: HashStore, counted: Counted
) -> None:
    fresh = Client()
    with counted.expect(0):
        response = fresh.get("/nothing")
    assert COOKIE not in response.cookies
    assert "Vary" not in response.headers

    known = Client()
    known.get("/set/a/1")
    with counted.expect(0):
        response = known.get("/nothing")
    assert COOKIE not in response.cookies
    assert "Vary" not in response.headers


def test_round_trips_of_writing_requests(counted_store: HashStore, counted: Counted) -> None:
    client = Client()
    with counted.expect(1):  # creates the session: fields, metadata and TTL in one script
        response = client.get("/set/a/1")
    assert response.cookies[COOKIE]["max-age"] == DEFAULT_AGE
    assert "Cookie" in response.headers["Vary"]
    with counted.expect(2):  # the write, then the stored expiry for the cookie's Max-Age
        response = client.get("/set/b/2")
    assert counted.commands == ["EVALSHA", "HGET"]
    assert response.cookies[COOKIE].value == client.cookies[COOKIE].value
    with counted.expect(1):
        assert client.get("/get/a").content == b'"1"'


def test_plus_equals_is_one_atomic_increment(counted_store: HashStore, counted: Counted) -> None:
    session = SessionStore()
    session["n"] = 1
    session["n"] += 1  # the first run may load the script into Redis
    with counted.expect(2):
        session["n"] += 1  # HGET, then HINCRBY (not a read-modify-write of the value)
    assert counted.commands == ["HGET", "EVALSHA"]
    assert session["n"] == 3
    assert isinstance(session.live, Session)
    assert session.live.incr("n", 5) == 8


def test_writes_that_change_nothing_send_no_cookie(
    counted_store: HashStore, counted: Counted
) -> None:
    client = Client()
    client.get("/set/a/1")
    client.get("/unchanged")  # loads the scripts into Redis
    with counted.expect(3):  # pop, setdefault, del: no read of the expiry for a cookie
        response = client.get("/unchanged")
    assert counted.commands == ["EVALSHA", "EVALSHA", "EVALSHA"]
    assert response.content == b"false"
    assert COOKIE not in response.cookies
    assert response.headers["Vary"] == "Cookie"
    assert client.get("/get/a").content == b'"1"'


def test_save_overwrites_nothing(hs: HashStore, counted: Counted) -> None:
    first = SessionStore()
    first["a"] = 1
    key = first.session_key
    s1, s2 = SessionStore(key), SessionStore(key)
    s1["b"] = 2
    s2["c"] = 3
    s1.save()
    s2.save()
    assert SessionStore(key).load() == {"a": 1, "b": 2, "c": 3}


def test_save_costs_nothing_once_the_session_is_live(
    counted_store: HashStore, counted: Counted
) -> None:
    session = SessionStore()
    session["a"] = 1
    with counted.expect(0):
        session.save()


def test_save_every_request_slides_the_expiry(counted_store: HashStore, counted: Counted) -> None:
    client = Client()
    value = client.get("/set/a/1").cookies[COOKIE].value
    with override_settings(SESSION_SAVE_EVERY_REQUEST=True), counted.expect(1):
        # Reading the stored expiry (for the cookie) checks and slides the session too.
        response = client.get("/nothing")
    assert counted.commands == ["EVALSHA"]
    assert response.cookies[COOKIE].value == value


# --------------------------------------------------------------------------- keys


@pytest.mark.parametrize("bad", ["invalid-key", "", "1", "someunknownkey", "12345678"])
def test_invalid_keys_are_refused_without_a_command(
    counted_store: HashStore, counted: Counted, bad: str
) -> None:
    with counted.expect(0):
        session = SessionStore(bad)
        assert session.session_key is None
        assert session.get("cat") is None
        assert "cat" not in session
        assert session.load() == {}
        assert session.is_empty()
        assert not session.exists(bad)
        session.delete(bad)
    session["cat"] = "dog"  # a new session, never the offered key
    assert session.session_key not in (None, bad)


def test_forged_and_unsigned_keys_are_refused(counted_store: HashStore, counted: Counted) -> None:
    genuine = SessionStore()
    genuine["a"] = 1
    value = genuine.session_key
    assert value is not None
    forged = value[:-1] + ("A" if value[-1] != "A" else "B")
    unsigned = genuine.live.id
    with counted.expect(0):
        assert genuine._validate_session_key(value)
        for bad in (forged, unsigned):
            assert not genuine._validate_session_key(bad)
            assert SessionStore(bad).session_key is None
            assert SessionStore(bad).get("a") is None


def test_session_key_can_be_assigned(counted_store: HashStore, counted: Counted) -> None:
    """As Django's engines allow: the session switches to the one the key names."""
    mine, other = SessionStore(), SessionStore()
    mine["a"] = 1
    other["b"] = 2
    mine.set_expiry(60)
    mine._session_key = other.session_key
    assert mine.session_key == other.session_key
    assert mine.load() == {"b": 2}
    assert mine.get_expiry_age() == DEFAULT_AGE  # the other session's expiry, read anew
    assert mine._session_key == mine.session_key

    value = other.session_key
    assert value is not None
    forged = value[:-1] + ("A" if value[-1] != "A" else "B")
    with counted.expect(0):
        for short in ("", None, "1234567"):  # Django's rule: under 8 characters is no key
            mine._session_key = short
            assert mine.session_key is None
            assert mine.is_empty()
        for refused in ("12345678", forged):
            mine._session_key = refused
            # Reported back until used, as Django's engines report a key until they load it,
            # but it never reaches Redis: the session is a new, empty one.
            assert mine.session_key == refused
            assert mine.is_empty()
            assert mine.get("b") is None
            assert mine.session_key is None
    mine["c"] = 3
    assert mine.session_key not in (None, "12345678", forged, value)
    assert SessionStore(value).load() == {"b": 2}

    mine._session_key = "12345678"
    mine.create()  # a new session: the refused key is not reported any more
    assert mine.session_key not in (None, "12345678")


def test_every_read_marks_the_session_accessed(hs: HashStore) -> None:
    session = SessionStore()
    session["x"] = 1
    reads = [
        lambda: "x" in session,
        lambda: session.get("x"),
        lambda: session["x"],
        lambda: session.has_key("x"),
        lambda: session.keys(),
        lambda: session.load(),
    ]
    for read in reads:
        session.modified = session.accessed = False
        read()
        assert (session.accessed, session.modified) == (True, False)


def test_a_bad_cookie_is_left_alone_without_a_command(
    counted_store: HashStore, counted: Counted
) -> None:
    client = Client()
    client.cookies[COOKIE] = "invalid-key"
    with counted.expect(0):
        response = client.get("/get/a")
    assert response.content == b"null"
    assert COOKIE not in response.cookies  # a cookie that does not verify is left alone


def test_a_load_never_creates_a_record(hs: HashStore, redis_client: redis.Redis) -> None:
    unknown = hs.config.cookie_value(hs.config.new_id())  # well formed, signed, not stored
    session = SessionStore(unknown)
    assert session.session_key == unknown  # not checked yet
    assert session.load() == {}
    assert session.session_key is None
    assert not session.exists(unknown)
    assert redis_client.dbsize() == 0
    session["a"] = 1
    assert session.session_key != unknown


def test_session_key_is_read_only(hs: HashStore) -> None:
    session = SessionStore()
    with pytest.raises(AttributeError):
        session.session_key = "x" * 40  # type: ignore[misc]


# --------------------------------------------------------------------------- lifecycle


def test_cycle_key_keeps_the_data_and_deletes_the_old_key(
    hs: HashStore, redis_client: redis.Redis
) -> None:
    session = SessionStore()
    session["a"] = "c"
    session["b"] = "d"
    old = session.session_key
    assert old is not None
    old_key = key_of(hs, old)

    reopened = SessionStore(old)  # as in a later request, not loaded yet
    reopened.cycle_key()
    assert reopened.session_key not in (None, old)
    assert redis_client.exists(old_key) == 0
    assert not reopened.exists(old)
    assert dict(reopened.items()) == {"a": "c", "b": "d"}
    assert reopened.modified and reopened.accessed


def test_cycle_key_of_a_new_session_stores_nothing(
    hs: HashStore, redis_client: redis.Redis
) -> None:
    session = SessionStore()
    session.cycle_key()
    assert session.session_key is None
    assert redis_client.dbsize() == 0


def test_flush_deletes_the_session_and_starts_a_new_one(
    hs: HashStore, redis_client: redis.Redis
) -> None:
    session = SessionStore()
    session["foo"] = "bar"
    previous = session.session_key
    session.modified = session.accessed = False
    session.flush()
    assert not session.exists(previous)
    assert session.session_key is None
    assert session.is_empty()
    assert session.modified and session.accessed
    assert session.get("foo") is None
    session["x"] = 1
    assert session.session_key not in (None, previous)
    assert redis_client.dbsize() == 1


def test_delete_by_key(hs: HashStore) -> None:
    mine, other = SessionStore(), SessionStore()
    mine["a"] = other["b"] = 1
    other_key = other.session_key
    mine.delete(other_key)
    assert not mine.exists(other_key)
    assert mine.get("a") == 1
    own = mine.session_key
    mine.delete(own)
    assert not mine.exists(own)
    assert mine.session_key is None


def test_save_and_create(hs: HashStore, redis_client: redis.Redis) -> None:
    session = SessionStore()
    session.save()  # an empty session is stored, so it has a key
    key = session.session_key
    assert key is not None
    assert session.exists(key)
    assert session.load() == {}
    session.save(must_create=True)  # made by this object: nothing to refuse
    with pytest.raises(CreateError):
        SessionStore(key).save(must_create=True)

    session["a"] = 1
    session.create()
    assert session.session_key not in (None, key)
    assert session.exists(session.session_key)
    assert session.load() == {}
    assert SessionStore(key).get("a") == 1  # the old one is left alone


def test_save_recreates_a_vanished_session(hs: HashStore, redis_client: redis.Redis) -> None:
    session = SessionStore()
    session["a"] = 1
    key = session.session_key
    redis_client.flushall()
    stale = SessionStore(key)
    stale.save()
    assert stale.session_key not in (None, key)
    assert stale.exists(stale.session_key)


def test_clear_expired_is_a_no_op(hs: HashStore, redis_client: redis.Redis) -> None:
    session = SessionStore()
    session["a"] = 1
    SessionStore.clear_expired()
    call_command("clearsessions")
    assert SessionStore(session.session_key).get("a") == 1
    assert redis_client.dbsize() == 1


# --------------------------------------------------------------------------- mapping API


def test_dict_operations(hs: HashStore) -> None:
    session = SessionStore()
    assert not session.modified and not session.accessed
    assert session.get("cat") is None
    assert session.accessed
    session["cat"] = "dog"
    assert session.modified
    assert session.setdefault("cat", "cow") == "dog"
    assert session.setdefault("owl", "hoot") == "hoot"
    assert session.pop("cat") == "dog"
    session.modified = False
    assert session.pop("cat", "gone") == "gone"
    assert session.setdefault("owl", "wise") == "hoot"
    with pytest.raises(KeyError):
        del session["cat"]
    assert session.accessed and not session.modified  # nothing changed
    with pytest.raises(KeyError):
        session.pop("cat")
    session.update({"x": 1, "y": [1, 2]})
    assert session.has_key("x") and "y" in session and "cat" not in session
    assert sorted(session.keys()) == ["owl", "x", "y"]
    assert sorted(session.items()) == [("owl", "hoot"), ("x", 1), ("y", [1, 2])]
    assert len(list(session.values())) == 3
    del session["owl"]
    with pytest.raises(KeyError):
        session["owl"]
    assert SessionStore(session.session_key).load() == {"x": 1, "y": [1, 2]}

    session.modified = session.accessed = False
    session.clear()
    assert list(session.items()) == []
    assert session.modified and session.accessed
    assert session.is_empty()  # ended: Django's middleware drops the cookie
    assert session.decode(session.encode({"a": 1})) == {"a": 1}  # Django's format helpers


def test_test_cookie_helpers(hs: HashStore) -> None:
    session = SessionStore()
    assert not session.test_cookie_worked()
    session.set_test_cookie()
    assert SessionStore(session.session_key).test_cookie_worked()
    session.delete_test_cookie()
    assert not session.test_cookie_worked()


# --------------------------------------------------------------------------- expiry


def test_default_expiry(hs: HashStore) -> None:
    session = SessionStore()
    assert session.get_expiry_age() == DEFAULT_AGE
    assert not session.get_expire_at_browser_close()
    session.set_expiry(0)
    assert session.get_expiry_age() == DEFAULT_AGE
    assert session.get_expire_at_browser_close()


def test_expiry_in_seconds(hs: HashStore, redis_client: redis.Redis) -> None:
    session = SessionStore()
    session["a"] = 1
    session.set_expiry(10)
    now = timezone.now()
    assert session.get_expiry_age() == 10
    assert session.get_expiry_date(modification=now) == now + timedelta(seconds=10)
    assert not session.get_expire_at_browser_close()
    key = key_of(hs, session.session_key)
    assert 0 < redis_client.pttl(key) <= 10_000

    later = SessionStore(session.session_key)  # a later request reads it back
    later["b"] = 2
    assert later.get_expiry_age() == 10
    assert 0 < redis_client.pttl(key) <= 10_000  # and the idle timeout stays 10 s

    later.set_expiry(None)
    assert later.get_expiry_age() == DEFAULT_AGE
    assert redis_client.pttl(key) > 10_000
    assert SessionStore(session.session_key).get_expiry_age() == DEFAULT_AGE


def test_browser_session_expiry(hs: HashStore, redis_client: redis.Redis) -> None:
    session = SessionStore()
    session.set_expiry(30)
    session.set_expiry(0)
    assert SessionStore(session.session_key).get_expire_at_browser_close()
    assert redis_client.pttl(key_of(hs, session.session_key)) > 30_000  # default timeout back


def test_expiry_as_timedelta_and_datetime(
    hs: HashStore, redis_client: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    fixed = timezone.now().replace(microsecond=0)
    monkeypatch.setattr(timezone, "now", lambda: fixed)
    session = SessionStore()
    session.set_expiry(timedelta(seconds=30))
    assert session.get_expiry_age() == 30
    assert session.get_expiry_date() == fixed + timedelta(seconds=30)
    assert 0 < redis_client.pttl(key_of(hs, session.session_key)) <= 30_000

    deadline = fixed + timedelta(seconds=20)
    session.set_expiry(deadline)
    reopened = SessionStore(session.session_key)
    assert reopened.get_expiry_date() == deadline
    assert reopened.get_expiry_age(modification=fixed) == 20
    assert reopened.get_expiry_age(modification=fixed + timedelta(seconds=5)) == 15
    assert not reopened.get_expire_at_browser_close()


def test_naive_deadline_with_time_zones_on(hs: HashStore) -> None:
    session = SessionStore()
    naive = timezone.make_naive(timezone.now()) + timedelta(seconds=60)  # in TIME_ZONE
    session.set_expiry(naive)
    assert 55 <= session.get_expiry_age() <= 60


def test_an_expiry_in_the_past_ends_the_session(hs: HashStore, redis_client: redis.Redis) -> None:
    for past in (-timedelta(seconds=10), -1):
        session = SessionStore()
        session["foo"] = "bar"
        old = session.session_key
        session.set_expiry(past)
        assert session.session_key is None
        assert "foo" not in SessionStore(old)
        assert redis_client.dbsize() == 0


def test_expiry_keyword_arguments_cost_nothing(counted_store: HashStore, counted: Counted) -> None:
    session = SessionStore(counted_store.config.cookie_value(counted_store.config.new_id()))
    now = timezone.now()
    with counted.expect(0):
        assert session.get_expiry_age(expiry=None) == DEFAULT_AGE
        assert session.get_expiry_age(expiry=5) == 5
        deadline = now + timedelta(seconds=42)
        assert session.get_expiry_age(modification=now, expiry=deadline.isoformat()) == 42
        assert session.get_expiry_date(modification=now, expiry=7) == now + timedelta(seconds=7)


def test_expire_at_browser_close_setting(hs: HashStore) -> None:
    session = SessionStore()
    with override_settings(SESSION_EXPIRE_AT_BROWSER_CLOSE=True):
        assert session.get_expire_at_browser_close()
        session.set_expiry(10)
        assert not session.get_expire_at_browser_close()
        session.set_expiry(0)
        assert session.get_expire_at_browser_close()
        session.set_expiry(None)
        assert session.get_expire_at_browser_close()


def test_set_expiry_refuses_other_types(hs: HashStore) -> None:
    with pytest.raises(TypeError):
        SessionStore().set_expiry("10")  # type: ignore[arg-type]


def test_the_cookie_follows_the_expiry(hs: HashStore, redis_client: redis.Redis) -> None:
    client = Client()
    response = client.get("/expiry/10")
    assert response.cookies[COOKIE]["max-age"] == 10
    response = client.get("/set/a/1")  # a later change keeps the custom expiry
    assert response.cookies[COOKIE]["max-age"] == 10
    response = client.get("/expiry/0")
    assert response.cookies[COOKIE]["max-age"] == ""  # a browser-session cookie
    assert response.cookies[COOKIE]["expires"] == ""
    stored = redis_client.hget(key_of(hs, response.cookies[COOKIE].value), "\x00" + EXPIRY_META)
    assert stored == b"0"


# --------------------------------------------------------------------------- async


async def test_async_twins(hs: HashStore, redis_client: redis.Redis) -> None:
    session = SessionStore()
    await session.aset("a", 1)
    assert await session.aget("a") == 1
    assert await session.ahas_key("a")
    assert await session.asetdefault("b", 2) == 2
    assert dict(await session.aitems()) == {"a": 1, "b": 2}
    old = session.session_key
    await session.acycle_key()
    assert session.session_key not in (None, old)
    assert not await session.aexists(old)
    await session.aset_expiry(10)
    assert await session.aget_expiry_age() == 10
    await session.asave()
    key = session.session_key
    assert await session.apop("b") == 2
    await session.aflush()
    assert session.session_key is None
    assert not await session.aexists(key)
    await SessionStore.aclear_expired()
    assert redis_client.dbsize() == 0


async def test_async_view_through_the_async_client(
    hs: HashStore, redis_client: redis.Redis
) -> None:
    client = AsyncClient()
    response = await client.get("/async/set/k/v")
    assert response.content == b'"v"'
    value = response.cookies[COOKIE].value
    assert user_fields(redis_client, key_of(hs, value)) == {"k": "v"}


# --------------------------------------------------------------------------- odd input (issue 13)


def test_listings_skip_a_field_name_that_is_not_utf8(
    hs: HashStore, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    s = SessionStore()
    s.update({"a": 1, "b": "two"})
    key = key_of(hs, s.session_key)
    redis_client.hset(key, b"\xff\xfe", b"1")  # another client's field, not UTF-8
    caplog.set_level("WARNING", "hashsession")
    again = SessionStore(s.session_key)
    assert sorted(again.keys()) == ["a", "b"]
    assert sorted(again.items()) == [("a", 1), ("b", "two")]
    assert sorted(again.values(), key=repr) == ["two", 1]
    assert again.load() == {"a": 1, "b": "two"}
    assert any("b'\\xff\\xfe'" in r.message for r in caplog.records)


@pytest.mark.parametrize("junk", [b"{junk", b"[1]", b'"not a date"', b"true", b"\xff"])
def test_a_junk_expiry_is_a_decode_error_naming_it(
    hs: HashStore, redis_client: redis.Redis, junk: bytes
) -> None:
    s = SessionStore()
    s["a"] = 1
    s.set_expiry(60)
    redis_client.hset(key_of(hs, s.session_key), "\x00" + EXPIRY_META, junk)
    for read in (
        lambda t: t.get_expiry_age(),
        lambda t: t.get_expiry_date(),
        lambda t: t.get_expire_at_browser_close(),
    ):
        with pytest.raises(DecodeError) as info:
            read(SessionStore(s.session_key))
        assert info.value.key == EXPIRY_META
    t = SessionStore(s.session_key)
    t.set_expiry(None)  # a write repairs it
    assert SessionStore(s.session_key).get_expiry_age() == DEFAULT_AGE


# --------------------------------------------------------------------------- streamed bodies


def session_keys(client: redis.Redis, store: HashStore) -> list[bytes]:
    return sorted(client.keys(store.config.prefix + "*"))


def test_streamed_body_writes_to_an_existing_session(
    hs: HashStore, redis_client: redis.Redis
) -> None:
    client = Client()
    cookie = client.get("/stream-then/seed").cookies[COOKIE].value
    response = client.get("/stream-then/write")
    assert COOKIE not in response.cookies
    assert b"".join(response.streaming_content) == b"first second"
    assert user_fields(redis_client, key_of(hs, cookie)) == {"cart": ["apple"], "late": True}
    assert session_keys(redis_client, hs) == [key_of(hs, cookie).encode()]


def test_streamed_body_creating_a_session_raises_and_leaves_no_key(
    hs: HashStore, redis_client: redis.Redis
) -> None:
    response = Client().get("/stream-then/write")
    assert COOKIE not in response.cookies
    with pytest.raises(HeadersSentError, match="writing 'late' after the response headers"):
        b"".join(response.streaming_content)
    assert session_keys(redis_client, hs) == []


@pytest.mark.parametrize("what", ["cycle", "login", "expiry"])
def test_streamed_body_needing_a_new_cookie_raises_and_keeps_the_session(
    hs: HashStore, redis_client: redis.Redis, what: str
) -> None:
    client = Client()
    cookie = client.get("/stream-then/seed").cookies[COOKIE].value
    key = key_of(hs, cookie)
    before = redis_client.hgetall(key)
    response = client.get(f"/stream-then/{what}")
    with pytest.raises(HeadersSentError, match="after the response headers were sent"):
        b"".join(response.streaming_content)
    assert session_keys(redis_client, hs) == [key.encode()]
    assert redis_client.hgetall(key) == before  # no user, no expiry
    assert client.get("/get/cart").content == b'["apple"]'  # the old cookie still reaches it
    assert client.get("/whoami").content == b"anonymous"


def test_create_after_the_headers_raises_and_keeps_the_session(
    hs: HashStore, redis_client: redis.Redis
) -> None:
    session = SessionStore()
    session["a"] = 1
    old = session.session_key
    session.headers_sent()
    with pytest.raises(HeadersSentError, match=r"create\(\)"):
        session.create()
    assert session.session_key == old
    assert redis_client.dbsize() == 1


def test_a_cookie_signed_by_a_fallback_key_is_sent_again_signed_by_the_newest(
    redis_url: str,
) -> None:
    with override_settings(SECRET_KEY="old-key", HASHSESSION={"redis": redis_url}):
        session = SessionStore()
        session["a"] = 1
        old_cookie = session.session_key
    assert old_cookie is not None
    with override_settings(
        SECRET_KEY="new-key", SECRET_KEY_FALLBACKS=["old-key"], HASHSESSION={"redis": redis_url}
    ):
        session = SessionStore(old_cookie)
        assert not session.modified  # nothing known yet: Django sends no cookie
        assert session.get("a") == 1
        assert session.modified  # the session lives: Django sends its cookie again
        resigned = session.session_key
        assert resigned is not None and resigned != old_cookie
        again = SessionStore(resigned)
        assert again.get("a") == 1 and not again.modified
    with override_settings(SECRET_KEY="new-key", HASHSESSION={"redis": redis_url}):
        assert SessionStore(resigned).get("a") == 1  # the old key can go
