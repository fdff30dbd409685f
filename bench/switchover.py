"""Switchover and failover benchmark (`make bench`): what the application sees.

A writer commits one row per transaction through PgBouncer and records every acknowledged commit.
For each switchover: the application-visible outage (longest gap between acknowledged commits),
statements that failed, the time the entry point was paused, and the total time of all steps.
Then a failover after SIGKILL of the primary: the time from the kill to the first commit on the
new primary when the failover starts immediately (detection time, 5 minutes of health checks at
worst with the policy's flap protection, is not included), and the data loss estimate.
Reference points: Patroni about 8 s for a switchover and 13 s for a failover (an operator's docs).
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from continuity.failover.steps import run_all

from continuity.failover.records import FailoverParams
from continuity.exercises.loadgen import CommitRecorder
from continuity_lab.sandbox import Sandbox
from continuity_lab.controls import failover_cluster
from table import print_table  # bench/table.py: the script's own directory is on sys.path


def main() -> int:
    root = Path(tempfile.mkdtemp(prefix="continuity-sandbox-bench-switchover-"))
    root.chmod(0o755)
    sandbox = Sandbox(root=root)
    rows: list[tuple[str, str]] = []
    quiet = lambda _m: None  # noqa: E731
    try:
        sandbox.up(scale=0.2)
        for number, (target, source) in enumerate((("dr", "primary"), ("primary", "dr"), ("dr", "primary"),
                                                   ("primary", "dr")), start=1):
            with CommitRecorder(sandbox.app_conninfo()) as load:
                load.wait_for(100)
                window_start = len(load.acknowledged)
                started = time.perf_counter()
                done = run_all(failover_cluster(sandbox, report=quiet),
                               FailoverParams(target=target, mode="switchover", reason="benchmark"),
                               primary=source, run_id=f"bench-{number}")
                total = time.perf_counter() - started
                load.wait_for(len(load.acknowledged) + 100)
            lost = load.missing_on(sandbox.app_conninfo())
            times = [t for _, t in load.acknowledged[max(window_start - 1, 0):]]
            gap = max((b - a for a, b in zip(times, times[1:])), default=0.0)
            rows.append((f"switchover {number}: {source} -> {target}",
                         f"outage {gap:.2f} s, {len(load.errors)} failed statements, {len(lost)} lost commits, "
                         f"entry point paused {done.unavailability_seconds:.2f} s, all steps {total:.2f} s"))

        with CommitRecorder(sandbox.app_conninfo()) as load:
            load.wait_for(100)
            sandbox.cluster("primary").kill()
            killed = time.monotonic()
            started = time.perf_counter()
            done = run_all(failover_cluster(sandbox, report=quiet),
                           FailoverParams(target="dr", mode="failover", reason="benchmark: primary killed"),
                           primary="primary", run_id="bench-failover")
            total = time.perf_counter() - started
            before = len(load.acknowledged)
            load.wait_for(before + 1)
            first = next((t for _, t in load.acknowledged[before:]), None)
        loss = done.records.catch_up.data_loss_bytes if done.records.catch_up else 0
        rows.append(("failover after SIGKILL of the primary",
                     f"kill to first commit on dr {first - killed:.2f} s, all steps {total:.2f} s, "
                     f"data loss estimate {loss:,} bytes" if first else f"no commit after the failover ({load.errors[-1:]})"))
    finally:
        sandbox.down(purge=True)
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
