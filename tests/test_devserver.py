"""The embedded default: one development server per project, gone with its last user.

Every test runs real processes in a folder of its own, with a state directory of its own
(``HASHSESSION_DEV_DIR``) and a short grace (``HASHSESSION_DEV_GRACE``), and checks what
is left afterwards by process id and path: no server, no keeper, no state, no socket.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from hashsession import SessionStore
from hashsession.devserver import default_url, state_dir
from hashsession.errors import ConfigurationError

GRACE = 0.5

# A process using the embedded default: reports its server, then obeys stdin lines
# ("set K V", "get K", "exit") until stdin closes.
USER = textwrap.dedent(
    """
    import json, os, sys
    from hashsession import SessionStore
    from hashsession.embedded import default_server
    store = SessionStore(secret_keys=["k"])
    client = store._client
    report = {"pid": os.getpid(), "server_pid": int(client.info("server")["process_id"])}
    if os.environ.get("HASHSESSION_DEV_SERVER") == "private":
        report["directory"] = default_server()._child.directory
    print(json.dumps(report), flush=True)
    for line in sys.stdin:
        words = line.split()
        if words[0] == "set":
            client.set(words[1], words[2])
            print("ok", flush=True)
        elif words[0] == "get":
            value = client.get(words[1])
            print(value.decode() if value else "-", flush=True)
    """
)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def _eventually(check: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


class Env:
    """A project folder and a private state directory for the processes of one test."""

    def __init__(self, root: Path) -> None:
        self.project = root / "project"
        self.project.mkdir()
        self.state = root / "state"
        self.vars = {
            **os.environ,
            "HASHSESSION_DEV_DIR": str(self.state),
            "HASHSESSION_DEV_GRACE": str(GRACE),
            "HASHSESSION_DEV_SERVER": "shared",
        }
        self.children: list[subprocess.Popen[str]] = []

    def spawn(
        self, *command: str, cwd: Path | None = None, stdout: int = subprocess.PIPE, **extra: str
    ) -> subprocess.Popen[str]:
        """Start ``python <command>`` in the project, in a process group of its own (as a
        terminal would give it); stopped at the end of the test."""
        child = subprocess.Popen(
            [sys.executable, *command],
            cwd=cwd or self.project,
            env={**self.vars, **extra},
            stdin=subprocess.PIPE,
            stdout=stdout,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self.children.append(child)
        return child

    def user(
        self, cwd: Path | None = None, **extra: str
    ) -> tuple[subprocess.Popen[str], dict[str, object]]:
        """Start a user process; its report once it has connected."""
        child = self.spawn("-c", USER, cwd=cwd, **extra)
        assert child.stdout is not None
        line = child.stdout.readline()
        assert line, child.stderr.read() if child.stderr else ""
        return child, json.loads(line)

    def state_files(self) -> list[str]:
        """What the state directory holds besides the lock files."""
        if not self.state.exists():
            return []
        return sorted(p.name for p in self.state.iterdir() if p.suffix != ".lock")

    def states(self) -> list[dict[str, object]]:
        return [json.loads(p.read_text()) for p in self.state.glob("*.json")]

    def close(self) -> None:
        for child in self.children:
            with contextlib.suppress(ProcessLookupError):  # the whole group: a reloader's
                os.killpg(child.pid, signal.SIGKILL)  # or a supervisor's children too
            child.wait()


@pytest.fixture
def env(tmp_path: Path) -> Iterator[Env]:
    environment = Env(tmp_path)
    yield environment
    environment.close()
    # Whatever a test left running is stopped by the grace; make sure of it.
    assert _eventually(lambda: environment.state_files() == []), environment.state_files()


def ask(child: subprocess.Popen[str], line: str) -> str:
    assert child.stdin is not None and child.stdout is not None
    child.stdin.write(line + "\n")
    child.stdin.flush()
    return child.stdout.readline().strip()


def leave(child: subprocess.Popen[str]) -> None:
    assert child.stdin is not None
    child.stdin.close()
    child.wait(30)


def test_processes_of_a_project_share_one_server(env: Env) -> None:
    first, report_1 = env.user()
    second, report_2 = env.user()
    assert report_1["server_pid"] == report_2["server_pid"]
    assert ask(first, "set greeting hello") == "ok"
    assert ask(second, "get greeting") == "hello"
    (state,) = env.states()
    assert state["server_pid"] == report_1["server_pid"] and state["mode"] == "shared"
    leave(first)
    assert ask(second, "get greeting") == "hello"  # the first leaving stops nothing
    leave(second)


def test_a_reload_keeps_the_data(env: Env) -> None:
    # A reloader stops one child and starts the next within the grace.
    old, report_old = env.user(HASHSESSION_DEV_GRACE="5")  # a slow start on a busy machine
    assert ask(old, "set cart 3") == "ok"
    leave(old)
    new, report_new = env.user()
    assert report_new["server_pid"] == report_old["server_pid"]
    assert ask(new, "get cart") == "3"
    leave(new)


def test_the_server_stops_once_its_last_user_is_gone(env: Env) -> None:
    child, report = env.user()
    (state,) = env.states()
    socket_path = state["unix_socket"]
    assert isinstance(socket_path, str) and os.path.exists(socket_path)
    leave(child)
    server_pid, keeper_pid = int(str(report["server_pid"])), int(str(state["pid"]))
    assert _eventually(lambda: not _running(server_pid) and not _running(keeper_pid))
    assert _eventually(lambda: env.state_files() == [])
    assert not os.path.exists(socket_path)


def test_processes_starting_at_once_start_one_server(env: Env) -> None:
    children = [env.spawn("-c", USER) for _ in range(6)]
    reports = [json.loads(child.stdout.readline()) for child in children if child.stdout]
    assert len({report["server_pid"] for report in reports}) == 1
    for child in children:
        leave(child)


def test_projects_do_not_share(env: Env, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    here, report_here = env.user()
    there, report_there = env.user(cwd=other)
    assert report_there["server_pid"] != report_here["server_pid"]
    leave(here)
    leave(there)


def test_a_stale_state_file_is_replaced(env: Env) -> None:
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    first, report = env.user()
    leave(first)
    assert _eventually(lambda: env.state_files() == [])
    (env.state / "stale.json").write_text("{}")  # unreadable state of another project
    name = next(p.stem for p in env.state.glob("*.lock"))
    stale = {
        "pid": dead.pid,
        "server_pid": int(str(report["server_pid"])),
        "port": 1,
        "unix_socket": None,
        "password": "x",
        "mode": "shared",
    }
    (env.state / f"{name}.json").write_text(json.dumps(stale))
    child, fresh = env.user()
    assert _running(int(str(fresh["server_pid"])))
    assert ask(child, "set k v") == "ok"
    leave(child)
    (env.state / "stale.json").unlink()


KILLS = {
    # Closing the terminal: SIGHUP to the process group.
    "SIGHUP to the group": lambda pid: os.killpg(pid, signal.SIGHUP),
    # A service manager stopping the app: SIGTERM to the group.
    "SIGTERM to the group": lambda pid: os.killpg(pid, signal.SIGTERM),
    # The parent dies without any exit hook.
    "SIGKILL of the parent": lambda pid: os.kill(pid, signal.SIGKILL),
}


@pytest.mark.parametrize("kill", list(KILLS))
@pytest.mark.parametrize("mode", ["shared", "private"])
def test_the_server_never_outlives_its_owner(env: Env, mode: str, kill: str) -> None:
    child, report = env.user(HASHSESSION_DEV_SERVER=mode)
    server_pid = int(str(report["server_pid"]))
    keepers = [int(str(state["pid"])) for state in env.states()]
    assert len(keepers) == (1 if mode == "shared" else 0)
    KILLS[kill](child.pid)
    child.wait(30)
    assert _eventually(lambda: not _running(server_pid)), f"server {server_pid} still runs"
    assert all(_eventually(lambda pid=pid: not _running(pid)) for pid in keepers)
    if mode == "private":
        directory = str(report["directory"])
        assert _eventually(lambda: not os.path.exists(directory)), directory
    assert _eventually(lambda: env.state_files() == []), env.state_files()


# -- hashsession server (through the CLI's main) ---------------------------------------

FOREGROUND = "from hashsession.cli import main; raise SystemExit(main(['server']))"


def _foreground(env: Env) -> tuple[subprocess.Popen[str], list[str]]:
    server = env.spawn("-c", FOREGROUND)
    assert server.stdout is not None
    lines = [server.stdout.readline() for _ in range(4)]
    assert lines[-1], server.stderr.read() if server.stderr else ""
    return server, lines


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGHUP, signal.SIGTERM])
def test_hashsession_server_serves_the_project_until_stopped(env: Env, signum: int) -> None:
    server, lines = _foreground(env)
    assert lines[1].split()[0] == "tcp:" and lines[1].split()[1].startswith("redis://")
    assert lines[2].split()[0] == "socket:" and lines[2].split()[1].startswith("unix://")
    (state,) = env.states()
    assert state["mode"] == "foreground" and state["pid"] == server.pid
    user, report = env.user()
    assert report["server_pid"] == state["server_pid"]
    leave(user)
    # The operations CLI finds it too, given no --redis.
    ping = subprocess.run(
        [sys.executable, "-m", "hashsession", "ping", "--json"],
        cwd=env.project,
        env={k: v for k, v in env.vars.items() if k != "HASHSESSION_REDIS"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ping.returncode == 0, ping.stderr
    assert json.loads(ping.stdout)["server"]
    time.sleep(GRACE * 3)  # users coming and going do not stop a foreground server
    assert _running(int(str(state["server_pid"])))
    os.killpg(server.pid, signum)
    assert server.wait(30) == 0
    assert _eventually(lambda: not _running(int(str(state["server_pid"]))))
    assert env.state_files() == []


def test_hashsession_server_refuses_a_second_one(env: Env) -> None:
    server, _ = _foreground(env)
    second = subprocess.run(
        [sys.executable, "-c", FOREGROUND],
        cwd=env.project,
        env=env.vars,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert second.returncode == 1
    (line,) = second.stderr.splitlines()  # one line, no traceback
    assert line.startswith("hashsession: error: this project's development server already runs at")
    os.killpg(server.pid, signal.SIGTERM)
    server.wait(30)


# -- settings --------------------------------------------------------------------------


def test_a_state_directory_others_can_read_is_made_private(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    state.mkdir()
    state.chmod(0o755)
    monkeypatch.setenv("HASHSESSION_DEV_DIR", str(state))
    assert state_dir() == state
    assert state.stat().st_mode & 0o777 == 0o700


@pytest.mark.skipif(os.getuid() != 0, reason="giving a folder to another user needs root")
def test_a_state_directory_of_another_user_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    os.chown(state, 65534, 65534)
    monkeypatch.setenv("HASHSESSION_DEV_DIR", str(state))
    monkeypatch.setenv("HASHSESSION_DEV_SERVER", "shared")
    with pytest.raises(ConfigurationError, match=r"HASHSESSION_DEV_DIR: .* must belong"):
        SessionStore()


def test_an_unknown_mode_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HASHSESSION_DEV_SERVER", "everywhere")
    with pytest.raises(ConfigurationError, match="HASHSESSION_DEV_SERVER: expected"):
        default_url()


# -- real servers: workers and reloaders ----------------------------------------------

ASGI_APP = """
import os
from fastapi import Depends, FastAPI, Request
from hashsession.aio import AsyncSession, AsyncSessionStore
from hashsession.asgi import SessionMiddleware, session_of

app = FastAPI()
app.add_middleware(SessionMiddleware, store=AsyncSessionStore(secret_keys=["k"]))

def get_session(request: Request) -> AsyncSession:
    return session_of(request.scope)

@app.get("/")
async def home(session: AsyncSession = Depends(get_session)):
    return {"visits": await session.incr("visits"), "worker": os.getpid()}
"""

FLASK_APP = """
import os
from flask import Flask, session
from hashsession.flask import HashSession

app = Flask(__name__)
app.config.update(SECRET_KEY="change me", HASHSESSION_COOKIE_SECURE=False)
HashSession(app)

@app.get("/")
def home():
    return {"visits": session.incr("visits"), "worker": os.getpid()}
"""


def _get(port: int, cookie: str | None) -> tuple[dict[str, int], str | None]:
    """One request on a new connection: the JSON body and the session cookie sent."""
    import http.client

    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("GET", "/", headers={"Cookie": cookie} if cookie else {})
        response = connection.getresponse()
        body = json.loads(response.read())
        header = response.getheader("Set-Cookie")
    finally:
        connection.close()
    return body, header.split(";", 1)[0] if header else cookie


def _wait_for_http(port: int, child: subprocess.Popen[str]) -> None:
    import socket

    def answers() -> bool:
        assert child.poll() is None, child.stderr.read() if child.stderr else ""
        with socket.socket() as probe:
            return probe.connect_ex(("127.0.0.1", port)) == 0

    assert _eventually(answers, timeout=60)


def _stop_and_check(env: Env, child: subprocess.Popen[str], servers: set[int]) -> None:
    os.killpg(child.pid, signal.SIGTERM)
    child.wait(30)
    assert all(_eventually(lambda pid=pid: not _running(pid)) for pid in servers)
    assert _eventually(lambda: env.state_files() == []), env.state_files()


def test_uvicorn_workers_share_sessions(env: Env) -> None:
    from hashsession.embedded import free_port

    (env.project / "app.py").write_text(ASGI_APP)
    port = free_port()
    command = ["-m", "uvicorn", "app:app", "--workers", "2", "--port", str(port)]
    server = env.spawn(*command, stdout=subprocess.DEVNULL)
    _wait_for_http(port, server)
    cookie: str | None = None
    counts, workers = [], set()
    # The port answers once the first worker listens; go on until both have answered.
    deadline = time.monotonic() + 60
    while len(counts) < 80 or (len(workers) < 2 and time.monotonic() < deadline):
        body, cookie = _get(port, cookie)
        counts.append(body["visits"])
        workers.add(body["worker"])
    assert len(workers) == 2, "one worker answered every request; the test shows nothing"
    assert counts == list(range(1, len(counts) + 1))  # one session, whichever worker answered
    (state,) = env.states()
    _stop_and_check(env, server, {int(str(state["server_pid"]))})


def test_a_flask_reload_keeps_the_session(env: Env) -> None:
    from hashsession.embedded import free_port

    app_file = env.project / "app.py"
    app_file.write_text(FLASK_APP)
    port = free_port()
    command = ["-m", "flask", "--app", "app", "run", "--debug", "--port", str(port)]
    server = env.spawn(*command, stdout=subprocess.DEVNULL, HASHSESSION_DEV_GRACE="3")
    _wait_for_http(port, server)
    first, cookie = _get(port, None)
    assert first["visits"] == 1
    time.sleep(1.1)  # the reloader compares modification times
    app_file.write_text(FLASK_APP + "\n# changed\n")
    seen: list[dict[str, int]] = []

    def reloaded() -> bool:
        try:
            body, _ = _get(port, cookie)
        except (OSError, ValueError):
            return False
        seen.append(body)
        return body["worker"] != first["worker"]

    assert _eventually(reloaded, timeout=30), "the reloader did not restart the app"
    # The first child's session lives on: the new child counts on from every answer the old
    # one gave (a request the reload cut off mid-answer may have counted too, so ">=").
    assert seen[-1]["visits"] >= len(seen) + 1
    assert seen[-1]["visits"] > max(body["visits"] for body in [first, *seen[:-1]])
    (state,) = env.states()
    _stop_and_check(env, server, {int(str(state["server_pid"]))})
