"""The backup engine: one pass from a source stream to an archive in every location, then verify.

`create_backup` streams the source through the archive format (zstd + AES-256-GCM) into a writer
per location at once. The backup exists only when every required location that answers committed it (at
least one; a required location that fails is recorded as `degraded` and caught up later, see
continuity.storage.degraded) and its size and SHA-256 are proven: by the storage's own checksum checks
as it was written (S3 additional checksums of every part; a file hashed as written and fsynced), else by
reading it back. The manifest is written last. On any failure every written object is removed, so no
location ever shows a half backup under its final name.
"""

from __future__ import annotations

import logging
import os
import platform
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any, BinaryIO, Literal

from continuity.storage import degraded as degradation
from continuity.storage import walindex
from continuity.storage.archive import DEFAULT_CHUNK_SIZE, ArchiveHeader, IntegrityError, read_archive, write_archive
from continuity.storage.keys import Keyring
from continuity.storage.manifest import (WAL_ID_PREFIX, LocationCopy, Manifest, data_key_name, manifest_key_name, open_manifest,
                                 seal)
from continuity.storage.locations import (ObjectWriter, PreconditionFailed, StorageError, StorageLocation,
                                          read_back_sha256)

log = logging.getLogger(__name__)


def new_backup_id(kind: str, now: datetime | None = None) -> str:
    now = now or datetime.now(timezone.utc)
    return f"{kind}-{now:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def tool_versions(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for package in ("continuity", "zstandard", "cryptography"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            pass
    return versions | dict(extra or {})


class Progress:
    """Calls `report(message)` at most every `interval` seconds with bytes done and throughput."""

    def __init__(self, report: Callable[[str], None], *, what: str, interval: float = 5.0) -> None:
        self.report = report
        self.what = what
        self.interval = interval
        self.started = time.monotonic()
        self.last = self.started

    def __call__(self, done: int) -> None:
        now = time.monotonic()
        if now - self.last >= self.interval:
            self.last = now
            rate = done / max(now - self.started, 1e-9) / 2**20
            self.report(f"{self.what}: {done / 2**20:,.1f} MiB read, {rate:,.1f} MiB/s")


class _FanOut:
    """Writes each block to every location; a location that fails is handed to `give_up` (which raises when the
    backup must fail) and dropped."""

    def __init__(self, writers: dict[str, ObjectWriter], give_up: Callable[[str, StorageError], None]) -> None:
        self.writers = writers
        self.give_up = give_up

    def write(self, data: bytes) -> None:
        for name, writer in list(self.writers.items()):
            try:
                writer.write(data)
            except StorageError as exc:
                self.give_up(name, exc)
                writer.abort()
                del self.writers[name]


def create_backup(
    source: BinaryIO,
    *,
    kind: str,
    keyring: Keyring,
    locations: Sequence[StorageLocation],
    required: set[str] | None = None,
    backup_id: str | None = None,
    label: str | None = None,
    source_info: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
    details: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None,
    depends_on: Sequence[str] = (),
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    compression: Literal["zstd", "none"] = "zstd",
    versions: Mapping[str, str] | None = None,
    report: Callable[[str], None] | None = None,
) -> Manifest:
    """Archive `source` into every location and return the sealed manifest (`compression` "none" for a
    source its producer compressed).

    `required` names the locations that must hold the backup (default: all); `details` and
    `source_info` may be callables evaluated (in that order) after the source is exhausted, e.g. a
    tool's exit status, counts, or the stop LSN it reported.
    """
    if not locations:
        raise ValueError("a backup needs at least one location")
    required = {loc.name for loc in locations} if required is None else set(required)
    unknown = required - {loc.name for loc in locations}
    if unknown:
        raise ValueError(f"required locations {sorted(unknown)} are not among the locations given")
    backup_id = backup_id or new_backup_id(kind)
    if (kind == "wal") != backup_id.startswith(WAL_ID_PREFIX):
        raise ValueError(f"backup id {backup_id!r} of kind {kind}: WAL backups, and only they, have ids starting "
                         f"with {WAL_ID_PREFIX!r} (the catalog finds each kind by that prefix)")
    report = report or log.info
    data_key_object = data_key_name(kind, backup_id)
    left_out: dict[str, str] = {}  # optional locations this backup could not reach, with why
    # Required locations that did not take it while others did ("required while reachable", see
    # continuity.storage.degraded): the backup is kept, marked, and caught up when they answer again.
    degraded: dict[str, str] = {}
    by_name = {loc.name: loc for loc in locations}

    def give_up(name: str, exc: StorageError | None, reason: str) -> None:
        """An optional location is left out; a required one degrades the backup, unless the failure is a
        conflict with another writer (raised: the caller decides) or no required location is left."""
        if exc is not None:
            degradation.note_failure(by_name[name], exc)
        if name not in required:
            leave_out(name, reason)
            return
        if exc is not None and not degradation.degrades(exc):
            raise exc
        log.warning("required location %s did not take backup %s: %s; the backup is kept in the locations that "
                    "answer and caught up into %s once it answers again", name, backup_id, reason, name)
        degraded[name] = reason
        if required <= set(degraded):
            raise StorageError(f"backup {backup_id}: no required location took it ("
                               + "; ".join(f"{n}: {why}" for n, why in sorted(degraded.items())) + ")") from exc

    def leave_out(name: str, reason: str) -> None:
        log.warning("optional location %s is left out of backup %s: %s", name, backup_id, reason)
        left_out[name] = reason

    reachable: list[StorageLocation] = []
    for location in locations:
        if (why := degradation.given_up(location)) is not None:
            give_up(location.name, None, why)
            continue
        try:
            exists = location.head(manifest_key_name(backup_id)) is not None
        except StorageError as exc:
            give_up(location.name, exc, str(exc))
            continue
        if exists:
            raise StorageError(f"{location.describe(manifest_key_name(backup_id))}: backup {backup_id} already exists")
        reachable.append(location)

    data_key, wrapped = keyring.new_data_key(backup_id)
    started = datetime.now(timezone.utc)
    writers: dict[str, ObjectWriter] = {}
    committed: list[StorageLocation] = []
    checksums: dict[str, str] = {}
    vouched: dict[str, str | None] = {}  # the SHA-256 each storage checked as it was written
    try:
        for location in reachable:
            try:
                # exclusive: a concurrent writer of the same backup id (two WAL shippers) can never
                # replace the object the other one committed.
                writers[location.name] = location.open_writer(data_key_object, metadata={"backup-id": backup_id},
                                                              exclusive=True)
            except StorageError as exc:
                give_up(location.name, exc, str(exc))
        fan_out = _FanOut(writers, lambda name, exc: give_up(name, exc, str(exc)))
        result = write_archive(source, fan_out, archive_id=backup_id, data_key=data_key, wrapped_key=wrapped,
                               chunk_size=chunk_size, compression=compression,
                               progress=Progress(report, what=f"backup {backup_id}"))
        for name, writer in list(fan_out.writers.items()):
            try:
                checksums[name] = writer.commit()
                vouched[name] = getattr(writer, "stored_sha256", None)
            except StorageError as exc:
                give_up(name, exc, str(exc))
                del fan_out.writers[name]
                continue
            committed.append(by_name[name])
        # Every copy is proven before the backup is declared complete: by the SHA-256 the storage checked
        # as it was written, or byte for byte by reading it back (a read-back doubled the transfer).
        copies: dict[str, LocationCopy] = {}
        proofs: set[str] = set()
        for location in list(committed):
            try:
                info = location.head(data_key_object)
                if vouched.get(location.name):
                    size, digest = (info.size if info else -1), vouched[location.name] or ""
                    how = "ok: SHA-256 checked by the storage as written"
                else:
                    size, digest = read_back_sha256(location, data_key_object)
                    how = "ok: read-back after upload"
            except StorageError as exc:
                give_up(location.name, exc, f"checking the stored copy failed: {exc}")
                _quietly(location.delete, data_key_object, if_checksum=checksums[location.name])
                committed.remove(location)
                continue
            if size != result.stored_bytes or digest != result.stored_sha256 or info is None \
                    or info.checksum != checksums[location.name]:
                message = (f"{location.describe(data_key_object)}: the stored copy differs: stored {size} bytes "
                           f"sha256 {digest[:16]}…, sent {result.stored_bytes} bytes sha256 {result.stored_sha256[:16]}…")
                if location.name in required:
                    raise IntegrityError(message)
                leave_out(location.name, message)
                _quietly(location.delete, data_key_object, if_checksum=checksums[location.name])
                committed.remove(location)
                continue
            copies[location.name] = LocationCopy(key=data_key_object, stored_bytes=size, checksum=checksums[location.name],
                                                 verified_at=datetime.now(timezone.utc), verify_result=how,
                                                 verify_depth="shallow")
            proofs.add("checked by the storage as written" if how.startswith("ok: SHA") else "read back")
        final_details = dict(details() if callable(details) else details or {})
        if left_out:
            final_details["left_out_locations"] = dict(left_out)
        if degraded:
            final_details["degraded"] = dict(sorted(degraded.items()))
        final_source = dict(source_info() if callable(source_info) else source_info or {})
        manifest = seal(Manifest(
            backup_id=backup_id, kind=kind, label=label, source=final_source, started_at=started,
            finished_at=datetime.now(timezone.utc), plaintext_bytes=result.plaintext_bytes,
            compressed_bytes=result.compressed_bytes, stored_bytes=result.stored_bytes,
            plaintext_sha256=result.plaintext_sha256, stored_sha256=result.stored_sha256, chunk_size=chunk_size,
            chunks=result.chunks, compression=compression, key=wrapped.to_dict(),
            tool_versions=tool_versions(versions),
            details=final_details, depends_on=list(depends_on),
            locations=copies,
        ), data_key)
        written: dict[str, str] = {}
        try:
            for location in committed:
                try:
                    written[location.name] = location.put_bytes(manifest_key_name(backup_id), manifest.to_json(),
                                                                exclusive=True)
                except StorageError as exc:
                    # Its copy is listed in the manifest the others hold: validation finds it missing and
                    # repairs it, as the catch-up does for the marked ones.
                    give_up(location.name, exc, f"writing the manifest failed: {exc}")
                    _quietly(location.delete, data_key_object, if_checksum=checksums[location.name])
        except BaseException:
            for name, checksum in written.items():
                _quietly(by_name[name].delete, manifest_key_name(backup_id), if_checksum=checksum)
            raise
    except BaseException as exc:
        for writer in writers.values():
            writer.abort()
        # Only the objects this call committed, and only while they are still the ones it wrote.
        for location in committed:
            _quietly(location.delete, data_key_object, if_checksum=checksums[location.name])
        if not isinstance(exc, (StorageError, IntegrityError)) and isinstance(exc, Exception):
            log.error("backup %s failed; nothing was kept in any location", backup_id)
        raise
    if kind == "wal":
        for name in written:
            _mark_if_late(by_name[name], backup_id)
    if degraded:
        degradation.mark([by_name[name] for name in written], [
            degradation.DegradedCopy(backup_id=backup_id, kind=kind, missing=name, reason=why[:500],
                                     since=manifest.finished_at) for name, why in degraded.items()])
    rate = result.plaintext_bytes / max((manifest.finished_at - started).total_seconds(), 1e-9) / 2**20
    report(f"backup {backup_id} ({kind}) complete: {result.plaintext_bytes:,} bytes → {result.stored_bytes:,} stored "
           f"in {', '.join(copies)} ({rate:,.1f} MiB/s), {' / '.join(sorted(proofs))}"
           + (f"; optional {', '.join(sorted(left_out))} left out" if left_out else "")
           + (f"; DEGRADED: required {', '.join(sorted(degraded))} did not take it (caught up when it answers)"
              if degraded else ""))
    return manifest


def _quietly(fn: Callable[..., None], key: str, **kwargs: Any) -> None:
    try:
        fn(key, **kwargs)
    except Exception as exc:  # cleanup after a failure must not hide the failure
        log.warning("cleanup of %s failed: %s", key, exc)


# -- verify ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class Verification:
    backup_id: str
    location: str
    ok: bool
    depth: str
    reason: str


def verify_copy(manifest: Manifest, location: StorageLocation, keyring: Keyring, *, deep: bool = False) -> Verification:
    """Shallow: object present, size and stored SHA-256 tag match. Deep: decrypt every chunk too."""
    depth = "deep" if deep else "shallow"
    key = manifest.data_key_name

    def result(ok: bool, reason: str) -> Verification:
        return Verification(manifest.backup_id, location.name, ok, depth, reason)

    info = location.head(key)
    if info is None:
        return result(False, f"{location.describe(key)}: the data object is missing")
    if info.size != manifest.stored_bytes:
        return result(False, f"{location.describe(key)}: size {info.size} differs from the manifest's {manifest.stored_bytes}")
    recorded = manifest.locations.get(location.name)
    rewritten = None
    if recorded is not None and recorded.checksum and info.checksum != recorded.checksum:
        rewritten = (f"{location.describe(key)}: stored checksum {info.checksum} differs from the "
                     f"manifest's {recorded.checksum} (the object was rewritten)")
    if not deep:
        if rewritten:
            return result(False, rewritten)
        return result(True, f"{location.describe(key)}: present, {info.size:,} bytes and checksum as the manifest says")
    data_key = keyring.unwrap(manifest.wrapped_key, archive_id=manifest.backup_id)
    try:
        with location.open_reader(key) as stream:
            read = read_archive(stream, None, data_key_for=lambda _h: data_key, where=location.describe(key),
                                expected_archive_id=manifest.backup_id)
    except IntegrityError as exc:
        return result(False, str(exc))
    if read.stored_sha256 != manifest.stored_sha256 or read.plaintext_sha256 != manifest.plaintext_sha256:
        return result(False, f"{location.describe(key)}: checksums differ from the manifest")
    if rewritten:  # authentic content under a new object version: report it, the data itself is sound
        return result(False, rewritten + "; its content is still authentic")
    return result(True, f"{location.describe(key)}: all {read.chunks} chunks authentic, "
                        f"{read.plaintext_bytes:,} plaintext bytes match SHA-256 {manifest.plaintext_sha256[:16]}…")


def update_manifest(location: StorageLocation, backup_id: str, keyring: Keyring,
                    change: Callable[[Manifest, bytes], Manifest], *, attempts: int = 5) -> Manifest:
    """Apply `change(current, data_key)` to the manifest stored now and write it back, re-sealed.

    Compare-and-swap: the write is conditional on the object read, and a lost race re-reads and
    re-applies. A caller's older copy is never written back, so a key rotation that re-wrapped the
    manifest meanwhile is never undone (that would make the backup unreadable once the old KEK retires).
    """
    key = manifest_key_name(backup_id)
    for _ in range(attempts):
        info = location.head(key)
        if info is None:
            raise StorageError(f"{location.describe(key)}: no backup {backup_id} in this location")
        current, data_key = open_manifest(location.get_bytes(key), keyring, where=location.describe(key),
                                          expected_id=backup_id)
        updated = seal(change(current, data_key), data_key)
        try:
            location.put_bytes(key, updated.to_json(), if_checksum=info.checksum)
            return updated
        except PreconditionFailed:
            log.info("%s changed while it was being updated; re-reading it", location.describe(key))
    raise StorageError(f"{location.describe(key)}: the manifest kept changing under {attempts} update attempts")


def record_verification(manifest: Manifest, location: StorageLocation, keyring: Keyring, verification: Verification) -> Manifest:
    """Note the result in that location's copy of the manifest (re-read, then re-sealed)."""

    def note(current: Manifest, _data_key: bytes) -> Manifest:
        copies = dict(current.locations)
        previous = copies.get(location.name)
        copies[location.name] = LocationCopy(
            key=current.data_key_name, stored_bytes=previous.stored_bytes if previous else current.stored_bytes,
            checksum=previous.checksum if previous else None,
            verified_at=datetime.now(timezone.utc),
            verify_result=("ok: " if verification.ok else "FAILED: ") + verification.reason,
            verify_depth=verification.depth)  # type: ignore[arg-type]
        return current.model_copy(update={"locations": copies})

    return update_manifest(location, manifest.backup_id, keyring, note)


# -- restore ---------------------------------------------------------------------------------
def restore_copy(manifest: Manifest, location: StorageLocation, keyring: Keyring, sink: Any,
                 *, report: Callable[[str], None] | None = None) -> int:
    """Stream one copy to `sink`, authenticating as it goes; returns plaintext bytes written."""
    key = manifest.data_key_name
    data_key = keyring.unwrap(manifest.wrapped_key, archive_id=manifest.backup_id)

    def key_for(header: ArchiveHeader) -> bytes:
        return data_key  # the manifest's wrapping is the authority (it survives key rotation)

    with location.open_reader(key) as stream:
        read = read_archive(stream, sink, data_key_for=key_for, where=location.describe(key),
                            expected_archive_id=manifest.backup_id,
                            progress=Progress(report or log.info, what=f"restore {manifest.backup_id}"))
    if read.plaintext_sha256 != manifest.plaintext_sha256:
        raise IntegrityError(f"{location.describe(key)}: restored plaintext SHA-256 differs from the manifest")
    return read.plaintext_bytes


def restore_to_path(manifest: Manifest, candidates: Sequence[StorageLocation], keyring: Keyring, target: Path,
                    *, report: Callable[[str], None] | None = None) -> tuple[str, int]:
    """Restore into `target` from the first candidate location whose copy streams through intact.

    The plaintext goes to a hidden 0600 file beside `target`, fsynced, then renamed: a failed or
    interrupted attempt (integrity, storage, network) leaves nothing behind and the next location
    is tried. Returns the location used and the bytes written.
    """
    report = report or log.info
    tmp = target.with_name(f".{target.name}.restoring")
    failures = []
    for location in candidates:
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "wb") as sink:
                size = restore_copy(manifest, location, keyring, sink, report=report)
                sink.flush()
                os.fsync(sink.fileno())
        except (IntegrityError, StorageError) as exc:
            tmp.unlink(missing_ok=True)
            failures.append(f"{location.name}: {exc}")
            report(f"copy in location {location.name} failed: {exc}; trying the next location")
            continue
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        os.replace(tmp, target)
        return location.name, size
    raise IntegrityError(f"backup {manifest.backup_id}: no location holds a good copy: " + "; ".join(failures))


def load_manifest(location: StorageLocation, backup_id: str, keyring: Keyring) -> Manifest:
    key = manifest_key_name(backup_id)
    if location.head(key) is None:
        raise StorageError(f"{location.describe(key)}: no backup {backup_id} in this location")
    return open_manifest(location.get_bytes(key), keyring, where=location.describe(key), expected_id=backup_id)[0]


def rewrap(manifest: Manifest, location: StorageLocation, keyring: Keyring, *, to_kek: str) -> Manifest:
    """Key rotation for one manifest copy: unwrap under its KEK, wrap under `to_kek`, re-seal."""

    def wrap_anew(current: Manifest, data_key: bytes) -> Manifest:
        wrapped = keyring.wrap(data_key, archive_id=current.backup_id, kek_id=to_kek)
        return current.model_copy(update={"key": wrapped.to_dict()})

    return update_manifest(location, manifest.backup_id, keyring, wrap_anew)


# -- sources ---------------------------------------------------------------------------------
class SourceCommandFailed(RuntimeError):
    """The command whose output was being backed up failed; the backup is not kept."""


class CommandSource:
    """A command's stdout as a backup source; `finish()` waits and raises if the command failed.

    stderr goes to a temporary file (not a pipe), so a chatty tool cannot block on a full pipe.
    """

    def __init__(self, argv: Sequence[str], *, env: Mapping[str, str] | None = None, what: str | None = None) -> None:
        import subprocess
        import tempfile

        self.argv = list(argv)
        self.what = what or Path(self.argv[0]).name
        self._stderr = tempfile.TemporaryFile()
        try:
            self.process = subprocess.Popen(self.argv, stdout=subprocess.PIPE, stderr=self._stderr,
                                            stdin=subprocess.DEVNULL, env=None if env is None else {**os.environ, **env})
        except OSError as exc:
            self._stderr.close()
            raise SourceCommandFailed(f"cannot start {self.what}: {exc.strerror}") from exc
        assert self.process.stdout is not None
        self.stdout = self.process.stdout

    def finish(self, timeout: float = 60) -> dict[str, Any]:
        """Wait for the command; raise SourceCommandFailed (with its stderr tail) unless it succeeded."""
        self.process.wait(timeout=timeout)
        self._stderr.seek(0)
        self.stderr_text = self._stderr.read()[-64_000:].decode(errors="replace")
        tail = self.stderr_text[-2000:].strip()
        self._stderr.close()
        if self.process.returncode != 0:
            raise SourceCommandFailed(f"{self.what} exited with code {self.process.returncode}: {tail or '(no message)'}")
        return {"command": self.what, "exit_code": 0}

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


def backup_from_command(argv: Sequence[str], *, env: Mapping[str, str] | None = None,
                        details: Mapping[str, Any] | Callable[[CommandSource], Mapping[str, Any]] | None = None,
                        **backup_args: Any) -> Manifest:
    """Stream `argv`'s stdout into a backup; a failing command leaves no backup anywhere.

    `details` may be a callable given the finished CommandSource (e.g. to parse its stderr).
    """
    source = CommandSource(argv, env=env)

    def final_details() -> dict[str, Any]:
        finished = source.finish()
        extra = details(source) if callable(details) else details
        return {**finished, **(extra or {})}

    try:
        return create_backup(source.stdout, details=final_details, **backup_args)
    finally:
        source.kill()


def replicate_copy(manifest: Manifest, source: StorageLocation, target: StorageLocation, keyring: Keyring,
                   *, deep: bool = False) -> Manifest:
    """Copy a backup's data and manifest from one location to another (repair or late fan-out).

    The target's copy is verified (deep on request) before its manifest is written, last; the
    manifest records the target's own checksum of the new object.
    """
    key = manifest.data_key_name
    target.copy_from(source, key)
    info = target.head(key)
    if info is None or info.size != manifest.stored_bytes:
        target.delete(key)
        raise StorageError(f"{target.describe(key)}: the copy from {source.name} has the wrong size")
    # The source's manifest as stored now, not the caller's older read: a rotation meanwhile re-wrapped it.
    current = load_manifest(source, manifest.backup_id, keyring)
    data_key = keyring.unwrap(current.wrapped_key, archive_id=current.backup_id)
    copies = dict(current.locations)
    copies[target.name] = LocationCopy(key=key, stored_bytes=info.size, checksum=info.checksum,
                                       verified_at=datetime.now(timezone.utc),
                                       verify_result=f"ok: copied from {source.name}", verify_depth="shallow")
    updated = seal(current.model_copy(update={"locations": copies}), data_key)
    if deep:
        check = verify_copy(updated, target, keyring, deep=True)
        if not check.ok:
            target.delete(key)
            raise IntegrityError(f"copy of {manifest.backup_id} to {target.name} failed deep verification: {check.reason}")
    target.put_bytes(manifest_key_name(manifest.backup_id), updated.to_json())
    _mark_if_late(target, manifest.backup_id)
    return updated


def _mark_if_late(location: StorageLocation, backup_id: str) -> None:
    """A WAL manifest written below the location's WAL index boundary is marked for readers; failing to
    mark only delays it until the hourly refresh of the index, which lists every manifest."""
    try:
        if walindex.mark_if_late(location, backup_id):
            log.info("%s: %s is older than the WAL index's newest pack: marked late for readers",
                     location.name, backup_id)
    except StorageError as exc:
        log.warning("%s: could not mark %s for the WAL index (the next refresh adds it): %s",
                    location.name, backup_id, exc)
