"""Region-loss RTO per business function (`make bench`): dr_region_recovery under the real scheduler.

`continuity run` (LocalExecutor) on a fresh sandbox; once the startup runs have replicated the objects
and backed up the configuration, dr_region_recovery is triggered through the REST API, `--runs` times
in a row (each leaves the sandbox as it found it). From each run's report: every business function's
RTO (the loss of us-east-1 until its synthetic transaction succeeded in us-west-2), the writer's
longest gap between acknowledged writes through the application, writes lost, and the switch back.
Medians over the runs. Reference: the requirements' tier-1 RTO target is 15 minutes.

    python bench/region_loss.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from table import print_table  # noqa: E402  (bench/table.py)
from tests.integration import airflow_run  # noqa: E402

from continuity_lab.sandbox import Sandbox  # noqa: E402
from continuity.storage.locations import key_safe  # noqa: E402

PREREQUISITES = ("dr_object_replication", "dr_config_backup")


def _wait_for_startup_runs(run: airflow_run.AirflowRun) -> None:
    """The scheduler's first runs (object replication, config backup) give the RPOs something to read."""
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        done = {dag_id: [r for r in run.api(f"/api/v2/dags/{dag_id}/dagRuns?limit=10")["dag_runs"]
                         if r["state"] == "success"] for dag_id in PREREQUISITES}
        if all(done.values()):
            return
        time.sleep(5)
    raise SystemExit(f"startup runs of {', '.join(PREREQUISITES)} did not succeed within 600 s")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="continuity-bench-region-"))
    root.chmod(0o755)
    run = airflow_run.start(root, scale=0.05)
    reports: list[dict] = []
    try:
        sandbox = Sandbox(root=root)
        _wait_for_startup_runs(run)
        # A second replication pass copies the first one's heartbeat: the objects' lag is measured.
        run.wait_for_run("dr_object_replication", run.trigger("dr_object_replication"), timeout=300)
        for number in range(1, args.runs + 1):
            run_id = run.trigger("dr_region_recovery")
            state = run.wait_for_run("dr_region_recovery", run_id, timeout=900)
            key = f"reports/region-recovery/{key_safe(run_id)}.json"  # the final report, check_left_as_found's
            report = json.loads(sandbox.catalog().locations["dr"].get_bytes(key))
            reports.append(report)
            print(f"run {number}: {state} ({key})", flush=True)
            if state != "success":
                print(run.diagnose("dr_region_recovery", run_id))
    finally:
        airflow_run.stop(run)
    rows: list[tuple[str, str]] = []
    functions = sorted({o["function"] for r in reports for o in r["objectives"]
                        if o["objective"].startswith("RTO ") and o["function"]})
    for function in functions:
        seconds = [o["measured_seconds"] for r in reports for o in r["objectives"]
                   if o["objective"] == f"RTO {function}" and o["measured_seconds"] is not None]
        target = next(o["target"] for r in reports for o in r["objectives"] if o["objective"] == f"RTO {function}")
        rows.append((f"RTO {function} (loss of us-east-1 → its transaction in us-west-2)",
                     f"{statistics.median(seconds):.1f} s median of {len(seconds)} (target {target})" if seconds
                     else "not measured"))
    writers = [r["writer"] for r in reports if r.get("writer")]
    if writers:
        rows.append(("writer through the application: longest gap between acknowledged writes",
                     f"{statistics.median(w['outage_seconds'] for w in writers):.2f} s median"))
        rows.append(("acknowledged writes lost", f"{sum(len(w['lost']) for w in writers)} of "
                                                 f"{sum(w['acknowledged'] for w in writers)}"))
    back = [r["switch_back_seconds"] for r in reports if r.get("switch_back_seconds") is not None]
    if back:
        rows.append(("switch back (rebuilt region → primary again, application moved)",
                     f"{statistics.median(back):.1f} s median"))
    rows.append(("runs left as found", f"{sum(1 for r in reports if r.get('left_as_found'))} of {len(reports)}"))
    print("Region loss (dr_region_recovery under continuity run, LocalExecutor)")
    print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
