"""The routers a failover repoints: PgBouncer (pause with a timeout) and Route 53 (UPSERT through the
amazon provider's connection, against moto's server over HTTP like AWS)."""

from __future__ import annotations

import json
import uuid

import psycopg
import pytest

from continuity.failover.router import Endpoint, PgBouncerRouter, RouterError

pytestmark = pytest.mark.usefixtures("airflow_db")


def _pgbouncer(sandbox) -> PgBouncerRouter:
    conn = sandbox.connections()["continuity_pgbouncer_admin"]
    info = f"host=127.0.0.1 port={conn['port']} user={conn['login']} password={conn['password']} dbname=pgbouncer"
    return PgBouncerRouter(admin_conninfo=info, ini_path=sandbox.pgbouncer_ini, database="app")


def test_pgbouncer_pause_gives_up_and_resumes_when_a_transaction_will_not_finish(sandbox) -> None:
    router = _pgbouncer(sandbox)
    with psycopg.connect(sandbox.app_conninfo(), prepare_threshold=None) as busy:
        busy.execute("SELECT 1")  # a transaction is open and holds its server connection
        with pytest.raises(RouterError, match="could not pause database app within 1s: transactions were still "
                                              "running; resumed it"):
            router.pause(timeout=1)
        busy.rollback()
    assert router.is_paused() is False
    with psycopg.connect(sandbox.app_conninfo(), prepare_threshold=None, connect_timeout=5) as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_pgbouncer_pause_holds_new_transactions_until_resume(sandbox) -> None:
    import threading
    import time

    router = _pgbouncer(sandbox)
    client = psycopg.connect(sandbox.app_conninfo(), autocommit=True, prepare_threshold=None)
    try:
        router.pause(timeout=5)
        assert router.is_paused()
        answered: list[float] = []
        worker = threading.Thread(target=lambda: (client.execute("SELECT 1"), answered.append(time.monotonic())))
        started = time.monotonic()
        worker.start()
        time.sleep(1.0)
        assert answered == [], "a paused entry point holds the client's next transaction"
        router.resume()
        worker.join(timeout=10)
        assert answered and answered[0] - started >= 1.0
    finally:
        router.resume()
        client.close()


def test_route53_record_is_repointed_through_the_amazon_provider_connection(sandbox, monkeypatch, tmp_path) -> None:
    import boto3

    from continuity.hooks.failover import FailoverHook
    from continuity.policy.project import default_policy_path
    from continuity.failover.router import Route53Router
    from continuity_lab.processes import S3_ACCESS_KEY

    secret = sandbox.password("s3_secret_key")
    route53 = boto3.client("route53", endpoint_url=sandbox.s3_endpoint, region_name="us-east-1",
                           aws_access_key_id=S3_ACCESS_KEY, aws_secret_access_key=secret)
    zone = route53.create_hosted_zone(Name="db.example.internal", CallerReference=uuid.uuid4().hex)
    zone_id = zone["HostedZone"]["Id"].split("/")[-1]
    monkeypatch.setenv("AIRFLOW_CONN_CONTINUITY_DNS", json.dumps({
        "conn_type": "aws", "login": S3_ACCESS_KEY, "password": secret,
        "extra": {"endpoint_url": sandbox.s3_endpoint, "region_name": "us-east-1", "zone_id": zone_id,
                  "record_name": "primary.db.example.internal",
                  "hostnames": {"dr": "pg-dr.us-west-2.example.internal"}}}))
    policy_file = tmp_path / "policy.yaml"
    text = default_policy_path().read_text()
    assert "    kind: pgbouncer\n    conn_id: continuity_app\n    admin_conn_id: continuity_pgbouncer_admin\n" in text
    policy_file.write_text(text.replace(
        "    kind: pgbouncer\n    conn_id: continuity_app\n    admin_conn_id: continuity_pgbouncer_admin\n",
        "    kind: route53\n    conn_id: continuity_app\n    admin_conn_id: continuity_dns\n"))

    router = FailoverHook(policy_path=str(policy_file)).get_router()
    assert isinstance(router, Route53Router)
    assert router.current() is None
    router.point_to(Endpoint(node="dr", host="127.0.0.1", port=5432))
    assert router.current() == ("pg-dr.us-west-2.example.internal", 5432)
    router.point_to(Endpoint(node="primary", host="pg-primary.us-east-1.example.internal", port=5432))
    records = route53.list_resource_record_sets(HostedZoneId=zone_id)["ResourceRecordSets"]
    cname = [r for r in records if r["Type"] == "CNAME"]
    assert len(cname) == 1 and cname[0]["ResourceRecords"] == [{"Value": "pg-primary.us-east-1.example.internal"}]
