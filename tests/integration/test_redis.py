"""The sandbox's Redis per region (Debian redis-server): the DR one replicates the primary region's,
both need the password (kept in a 0600 file, never on a command line), and status lists them."""

from __future__ import annotations

import time
from pathlib import Path

import pytest


def test_the_dr_redis_replicates_the_primary_regions(sandbox) -> None:
    primary, replica = sandbox.redis_client("us-east-1"), sandbox.redis_client("us-west-2")
    primary.set("continuity:test:session", "user-42", ex=300)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and replica.get("continuity:test:session") is None:
        time.sleep(0.2)
    assert replica.get("continuity:test:session") == b"user-42"
    assert replica.info("replication")["role"] == "slave" and primary.info("replication")["connected_slaves"] == 1
    with pytest.raises(Exception, match="read only replica"):
        replica.set("continuity:test:write", "refused")


def test_redis_needs_the_password_and_it_is_never_on_a_command_line(sandbox) -> None:
    import redis

    port = sandbox.state["redis"]["us-east-1"]["port"]
    with pytest.raises(redis.AuthenticationError):
        redis.Redis(host="127.0.0.1", port=port).ping()
    for region, entry in sandbox.state["redis"].items():
        cmdline = Path(f"/proc/{entry['pid']}/cmdline").read_bytes().decode(errors="replace")
        assert sandbox.password("redis") not in cmdline, region
        config = sandbox.redis_dir / region / "redis.conf"
        assert config.stat().st_mode & 0o777 == 0o600


def test_status_and_connections_name_both(sandbox) -> None:
    status = sandbox.status()["redis"]
    assert status["us-east-1"]["role"] == "primary" and status["us-west-2"]["role"] == "replica"
    assert all(entry["running"] for entry in status.values())
    conns = sandbox.connections()
    assert conns["continuity_redis_us_west_2"]["extra"]["role"] == "replica"
