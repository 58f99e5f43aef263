"""bottle-session: a Bottle plugin, one Redis hash per session, strings only (its own venv).

Every read also sends EXPIRE, every write HSET then EXPIRE; opening a session with a
cookie costs EXISTS + EXPIRE. Values must be strings, so the app stores JSON text (the
same bytes hashsession stores). It has no atomic increment: the counter is read, +1,
written back.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import bottle
import bottle_session
import redis

from peerkit import COUNTER, FIELD, TTL, VALUE, BareSocket, Contender, Dialect, Op, bottle_app

COOKIE = "bottle.session"


class BsDialect(Dialect):
    def write(self, s: Any, key: str, value: Any) -> None:
        s[key] = json.dumps(value)

    def write_many(self, s: Any, values: dict[str, Any]) -> None:
        for key, value in values.items():
            s[key] = json.dumps(value)

    def incr(self, s: Any, key: str) -> None:
        s[key] = str(int(s[key]) + 1)

    def bump_read(self, s: Any, key: str) -> Any:
        return int(s[key])

    def bump_write(self, s: Any, key: str, n: Any) -> None:
        s[key] = str(n + 1)

    def dump(self, s: Any) -> dict[str, Any]:
        return dict(s.items())


def environ(cookie: str | None) -> dict[str, Any]:
    env: dict[str, Any] = {"REQUEST_METHOD": "GET", "PATH_INFO": "/", "HTTP_HOST": "localhost"}
    if cookie:
        env["HTTP_COOKIE"] = cookie
    return env


class BottleSession(Contender):
    library = "bottle-session"
    integration = "bottle_session.SessionPlugin (Bottle)"
    kind = "wsgi"
    framework = "Bottle"
    memory = True
    dists = ("bottle-session", "bottle", "redis")

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.client = redis.Redis.from_url(url)
        self.notes.append(
            "a route naming `session` pays EXISTS + EXPIRE even if it never uses it; "
            "routes that do not name it pay nothing"
        )

    def _session(self) -> tuple[Any, str]:
        """A new session with the field and counter, under a bound request; its cookie."""
        bottle.request.bind(environ(None))
        bottle.response.bind()
        s = bottle_session.Session(self.client, COOKIE, TTL)
        s[FIELD] = json.dumps(VALUE)
        s[COUNTER] = "0"
        cookie = f"{COOKIE}={s.session_hash.removeprefix('session:').replace('-', '')}"
        bottle.request.bind(environ(cookie))
        bottle.response.bind()
        return bottle_session.Session(self.client, COOKIE, TTL), cookie

    def steady(self) -> dict[str, Op | str]:
        s, _ = self._session()
        bare = BareSocket(self.url)
        enc = json.dumps(VALUE)
        d = BsDialect()

        def b_set() -> None:
            s[FIELD] = enc

        def b_get() -> Any:
            return s[FIELD]

        def b_in() -> bool:
            return FIELD in s

        def b_delete() -> None:
            del s[FIELD]

        def b_incr() -> None:
            d.incr(s, COUNTER)

        return {
            "set": Op(b_set),
            "get": Op(b_get),
            "in": Op(b_in),
            "delete": Op(b_delete, bare.sender("HSET", s.session_hash, FIELD, enc)),
            "incr": Op(b_incr),
        }

    def request(self) -> dict[str, Op | str]:
        s0, cookie = self._session()
        key = s0.session_hash
        bare = BareSocket(self.url)
        enc = json.dumps(VALUE)
        d, client = BsDialect(), self.client
        Session = bottle_session.Session

        def bind() -> None:  # untimed: Bottle's per-request set-up
            bottle.request.bind(environ(cookie))
            bottle.response.bind()

        def reset_then_bind() -> None:
            bare.sender("HSET", key, FIELD, enc)()
            bind()

        def r_set() -> None:
            Session(client, COOKIE, TTL)[FIELD] = enc

        def r_get() -> None:
            Session(client, COOKIE, TTL)[FIELD]

        def r_in() -> None:
            FIELD in Session(client, COOKIE, TTL)  # noqa: B015

        def r_delete() -> None:
            del Session(client, COOKIE, TTL)[FIELD]

        def r_incr() -> None:
            d.incr(Session(client, COOKIE, TTL), COUNTER)

        return {
            "set": Op(r_set, bind),
            "get": Op(r_get, bind),
            "in": Op(r_in, bind),
            "delete": Op(r_delete, reset_then_bind),
            "incr": Op(r_incr, bind),
        }

    def build_app(self) -> Any:
        parts = urlsplit(self.url)
        db = int((parts.path or "/0").strip("/") or 0)

        def setup(app: Any) -> None:
            app.install(
                bottle_session.SessionPlugin(
                    host=parts.hostname, port=parts.port, db=db, cookie_lifetime=TTL
                )
            )

        return bottle_app(BsDialect(), setup)


def contenders() -> dict[str, Callable[[str], Contender]]:
    return {"bottle-session": BottleSession}
