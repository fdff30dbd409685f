"""docker-compose.yaml is parsed and checked for structure (no Docker engine runs on these machines)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import psycopg
import pytest
import yaml

from continuity.policy import load_policy

ROOT = Path(__file__).resolve().parents[1]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
SERVICES = COMPOSE["services"]
LIBPQ_KEYWORDS = {option.keyword.decode() for option in psycopg.pq.Conninfo.get_defaults()}
AIRFLOW_SERVICES = ["airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer", "airflow-worker"]


def _depends(service: dict) -> list[str]:
    depends = service.get("depends_on", [])
    return list(depends) if isinstance(depends, (dict, list)) else []


def test_distributed_airflow_services_exist() -> None:
    for name in [*AIRFLOW_SERVICES, "airflow-init", "redis", "airflow-metadata"]:
        assert name in SERVICES, name
    assert SERVICES["airflow-scheduler"]["environment"]["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    assert SERVICES["airflow-scheduler"]["image"].startswith("apache/airflow:3.3")


def test_protected_system_counterparts_exist() -> None:
    for name in ["pg-primary", "pg-sync1", "pg-dr", "pgbouncer", "minio-us-east-1", "minio-us-west-2"]:
        assert name in SERVICES, name
    assert "synchronous_standby_names=sync1" in SERVICES["pg-primary"]["command"]


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_referenced_service_exists(name: str) -> None:
    for dependency in _depends(SERVICES[name]):
        assert dependency in SERVICES, f"{name} depends on unknown service {dependency}"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_mounted_project_file_exists(name: str) -> None:
    for volume in SERVICES[name].get("volumes", []):
        source = volume.split(":")[0]
        if source.startswith("./"):
            assert (ROOT / source).exists(), f"{name} mounts missing {source}"
        else:
            assert source in COMPOSE["volumes"], f"{name} uses undeclared volume {source}"


@pytest.mark.parametrize("name", AIRFLOW_SERVICES)
def test_airflow_services_mount_the_project_and_define_every_connection(name: str) -> None:
    service = SERVICES[name]
    mounts = {v.split(":")[1] for v in service["volumes"]}
    assert {"/opt/airflow/dags", "/opt/airflow/plugins", "/opt/airflow/include"} <= mounts
    policy = load_policy()
    needed = {n.conn_id for n in policy.topology.nodes} | {n.backup_conn_id for n in policy.topology.nodes}
    entry = policy.topology.entry_point
    needed |= {entry.conn_id, entry.admin_conn_id, entry.config_conn_id}
    needed |= {loc.conn_id for loc in policy.storage.locations if loc.conn_id}
    needed.add("continuity_keyring")
    env = service["environment"]
    for conn_id in needed:
        key = f"AIRFLOW_CONN_{conn_id.upper()}"
        assert key in env, f"{name}: connection {conn_id} is not defined"
        # The JSON form parses once the ${...} secrets are substituted.
        conn = json.loads(re.sub(r"\$\{[^}]+\}", "secret", env[key]))
        assert conn["conn_type"] in {"postgres", "aws", "generic"}
        if conn["conn_type"] == "postgres":
            assert conn["host"] in SERVICES, f"{conn_id} points at unknown service {conn['host']}"
            # The provider hands every extra to libpq, which refuses keys it does not know.
            assert set(conn.get("extra", {})) <= LIBPQ_KEYWORDS, f"{conn_id}: extras libpq rejects"
        if conn["conn_type"] == "aws":
            host = re.match(r"http://([^:]+):", conn["extra"]["endpoint_url"]).group(1)
            assert host in SERVICES


def test_no_secret_is_written_in_the_file() -> None:
    text = (ROOT / "docker-compose.yaml").read_text()
    for key in ["CONTINUITY_PG_PASSWORD", "CONTINUITY_APP_PASSWORD", "CONTINUITY_S3_SECRET", "CONTINUITY_KEK"]:
        assert f"${{{key}:?" in text
    assert not re.search(r'"password": "(?!\$\{)', text), "passwords must come from the environment"


def test_wal_is_queued_bounded_and_pushed_from_the_shared_spool() -> None:
    policy = load_policy()
    primary = " ".join(SERVICES["pg-primary"]["command"])
    assert f"archive-wal.sh /var/lib/postgresql/wal-spool %p %f {policy.backups.incremental.max_queued}" in primary
    assert f"archive_timeout={int(policy.backups.incremental.archive_timeout.total_seconds())}s" in primary
    pusher = SERVICES["wal-pusher"]
    assert "wal pusher --spool /var/lib/postgresql/wal-spool" in " ".join(pusher["command"])
    spool_mounts = {v.split(":")[0] for v in pusher["volumes"]} & {v.split(":")[0] for v in SERVICES["pg-primary"]["volumes"]}
    assert "wal-spool" in spool_mounts, "the pusher reads the spool the primary's archive_command writes"
    for location in policy.storage.locations:
        if location.kind == "s3":
            assert f"CONTINUITY_S3_ENDPOINT_{location.region.upper().replace('-', '_')}" in pusher["environment"]
