"""Private Sentinel and Redis Cluster deployments for tests, built from the embedded binary.

:func:`start_sentinel` starts one master, one replica and three sentinels;
:func:`start_cluster` starts three masters with one replica each and joins them
with ``CLUSTER ADDSLOTS``/``MEET``/``REPLICATE``; :func:`migrate_slot` moves one
slot live from a master to another, as a reshard does. Every process listens on a
free loopback port and is stopped by pid (:meth:`EmbeddedRedis.stop`) in ``stop()``.
The fixtures in ``conftest.py`` start each deployment once per pytest process.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import redis
from redis.cluster import ClusterNode, RedisCluster
from redis.crc import key_slot

from hashsession.embedded import EmbeddedRedis

__all__ = [
    "TOPOLOGIES",
    "ClusterSetup",
    "SentinelSetup",
    "admin_client",
    "id_tag_in",
    "migrate_slot",
    "node_id",
    "owned_slots",
    "start_cluster",
    "start_sentinel",
    "wait_for",
]

HOST = "127.0.0.1"
TOPOLOGIES = ("standalone", "sentinel", "cluster")
SERVICE = "sessions"  # the service name the README's Sentinel example names
SLOTS = 16384
# Long enough that a busy CI machine never makes a node look dead by accident;
# failure detection is not what these tests exercise on a cluster.
CLUSTER_NODE_TIMEOUT_MS = 5000
SENTINEL_DOWN_AFTER_MS = 1000


def wait_for(what: str, check: Callable[[], bool], timeout: float = 30.0) -> float:
    """Poll ``check`` until it holds; the seconds it took. Raises naming ``what`` on timeout."""
    start = time.monotonic()
    while True:
        try:
            if check():
                return time.monotonic() - start
        except (redis.RedisError, OSError):
            pass
        if time.monotonic() - start > timeout:
            raise RuntimeError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def _stop_all(servers: list[EmbeddedRedis]) -> None:
    for server in reversed(servers):
        server.stop()


# -- Sentinel ----------------------------------------------------------------


@dataclass
class SentinelSetup:
    """One master, one replica and three sentinels watching service :data:`SERVICE`."""

    servers: list[EmbeddedRedis]
    sentinels: list[EmbeddedRedis]
    service: str = SERVICE
    started_in: float = 0.0
    _admins: dict[int, redis.Redis] = field(default_factory=dict, repr=False)

    @property
    def url(self) -> str:
        """``redis+sentinel://`` URL naming all three sentinels and the service, db 0."""
        hosts = ",".join(f"{HOST}:{s.port}" for s in self.sentinels)
        return f"redis+sentinel://{hosts}/{self.service}/0"

    def master_address(self) -> tuple[str, int]:
        """The master's address, as the first sentinel that answers reports it."""
        for sentinel in self.sentinels:
            client = sentinel.client()
            try:
                host, port = client.sentinel_get_master_addr_by_name(self.service)
                return str(host), int(port)
            except redis.RedisError:
                continue
            finally:
                client.close()
        raise RuntimeError("no sentinel knows the master")

    def master(self) -> EmbeddedRedis:
        """The server that is master now (it changes on failover)."""
        _, port = self.master_address()
        return next(s for s in self.servers if s.port == port)

    def flushall(self) -> None:
        """Empty the master (the replica follows)."""
        master = self.master()
        client = self._admins.get(master.port or 0)
        if client is None:
            client = self._admins[master.port or 0] = master.client()
        client.flushall()

    def ready_for_failover(self) -> float:
        """Wait until every sentinel knows both other sentinels and sees a healthy replica."""

        def known() -> bool:
            for sentinel in self.sentinels:
                client = sentinel.client()
                try:
                    state = client.sentinel_master(self.service)
                    replicas = client.sentinel_slaves(self.service)
                finally:
                    client.close()
                if int(state["num-other-sentinels"]) < 2:
                    return False
                healthy = [
                    r
                    for r in replicas
                    if r["is_slave"]
                    and not (r["is_sdown"] or r["is_odown"] or r["is_disconnected"])
                    and r["master-link-status"] == "ok"
                ]
                if not healthy:
                    return False
            return True

        return wait_for("sentinels to discover each other and the replica", known)

    def stop(self) -> None:
        for client in self._admins.values():
            client.close()
        _stop_all(self.sentinels + self.servers)


def _replication_up(master: EmbeddedRedis, replica: EmbeddedRedis) -> bool:
    client = replica.client()
    try:
        info = client.info("replication")
    finally:
        client.close()
    return info.get("master_link_status") == "up" and int(info["master_port"]) == master.port


def start_sentinel() -> SentinelSetup:
    """Start a master, a replica of it and three sentinels monitoring it (quorum 2)."""
    begun = time.monotonic()
    servers: list[EmbeddedRedis] = []
    sentinels: list[EmbeddedRedis] = []
    try:
        master = EmbeddedRedis().start()
        servers.append(master)
        replica = EmbeddedRedis(args=("--replicaof", HOST, str(master.port))).start()
        servers.append(replica)
        for _ in range(3):
            sentinel = EmbeddedRedis(args=("--sentinel",)).start()
            sentinels.append(sentinel)
            client = sentinel.client()
            try:
                client.sentinel_monitor(SERVICE, HOST, master.port, 2)
                client.sentinel_set(SERVICE, "down-after-milliseconds", SENTINEL_DOWN_AFTER_MS)
                client.sentinel_set(SERVICE, "failover-timeout", 10000)
            finally:
                client.close()
        wait_for("the replica to sync", lambda: _replication_up(master, replica))
    except BaseException:
        _stop_all(sentinels + servers)
        raise
    return SentinelSetup(servers, sentinels, started_in=time.monotonic() - begun)


# -- Cluster -----------------------------------------------------------------


@dataclass
class ClusterSetup:
    """Three masters (slots split evenly) with one replica each."""

    masters: list[EmbeddedRedis]
    replicas: list[EmbeddedRedis]
    started_in: float = 0.0
    node_ids: dict[int, str] = field(default_factory=dict)
    _admins: list[redis.Redis] = field(default_factory=list, repr=False)

    @property
    def nodes(self) -> list[EmbeddedRedis]:
        return self.masters + self.replicas

    @property
    def url(self) -> str:
        """``redis+cluster://`` URL naming the three masters as seeds."""
        return "redis+cluster://" + ",".join(f"{HOST}:{s.port}" for s in self.masters)

    def flushall(self) -> None:
        """Empty every master (as on one server, the loaded scripts stay)."""
        if not self._admins:
            self._admins = [server.client() for server in self.masters]
        for client in self._admins:
            client.flushall()

    def stop(self) -> None:
        for client in self._admins:
            client.close()
        _stop_all(self.nodes)


def _cluster_info(server: EmbeddedRedis) -> dict[str, Any]:
    client = server.client()
    try:
        info: dict[str, Any] = client.cluster("INFO")
        return info
    finally:
        client.close()


def _slot_map_complete(server: EmbeddedRedis, masters: int, replicas: int) -> bool:
    """Whether ``server`` serves the whole slot map with every master's replicas known."""
    if _cluster_info(server).get("cluster_state") != "ok":
        return False
    client = server.client()
    try:
        ranges = client.execute_command("CLUSTER SLOTS")
    finally:
        client.close()
    # Each range is [first slot, last slot, master, replica, ...].
    if len(ranges) != masters:
        return False
    return all(len(entry) - 3 == replicas for entry in ranges)


def start_cluster(masters: int = 3, replicas_per_master: int = 1) -> ClusterSetup:
    """Start and join a cluster; return once every node serves the complete slot map."""
    begun = time.monotonic()
    args = (
        "--cluster-enabled",
        "yes",
        "--cluster-config-file",
        "nodes.conf",
        "--cluster-node-timeout",
        str(CLUSTER_NODE_TIMEOUT_MS),
        # Redis 7.0 leaves a replica out of CLUSTER SLOTS until its replication
        # offset moves; with no writes only the master's pings move it (every 10 s).
        "--repl-ping-replica-period",
        "1",
    )
    started: list[EmbeddedRedis] = []
    try:
        for _ in range(masters * (1 + replicas_per_master)):
            started.append(EmbeddedRedis(args=args).start())
        setup = ClusterSetup(started[:masters], started[masters:])
        ids: dict[int, str] = {}
        for epoch, server in enumerate(started, 1):
            client = server.client()
            try:
                ids[server.port or 0] = client.execute_command("CLUSTER MYID").decode()
                client.execute_command("CLUSTER SET-CONFIG-EPOCH", epoch)
            finally:
                client.close()
        setup.node_ids = ids
        for index, server in enumerate(setup.masters):
            first = index * SLOTS // masters
            last = (index + 1) * SLOTS // masters
            client = server.client()
            try:
                client.execute_command("CLUSTER ADDSLOTS", *range(first, last))
            finally:
                client.close()
        seed = started[0].client()
        try:
            for server in started[1:]:
                seed.execute_command("CLUSTER MEET", HOST, server.port)
        finally:
            seed.close()

        def everyone_met() -> bool:
            return all(
                int(_cluster_info(server)["cluster_known_nodes"]) == len(started)
                for server in started
            )

        wait_for("the cluster nodes to meet", everyone_met)
        for index, replica in enumerate(setup.replicas):
            owner = setup.masters[index % masters]
            client = replica.client()
            try:
                wait_for(
                    "the replica to learn its master",
                    lambda c=client, o=owner: bool(
                        c.execute_command("CLUSTER REPLICATE", ids[o.port or 0])
                    ),
                )
            finally:
                client.close()
        for server in started:
            wait_for(
                f"node {server.port} to serve the full slot map",
                lambda s=server: _slot_map_complete(s, masters, replicas_per_master),
            )
        for index, replica in enumerate(setup.replicas):
            owner = setup.masters[index % masters]
            wait_for("a replica to sync", lambda r=replica, o=owner: _replication_up(o, r))
    except BaseException:
        _stop_all(started)
        raise
    setup.started_in = time.monotonic() - begun
    return setup


def node_id(server: EmbeddedRedis) -> str:
    """The cluster node id of ``server`` (``CLUSTER MYID``)."""
    client = server.client()
    try:
        return str(client.execute_command("CLUSTER MYID").decode())
    finally:
        client.close()


def owned_slots(server: EmbeddedRedis) -> range:
    """The (first) range of slots the master ``server`` serves."""
    myid = node_id(server)
    client = server.client()
    try:
        for first, last, *nodes in client.execute_command("CLUSTER SLOTS"):
            if nodes[0][2].decode() == myid:
                return range(int(first), int(last) + 1)
    finally:
        client.close()
    raise RuntimeError(f"{server!r} owns no slots")


def id_tag_in(config: Any, slots: range) -> tuple[str, int]:
    """A 4-character session id tag whose keys (under ``config``, a store's
    ``SessionConfig``) hash to a slot in ``slots``; the tag and that slot."""
    while True:
        tag = secrets.token_urlsafe(3)
        slot = key_slot(config.key_of(tag + "x" * 43).encode())
        if slot in slots:
            return tag, slot


def migrate_slot(
    slot: int,
    source: EmbeddedRedis,
    target: EmbeddedRedis,
    others: Iterable[EmbeddedRedis] = (),
    *,
    batch: int = 2,
    pause: float = 0.1,
) -> tuple[int, int]:
    """Move ``slot`` from the master ``source`` to the master ``target`` while it is in use.

    As a reshard does: ``CLUSTER SETSLOT ... IMPORTING`` on the target, ``MIGRATING``
    on the source, ``MIGRATE ... KEYS`` of ``batch`` keys at a time with ``pause``
    seconds between batches, then ``SETSLOT ... NODE`` on the target, the source and
    ``others`` (the other masters). The keys moved and the batches.
    """
    src, dst = source.client(), target.client()
    moved = batches = 0
    try:
        src_id, dst_id = node_id(source), node_id(target)
        dst.execute_command("CLUSTER SETSLOT", slot, "IMPORTING", src_id)
        src.execute_command("CLUSTER SETSLOT", slot, "MIGRATING", dst_id)
        while keys := src.execute_command("CLUSTER GETKEYSINSLOT", slot, batch):
            src.execute_command("MIGRATE", HOST, target.port, "", 0, 5000, "KEYS", *keys)
            moved += len(keys)
            batches += 1
            time.sleep(pause)
        for client in (dst, src):
            client.execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)
        for other in others:
            if other not in (source, target):
                client = other.client()
                try:
                    client.execute_command("CLUSTER SETSLOT", slot, "NODE", dst_id)
                finally:
                    client.close()
    finally:
        src.close()
        dst.close()
    return moved, batches


# -- clients that see the whole deployment ------------------------------------


def admin_client(topology: str, target: SentinelSetup | ClusterSetup | EmbeddedRedis) -> Any:
    """A plain (bytes) client for inspecting what a test stored, on any topology.

    On a cluster, ``KEYS``, ``DBSIZE`` and ``SCAN`` ask every master and merge the
    answers (redis-py asks one node by default), so ``client.keys()`` lists them all.
    """
    if isinstance(target, ClusterSetup):
        client = RedisCluster(startup_nodes=[ClusterNode(HOST, s.port) for s in target.masters])
        for command in ("KEYS", "DBSIZE", "SCAN", "RANDOMKEY"):
            client.command_flags[command] = RedisCluster.PRIMARIES
        return client
    if isinstance(target, SentinelSetup):
        return redis.Redis.from_url(target.master().url)
    return redis.Redis.from_url(target.url)


def role_of(server: EmbeddedRedis) -> str:
    """What ``ROLE`` says ``server`` is: ``master``, ``slave``..."""
    client = server.client()
    try:
        return str(client.execute_command("ROLE")[0].decode())
    finally:
        client.close()


def master_serving(setup: ClusterSetup, slot: int) -> EmbeddedRedis:
    """The master that ``CLUSTER SLOTS`` says serves ``slot``."""
    client = setup.masters[0].client()
    try:
        for first, last, *nodes in client.execute_command("CLUSTER SLOTS"):
            if int(first) <= slot <= int(last):
                port = int(nodes[0][1])
                return next(m for m in setup.masters if m.port == port)
    finally:
        client.close()
    raise AssertionError(f"slot {slot} is not served")
