"""pyramid_redis_sessions 1.0.1: the whole session pickled in one string key (pinned venv:
Pyramid < 2, redis-py <= 5.3.1).

Opening a session with a cookie costs EXISTS + GET; after that every read sends EXPIRE
and every write re-writes the whole pickled session (MULTI, SET, EXPIRE, EXEC in one
round trip), so concurrent requests overwrite each other's changes.

It is configured with its ``host``/``port``/``db`` settings: with ``url`` it passes its
``charset`` option on to ``redis.Redis.from_url``, which no redis-py since 4.0 accepts.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from peerkit import COUNTER, FIELD, SECRET, TTL, VALUE, Contender, Dialect, Op, pyramid_app


class PyramidRedisSessions(Contender):
    library = "pyramid_redis_sessions"
    integration = "config.include('pyramid_redis_sessions') (Pyramid 1.10, pinned)"
    kind = "wsgi"
    framework = "Pyramid"
    memory = True
    dists = ("pyramid_redis_sessions", "pyramid", "redis")

    def __init__(self, url: str) -> None:
        super().__init__(url)
        parts = urlsplit(url)
        self.where = {
            "host": parts.hostname or "127.0.0.1",
            "port": parts.port or 6379,
            "db": int((parts.path or "/0").strip("/") or 0),
        }
        self.notes.append(
            "configured by host/port/db: its url setting fails on redis-py >= 4 "
            "(it passes charset to from_url)"
        )

    def _factory(self) -> tuple[Any, Any]:
        from pyramid.registry import Registry
        from pyramid_redis_sessions import RedisSessionFactory

        return RedisSessionFactory(SECRET, timeout=TTL, **self.where), Registry()

    def _request(self, registry: Any, cookie: str | None = None) -> Any:
        from pyramid.request import Request

        request = Request.blank("/", headers={"Cookie": cookie} if cookie else {})
        request.registry = registry
        return request

    def _session(self) -> tuple[Any, Any, Any, str]:
        from pyramid.session import signed_serialize

        factory, registry = self._factory()
        s = factory(self._request(registry))
        s[FIELD] = VALUE
        s[COUNTER] = 0
        cookie = "session=" + signed_serialize(s.session_id, SECRET)
        return factory, registry, s, cookie

    def steady(self) -> dict[str, Op | str]:
        _, _, s, _ = self._session()

        def p_set() -> None:
            s[FIELD] = VALUE

        def p_get() -> Any:
            return s[FIELD]

        def p_in() -> bool:
            return FIELD in s

        def p_delete() -> None:
            del s[FIELD]

        def p_incr() -> None:
            s[COUNTER] += 1

        return {
            "set": Op(p_set),
            "get": Op(p_get),
            "in": Op(p_in),
            "delete": Op(p_delete, p_set),  # re-set through the library: the value is a blob
            "incr": Op(p_incr),
        }

    def request(self) -> dict[str, Op | str]:
        factory, registry, s0, cookie = self._session()
        box: list[Any] = [None]

        def fresh() -> None:  # untimed: Pyramid builds the request object
            box[0] = self._request(registry, cookie)

        def reset_then_fresh() -> None:
            s0[FIELD] = VALUE
            fresh()

        def r_set() -> None:
            factory(box[0])[FIELD] = VALUE

        def r_get() -> None:
            factory(box[0])[FIELD]

        def r_in() -> None:
            FIELD in factory(box[0])  # noqa: B015

        def r_delete() -> None:
            del factory(box[0])[FIELD]

        def r_incr() -> None:
            factory(box[0])[COUNTER] += 1

        return {
            "set": Op(r_set, fresh),
            "get": Op(r_get, fresh),
            "in": Op(r_in, fresh),
            "delete": Op(r_delete, reset_then_fresh),
            "incr": Op(r_incr, fresh),
        }

    def build_app(self) -> Any:
        settings = {f"redis.sessions.{k}": str(v) for k, v in self.where.items()}
        settings.update({"redis.sessions.secret": SECRET, "redis.sessions.timeout": str(TTL)})

        def setup(config: Any) -> None:
            config.registry.settings.update(settings)
            config.include("pyramid_redis_sessions")

        return pyramid_app(lambda request: request.session, Dialect(), setup)


def contenders() -> dict[str, Callable[[str], Contender]]:
    return {"pyramid_redis_sessions": PyramidRedisSessions}
