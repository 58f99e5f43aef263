"""Exact round-trip counting for ``redis.asyncio`` clients, shared by the asyncio tests."""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis


def _first_word(packed: Any) -> str:
    """The command name at the start of a packed RESP write (for failure messages)."""
    if isinstance(packed, str):
        data = packed.encode()
    elif isinstance(packed, (bytes, bytearray, memoryview)):
        data = bytes(packed)
    else:
        data = b"".join(bytes(part) for part in packed)
    # *<n>\r\n$<len>\r\n<name>\r\n...
    try:
        _, _, rest = data.partition(b"\r\n")
        length_line, _, rest = rest.partition(b"\r\n")
        return rest[: int(length_line[1:])].decode("utf-8", "replace").upper()
    except ValueError:
        return "?"


class AsyncCounter:
    """A ``redis.asyncio`` client whose round trips are counted.

    Each ``send_packed_command`` outside a connection's handshake is one round trip.
    """

    def __init__(self, url: str) -> None:
        self.count = 0
        self.names: list[str] = []
        recorder = self

        class CountingConnection(aioredis.Connection):
            _handshaking = 0

            async def connect_check_health(self, *args: Any, **kwargs: Any) -> Any:
                self._handshaking += 1
                try:
                    return await super().connect_check_health(*args, **kwargs)
                finally:
                    self._handshaking -= 1

            async def send_packed_command(self, command: Any, check_health: bool = True) -> None:
                if not self._handshaking:
                    recorder.count += 1
                    recorder.names.append(_first_word(command))
                await super().send_packed_command(command, check_health)

        self.pool = aioredis.ConnectionPool.from_url(url, connection_class=CountingConnection)
        self.client = aioredis.Redis(connection_pool=self.pool)

    def reset(self) -> None:
        self.count = 0
        self.names = []

    def expect(self, n: int) -> _Expect:
        return _Expect(self, n)

    async def aclose(self) -> None:
        await self.client.aclose()
        await self.pool.aclose()


class _Expect:
    """``with counter.expect(n):`` resets the count and checks it on the way out."""

    def __init__(self, counter: AsyncCounter, n: int) -> None:
        self.counter = counter
        self.n = n

    def __enter__(self) -> AsyncCounter:
        self.counter.reset()
        return self.counter

    def __exit__(self, exc_type: Any, *rest: Any) -> None:
        if exc_type is None:
            got = self.counter.count
            assert got == self.n, (
                f"expected {self.n} round trip(s), got {got}: {self.counter.names}"
            )
