"""WAL push benchmark (`make bench`): seconds from a commit to its WAL segment readable in the DR region.

A sandbox with its WAL pusher (archive-wal.sh queues each closed segment, `continuity wal pusher` sends
it to every storage location). Idle: one commit, then nothing: its segment closes at the policy's
archive_timeout. Under load: pgbench (`-M simple`, 4 clients, an UPDATE per transaction) through
PgBouncer while a marker commit every 2 s notes the segment holding it; each marker's latency is from
its commit to the segment's manifest in the DR location (HEAD every 0.2 s). Also segments/s pushed.

    python bench/wal_push.py [--load-seconds 40]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

import psycopg

from continuity.storage.manifest import manifest_key_name
from continuity_lab.sandbox import Sandbox
from pgbench_load import start_pgbench  # bench/pgbench_load.py: the script's own directory is on sys.path
from table import print_table

def _commit_marker(sandbox: Sandbox) -> tuple[str, float]:
    """One committed row; the WAL segment that holds it and when the commit returned."""
    with psycopg.connect(sandbox.app_conninfo(through_pgbouncer=False)) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bench_markers (id bigserial PRIMARY KEY, at timestamptz DEFAULT now())")
        lsn = conn.execute("INSERT INTO bench_markers DEFAULT VALUES RETURNING pg_current_wal_insert_lsn()::text").fetchone()[0]
        conn.commit()
        committed = time.monotonic()
        segment = conn.execute("SELECT pg_walfile_name(%s::pg_lsn)", (lsn,)).fetchone()[0]
    return segment, committed


def _readable_in(location, segment: str, *, since: float, timeout: float) -> float | None:
    key = manifest_key_name(f"wal-{segment}")
    deadline = since + timeout
    while time.monotonic() < deadline:
        if location.head(key) is not None:
            return time.monotonic() - since
        time.sleep(0.2)
    return None


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--load-seconds", type=int, default=40)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="continuity-bench-wal-push-"))
    root.chmod(0o755)
    sandbox = Sandbox(root=root)
    rows: list[tuple[str, str]] = []
    try:
        sandbox.up(scale=0.2)
        dr = sandbox.storage_locations()["dr"]
        timeout = sandbox.policy.backups.incremental.archive_timeout.total_seconds()
        segment, committed = _commit_marker(sandbox)
        idle = _readable_in(dr, segment, since=committed, timeout=timeout + 60)
        rows.append(("idle: commit -> its segment readable in the DR location",
                     f"{idle:.1f} s (archive_timeout {timeout:.0f} s closes the segment)" if idle is not None
                     else "not within archive_timeout + 60 s"))

        before = sum(1 for _ in dr.list("manifests/wal-"))
        bench = start_pgbench(sandbox.app_conninfo(), root, seconds=args.load_seconds)
        started = time.monotonic()
        queued: dict[str, float] = {}  # segment -> when archive_command queued it (seen in the spool)
        arrived: dict[str, float] = {}
        watching = threading.Event()

        def watch_spool() -> None:
            while not watching.is_set():
                now = time.monotonic()
                for path in sandbox.spool_dir.iterdir():
                    if len(path.name) == 24 and path.name not in queued:
                        queued[path.name] = now
                for name in [n for n in queued if n not in arrived]:
                    if dr.head(manifest_key_name(f"wal-{name}")) is not None:
                        arrived[name] = time.monotonic()
                time.sleep(0.1)

        spool_watch = threading.Thread(target=watch_spool, daemon=True)
        spool_watch.start()
        latencies: list[float | None] = []
        waiters: list[threading.Thread] = []

        def wait(segment: str, committed: float, slot: int) -> None:
            latencies[slot] = _readable_in(dr, segment, since=committed, timeout=timeout + 60)

        while bench.poll() is None:
            segment, committed = _commit_marker(sandbox)
            latencies.append(None)
            waiters.append(threading.Thread(target=wait, args=(segment, committed, len(latencies) - 1), daemon=True))
            waiters[-1].start()
            time.sleep(2)
        load_seconds = time.monotonic() - started
        output = bench.communicate()[0]
        for waiter in waiters:
            waiter.join()
        watching.set()
        spool_watch.join()
        pushes = sorted(arrived[n] - queued[n] for n in arrived)
        pushed = sum(1 for _ in dr.list("manifests/wal-")) - before
        measured = sorted(x for x in latencies if x is not None)
        tps = next((line.split("=")[1].split("(")[0].strip() for line in output.splitlines() if line.startswith("tps")),
                   "?")
        rows.append((f"under pgbench ({tps} tps)",
                     f"commit -> readable in DR: median {measured[len(measured) // 2]:.1f} s, worst {measured[-1]:.1f} s "
                     f"({len(measured)} of {len(latencies)} markers; the rest not within archive_timeout + 60 s)"
                     if measured else "no marker's segment arrived"))
        rows.append(("segments pushed to DR during the load", f"{pushed} in {load_seconds:.0f} s "
                                                              f"({pushed / load_seconds:.2f} segments/s)"))
        rows.append(("segment queued -> readable in DR (the pusher's own time)",
                     f"median {pushes[len(pushes) // 2]:.2f} s, worst {pushes[-1]:.2f} s ({len(pushes)} segments)"
                     if pushes else "no segment seen queued and arrived"))
        rows.append(("reference", "pgbackrest archive-push: not measured here (not installed by make bench yet)"))
    finally:
        sandbox.down(purge=True)
    print("WAL pushed as it closes (sandbox, continuity wal pusher)")
    print_table(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
