"""Pure ASGI middleware: an ``AsyncSession`` in ``scope["session"]``, cookie on the way out.

Works under any ASGI framework (Starlette's ``request.session`` and FastAPI
dependencies read the same scope key). The session is lazy: no Redis command
until the app uses it. ``Set-Cookie`` and ``Vary`` are added to
``http.response.start``, so streaming responses work; lifespan events pass
straight through. Once that message is sent, a step that needs a new cookie (the
first write of a session not stored yet, ``regenerate()``, ``login()``) raises
:class:`~hashsession.HeadersSentError` without writing anything; writes to a
session the cookie already names keep working. Websocket scopes get the session
too, under the same rule from the start (the middleware sends them no cookie).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from hashsession.aio import AsyncSession, AsyncSessionStore
from hashsession.cookies import CookiePolicy, is_plain_local

__all__ = ["SessionMiddleware", "session_of"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]


class SessionMiddleware:
    """Wraps an ASGI app so that ``scope[scope_key]`` is the request's live session."""

    def __init__(
        self, app: ASGIApp, *, store: AsyncSessionStore | None = None, scope_key: str = "session"
    ) -> None:
        self.app = app
        self.store = store if store is not None else AsyncSessionStore()
        self.scope_key = scope_key
        self._policies: dict[str, CookiePolicy] = {}

    def cookie_policy(self, scope: Scope) -> CookiePolicy | None:
        """The cookie policy for a request, if not the store's: with the store's default
        path ``/`` (and no ``__Host-`` prefix, which needs ``/``), the cookie's path is
        the app's mount point, ``scope["root_path"]``, so apps mounted side by side under
        one host keep separate cookies."""
        root = scope.get("root_path") or ""
        policy = self.store.cookie
        if not root or root == "/" or policy.path != "/" or policy.host_prefix:
            return None
        if policy.cookie_name.lower().startswith("__host-"):
            return None
        known = self._policies.get(root)
        if known is None:
            try:
                known = dataclasses.replace(policy, path=root.rstrip("/") or "/")
            except ValueError:  # a root path no cookie can carry: keep the store's
                known = policy
            if len(self._policies) < 64:
                self._policies[root] = known
        return known

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return
        headers = scope.get("headers", ())
        cookie = b"; ".join(v for k, v in headers if k == b"cookie")
        host = next((v for k, v in headers if k == b"host"), b"").decode("latin-1")
        local = is_plain_local(scope.get("scheme", "http"), host or _server_host(scope))
        session = self.store.open(cookie.decode("latin-1") if cookie else None, plain_local=local)
        policy = self.cookie_policy(scope)
        if policy is not None:  # (else the store's: the session is worked out when used)
            session.core.cookie_policy = policy
        scope[self.scope_key] = session
        if kind == "websocket":  # no Set-Cookie can be sent: writes need an existing session
            self.store.headers_sent(session)
            await self.app(scope, receive, send)
            return

        async def send_with_cookie(message: Message) -> None:
            if message["type"] == "http.response.start":
                extra = self.store.response_headers(session)
                self.store.headers_sent(session)  # no Set-Cookie can follow these headers
                if extra:
                    headers = list(message.get("headers", ()))
                    headers += [
                        (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in extra
                    ]
                    message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_cookie)


def _server_host(scope: Scope) -> str | None:
    """The host the server listens on (``scope["server"]``), for a request without ``Host``."""
    server = scope.get("server")
    return str(server[0]) if server else None


def session_of(scope: Scope, scope_key: str = "session") -> AsyncSession:
    """The session the middleware put in ``scope``; a clear error if it is not installed."""
    try:
        session = scope[scope_key]
    except KeyError:
        raise RuntimeError("hashsession.asgi.SessionMiddleware is not installed") from None
    if not isinstance(session, AsyncSession):
        raise RuntimeError(f"scope[{scope_key!r}] is not a hashsession session")
    return session
