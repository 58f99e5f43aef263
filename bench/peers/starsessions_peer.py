"""starsessions (RedisStore): the whole session (JSON) in one string key, loaded by
``await load_session(request)`` and written back when the response starts (its own venv).

Measured without ``SessionAutoloadMiddleware`` (a view loads the session only when it
uses it, the cheaper way), with ``lifetime`` = 14 days and ``rolling=True`` (an idle
timeout, like the others). Its Redis client gets the pool hashsession builds for itself
(``BlockingConnectionPool``, 200 connections, waiting up to 20 s): with
``Redis.from_url(url)`` (redis-py 8: at most 100 connections, raising when they are all
busy) the race test's 200 simultaneous loads fail with ``MaxConnectionsError``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from peerkit import (
    COUNTER,
    FIELD,
    TTL,
    VALUE,
    Contender,
    Dialect,
    Op,
    SyncInAsync,
    starlette_app,
)


class Starsessions(Contender):
    library = "starsessions"
    integration = "starsessions.SessionMiddleware + RedisStore (Starlette)"
    kind = "asgi"
    framework = "Starlette"
    floor = "async"
    memory = True
    dists = ("starsessions", "starlette", "redis")

    def __init__(self, url: str) -> None:
        super().__init__(url)
        self.notes.append(
            "its client uses hashsession's pool settings (blocking, 200 connections): with "
            "redis-py 8's default pool (100, raising when exhausted) every one of the 200 "
            "concurrent race requests failed with MaxConnectionsError"
        )

    def _store(self) -> Any:
        import redis.asyncio as aioredis
        from starsessions.stores.redis import RedisStore

        pool = aioredis.BlockingConnectionPool.from_url(self.url, max_connections=200, timeout=20)
        return RedisStore(connection=aioredis.Redis(connection_pool=pool))

    def build_app(self) -> Any:
        from starlette.middleware import Middleware
        from starsessions import SessionMiddleware, load_session

        async def get(request: Any) -> Any:
            await load_session(request)
            return request.session

        mw = Middleware(
            SessionMiddleware,
            store=self._store(),
            lifetime=TTL,
            rolling=True,
            cookie_https_only=False,
        )
        return starlette_app(get, SyncInAsync(Dialect()), [mw])

    def request(self) -> dict[str, Op | str]:
        from starlette.requests import HTTPConnection
        from starsessions.serializers import JsonSerializer
        from starsessions.session import SessionHandler

        store, serializer = self._store(), JsonSerializer()
        state: dict[str, Any] = {}

        def scope() -> dict[str, Any]:
            cookie = f"session={state['sid']}".encode() if "sid" in state else b""
            return {"type": "http", "headers": [(b"cookie", cookie)] if cookie else []}

        async def cycle_of(op: Callable[[Any], Any]) -> None:
            conn = HTTPConnection(scope())
            handler = SessionHandler(conn, conn.cookies.get("session"), store, serializer, TTL)
            conn.scope["session_handler"] = handler
            await handler.load()
            op(conn.session)
            state["sid"] = await handler.save(TTL)  # rolling: the full lifetime again

        def do_set(s: Any) -> None:
            s[FIELD] = VALUE

        def do_start(s: Any) -> None:
            s[FIELD] = VALUE
            s[COUNTER] = 0

        def do_delete(s: Any) -> None:
            del s[FIELD]

        def do_incr(s: Any) -> None:
            s[COUNTER] += 1

        def make(op: Callable[[Any], Any]) -> Callable[[], Any]:
            async def run() -> None:
                await cycle_of(op)

            return run

        async def reset() -> None:
            await cycle_of(do_set)

        import asyncio

        asyncio.get_event_loop().run_until_complete(cycle_of(do_start))
        return {
            "set": Op(make(do_set)),
            "get": Op(make(lambda s: s[FIELD])),
            "in": Op(make(lambda s: FIELD in s)),
            "delete": Op(make(do_delete), reset),
            "incr": Op(make(do_incr)),
        }

    def steady(self) -> dict[str, Op | str]:
        why = "ops run on an in-memory dict (no Redis); its Redis cost is per request (load+save)"
        return dict.fromkeys(("set", "get", "in", "delete", "incr"), why)


def contenders() -> dict[str, Callable[[str], Contender]]:
    return {"starsessions": Starsessions}
