"""Benchmarks (`make bench`): never part of `make test`. Prints a table; numbers vary by machine.

Today: sandbox cold start, sample-data generation throughput, and the latency of each health
check against the running sandbox. Later issues add the backup pipeline and switchover.
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from pathlib import Path

import psycopg

from continuity.health import checks as health
from continuity_lab import sampledata
from continuity.policy.loading import load_policy
from continuity_lab.sandbox import Sandbox
from table import print_table  # bench/table.py: the script's own directory is on sys.path


def timed(fn, repeat: int = 1) -> tuple[float, list[float]]:
    samples = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples), samples


def main() -> int:
    policy = load_policy()
    root = Path(tempfile.mkdtemp(prefix="continuity-sandbox-bench-"))
    root.chmod(0o755)
    sandbox = Sandbox(root=root, policy=policy)
    rows: list[tuple[str, str]] = []
    try:
        start = time.perf_counter()
        sandbox.up(scale=1.0)
        rows.append(("sandbox up (cold, scale 1)", f"{time.perf_counter() - start:.2f} s"))

        with psycopg.connect(sandbox.app_conninfo()) as conn:
            conn.execute("CREATE SCHEMA bench AUTHORIZATION app")
            conn.execute("SET search_path = bench")
            start = time.perf_counter()
            counts = sampledata.generate(conn, scale=5.0, seed=7)
            elapsed = time.perf_counter() - start
        total = sum(counts.values())
        rows.append(("sample data, scale 5 through PgBouncer", f"{total:,} rows in {elapsed:.2f} s ({total / elapsed:,.0f} rows/s)"))

        primary = sandbox.node("primary")
        standbys = {n: sandbox.node(n) for n in ("sync1", "dr")}
        for name, fn in [
            ("check_primary", lambda: health.check_primary(policy, primary)),
            ("check_standbys", lambda: health.check_standbys(policy, primary, standbys)),
            ("check_archiver", lambda: health.check_archiver(policy, primary, sandbox.spool_dir)),
            ("check_configuration", lambda: health.check_configuration(policy, primary)),
        ]:
            median, _ = timed(fn, repeat=20)
            rows.append((f"{name} (median of 20)", f"{median * 1000:.1f} ms"))
    finally:
        sandbox.down(purge=True)
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
