"""A rebuild from what a location held at an instant (the drill's disaster instant, #31 item 4): base backups and
WAL stored after it are not used, and a location that held no base backup then is refused, saying so."""

from __future__ import annotations

import io
import os
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from continuity.backup.engine import create_backup
from continuity.restore.engine import RestoreError, choose_base_backup
from continuity.storage.catalog import Catalog
from continuity.storage.keys import Keyring
from continuity.storage.locations import FileLocation


def _base(catalog: Catalog, backup_id: str) -> None:
    create_backup(io.BytesIO(b"base backup"), kind="physical", keyring=catalog.keyring,
                  locations=[catalog.locations["dr"]], backup_id=backup_id,
                  source_info={"start_wal_file": "000000010000000000000002", "stop_lsn": "0/3000000"})


def test_only_base_backups_stored_by_the_instant_are_chosen(tmp_path: Path) -> None:
    catalog = Catalog({"dr": FileLocation(name="dr", region="us-west-2", path=tmp_path)},
                      Keyring(keys={"k1": os.urandom(32)}, active="k1"))
    before_any = datetime.now(timezone.utc)
    time.sleep(0.01)
    _base(catalog, "physical-1")
    between = datetime.now(timezone.utc)
    time.sleep(0.01)
    _base(catalog, "physical-2")
    assert choose_base_backup(catalog, "dr", None).backup_id == "physical-2"
    assert choose_base_backup(catalog, "dr", None, stored_by=between).backup_id == "physical-1"
    with pytest.raises(RestoreError, match=r"location dr held no base backup at .*: nothing to rebuild from"):
        choose_base_backup(catalog, "dr", None, stored_by=before_any)
