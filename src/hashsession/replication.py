"""Waiting for replicas after security-critical writes (the ``wait_for_replicas`` setting).

Redis replicates asynchronously: a master that fails right after logging a
user out can hand over to a replica that never saw the logout, and the old
cookie works again. With ``wait_for_replicas=N``, ``invalidate``,
``regenerate``, ``login``, ``revoke`` and ``revoke_user`` send ``WAIT N ms``
behind their write, in the same round trip and on the same connection (WAIT
counts that connection's writes; :func:`hashsession.transport.pipeline` sends
both), and raise :class:`NotReplicatedError` when fewer than N replicas
confirmed in time. Other writes never wait.

``wait_for_replicas="auto"`` (the default) waits for one replica on Sentinel
whenever the sentinels know a healthy one (see :mod:`hashsession.failover`), and
never elsewhere.
"""

from __future__ import annotations

from hashsession.config import SessionConfig
from hashsession.errors import NotReplicatedError
from hashsession.protocol import Command, wait_commands

__all__ = ["check", "waited"]


def waited(config: SessionConfig, commands: list[Command], wanted: int) -> list[Command]:
    """``commands`` followed by the fence and the ``WAIT`` for ``wanted`` replicas
    (:data:`~hashsession.protocol.WAIT_FENCE`)."""
    return [*commands, *wait_commands(config, wanted)]


def check(wanted: int, replicas: int) -> None:
    """Raise :class:`NotReplicatedError` if ``replicas`` fall short of ``wanted``."""
    if replicas < wanted:
        raise NotReplicatedError(wanted, replicas)
