"""redis-session 0.2.1: one Redis hash per session, attribute access (its own venvs).

``session.name`` is an ``HGET`` (a result object with ``.str``/``.int``/``.json``),
``session.name = v`` is ``HSET`` then ``EXPIRE``, opening a session sends ``EXPIRE``.
It has no membership test (``hasattr`` is always true) and no atomic increment. Its
Tornado half runs on current releases; its Flask half needs Werkzeug < 1.0 (pinned
venv). Both halves share the per-operation tables; the Tornado venv measures them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from peerkit import (
    COUNTER,
    FIELD,
    SECRET,
    TTL,
    VALUE,
    BareSocket,
    Contender,
    Dialect,
    Op,
    SyncInAsync,
    flask_app,
    new_id,
)

OPTIONS = {"session_redis_prefix": None, "session_expire": TTL}


class RsDialect(Dialect):
    def read(self, s: Any, key: str) -> Any:
        return getattr(s, key).str

    def write(self, s: Any, key: str, value: Any) -> None:
        setattr(s, key, json.dumps(value))

    def write_many(self, s: Any, values: dict[str, Any]) -> None:
        s.save({k: json.dumps(v) for k, v in values.items()})  # HMSET + EXPIRE

    def incr(self, s: Any, key: str) -> None:
        setattr(s, key, getattr(s, key).int + 1)

    def bump_read(self, s: Any, key: str) -> Any:
        return getattr(s, key).int

    def bump_write(self, s: Any, key: str, n: Any) -> None:
        setattr(s, key, n + 1)

    def dump(self, s: Any) -> dict[str, Any]:
        return {k.decode(): v.decode() for k, v in s.load().items()}


class RedisSessionTornado(Contender):
    library = "redis-session"
    integration = "redis_session.tornado_session.SessionHandler (Tornado)"
    kind = "tornado"
    framework = "Tornado"
    memory = True
    dists = ("redis-session", "tornado", "redis")

    def __init__(self, url: str) -> None:
        super().__init__(url)
        from redis_session import tornado_session  # noqa: F401  (defines the options)
        from tornado.options import options

        options.session_redis = url
        options.session_expire = TTL
        self.options = dict(OPTIONS, session_redis=url)

    def _session(self) -> tuple[Any, str]:
        from redis_session.session import Session

        sid = new_id()
        s = Session(sid, **self.options)
        s.save({FIELD: json.dumps(VALUE), COUNTER: 0})
        return s, sid

    def steady(self) -> dict[str, Op | str]:
        s, _ = self._session()
        enc = json.dumps(VALUE)
        d = RsDialect()
        key = s.key._key({"sessionId": s.sessionId})
        bare = BareSocket(self.url)
        ops: dict[str, Op | str] = {
            "set": Op(lambda: setattr(s, FIELD, enc)),
            "get": Op(lambda: getattr(s, FIELD).str),
            "in": "no membership test (hasattr() is always true: __getattr__ never raises)",
            "incr": Op(lambda: d.incr(s, COUNTER)),
        }
        try:
            delattr(s, FIELD)
        except Exception as exc:
            ops["delete"] = f"broken: del session.{FIELD} raises {type(exc).__name__}: {exc}"
        else:
            bare.sender("HSET", key, FIELD, enc)()
            ops["delete"] = Op(lambda: delattr(s, FIELD), bare.sender("HSET", key, FIELD, enc))
        return ops

    def request(self) -> dict[str, Op | str]:
        from redis_session.session import Session

        _, sid = self._session()
        enc = json.dumps(VALUE)
        d, opts = RsDialect(), self.options
        steady = self.steady()
        out: dict[str, Op | str] = {
            "set": Op(lambda: setattr(Session(sid, **opts), FIELD, enc)),
            "get": Op(lambda: getattr(Session(sid, **opts), FIELD).str),
            "incr": Op(lambda: d.incr(Session(sid, **opts), COUNTER)),
        }
        out["in"] = steady["in"]
        out["delete"] = steady["delete"] if isinstance(steady["delete"], str) else "not measured"
        return out

    def build_app(self) -> Any:
        from redis_session.tornado_session import SessionHandler

        from peerkit import tornado_app

        return tornado_app(
            SessionHandler, lambda h: h.session, SyncInAsync(RsDialect()), {"cookie_secret": SECRET}
        )


class RedisSessionFlask(Contender):
    library = "redis-session"
    integration = "redis_session.flask_session.setup_session (Flask 1.1.4, pinned)"
    kind = "wsgi"
    framework = "Flask"
    dists = ("redis-session", "flask", "werkzeug", "redis")

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.notes.append("every request opens the session in before_request: one EXPIRE")

    def build_app(self) -> Any:
        import flask
        from redis_session.flask_session import setup_session

        url = self.url

        def setup(app: Any) -> None:
            app.config.update(SESSION_REDIS=url, SESSION_EXPIRE=TTL)
            setup_session(app)

        return flask_app(lambda: getattr(flask.request, "session"), RsDialect(), setup)  # noqa: B009


def contenders() -> dict[str, Callable[[str], Contender]]:
    return {"redis-session-tornado": RedisSessionTornado, "redis-session-flask": RedisSessionFlask}
