"""Backup pipeline benchmark: throughput against `zstd -3` alone, and peak RSS by input size.

    .venv/bin/python bench/pipeline.py [--size-mib 1024]

Input is realistic text (the sample application's rows as CSV, with varying values), written
once to a temporary file. Peak RSS is measured in a child process per size, so one run does
not inflate the next.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from continuity.storage.archive import write_archive
from continuity.backup.engine import create_backup
from continuity.storage.keys import Keyring
from continuity.storage.locations import FileLocation

BLOCK = 4 * 2**20


def make_input(path: Path, size: int) -> None:
    rng = random.Random(1)
    labels = ["pedestrian", "cyclist", "car", "truck", "traffic_light", "stop_sign", "bus", "dog"]
    models = ["yolov8n", "yolov8m", "detr-r50", "rtdetr-l"]
    with open(path, "wb") as handle:
        written = 0
        row = 0
        while written < size:
            lines = []
            for _ in range(20_000):
                row += 1
                lines.append(f"{row},{rng.randint(1, 50_000)},{rng.choice(models)},{rng.randint(0, 50_000)},"
                             f"{rng.choice(labels)},{rng.random():.4f},2026-{rng.randint(1, 12):02d}-"
                             f"{rng.randint(1, 28):02d} {rng.randint(0, 23):02d}:{rng.randint(0, 59):02d}:"
                             f"{rng.randint(0, 59):02d}+00\n")
            block = "".join(lines).encode()[: size - written]
            handle.write(block)
            written += len(block)


class Repeat(io.RawIOBase):
    """The input file read `times` times over, as one stream (a 2 GiB input without a 2 GiB file)."""

    def __init__(self, path: Path, times: int, limit: int) -> None:
        self.path, self.times, self.left = path, times, limit
        self.handle = open(path, "rb")

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        if self.left <= 0:
            return 0
        data = self.handle.read(min(len(buffer), self.left))
        if not data:
            self.times -= 1
            if self.times <= 0:
                return 0
            self.handle.seek(0)
            data = self.handle.read(min(len(buffer), self.left))
        buffer[: len(data)] = data
        self.left -= len(data)
        return len(data)


class Discard:
    def write(self, data: bytes) -> None:
        pass


def child(path: str, size: int, target: str) -> None:
    """Run one full backup (to a file location) of `size` bytes; print peak RSS in KiB."""
    keyring = Keyring(keys={"bench": os.urandom(32)}, active="bench")
    location = FileLocation(name="bench", region="local", path=Path(target))
    times = max(1, -(-size // os.path.getsize(path)))
    create_backup(io.BufferedReader(Repeat(Path(path), times, size), BLOCK), kind="adhoc", keyring=keyring,
                  locations=[location], report=lambda _m: None)
    # VmHWM, not ru_maxrss: ru_maxrss survives exec and would report the parent's size at fork.
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            print(int(line.split()[1]))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--child", nargs=3)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), args.child[2])
        return 0

    workdir = Path(tempfile.mkdtemp(prefix="continuity-bench-"))
    try:
        size = args.size_mib * 2**20
        source = workdir / "input.csv"
        make_input(source, size)
        subprocess.run(["cat", str(source)], stdout=subprocess.DEVNULL, check=True)  # warm the page cache

        start = time.perf_counter()
        subprocess.run(["zstd", "-3", "-q", "-f", "-o", str(workdir / "input.zst"), str(source)], check=True)
        zstd_seconds = time.perf_counter() - start
        zstd_size = (workdir / "input.zst").stat().st_size
        (workdir / "input.zst").unlink()

        keyring = Keyring(keys={"bench": os.urandom(32)}, active="bench")
        data_key, wrapped = keyring.new_data_key("bench")
        with open(source, "rb") as handle:
            start = time.perf_counter()
            result = write_archive(handle, Discard(), archive_id="bench", data_key=data_key, wrapped_key=wrapped)
            pipeline_seconds = time.perf_counter() - start

        mib = size / 2**20
        print(f"input: {mib:,.0f} MiB of CSV rows; zstd -3 output {zstd_size / 2**20:,.1f} MiB, "
              f"archive {result.stored_bytes / 2**20:,.1f} MiB")
        print(f"zstd -3 alone:                    {mib / zstd_seconds:8.1f} MiB/s ({zstd_seconds:.2f} s)")
        print(f"pipeline (zstd+AES-GCM+2xSHA256): {mib / pipeline_seconds:8.1f} MiB/s ({pipeline_seconds:.2f} s)")
        print(f"ratio pipeline / zstd -3:         {zstd_seconds / pipeline_seconds:8.2f}x (aim >= 0.8x)")

        for label, child_size in [("256 MiB", 256 * 2**20), ("2 GiB", 2 * 2**30)]:
            target = workdir / f"store-{child_size}"
            out = subprocess.run([sys.executable, __file__, "--child", str(source), str(child_size), str(target)],
                                 capture_output=True, text=True, check=True)
            rss_mib = int(out.stdout.strip().splitlines()[-1]) / 1024
            print(f"peak RSS, full backup of {label:8}: {rss_mib:8.1f} MiB (aim < 150 MiB; must not grow with size)")
            shutil.rmtree(target, ignore_errors=True)

        # Worst case for restore memory: 1 GiB of zeros (a 1 MiB chunk of zstd expands ~30,000-fold).
        zeros = workdir / "zeros"
        zeros.mkdir()
        (zeros / "key").write_text(base64.b64encode(os.urandom(32)).decode())
        probe = Path(__file__).with_name("memory_probe.py")
        for phase in ("backup", "restore", "verify"):
            out = subprocess.run([sys.executable, str(probe), phase, str(zeros), str(2**30)],
                                 capture_output=True, text=True, check=True)
            rss_mib = json.loads(out.stdout.strip().splitlines()[-1])["peak_kib"] / 1024
            print(f"peak RSS, 1 GiB of zeros, {phase:8}: {rss_mib:8.1f} MiB (aim < 150 MiB)")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
