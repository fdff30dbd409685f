"""Switchovers under the real scheduler (`make bench`): what an operator triggering dr_failover from the UI gets.

`continuity run` (LocalExecutor), then switchovers primary -> dr -> primary ... each triggered through the
REST API, as the UI does, while two clients write through PgBouncer: Continuity's recording writer (one
row per transaction, every acknowledged commit checked on the new primary afterwards) and pgbench
(`-M simple`, 4 clients, an UPDATE per transaction, `--progress 1`). Per switchover: the entry point's pause
(dr_failover's own measurement, fence to repoint), the writer's longest gap between two acknowledged
commits, pgbench's worst second (fewest transactions in one progress second) and lost commits. The steps
that pause the entry point run in one task (`cut_over`), so the pause does not wait for the scheduler.

    python bench/switchover_scheduler.py [--switchovers 4]
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pgbench_load import start_pgbench  # noqa: E402  (bench/pgbench_load.py)
from table import print_table  # noqa: E402  (bench/table.py)
from tests.integration import airflow_run  # noqa: E402

from continuity.exercises.loadgen import CommitRecorder  # noqa: E402
from continuity_lab.sandbox import Sandbox  # noqa: E402

def _settle(run: airflow_run.AirflowRun, *, timeout: float = 300) -> None:
    """Wait until the runs the scheduler started by itself at start-up are done (they compete for 2 cores)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = run.api("/api/v2/dags/~/dagRuns?state=running&state=queued&limit=100")["dag_runs"]
        # dr_plan_review's first run waits for its owners' answer: it holds no worker.
        if not [r for r in running if r["dag_id"] != "dr_plan_review"]:
            return
        time.sleep(3)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--switchovers", type=int, default=4)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="continuity-bench-switchover-scheduler-"))
    root.chmod(0o755)
    run = airflow_run.start(root, scale=0.05)
    rows: list[tuple[str, str]] = []
    pauses: list[float] = []
    try:
        sandbox = Sandbox(root=root)
        _settle(run)
        targets = [("dr", "primary"), ("primary", "dr")]
        for number in range(args.switchovers):
            target, source = targets[number % 2]
            with CommitRecorder(sandbox.app_conninfo()) as load:
                bench = start_pgbench(sandbox.app_conninfo(), root, seconds=45, progress=True)
                load.wait_for(100)
                window = len(load.acknowledged)
                run_id = run.trigger("dr_failover", {"target": target, "mode": "switchover",
                                                     "reason": f"benchmark switchover {number + 1}"})
                state = run.wait_for_run("dr_failover", run_id, timeout=300)
                load.wait_for(len(load.acknowledged) + 100)
                output, _ = bench.communicate(timeout=120)
            lost = load.missing_on(sandbox.app_conninfo())
            times = [t for _, t in load.acknowledged[max(window - 1, 0):]]
            gap = max((b - a for a, b in zip(times, times[1:])), default=0.0)
            tps = [float(m) for m in re.findall(r"progress: [\d.]+ s, ([\d.]+) tps", output)]
            aborted = len(re.findall(r"client \d+ aborted", output))
            cut = run.api(f"/api/v2/dags/dr_failover/dagRuns/{run_id}/taskInstances/cut_over/xcomEntries/"
                          f"return_value")["value"] if state == "success" else {}
            pause = (cut or {}).get("unavailability_seconds")
            if pause is not None:
                pauses.append(pause)
            rows.append((f"switchover {number + 1}: {source} -> {target} ({state})",
                         f"entry point paused {pause if pause is not None else 'not measured'} s; writer's longest "
                         f"gap {gap:.2f} s, {len(load.errors)} failed statements, {len(lost)} lost commits; pgbench "
                         f"worst second {min(tps, default=0):.0f} tps (median {sorted(tps)[len(tps) // 2] if tps else 0:.0f}), "
                         f"{aborted} clients aborted"))
        if pauses:
            rows.append(("entry point pause, median", f"{sorted(pauses)[len(pauses) // 2]:.2f} s over {len(pauses)} "
                                                      f"switchovers triggered through the REST API"))
    finally:
        airflow_run.stop(run)
    print("Switchovers triggered through the REST API (continuity run, LocalExecutor)")
    print_table(rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
