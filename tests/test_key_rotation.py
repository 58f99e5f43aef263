"""Key rotation that finishes: a cookie an older key signed is signed again with the newest.

A store verifies cookies with every key in ``secret_keys`` and signs with the first.
When a request's cookie was signed by another key and the session turns out to live,
the response carries a ``Set-Cookie`` with the same id signed by the newest key, at no
extra Redis round trip, so after one idle timeout no live session depends on the old
key and it can be dropped. Driven through WSGI and ASGI here, Django in tests/test_django.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import Any

from counting import Counted
from hashsession import Session, SessionStore
from hashsession.aio import AsyncSession, AsyncSessionStore
from hashsession.asgi import SessionMiddleware as AsgiMiddleware
from hashsession.cookies import Signer
from hashsession.scripts import OPEN
from hashsession.wsgi import SessionMiddleware as WsgiMiddleware

OLD, NEW = "old-signing-key", "new-signing-key"


def cookie_value(set_cookie: str) -> str:
    return set_cookie.split(";", 1)[0].partition("=")[2]


def test_verify_names_the_key_that_signed() -> None:
    old, new = Signer([OLD]), Signer([NEW, OLD])
    signed = old.sign("value")
    assert new.verify(signed) == ("value", 1)
    assert new.verify(new.sign("value")) == ("value", 0)
    assert new.unsign(signed) == "value"
    assert Signer([NEW]).verify(signed) is None
    assert new.verify(signed[:-1] + ("A" if signed[-1] != "A" else "B")) is None


def test_read_cookie_flags_an_older_key(make_store: Callable[..., SessionStore]) -> None:
    old = make_store(secret_keys=[OLD])
    both = make_store(secret_keys=[NEW, OLD])
    value = old.config.cookie_value(old.config.new_id())
    session_id, stale = both.config.read_cookie(value)
    assert session_id is not None and stale
    assert both.config.read_cookie(both.config.cookie_value(session_id)) == (session_id, False)
    assert both.config.read_cookie("garbage") == (None, False)
    unsigned = make_store()
    assert unsigned.config.read_cookie(session_id) == (session_id, False)


# --------------------------------------------------------------------------- WSGI


def wsgi_call(app: Any, path: str, cookie: str | None) -> tuple[list[str], bytes]:
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "GET",
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "localhost",
        "SERVER_PORT": "80",
        "wsgi.url_scheme": "http",
    }
    if cookie is not None:
        environ["HTTP_COOKIE"] = f"session={cookie}"
    headers: list[tuple[str, str]] = []

    def start_response(status: str, given: list[tuple[str, str]], exc_info: Any = None) -> Any:
        headers.extend(given)
        return lambda data: None

    body = b"".join(app(environ, start_response))
    return [v for k, v in headers if k == "Set-Cookie"], body


def wsgi_app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
    session: Session = environ["hashsession"]
    path = environ["PATH_INFO"]
    body = b""
    if path == "/write":
        session["n"] = 1
    elif path == "/read":
        body = repr(session.get("n")).encode()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]


def test_wsgi_resigns_an_old_cookie_at_no_extra_round_trip(counted: Counted) -> None:
    before = SessionStore(redis=counted.client, secret_keys=[OLD], ttl=100)
    (set_cookie,), _ = wsgi_call(WsgiMiddleware(wsgi_app, store=before), "/write", None)
    old_cookie = cookie_value(set_cookie)

    during = SessionStore(redis=counted.client, secret_keys=[NEW, OLD], ttl=100)
    app = WsgiMiddleware(wsgi_app, store=during)
    counted.client.script_load(OPEN.source)  # so that OPEN is one EVALSHA below
    with counted.expect(0):  # a request that never uses the session: nothing to re-sign
        assert wsgi_call(app, "/nothing", old_cookie) == ([], b"")
    with counted.expect(1):  # one read: the OPEN that checks and slides the session
        cookies, body = wsgi_call(app, "/read", old_cookie)
    assert body == b"1"
    (resigned,) = cookies
    new_cookie = cookie_value(resigned)
    assert new_cookie != old_cookie
    assert during.config.read_cookie(new_cookie) == (
        during.config.id_from_cookie(old_cookie),
        False,
    )
    assert "Path=/" in resigned and "HttpOnly" in resigned  # the policy's usual attributes

    # Signed by the newest key: nothing more to send.
    with counted.expect(1):
        assert wsgi_call(app, "/read", new_cookie) == ([], b"1")

    # The old key retired: the re-signed cookie still works, the old one is refused.
    after = SessionStore(redis=counted.client, secret_keys=[NEW], ttl=100)
    retired = WsgiMiddleware(wsgi_app, store=after)
    assert wsgi_call(retired, "/read", new_cookie) == ([], b"1")
    assert wsgi_call(retired, "/read", old_cookie)[1] == b"None"


def test_wsgi_does_not_resign_a_cookie_whose_session_is_gone(counted: Counted) -> None:
    before = SessionStore(redis=counted.client, secret_keys=[OLD], ttl=100)
    old_cookie = before.config.cookie_value(before.config.new_id())  # never stored
    during = SessionStore(redis=counted.client, secret_keys=[NEW, OLD], ttl=100)
    (cookie,), body = wsgi_call(WsgiMiddleware(wsgi_app, store=during), "/read", old_cookie)
    assert body == b"None"
    assert cookie.startswith("session=;") and "Max-Age=0" in cookie  # dropped, not re-signed


def test_wsgi_write_after_rotation_keeps_the_id(counted: Counted) -> None:
    before = SessionStore(redis=counted.client, secret_keys=[OLD], ttl=100)
    (set_cookie,), _ = wsgi_call(WsgiMiddleware(wsgi_app, store=before), "/write", None)
    old_cookie = cookie_value(set_cookie)
    during = SessionStore(redis=counted.client, secret_keys=[NEW, OLD], ttl=100)
    (resigned,), _ = wsgi_call(WsgiMiddleware(wsgi_app, store=during), "/write", old_cookie)
    assert during.config.id_from_cookie(cookie_value(resigned)) == before.config.id_from_cookie(
        old_cookie
    )


# --------------------------------------------------------------------------- ASGI


async def asgi_app(scope: Any, receive: Any, send: Any) -> None:
    session: AsyncSession = scope["session"]
    body = b""
    if scope["path"] == "/read":
        body = repr(await session.get("n")).encode()
    elif scope["path"] == "/write":
        await session.set("n", 1)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


async def asgi_call(app: Any, path: str, cookie: str | None) -> tuple[list[str], bytes]:
    headers = [(b"host", b"localhost")]
    if cookie is not None:
        headers.append((b"cookie", f"session={cookie}".encode()))
    scope = {"type": "http", "scheme": "http", "path": path, "headers": headers}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app(scope, receive, send)
    start = sent[0]
    cookies = [v.decode() for k, v in start.get("headers", ()) if k == b"set-cookie"]
    return cookies, b"".join(m.get("body", b"") for m in sent[1:])


def test_asgi_resigns_an_old_cookie(redis_url: str) -> None:
    async def scenario() -> None:
        before = AsyncSessionStore(redis=redis_url, secret_keys=[OLD], ttl=100)
        during = AsyncSessionStore(redis=redis_url, secret_keys=[NEW, OLD], ttl=100)
        try:
            (set_cookie,), _ = await asgi_call(
                AsgiMiddleware(asgi_app, store=before), "/write", None
            )
            old_cookie = cookie_value(set_cookie)
            app = AsgiMiddleware(asgi_app, store=during)
            assert await asgi_call(app, "/nothing", old_cookie) == ([], b"")
            (resigned,), body = await asgi_call(app, "/read", old_cookie)
            assert body == b"1"
            new_cookie = cookie_value(resigned)
            session_id = before.config.id_from_cookie(old_cookie)
            assert during.config.read_cookie(new_cookie) == (session_id, False)
            assert await asgi_call(app, "/read", new_cookie) == ([], b"1")
        finally:
            await before.aclose()
            await during.aclose()

    asyncio.run(scenario())
