"""Continuity side by side with pgBackRest (`make bench`; `make bench` installs pgBackRest 2.45 from Debian).

One throwaway cluster filled by `pgbench -i -s SCALE` (scale 50: about 755 MB); each tool's repository is a
directory on the same disk. pgBackRest as its users run it: zstd level 3, aes-256-cbc, process-max 2.
Measured in turn (medians of RUNS; peak RSS of each tool's process tree, workers included):

- full physical backup: Continuity's physical backup against `pgbackrest backup --type=full`;
- restore of that backup's files into a new data directory (`pgbackrest restore` against Continuity's
  fetch + decrypt + unpack);
- WAL push: every segment a pgbench run writes, pushed one process per segment as archive_command would
  (`continuity` loading the engine and storing it, against `pgbackrest archive-push`);
- point-in-time recovery to a moment in the middle of that pgbench run: from nothing to a promoted
  cluster, and both restored clusters must hold the same pgbench_history rows.

    python bench/pgbackrest.py [--scale 50] [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import psycopg

from continuity.storage.catalog import Catalog
from continuity.storage.keys import Keyring
from continuity.postgres.cluster import find_tool
from continuity.restore.engine import restore_physical, scratch_cluster
from continuity.storage.locations import FileLocation
from continuity.waiting import poll
from table import print_table  # bench/table.py: the script's own directory is on sys.path
from tools import measured, median  # bench/tools.py: the child runner and its peak RSS

TOOLS = str(Path(__file__).with_name("tools.py"))


def sh(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[-4:])} exited {done.returncode}: {(done.stderr or done.stdout)[-1500:]}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scale", type=int, default=50)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    pgbackrest = shutil.which("pgbackrest")
    if pgbackrest is None:
        print_table([("pgBackRest", "not measured: pgbackrest is not installed (make bench installs it)")])
        return 0
    version = subprocess.run([pgbackrest, "version"], capture_output=True, text=True).stdout.strip()
    rows: list[tuple[str, str]] = [("pgBackRest", version)]
    with scratch_cluster(prefix="continuity-bench-pgbackrest-") as scratch:
        root, cluster = scratch.root, scratch.cluster
        user = cluster.user
        socket_dir, port = str(cluster.socket_dir), str(cluster.port)
        keyring = Keyring(keys={"bench": os.urandom(32)}, active="bench")
        keyring.save(root / "keyring.json")
        location = FileLocation(name="bench", region="local", path=root / "store")
        spool = user.make_dir(root / "spool", 0o700)
        repo = user.make_dir(root / "pgbackrest", 0o700)
        conf = user.write_file(root / "pgbackrest.conf", "\n".join([
            "[global]", f"repo1-path={repo}", "repo1-cipher-type=aes-256-cbc",
            f"repo1-cipher-pass={secrets.token_urlsafe(32)}",  # in the 0600 file, as pgBackRest users keep it
            "compress-type=zst", "compress-level=3", "process-max=2", "start-fast=y", "archive-check=n",
            "log-level-console=warn", "log-level-file=off", f"lock-path={repo}/lock", f"spool-path={repo}/spool",
            "[bench]", f"pg1-path={cluster.data_dir}", f"pg1-socket-path={socket_dir}", f"pg1-port={port}",
            "pg1-user=postgres", ""]))

        def pgbr(*argv: str) -> list[str]:
            return user.command([pgbackrest, f"--config={conf}", "--stanza=bench", *argv])

        # Segments are collected as they close; each tool then pushes them (timed below) from the same files.
        scratch.write_private_conf({"archive_mode": "on", "archive_command": f"'cp %p {spool}/%f'"})
        cluster.stop()
        cluster.start()
        started = time.perf_counter()
        subprocess.run(user.command([find_tool("pgbench"), "-i", "-q", "-s", str(args.scale), "-h", socket_dir,
                                     "-p", port, "-U", "postgres", "postgres"]), check=True, capture_output=True)
        size = int(cluster.psql("SELECT pg_database_size('postgres');").strip())
        rows.append(("database", f"pgbench scale {args.scale}, {size / 2**20:,.0f} MiB (built in "
                                 f"{time.perf_counter() - started:.0f} s)"))
        sh(pgbr("stanza-create"))
        me = [sys.executable, TOOLS, "--child"]
        timings: dict[str, list[float]] = {}
        peaks: dict[str, list[int]] = {}

        inside: dict[str, list[float]] = {}

        def run(label: str, argv: list[str]) -> None:
            seconds, peak, output = measured(argv)
            timings.setdefault(label, []).append(seconds)
            peaks.setdefault(label, []).append(peak)
            if label.endswith("continuity"):  # the child's own clock: after Python started and imported
                inside.setdefault(label, []).append(json.loads(output)["seconds"])

        for n in range(args.runs):
            run("backup continuity", [*me, "physical", str(root), socket_dir, port, f"physical-{n}"])
            run("backup pgbackrest", pgbr("backup", "--type=full"))
        for n in range(args.runs):
            run("restore continuity", [*me, "restore", str(root), socket_dir, port, f"physical-{n}"])
            target = user.make_dir(root / f"pgbr-restored-{n}", 0o700)
            run("restore pgbackrest", pgbr("restore", f"--pg1-path={target}", "--type=none"))
            subprocess.run(["rm", "-rf", str(target)], check=True)

        def push(segments: list[Path], *, timed: bool) -> None:
            for segment in segments:
                for label, argv in (("push continuity", [*me, "wal-push", str(root), socket_dir, port, str(segment)]),
                                    ("push pgbackrest", pgbr("archive-push", str(segment)))):
                    if timed:
                        run(label, argv)
                    else:
                        sh(argv)
                segment.unlink()

        def closed_segments() -> list[Path]:
            return sorted(p for p in spool.iterdir() if len(p.name) == 24 or p.name.endswith((".history", ".backup")))

        push(closed_segments(), timed=False)  # the backups' own WAL, so both archives are complete

        # A pgbench write load; the recovery target in its middle.
        load = subprocess.Popen(user.command([find_tool("pgbench"), "-n", "-c", "2", "-T", "24", "-h", socket_dir,
                                              "-p", port, "-U", "postgres", "postgres"]),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(12)
        now = datetime.now(timezone.utc)  # to the millisecond: pgBackRest's --target takes no finer
        target_time = now.replace(microsecond=now.microsecond // 1000 * 1000)
        load.wait()
        last = cluster.psql("SELECT pg_walfile_name(pg_switch_wal());").strip()
        if not poll(lambda: cluster.psql("SELECT last_archived_wal FROM pg_stat_archiver;").strip() >= last,
                    timeout=60):
            raise RuntimeError(f"segment {last} was not archived within 60 s")
        segments = closed_segments()
        batch = root / "batch"
        batch.mkdir()
        for segment in segments:
            shutil.copy(segment, batch / segment.name)
        push(segments, timed=True)
        rows.append(("WAL written by the pgbench run", f"{len(segments)} segments of 16 MiB"))
        # The same segments again, into a location of their own, by the pusher the sandbox runs (one process).
        batch_store = root / "batch-store"
        batch_store.mkdir()
        keyring.save(batch_store / "keyring.json")
        seconds, _, output = measured([*me, "wal-push-batch", str(batch_store), socket_dir, port, str(batch)])
        shipped = json.loads(output)["shipped"]
        rows.append(("WAL push, Continuity's pusher (one process, 2 at a time)",
                     f"{seconds / max(shipped, 1):6.2f} s per segment ({shipped} in {seconds:.2f} s, with its start)"))

        def until_promoted(conninfo: str) -> None:
            def promoted() -> bool:
                try:
                    with psycopg.connect(conninfo) as conn:
                        return not conn.execute("SELECT pg_is_in_recovery()").fetchone()[0]
                except psycopg.OperationalError:
                    return False
            if not poll(promoted, timeout=600):
                raise RuntimeError(f"{conninfo}: not promoted within 600 s")

        def history_rows(conninfo: str) -> int:
            with psycopg.connect(conninfo) as conn:
                return conn.execute("SELECT count(*) FROM pgbench_history").fetchone()[0]

        rows_at_target: dict[str, set[int]] = {"continuity": set(), "pgbackrest": set()}
        for _ in range(args.runs):
            with scratch_cluster(initdb=False, prefix="continuity-bench-pitr-") as restored:
                clock = time.perf_counter()
                restore_physical(catalog=Catalog({"bench": location}, keyring), location="bench", scratch=restored,
                                 target_time=target_time, report=lambda _m: None, timeout=600)
                timings.setdefault("pitr continuity", []).append(time.perf_counter() - clock)
                rows_at_target["continuity"].add(history_rows(restored.conninfo()))
            with scratch_cluster(initdb=False, prefix="continuity-bench-pitr-") as restored:
                clock = time.perf_counter()
                user.make_dir(restored.cluster.data_dir, 0o700)
                sh(pgbr("restore", f"--pg1-path={restored.cluster.data_dir}", "--type=time",
                        f"--target={target_time:%Y-%m-%d %H:%M:%S.%f}"[:-3] + "+00", "--target-action=promote"))
                restored.write_private_conf()
                restored.cluster.start(timeout=600)
                until_promoted(restored.conninfo())
                timings.setdefault("pitr pgbackrest", []).append(time.perf_counter() - clock)
                rows_at_target["pgbackrest"].add(history_rows(restored.conninfo()))

        def cell(label: str, *, rss: bool = True) -> str:
            values = timings[label]
            peak = f"  peak RSS {max(peaks[label]) / 1024:4.0f} MiB" if rss and label in peaks else ""
            own = f"; {median(inside[label]):.2f} s without Python's start" if label in inside else ""
            runs = values if len(values) <= 5 else [min(values), max(values)]
            return f"{median(values):6.2f} s{peak}  ({'runs' if len(values) <= 5 else 'range'}: " \
                   f"{', '.join(f'{t:.2f}' for t in runs)}{own})"

        def ratio(what: str) -> str:
            return f"{median(timings[what + ' continuity']) / median(timings[what + ' pgbackrest']):.2f}x pgBackRest's time"

        rows += [
            ("full backup, Continuity (zstd + AES-256-GCM, stored, checked)", cell("backup continuity")),
            ("full backup, pgbackrest backup --type=full", cell("backup pgbackrest")),
            ("full backup ratio", ratio("backup")),
            ("restore of the files, Continuity (fetch + decrypt + GNU tar)", cell("restore continuity")),
            ("restore of the files, pgbackrest restore", cell("restore pgbackrest")),
            ("restore ratio", ratio("restore")),
            ("WAL push per segment, Continuity (one process each)", cell("push continuity")),
            ("WAL push per segment, pgbackrest archive-push", cell("push pgbackrest")),
            ("WAL push ratio", ratio("push")),
            ("PITR to mid-load, Continuity (base + WAL staged + replay + promote)", cell("pitr continuity", rss=False)),
            ("PITR to mid-load, pgbackrest restore --type=time + replay + promote", cell("pitr pgbackrest", rss=False)),
            ("PITR ratio", ratio("pitr")),
            ("pgbench_history rows at the target", f"Continuity {sorted(rows_at_target['continuity'])}, "
                                                   f"pgBackRest {sorted(rows_at_target['pgbackrest'])}"),
        ]
    print(f"Continuity and pgBackRest side by side ({args.runs} runs each, medians; peak RSS of each tool's "
          f"process tree, sampled every 50 ms)")
    print_table(rows)
    same = rows_at_target["continuity"] == rows_at_target["pgbackrest"] and len(rows_at_target["continuity"]) == 1
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
