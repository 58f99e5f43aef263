"""One development server per project, shared by every process that leaves ``redis`` unset.

A store with no ``redis`` setting asks :func:`default_url`. The first process of a project
(a folder: the current directory) starts a *keeper*, a small detached process that runs an
embedded server and stops it once no process that uses it is alive for ``grace`` seconds.
Every later process (a reloader's next child, the other workers) finds it through a state
file and uses it too, so sessions survive reloads and are the same in every worker.
``hashsession server`` runs the same server in the foreground instead, until stopped.

The state lives in a directory only this user can read (``HASHSESSION_DEV_DIR``, else
``$XDG_RUNTIME_DIR/hashsession``, else ``<tmp>/hashsession-<uid>``); the server listens on
127.0.0.1 and a unix socket there, with a password from that state. ``HASHSESSION_DEV_SERVER
=private`` gives each process a server of its own (the behaviour before sharing).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import redis

from hashsession.embedded import EmbeddedRedis, default_server, free_port, server_identity
from hashsession.errors import ConfigurationError, HashSessionError

__all__ = [
    "DIR_ENV",
    "GRACE_ENV",
    "MODE_ENV",
    "ServerRunningError",
    "ServerState",
    "default_url",
    "running_url",
    "serve",
]

logger = logging.getLogger("hashsession")

DIR_ENV = "HASHSESSION_DEV_DIR"
"""Environment variable naming the directory of the development servers' state."""

MODE_ENV = "HASHSESSION_DEV_SERVER"
"""``shared`` (the default): one server per project; ``private``: one per process."""

GRACE_ENV = "HASHSESSION_DEV_GRACE"
"""Seconds a shared server outlives the last process that used it (default 3): long
enough for a reloader to start the next child, short enough to leave nothing behind."""

_DEFAULT_GRACE = 3.0
_POLL = 0.1
_START_TIMEOUT = 20.0
_PORT_LOW, _PORT_SPAN = 20000, 20000
_MAX_SOCKET_PATH = 100  # sun_path holds 104-108 bytes


class ServerRunningError(HashSessionError):
    """``hashsession server`` found the project's server running already (it says where)."""


@dataclass(frozen=True)
class ServerState:
    """Where a project's development server is and who runs it (the state file)."""

    pid: int  # the keeper, or the ``hashsession server`` process
    server_pid: int
    port: int
    unix_socket: str | None
    password: str
    mode: str  # "shared" (a keeper) or "foreground" (hashsession server)

    @property
    def url(self) -> str:
        """The TCP URL, password included."""
        return f"redis://:{self.password}@127.0.0.1:{self.port}/0"

    @property
    def socket_url(self) -> str | None:
        """The unix socket URL, password included, when the server has a socket."""
        if self.unix_socket is None:
            return None
        return f"unix://:{self.password}@{self.unix_socket}?db=0"


# -- where the state lives -------------------------------------------------------------


def state_dir() -> Path:
    """The per-user state directory, made private to this user if it is new."""
    configured = os.environ.get(DIR_ENV)
    if configured:
        base = Path(configured)
    elif os.environ.get("XDG_RUNTIME_DIR"):
        base = Path(os.environ["XDG_RUNTIME_DIR"]) / "hashsession"
    else:
        base = Path(tempfile.gettempdir()) / f"hashsession-{os.getuid()}"
    base.mkdir(mode=0o700, parents=True, exist_ok=True)
    info = base.stat()
    if info.st_uid != os.getuid():
        raise ConfigurationError(DIR_ENV, f"{base} must belong to this user")
    if info.st_mode & 0o077:  # ours but open to others (a umask): close it
        base.chmod(0o700)
    return base


def project_id(directory: str | None = None) -> str:
    """A short name for a project: a digest of its folder's real path."""
    path = os.path.realpath(directory or os.getcwd())
    return hashlib.sha256(path.encode("utf-8", "surrogateescape")).hexdigest()[:12]


class _Project:
    """The files of one project's server in the state directory."""

    def __init__(self, base: Path, name: str) -> None:
        self.name = name
        self.state = base / f"{name}.json"
        self.lock = base / f"{name}.lock"
        self.users = base / f"{name}.users"
        self.log = base / f"{name}.log"
        socket_path = base / f"{name}.sock"
        self.socket = str(socket_path) if len(str(socket_path)) <= _MAX_SOCKET_PATH else None

    @classmethod
    def current(cls) -> _Project:
        return cls(state_dir(), project_id())

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the project's lock: one process at a time starts, joins or stops a server."""
        import fcntl

        with open(self.lock, "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def read(self) -> ServerState | None:
        """The state file's server if it is alive and answers, else ``None``."""
        try:
            state = ServerState(**json.loads(self.state.read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError):
            return None
        if not _alive(state.pid):
            return None
        client = redis.Redis.from_url(state.url, socket_connect_timeout=1, socket_timeout=1)
        try:
            if int(client.info("server").get("process_id", -1)) != state.server_pid:
                return None
        except (redis.RedisError, OSError):
            return None
        finally:
            client.close()
        return state

    def write(self, state: ServerState) -> None:
        """Publish ``state`` atomically, readable by this user only."""
        temporary = self.state.with_suffix(f".{os.getpid()}.tmp")
        descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            json.dump(asdict(state), handle)
        os.replace(temporary, self.state)

    def forget(self, pid: int) -> None:
        """Remove the state file if process ``pid`` wrote it."""
        try:
            state = json.loads(self.state.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return
        if state.get("pid") == pid:
            with contextlib.suppress(OSError):
                self.state.unlink()

    def retire(self, pid: int) -> None:
        """Process ``pid`` stops serving: its state goes, with the users and log unless a
        successor already runs."""
        with self.locked():
            self.forget(pid)
            if not self.state.exists():
                shutil.rmtree(self.users, ignore_errors=True)
                with contextlib.suppress(OSError):
                    self.log.unlink()

    def register(self, pid: int) -> None:
        """Count process ``pid`` as a user of the shared server."""
        self.users.mkdir(mode=0o700, exist_ok=True)
        (self.users / str(pid)).touch()

    def live_users(self) -> list[int]:
        """The registered users still alive; the dead ones are crossed off."""
        alive = []
        with contextlib.suppress(FileNotFoundError):
            for entry in os.scandir(self.users):
                pid = int(entry.name) if entry.name.isdigit() else -1
                if pid > 0 and _alive(pid):
                    alive.append(pid)
                else:
                    with contextlib.suppress(OSError):
                        os.unlink(entry.path)
        return alive

    def stable_port(self) -> int:
        """The project's own port when it is free (the same on every start), else any."""
        port = _PORT_LOW + int(self.name, 16) % _PORT_SPAN
        with contextlib.suppress(OSError):
            import socket

            with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
                probe.bind(("127.0.0.1", port))
                return port
        return free_port()

    def start_server(self) -> EmbeddedRedis:
        """Start the project's server (TCP on the stable port, the socket, a password)."""
        password = secrets.token_urlsafe(24)
        args = ["--requirepass", password]
        if self.socket is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.socket)
            args += ["--unixsocket", self.socket, "--unixsocketperm", "700"]
        server = EmbeddedRedis(port=self.stable_port(), args=args)
        try:
            server.start()
        except RuntimeError:  # the stable port was taken meanwhile: any free one
            server = EmbeddedRedis(port=free_port(), args=args)
            server.start()
        return server


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, dead but not yet reaped, does not)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _state_of(server: EmbeddedRedis, pid: int, mode: str, project: _Project) -> ServerState:
    password = server.args[server.args.index("--requirepass") + 1]
    assert server.port is not None and server.pid is not None
    return ServerState(pid, server.pid, server.port, project.socket, password, mode)


# -- the embedded default --------------------------------------------------------------

_lock = threading.Lock()
_url: str | None = None
_url_of: tuple[int, Path] | None = None  # the process and project it is for


def default_url() -> str:
    """The URL a store with no ``redis`` setting uses: the project's shared server.

    Joins the running one or starts a keeper for it; with ``HASHSESSION_DEV_SERVER=private``,
    or where sharing is impossible (no ``fcntl``), a server of this process's own.
    """
    global _url, _url_of
    mode = os.environ.get(MODE_ENV, "shared").strip().lower()
    if mode not in ("shared", "private"):
        raise ConfigurationError(MODE_ENV, f"expected 'shared' or 'private', not {mode!r}")
    if mode == "private" or os.name != "posix":
        return default_server().url
    with _lock:
        project = _Project.current()
        if _url is not None and _url_of == (os.getpid(), project.state):
            return _url
        with project.locked():
            project.register(os.getpid())
            state = project.read()
            if state is None:
                state = _start_keeper(project)
        _url, _url_of = state.url, (os.getpid(), project.state)
        logger.warning(
            "using the shared development server of %s at 127.0.0.1:%d (%s, pid %d); "
            "for development only, in production pass redis=<url>",
            os.getcwd(),
            state.port,
            "hashsession server" if state.mode == "foreground" else "embedded",
            state.server_pid,
        )
        return state.url


def running_url() -> str | None:
    """The URL of the project's development server if one runs now (none is started)."""
    if os.name != "posix":
        return None
    project = _Project.current()
    with project.locked():
        state = project.read()
    return state.url if state is not None else None


def _start_keeper(project: _Project) -> ServerState:
    """Start the detached keeper and wait until its server answers (lock held)."""
    with open(project.log, "wb") as log:
        launcher = subprocess.Popen(
            [sys.executable, "-m", "hashsession.devserver", "keep", os.getcwd()],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            close_fds=True,
            start_new_session=True,
        )
    launcher.wait()  # the launcher forks the keeper and returns at once
    deadline = time.monotonic() + _START_TIMEOUT
    while time.monotonic() < deadline:
        state = project.read()
        if state is not None:
            return state
        time.sleep(0.02)
    tail = project.log.read_text(encoding="utf-8", errors="replace")[-2000:]
    raise ConfigurationError(
        "redis", f"the shared development server did not start; its log says:\n{tail}"
    )


def keep(directory: str) -> int:
    """The keeper: run the project's server while a process that uses it is alive."""
    if os.fork() > 0:  # detach: the starter waits for this launcher only
        os._exit(0)
    os.chdir(directory)
    project = _Project.current()
    grace = float(os.environ.get(GRACE_ENV) or _DEFAULT_GRACE)
    stop = threading.Event()
    for signum in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    server = project.start_server()
    try:
        project.write(_state_of(server, os.getpid(), "shared", project))
        last_user = time.monotonic()
        while not stop.wait(_POLL) and server.running:
            if project.live_users():
                last_user = time.monotonic()
            elif time.monotonic() - last_user >= grace:
                with project.locked():  # nobody joins while we decide
                    if not project.live_users():
                        project.forget(os.getpid())
                        break
                last_user = time.monotonic()
    finally:
        project.retire(os.getpid())
        server.stop()
    return 0


# -- hashsession server ----------------------------------------------------------------


def serve(*, announce: Any = None) -> int:
    """``hashsession server``: run the project's server in the foreground until a signal.

    Returns 0 once stopped; raises :class:`ServerRunningError` if the project has one.
    ``announce`` prints each line of the greeting (default: to stdout, flushed).
    """
    if announce is None:
        announce = functools.partial(print, flush=True)
    project = _Project.current()
    with project.locked():
        running = project.read()
        if running is not None:
            raise ServerRunningError(
                f"this project's development server already runs at 127.0.0.1:{running.port} "
                f"(pid {running.pid})"
            )
        server = project.start_server()
        state = _state_of(server, os.getpid(), "foreground", project)
        project.write(state)
    stop = threading.Event()
    previous = {
        signum: signal.signal(signum, lambda *_: stop.set())
        for signum in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM)
    }
    try:
        client = redis.Redis.from_url(state.url)
        identity = server_identity(client)
        client.close()
        announce(f"hashsession development server: {identity} for {os.getcwd()}")
        announce(f"  tcp:    {state.url}")
        if state.socket_url is not None:
            announce(f"  socket: {state.socket_url}")
        announce("every process of this project that leaves `redis` unset uses it; Ctrl-C stops it")
        while not stop.wait(0.5) and server.running:
            pass
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        project.retire(os.getpid())
        server.stop()
    return 0


if __name__ == "__main__":  # pragma: no cover - run by _start_keeper
    if sys.argv[1:2] == ["keep"] and len(sys.argv) == 3:
        raise SystemExit(keep(sys.argv[2]))
    raise SystemExit("usage: python -m hashsession.devserver keep DIRECTORY")
