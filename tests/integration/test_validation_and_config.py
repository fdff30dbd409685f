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
from continuity.project import default_policy_path

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
        assert archive.extractfile("policy.yaml").read() == default_policy_path().read_bytes()
        connections = json.loads(archive.extractfile("airflow/connections.json").read())
        assert connections["continuity_app"]["password"] == sandbox.password("app")
        assert "SHA256SUMS" in archive.getnames()

    if not catalog.list(kind="physical", location="dr"):
        assert str(load_dag("dr_full_backup").test().state) == "success"
    _shipped_segments(sandbox, 1)
    assert str(load_dag("dr_object_replication").test().state) == "success"
    validation = load_dag("dr_backup_validation").test()
    assert task_states(validation)["stale_backup_alarm"] == "success", "fresh full, WAL, config, objects: no alarm"
    assert task_states(validation)["verify_objects"] == "success"
    inventories = xcom(validation, "verify_objects")
    assert {i["category"] for i in inventories} == {"video_content", "user_uploads"}
    assert all(i["missing"] == [] and i["different"] == [] and i["deep_verified"] > 0 for i in inventories)


def test_full_backups_older_than_their_schedule_fail_validation_naming_the_kind(
        sandbox, monkeypatch: pytest.MonkeyPatch, tmp_path, capfd: pytest.CaptureFixture[str]) -> None:
    import time

    catalog, _ = _catalog(sandbox)
    newest = catalog.latest("logical", location="dr")
    if newest is None:
        assert str(load_dag("dr_full_backup").test().state) == "success"
        newest = sandbox.catalog().latest("logical", location="dr")
    # Full backups every minute with a 1 s grace: the newest is late once it is 61 s old.
    age = (datetime.now(timezone.utc) - newest.finished_at).total_seconds()
    time.sleep(max(0.0, 62 - age))
    policy = tmp_path / "policy.yaml"
    policy.write_text(default_policy_path().read_text().replace('schedule: "0 2 * * *"', 'schedule: "* * * * *"')
                      .replace("freshness_grace: 2h", "freshness_grace: 1s"))
    monkeypatch.setenv("CONTINUITY_POLICY", str(policy))
    run = load_dag("dr_backup_validation").test()
    assert task_states(run)["stale_backup_alarm"] == "failed"
    out = capfd.readouterr().out
    assert "STALE BACKUPS: " in out and "backup kind logical: newest backup" in out
    assert "over its period of 1m (backups.full.schedule '* * * * *') plus the grace of 1s" in out
