"""Catalog benchmark (`make bench`): planning a restore among many WAL manifests on the S3 endpoint.

WAL pushed segment by segment makes one backup per segment (30 days at one a minute: about 43,000). On
moto's server over HTTP, one real base backup and N WAL manifests in a location (sealed like a push's,
written in parallel; their data objects are left out, a listing never reads them); then, timed: the
base backup found, every WAL manifest listed through the WAL index, a point-in-time restore planned
(base backup, recovery window), the index built and refreshed, and (at the smaller sizes) every WAL
manifest read one by one as the catalog did without an index.

    python bench/catalog.py [--wal 2000 50000]
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

from continuity.backup.engine import create_backup
from continuity.storage.catalog import Catalog
from continuity.storage.keys import Keyring
from continuity.postgres.cluster import free_port, wait_for_port
from continuity.storage.manifest import Manifest, manifest_key_name, seal
from continuity.restore.engine import choose_base_backup
from continuity.storage.locations import S3Location
from continuity.backup.wal import segment_name
from continuity.storage.walindex import refresh_index
from table import print_table  # bench/table.py: the script's own directory is on sys.path

READ_EACH_UP_TO = 5_000  # beyond this, reading every manifest one by one takes minutes: not run


def _wal_manifest(template: Manifest, keyring: Keyring, segno: int) -> Manifest:
    name = segment_name(1, segno)
    backup_id = f"wal-{name}"
    data_key, wrapped = keyring.new_data_key(archive_id=backup_id)
    return seal(template.model_copy(update={"backup_id": backup_id, "key": wrapped.to_dict(), "locations": {},
                                            "source": {"timeline": 1, "wal_file": name}}), data_key)


def one_size(count: int) -> list[tuple[str, str]]:
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
        base = create_backup(io.BytesIO(b"base"), kind="physical", keyring=keyring, locations=[location],
                             source_info={"start_wal_file": segment_name(1, 2), "stop_lsn": "0/3000000"},
                             report=lambda _m: None)
        template = create_backup(io.BytesIO(b"wal"), kind="wal", backup_id=f"wal-{segment_name(1, 1)}",
                                 keyring=keyring, locations=[location], report=lambda _m: None,
                                 source_info={"timeline": 1, "wal_file": segment_name(1, 1)})

        def put(segno: int) -> None:
            manifest = _wal_manifest(template, keyring, segno)
            location.put_bytes(manifest_key_name(manifest.backup_id), manifest.to_json())

        with ThreadPoolExecutor(max_workers=8) as pool:
            list(pool.map(put, range(2, count + 1)))
        rows.append((f"{count:,}: setup", f"{count:,} WAL manifests and 1 base backup in "
                                           f"{time.perf_counter() - started:.0f} s"))

        def timed(label: str, run) -> None:
            clock = time.perf_counter()
            found = run()
            size = f"{len(found):,} manifests" if isinstance(found, list) else str(found)
            rows.append((f"{count:,}: {label}", f"{time.perf_counter() - clock:6.2f} s  ({size})"))

        def catalog() -> Catalog:
            return Catalog({"dr": location}, keyring)

        timed("the base backup (list kind=physical)", lambda: catalog().list(kind="physical", location="dr"))
        if count <= READ_EACH_UP_TO:
            timed("every WAL manifest, no index (one GET each)", lambda: catalog().list(kind="wal", location="dr"))
        else:
            rows.append((f"{count:,}: every WAL manifest, no index", "not measured (one GET each: minutes here)"))
        timed("index built (the first refresh reads every manifest)", lambda: refresh_index(
            location, keyring, report=lambda _m: None).packs_written)
        for segno in range(count + 1, count + 61):  # the hour's pushes since
            put(segno)
        timed("every WAL manifest, through the index", lambda: catalog().list(kind="wal", location="dr"))
        timed("a restore planned (base backup, recovery window)",
              lambda: choose_base_backup(catalog(), "dr", template.finished_at).backup_id == base.backup_id)
        timed("every backup of every kind (backups list)", lambda: catalog().list(location="dr"))
        timed("hourly refresh (60 new manifests)", lambda: refresh_index(location, keyring,
                                                                        report=lambda _m: None).added)
    finally:
        moto.terminate()
        try:
            moto.wait(timeout=10)
        except subprocess.TimeoutExpired:
            moto.kill()
    return rows


def main(sizes: list[int]) -> int:
    rows: list[tuple[str, str]] = []
    for count in sizes:
        rows.extend(one_size(count))
    print_table(rows)
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--wal", type=int, nargs="+", default=[2000, 50000])
    sys.exit(main(parser.parse_args().wal))
