"""Beaker (``ext:redis``): the whole session pickled in one string key, loaded on first use,
written back at the end of the request after ``session.save()`` (its own venv).

Defaults kept (pickle, ``save_accessed_time=True``): a request that only reads still
writes the session back (SETEX) to record the access time.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from peerkit import COUNTER, FIELD, TTL, VALUE, Contender, Dialect, Op, cookie_from, plain_wsgi


class BeakerDialect(Dialect):
    def dump(self, s: Any) -> dict[str, Any]:
        return {k: s[k] for k in list(s)}

    def finish(self, s: Any, wrote: bool) -> None:
        if wrote:
            s.save()  # Beaker writes nothing back unless asked (or auto=True)


class Beaker(Contender):
    library = "Beaker"
    integration = "beaker.middleware.SessionMiddleware, type=ext:redis, bare WSGI app"
    kind = "wsgi"
    memory = True
    dists = ("beaker", "redis")

    def _middleware(self, app: Any) -> Any:
        from beaker.middleware import SessionMiddleware

        return SessionMiddleware(
            app,
            {"session.type": "ext:redis", "session.url": self.url, "session.timeout": TTL},
        )

    def build_app(self) -> Any:
        return self._middleware(plain_wsgi(lambda env: env["beaker.session"], BeakerDialect()))

    def request(self) -> dict[str, Op | str]:
        from beaker.session import SessionObject

        params = self._middleware(None).options
        first = SessionObject({}, **params)
        first[FIELD] = VALUE
        first[COUNTER] = 0
        first.save()
        first.persist()
        cookie = cookie_from([first.__dict__["_headers"]["cookie_out"]])
        box: list[Any] = [None]

        def fresh() -> None:  # untimed: the environ the middleware would hand over
            box[0] = {"HTTP_COOKIE": cookie}

        def cycle(op: Callable[[Any], Any], wrote: bool) -> Callable[[], None]:
            def run() -> None:
                s = SessionObject(box[0], **params)
                op(s)
                if wrote:
                    s.save()
                s.persist()  # what the middleware does when the response starts

            return run

        def do_set(s: Any) -> None:
            s[FIELD] = VALUE

        def do_delete(s: Any) -> None:
            del s[FIELD]

        def do_incr(s: Any) -> None:
            s[COUNTER] += 1

        set_cycle = cycle(do_set, True)

        def reset_then_fresh() -> None:
            fresh()
            set_cycle()
            fresh()

        return {
            "set": Op(set_cycle, fresh),
            "get": Op(cycle(lambda s: s[FIELD], False), fresh),
            "in": Op(cycle(lambda s: FIELD in s, False), fresh),
            "delete": Op(cycle(do_delete, True), reset_then_fresh),
            "incr": Op(cycle(do_incr, True), fresh),
        }

    def steady(self) -> dict[str, Op | str]:
        why = "ops run on an in-memory dict (no Redis); its Redis cost is per request (load+save)"
        return dict.fromkeys(("set", "get", "in", "delete", "incr"), why)


def contenders() -> dict[str, Callable[[str], Contender]]:
    return {"beaker": Beaker}
