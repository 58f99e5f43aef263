"""The clients hashsession builds from URLs (one server or a Sentinel master) send plainly.

redis-py's ``execute_command`` wraps every command: a retry policy (which the clients
built from URLs turn off: nothing is resent, see :mod:`hashsession.transport`), metrics
events, then the reply's conversion. Nearly every command hashsession sends (``EVALSHA``,
``HGET``, ``HMGET``, ``HSET``...) has no conversion, so :class:`DirectRedis` and
:class:`AsyncDirectRedis` send those straight on a connection from the client's own pool
and read the reply there: the same pool, connections, Sentinel fencing and errors, about
7 µs less per command (docs/benchmarks-core.md). Anything else (a command redis-py
converts, keyword options, a single-connection client) goes through redis-py as before.
Clients that users pass in are used as they are.
"""

from __future__ import annotations

import inspect
from typing import Any

import redis
import redis.asyncio as aioredis

__all__ = ["AsyncDirectRedis", "DirectRedis"]


def _pool_args(method: Any) -> tuple[str, ...]:
    """What ``get_connection`` takes: nothing (redis-py 6 and later warn about a command
    name), or a command name it does not use (redis-py 5)."""
    parameter = inspect.signature(method).parameters.get("command_name")
    needed = parameter is not None and parameter.default is inspect.Parameter.empty
    return ("_",) if needed else ()


_SYNC_ARGS = _pool_args(redis.ConnectionPool.get_connection)
_ASYNC_ARGS = _pool_args(aioredis.ConnectionPool.get_connection)


def _converted(client: Any, args: tuple[Any, ...], options: dict[str, Any]) -> bool:
    """Whether redis-py must send this command itself: it converts the reply, takes
    options, or the client keeps a single connection."""
    name = args[0]
    return (
        bool(options)
        or type(name) is not str
        or client.connection is not None
        or name in client.response_callbacks
    )


class DirectRedis(redis.Redis):
    """``redis.Redis`` sending unconverted commands straight on a pooled connection."""

    def execute_command(self, *args: Any, **options: Any) -> Any:
        if _converted(self, args, options):
            return super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        pool = self.connection_pool
        conn = pool.get_connection(*_SYNC_ARGS)
        try:  # a connection that fails mid-command disconnects itself (redis-py)
            conn.send_command(*args)  # type: ignore[no-untyped-call]
            return conn.read_response()
        finally:
            pool.release(conn)


class AsyncDirectRedis(aioredis.Redis):
    """``redis.asyncio.Redis`` sending unconverted commands straight on a pooled connection."""

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        if _converted(self, args, options):
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        pool = self.connection_pool
        conn = await pool.get_connection(*_ASYNC_ARGS)  # type: ignore[no-untyped-call]
        try:  # a connection that fails or is cancelled mid-command disconnects itself
            await conn.send_command(*args)
            return await conn.read_response()
        finally:
            await pool.release(conn)
