"""Flask-Session (Redis backend): the whole session (msgpack) in one string key, loaded when
the request starts and written back when it ends (its own venv).

Defaults kept: a request with a cookie always loads the session (GET) and, with
``SESSION_REFRESH_EACH_REQUEST`` (default on for permanent sessions), always writes it
back (SET with EX), even when the view never touched it.
"""

from __future__ import annotations

import datetime
from collections.abc import Callable
from typing import Any

from peerkit import COUNTER, FIELD, TTL, VALUE, Contender, Dialect, Op, flask_app


class FlaskSession(Contender):
    library = "Flask-Session"
    integration = "flask_session.Session, SESSION_TYPE=redis (Flask)"
    kind = "wsgi"
    framework = "Flask"
    memory = True
    dists = ("flask-session", "flask", "msgspec", "redis")

    def _setup(self, app: Any) -> None:
        import redis
        from flask_session import Session

        app.config.update(
            SESSION_TYPE="redis",
            SESSION_REDIS=redis.Redis.from_url(self.url),
            PERMANENT_SESSION_LIFETIME=datetime.timedelta(seconds=TTL),
        )
        Session(app)

    def build_app(self) -> Any:
        import flask

        return flask_app(lambda: flask.session, Dialect(), self._setup)

    def request(self) -> dict[str, Op | str]:
        from peerkit import WsgiDriver, cookie_from

        app = self.build_app()
        iface = app.session_interface
        base = WsgiDriver(app).base
        # a session holding the field and the counter, made the library's own way
        req = app.request_class(dict(base, PATH_INFO="/", QUERY_STRING=""))
        s = iface.open_session(app, req)
        s[FIELD] = VALUE
        s[COUNTER] = 0
        resp = app.response_class()
        iface.save_session(app, s, resp)
        cookie = cookie_from(resp.headers.getlist("Set-Cookie"))
        box: list[Any] = [None, None]

        def fresh() -> None:  # untimed: Flask builds the request and response objects
            environ = dict(base, PATH_INFO="/", QUERY_STRING="", HTTP_COOKIE=cookie)
            box[0], box[1] = app.request_class(environ), app.response_class()

        def cycle(op: Callable[[Any], Any]) -> Callable[[], None]:
            open_session, save_session = iface.open_session, iface.save_session

            def run() -> None:
                s = open_session(app, box[0])
                op(s)
                save_session(app, s, box[1])

            return run

        def do_set(s: Any) -> None:
            s[FIELD] = VALUE

        def do_delete(s: Any) -> None:
            del s[FIELD]

        def do_incr(s: Any) -> None:
            s[COUNTER] += 1

        set_cycle = cycle(do_set)

        def reset_then_fresh() -> None:
            fresh()
            set_cycle()
            fresh()

        return {
            "set": Op(set_cycle, fresh),
            "get": Op(cycle(lambda s: s[FIELD]), fresh),
            "in": Op(cycle(lambda s: FIELD in s), fresh),
            "delete": Op(cycle(do_delete), reset_then_fresh),
            "incr": Op(cycle(do_incr), fresh),
        }

    def steady(self) -> dict[str, Op | str]:
        why = "ops run on an in-memory dict (no Redis); its Redis cost is per request (load+save)"
        return dict.fromkeys(("set", "get", "in", "delete", "incr"), why)


def contenders() -> dict[str, Callable[[str], Contender]]:
    return {"flask-session": FlaskSession}
