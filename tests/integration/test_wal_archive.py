"""dr_wal_archive against the sandbox: every segment reaches every region once, gaps and conflicts stop the run."""

from __future__ import annotations

import psycopg
import pytest

from continuity.catalog import Catalog
from continuity.manifest import data_key_name, manifest_key_name

from continuity.wal import classify

from .airflow_helpers import load_dag, task_states, xcom

pytestmark = pytest.mark.usefixtures("airflow_db")


def _write(sandbox, rows: int = 2000) -> None:
    with psycopg.connect(sandbox.app_conninfo()) as conn:
        conn.execute("UPDATE detections SET confidence = confidence WHERE id <= %s", (rows,))


def _catalog(sandbox) -> tuple[Catalog, dict]:
    catalog = sandbox.catalog()
    return catalog, catalog.locations


def _segments(catalog: Catalog, location: str) -> list[str]:
    return sorted(m.source["wal_file"] for m in catalog.list(kind="wal", location=location)
                  if classify(m.source["wal_file"]).kind == "segment")


def test_hourly_runs_ship_every_segment_once_and_empty_the_spool(sandbox) -> None:
    _write(sandbox)
    first = load_dag("dr_wal_archive").test()
    assert str(first.state) == "success", task_states(first)
    closed = xcom(first, "switch_wal")
    assert [p for p in sandbox.spool_dir.iterdir() if not p.name.startswith(".")] == []

    catalog, _ = _catalog(sandbox)
    for location in ("primary", "dr", "archive"):
        segments = _segments(catalog, location)
        assert closed in segments, location
    assert _segments(catalog, "primary") == _segments(catalog, "dr")

    _write(sandbox)
    second = load_dag("dr_wal_archive").test()
    assert str(second.state) == "success", task_states(second)
    shipped = xcom(second, "ship_wal")["shipped"]
    assert xcom(second, "switch_wal") in shipped
    assert not set(shipped) & set(xcom(first, "ship_wal")["shipped"]), "nothing is shipped twice"
    continuity = xcom(second, "check_wal_continuity")
    assert continuity["dr"]["gaps"] == [] and continuity["dr"]["newest"] == xcom(second, "switch_wal")


def test_same_name_with_different_contents_is_an_alarm(sandbox) -> None:
    catalog, locations = _catalog(sandbox)
    if not _segments(catalog, "dr"):
        _write(sandbox)
        load_dag("dr_wal_archive").test()
        catalog, locations = _catalog(sandbox)
    shipped = _segments(catalog, "dr")[-1]
    before = locations["dr"].get_bytes(data_key_name("wal", f"wal-{shipped}"))
    impostor = sandbox.spool_dir / shipped
    impostor.write_bytes(b"\0" * 16 * 2**20)
    try:
        run = load_dag("dr_wal_archive").test()
        assert str(run.state) == "failed"
        assert task_states(run)["ship_wal"] == "failed"
        assert impostor.exists(), "the conflicting file stays for investigation"
        assert locations["dr"].get_bytes(data_key_name("wal", f"wal-{shipped}")) == before, "never overwritten"
    finally:
        impostor.unlink(missing_ok=True)


def test_a_missing_segment_fails_continuity_naming_it(sandbox, capfd: pytest.CaptureFixture[str]) -> None:
    for _ in range(3):
        _write(sandbox)
        load_dag("dr_wal_archive").test()
    catalog, locations = _catalog(sandbox)
    segments = _segments(catalog, "dr")
    assert len(segments) >= 3
    victim = segments[-2]
    dr = locations["dr"]
    saved = {key: dr.get_bytes(key) for key in (manifest_key_name(f"wal-{victim}"), data_key_name("wal", f"wal-{victim}"))}
    for key in saved:
        dr.delete(key)
    try:
        run = load_dag("dr_wal_archive").test()
        assert str(run.state) == "failed"
        assert task_states(run)["check_wal_continuity"] == "failed"
        states = task_states(run)
        assert states["ship_wal"] == "success"
        assert f"location dr: WAL gap, first missing segment {victim} (1 missing)" in capfd.readouterr().out
    finally:
        for key, data in saved.items():
            dr.put_bytes(key, data)
    healed = load_dag("dr_wal_archive").test()
    assert str(healed.state) == "success"


def test_a_failing_archiver_fails_the_run_with_its_reason(sandbox, capfd: pytest.CaptureFixture[str]) -> None:
    import time

    spool = sandbox.spool_dir
    primary = sandbox.node("primary")
    spool.chmod(0o550)  # the archive_command can no longer write its temporary file
    try:
        _write(sandbox)
        with primary.connect() as conn:
            conn.execute("SELECT pg_switch_wal()")
        deadline = time.monotonic() + 30
        while not primary.archiver().failing and time.monotonic() < deadline:
            time.sleep(0.2)
        assert primary.archiver().failing
        run = load_dag("dr_wal_archive").test()
        assert str(run.state) == "failed"
        assert "the archiver on primary is failing" in capfd.readouterr().out
    finally:
        spool.chmod(0o750)
    deadline = time.monotonic() + 60  # the archiver retries on its own once it can write again
    while primary.archiver().failing and time.monotonic() < deadline:
        time.sleep(0.5)
    assert str(load_dag("dr_wal_archive").test().state) == "success"
