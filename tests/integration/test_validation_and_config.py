"""dr_backup_validation repairs a corrupt and a deleted WAL copy from the other region;
dr_config_backup keeps the configuration, secrets only inside the encrypted archive."""

from __future__ import annotations

import io
import json
import tarfile
from datetime import datetime, timezone

import psycopg
import pytest

from continuity.backup import restore_copy, verify_copy

from continuity.manifest import data_key_name, manifest_key_name
from continuity.policy import DEFAULT_POLICY_PATH

from continuity.wal import classify

from .airflow_helpers import load_dag, task_states, xcom

pytestmark = pytest.mark.usefixtures("airflow_db")


def _catalog(sandbox):
    catalog = sandbox.catalog()
    return catalog, catalog.locations


def _shipped_segments(sandbox, count: int) -> list[str]:
    for _ in range(count):
        with psycopg.connect(sandbox.app_conninfo()) as conn:
            conn.execute("UPDATE users SET last_login = now() WHERE id <= 50")
        assert str(load_dag("dr_wal_archive").test().state) == "success"
    catalog, _ = _catalog(sandbox)
    return sorted(m.source["wal_file"] for m in catalog.list(kind="wal", location="dr")
                  if classify(m.source["wal_file"]).kind == "segment")


def test_validation_repairs_a_corrupt_and_a_deleted_copy_from_the_other_region(sandbox) -> None:
    segments = _shipped_segments(sandbox, 2)
    corrupt_id, deleted_id = f"wal-{segments[-1]}", f"wal-{segments[-2]}"
    catalog, locations = _catalog(sandbox)
    dr, primary = locations["dr"], locations["primary"]
    blob = bytearray(dr.get_bytes(data_key_name("wal", corrupt_id)))
    blob[len(blob) // 2] ^= 0x01
    dr.put_bytes(data_key_name("wal", corrupt_id), bytes(blob))
    primary.delete(manifest_key_name(deleted_id))
    primary.delete(data_key_name("wal", deleted_id))

    run = load_dag("dr_backup_validation").test()
    states = task_states(run)
    assert states["verify_and_repair"] == "success", states
    report = xcom(run, "verify_and_repair")
    repaired = {(f["backup_id"], f["location"]) for f in report["findings"] if f["action"] == "repaired"}
    assert (corrupt_id, "dr") in repaired and (deleted_id, "primary") in repaired
    reasons = {f["backup_id"]: f["reason"] for f in report["findings"] if f["action"] == "repaired"}
    assert "corrupt" in reasons[corrupt_id] and "repaired from primary and verified deep" in reasons[corrupt_id]
    assert reasons[deleted_id].startswith("missing: location primary holds no copy")

    catalog, locations = _catalog(sandbox)
    for backup_id, where in ((corrupt_id, "dr"), (deleted_id, "primary")):
        manifest, _ = catalog.get(backup_id, location=where)
        assert verify_copy(manifest, locations[where], sandbox.keyring(), deep=True).ok
    assert states["apply_retention"] == "success"
    assert xcom(run, "apply_retention") == {"primary": [], "dr": [], "archive": []}, "nothing is old enough to go"


def test_config_backup_then_no_stale_alarm(sandbox) -> None:
    run = load_dag("dr_config_backup").test(logical_date=datetime(2026, 11, 21, 3, 15, tzinfo=timezone.utc))
    assert str(run.state) == "success", task_states(run)
    result = xcom(run, "backup_configuration")
    assert result["backup_id"] == "config-20261121T031500Z"
    assert "airflow/connections.json" in result["files"] and "policy.yaml" in result["files"]
    exposed = json.dumps(result)
    for secret in sandbox.state["secrets"].values():
        assert secret not in exposed

    catalog, locations = _catalog(sandbox)
    manifest, _ = catalog.get(result["backup_id"], location="dr")
    for secret in sandbox.state["secrets"].values():
        assert secret not in manifest.to_json().decode()
    out = io.BytesIO()
    restore_copy(manifest, locations["dr"], sandbox.keyring(), out)
    with tarfile.open(fileobj=io.BytesIO(out.getvalue())) as archive:
        assert archive.extractfile("policy.yaml").read() == DEFAULT_POLICY_PATH.read_bytes()
        connections = json.loads(archive.extractfile("airflow/connections.json").read())
        assert connections["continuity_app"]["password"] == sandbox.password("app")
        assert "SHA256SUMS" in archive.getnames()

    _shipped_segments(sandbox, 1)
    validation = load_dag("dr_backup_validation").test()
    assert task_states(validation)["stale_backup_alarm"] == "success", "fresh WAL and config: no alarm"
