"""`continuity run` (what `make run` does): sandbox + airflow standalone with every DAG, its metadata in
PostgreSQL and its API on loopback; the first backups are taken at bring-up and every run the scheduler starts
by itself succeeds, while 20 REST triggers land at once; the scheduled restore test run past its RTO target raises
the Deadline Alert under the real scheduler; Ctrl-C stops all."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import psycopg
import pytest

from continuity_lab.controlplane import METADATA_DATABASE, ControlPlane

from continuity.postgres.cluster import free_port, pid_alive
from continuity_lab.sandbox import Sandbox
from continuity.storage.locations import key_safe
from tests.support.airflow_run import api as _api
from tests.support.policies import use_overlay

DAG_IDS = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "dags").glob("dr_*.py"))


def test_run_serves_every_dag_and_ctrl_c_stops_everything(monkeypatch) -> None:
    root = Path(tempfile.mkdtemp(prefix="continuity-sandbox-run-"))
    root.chmod(0o755)
    try:
        _run_and_interrupt(root, monkeypatch)
    finally:
        keep = bool(os.environ.get("CONTINUITY_KEEP_TEST_ROOT"))  # to read task logs after a failure
        subprocess.run([sys.executable, "-m", "continuity.cli", "sandbox", "down", *([] if keep else ["--purge"]),
                        "--root", str(root)], capture_output=True, check=False)
        if not keep:
            shutil.rmtree(root, ignore_errors=True)  # Airflow may still flush an empty logs/ folder on its way out


def _run_and_interrupt(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # An RTO target of 2 s, so the restore test's Deadline Alert fires while the scheduler runs it; the rest is the
    # shipped policy, as `make run` reads it.
    policy = use_overlay(monkeypatch, root, {"business_functions": {"user_authentication": {"rto": {"target": "2s"}}}})
    port = free_port()
    # As from a user's shell: none of the test session's Airflow settings (run sets its own).
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env |= {"AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(free_port()),
            "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(free_port())}
    process = subprocess.Popen([sys.executable, "-m", "continuity.cli", "run", "--root", str(root), "--port", str(port),
                                "--scale", "0.05"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                               start_new_session=True)
    output: list[str] = []
    try:
        deadline = time.monotonic() + 240
        assert process.stdout is not None
        while time.monotonic() < deadline:
            line = process.stdout.readline()
            if not line and process.poll() is not None:
                break
            output.append(line)
            if line.startswith("Ctrl-C stops"):
                break
        text = "".join(output)
        assert f"Airflow UI: http://localhost:{port}" in text, text[-3000:]
        password_file = root / "airflow" / "simple_auth_manager_passwords.json.generated"
        assert str(password_file) in text
        assert json.loads(password_file.read_text())["admin"] not in text, "the password itself is never printed"

        token = _api(port, "/auth/token", body={"username": "admin",
                                                "password": json.loads(password_file.read_text())["admin"]})["access_token"]
        listed: list[str] = []
        deadline = time.monotonic() + 90  # the dag-processor parses dags/ shortly after start
        while time.monotonic() < deadline and sorted(listed) != DAG_IDS:
            listed = [d["dag_id"] for d in _api(port, "/api/v2/dags", token)["dags"]]
            time.sleep(2)
        assert sorted(listed) == DAG_IDS
        assert _api(port, "/api/v2/importErrors", token)["total_entries"] == 0
        sandbox_state = json.loads((root / "state.json").read_text())
        # The UI is on loopback only, not on every network this machine is on.
        listening = {c.laddr.ip for c in psutil.net_connections(kind="inet")
                     if c.status == psutil.CONN_LISTEN and c.laddr.port == port}
        assert listening == {"127.0.0.1"}, listening

        # While every scheduled DAG's first run goes: 20 triggers through the REST API at once, as people
        # clicking in the UI (on SQLite: HTTP 500 "Database error", "database is locked" in the logs).
        triggers = [("dr_failover", {"target": "dr", "mode": "switchover", "dry_run": True,
                                     "reason": f"concurrent trigger {n}", "incident_id": None}) for n in range(16)]
        triggers += [("dr_incident", {"action": "open", "severity": "low", "kind": "drill", "title": f"drill {n}",
                                      "cause_key": f"concurrent-trigger-{n}"}) for n in range(4)]
        with ThreadPoolExecutor(max_workers=len(triggers)) as pool:
            answers = list(pool.map(lambda t: _post(port, f"/api/v2/dags/{t[0]}/dagRuns", token,
                                                    {"logical_date": None, "conf": t[1]}), triggers))
        assert [status for status, _ in answers] == [200] * len(triggers), answers
        triggered_runs = {body["dag_run_id"] for _, body in answers}
        assert len(triggered_runs) == len(triggers)
        # ... and each is a row of the PostgreSQL metadata database of the control plane.
        plane = ControlPlane(root=root)
        with psycopg.connect(host="127.0.0.1", port=plane.metadata_port(), dbname=METADATA_DATABASE,
                             user="airflow", password=json.loads(plane.secrets_file.read_text())["metadata"]) as db:
            stored = {row[0] for row in db.execute("SELECT run_id FROM dag_run WHERE run_type = 'manual'")}
        assert triggered_runs <= stored
        assert not (root / "airflow" / "airflow.db").exists()

        # The fresh install's own restore test (its newest interval, started by the scheduler) runs past the 2-s
        # target: its Deadline Alert fires (one restore test fewer than triggering another beside it).
        run_id = None
        deadline = time.monotonic() + 60
        while run_id is None and time.monotonic() < deadline:
            run_id = next((r["dag_run_id"] for r in _api(port, "/api/v2/dags/dr_restore_test/dagRuns", token)["dag_runs"]
                           if r["run_type"] == "scheduled"), None)
            time.sleep(0 if run_id else 2)
        assert run_id is not None, "the scheduler started no restore test run"
        alerts = Sandbox(root=root, policy=policy).storage_locations()["dr"]
        key = "alerts/dr_restore_test-" + key_safe(run_id) + ".json"
        deadline = time.monotonic() + 120
        record = None
        while time.monotonic() < deadline and record is None:
            try:
                record = json.loads(alerts.get_bytes(key))
            except Exception:
                time.sleep(2)
        assert record is not None, f"no deadline alert at {key}"
        assert record["kind"] == "rto-deadline-missed" and record["rto_target"] == "2s" and record["run_id"] == run_id

        # dr_failover through the REST API and the scheduler: params from the trigger form, a dry run. The
        # sixteen wait their turn (one failover at a time); the first to end must be green.
        deadline = time.monotonic() + 180
        ended: list[dict] = []
        while time.monotonic() < deadline and not ended:
            time.sleep(2)
            ended = [r for r in _api(port, "/api/v2/dags/dr_failover/dagRuns?limit=100", token)["dag_runs"]
                     if r["state"] in ("success", "failed")]
        assert ended and ended[0]["state"] == "success", ended
        tasks = _api(port, f"/api/v2/dags/dr_failover/dagRuns/{ended[0]['dag_run_id']}/taskInstances", token)
        states = {t["task_id"]: t["state"] for t in tasks["task_instances"]}
        assert states["preflight"] == "success" and states["cut_over"] == "skipped" and states["record"] == "success"
        # What an operator does with a queue of dry runs once one has answered: the ones not started are deleted
        # (each would take task slots and CPU from the fresh install's first scheduled runs, checked next).
        waiting = [r["dag_run_id"] for r in _api(port, "/api/v2/dags/dr_failover/dagRuns?limit=100&state=queued",
                                                 token)["dag_runs"]]
        for queued_id in waiting:
            _api(port, f"/api/v2/dags/dr_failover/dagRuns/{queued_id}", token, method="DELETE")

        # A fresh install is green: every run the scheduler started by itself (each scheduled DAG's
        # newest interval, all at once) succeeds within the first minutes.
        # dr_plan_review's first run waits for its owners' answer (checked below), the others finish.
        scheduled_dags = sorted(set(DAG_IDS) - {"dr_failover", "dr_incident", "dr_incident_inbox", "dr_plan_review"})
        deadline = time.monotonic() + 420  # the drill rebuilds a cluster and switches over: minutes on a loaded 2-core machine
        runs: list[dict] = []
        while time.monotonic() < deadline:
            runs = [r for r in _api(port, "/api/v2/dags/~/dagRuns?limit=100", token)["dag_runs"]
                    if r["run_type"] == "scheduled"]
            started = {r["dag_id"] for r in runs}
            if started >= {*scheduled_dags, "dr_plan_review"} and all(r["state"] in ("success", "failed") for r in runs
                                                                        if r["dag_id"] != "dr_plan_review"):
                break
            time.sleep(5)
        assert {r["dag_id"] for r in runs} >= set(scheduled_dags), runs
        [review] = [r for r in runs if r["dag_id"] == "dr_plan_review"]
        deadline, review_tasks = time.monotonic() + 90, {}
        while time.monotonic() < deadline and review_tasks.get("confirm_targets") != "awaiting_input":
            review_tasks = {t["task_id"]: t["state"] for t in _api(
                port, f"/api/v2/dags/dr_plan_review/dagRuns/{review['dag_run_id']}/taskInstances", token)["task_instances"]}
            time.sleep(2)
        assert review_tasks == {"draft_review": "success", "confirm_targets": "awaiting_input"}, review_tasks
        runs = [r for r in runs if r["dag_id"] != "dr_plan_review"]
        failed = {(r["dag_id"], r["state"]): {t["task_id"]: t["state"] for t in _api(
            port, f"/api/v2/dags/{r['dag_id']}/dagRuns/{r['dag_run_id']}/taskInstances", token)["task_instances"]
            if t["state"] not in ("success", "skipped")} for r in runs if r["state"] != "success"}
        assert failed == {}, f"scheduled runs not green: {failed}\n" + _failed_task_logs(root, runs, failed)
        # The quarterly region-loss exercise never starts late: its newest missed interval is skipped.
        [exercise] = [r for r in runs if r["dag_id"] == "dr_region_recovery"]
        exercise_tasks = {t["task_id"]: t["state"] for t in _api(
            port, f"/api/v2/dags/dr_region_recovery/dagRuns/{exercise['dag_run_id']}/taskInstances",
            token)["task_instances"]}
        assert exercise_tasks["plan_exercise"] == "skipped" and exercise_tasks["lose_region_and_recover"] == "skipped"
    finally:
        os.killpg(process.pid, signal.SIGINT)  # what Ctrl-C in the terminal does
        remaining, _ = process.communicate(timeout=120)
    assert process.returncode == 0, remaining[-2000:]
    assert "Airflow's metadata: PostgreSQL database airflow on 127.0.0.1:" in "".join(output)
    # No component met a locked database or lost its scheduler loop under the load.
    troubles = [f"{path.relative_to(root)}: {line.strip()[:300]}"
                for path in (root / "airflow").rglob("*.log")
                for line in path.read_text(errors="replace").splitlines()
                if "database is locked" in line or "Exception when executing SchedulerJob" in line]
    assert troubles == []
    assert ("stopped: application us-east-1, wal pusher, guard us-east-1, guard us-west-2, receivers, redis us-west-2, redis us-east-1, s3 gateway eu-west-1, s3 gateway us-east-1, "
            "s3 gateway us-west-2, s3 endpoint, "
            "pgbouncer, postgres dr, postgres sync2, postgres sync1, "
            "postgres primary") in remaining
    assert not pid_alive(sandbox_state["s3"]["pid"])
    leftovers = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmdline = (proc / "cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if (str(root) in cmdline or "airflow" in cmdline and f"{port}" in cmdline) and pid_alive(int(proc.name)):
                leftovers.append(cmdline)
    assert leftovers == []


def _post(port: int, path: str, token: str, body: dict) -> tuple[int, dict]:
    """One POST, its status and body as they came: no retry, so a 500 is seen."""
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"})
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, {"error": exc.read()[:500].decode(errors="replace")}


def _failed_task_logs(root: Path, runs: list[dict], failed: dict) -> str:
    """The end of each failed task's log: a fresh start that is not green must say why in the test's output,
    not only in a root that is purged after it (session 20 saw assess_health fail once and could not tell why)."""
    lines = []
    for run in runs:
        for task_id in failed.get((run["dag_id"], run["state"]), {}):
            logs = root / "airflow" / "logs" / f"dag_id={run['dag_id']}" / f"run_id={run['dag_run_id']}" / f"task_id={task_id}"
            for log_file in sorted(logs.glob("*.log")):
                lines.append(f"--- {run['dag_id']}.{task_id} {log_file.name}:\n" + log_file.read_text(errors="replace")[-3000:])
    return "\n".join(lines)
