"""Restore and deep verify hold bounded memory whatever the compression ratio (a chunk of zeros
expands ~30,000-fold). Peak RSS is read in a child process per phase, so phases do not mix."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

SIZE = 1024 * 2**20
BOUND_MIB = 150  # the bound; Python + cryptography + zstd start at about 40 MiB

PROBE = Path(__file__).resolve().parents[2] / "bench" / "memory_probe.py"


def _phase(phase: str, root: Path) -> dict:
    import json

    done = subprocess.run([sys.executable, str(PROBE), phase, str(root), str(SIZE)], capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def zeros_backup(tmp_path_factory) -> Path:
    import base64
    import os

    root = tmp_path_factory.mktemp("zeros")
    (root / "key").write_text(base64.b64encode(os.urandom(32)).decode())
    stored = _phase("backup", root)["result"]
    assert stored < SIZE / 1000, "zeros compress"
    return root


def test_restoring_a_gibibyte_of_zeros_stays_bounded(zeros_backup: Path) -> None:
    measured = _phase("restore", zeros_backup)
    assert measured["result"] == SIZE, "every byte restored"
    assert measured["peak_kib"] / 1024 < BOUND_MIB, f"restore peaked at {measured['peak_kib'] / 1024:.0f} MiB"


def test_deep_verify_of_a_gibibyte_of_zeros_stays_bounded(zeros_backup: Path) -> None:
    measured = _phase("verify", zeros_backup)
    assert measured["result"] is True
    assert measured["peak_kib"] / 1024 < BOUND_MIB, f"deep verify peaked at {measured['peak_kib'] / 1024:.0f} MiB"
