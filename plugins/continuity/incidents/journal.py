"""The local journal: incident records (and reported causes) that could not reach every storage location, kept on
this machine's disk until they do.

Incidents are kept in storage so any region shows them; but the disaster that opens one may be the loss of that
storage (the primary region's bucket, or every bucket for a while). Then the record goes where it can, the rest
waits here, and the alert still leaves: people are told first, the record catches up (`catch_up`) when a location
answers again. One entry per key holds the newest bytes written under it and the locations still missing them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from continuity.storage.locations import StorageLocation

log = logging.getLogger(__name__)

JOURNAL_ENV_VAR = "CONTINUITY_INCIDENT_JOURNAL"


def default_journal_dir() -> Path:
    """$CONTINUITY_INCIDENT_JOURNAL, else `continuity-incident-journal` in $AIRFLOW_HOME (the scheduler, the
    triggerer and the workers of one machine share it; a worker elsewhere keeps its own until catch-up)."""
    configured = os.environ.get(JOURNAL_ENV_VAR)
    if configured:
        return Path(configured)
    return Path(os.environ.get("AIRFLOW_HOME") or Path.home() / "airflow") / "continuity-incident-journal"


@dataclass(frozen=True)
class JournalEntry:
    key: str
    data: bytes
    missing: tuple[str, ...]  # the locations that do not hold these bytes yet


class LocalJournal:
    """Entries in a directory, one file each, named by a hash of the key (keys hold slashes)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def _path(self, key: str) -> Path:
        return self.directory / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.json"

    def keep(self, key: str, data: bytes, missing: Sequence[str]) -> Path:
        """Hold `data` under `key` until every location in `missing` has it."""
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self._path(key)
        record = {"key": key, "missing": sorted(set(missing)), "data": base64.b64encode(data).decode()}
        # Written aside and renamed: a crash leaves the previous entry or this one, never half of one.
        temporary = path.with_suffix(f".tmp-{os.getpid()}")
        temporary.write_text(json.dumps(record))
        temporary.replace(path)
        return path

    def get(self, key: str) -> bytes | None:
        entry = self._read(self._path(key))
        return entry.data if entry is not None and entry.key == key else None

    def discard(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def entries(self, prefix: str = "") -> list[JournalEntry]:
        if not self.directory.is_dir():
            return []
        found = [self._read(path) for path in sorted(self.directory.glob("*.json"))]
        return sorted((e for e in found if e is not None and e.key.startswith(prefix)), key=lambda e: e.key)

    @staticmethod
    def _read(path: Path) -> JournalEntry | None:
        try:
            record = json.loads(path.read_text())
            return JournalEntry(key=record["key"], data=base64.b64decode(record["data"]),
                                missing=tuple(record["missing"]))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError) as exc:  # a damaged entry must not hide the others
            log.warning("incident journal: %s is unreadable (%s); left for a person to look at", path, exc)
            return None

    def catch_up(self, locations: Sequence[StorageLocation]) -> list[str]:
        """Write every entry to the locations that miss it and answer now; an entry every location holds is
        removed. Returns `location:key` for each copy written."""
        by_name = {location.name: location for location in locations}
        written: list[str] = []
        for entry in self.entries():
            still_missing = []
            for name in entry.missing:
                location = by_name.get(name)
                if location is None:
                    continue  # no longer a location of the policy: nothing to catch up there
                try:
                    location.put_bytes(entry.key, entry.data)
                    written.append(f"{name}:{entry.key}")
                except Exception as exc:  # still unreachable: the next catch-up tries again
                    log.info("incident journal: %s still misses %s (%s)", name, entry.key,
                             str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                    still_missing.append(name)
            current = self.get(entry.key)
            if current is not None and current != entry.data:
                continue  # written again meanwhile: that newer entry is caught up on its own
            if still_missing:
                self.keep(entry.key, entry.data, still_missing)
            else:
                self.discard(entry.key)
        if written:
            log.info("incident journal: caught up %d record(s): %s", len(written), ", ".join(written))
        return written
