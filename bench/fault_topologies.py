"""Fault runs on Sentinel and Redis Cluster deployments (scenarios 2 and 3).

The deployments come from ``tests/topologies.py`` (imported, not copied), with a
shorter Sentinel failover-timeout and cluster-node-timeout set at run time.
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections import Counter
from collections.abc import Sequence
from functools import partial
from pathlib import Path

from redis.cluster import ClusterNode, RedisCluster

from fault_kit import (
    HOST,
    POOL,
    SETTLE,
    WARM,
    Run,
    Scenario,
    call,
    close_quietly,
    common_rows,
    guarded,
    info,
    kill9,
    loaded,
    log,
    longest,
    make_store,
    role,
    security_rows,
    share,
    unexpected_note,
    window_rows,
)
from fault_load import Load, Op, Tally, seed, tally
from hashsession import BackendError, ConfigurationError, SessionStore
from hashsession.embedded import EmbeddedRedis
from topologies import (
    ClusterSetup,
    SentinelSetup,
    id_tag_in,
    migrate_slot,
    owned_slots,
    start_cluster,
    start_sentinel,
    wait_for,
)

SECURITY = 0.05  # share of Sentinel requests that invalidate or regenerate a session
VICTIMS = 3000  # sessions made before a Sentinel run for those requests
SENTINEL_FAILOVER_TIMEOUT_MS = 4000
CLUSTER_NODE_TIMEOUT_MS = 1000
MIGRATED_SESSIONS = 32
MOVERS = 4  # threads calling regenerate() and login() in the migrating slot
LAG_MS = 500  # how long the replica stops applying the master's stream ("lag" runs)
LAG_BEFORE_KILL = 0.25  # seconds into that pause when the master gets SIGKILL
USER_KEY = "fault-benchmark-user-key"  # login() needs one; not a secret here


# ------------------------------------------------------------- 2. Sentinel


def _following(replica: EmbeddedRedis, master: EmbeddedRedis) -> bool:
    state = info(replica, "replication")
    return state.get("master_link_status") == "up" and int(state["master_port"]) == master.port


def settle_sentinel(setup: SentinelSetup) -> EmbeddedRedis:
    """Wait until every other server replicates the master; the master."""
    master = setup.master()
    for server in setup.servers:
        if server is not master:
            wait_for("a replica to follow the master", partial(_following, server, master))
    return master


HOW = {
    "failover": "SENTINEL FAILOVER",
    "kill": "SIGKILL of the master",
    "lag": "SIGKILL of the master, replica lagging",
}
CRITICAL = ("invalidate", "regenerate")


def run_name(how: str, wait: int | None, min_replicas: bool) -> str:
    """A Sentinel run's column name: the fault, then any setting that is not a default."""
    name = HOW[how]
    name += f", wait_for_replicas={wait}" if wait is not None else ""
    return name + (", min-replicas-to-write 1" if min_replicas else "")


def sentinel_run(setup: SentinelSetup, how: str, wait: int | None, min_replicas: bool) -> Run:
    """One Sentinel fault under load: ``how`` is a planned failover, a SIGKILL of the
    master, or a SIGKILL while the replica has stopped applying the master's stream
    (``lag``); ``wait`` is the store's ``wait_for_replicas`` (None: its default)."""
    run = Run(run_name(how, wait, min_replicas))
    url = setup.url + "?socket_connect_timeout=0.5&socket_timeout=3"
    # Without ``wait``, the store's defaults: wait_for_replicas="auto" (one replica on
    # Sentinel when the sentinels know a healthy one) and the failover listener.
    extra = {"wait_for_replicas": wait, "wait_timeout": 1.0} if wait is not None else {}
    master = settle_sentinel(setup)
    setup.ready_for_failover()
    try:  # once the sentinels know the replica: what a store running for a while sees
        store = make_store(url, **extra)
    except ConfigurationError as exc:
        run.error = f"not run: this checkout's SessionStore refuses the setting ({exc})"
        return run
    admin = master.client()
    admin.flushall()
    t_lag = 0.0
    try:
        if min_replicas:
            set_everywhere(setup.servers, "min-replicas-to-write", 1)
        ids = seed(store, POOL)
        victims = seed(store, VICTIMS)
        admin.wait(1, 5000)  # the replica has every session made so far
        admin.close()
        old = setup.master_address()
        with loaded(Load(store, ids, security=SECURITY, victims=victims)) as load:
            time.sleep(WARM)
            if how == "lag":
                t_lag = lag_replica(setup, master)
            waiting = store.config.replicas_to_wait()
            t0 = time.monotonic()
            if how == "failover":
                sentinel = setup.sentinels[0].client()
                sentinel.sentinel_failover(setup.service)
                sentinel.close()
            else:
                kill9(master)
            wait_for("a new master", lambda: setup.master_address() != old)
            t_promoted = time.monotonic()
            if how == "failover":
                wait_for("the old master to turn replica", lambda: role(master) == "slave")
            else:
                # Back on its port as a replica of the new master, as an operator would do
                # (until then, wait_for_replicas=1 cannot be met by anyone).
                master.stop()
                index = setup.servers.index(master)
                setup.servers[index] = EmbeddedRedis(
                    port=old[1], args=("--replicaof", HOST, str(setup.master_address()[1]))
                ).start()
            t_back = time.monotonic()
            load.wait_steady(t_back, SETTLE)
            ops = load.stop()
            run.unexpected, run.examples = load.unexpected, load.examples
            left = len(load.victims)
        store.close()
        new = settle_sentinel(setup)
        reader = new.client()
        t = tally(ops, store.config, reader, [reader], ids)
        reader.close()
    finally:
        if min_replicas:
            set_everywhere(setup.servers, "min-replicas-to-write", 0)
    run.tally = t
    run.facts = {"demoted": t_back - t0, "victims_used": VICTIMS - left}
    run.rows = {
        "new master known to the sentinels after": f"{t_promoted - t0:.2f} s",
        (
            "old master demoted to replica after"
            if how == "failover"
            else "old master back as a replica after"
        ): f"{t_back - t0:.2f} s",
        **window_rows(ops, t0, run.facts),
        WAITING: str(waiting),
    }
    if how == "lag":
        lagged = [op for op in ops if op.ok and t_lag <= op.end <= t0]
        writes = sum(op.kind == "set" for op in lagged)
        critical = sum(op.kind in CRITICAL for op in lagged)
        run.facts.update(lag_writes=writes, lag_critical=critical)
        run.rows[LAGGED] = f"{writes} / {critical}"
    if wait is not None or how == "lag":
        nr = sum(1 for op in ops if op.error == "NotReplicatedError")
        run.rows["NotReplicatedError raised"] = str(nr)
    run.rows.update(common_rows(t, ops))
    run.rows.update(security_rows(t))
    return run


WAITING = "replicas a logout or id change waited for at the fault (WAIT)"
LAGGED = "acknowledged while the replica lagged, before the kill: writes / logouts and id changes"


def lag_replica(setup: SentinelSetup, master: EmbeddedRedis) -> float:
    """Stop the replica applying the master's stream (``CLIENT PAUSE ... WRITE`` on it:
    it still answers the sentinels, and the stream it has read but not applied is
    dropped when the master's link breaks), then wait ``LAG_BEFORE_KILL``; when the lag
    began."""
    replica = next(s for s in setup.servers if s is not master and s.running)
    client = replica.client()
    try:
        call(client, "CLIENT", "PAUSE", LAG_MS, "WRITE")
    finally:
        client.close()
    began = time.monotonic()
    time.sleep(LAG_BEFORE_KILL)
    return began


def set_everywhere(servers: Sequence[EmbeddedRedis], name: str, value: int) -> None:
    """``CONFIG SET name value`` on every running server."""
    for server in servers:
        if server.running:
            client = server.client()
            try:
                client.config_set(name, value)
            finally:
                client.close()


def readonly_run() -> Run:
    """A master turned replica by hand, no Sentinel to close its clients' connections: the
    store's pooled connections meet READONLY, which must raise, never pass silently."""
    run = Run("REPLICAOF on the master by hand (plain URL, no Sentinel)")
    with EmbeddedRedis() as first:
        second = EmbeddedRedis(args=("--replicaof", HOST, str(first.port))).start()
        try:
            wait_for("the replica to sync", partial(_following, second, first))
            store = make_store(first.url)
            ids = seed(store, POOL)
            admin, other = first.client(), second.client()
            admin.wait(1, 5000)
            with loaded(Load(store, ids)) as load:
                time.sleep(WARM)
                call(other, "REPLICAOF", "NO", "ONE")
                call(admin, "REPLICAOF", HOST, second.port)
                t0 = time.monotonic()
                time.sleep(1.0)
                ops = load.stop()
                run.unexpected, run.examples = load.unexpected, load.examples
            store.close()
            wait_for("the old master to follow", partial(_following, first, second))
            t = tally(ops, store.config, other, [other], ids)
            admin.close()
            other.close()
        finally:
            second.stop()
    late = [op for op in ops if op.start >= t0]
    run.tally = t
    run.facts = {"late_ok": sum(op.ok for op in late), "late": len(late)}
    run.rows = {
        "operations sent after the demotion: acknowledged / failed": (
            f"{sum(op.ok for op in late)} / {sum(not op.ok for op in late)}"
        ),
        **common_rows(t, ops),
    }
    return run


BEFORE = Path(__file__).resolve().parent / "faults_before.json"
PLANNED = [("failover", None, False), ("failover", None, True), ("failover", 1, False)]
KILLED = [
    ("kill", None, False),
    ("kill", 1, False),
    ("lag", None, False),
    ("lag", 0, False),
    ("lag", None, True),
]


def before_runs() -> tuple[list[Run], list[str]]:
    """The planned failover before the fix, from ``bench/faults_before.json``: columns
    for the table and a line naming each one's source."""
    data = json.loads(BEFORE.read_text(encoding="utf-8"))
    runs, sources = [], []
    for column in data["columns"]:
        run = Run(column["name"], rows=dict(column["rows"]))
        run.facts = {k: float(v) for k, v in column["figures"].items()}
        runs.append(run)
        sources.append(f"{column['name']}: {column['source']}.")
    return runs, sources


def scenario_sentinel() -> Scenario:
    setup = start_sentinel()
    runs: list[Run] = []
    try:
        for sentinel in setup.sentinels:
            client = sentinel.client()
            client.sentinel_set(setup.service, "failover-timeout", SENTINEL_FAILOVER_TIMEOUT_MS)
            client.close()
        for how, wait, min_replicas in PLANNED + KILLED:
            name = run_name(how, wait, min_replicas)
            log(f"sentinel: {name}")
            runs.append(guarded(name, sentinel_run, setup, how, wait, min_replicas))
    finally:
        setup.stop()
    log("sentinel: READONLY check")
    readonly = guarded("REPLICAOF by hand", readonly_run)
    before, sources = before_runs()
    planned, killed = runs[: len(PLANNED)], runs[len(PLANNED) :]
    return Scenario(
        "sentinel",
        "2. Sentinel failover under load",
        f"One master, one replica, three sentinels (down-after 1000 ms, failover-timeout "
        f"{SENTINEL_FAILOVER_TIMEOUT_MS} ms); the store connects by `redis+sentinel://` URL "
        "with its defaults (it follows the sentinels' pub/sub and `wait_for_replicas` is "
        '`"auto"`) unless the column names a setting. '
        "Server settings are the server's defaults except in the `min-replicas-to-write 1` "
        "columns (with `min-replicas-max-lag 10`, the default: the settings docs/topologies.md "
        f"documents). Load as in 1, except that {SECURITY:.0%} of the requests `invalidate()` "
        f"(a logout) or `regenerate()` (an id change) one of {VICTIMS} sessions made (and "
        "replicated) before the fault. After SIGKILL the dead server is started again on its "
        "port as a replica of the new master as soon as the sentinels name it. In the "
        f"*replica lagging* columns the replica stops applying the master's stream for "
        f"{LAG_MS} ms (`CLIENT PAUSE {LAG_MS} WRITE` sent to the replica: it still answers "
        "the sentinels, reads the stream and applies none of it, as a replica stuck on a slow "
        f"disk or a long command would) and the master gets SIGKILL {LAG_BEFORE_KILL:g} s "
        "into that pause. Each run's store is made once the sentinels know a healthy "
        'replica, as a store running for a while sees them (a `"auto"` store made before '
        "that waits for no replica until it next asks the sentinels, up to 5 s later). "
        "The checks "
        "read the new master once the old one replicates it.",
        [*runs, readonly],
        sentinel_notes(runs, readonly, before),
        tables=[
            (
                "A planned failover (`SENTINEL FAILOVER`), before the fix and now. The "
                "columns marked *before the fix* are not from this run: they come from "
                "`bench/faults_before.json`, which names their sources:\n\n"
                + "\n".join(f"- {line}" for line in sources),
                [*before, *planned],
            ),
            ("The master killed (SIGKILL), with and without a lagging replica:", killed),
            (
                "Not Sentinel: a master and its replica swapped by hand with `REPLICAOF` "
                "while the store (plain `redis://` URL to the old master) keeps writing, to "
                "see READONLY replies reach the caller:",
                [readonly],
            ),
        ],
    )


def _undone(t: Tally) -> int:
    return t.invalidations_lost + t.regenerations_undone


def sentinel_notes(runs: Sequence[Run], readonly: Run, before: Sequence[Run]) -> list[str]:
    done = {r.name: r for r in [*runs, readonly] if r.tally is not None}
    if not done:
        return ["No run completed."]
    notes = []
    bad = sum(r.tally.not_backend for r in done.values() if r.tally)
    notes.append(
        "Every failed operation raised a `BackendError`; none failed silently."
        if bad == 0
        else unexpected_note(runs)
    )
    for r in before:
        f = r.facts
        notes.append(
            f"{r.name} (not this run): {f['writes_lost']:.0f} of {f['writes_acked']:.0f} "
            f"acknowledged writes lost ({share(f['writes_lost'], f['writes_acked'])}); "
            f"{f['invalidations_lost']:.0f} of {f['invalidations']:.0f} acknowledged logouts "
            f"and {f['regenerations_undone']:.0f} of {f['regenerations']:.0f} acknowledged id "
            "changes undone: the store kept writing to the old master until Sentinel demoted "
            "it, and the new master never saw those writes."
        )
    for name in (run_name("failover", None, False), run_name("failover", None, True)):
        r = done.get(name)
        if r is None or r.tally is None:
            continue
        t = r.tally
        met = _undone(t) == 0 and t.writes_lost <= 0.10 * t.writes_acked
        notes.append(
            f"{name} (this run): {t.writes_lost} of {t.writes_acked} acknowledged writes "
            f"lost ({share(t.writes_lost, t.writes_acked)}); {t.invalidations_lost} of "
            f"{t.invalidations} acknowledged logouts and {t.regenerations_undone} of "
            f"{t.regenerations} acknowledged id changes undone; {t.failed} operations failed"
            + (
                f" ({', '.join(f'{k}: {n}' for k, n in t.classes.most_common())})"
                if t.failed
                else ""
            )
            + ". Goal (0 logouts or id changes undone, at most 10% of acknowledged writes "
            + ("lost): met." if met else "lost): **not met**.")
        )
    for name, r in done.items():
        t = r.tally
        assert t is not None
        if "wait_for_replicas=1" in name:
            nr = r.rows.get("NotReplicatedError raised", "0")
            notes.append(
                f"{name}: {t.invalidations_lost} of {t.invalidations} acknowledged "
                f"logouts and {t.regenerations_undone} of {t.regenerations} acknowledged "
                f"id changes undone; {nr} more raised `NotReplicatedError` (no replica "
                "confirmed in time) instead of returning."
            )
        elif name == run_name("kill", None, False):
            notes.append(
                f"{name}: operations failed for {r.facts.get('window', 0.0):.1f} s, until the "
                f"sentinels named the new master; {t.writes_lost} acknowledged writes and "
                f"{t.incr_lost} acknowledged increments were lost, {_undone(t)} logouts and "
                "id changes undone."
            )
        elif name.startswith(HOW["lag"]):
            notes.append(
                f"{name}: {r.facts.get('lag_writes', 0):.0f} writes and "
                f"{r.facts.get('lag_critical', 0):.0f} logouts/id changes were acknowledged "
                f"in the {LAG_BEFORE_KILL:g} s between the replica's stall and the kill; "
                f"{t.writes_lost} of {t.writes_acked} acknowledged writes and {t.incr_lost} "
                f"acknowledged increments were lost, {_undone(t)} acknowledged logouts and "
                f"id changes undone, {r.rows.get('NotReplicatedError raised', '0')} "
                "`NotReplicatedError` raised."
            )
    if readonly.tally is not None:
        f = readonly.facts
        notes.append(
            f"{readonly.name}: {f['late'] - f['late_ok']:.0f} of {f['late']:.0f} operations "
            "sent to the demoted master failed with "
            + ", ".join(f"`{label}`" for label in readonly.tally.classes)
            + f"; {f['late_ok']:.0f} were acknowledged."
        )
    window = lag_window_note(done)
    if window:
        notes.append(window)
    skipped = [r for r in runs if r.error]
    if skipped:
        notes.append("Not run: " + "; ".join(f"{r.name}: {r.error}" for r in skipped))
    return notes


def lag_window_note(done: dict[str, Run]) -> str:
    """What asynchronous replication leaves open, and what each setting closed, in this
    run's figures."""
    lag = done.get(run_name("lag", None, False))
    bare = done.get(run_name("lag", 0, False))
    floor = done.get(run_name("lag", None, True))
    if lag is None or lag.tally is None:
        return ""
    t = lag.tally
    text = (
        "The lag window: replication is asynchronous, so a master that dies takes with it "
        "the writes it acknowledged and its replica had not applied: here "
        f"{t.writes_lost} of {t.writes_acked} acknowledged writes with the store's defaults "
        f"and a replica {LAG_BEFORE_KILL:g} s behind"
    )
    if bare is not None and bare.tally is not None:
        off, on = _undone(bare.tally), _undone(t)
        text += (
            f". `wait_for_replicas` covers the critical writes only: {off} acknowledged "
            f"logouts and id changes were undone with it off (`wait_for_replicas=0`), {on} "
            'with the default `"auto"`'
            + (
                ", where a logout or id change returns only once a replica has it"
                if on == 0
                else ""
            )
            + f"; ordinary writes lost: {bare.tally.writes_lost} and {t.writes_lost}, in step "
            "with the writes acknowledged during the lag ("
            f"{bare.facts.get('lag_writes', 0):.0f} and {lag.facts.get('lag_writes', 0):.0f}: "
            "threads waiting for a replica make fewer writes meanwhile)"
        )
    if floor is not None and floor.tally is not None:
        ft = floor.tally
        text += (
            f". With `min-replicas-to-write 1` and `min-replicas-max-lag 10`, "
            f"{ft.writes_lost} of {ft.writes_acked} acknowledged writes were lost"
            + (
                ": the stalled replica still acknowledged its link every second, so the "
                "master went on accepting writes. Those settings refuse writes on a master "
                "whose replica has been silent for `min-replicas-max-lag` seconds (cut off, "
                "or gone); they do not cover a replica that is connected but behind"
                if ft.writes_lost
                else ""
            )
        )
    return text + "."


# --------------------------------------------------------------- 3. Cluster


def cluster_reader(setup: ClusterSetup) -> RedisCluster:
    nodes = [
        ClusterNode(HOST, s.port)  # type: ignore[no-untyped-call]
        for s in setup.nodes
        if s.running
    ]
    return RedisCluster(startup_nodes=nodes)


def live_masters(setup: ClusterSetup) -> list[EmbeddedRedis]:
    return [s for s in setup.nodes if s.running and role(s) == "master"]


def replica_of(setup: ClusterSetup, master: EmbeddedRedis) -> EmbeddedRedis:
    for server in setup.nodes:
        if server.running and server is not master:
            state = info(server, "replication")
            if state["role"] == "slave" and int(state["master_port"]) == master.port:
                return server
    raise RuntimeError(f"no replica follows {master!r}")


def cluster_ok(setup: ClusterSetup) -> bool:
    for server in setup.nodes:
        if server.running:
            client = server.client(socket_timeout=2)
            try:
                if client.cluster("INFO").get("cluster_state") != "ok":
                    return False
            finally:
                client.close()
    return True


def flush_cluster(setup: ClusterSetup) -> None:
    for server in live_masters(setup):
        client = server.client()
        client.flushall()
        client.close()


def check_cluster(
    setup: ClusterSetup, ops: Sequence[Op], store: SessionStore, ids: list[str]
) -> Tally:
    wait_for("the cluster to be ok", lambda: cluster_ok(setup))
    for master in live_masters(setup):
        wait_for("replicas to catch up", partial(_replicas_synced, master))
    reader = cluster_reader(setup)
    masters = [s.client() for s in live_masters(setup)]
    try:
        return tally(ops, store.config, reader, masters, ids)
    finally:
        for client in [reader, *masters]:
            close_quietly(client)


def _replicas_synced(master: EmbeddedRedis) -> bool:
    client = master.client()
    try:
        replicas = int(client.info("replication").get("connected_slaves", 0))
        return replicas == 0 or int(client.wait(replicas, 1000)) >= replicas
    finally:
        client.close()


def cluster_failover_run(setup: ClusterSetup, how: str) -> Run:
    name = {"manual": "CLUSTER FAILOVER on a replica", "kill": "SIGKILL of a master"}[how]
    run = Run(name)
    flush_cluster(setup)
    victim = live_masters(setup)[0 if how == "manual" else -1]
    replica = replica_of(setup, victim)
    store = make_store(setup.url)
    ids = seed(store, POOL)
    _replicas_synced(victim)
    with loaded(Load(store, ids)) as load:
        time.sleep(WARM)
        t0 = time.monotonic()
        if how == "manual":
            client = replica.client()
            call(client, "CLUSTER FAILOVER")
            client.close()
        else:
            kill9(victim)
        wait_for("the replica to take over", lambda: role(replica) == "master")
        t_promoted = time.monotonic()
        if how == "manual":
            wait_for("the old master to turn replica", lambda: role(victim) == "slave")
        load.wait_steady(time.monotonic(), SETTLE)
        ops = load.stop()
        run.unexpected, run.examples = load.unexpected, load.examples
    store.close()
    if how == "kill":
        victim.stop()
    t = check_cluster(setup, ops, store, ids)
    run.tally = t
    run.rows = {
        "replica promoted after": f"{t_promoted - t0:.2f} s",
        **window_rows(ops, t0, run.facts),
        **common_rows(t, ops),
    }
    return run


class SlotMoves:
    """Threads changing the ids of sessions in the migrating slot, one session each:
    ``regenerate()`` and ``login()`` by turns, as sign-ins do. Both are two-key
    scripts (old and new key, one slot), the kind a migration answers with ASK and
    TRYAGAIN. Each thread's session takes the new id after each acknowledged call."""

    def __init__(self, store: SessionStore, ids: Sequence[str]) -> None:
        self.store = store
        self.chains = [[sid] for sid in ids]  # each thread's ids, oldest first
        self.ops: list[Op] = []
        self.examples: dict[str, str] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._work, args=(i,), daemon=True, name=f"moves-{i}")
            for i in range(len(ids))
        ]

    def __enter__(self) -> SlotMoves:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(60)

    @staticmethod
    def user(index: int) -> str:
        return f"mover-{index}"

    def _work(self, index: int) -> None:
        store, chain = self.store, self.chains[index]
        n = 0
        while not self._stop.is_set():
            n += 1
            kind = "login" if n % 2 else "regenerate"
            before = chain[-1]
            session = store.open_id(store.config.cookie_value(before))
            start = time.monotonic()
            try:
                if kind == "login":
                    session.login(self.user(index))
                else:
                    session.regenerate()
            except Exception as exc:
                op = Op(kind, start, time.monotonic(), before, None, error=type(exc).__name__)
                op.backend = isinstance(exc, BackendError)
                with self._lock:
                    self.ops.append(op)
                    self.examples.setdefault(op.label, str(exc))
                time.sleep(0.01)
                continue
            with self._lock:
                self.ops.append(Op(kind, start, time.monotonic(), before, session.id))
            if session.id is not None:
                chain.append(session.id)

    def wrong(self, reader: RedisCluster) -> int:
        """Sessions whose state is wrong: an old id still works, the last id is missing,
        or the user's index does not list it."""
        config, bad = self.store.config, 0
        for index, chain in enumerate(self.chains):
            last = chain[-1]
            exists = [bool(reader.exists(config.key_of(sid))) for sid in chain]
            bad += sum(exists[:-1]) + (not exists[-1])
            if len(chain) > 1:
                listed = self.store.sessions_of(self.user(index), current=last)
                bad += not any(info.current for info in listed)
        return bad


def migration_run(setup: ClusterSetup) -> Run:
    run = Run(f"slot migration ({MIGRATED_SESSIONS} sessions in the slot)")
    flush_cluster(setup)
    masters = live_masters(setup)
    source, target = masters[1], masters[2]
    adopt = make_store(setup.url, adopt_unknown_ids=True)
    tag, slot = id_tag_in(adopt.config, owned_slots(source))
    wanted = [tag + secrets.token_urlsafe(32) for _ in range(MIGRATED_SESSIONS + MOVERS)]
    ids = seed(adopt, MIGRATED_SESSIONS + MOVERS, wanted)
    adopt.close()
    ids, movers = ids[:MIGRATED_SESSIONS], ids[MIGRATED_SESSIONS:]
    store = make_store(setup.url, user_key=USER_KEY)
    with loaded(Load(store, ids)) as load, SlotMoves(store, movers) as moves:
        time.sleep(WARM)
        t0 = time.monotonic()
        moved, batches = migrate_slot(slot, source, target, masters)
        t1 = time.monotonic()
        load.wait_steady(t1, SETTLE)
        ops = load.stop()
        run.unexpected, run.examples = load.unexpected, load.examples
    run.examples.update(moves.examples)
    t = check_cluster(setup, ops, store, ids)
    reader = cluster_reader(setup)
    try:
        wrong = moves.wrong(reader)
    finally:
        reader.close()
    store.close()
    during = [op for op in ops if t0 <= op.start and op.end <= t1]
    moving = [op for op in moves.ops if op.start <= t1 and op.end >= t0]
    run.tally = t
    run.facts = {
        "during_ok": sum(op.ok for op in during),
        "during": len(during),
        "moves_failed": sum(not op.ok for op in moves.ops),
        "moves": len(moves.ops),
        "moving_ok": sum(op.ok for op in moving),
        "moving": len(moving),
        "moves_wrong": wrong,
    }
    failed_moves = "; ".join(
        f"{label}: {n}"
        for label, n in Counter(op.label for op in moves.ops if not op.ok).most_common()
    )
    run.rows = {
        "keys moved (MIGRATE batches)": f"{moved} ({batches}) in {t1 - t0:.2f} s",
        "operations during the migration: acknowledged / failed": (
            f"{sum(op.ok for op in during)} / {sum(not op.ok for op in during)}"
        ),
        "regenerate() / login() in the moving slot: acknowledged / failed": (
            f"{sum(op.ok for op in moves.ops)} / {sum(not op.ok for op in moves.ops)}"
            + (f" ({failed_moves})" if failed_moves else "")
        ),
        "  of which overlapping the migration": (
            f"{sum(op.ok for op in moving)} / {sum(not op.ok for op in moving)}"
        ),
        "  sessions left in a wrong state (old id works, new id missing or unindexed)": (
            str(wrong)
        ),
        "  longest regenerate() / login()": longest(moves.ops),
        **window_rows(ops, t0, run.facts),
        **common_rows(t, ops),
    }
    return run


def scenario_cluster() -> Scenario:
    setup = start_cluster()
    runs: list[Run] = []
    try:
        for server in setup.nodes:
            client = server.client()
            client.config_set("cluster-node-timeout", CLUSTER_NODE_TIMEOUT_MS)
            client.close()
        log("cluster: CLUSTER FAILOVER")
        runs.append(guarded("CLUSTER FAILOVER", cluster_failover_run, setup, "manual"))
        log("cluster: slot migration")
        runs.append(guarded("slot migration", migration_run, setup))
        log("cluster: SIGKILL of a master")
        runs.append(guarded("SIGKILL of a master", cluster_failover_run, setup, "kill"))
    finally:
        setup.stop()
    notes = []
    done = [r for r in runs if r.tally is not None]
    bad = sum(r.tally.not_backend for r in done if r.tally)
    notes.append(
        "Every failed operation raised a `BackendError`." if bad == 0 else unexpected_note(runs)
    )
    for r in done:
        t = r.tally
        assert t is not None
        notes.append(
            f"{r.name}: {t.failed} operations failed, {t.writes_lost} acknowledged writes and "
            f"{t.incr_lost} acknowledged increments were lost, {t.incr_double} increments "
            "applied twice."
            + (
                f" {r.facts['during_ok']:.0f} operations were acknowledged while the slot was "
                "moving (ASK redirects followed by redis-py); of "
                f"{r.facts['moves']:.0f} `regenerate()`/`login()` calls in that slot "
                f"({r.facts['moving']:.0f} of them overlapping the migration), "
                f"{r.facts['moves_failed']:.0f} failed, and {r.facts['moves_wrong']:.0f} "
                "sessions were left in a wrong state."
                if "during_ok" in r.facts
                else ""
            )
        )
    notes.append(
        "A killed master's slots are unserved until its replica is promoted (about "
        f"cluster-node-timeout = {CLUSTER_NODE_TIMEOUT_MS} ms plus the election); writes it "
        "acknowledged but had not yet sent to the replica would be gone (asynchronous "
        "replication; none were in this run unless the table says so)."
    )
    return Scenario(
        "cluster",
        "3. Cluster failover and slot migration under load",
        "Three masters with one replica each, cluster-node-timeout "
        f"{CLUSTER_NODE_TIMEOUT_MS} ms; the store connects by `redis+cluster://` URL; load as "
        f"in 1 over {POOL} sessions spread over all slots (for the migration: "
        f"{MIGRATED_SESSIONS} sessions whose ids carry a tag hashing to the migrated slot, "
        "moved two keys per `MIGRATE ... KEYS` every 100 ms, then `CLUSTER SETSLOT ... NODE`, "
        f"by `tests/topologies.py` `migrate_slot`; meanwhile {MOVERS} more threads each call "
        "`regenerate()` and `login()` by turns on a session of their own in that slot).",
        runs,
        notes,
    )
