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
import http.server
import logging
import os
import re
import shutil
import socketserver
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from continuity.storage.archive import IntegrityError
from continuity.storage import degraded as degradation
from continuity.backup.engine import create_backup, load_manifest, replicate_copy, restore_to_path, verify_copy
from continuity.storage.keys import Keyring, KeyringError
from continuity.storage.manifest import WAL_ID_PREFIX, Manifest, manifest_key_name
from continuity.postgres.node import ArchiverStatus
from continuity.storage.locations import PreconditionFailed, StorageError, StorageLocation
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
        return f"{WAL_ID_PREFIX}{self.name}"


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
    # file name -> the required locations it is missing from (kept in the others, owed by the catch-up)
    degraded: dict[str, list[str]] = field(default_factory=dict)
    newest: Manifest | None = None

    def merge(self, other: ShipResult) -> None:
        self.degraded.update(other.degraded)
        self.shipped += other.shipped
        self.already_shipped += other.already_shipped
        self.replicated += other.replicated
        self.removed += other.removed
        if other.newest is not None and (self.newest is None or other.newest.source.get("wal_file", "") >
                                         self.newest.source.get("wal_file", "")):
            self.newest = other.newest


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
    workers: int = 1,
) -> ShipResult:
    """Ship every completed spool file to every location, oldest first (`workers` at once); remove each once
    all required copies are verified. The first failure is raised once the files in flight are done."""
    with spool_lock(spool_dir, timeout=lock_timeout, report=report):
        result = ShipResult()
        files = spool_files(spool_dir)
        if workers <= 1 or len(files) <= 1:
            for wal in files:
                _ship_one(spool_dir / wal.name, wal, keyring=keyring, locations=locations, required=required,
                          result=result, report=report)
            return result
        partial = [ShipResult() for _ in files]
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="continuity-wal-push") as pool:
            futures = [pool.submit(_ship_one, spool_dir / wal.name, wal, keyring=keyring, locations=locations,
                                   required=required, result=one, report=report) for wal, one in zip(files, partial)]
        for one in partial:
            result.merge(one)
        for future in futures:
            future.result()
        return result


def push_continuously(spool_dir: Path, *, keyring: Keyring, locations: Mapping[str, StorageLocation],
                      required: set[str], stop: threading.Event, interval: float = 1.0, retry: float = 5.0,
                      workers: int = 2, report: Callable[[str], None] = log.info) -> None:
    """The asynchronous half of archiving (archive_command queues into the spool, see archive-wal.sh): ships
    the spool as files arrive, oldest first, until `stop` is set. A failed pass leaves its files in the
    spool, is reported and retried after `retry` seconds; the spool's bound makes archive_command fail
    (PostgreSQL keeps the WAL and retries) before anything could be lost."""
    failing_since: float | None = None
    while not stop.is_set():
        try:
            if spool_files(spool_dir):
                result = ship_spool(spool_dir, keyring=keyring, locations=locations, required=required,
                                    report=lambda _m: None, lock_timeout=interval, workers=workers)
                missing = sorted({name for names in result.degraded.values() for name in names})
                if result.removed:
                    # Only where they went: a required location that did not take them is named by DEGRADED below.
                    report(f"pushed {len(result.removed)} WAL files ({result.removed[0]} .. {result.removed[-1]}) "
                           f"to {', '.join(n for n in sorted(locations) if n not in missing)}")
                if result.degraded:
                    report(f"DEGRADED: {len(result.degraded)} WAL files are missing from required "
                           f"{', '.join(missing)} (it does not answer); kept in the other locations, owed by the "
                           f"catch-up")
            if failing_since is not None:
                report(f"pushing works again after {time.monotonic() - failing_since:.0f}s")
                failing_since = None
        except SpoolBusy:
            pass  # the hourly shipper holds the spool: it ships the same files
        except WalConflict as exc:
            report(f"ALARM: {exc}")
            stop.wait(retry)
            continue
        except Exception as exc:
            if failing_since is None:
                failing_since = time.monotonic()
            queued = len(spool_files(spool_dir))
            report(f"pushing failed ({str(exc).splitlines()[0] if str(exc) else type(exc).__name__}); "
                   f"{queued} files wait in the spool; retrying in {retry:.0f}s")
            stop.wait(retry)
            continue
        stop.wait(interval)


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
    manifest, was_there = push_file(path, wal, keyring=keyring, locations=locations, required=required,
                                    result=result, report=report, local_sha=local_sha)
    _note_newest(result, wal, manifest)
    path.unlink(missing_ok=True)
    result.removed.append(wal.name)
    report(f"{wal.name}: {'already in every location' if was_there else 'shipped'}; removed from the spool")


def push_file(path: Path, wal: WalFile, *, keyring: Keyring, locations: Mapping[str, StorageLocation],
              required: set[str], result: ShipResult | None = None, report: Callable[[str], None] = log.info,
              local_sha: str | None = None) -> tuple[Manifest, bool]:
    """One WAL file into every location (an optional one that refuses is left out and caught up later),
    verified in every required one that answers; returns (its manifest, whether it was stored already). A
    required location that does not answer leaves the file degraded (stored in the others, marked, caught up
    later: continuity.storage.degraded), so a region's lost storage never stops archiving. The same name
    stored with other contents is a WalConflict, never an overwrite."""
    result = result if result is not None else ShipResult()
    local_sha = local_sha or _sha256(path)
    key = manifest_key_name(wal.backup_id)
    holding: set[str] = set()
    missing: dict[str, str] = {}  # required locations that did not answer: this file is degraded there
    for name, location in locations.items():
        if (why := degradation.given_up(location)) is not None:
            if name in required:
                missing[name] = why
            continue
        try:
            if location.head(key) is not None:
                holding.add(name)
        except StorageError as exc:
            degradation.note_failure(location, exc)
            if name in required:
                missing[name] = str(exc)  # an optional location that cannot answer is treated as not holding it
    if holding:
        manifest = _check_same(wal, local_sha, holding, keyring=keyring, locations=locations, required=required)
        took = set(holding)
        for name in sorted(set(locations) - holding - set(missing)):
            if degradation.given_up(locations[name]) is not None:
                continue
            try:
                # deep: a WAL copy counts only once it is decrypted end to end in its new location.
                replicate_copy(manifest, locations[manifest_source(holding, required)], locations[name], keyring,
                               deep=True)
                result.replicated.append(f"{wal.name} -> {name}")
                took.add(name)
            except Exception as exc:
                degradation.note_failure(locations[name], exc)
                if name in required and not degradation.degrades(exc):
                    raise
                if name in required:
                    missing[name] = str(exc)
                    continue
                report(f"optional location {name} did not take {wal.name} and is left out: {exc}")
        if missing:
            result.degraded[wal.name] = sorted(missing)
            if not took & required:
                raise StorageError(f"WAL file {wal.name}: no required location holds it or answers ("
                                   + "; ".join(f"{n}: {why}" for n, why in sorted(missing.items())) + ")")
            report(f"{wal.name}: DEGRADED: required {', '.join(sorted(missing))} did not answer; kept in "
                   f"{', '.join(sorted(took))} and caught up later")
            degradation.mark([locations[n] for n in sorted(took)], [
                degradation.DegradedCopy(backup_id=wal.backup_id, kind="wal", missing=name, reason=why[:500],
                                         since=degradation.now()) for name, why in missing.items()])
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
            # checked like any other before the file may go.
            report(f"{wal.name}: another writer is storing it; waiting for its copies to be complete")
            if poll(lambda: _verified_everywhere(wal, keyring=keyring, locations=locations, required=required),
                    timeout=60, interval=1) is None:
                raise StorageError(f"WAL file {wal.name}: another writer began storing it and did not finish "
                                   f"within 60s; the spool file is kept and a retry checks again") from None
            return push_file(path, wal, keyring=keyring, locations=locations, required=required, result=result,
                             report=report, local_sha=local_sha)
        if degraded := manifest.details.get("degraded"):
            result.degraded[wal.name] = sorted(degraded)
            report(f"{wal.name}: DEGRADED: required {', '.join(sorted(degraded))} did not take it; caught up later")
        result.shipped.append(wal.name)
    if _verified_everywhere(wal, keyring=keyring, locations=locations, required=required) is None:
        raise WalGap(f"WAL file {wal.name}: not every required location ({', '.join(sorted(required))}) holds a "
                     f"verified copy or is marked as owed one; the spool file is kept")
    return manifest, bool(holding)


class WalNotArchived(RuntimeError):
    """restore_command asked for a file no location holds (PostgreSQL asks past the end of the archive)."""


def fetch_file(name: str, destination: Path, *, keyring: Keyring, locations: Mapping[str, StorageLocation],
               report: Callable[[str], None] = log.info) -> tuple[str, int]:
    """restore_command: the archived WAL file `name` written to `destination` (a hidden name beside it,
    fsynced, renamed: PostgreSQL never reads half a segment) from the first location, in the given order,
    whose manifest is authentic and whose copy streams through intact; returns (location, bytes)."""
    wal = classify(name)
    if wal is None:
        raise ValueError(f"{name!r} is not a WAL file name (segment, .history, .backup or .partial)")
    candidates, problems = [], []
    manifest = None
    for location_name, location in locations.items():
        if (why := degradation.given_up(location)) is not None:
            problems.append(f"{location_name}: {why}")
            continue
        try:
            found = load_manifest(location, wal.backup_id, keyring)
        except StorageError as exc:
            degradation.note_failure(location, exc)
            if "no backup" not in str(exc):
                problems.append(f"{location_name}: {str(exc).splitlines()[0]}")
            continue
        except (IntegrityError, KeyringError) as exc:
            problems.append(f"{location_name}: {exc}")
            continue
        manifest = manifest or found
        candidates.append(location)
    if manifest is None:
        raise WalNotArchived(f"{name}: not in any location ({', '.join(locations)})"
                             + (f"; {'; '.join(problems)}" if problems else ""))
    return restore_to_path(manifest, candidates, keyring, destination, report=lambda _m: None)


class _UnixHTTPServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    scratch: Path | None = None

    def server_close(self) -> None:
        super().server_close()
        if self.scratch is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)


def serve_fetches(socket_path: Path, *, keyring: Keyring, locations: Mapping[str, StorageLocation],
                  owner: tuple[int, int] | None = None, report: Callable[[str], None] = log.info,
                  ) -> socketserver.BaseServer:
    """The fetching half of the WAL service, for restore_command (include/scripts/fetch-wal.sh): `GET
    /wal/<name>` answers the archived file, decrypted and verified (fetch_file), 404 when no location holds
    it. A UNIX socket only the database's OS user (`owner`) may open: that user gets WAL, never the keys.
    Returns the server, serving from a thread of its own; `shutdown()` stops it."""
    scratch = Path(tempfile.mkdtemp(prefix="continuity-wal-fetch-"))  # 0700: plaintext WAL between fetch and send

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802 (http.server's name)
            name = self.path.removeprefix("/wal/")
            if not self.path.startswith("/wal/") or classify(name) is None:
                self.send_error(400, f"not a WAL file name: {name!r}")
                return
            target = scratch / f"{name}.{threading.get_ident()}"
            try:
                location, size = fetch_file(name, target, keyring=keyring, locations=locations,
                                            report=lambda _m: None)
            except WalNotArchived:
                self.send_error(404, f"{name} is not archived")
                return
            except Exception as exc:  # integrity, storage: restore_command fails, recovery streams instead
                report(f"fetching {name} failed: {exc}")
                self.send_error(500, f"fetching {name} failed")
                return
            try:
                self.send_response(200)
                self.send_header("Content-Length", str(size))
                self.end_headers()
                with open(target, "rb") as handle:
                    while block := handle.read(1024 * 1024):
                        self.wfile.write(block)
                report(f"served {name} ({size:,} bytes from {location})")
            finally:
                target.unlink(missing_ok=True)

        def log_message(self, format: str, *args: object) -> None:  # noqa: A002
            pass  # each fetch is reported above, once

    socket_path.unlink(missing_ok=True)
    previous = os.umask(0o177)  # the socket is 0600 from its creation: no one else can connect in between
    try:
        server = _UnixHTTPServer(str(socket_path), Handler)
    finally:
        os.umask(previous)
    server.scratch = scratch
    if owner is not None:
        os.chown(socket_path, *owner)  # then it is the database's OS user's alone
    thread = threading.Thread(target=server.serve_forever, name="continuity-wal-fetch", daemon=True)
    thread.start()
    return server


def manifest_source(holding: set[str], required: set[str]) -> str:
    """Prefer a required location: it is the copy the policy vouches for."""
    return sorted(holding & required or holding)[0]


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
    """The manifest when every required location holds an authentic manifest and a data object matching it,
    or (a degraded file) is marked as owed it by a location that holds it; at least one must hold it."""
    manifest = None
    for name in sorted(required):
        location = locations[name]
        verified = False
        if degradation.given_up(location) is None:
            try:
                found = load_manifest(location, wal.backup_id, keyring)
                verified = verify_copy(found, location, keyring).ok
            except (StorageError, IntegrityError, KeyringError) as exc:
                degradation.note_failure(location, exc)
            else:
                manifest = found if verified else manifest
        if not verified and not degradation.marked_in(
                [loc for other, loc in locations.items() if other != name], name, wal.backup_id):
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
