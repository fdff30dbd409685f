"""Backups and restores side by side with the tools people use instead (`make bench`).

One throwaway PostgreSQL cluster filled by `pgbench -i -s SCALE` (scale 50: about 755 MB), one directory
storage location on the same disk. Measured in turn, several runs each (medians), each run in a child
process whose tree's RSS is sampled for its peak:

- logical backup: Continuity's (pg_dump custom format uncompressed into zstd + AES-256-GCM, row counts
  and fingerprints in the same snapshot), and the same with pg_dump compressing and the archive storing its
  output as it is (backups.full.compression: pg_dump), against a bare `pg_dump -Fc > /dev/null`;
- physical backup: Continuity's (pg_basebackup tar, compressed, encrypted, stored, read back);
- physical restore: the base backup fetched, decrypted and unpacked (restore.unpack_base_backup: GNU tar
  fed by a writer thread) into a new data directory,
  and the same unpacked with Python's tarfile (how it was done before).

pgBackRest side by side: bench/pgbackrest.py.

    python bench/tools.py [--scale 50] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from continuity.backup.engine import load_manifest, restore_copy
from continuity.backup.full import NodeAddress, logical_backup, physical_backup
from continuity.storage.keys import Keyring
from continuity.postgres.cluster import ServiceUser, find_tool
from continuity.restore.engine import scratch_cluster, unpack_base_backup
from continuity.storage.locations import FileLocation
from table import print_table  # bench/table.py: the script's own directory is on sys.path


def _store(root: Path) -> tuple[Keyring, FileLocation]:
    keyring = Keyring.from_file(root / "keyring.json")
    return keyring, FileLocation(name="bench", region="local", path=root / "store")


def child(action: str, root: str, socket_dir: str, port: str, backup_id: str) -> dict:
    keyring, location = _store(Path(root))
    node = NodeAddress(name="bench", host=socket_dir, port=int(port), user="postgres", password=None)
    common = {"keyring": keyring, "locations": [location], "required": {"bench"}, "report": lambda _m: None}
    started = time.perf_counter()
    if action in ("logical", "logical-pg_dump-compressed"):
        manifest = logical_backup(node=node, database="postgres", backup_id=backup_id,
                                  compression="zstd" if action == "logical" else "pg_dump", **common)
        return {"seconds": time.perf_counter() - started, "stored": manifest.stored_bytes}
    if action == "physical":
        manifest = physical_backup(node=node, backup_id=backup_id, **common)
        return {"seconds": time.perf_counter() - started, "stored": manifest.stored_bytes}
    if action == "wal-push":  # what `continuity wal push %p` does, as archive_command: one process per segment
        from continuity.backup.wal import classify, push_file

        segment = Path(backup_id)
        wal = classify(segment.name)
        assert wal is not None, segment
        push_file(segment, wal, keyring=keyring, locations={"bench": location}, required={"bench"},
                  report=lambda _m: None)
        return {"seconds": time.perf_counter() - started}
    if action == "wal-push-batch":  # the sandbox's pusher: one process sends every queued segment, 2 at a time
        from continuity.backup.wal import ship_spool

        result = ship_spool(Path(backup_id), keyring=keyring, locations={"bench": location}, required={"bench"},
                            workers=2, report=lambda _m: None)
        return {"seconds": time.perf_counter() - started, "shipped": len(result.shipped)}
    if action == "restore-tarfile":  # how restore_physical unpacked before: Python's tarfile, streamed
        import tarfile
        import threading

        target = Path(root) / f"restored-tarfile-{backup_id}"
        target.mkdir(mode=0o700)
        reader, writer = os.pipe()
        with os.fdopen(reader, "rb") as read_end, os.fdopen(writer, "wb") as write_end:
            def feed() -> None:
                try:
                    restore_copy(load_manifest(location, backup_id, keyring), location, keyring, write_end,
                                 report=lambda _m: None)
                finally:
                    write_end.close()

            thread = threading.Thread(target=feed, daemon=True)
            thread.start()
            with tarfile.open(fileobj=read_end, mode="r|") as archive:
                archive.extractall(target, filter="fully_trusted")
            thread.join()
        seconds = time.perf_counter() - started
        subprocess.run(["rm", "-rf", str(target)], check=True)
        return {"seconds": seconds}
    if action == "restore":  # what restore_physical does before the WAL: fetch, decrypt, unpack with GNU tar
        target = Path(root) / f"restored-{backup_id}"
        unpack_base_backup(load_manifest(location, backup_id, keyring), location, keyring, target,
                           user=ServiceUser.detect())
        seconds = time.perf_counter() - started
        subprocess.run(["rm", "-rf", str(target)], check=True)
        return {"seconds": seconds}
    raise ValueError(action)


def _tree_rss_kib(pid: int) -> int:
    """The resident memory of a process and every descendant now (a tool's workers, `runuser`'s child)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            parent = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            status = (entry / "status").read_text()
        except (OSError, IndexError, ValueError):
            continue  # exited meanwhile
        children.setdefault(parent, []).append(int(entry.name))
        rss[int(entry.name)] = next((int(line.split()[1]) for line in status.splitlines()
                                     if line.startswith("VmRSS:")), 0)
    total, queue = 0, [pid]
    while queue:
        current = queue.pop()
        total += rss.get(current, 0)
        queue.extend(children.get(current, []))
    return total


def measured(argv: list[str], env: dict[str, str] | None = None) -> tuple[float, int, str]:
    """Seconds, the peak of the process tree's summed RSS (sampled every 50 ms), and stdout."""
    started = time.perf_counter()
    with tempfile.TemporaryFile() as out:
        process = subprocess.Popen(argv, stdout=out, stderr=subprocess.PIPE, env={**os.environ, **(env or {})})
        peak = 0
        while process.poll() is None:
            peak = max(peak, _tree_rss_kib(process.pid))
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
        if process.returncode != 0:
            raise RuntimeError(f"{argv[:3]} failed: {process.stderr.read().decode()[-2000:] if process.stderr else ''}")
        out.seek(0)
        return elapsed, peak, out.read().decode()


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--scale", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    rows: list[tuple[str, str]] = []
    with scratch_cluster(prefix="continuity-bench-tools-") as scratch:
        root = scratch.root
        Keyring(keys={"bench": os.urandom(32)}, active="bench").save(root / "keyring.json")
        cluster = scratch.cluster
        socket_dir, port = str(cluster.socket_dir), str(cluster.port)
        started = time.perf_counter()
        subprocess.run(cluster.user.command([find_tool("pgbench"), "-i", "-q", "-s", str(args.scale), "-h", socket_dir,
                                             "-p", port, "-U", "postgres", "postgres"]),
                       check=True, capture_output=True)
        size = int(cluster.psql("SELECT pg_database_size('postgres');").strip())
        rows.append(("database", f"pgbench scale {args.scale}, {size / 2**20:,.0f} MiB (built in "
                                 f"{time.perf_counter() - started:.0f} s)"))
        me = [sys.executable, __file__, "--child"]
        pg_dump = cluster.user.command([find_tool("pg_dump"), "-Fc", "-h", socket_dir, "-p", port, "-U", "postgres",
                                        "--no-sync", "-f", "/dev/null", "postgres"])
        timings: dict[str, list[float]] = {}
        inside: dict[str, list[float]] = {}
        peaks: dict[str, list[int]] = {}
        stored: dict[str, int] = {}
        for run in range(args.runs):
            for label, argv in (("continuity logical", [*me, "logical", str(root), socket_dir, port, f"logical-{run}"]),
                                ("continuity logical, pg_dump compresses",
                                 [*me, "logical-pg_dump-compressed", str(root), socket_dir, port, f"logical-z-{run}"]),
                                ("pg_dump -Fc > /dev/null", pg_dump),
                                ("continuity physical", [*me, "physical", str(root), socket_dir, port, f"physical-{run}"]),
                                ("continuity restore", [*me, "restore", str(root), socket_dir, port, f"physical-{run}"]),
                                ("tarfile restore", [*me, "restore-tarfile", str(root), socket_dir, port,
                                                     f"physical-{run}"])):
                seconds, peak, output = measured(argv)
                timings.setdefault(label, []).append(seconds)
                peaks.setdefault(label, []).append(peak)
                if label.startswith("continuity"):  # the child's own clock: after Python started and imported
                    inside.setdefault(label, []).append(json.loads(output)["seconds"])
                    stored[label] = json.loads(output).get("stored", 0)

        def cell(label: str) -> str:
            own = (f"; {median(inside[label]):.2f} s of it the work itself, the rest Python's start and imports"
                   if label in inside else "")
            return (f"{median(timings[label]):6.2f} s  peak RSS {max(peaks[label]) / 1024:4.0f} MiB  "
                    f"(runs: {', '.join(f'{t:.2f}' for t in timings[label])}{own})")

        rows.append(("logical backup, Continuity", cell("continuity logical")))
        rows.append(("logical backup, Continuity, pg_dump compresses", cell("continuity logical, pg_dump compresses")))
        rows.append(("logical backup, bare pg_dump -Fc", cell("pg_dump -Fc > /dev/null")))
        bare = median(timings["pg_dump -Fc > /dev/null"])
        for label in ("continuity logical", "continuity logical, pg_dump compresses"):
            rows.append((f"logical backup ratio ({label.removeprefix('continuity logical').strip(', ') or 'zstd'})",
                         f"{median(timings[label]) / bare:.2f}x the bare pg_dump's time (aim: at most 1.0x); "
                         f"stored {stored[label] / 2**20:,.0f} MiB"))
        rows.append(("physical backup, Continuity", cell("continuity physical")))
        rows.append(("physical restore (fetch + decrypt + unpack), Continuity", cell("continuity restore")))
        rows.append(("physical restore, Python's tarfile instead (before)", cell("tarfile restore")))
    print(f"Backups and restores side by side ({args.runs} runs each, medians)")
    print_table(rows)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        print(json.dumps(child(*sys.argv[2:7])))
        sys.exit(0)
    sys.exit(main())
