"""The clients hashsession builds from URLs (one server or a Sentinel master) send plainly.

redis-py's ``execute_command`` wraps every command in a retry policy (which the clients
built from URLs turn off: nothing is resent, see :mod:`hashsession.transport`) and
metrics events. :class:`DirectRedis` and :class:`AsyncDirectRedis` send a command
straight on a connection from the client's own pool, read the reply there and convert
it as redis-py would (its response callback): the same pool, connections, Sentinel
fencing, errors and replies, a few microseconds less per command
(docs/benchmarks-core.md). A command with keyword options (redis-py's own command
methods pass some) and a single-connection client go through redis-py as before.
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


def _wrapped(client: Any, args: tuple[Any, ...], options: dict[str, Any]) -> bool:
    """Whether redis-py must send this command itself: it takes options (its own command
    methods pass some), or the client keeps a single connection."""
    return bool(options) or type(args[0]) is not str or client.connection is not None


class DirectRedis(redis.Redis):
    """``redis.Redis`` sending commands straight on a pooled connection."""

    def execute_command(self, *args: Any, **options: Any) -> Any:
        if _wrapped(self, args, options):
            return super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        pool = self.connection_pool
        conn = pool.get_connection(*_SYNC_ARGS)
        try:  # a connection that fails mid-command disconnects itself (redis-py)
            conn.send_command(*args)  # type: ignore[no-untyped-call]
            reply = conn.read_response()
        finally:
            pool.release(conn)
        convert = self.response_callbacks.get(args[0])  # type: ignore[no-untyped-call]
        return reply if convert is None else convert(reply)


class AsyncDirectRedis(aioredis.Redis):
    """``redis.asyncio.Redis`` sending commands straight on a pooled connection."""

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        if _wrapped(self, args, options):
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]
        pool = self.connection_pool
        conn = await pool.get_connection(*_ASYNC_ARGS)  # type: ignore[no-untyped-call]
        try:  # a connection that fails or is cancelled mid-command disconnects itself
            await conn.send_command(*args)
            reply = await conn.read_response()
        finally:
            await pool.release(conn)
        convert = self.response_callbacks.get(args[0])
        return reply if convert is None else convert(reply)
