"""A real TCP proxy on 127.0.0.1 that loses replies (or commands) on demand.

Used by ``tests/test_retry_policy.py`` and ``bench/faults.py`` (scenario 5): a
command goes through to the real server and runs there, and its reply never
reaches the client, which is what a dropped connection or a socket timeout
after the server answered looks like. ``tests/test_state_follows_server.py``
also has it lose a command on its way in (``"refuse"``): the connection breaks
before the server sees it, so the command never runs.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Literal

__all__ = ["LOSSES", "Loss", "LossyProxy"]

Loss = Literal["drop", "withhold", "refuse"]
#: The ways of losing a reply to a command that ran (``"refuse"`` loses the command itself).
LOSSES: tuple[Loss, ...] = ("drop", "withhold")
_JOIN_TIMEOUT = 5.0


class _Link:
    """One client connection through the proxy, paired with its own connection to the server."""

    def __init__(self, client: socket.socket, server: socket.socket) -> None:
        self.client = client
        self.server = server
        #: How this link loses the reply to the command it carries next, once armed.
        self.loss: Loss | None = None
        self.threads: list[threading.Thread] = []

    def close(self) -> None:
        """Close both sides; shutting down first wakes a pump blocked in ``recv``."""
        for sock in (self.client, self.server):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()


class LossyProxy:
    """A TCP proxy on 127.0.0.1 that forwards everything, or loses one reply when armed.

    After :meth:`lose_next`, the next bytes any client sends are forwarded to the
    server and the server's reply is read, so the command has run, but never
    passed on: ``"drop"`` then closes the client's connection, ``"withhold"``
    keeps it open and silent until the client gives up. ``"refuse"`` instead
    closes the connection without forwarding those bytes: the command never
    runs (they are kept in :attr:`refused`). Each client connection
    gets its own connection to the server and two daemon threads pumping bytes.
    """

    def __init__(self, host: str, port: int, *, count: bytes | tuple[bytes, ...] = b"") -> None:
        self._target = (host, port)
        self._count = (count,) if isinstance(count, bytes) else count
        #: How many chunks clients sent that hold ``count`` (or one of several markers),
        #: when given; with ``count``, :meth:`lose_next` waits for such a chunk.
        self.forwarded = 0
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self._lock = threading.Lock()
        self._armed: Loss | None = None
        self._skip = 0
        self._links: list[_Link] = []
        self._closed = False
        #: How many client connections the proxy has accepted.
        self.connections = 0
        #: The replies the server sent that the proxy did not pass on.
        self.lost_replies: list[bytes] = []
        #: The commands (raw bytes) that ``"refuse"`` kept from the server.
        self.refused: list[bytes] = []
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def url(self, **options: float) -> str:
        """A ``redis://`` URL through the proxy, with connection options in the query."""
        query = "&".join(f"{name}={value}" for name, value in options.items())
        return f"redis://127.0.0.1:{self.port}/0" + (f"?{query}" if query else "")

    def lose_next(self, loss: Loss, *, after: int = 0) -> None:
        """Lose the reply to the next command any client sends, in the way ``loss`` says.

        With ``after``, that many commands (holding ``count``, when given) go through first.
        """
        with self._lock:
            self._armed = loss
            self._skip = after

    def drop_all(self) -> None:
        """Close every open connection (as a server restart would) and keep listening."""
        with self._lock:
            links, self._links = self._links, []
        self._stop(links)

    def close(self) -> None:
        """Stop listening, close every connection and wait for the threads to end."""
        with self._lock:
            self._closed = True
            links, self._links = self._links, []
        with contextlib.suppress(OSError):
            self._listener.shutdown(socket.SHUT_RDWR)
        self._listener.close()
        self._acceptor.join(_JOIN_TIMEOUT)
        self._stop(links)

    @staticmethod
    def _stop(links: list[_Link]) -> None:
        for link in links:
            link.close()
        for link in links:
            for thread in link.threads:
                thread.join(_JOIN_TIMEOUT)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                server = socket.create_connection(self._target)
            except OSError:
                client.close()
                continue
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = _Link(client, server)
            # Listed before a byte flows, so a drop_all() right after a reply sees it.
            with self._lock:
                closed = self._closed
                if not closed:
                    self._links.append(link)
                    self.connections += 1
            if closed:
                link.close()
                return
            for pump in (self._upstream, self._downstream):
                thread = threading.Thread(target=pump, args=(link,), daemon=True)
                link.threads.append(thread)
                thread.start()

    def _upstream(self, link: _Link) -> None:
        """Client to server; the first command after arming marks its link as losing."""
        try:
            while data := link.client.recv(65536):
                with self._lock:
                    counted = any(marker and marker in data for marker in self._count)
                    self.forwarded += counted
                    # With ``count``, only a command holding it loses its reply (not, say,
                    # the handshake of the connection that replaces a dropped one).
                    takes = counted or not any(self._count)
                    if self._armed is not None and link.loss is None and takes:
                        if self._skip:
                            self._skip -= 1
                        else:
                            link.loss, self._armed = self._armed, None
                    if link.loss == "refuse":
                        self.refused.append(data)
                        break
                link.server.sendall(data)
        except OSError:
            pass
        finally:
            link.close()

    def _downstream(self, link: _Link) -> None:
        """Server to client; on a losing link, replies are kept here instead."""
        try:
            while data := link.server.recv(65536):
                if link.loss is None:
                    link.client.sendall(data)
                    continue
                with self._lock:
                    self.lost_replies.append(data)
                if link.loss == "drop":
                    break
        except OSError:
            pass
        finally:
            link.close()
