"""A replication slot nobody consumes, on one real PostgreSQL (#30 item 8): the health check alerts before the
policy's bound, and at the bound PostgreSQL gives up the slot's WAL instead of the primary's disk."""

from __future__ import annotations

from pathlib import Path

from continuity.health.checks import check_configuration
from continuity.policy.loading import load_policy
from continuity.postgres.node import PostgresNode

from tests.support.scratch import empty_cluster

MIB = 2**20
BOUND = 64 * MIB


def _wal_bytes(data_dir: Path) -> int:
    return sum(p.stat().st_size for p in (data_dir / "pg_wal").iterdir() if p.is_file())


def _write_wal(cluster, mebibytes: int, table: str) -> None:
    # ~1 KiB a row, WAL-logged (wal_level replica): about `mebibytes` of WAL.
    cluster.psql(f"CREATE TABLE {table} AS SELECT g, repeat(md5(g::text), 30) AS pad "
                 f"FROM generate_series(1, {mebibytes * 1000}) g; SELECT pg_switch_wal();")


def test_a_stalled_slot_alerts_at_half_the_bound_and_past_it_the_primary_keeps_its_disk() -> None:
    policy = load_policy()
    monitor = policy.health_monitor.model_copy(update={"max_slot_wal_keep": BOUND, "slot_wal_alert_ratio": 0.5})
    policy = policy.model_copy(update={"health_monitor": monitor})
    settings = {"max_slot_wal_keep_size": "64MB", "wal_keep_size": "0", "min_wal_size": "32MB", "max_wal_size": "64MB",
                "archive_mode": "off"}
    with empty_cluster(settings) as cluster:
        # A standby's slot whose standby stopped: reserved from now, never advanced.
        cluster.psql("SELECT pg_create_physical_replication_slot('dr', true)")
        node = PostgresNode(name="primary", conninfo=f"host={cluster.socket_dir} port={cluster.port} user=postgres "
                                                       f"dbname=postgres")

        def slot_check():
            return next(c for c in check_configuration(policy, node) if c.subject == "WAL retained on primary by slot dr")

        fresh = slot_check()
        assert fresh.healthy, fresh.reason
        drift = next(c for c in check_configuration(policy, node) if c.subject.endswith("max_slot_wal_keep_size"))
        assert drift.healthy, drift.reason

        _write_wal(cluster, 40, "before_the_bound")
        early = slot_check()
        assert not early.healthy and early.alert == "high", early.reason
        assert "over the 32.0 MiB alert level" in early.reason, early.reason
        assert early.details["wal_status"] in ("reserved", "extended"), "the alert comes while the WAL is still kept"

        for step in range(4):  # 160 MiB more, checkpoints between: the slot passes the bound
            _write_wal(cluster, 40, f"past_the_bound_{step}")
            cluster.psql("CHECKPOINT")
        late = slot_check()
        assert not late.healthy and late.details["wal_status"] == "lost", late.reason
        assert "lost its WAL past the 64.0 MiB bound" in late.reason and "cloned again" in late.reason
        # 200 MiB written since the slot was made; the primary holds its bound plus what max_wal_size recycles.
        held = _wal_bytes(cluster.data_dir)
        assert held <= BOUND + 64 * MIB + 2 * 16 * MIB, f"pg_wal holds {held / MIB:.0f} MiB"
