"""One phase of a backup of zeros in this process, then its peak RSS (VmHWM) as JSON.

    python bench/memory_probe.py backup|restore|verify ROOT SIZE

ROOT holds `key` (a base64 KEK) and the file location `store/`. Run one process per phase so
phases do not share a high-water mark. Zeros are the worst case for memory: one authenticated
chunk expands ~30,000-fold. Used by `make bench` and tests/perf/test_bounded_memory.py.
"""

from __future__ import annotations

import base64
import io
import json
import sys
from pathlib import Path

from continuity.backup.engine import create_backup, load_manifest, restore_copy, verify_copy
from continuity.storage.keys import Keyring
from continuity.storage.locations import FileLocation


class Zeros(io.RawIOBase):
    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:  # type: ignore[override]
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


class Count:
    size = 0

    def write(self, data: bytes) -> None:
        self.size += len(data)


def peak_kib() -> int:
    # VmHWM, not ru_maxrss: ru_maxrss survives exec and would report the parent's size at fork.
    status = Path("/proc/self/status").read_text().splitlines()
    return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))


def main(phase: str, root: Path, size: int) -> dict:
    keyring = Keyring(keys={"k": base64.b64decode((root / "key").read_text())}, active="k")
    location = FileLocation(name="local", region="local", path=root / "store")
    if phase == "backup":
        result: object = create_backup(io.BufferedReader(Zeros(size), 2**20), kind="adhoc", keyring=keyring,
                                       locations=[location], backup_id="zeros", report=lambda _m: None).stored_bytes
    elif phase == "restore":
        sink = Count()
        restore_copy(load_manifest(location, "zeros", keyring), location, keyring, sink, report=lambda _m: None)
        result = sink.size
    else:
        result = verify_copy(load_manifest(location, "zeros", keyring), location, keyring, deep=True).ok
    return {"result": result, "peak_kib": peak_kib()}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], Path(sys.argv[2]), int(sys.argv[3]))))
