"""DRSession: one Redis hash per session, every item written at once (its own venv).

Its ``SessionMiddleware`` is a WSGI middleware, so the app is a bare WSGI app. Values
are JSON (its default ``loads``/``dumps``; custom ones are broken in 1.2.0). Keys never
expire: DRSession sets no TTL.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import drsession
import redis

from peerkit import COUNTER, FIELD, VALUE, BareSocket, Contender, Dialect, Op, new_id, plain_wsgi


class DRSession(Contender):
    library = "DRSession"
    integration = "drsession.SessionMiddleware, bare WSGI app"
    kind = "wsgi"
    memory = True
    dists = ("drsession", "redis")

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.client = redis.Redis.from_url(url)
        self.notes.append("no TTL: DRSession never expires a session")

    def _session(self) -> tuple[Any, str]:
        sid = new_id()
        key = "drsession:" + sid
        s = drsession.Session(self.client, key)
        s[FIELD] = VALUE
        s[COUNTER] = 0
        return s, key

    def steady(self) -> dict[str, Op | str]:
        s, key = self._session()
        bare = BareSocket(self.url)
        enc = json.dumps(VALUE)

        def d_set() -> None:
            s[FIELD] = VALUE

        def d_get() -> Any:
            return s[FIELD]

        def d_in() -> bool:
            return FIELD in s

        def d_delete() -> None:
            del s[FIELD]

        def d_incr() -> None:
            s[COUNTER] += 1  # DRSession: HGET, then HINCRBY of the difference

        return {
            "set": Op(d_set),
            "get": Op(d_get),
            "in": Op(d_in),
            "delete": Op(d_delete, bare.sender("HSET", key, FIELD, enc)),
            "incr": Op(d_incr),
        }

    def request(self) -> dict[str, Op | str]:
        # What the middleware does per request with a cookie: parse it, build a Session.
        _, key = self._session()
        sid = key.removeprefix("drsession:")
        mw = drsession.SessionMiddleware(None, redis_server=self.client)
        cookie = f"drsession={sid}"
        bare = BareSocket(self.url)
        enc = json.dumps(VALUE)
        from http.cookies import SimpleCookie

        def open_() -> Any:
            jar: SimpleCookie = SimpleCookie()
            jar.load(cookie)
            return mw._build_session(jar["drsession"].value)

        def r_set() -> None:
            open_()[FIELD] = VALUE

        def r_get() -> None:
            open_()[FIELD]

        def r_in() -> None:
            FIELD in open_()  # noqa: B015

        def r_delete() -> None:
            del open_()[FIELD]

        def r_incr() -> None:
            s = open_()
            s[COUNTER] += 1

        return {
            "set": Op(r_set),
            "get": Op(r_get),
            "in": Op(r_in),
            "delete": Op(r_delete, bare.sender("HSET", key, FIELD, enc)),
            "incr": Op(r_incr),
        }

    def build_app(self) -> Any:
        app = plain_wsgi(lambda environ: environ["drsession"], Dialect())
        return drsession.SessionMiddleware(app, redis_server=redis.Redis.from_url(self.url))


def contenders() -> dict[str, Callable[[str], Contender]]:
    return {"drsession": DRSession}
