"""The Sentinel fault runs server by server: one compact table of the figures that
differ between servers (the lag window above all), then each server's full tables.

``bench/run-faults --servers redis6,valkey,/usr/bin/redis-server`` runs the chosen
scenarios once per ``HASHSESSION_SERVER`` value and writes this report.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from fault_kit import Run, Scenario, share
from fault_load import Tally
from fault_report import HOW_TO_READ, header, machine, sections
from fault_topologies import LAG_BEFORE_KILL, LAG_MS, LAGGED, run_name

#: One server's report: (name, where its binary came from) and its scenarios.
ServerResult = tuple[tuple[str, str], list[Scenario]]


def _lost(t: Tally) -> str:
    part = f" ({share(t.writes_lost, t.writes_acked)})" if t.writes_acked else ""
    return f"{t.writes_lost} of {t.writes_acked}{part}"


def _undone(t: Tally) -> str:
    return f"{t.invalidations_lost} / {t.regenerations_undone}"


def _lagged(r: Run) -> str:
    return r.rows.get(LAGGED, "-")


def _not_replicated(r: Run) -> str:
    return r.rows.get("NotReplicatedError raised", "-")


FAILOVER = run_name("failover", None, False)
FAILOVER_FLOOR = run_name("failover", None, True)
KILL = run_name("kill", None, False)
LAG = run_name("lag", None, False)
LAG_BARE = run_name("lag", 0, False)
LAG_FLOOR = run_name("lag", None, True)

# (figure, run, how to read it off the run): the compact table's rows.
ROWS: list[tuple[str, str, Callable[[Run], str]]] = [
    ("planned failover: acknowledged writes lost", FAILOVER, lambda r: _lost(_t(r))),
    ("planned failover: logouts / id changes undone", FAILOVER, lambda r: _undone(_t(r))),
    (
        "planned failover, min-replicas-to-write 1: acknowledged writes lost",
        FAILOVER_FLOOR,
        lambda r: _lost(_t(r)),
    ),
    (
        "planned failover, min-replicas-to-write 1: operations refused or failed",
        FAILOVER_FLOOR,
        lambda r: str(_t(r).failed),
    ),
    ("SIGKILL of the master: acknowledged writes lost", KILL, lambda r: _lost(_t(r))),
    ("SIGKILL of the master: logouts / id changes undone", KILL, lambda r: _undone(_t(r))),
    (
        "replica lagging, SIGKILL: writes / logouts and id changes acknowledged in the lag",
        LAG,
        _lagged,
    ),
    ("replica lagging, SIGKILL: acknowledged writes lost", LAG, lambda r: _lost(_t(r))),
    ("replica lagging, SIGKILL: logouts / id changes undone", LAG, lambda r: _undone(_t(r))),
    ("replica lagging, SIGKILL: NotReplicatedError raised", LAG, _not_replicated),
    (
        "replica lagging, wait_for_replicas=0: acknowledged writes lost",
        LAG_BARE,
        lambda r: _lost(_t(r)),
    ),
    (
        "replica lagging, wait_for_replicas=0: logouts / id changes undone",
        LAG_BARE,
        lambda r: _undone(_t(r)),
    ),
    (
        "replica lagging, min-replicas-to-write 1: acknowledged writes lost",
        LAG_FLOOR,
        lambda r: _lost(_t(r)),
    ),
    (
        "replica lagging, min-replicas-to-write 1: logouts / id changes undone",
        LAG_FLOOR,
        lambda r: _undone(_t(r)),
    ),
]


def _t(run: Run) -> Tally:
    assert run.tally is not None
    return run.tally


def summary(results: Sequence[ServerResult]) -> list[str]:
    """Figures down, servers across, from each server's Sentinel scenario."""
    runs: list[dict[str, Run]] = []
    for _, scenarios in results:
        found = [s for s in scenarios if s.key == "sentinel"]
        runs.append({r.name: r for r in found[0].runs} if found else {})
    if not any(runs):
        return []
    out = [
        "| figure | " + " | ".join(name for (name, _), _ in results) + " |",
        "|---|" + "---|" * len(results),
    ]
    for label, name, read in ROWS:
        cells = []
        for by_name in runs:
            run = by_name.get(name)
            cells.append(read(run) if run is not None and run.tally is not None else "(not run)")
        out.append(f"| {label} | " + " | ".join(cells) + " |")
    out.append(
        "| failed operations that were not a BackendError, all runs (which runs) | "
        + " | ".join(_escaped(by_name) for by_name in runs)
        + " |"
    )
    return out


def _escaped(by_name: dict[str, Run]) -> str:
    """How many failures escaped as something other than a BackendError, and where."""
    where = {n: r.tally.not_backend for n, r in by_name.items() if r.tally and r.tally.not_backend}
    total = sum(where.values())
    if not total:
        return "0"
    return f"**{total}** (" + "; ".join(f"{n}: {k}" for n, k in where.items()) + ")"


def report_servers(results: Sequence[ServerResult], seconds: float, argv: Sequence[str]) -> str:
    names = [server for server, _ in results]
    out = header("hashsession under faults, server by server", argv, machine(names), seconds)
    table = summary(results)
    if table:
        out += [
            "The Sentinel runs of [reliability.md](reliability.md#2-sentinel-failover-under-load) "
            "(set-up, load and checks as described there), once per server, one after the "
            "other on the same machine. *Replica lagging*: the replica stops applying the "
            f"master's stream for {LAG_MS} ms (`CLIENT PAUSE {LAG_MS} WRITE` on it) and the "
            f"master gets SIGKILL {LAG_BEFORE_KILL:g} s into that pause; the store runs with "
            'its defaults (`wait_for_replicas="auto"`) unless the row names a setting. '
            "*Logouts / id changes undone*: acknowledged `invalidate()` calls whose session "
            "works again / acknowledged `regenerate()` calls whose old id works again.",
            "",
            *table,
            "",
        ]
    out += [HOW_TO_READ, ""]
    for (name, _), scenarios in results:
        out += [f"## {name}", "", *sections(scenarios, "###")]
    return "\n".join(out)
