"""A loopback TCP proxy that can swallow the reply to one marked command.

Used by ``bench/faults.py`` to lose a reply after the server has applied the
command: the proxy forwards the client's bytes, and when armed with a marker it
waits for the server's answer to the next command containing that marker, then
closes the client's connection instead of passing the answer on. What a client
does next (give up, or send the command again) shows on the server.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from types import TracebackType

__all__ = ["LossyProxy"]

HOST = "127.0.0.1"
_CHUNK = 65536


class _Link:
    """One client connection and its upstream connection to the server."""

    def __init__(self, client: socket.socket, upstream: socket.socket) -> None:
        self.client = client
        self.upstream = upstream
        self.drop_reply = False

    def close(self) -> None:
        for sock in (self.client, self.upstream):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()


class LossyProxy:
    """Forward ``127.0.0.1:<port>`` to ``target``; :meth:`arm` loses one reply.

    ``forwarded`` counts the commands containing the marker that reached the
    server; ``swallowed`` counts the replies withheld.
    """

    def __init__(self, target: tuple[str, int], marker: bytes) -> None:
        self.target = target
        self.marker = marker
        self.forwarded = 0
        self.swallowed = 0
        self._armed = False
        self._lock = threading.Lock()
        self._links: list[_Link] = []
        self._threads: list[threading.Thread] = []
        self._listener = socket.create_server((HOST, 0))
        self.port: int = self._listener.getsockname()[1]
        self._closed = False

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    def arm(self) -> None:
        """Withhold the reply to the next command that contains the marker."""
        with self._lock:
            self._armed = True

    def start(self) -> LossyProxy:
        self._spawn(self._accept)
        return self

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            links = list(self._links)
        for link in links:
            link.close()
        for thread in self._threads:
            thread.join(2.0)

    def __enter__(self) -> LossyProxy:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            upstream.settimeout(None)
            link = _Link(client, upstream)
            with self._lock:
                self._links.append(link)
            self._spawn(self._to_server, link)
            self._spawn(self._to_client, link)

    def _to_server(self, link: _Link) -> None:
        try:
            while data := link.client.recv(_CHUNK):
                if self.marker in data:
                    with self._lock:
                        self.forwarded += data.count(self.marker)
                        if self._armed:
                            self._armed = False
                            link.drop_reply = True
                link.upstream.sendall(data)
        except OSError:
            pass
        link.close()

    def _to_client(self, link: _Link) -> None:
        try:
            while data := link.upstream.recv(_CHUNK):
                if link.drop_reply:
                    # The server has applied the command and answered: drop the answer
                    # and the connection, as a network failure at this moment would.
                    with self._lock:
                        self.swallowed += 1
                    break
                link.client.sendall(data)
        except OSError:
            pass
        link.close()
