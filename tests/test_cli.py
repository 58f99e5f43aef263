"""The ``hashsession`` operations CLI against real servers, on sessions the library made.

Most commands run in-process through ``main([...])`` (output read with capsys); exit
codes and the one-line errors are also checked through real processes
(``python -m hashsession`` and the console script).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hashsession import Session, SessionStore
from hashsession.cli import main, ops
from hashsession.embedded import free_port

USER_KEY = "cli-tests-user-key-0123456789abcdef"
SECRET = "cli-tests-signing-key"
SCRIPT = Path(sys.executable).parent / "hashsession"


@pytest.fixture
def cli_store(redis_url: str) -> Iterator[SessionStore]:
    store = SessionStore(redis=redis_url, ttl=100, user_key=USER_KEY, secret_keys=[SECRET])
    try:
        yield store
    finally:
        store.close()


def _session(store: SessionStore, user: str | None = None, **values: Any) -> Session:
    session = store.open()
    session.update(values or {"n": 1})
    if user is not None:
        session.login(user)
    return session


def _run(capsys: pytest.CaptureFixture[str], url: str, *argv: str) -> tuple[int, Any, str]:
    """``main(argv + connection flags)``: exit code, stdout (parsed with --json), stderr."""
    flags = ["--redis", url, "--user-key", USER_KEY, "--secret-key", SECRET]
    end = argv.index("--") if "--" in argv else len(argv)  # options go before a "--"
    code = main([*argv[:end], *flags, *argv[end:]])
    out, err = capsys.readouterr()
    return code, json.loads(out) if "--json" in argv and out else out, err


def _process(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "hashsession", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, **(env or {})},
        check=False,
    )


def _one_line_error(err: str) -> str:
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("hashsession: error: ")
    return lines[0]


# -- read ---------------------------------------------------------------------------------


def test_stats_json_counts_sessions_users_and_memory(
    cli_store: SessionStore, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for _ in range(2):
        _session(cli_store, "alice")
    _session(cli_store, "bob")
    _session(cli_store)
    code, stats, err = _run(capsys, redis_url, "stats", "--json")
    assert (code, err) == (0, "")  # no progress bar: stderr is not a terminal
    assert stats["sessions"] == 4
    assert stats["index_keys"] == 2
    assert stats["memory_bytes"] > 0
    assert sum(stats["ttl_histogram"].values()) == 4
    assert stats["ttl_histogram"]["<=10m"] == 4  # ttl=100
    users = stats["users"]
    assert (users["distinct"], users["logged_in_sessions"], users["anonymous_sessions"]) == (
        2,
        3,
        1,
    )
    assert users["sessions_per_user"]["1"] == 1 and users["sessions_per_user"]["2"] == 1
    assert users["top"][0] == {"user": cli_store.config.user_tag("alice"), "sessions": 2}
    code, text, _ = _run(capsys, redis_url, "stats")
    assert code == 0 and "sessions      4" in text


def test_ls_lists_what_keys_tell_and_filters_by_user(
    cli_store: SessionStore, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    alice = [_session(cli_store, "alice") for _ in range(2)]
    _session(cli_store, "bob")
    anonymous = _session(cli_store)
    code, rows, _ = _run(capsys, redis_url, "ls", "--json")
    assert code == 0 and len(rows) == 4
    by_key = {row["key"]: row for row in rows}
    row = by_key[anonymous.core.key or ""]
    assert row["user"] is None and row["tag"] == (anonymous.id or "")[:4]
    assert 0 < row["ttl"] <= 100 and row["size"] > 0 and row["created"].endswith("Z")
    assert all(anonymous.id not in json.dumps(r) for r in rows)  # ids are not in keys
    code, mine, _ = _run(capsys, redis_url, "ls", "--user", "alice", "--json")
    assert code == 0
    assert {r["key"] for r in mine} == {s.core.key for s in alice}
    assert {r["user_id"] for r in mine} == {"alice"}
    assert len(_run(capsys, redis_url, "ls", "--limit", "1", "--json")[1]) == 1
    code, text, _ = _run(capsys, redis_url, "ls")
    assert code == 0 and text.startswith("KEY") and len(text.splitlines()) == 5


def test_show_accepts_an_id_a_cookie_value_or_a_key(
    cli_store: SessionStore, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    session = _session(cli_store, "carol", cart=[1, "two"], n=3)
    session.meta_set("csrf", "tok")
    assert session.id is not None
    cookie = cli_store.config.cookie_value(session.id)
    for name in (session.id, cookie, session.core.key or ""):
        # "--" ends the options: an id may start with "-" (1 in 64 do)
        code, data, _ = _run(capsys, redis_url, "show", "--json", "--", name)
        assert code == 0
        assert data["key"] == session.core.key
        assert data["fields"] == {"cart": [1, "two"], "n": 3}
        assert data["meta"] == {"csrf": "tok"}
        assert data["user"] == cli_store.config.user_tag("carol")
        assert 0 < data["ttl"] <= 100 and data["created"]
    code, text, _ = _run(capsys, redis_url, "show", "--", session.id)
    assert code == 0 and "cart = [1, 'two']" in text


def test_show_an_unknown_id_is_one_line_and_exit_3(
    cli_store: SessionStore, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    gone = _session(cli_store)
    gone_id = gone.id or ""
    gone.invalidate()
    code, out, err = _run(capsys, redis_url, "show", gone_id)
    assert (code, out) == (3, "")
    assert "no live session" in _one_line_error(err)
    code, _, err = _run(capsys, redis_url, "show", "not-an-id")
    assert code == 2 and "not a session id" in _one_line_error(err)
    forged = cli_store.config.cookie_value(gone_id)[:-3] + "AAA"
    code, _, err = _run(capsys, redis_url, "show", forged)
    assert code == 2 and "does not verify" in _one_line_error(err)
    assert forged not in err and gone_id not in err  # secrets are not echoed


def test_ping_names_the_server(redis_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, data, _ = _run(capsys, redis_url, "ping", "--json")
    assert code == 0
    assert data["server"] in ("Redis", "Valkey") and data["version"][0].isdigit()
    assert data["mode"] == "standalone"
    assert data["latency_ms"] >= 0 and data["latency_avg_ms"] >= data["latency_ms"]


# -- write --------------------------------------------------------------------------------


def test_revoke_by_id_cookie_and_key_keeps_the_index_right(
    cli_store: SessionStore, redis_url: str, redis_client: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    sessions = [_session(cli_store, "dave") for _ in range(3)]
    names = [
        sessions[0].id or "",
        cli_store.config.cookie_value(sessions[1].id or ""),
        sessions[2].core.key or "",
    ]
    for n, (session, name) in enumerate(zip(sessions, names, strict=True)):
        code, data, _ = _run(capsys, redis_url, "revoke", name, "--json")
        assert (code, data) == (0, {"key": session.core.key, "revoked": True})
        assert redis_client.exists(session.core.key) == 0
        assert len(cli_store.sessions_of("dave")) == 2 - n
    # the index entries went with the sessions (not merely pruned when listed)
    assert redis_client.exists(cli_store.config.index_key("dave")) == 0
    assert cli_store.open_id(sessions[0].id).to_dict() == {}
    code, _, err = _run(capsys, redis_url, "revoke", names[2])
    assert code == 3 and "no live session" in _one_line_error(err)


def test_revoke_user_deletes_every_session_of_the_user(
    cli_store: SessionStore, redis_url: str, redis_client: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    erin = [_session(cli_store, "erin") for _ in range(3)]
    frank = _session(cli_store, "frank")
    code, data, _ = _run(capsys, redis_url, "revoke-user", "erin", "--json")
    assert (code, data) == (0, {"user_id": "erin", "revoked": 3})
    assert cli_store.sessions_of("erin") == []
    assert all(redis_client.exists(s.core.key) == 0 for s in erin)
    assert len(cli_store.sessions_of("frank")) == 1 and frank.to_dict() == {"n": 1}
    assert _run(capsys, redis_url, "ls", "--user", "erin", "--json")[1] == []


def test_user_commands_need_the_user_key(
    redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    for argv in (["revoke-user", "x"], ["ls", "--user", "x"]):
        assert main([*argv, "--redis", redis_url]) == 2
        assert "HASHSESSION_USER_KEY" in _one_line_error(capsys.readouterr().err)


def test_purge_needs_yes_then_deletes_only_our_keys(
    cli_store: SessionStore, redis_url: str, redis_client: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    for user in ("gus", "gus", None):
        _session(cli_store, user)
    redis_client.set("other:key", "1")
    redis_client.set("hs:not-a-session", "1")
    before = redis_client.dbsize()
    code, out, err = _run(capsys, redis_url, "purge")
    assert (code, out) == (2, "") and "--yes" in _one_line_error(err)
    assert redis_client.dbsize() == before
    code, data, _ = _run(capsys, redis_url, "purge", "--yes", "--json")
    assert (code, data) == (0, {"prefix": "hs:", "deleted": 4})  # 3 sessions, 1 index
    assert sorted(redis_client.keys("*")) == [b"hs:not-a-session", b"other:key"]


def test_prefix_from_the_environment(
    redis_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = SessionStore(redis=redis_url, prefix="app:")
    try:
        _session(store)
        _session(SessionStore(redis=store.client))  # default prefix: not counted
    finally:
        store.close()
    monkeypatch.setenv("HASHSESSION_REDIS", redis_url)
    monkeypatch.setenv("HASHSESSION_PREFIX", "app:")
    assert main(["stats", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["sessions"] == 1


def test_keyboard_interrupt_exits_130(
    redis_url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def interrupted(*args: Any, **kwargs: Any) -> Iterator[Any]:
        raise KeyboardInterrupt
        yield

    monkeypatch.setattr(ops, "scan", interrupted)
    assert main(["stats", "--redis", redis_url]) == 130
    assert capsys.readouterr().err == "hashsession: interrupted\n"


# -- Sentinel and Cluster ---------------------------------------------------------------------


def test_stats_ls_purge_on_every_topology(
    topology: str, topology_url: str, topology_client: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    store = SessionStore(redis=topology_url, ttl=100, user_key=USER_KEY)
    try:
        made = [_session(store, "hana" if n % 2 else None) for n in range(12)]
    finally:
        store.close()
    keys = {s.core.key for s in made}
    if topology == "cluster":  # spread over the masters, so every primary is scanned
        nodes = {store.client.get_node_from_key(key).name for key in keys}  # type: ignore[union-attr]
        assert len(nodes) > 1
    code, stats, _ = _run(capsys, topology_url, "stats", "--json")
    assert code == 0
    assert (stats["sessions"], stats["index_keys"]) == (12, 1)
    assert stats["users"]["logged_in_sessions"] == 6
    code, rows, _ = _run(capsys, topology_url, "ls", "--json")
    assert code == 0 and {r["key"] for r in rows} == keys
    code, mine, _ = _run(capsys, topology_url, "ls", "--user", "hana", "--json")
    assert code == 0 and len(mine) == 6
    code, data, _ = _run(capsys, topology_url, "purge", "--yes", "--json")
    assert (code, data["deleted"]) == (0, 13)
    assert topology_client.keys("*") == []
    code, data, _ = _run(capsys, topology_url, "ping", "--json")
    assert code == 0 and data["server"] in ("Redis", "Valkey")


# -- through a real process ---------------------------------------------------------------


def test_an_unreachable_server_is_one_line_and_exit_1() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    for argv in (["stats"], ["ping", "--json"], ["revoke-user", "u", "--user-key", USER_KEY]):
        done = _process(*argv, "--redis", url)
        assert done.returncode == 1 and done.stdout == ""
        assert "Connection refused" in _one_line_error(done.stderr)


def test_a_bad_url_is_one_line_and_exit_2() -> None:
    done = _process("ls", env={"HASHSESSION_REDIS": "http://example.invalid/"})
    assert done.returncode == 2 and done.stdout == ""
    assert "bad Redis URL" in _one_line_error(done.stderr)
    nowhere = tempfile.mkdtemp(prefix="hs-cli-dev-")  # no development server runs here
    done = _process("stats", env={"HASHSESSION_DEV_DIR": nowhere})  # no URL at all
    assert done.returncode == 2 and "HASHSESSION_REDIS" in _one_line_error(done.stderr)
    done = _process("stats", "--no-such-flag")
    assert done.returncode == 2 and "--no-such-flag" in _one_line_error(done.stderr)


def test_debug_shows_the_traceback() -> None:
    done = _process("ping", "--debug", "--redis", f"redis://127.0.0.1:{free_port()}/0")
    assert done.returncode == 1 and "Traceback" in done.stderr


def test_console_script_unknown_id_and_version(redis_url: str) -> None:
    done = subprocess.run(
        [str(SCRIPT), "revoke", "A" * 47, "--redis", redis_url],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 3 and done.stdout == ""
    assert "no live session" in _one_line_error(done.stderr)
    version = subprocess.run(
        [str(SCRIPT), "--version"], capture_output=True, text=True, timeout=60, check=True
    )
    assert version.stdout.startswith("hashsession ")


def test_progress_goes_to_a_terminal_stderr_only(cli_store: SessionStore, redis_url: str) -> None:
    _session(cli_store)
    primary, secondary = os.openpty()
    try:
        done = subprocess.run(
            [sys.executable, "-m", "hashsession", "stats", "--json", "--redis", redis_url],
            stdout=subprocess.PIPE,
            stderr=secondary,
            text=True,
            timeout=60,
            check=False,
        )
    finally:
        os.close(secondary)
        os.close(primary)
    assert done.returncode == 0
    assert json.loads(done.stdout)["sessions"] == 1  # nothing but the result on stdout


_NO_RICH = "import sys\nsys.modules['rich'] = None\nfrom hashsession.cli import main\n"


def test_without_rich_scans_name_the_extra_and_the_rest_works(redis_url: str) -> None:
    code = _NO_RICH + f"raise SystemExit(main(['stats', '--redis', {redis_url!r}]))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 1
    assert "pip install 'hashsession[cli]'" in _one_line_error(done.stderr)
    code = _NO_RICH + f"raise SystemExit(main(['ping', '--redis', {redis_url!r}]))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0 and "PING" in done.stdout


def test_import_and_version_do_not_import_rich() -> None:
    code = (
        "import sys\n"
        "import hashsession.cli\n"
        "assert hashsession.cli.main(['--version']) == 0\n"
        "print(sorted(m for m in sys.modules if m == 'rich' or m.startswith('rich.')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.splitlines() == ["hashsession 0.1.0", "[]"]


def test_an_id_starting_with_a_dash_is_taken_after_a_double_dash(
    cli_store: SessionStore, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    session = _session(cli_store, "dora", n=1)
    while not (session.id or "").startswith("-"):  # 1 in 64 ids does
        session = _session(cli_store, "dora", n=1)
    assert session.id is not None
    code, _, err = _run(capsys, redis_url, "show", session.id)
    assert code == 2 and "goes after '--'" in err
    code, data, _ = _run(capsys, redis_url, "show", "--json", "--", session.id)
    assert code == 0 and data["key"] == session.core.key
