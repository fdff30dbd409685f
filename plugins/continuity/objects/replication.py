"""The application's objects: incremental, verified replication of every version to the DR region.

One `ObjectCategory` of the policy (video content, user uploads) has a versioned source bucket and
one or more replica buckets. A run lists the source's versions and delete markers modified since
the stored checkpoint (minus a lookback, for multipart uploads whose Last-Modified is their start),
copies each new version to every replica and appends one ledger line per version or delete:

- streamed (GET by version id, PUT or multipart upload in `part_size` parts, SHA-256 computed on
  the way and sent as the S3 additional checksum, so the endpoint refuses a corrupted part), or
  server-side (CopyObject) when source and replica share an endpoint and the replica accepts it;
- verified: the SHA-256 of the whole content is recorded in the ledger at copy time, compared with
  the source's own checksum or MD5 ETag when it has one, and with the replica's stored checksum;
  never by a multipart ETag, which is not a digest of the content;
- deletes are recorded, never copied as deletions: the replica keeps every version, object-locked;
- the ledger (`.continuity/ledger/<category>/` in each replica bucket, JSON lines, one object per
  run) says which replica version held which source version from when: it is what a point-in-time
  restore reads, so restores need the replica alone.

A multipart upload that fails is aborted, so no partial object ever appears under its name; a
version that failed stops the checkpoint from moving past it, so the next run copies it again.
Nothing here imports Airflow.

Longer than 600 lines on purpose: a run (listing, copying in parallel, the checkpoint, the retries) is one
state machine whose parts hand each other the same pending versions; the store, the listing, the ledger, the
copy itself, restores and the audit are apart (objects.store, listing, ledger, copying, restore, audit).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from datetime import datetime, timedelta, timezone
from typing import Any

import botocore.exceptions

from continuity.policy.model import ObjectCategory, Policy, format_duration
from continuity.storage.locations import StorageError, StorageLocation, key_safe

log = logging.getLogger(__name__)
from continuity.objects.copying import (ContentMismatch, ServerSideRefused, _already_copied, copy_server_side,
                                        copy_streamed)
from continuity.objects.ledger import (Checkpoint, CopyFailure, LedgerEntry, ReplicationRun, load_checkpoint,
                                       save_checkpoint, version_entry, write_ledger)
from continuity.objects.listing import (CurrentListing, CurrentObject, ListingUnusable, compare_current, list_current,
                                        stored_listing)
from continuity.objects.store import (CHANGES_BY_HEAD, CHECKPOINT_EVERY, HEARTBEAT_NAME, LOOKBACK, MAX_PASSES,
                                      ObjectStore, RECHECK_BY_HEAD, SourceVersion, all_versions, list_versions,
                                      read_heartbeat)




# -- the run -------------------------------------------------------------------------------------
@dataclass
class Replicator:
    """Replicates one category from its source to its replicas (see the module docstring)."""

    category: str
    policy: ObjectCategory
    source: ObjectStore
    replicas: Mapping[str, ObjectStore]
    state: Mapping[str, StorageLocation]  # where the checkpoint and run records live (required locations)
    part_size: int
    report: Callable[[str], None] = log.info
    server_side: bool = True
    workers: int = 4  # copies in flight at once (boto3 clients are thread-safe)
    every_version_listing: timedelta = timedelta(hours=1)

    def run(self, *, run_id: str, rpo_target: timedelta | None = None, rpo_maximum: timedelta | None = None,
            now: Callable[[], datetime] = lambda: datetime.now(timezone.utc)) -> ReplicationRun:
        started = now()
        record = ReplicationRun(category=self.category, run_id=run_id, started_at=started)
        checkpoint = load_checkpoint(self.category, self.state)
        # A run that stopped without finishing may have copied versions after its last checkpoint save:
        # this run looks in the replica before copying (otherwise it does not, one request less per object).
        look_first = checkpoint.running_since is not None
        record.protection = self.protect(checkpoint, alarms=record.alarms)
        why_every_version = self._why_every_version(checkpoint, started, look_first=look_first)
        since = self._since(checkpoint)
        record.since = since
        self.report(f"{self.category}: {self.source.describe(self.source.prefix)} -> "
                    f"{', '.join(r.describe(r.prefix) for r in self.replicas.values())}"
                    + ("; the previous run did not finish: checking the replica before each copy" if look_first else ""))
        checkpoint.running_since = started
        save_checkpoint(checkpoint, self.state)
        ledgers: dict[str, list[LedgerEntry]] = {name: [] for name in self.replicas}
        seen_this_run: set[str] = set()
        unfinished: dict[str, datetime] = {}  # in flight or failed: the checkpoint must not pass them
        copied_keys: dict[str, SourceVersion] = {}
        current: CurrentListing | None = None
        listed_every_version = False
        try:
            for number in range(1, MAX_PASSES + 1):
                clock = time.monotonic()
                if number == 1:
                    listed, current, listed_every_version = self._first_listing(
                        checkpoint, since, why_every_version, record, listed_at=now())
                elif len(copied_keys) <= RECHECK_BY_HEAD:
                    listed = list(self._newer_than_copied(copied_keys.values()))
                else:  # many copied: one listing of the current objects against the pass's own listing
                    assert current is not None
                    listed, newer = self._changes(current, listed_at=now())
                    current.close()
                    current = newer
                    if listed is None:
                        listed = list(list_versions(self.source, since=since))
                fresh = (v for v in listed if v.version_id not in checkpoint.recent and v.version_id not in seen_this_run)
                # A listing of every version is copied from as it goes (the endpoint lists while it copies);
                # the others are short and copied oldest first.
                streamed = number == 1 and listed_every_version
                candidates = fresh if streamed else sorted(fresh, key=lambda v: (v.last_modified, v.key, v.version_id))
                record.timings["listing"] = record.timings.get("listing", 0.0) + round(time.monotonic() - clock, 3)
                if number > 1:
                    assert isinstance(candidates, list)
                    if not candidates:
                        break
                    record.changed_during_run += [f"{v.key} ({v.version_id})" for v in candidates]
                    self.report(f"{len(candidates)} versions appeared while the run copied (pass {number}): "
                                f"copying them too")
                clock = time.monotonic()
                copied_keys, deletes = self._copy_pass(
                    candidates, hold_high_water=streamed, checkpoint=checkpoint, record=record, ledgers=ledgers,
                    run_id=run_id, now=now, unfinished=unfinished, seen_this_run=seen_this_run, look_first=look_first)
                record.timings["copying"] = record.timings.get("copying", 0.0) + round(time.monotonic() - clock, 3)
                if deletes > self.policy.deletes.max_per_run:
                    record.alarms.append(
                        f"ALARM mass delete: {deletes} objects deleted under "
                        f"{self.source.describe(self.source.prefix)} since the last run (threshold "
                        f"{self.policy.deletes.max_per_run}); the replicas keep every version and nothing was "
                        f"deleted there")
                if not copied_keys:
                    break  # nothing was copied, so nothing can have changed during a copy
            if not record.failed:
                checkpoint.complete_at = started
                if listed_every_version:
                    checkpoint.versions_listed_at = started
            # The next run compares with this listing only when nothing is left to retry: a failed copy's key
            # would look unchanged to it. The listing is stored before the checkpoint names it.
            checkpoint.current_listed_at = None
            if current is not None and current.unusable is None and not record.failed and not unfinished:
                current.store(self.state)
                checkpoint.current_listed_at = current.listed_at
        finally:
            if current is not None:
                current.close()
        heartbeat_due = self._measure_lag(record, rpo_target=rpo_target, rpo_maximum=rpo_maximum)
        checkpoint.running_since = None
        self._save(checkpoint, record, ledgers, run_id, now, unfinished=unfinished)
        record.heartbeat_written_at = self._write_heartbeat(run_id, now) if heartbeat_due else None
        record.finished_at = now()
        self.report(f"{self.category}: copied {record.copied} versions ({record.copied_bytes / 2**20:.1f} MiB; "
                    f"{', '.join(f'{k} {v}' for k, v in sorted(record.methods.items())) or 'none'}), skipped "
                    f"{record.skipped}, {len(record.deletes)} deletes recorded, {len(record.failed)} failed")
        return record

    # -- finding what to copy --
    def _why_every_version(self, checkpoint: Checkpoint, started: datetime, *, look_first: bool) -> str | None:
        """Why this run must list every version; None when comparing the current objects with the stored
        listing finds everything."""
        if look_first:
            return "the previous run did not finish"
        if checkpoint.versions_listed_at is None:
            return "no listing of every version recorded yet"
        if checkpoint.current_listed_at is None:
            return "the previous run stored no listing of the current objects (a copy failed)"
        if started - checkpoint.versions_listed_at >= self.every_version_listing:
            return (f"every version is listed every {format_duration(self.every_version_listing)} "
                    f"(last {checkpoint.versions_listed_at.isoformat()}): versions overwritten or deleted between "
                    f"two runs are found that way")
        return None

    @staticmethod
    def _since(checkpoint: Checkpoint) -> datetime | None:
        """Where a listing of every version starts: versions older are done (copied, or seen by the last such
        listing), less the lookback."""
        marks = [t for t in (checkpoint.high_water, checkpoint.versions_listed_at) if t is not None]
        return min(marks) - LOOKBACK if checkpoint.high_water is not None and marks else None

    def _first_listing(self, checkpoint: Checkpoint, since: datetime | None, why_every_version: str | None,
                       record: ReplicationRun, *, listed_at: datetime
                       ) -> tuple[Iterable[SourceVersion], CurrentListing | None, bool]:
        """(versions to consider, this run's listing of the current objects, whether every version was listed:
        then the versions come lazily, as the endpoint lists them)."""
        if why_every_version is None:
            assert checkpoint.current_listed_at is not None
            try:
                with stored_listing(self.state, self.category, listed_at=checkpoint.current_listed_at) as previous:
                    changed, current = self._changes(previous, listed_at=listed_at)
            except (ListingUnusable, StorageError, OSError, EOFError, ValueError, TypeError) as exc:
                why_every_version = f"the stored listing cannot be compared with: {str(exc).splitlines()[0]}"
            else:
                if changed is not None:
                    record.listing = (f"current objects compared with the listing of "
                                      f"{checkpoint.current_listed_at.isoformat()}: {len(changed)} keys new, changed "
                                      f"or gone")
                    self.report(f"{self.category}: {record.listing}")
                    return changed, current, False
                current.close()
                why_every_version = f"more than {CHANGES_BY_HEAD} keys new, changed or gone since the last run"
        record.listing = f"every version{' since ' + since.isoformat() if since else ''} ({why_every_version})"
        self.report(f"{self.category}: listing {record.listing}")
        current = CurrentListing(self.category, listed_at=listed_at)
        return self._every_version(since, current, record), current, True

    def _every_version(self, since: datetime | None, current: CurrentListing,
                       record: ReplicationRun) -> Iterator[SourceVersion]:
        """The versions modified since `since`, as the endpoint lists them; the current objects go into `current`
        on the way (complete once this is exhausted)."""
        clock = time.monotonic()
        for version in all_versions(self.source):
            if version.latest and not version.delete_marker:
                current.add(CurrentObject(version.key, version.last_modified.isoformat(), version.etag or "",
                                          version.size))
            if since is None or version.last_modified >= since:
                yield version
        current.finish()
        record.timings["listing_while_copying"] = round(time.monotonic() - clock, 3)
        self.report(f"{self.category}: {current.objects} current objects listed with their versions in "
                    f"{time.monotonic() - clock:.1f}s (copying meanwhile)")

    def _changes(self, previous: Iterable[CurrentObject], *, listed_at: datetime
                 ) -> tuple[list[SourceVersion] | None, CurrentListing]:
        """Lists the current objects against `previous`: the versions behind the keys that differ (a HEAD each,
        in parallel), or None when more than CHANGES_BY_HEAD differ; and the new listing."""
        current = CurrentListing(self.category, listed_at=listed_at)
        differing: list[str] = []
        count = 0
        try:
            for _kind, entry in compare_current(previous, current.recording(list_current(self.source))):
                count += 1
                if count <= CHANGES_BY_HEAD:
                    differing.append(entry.key)
            current.finish()
        except BaseException:
            current.close()
            raise
        if count > CHANGES_BY_HEAD:
            return None, current
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="continuity-head") as pool:
            found = list(pool.map(lambda key: self._current_version(key, listed_at=listed_at), differing))
        return [version for version in found if version is not None], current

    def _current_version(self, key: str, *, listed_at: datetime) -> SourceVersion | None:
        """The key's current version, or its delete marker (S3 answers a HEAD of a deleted key 404 with the
        marker's version id). A marker's Last-Modified comes with the 404 on AWS, not from every endpoint:
        without it, the listing that found the key gone dates it (later than the delete, never earlier, so
        a restore as of a time in between brings the object back rather than losing it)."""
        try:
            head = self.source.client.head_object(Bucket=self.source.bucket, Key=key)
        except botocore.exceptions.ClientError as exc:
            headers = exc.response.get("ResponseMetadata", {}).get("HTTPHeaders", {})
            if headers.get("x-amz-delete-marker") == "true" and headers.get("x-amz-version-id"):
                modified = listed_at
                if headers.get("last-modified"):
                    modified = parsedate_to_datetime(headers["last-modified"])
                return SourceVersion(key=key, version_id=headers["x-amz-version-id"], last_modified=modified,
                                     delete_marker=True, latest=True)
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                self.report(f"{self.source.describe(key)} is gone without a delete marker: nothing to record")
                return None
            raise
        return SourceVersion(key=key, version_id=head.get("VersionId") or "null", last_modified=head["LastModified"],
                             size=head["ContentLength"], etag=head.get("ETag", "").strip('"') or None, latest=True)

    def _newer_than_copied(self, copied: Iterable[SourceVersion]) -> Iterator[SourceVersion]:
        """For a few copied keys, one HEAD each instead of a listing: the key's newest version when it is not
        the one copied (written while the run copied)."""
        for version in copied:
            try:
                head = self.source.client.head_object(Bucket=self.source.bucket, Key=version.key)
            except Exception:
                continue  # deleted meanwhile: the next run lists the delete marker
            if head.get("VersionId") and head["VersionId"] != version.version_id:
                yield SourceVersion(key=version.key, version_id=head["VersionId"], last_modified=head["LastModified"],
                                    size=head["ContentLength"], etag=head.get("ETag", "").strip('"') or None,
                                    latest=True)

    def _copy_everywhere(self, version: SourceVersion, look_first: bool) -> dict[str, Any]:
        """In a worker thread: copy one version to every replica; {replica: (version, sha, size, method) | None
        (already there) | the exception}. Recording happens in the calling thread."""
        outcome: dict[str, Any] = {}
        for name, replica in self.replicas.items():
            if look_first and (found := _already_copied(replica, version)) is not None:
                outcome[name] = found
                continue
            try:
                outcome[name] = self.copy_version(replica, version)
            except Exception as exc:
                outcome[name] = exc
        return outcome

    def _record(self, version: SourceVersion, outcome: dict[str, Any], record: ReplicationRun,
                ledgers: dict[str, list[LedgerEntry]], now: Callable[[], datetime]) -> bool:
        ok = True
        for name, result in outcome.items():
            if isinstance(result, Exception):
                ok = False
                error = str(result).strip().splitlines()[0] if str(result).strip() else type(result).__name__
                record.failed.append(CopyFailure(key=version.key, version_id=version.version_id, replica=name,
                                                 error=error))
                self.report(f"FAILED {version.key} ({version.version_id}) -> {self.replicas[name].bucket}: {error}")
            else:
                _, _, size, method = result
                ledgers[name].append(version_entry(version, result, copied_at=now()))
                if method == "found":  # copied by a run that died before recording it
                    record.skipped += 1
                    continue
                record.copied += 1
                record.copied_bytes += size
                record.methods[method] = record.methods.get(method, 0) + 1
        return ok

    def copy_version(self, replica: ObjectStore, version: SourceVersion) -> tuple[str, str, int, str]:
        """One version to one replica: server-side when the endpoint takes it, else streamed (a content
        mismatch is retried once); (replica version id, sha256, bytes, method)."""
        if self.server_side and self.source.endpoint == replica.endpoint and version.size <= 5 * 2**30:
            try:
                return (*copy_server_side(self.source, replica, version), "server-side")
            except ServerSideRefused as exc:
                self.server_side = False
                self.report(f"server-side copy refused ({exc}): streaming every copy of this run")
        for attempt in (1, 2):
            try:
                return (*copy_streamed(self.source, replica, version, part_size=self.part_size), "streamed")
            except ContentMismatch as exc:
                if attempt == 2:
                    raise
                self.report(f"{exc}: copying it again")
        raise AssertionError("unreachable")

    def _copy_pass(self, candidates: Iterable[SourceVersion], *, hold_high_water: bool, checkpoint: Checkpoint,
                   record: ReplicationRun, ledgers: dict[str, list[LedgerEntry]], run_id: str,
                   now: Callable[[], datetime], unfinished: dict[str, datetime], seen_this_run: set[str],
                   look_first: bool) -> tuple[dict[str, SourceVersion], int]:
        """Copies the candidates as they come, at most two per worker in flight (memory stays bounded while a
        listing still runs); returns (the keys copied, the deletes seen). With `hold_high_water` (candidates
        in listing order, not by age) the high water moves only once every candidate was seen: a checkpoint
        saved meanwhile must not pass versions the listing has not reached yet."""
        copied_keys: dict[str, SourceVersion] = {}
        deletes = 0
        highest: datetime | None = None
        copied_since_save = 0
        in_flight: dict[Future[dict[str, Any]], SourceVersion] = {}

        def settle(done: Iterable[Future[dict[str, Any]]]) -> None:
            nonlocal highest, copied_since_save
            for future in done:
                version = in_flight.pop(future)
                if self._record(version, future.result(), record, ledgers, now):
                    unfinished.pop(version.version_id)
                    highest = self._done(checkpoint, version, advance=not hold_high_water, highest=highest)
                    copied_keys[version.key] = version
                    copied_since_save += 1
                if copied_since_save >= CHECKPOINT_EVERY:
                    self._save(checkpoint, record, ledgers, run_id, now, unfinished=unfinished)
                    copied_since_save = 0

        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="continuity-copy") as pool:
            for version in candidates:
                seen_this_run.add(version.version_id)
                if version.delete_marker:
                    deletes += 1
                    record.deletes.append(version.key)
                    for name in self.replicas:
                        ledgers[name].append(LedgerEntry(event="delete", key=version.key,
                                                         source_version_id=version.version_id,
                                                         source_last_modified=version.last_modified,
                                                         copied_at=now()))
                    highest = self._done(checkpoint, version, advance=not hold_high_water, highest=highest)
                    continue
                unfinished[version.version_id] = version.last_modified
                in_flight[pool.submit(self._copy_everywhere, version, look_first)] = version
                if len(in_flight) >= 2 * self.workers:
                    settle(wait(in_flight, return_when=FIRST_COMPLETED).done)
            while in_flight:
                settle(wait(in_flight, return_when=FIRST_COMPLETED).done)
        if highest is not None and (checkpoint.high_water is None or highest > checkpoint.high_water):
            checkpoint.high_water = highest
        return copied_keys, deletes

    @staticmethod
    def _done(checkpoint: Checkpoint, version: SourceVersion, *, advance: bool,
              highest: datetime | None) -> datetime | None:
        """Marks the version done; returns the highest Last-Modified done (moved into the checkpoint's high
        water at once when `advance`)."""
        checkpoint.recent[version.version_id] = version.last_modified
        if highest is None or version.last_modified > highest:
            highest = version.last_modified
        if advance and (checkpoint.high_water is None or version.last_modified > checkpoint.high_water):
            checkpoint.high_water = version.last_modified
        return highest

    def _save(self, checkpoint: Checkpoint, record: ReplicationRun, ledgers: dict[str, list[LedgerEntry]],
              run_id: str, now: Callable[[], datetime], *, unfinished: Mapping[str, datetime]) -> None:
        """Ledger lines first, then the checkpoint: a version is never marked done without its ledger line,
        and the high water never passes a version still in flight or failed (the next run lists it again)."""
        if unfinished and checkpoint.high_water is not None:
            checkpoint.high_water = min(checkpoint.high_water, min(unfinished.values()))
        written_at = now()
        for name, entries in ledgers.items():
            if not entries:
                continue
            replica = self.replicas[name]
            key = write_ledger(replica, self.category, entries, name=run_id, now=written_at)
            record.ledger_keys.append(replica.describe(key))
            entries.clear()
        if (horizon := self._since(checkpoint)) is not None:  # the next listing of every version skips these
            checkpoint.recent = {k: v for k, v in checkpoint.recent.items() if v >= horizon}
        checkpoint.updated_at, checkpoint.updated_by = now(), run_id
        save_checkpoint(checkpoint, self.state)

    def _write_heartbeat(self, run_id: str, now: Callable[[], datetime]) -> datetime:
        """A write at the source after this run's listing: the next run's copy of it measures the lag."""
        written = now()
        body = json.dumps({"written_at": written.isoformat(), "run_id": run_id}).encode()
        self.source.client.put_object(Bucket=self.source.bucket, Key=f"{self.source.prefix}{HEARTBEAT_NAME}",
                                      Body=body, ChecksumAlgorithm="SHA256")
        return written

    def _measure_lag(self, record: ReplicationRun, *, rpo_target: timedelta | None,
                     rpo_maximum: timedelta | None) -> bool:
        """The lag of the heartbeat the previous run wrote: from its write at the source to its copy being
        readable in every replica. Returns whether a new heartbeat should be written (always)."""
        key = f"{self.source.prefix}{HEARTBEAT_NAME}"
        arrivals = [read_heartbeat(self.source.prefix, replica) for replica in self.replicas.values()]
        if not arrivals or None in arrivals:
            record.lag_source = "not measured: no heartbeat has reached every replica yet (the first run writes one)"
            self.report(f"{self.category}: replication lag not measured yet (no heartbeat copied so far)")
            return True
        written = min(w for w, _ in arrivals)  # type: ignore[misc]
        readable = max(r for _, r in arrivals)  # type: ignore[misc]
        lag = max(0.0, (readable - written).total_seconds())
        record.lag_seconds = round(lag, 3)
        record.lag_source = (f"heartbeat {key} written at the source {written.isoformat()}, readable in every replica "
                             f"at {readable.isoformat()}")
        verdict = ""
        if rpo_target is not None and rpo_maximum is not None:
            verdict = (" within the RPO target" if lag <= rpo_target.total_seconds() else
                       " over the RPO target, within the maximum" if lag <= rpo_maximum.total_seconds() else
                       " PAST THE RPO MAXIMUM")
            verdict += f" ({format_duration(rpo_target)} / {format_duration(rpo_maximum)})"
            if lag > rpo_maximum.total_seconds():
                record.alarms.append(f"ALARM replication lag of {self.category} is {lag:.0f}s, past the RPO maximum "
                                     f"{format_duration(rpo_maximum)} ({record.lag_source})")
        self.report(f"{self.category}: replication lag {lag:.1f}s{verdict}; {record.lag_source}")
        return True

    # -- protection --
    def protect(self, checkpoint: Checkpoint, *, alarms: list[str]) -> list[str]:
        """Versioning, object lock and lifecycle of every replica as the policy says: applied the first
        time, checked afterwards (a difference is an alarm, never silently overwritten)."""
        sentences = []
        for name, replica in self.replicas.items():
            problems = replica_drift(replica, self.policy, self.category)
            if replica.bucket not in checkpoint.protected:
                if problems:
                    refused = apply_protection(replica, self.policy, self.category)
                    problems = replica_drift(replica, self.policy, self.category) + refused
                if not problems:
                    checkpoint.protected.append(replica.bucket)
                    sentences.append(f"{replica.bucket}: protection applied from the policy and verified")
                    continue
            if problems:
                alarms += [f"ALARM {replica.bucket}: {problem}" for problem in problems]
                sentences.append(f"{replica.bucket}: DRIFT: {'; '.join(problems)}")
            else:
                sentences.append(f"{replica.bucket}: versioning, object lock and lifecycle match the policy")
        for sentence in sentences:
            self.report(sentence)
        return sentences


def lifecycle_rule(policy: ObjectCategory, category: str, prefix: str) -> dict[str, Any]:
    """The replica's lifecycle rule from the category's retention (days, as S3 counts them)."""
    retention = policy.retention
    rule: dict[str, Any] = {"ID": f"continuity-{category}", "Status": "Enabled", "Filter": {"Prefix": prefix},
                            "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1}}
    if not retention.indefinite:
        if retention.archive_class and retention.standard is not None:
            rule["Transitions"] = [{"Days": retention.standard.days, "StorageClass": retention.archive_class}]
            rule["NoncurrentVersionTransitions"] = [{"NoncurrentDays": retention.standard.days,
                                                     "StorageClass": retention.archive_class}]
        end = retention.archive_until or retention.standard
        if end is not None:
            rule["Expiration"] = {"Days": end.days}
            rule["NoncurrentVersionExpiration"] = {"NoncurrentDays": end.days}
    return rule


def _lock_rule(policy: ObjectCategory) -> dict[str, Any] | None:
    if policy.object_lock is None:
        return None
    return {"Mode": policy.object_lock.mode, "Days": policy.object_lock.period.days}


def replica_drift(replica: ObjectStore, policy: ObjectCategory, category: str) -> list[str]:
    """How the replica bucket differs from what the policy asks (empty: it matches)."""
    return [problem for _, problem in _drift(replica, policy, category)]


def _drift(replica: ObjectStore, policy: ObjectCategory, category: str) -> list[tuple[str, str]]:
    """(part, sentence) for each part (versioning, lock, lifecycle) that differs from the policy."""
    problems = []
    client = replica.client
    status = client.get_bucket_versioning(Bucket=replica.bucket).get("Status")
    if status != "Enabled":
        problems.append(("versioning", f"versioning is {status or 'off'}, the policy needs it Enabled"))
    wanted = _lock_rule(policy)
    if wanted is not None:
        try:
            config = client.get_object_lock_configuration(Bucket=replica.bucket)["ObjectLockConfiguration"]
        except Exception:
            config = {}
        retention = config.get("Rule", {}).get("DefaultRetention", {})
        actual = {"Mode": retention.get("Mode"), "Days": retention.get("Days")} if retention else None
        if config.get("ObjectLockEnabled") != "Enabled":
            problems.append(("lock", "object lock is not enabled on the bucket (it is enabled when a bucket is "
                                     "created)"))
        elif actual != wanted:
            problems.append(("lock", f"object lock default retention is {actual or 'none'}, the policy says "
                                     f"{wanted['Mode']} {wanted['Days']} days"))
    rule = lifecycle_rule(policy, category, replica.prefix)
    try:
        rules = client.get_bucket_lifecycle_configuration(Bucket=replica.bucket).get("Rules", [])
    except Exception:
        rules = []
    ours = next((r for r in rules if r.get("ID") == rule["ID"]), None)
    if ours is None:
        problems.append(("lifecycle", f"lifecycle rule {rule['ID']} is missing"))
    else:
        keys = ("Status", "Filter", "Transitions", "NoncurrentVersionTransitions", "Expiration",
                "NoncurrentVersionExpiration", "AbortIncompleteMultipartUpload")
        differing = [k for k in keys if _normal(ours.get(k)) != _normal(rule.get(k))]
        if differing:
            problems.append(("lifecycle", f"lifecycle rule {rule['ID']} differs from the policy in "
                                          f"{', '.join(differing)} (bucket: "
                                          f"{', '.join(f'{k}={ours.get(k)}' for k in differing)})"))
    return problems


def _normal(value: Any) -> Any:
    """Lifecycle values as comparable data (an endpoint may add zero-valued fields)."""
    if isinstance(value, dict):
        return {k: _normal(v) for k, v in value.items() if v not in (0, None, "", [], {}) or k == "Days"}
    if isinstance(value, list):
        return [_normal(v) for v in value]
    return value


def apply_protection(replica: ObjectStore, policy: ObjectCategory, category: str) -> list[str]:
    """Set what differs of versioning, the object lock default retention and the lifecycle rule; returns
    what the bucket refused, one sentence each."""
    client, refused = replica.client, []
    parts = {part for part, _ in _drift(replica, policy, category)}

    def attempt(what: str, call: Callable[[], Any]) -> None:
        try:
            call()
        except Exception as exc:
            refused.append(f"could not set {what}: {str(exc).strip().splitlines()[0]}")

    if "versioning" in parts:
        attempt("versioning", lambda: client.put_bucket_versioning(Bucket=replica.bucket,
                                                                   VersioningConfiguration={"Status": "Enabled"}))
    wanted = _lock_rule(policy)
    if wanted is not None and "lock" in parts:
        attempt("the object lock default retention", lambda: client.put_object_lock_configuration(
            Bucket=replica.bucket, ObjectLockConfiguration={"ObjectLockEnabled": "Enabled",
                                                            "Rule": {"DefaultRetention": wanted}}))
    if "lifecycle" in parts:
        try:
            rules = client.get_bucket_lifecycle_configuration(Bucket=replica.bucket).get("Rules", [])
        except Exception:
            rules = []
        rule = lifecycle_rule(policy, category, replica.prefix)
        rules = [r for r in rules if r.get("ID") != rule["ID"]] + [rule]
        attempt("the lifecycle rule", lambda: client.put_bucket_lifecycle_configuration(
            Bucket=replica.bucket, LifecycleConfiguration={"Rules": rules}))
    return refused


# -- staleness -------------------------------------------------------------------------------------
def stale_object_categories(policy: Policy, checkpoints: Mapping[str, Checkpoint], *,
                            now: datetime | None = None) -> list[str]:
    """Object categories whose last complete replication run started longer ago than their RPO maximum."""
    now = now or datetime.now(timezone.utc)
    alarms = []
    for name in (policy.objects.categories if policy.objects else {}):
        maximum = policy.data_categories[name].rpo.maximum
        complete = checkpoints[name].complete_at if name in checkpoints else None
        if complete is None:
            alarms.append(f"object category {name}: never replicated completely (RPO maximum "
                          f"{format_duration(maximum)}; see dr_object_replication)")
        elif now - complete > maximum:
            alarms.append(f"object category {name}: the last complete replication started "
                          f"{format_duration(now - complete)} ago, over its RPO maximum of {format_duration(maximum)}")
    return alarms


# -- wiring ----------------------------------------------------------------------------------------
def replicator_for(policy: Policy, category: str, *, client_for: Callable[[str, str], Any],
                   state: Mapping[str, StorageLocation], report: Callable[[str], None] = log.info) -> Replicator:
    """The category's replicator; `client_for(conn_id, region)` gives an S3 client."""
    if policy.objects is None or category not in policy.objects.categories:
        known = sorted(policy.objects.categories) if policy.objects else []
        raise ValueError(f"no object category {category!r} in the policy's objects section (known: {known})")
    spec = policy.objects.categories[category]

    def store(bucket: Any) -> ObjectStore:
        return ObjectStore.for_bucket(bucket, client_for)

    return Replicator(category=category, policy=spec, source=store(spec.source),
                      replicas={f"{r.region}:{r.bucket}": store(r) for r in spec.replicas}, state=state,
                      part_size=policy.objects.part_size, workers=policy.objects.copy_workers, report=report,
                      every_version_listing=policy.objects.every_version_listing)


def replicas_in(policy: Policy, region: str, *, client_for: Callable[[str, str], Any]) -> dict[str, tuple[ObjectStore, str]]:
    """Each object category's replica in `region` (a drill's or restore test's region), with the source's
    prefix (where the heartbeat is named): {category: (replica store, source prefix)}."""
    found = {}
    for name, category in (policy.objects.categories.items() if policy.objects else []):
        for bucket in category.replicas:
            if bucket.region == region:
                found[name] = (ObjectStore.for_bucket(bucket, client_for), category.source.prefix)
                break
    return found


def run_record_key(record: ReplicationRun) -> str:
    return f"objects/{record.category}/runs/{record.started_at:%Y%m%dT%H%M%SZ}-{key_safe(record.run_id)}.json"


def store_run_record(record: ReplicationRun, state: Mapping[str, StorageLocation]) -> list[str]:
    data = record.model_dump_json(indent=2).encode()
    written = []
    for location in state.values():
        location.put_bytes(run_record_key(record), data)
        written.append(location.describe(run_record_key(record)))
    return written
