"""WAL shipping: from the archive spool to every location, one archive per file, never twice.

Each spool file (segment, `.history`, `.backup`, `.partial`) becomes backup `wal-<file name>`, so a
restore finds WAL by name. A spool file is removed only when every required location holds a
verified copy. A name already shipped with different contents is an alarm, never an overwrite.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from continuity.backup import create_backup, load_manifest, replicate_copy
from continuity.keys import Keyring
from continuity.manifest import Manifest, manifest_key_name
from continuity.storage import StorageLocation

log = logging.getLogger(__name__)

SEGMENT_SIZE = 16 * 2**20
_SEGMENT = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})$")
_HISTORY = re.compile(r"^([0-9A-F]{8})\.history$")
_BACKUP = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})\.[0-9A-F]{8}\.backup$")
_PARTIAL = re.compile(r"^([0-9A-F]{8})([0-9A-F]{8})([0-9A-F]{8})\.partial$")


class WalConflict(RuntimeError):
    """A WAL file name was already shipped with different contents: an alarm, never an overwrite."""


class WalGap(RuntimeError):
    """The shipped WAL sequence has a hole; the message names the first missing segment."""


@dataclass(frozen=True)
class WalFile:
    name: str
    kind: str  # segment | history | backup | partial
    timeline: int
    segno: int | None

    @property
    def backup_id(self) -> str:
        return f"wal-{self.name}"


def classify(name: str, *, segment_size: int = SEGMENT_SIZE) -> WalFile | None:
    per_log = 2**32 // segment_size
    for kind, pattern in (("segment", _SEGMENT), ("backup", _BACKUP), ("partial", _PARTIAL)):
        match = pattern.match(name)
        if match:
            tli, log_id, seg = (int(g, 16) for g in match.groups())
            return WalFile(name, kind, tli, log_id * per_log + seg)
    match = _HISTORY.match(name)
    if match:
        return WalFile(name, "history", int(match.group(1), 16), None)
    return None


def segment_name(timeline: int, segno: int, *, segment_size: int = SEGMENT_SIZE) -> str:
    per_log = 2**32 // segment_size
    return f"{timeline:08X}{segno // per_log:08X}{segno % per_log:08X}"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(2**20):
            digest.update(block)
    return digest.hexdigest()


@dataclass
class ShipResult:
    shipped: list[str] = field(default_factory=list)
    already_shipped: list[str] = field(default_factory=list)
    replicated: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    newest: Manifest | None = None


def spool_files(spool_dir: Path) -> list[WalFile]:
    files = []
    for path in spool_dir.iterdir():
        wal = classify(path.name) if path.is_file() else None
        if wal is not None:
            files.append(wal)
    # History files first (a restore needs them to follow timelines), then by name = WAL order.
    return sorted(files, key=lambda w: (w.kind != "history", w.name))


def ship_spool(
    spool_dir: Path,
    *,
    keyring: Keyring,
    locations: Mapping[str, StorageLocation],
    required: set[str],
    report: Callable[[str], None] = log.info,
) -> ShipResult:
    """Ship every completed spool file to every location; remove each once all required copies are verified."""
    result = ShipResult()
    for wal in spool_files(spool_dir):
        path = spool_dir / wal.name
        local_sha = _sha256(path)
        key = manifest_key_name(wal.backup_id)
        holding = {name for name, loc in locations.items() if loc.head(key) is not None}
        if holding:
            source_name = sorted(holding & required or holding)[0]
            manifest = load_manifest(locations[source_name], wal.backup_id, keyring)
            if manifest.plaintext_sha256 != local_sha:
                raise WalConflict(
                    f"WAL file {wal.name} in the spool differs from the copy already shipped to location "
                    f"{source_name} (spool sha256 {local_sha[:16]}…, shipped {manifest.plaintext_sha256[:16]}…): "
                    f"two servers archived different WAL under one name (a split brain, or a reused archive)? "
                    f"Nothing was overwritten; the spool file is kept for investigation"
                )
            missing = sorted(set(locations) - holding)
            for name in missing:
                try:
                    replicate_copy(manifest, locations[source_name], locations[name], keyring)
                    result.replicated.append(f"{wal.name} -> {name}")
                except Exception as exc:
                    if name in required:
                        raise
                    log.warning("optional location %s did not take %s: %s", name, wal.name, exc)
            result.already_shipped.append(wal.name)
        else:
            with open(path, "rb") as handle:
                manifest = create_backup(
                    handle, kind="wal", keyring=keyring, locations=list(locations.values()), required=required,
                    backup_id=wal.backup_id, report=lambda _m: None,
                    source_info={"timeline": wal.timeline, "wal_file": wal.name},
                    details={"wal_kind": wal.kind, "segno": wal.segno},
                )
            result.shipped.append(wal.name)
        if wal.kind != "history" and (result.newest is None or wal.name > result.newest.source.get("wal_file", "")):
            result.newest = manifest
        path.unlink()
        result.removed.append(wal.name)
        report(f"{wal.name}: {'already in every location' if holding else 'shipped'}; removed from the spool")
    return result


def find_gaps(names: Iterable[str], *, since: str | None = None) -> list[str]:
    """Missing segments per timeline, from `since` (same timeline) or the first present to the last."""
    by_timeline: dict[int, set[int]] = {}
    for name in names:
        wal = classify(name)
        if wal is not None and wal.kind == "segment" and wal.segno is not None:
            by_timeline.setdefault(wal.timeline, set()).add(wal.segno)
    start = classify(since) if since else None
    missing: list[str] = []
    for timeline, segnos in sorted(by_timeline.items()):
        first = min(segnos)
        if start is not None and start.timeline == timeline and start.segno is not None:
            first = min(first, start.segno)
        for segno in range(first, max(segnos) + 1):
            if segno not in segnos:
                missing.append(segment_name(timeline, segno))
    return missing


def archive_lag(newest_finished: datetime | None, now: datetime | None = None) -> float | None:
    if newest_finished is None:
        return None
    return ((now or datetime.now(timezone.utc)) - newest_finished).total_seconds()
