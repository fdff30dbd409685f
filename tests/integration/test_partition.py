"""A partition between the regions with the old primary alive: after the failover, no client beside the old
primary gets a commit acknowledged there (the guard beside it stops it once deposed), while clients through the
entry point write to the new primary."""

from __future__ import annotations

import re
import time

import psycopg
import pytest

from continuity.exercises.loadgen import CommitRecorder
from continuity.failover import steps as failover_steps
from continuity.failover.guard import notice_key
from continuity.failover.records import FailoverParams, database_loss
from continuity.postgres.node import PostgresNode
from continuity.waiting import poll
from continuity_lab.controls import failover_cluster

from tests.support.netfault import Forwarder


@pytest.fixture(scope="module")
def box(sandbox_factory):
    with sandbox_factory.own(scale=0.05, prefix="continuity-sandbox-partition-") as own:
        yield own


def _through(conninfo: str, port: int) -> str:
    return re.sub(r"\bport=\d+", f"port={port}", conninfo)


def test_a_partitioned_old_primary_takes_no_acknowledged_commit_after_the_cut_over(box, monkeypatch) -> None:
    primary_region = {node.name for node in box.policy.topology.nodes if node.region == "us-east-1"}
    assert box.current_primary() == "primary" and "dr" not in primary_region
    # The network between the regions: the DR standby streams from the primary through it, and the
    # orchestrator (in the DR region, the control region) reaches the primary region's nodes through it.
    links = {name: Forwarder(upstream_port=box.state["nodes"][name]["port"]) for name in primary_region}
    try:
        dr = box.cluster("dr")
        upstream = dr.psql("SHOW primary_conninfo").strip()
        through = _through(upstream, links["primary"].port).replace("'", "''")
        dr.psql(f"ALTER SYSTEM SET primary_conninfo = '{through}'")
        dr.psql("SELECT pg_reload_conf()")
        assert poll(lambda: box.node("dr").wal_receiver() is not None
                    and box.node("dr").wal_receiver().status == "streaming"
                    and f"port={links['primary'].port}" in dr.psql("SELECT conninfo FROM pg_stat_wal_receiver"),
                    timeout=30), "the DR standby did not stream through the link"
        box.wait_entry_point()

        cluster = failover_cluster(box)
        assert cluster.deposer is not None, "the sandbox policy runs guards (failover.primary_guard)"
        for name in primary_region:
            cluster.nodes[name] = PostgresNode(name=name, conninfo=_through(box.node(name).conninfo, links[name].port))

        promotion_started: list[float] = []
        real_promote = failover_steps.promote

        def promote(*args, **kwargs):
            promotion_started.append(time.monotonic())
            return real_promote(*args, **kwargs)

        monkeypatch.setattr(failover_steps, "promote", promote)
        beside = box.node("primary", user="app", dbname="app").conninfo  # a client on the old primary's host
        with CommitRecorder(conninfo=box.app_conninfo(), table="through_entry") as entry_writer, \
                CommitRecorder(conninfo=beside, table="beside_old_primary") as beside_writer:
            assert entry_writer.wait_for(20) and beside_writer.wait_for(20)
            box.wait_streaming(timeout=30)
            for link in links.values():
                link.cut()
            assert beside_writer.wait_for(len(beside_writer.acknowledged) + 20), (
                f"the old primary stopped taking writes at the cut itself: {beside_writer.errors[-3:]}")
            done = failover_steps.run_all(
                cluster, FailoverParams(target="dr", mode="failover", reason="the primary region does not answer"),
                primary="primary", run_id="partition-test", unreachable=sorted(primary_region))
            entry_after = len(entry_writer.acknowledged)
            assert entry_writer.wait_for(entry_after + 20, timeout=30), entry_writer.errors[-3:]

        fence = done.records.fence
        assert fence is not None and fence.fenced_by_entry_point and not fence.old_primary_fenced
        assert len(fence.deposed_in) >= 2 and fence.guard_wait_seconds and fence.guard_wait_seconds >= 10
        assert promotion_started, "the failover never reached its promotion"
        late = [(seq, round(at - promotion_started[0], 2)) for seq, at in beside_writer.acknowledged
                if at >= promotion_started[0]]
        assert late == [], f"commits acknowledged beside the old primary after the promotion began: {late[:5]}"
        # The guard beside the old primary stopped it, named why, and fenced it (back only as a standby).
        assert not box.cluster("primary").running
        assert (box.cluster("primary").data_dir / "standby.signal").exists()
        assert "FENCING primary" in box.guard_log("us-east-1") and "deposed" in box.guard_log("us-east-1")
        assert all(location.head(notice_key("primary")) for location in box.storage_locations().values()
                   if location.name in fence.deposed_in)
        # The clients through the entry point reached the new primary and lost nothing there.
        with psycopg.connect(box.app_conninfo(), prepare_threshold=None) as conn:
            assert conn.execute("SELECT inet_server_port()").fetchone()[0] == box.state["nodes"]["dr"]["port"]
        after = [seq for seq, at in entry_writer.acknowledged if at >= promotion_started[0]]
        assert after and not set(after) & set(entry_writer.missing_on(box.node("dr", user="app", dbname="app").conninfo))
        assert not box.node("dr").is_in_recovery()
        # Nothing on this side could see what the old primary committed at the end: the audit says so.
        seconds, source = database_loss(done.records)
        assert seconds is None and "the synchronous standbys sync1, sync2 did not answer" in source, source
    finally:
        for link in links.values():
            link.close()
