"""Catalog benchmark (`make bench`): finding backups among many WAL manifests on the S3 endpoint.

WAL pushed segment by segment makes one backup per segment (30 days at one a minute: about 43,000). On
moto's server over HTTP, N small WAL backups and one base backup in a location; then, timed: the base
backup found (what a restore plans first), every WAL manifest listed, and every manifest read the way
the catalog did before it told WAL keys apart (all of them, then filtered).

    python bench/catalog.py [--wal 2000]
"""

from __future__ import annotations

import argparse
import io
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import boto3

from continuity.backup import create_backup
from continuity.catalog import Catalog
from continuity.keys import Keyring
from continuity.localcluster import free_port, wait_for_port
from continuity.storage import S3Location
from continuity.wal import segment_name
from table import print_table  # bench/table.py: the script's own directory is on sys.path


def main(count: int) -> int:
    port = free_port()
    moto = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    rows: list[tuple[str, str]] = []
    try:
        wait_for_port(port, what="moto")
        client = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{port}", region_name="us-east-1",
                              aws_access_key_id="bench", aws_secret_access_key="bench")
        client.create_bucket(Bucket="bench-catalog")
        location = S3Location(name="dr", region="us-east-1", client=client, bucket="bench-catalog")
        keyring = Keyring(keys={"bench": os.urandom(32)}, active="bench")
        started = time.perf_counter()
        create_backup(io.BytesIO(b"base"), kind="physical", keyring=keyring, locations=[location],
                      report=lambda _m: None)

        def one(segno: int) -> None:
            name = segment_name(1, segno)
            create_backup(io.BytesIO(name.encode()), kind="wal", backup_id=f"wal-{name}", keyring=keyring,
                          locations=[location], source_info={"timeline": 1, "wal_file": name},
                          report=lambda _m: None)

        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(one, range(1, count + 1)))
        rows.append(("setup", f"{count:,} WAL backups and 1 base backup in {time.perf_counter() - started:.0f} s"))

        def timed(label: str, run) -> None:
            clock = time.perf_counter()
            found = run()
            rows.append((label, f"{time.perf_counter() - clock:6.2f} s  ({len(found):,} manifests)"))

        catalog = Catalog({"dr": location}, keyring)
        timed("the base backup (list kind=physical)", lambda: catalog.list(kind="physical", location="dr"))
        timed("every WAL manifest (list kind=wal)", lambda: catalog.list(kind="wal", location="dr"))
        timed("before: every manifest read, then filtered to physical",
              lambda: [m for m in catalog.manifests_in("dr") if m.kind == "physical"])
        rows.append(("not measured", "50,000 manifests (creating them takes about 9 minutes on moto here); listing "
                                     "every WAL manifest quickly needs an index"))
    finally:
        moto.terminate()
        try:
            moto.wait(timeout=10)
        except subprocess.TimeoutExpired:
            moto.kill()
    print_table(rows)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wal", type=int, default=2000)
    sys.exit(main(parser.parse_args().wal))
