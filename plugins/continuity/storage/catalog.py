"""The catalog: the set of authenticated manifests in storage (the source of truth), and queries.

Any single location can answer alone. Manifests that fail authentication are never returned; they
are listed in `problems` so an operator sees them.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime

from continuity.storage import walindex
from continuity.storage.archive import IntegrityError
from continuity.storage.keys import Keyring, KeyringError
from continuity.storage.manifest import WAL_ID_PREFIX, Manifest, backup_id_of_key, manifest_key_name, open_manifest
from continuity.storage.locations import StorageError, StorageLocation
from continuity.storage.walindex import WAL_MANIFESTS

MANIFEST_PREFIX = "manifests/"


@dataclass
class Catalog:
    locations: Mapping[str, StorageLocation]
    keyring: Keyring
    problems: list[str] = field(default_factory=list)
    unreachable: list[str] = field(default_factory=list)

    def _location(self, name: str) -> StorageLocation:
        try:
            return self.locations[name]
        except KeyError:
            raise StorageError(f"no storage location named {name!r} (known: {', '.join(self.locations)})") from None

    def manifests_in(self, location_name: str, *, kind: str | None = None, indexed: bool = True) -> list[Manifest]:
        """Every authentic manifest of one location (of one kind), oldest first.

        WAL manifests, one per segment and by far the most, are told apart by their key: listing another
        kind pages through none of them, and WAL manifests come from the location's WAL index (a few
        authenticated packs, then the manifests after them) unless `indexed` is False, when each is read
        (what key rotation and retirement do, to see every manifest as stored now)."""
        location = self._location(location_name)
        found: list[Manifest] = []
        if kind in (None, "wal"):
            wal = walindex.indexed_wal_manifests(location, self.keyring, self.problems) if indexed else None
            if wal is None:
                found.extend(self._read_each(location, location.list(WAL_MANIFESTS)))
            else:
                found.extend(wal)
        if kind != "wal":
            # Every manifest key before the WAL ones, then every one after them ("manifests/wal-..." sorts
            # below "manifests/wal.").
            before = itertools.takewhile(lambda key: key < WAL_MANIFESTS, location.list(MANIFEST_PREFIX))
            after = location.list(MANIFEST_PREFIX, start_after=MANIFEST_PREFIX + WAL_ID_PREFIX[:-1] + ".")
            found.extend(m for m in self._read_each(location, itertools.chain(before, after))
                         if kind is None or m.kind == kind)
        return sorted(found, key=lambda m: (m.finished_at, m.backup_id))

    def _read_each(self, location: StorageLocation, keys: Iterable[str]) -> Iterator[Manifest]:
        for key in keys:
            backup_id = backup_id_of_key(key)
            if backup_id is None:
                continue
            try:
                manifest, _ = open_manifest(location.get_bytes(key), self.keyring, where=location.describe(key),
                                            expected_id=backup_id)
            except (IntegrityError, KeyringError, StorageError) as exc:
                # One bad manifest is a problem to show, never a reason to hide every other backup.
                self.problems.append(str(exc))
                continue
            yield manifest

    def list(self, *, kind: str | None = None, location: str | None = None,
             since: datetime | None = None, until: datetime | None = None) -> list[Manifest]:
        """Backups in `location` (or the union over every reachable location), filtered."""
        merged: dict[str, Manifest] = {}
        for name in [location] if location else list(self.locations):
            try:
                for manifest in self.manifests_in(name, kind=kind):
                    merged.setdefault(manifest.backup_id, manifest)
            except StorageError as exc:
                if location:
                    raise
                self.unreachable.append(str(exc))
        if not location and len(self.unreachable) == len(self.locations):
            raise StorageError("no storage location is reachable: " + "; ".join(self.unreachable))
        result = [
            m for m in merged.values()
            if (kind is None or m.kind == kind)
            and (since is None or m.finished_at >= since)
            and (until is None or m.finished_at <= until)
        ]
        return sorted(result, key=lambda m: (m.finished_at, m.backup_id))

    def get(self, backup_id: str, *, location: str | None = None) -> tuple[Manifest, str]:
        """The manifest and the location it was read from (the first that holds an authentic copy)."""
        errors: list[str] = []
        for name in [location] if location else list(self.locations):
            loc = self._location(name)
            key = manifest_key_name(backup_id)
            try:
                if loc.head(key) is None:
                    errors.append(f"{loc.describe(key)}: not there")
                    continue
                return open_manifest(loc.get_bytes(key), self.keyring, where=loc.describe(key),
                                     expected_id=backup_id)[0], name
            except (StorageError, IntegrityError) as exc:
                if isinstance(exc, IntegrityError) and location:
                    raise
                errors.append(str(exc))
        raise StorageError(f"backup {backup_id} not found: " + "; ".join(errors))

    def latest(self, kind: str, *, location: str | None = None, database: str | None = None) -> Manifest | None:
        """The newest backup of `kind` (of `database`, for logical backups of several databases)."""
        backups = [m for m in self.list(kind=kind, location=location)
                   if database is None or m.source.get("database") == database]
        return backups[-1] if backups else None

    def dependencies(self, backup_id: str) -> list[Manifest]:
        """Every backup this one needs to be restored (transitively), nearest first."""
        seen: dict[str, Manifest] = {}
        queue = list(self.get(backup_id)[0].depends_on)
        while queue:
            needed = queue.pop(0)
            if needed in seen:
                continue
            manifest = self.get(needed)[0]
            seen[needed] = manifest
            queue.extend(manifest.depends_on)
        return list(seen.values())
