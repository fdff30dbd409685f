"""WAL shipping: from the archive spool to every location, one archive per file, never twice.

Each spool file (segment, `.history`, `.backup`, `.partial`) becomes backup `wal-<file name>`, so a
restore finds WAL by name. A spool file is removed only when every required location holds a
verified copy. A name already shipped with different contents is an alarm, never an overwrite.
One shipper works on a spool at a time (`spool_lock`), and data objects are created exclusively, so
two shippers never replace or delete each other's copies.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import os
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from continuity.archive import IntegrityError
from continuity.backup import create_backup, load_manifest, replicate_copy, verify_copy
from continuity.keys import Keyring, KeyringError
from continuity.manifest import Manifest, manifest_key_name
from continuity.postgres import ArchiverStatus
from continuity.storage import PreconditionFailed, StorageError, StorageLocation
from continuity.waiting import poll

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


SPOOL_LOCK_NAME = ".continuity-ship.lock"


class SpoolBusy(RuntimeError):
    """Another shipper held the spool for longer than this one would wait."""


@contextmanager
def spool_lock(spool_dir: Path, *, timeout: float = 600, report: Callable[[str], None] = log.info) -> Iterator[None]:
    """Hold the spool for one shipper at a time, whoever runs it (a DAG task, the CLI, a test).

    An flock on a file inside the spool: the kernel releases it when the holder dies, so a killed
    worker never leaves the spool locked.
    """
    fd = os.open(spool_dir / SPOOL_LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        def acquired() -> bool:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                return False

        if not acquired():
            report(f"another shipper is working on the spool {spool_dir}: waiting for it to finish")
            if not poll(acquired, timeout=timeout, interval=0.2):
                raise SpoolBusy(f"the spool {spool_dir} stayed locked by another shipper for {timeout:.0f}s; "
                                f"nothing was shipped by this one")
        yield
    finally:
        os.close(fd)


def ship_spool(
    spool_dir: Path,
    *,
    keyring: Keyring,
    locations: Mapping[str, StorageLocation],
    required: set[str],
    report: Callable[[str], None] = log.info,
    lock_timeout: float = 600,
) -> ShipResult:
    """Ship every completed spool file to every location; remove each once all required copies are verified."""
    with spool_lock(spool_dir, timeout=lock_timeout, report=report):
        result = ShipResult()
        for wal in spool_files(spool_dir):
            _ship_one(spool_dir / wal.name, wal, keyring=keyring, locations=locations, required=required,
                      result=result, report=report)
        return result


def _ship_one(path: Path, wal: WalFile, *, keyring: Keyring, locations: Mapping[str, StorageLocation],
              required: set[str], result: ShipResult, report: Callable[[str], None]) -> None:
    try:
        local_sha = _sha256(path)
    except FileNotFoundError:
        # Gone since the listing: only another shipper removes spool files, and only after every
        # required location verified its copy. Storage decides, not the missing file.
        manifest = _verified_everywhere(wal, keyring=keyring, locations=locations, required=required)
        if manifest is None:
            raise WalGap(f"WAL file {wal.name} left the spool but no required location holds a verified copy "
                         f"of it: it may be lost; check the archive") from None
        result.already_shipped.append(wal.name)
        _note_newest(result, wal, manifest)
        report(f"{wal.name}: shipped by another shipper meanwhile; every required location holds it")
        return
    key = manifest_key_name(wal.backup_id)
    holding = {name for name, loc in locations.items() if _holds(loc, key, required=name in required)}
    if holding:
        manifest = _check_same(wal, local_sha, holding, keyring=keyring, locations=locations, required=required)
        for name in sorted(set(locations) - holding):
            try:
                # deep: a WAL copy counts only once it is decrypted end to end in its new location.
                replicate_copy(manifest, locations[manifest_source(holding, required)], locations[name], keyring,
                               deep=True)
                result.replicated.append(f"{wal.name} -> {name}")
            except Exception as exc:
                if name in required:
                    raise
                report(f"optional location {name} did not take {wal.name} and is left out: {exc}")
        result.already_shipped.append(wal.name)
    else:
        try:
            with open(path, "rb") as handle:
                manifest = create_backup(
                    handle, kind="wal", keyring=keyring, locations=list(locations.values()), required=required,
                    backup_id=wal.backup_id, report=lambda _m: None,
                    source_info={"timeline": wal.timeline, "wal_file": wal.name},
                    details={"wal_kind": wal.kind, "segno": wal.segno},
                )
        except PreconditionFailed:
            # Another writer (a shipper on another machine) committed this name first: its copy is
            # checked like any other before the spool file may go.
            report(f"{wal.name}: another writer is storing it; waiting for its copies to be complete")
            if poll(lambda: _verified_everywhere(wal, keyring=keyring, locations=locations, required=required),
                    timeout=60, interval=1) is None:
                raise StorageError(f"WAL file {wal.name}: another writer began storing it and did not finish "
                                   f"within 60s; the spool file is kept and a retry checks again") from None
            return _ship_one(path, wal, keyring=keyring, locations=locations, required=required,
                             result=result, report=report)
        result.shipped.append(wal.name)
    if _verified_everywhere(wal, keyring=keyring, locations=locations, required=required) is None:
        raise WalGap(f"WAL file {wal.name}: not every required location ({', '.join(sorted(required))}) holds a "
                     f"verified copy; the spool file is kept")
    _note_newest(result, wal, manifest)
    path.unlink(missing_ok=True)
    result.removed.append(wal.name)
    report(f"{wal.name}: {'already in every location' if holding else 'shipped'}; removed from the spool")


def manifest_source(holding: set[str], required: set[str]) -> str:
    """Prefer a required location: it is the copy the policy vouches for."""
    return sorted(holding & required or holding)[0]


def _holds(location: StorageLocation, key: str, *, required: bool) -> bool:
    try:
        return location.head(key) is not None
    except StorageError:
        if required:
            raise
        return False  # an optional location that cannot answer is treated as not holding it


def _check_same(wal: WalFile, local_sha: str, holding: set[str], *, keyring: Keyring,
                locations: Mapping[str, StorageLocation], required: set[str]) -> Manifest:
    source_name = manifest_source(holding, required)
    manifest = load_manifest(locations[source_name], wal.backup_id, keyring)
    if manifest.plaintext_sha256 != local_sha:
        raise WalConflict(
            f"WAL file {wal.name} in the spool differs from the copy already shipped to location "
            f"{source_name} (spool sha256 {local_sha[:16]}…, shipped {manifest.plaintext_sha256[:16]}…): "
            f"two servers archived different WAL under one name (a split brain, or a reused archive)? "
            f"Nothing was overwritten; the spool file is kept for investigation"
        )
    return manifest


def _verified_everywhere(wal: WalFile, *, keyring: Keyring, locations: Mapping[str, StorageLocation],
                         required: set[str]) -> Manifest | None:
    """The manifest when every required location holds an authentic manifest and a data object matching it."""
    manifest = None
    for name in sorted(required):
        location = locations[name]
        try:
            manifest = load_manifest(location, wal.backup_id, keyring)
        except (StorageError, IntegrityError, KeyringError):
            return None
        if not verify_copy(manifest, location, keyring).ok:
            return None
    return manifest


def _note_newest(result: ShipResult, wal: WalFile, manifest: Manifest) -> None:
    if wal.kind != "history" and (result.newest is None or wal.name > result.newest.source.get("wal_file", "")):
        result.newest = manifest


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


class ArchiverFailing(RuntimeError):
    """pg_stat_archiver's newest event is a failure: the segment will not arrive without a fix."""


def segment_archived(status: ArchiverStatus, segment: str, *, node: str) -> tuple[bool, str]:
    """Whether the archiver has archived `segment` (or a later one), with the sentence to log;
    raises ArchiverFailing when it is failing instead."""
    last = status.last_archived_wal
    if last and last[:24] >= segment:
        return True, f"segment {segment} of {node} is closed and archived (last archived: {last})"
    if status.failing:
        raise ArchiverFailing(f"the archiver on {node} is failing (last failure on {status.last_failed_wal} at "
                              f"{status.last_failed_time}): segment {segment} is not archived; HINT: fix "
                              f"archive_command (see the server log), PostgreSQL retries it")
    return False, f"segment {segment} of {node} is not archived yet (last archived: {last or 'none'})"
