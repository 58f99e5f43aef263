"""Waiting for replicas after security-critical writes (the ``wait_for_replicas`` setting).

Redis replicates asynchronously: a master that fails right after logging a
user out can hand over to a replica that never saw the logout, and the old
cookie works again. With ``wait_for_replicas=N``, ``invalidate``,
``regenerate``, ``login``, ``revoke`` and ``revoke_user`` send ``WAIT N ms``
behind their write, in the same round trip and on the same connection (WAIT
counts that connection's writes), and raise :class:`NotReplicatedError` when
fewer than N replicas confirmed in time. Other writes never wait.
"""

from __future__ import annotations

from typing import Any

from redis.exceptions import NoScriptError

from hashsession.config import SessionConfig
from hashsession.errors import NotReplicatedError
from hashsession.protocol import Command
from hashsession.scripts import with_source

__all__ = ["apipeline", "check", "pipeline", "waited"]


def waited(config: SessionConfig, commands: list[Command]) -> list[Command]:
    """``commands`` followed by the ``WAIT`` the settings ask for."""
    return [*commands, ("WAIT", config.wait_replicas, config.wait_timeout_ms)]


def check(config: SessionConfig, replicas: int) -> None:
    """Raise :class:`NotReplicatedError` if ``replicas`` fall short of the setting."""
    if replicas < config.wait_replicas:
        raise NotReplicatedError(config.wait_replicas, replicas)


def pipeline(client: Any, commands: list[Command]) -> list[Any]:
    """Send ``commands`` as one non-transactional pipeline (one connection, one round trip).

    A script the server does not know yet is sent again with its source.
    """
    try:
        return _pipeline(client, commands)
    except NoScriptError:
        return _pipeline(client, [with_source(cmd) for cmd in commands])


def _pipeline(client: Any, commands: list[Command]) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for cmd in commands:
        pipe.execute_command(*cmd)
    return pipe.execute()  # type: ignore[no-any-return]


async def apipeline(client: Any, commands: list[Command]) -> list[Any]:
    """The asyncio twin of :func:`pipeline`."""
    try:
        return await _apipeline(client, commands)
    except NoScriptError:
        return await _apipeline(client, [with_source(cmd) for cmd in commands])


async def _apipeline(client: Any, commands: list[Command]) -> list[Any]:
    pipe = client.pipeline(transaction=False)
    for cmd in commands:
        pipe.execute_command(*cmd)
    return await pipe.execute()  # type: ignore[no-any-return]
