"""The routers' own decisions, without a PgBouncer or a DNS service: which entry a PgBouncer ini holds and how it
is rewritten, and a Route 53 record repointed and read back (moto in process). The admin console's PAUSE, RELOAD
and RESUME against a real PgBouncer, and Route 53 through the amazon provider's connection over HTTP, are in
tests/integration/test_routers.py."""

from __future__ import annotations

import boto3
import pytest
from moto import mock_aws

from continuity.failover.router import Endpoint, PgBouncerRouter, Route53Router, RouterError

INI = """[databases]
app = host=127.0.0.1 port=5433 dbname=app
appx = host=10.0.0.9 port=6000 dbname=appx

[pgbouncer]
listen_port = 6432
"""


def _router(tmp_path, database: str = "app") -> PgBouncerRouter:
    ini = tmp_path / "pgbouncer.ini"
    if not ini.exists():
        ini.write_text(INI)
    # Nothing listens here: a test that reached the admin console would fail on the refused socket.
    return PgBouncerRouter(admin_conninfo="host=127.0.0.1 port=1 dbname=pgbouncer", ini_path=ini, database=database)


def test_the_entry_of_its_own_database_is_read_not_a_longer_name_that_starts_the_same(tmp_path) -> None:
    assert _router(tmp_path).current() == ("127.0.0.1", 5433)
    assert _router(tmp_path, "appx").current() == ("10.0.0.9", 6000)
    assert _router(tmp_path, "other").current() is None


def test_a_database_name_that_could_break_the_ini_is_refused_before_anything_is_read(tmp_path) -> None:
    with pytest.raises(RouterError, match=r"PgBouncer database name 'app; drop': expected letters, digits and _"):
        _router(tmp_path, "app; drop")


def test_repointing_a_database_the_ini_does_not_have_changes_nothing_and_names_the_file(tmp_path) -> None:
    router = _router(tmp_path, "other")
    with pytest.raises(RouterError, match=r"pgbouncer.ini has no \[databases\] entry for other"):
        router.point_to(Endpoint(node="dr", host="127.0.0.2", port=5999))
    assert router.ini_path.read_text() == INI
    assert not list(tmp_path.glob(".*.tmp"))


def test_route53_upserts_the_nodes_hostname_and_reads_it_back_and_holds_no_one() -> None:
    with mock_aws():
        client = boto3.client("route53", region_name="us-east-1", aws_access_key_id="unit",
                              aws_secret_access_key="unit")
        zone = client.create_hosted_zone(Name="example.internal", CallerReference="unit")["HostedZone"]["Id"]
        router = Route53Router(client=client, zone_id=zone, record_name="db.example.internal",
                               hostnames={"dr": "dr.db.example.internal"})
        assert router.current() is None  # no record yet
        router.pause(timeout=1)  # DNS holds no client: nothing to wait for
        router.point_to(Endpoint(node="dr", host="127.0.0.2", port=5999))
        assert router.current() == ("dr.db.example.internal", 5432)
        router.point_to(Endpoint(node="primary", host="10.1.0.5", port=5432))  # no hostname named: its host
        assert router.current() == ("10.1.0.5", 5432)
        router.resume()
        changes = client.list_resource_record_sets(HostedZoneId=zone)["ResourceRecordSets"]
        [record] = [r for r in changes if r["Type"] == "CNAME"]
        assert record["Name"] == "db.example.internal." and record["TTL"] == 30
