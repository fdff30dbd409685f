"""The WAL index: one location's WAL manifests packed into a few authenticated objects.

WAL pushed segment by segment makes one manifest per segment (30 days at one a minute: 43,000), and
the catalog reads a manifest per GET: minutes, inside the RTO of every point-in-time restore that must
find its WAL first. The index packs them, per group of 4,096 segments of one timeline, into
`index/wal/<group>/<last backup id>.jsonl.gz`; the catalog reads the packs, then only the manifests
after the highest packed key (one listing with StartAfter) and those a writer marked late.

It is an index, not a cache that can silently disagree with storage:
- each pack is sealed like a manifest (its own data key wrapped by the keyring, an HMAC keyed from it
  over every byte), so an edited, truncated or renamed pack is refused and its range is read manifest by
  manifest instead;
- each entry records the stored manifest's checksum (S3 ETag), and the hourly refresh compares every
  entry with a listing of the manifests: one changed (a verification noted, a key rotation) is read
  again, one deleted is dropped, one missing is added;
- a manifest written at or below the highest packed key (a late segment, a repair) is marked under
  `index/wal-late/` by its writer after it is written, and the refresh checks again after writing its
  packs, so no manifest can fall between a refresh's listing and its packs.
"""

from __future__ import annotations

import gzip
import hashlib
import hmac
import json
import logging
import zlib
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timezone

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from pydantic import BaseModel

from continuity.storage.archive import IntegrityError
from continuity.storage.keys import Keyring, KeyringError, WrappedKey
from continuity.storage.manifest import WAL_ID_PREFIX, Manifest, backup_id_of_key, manifest_key_name, open_manifest
from continuity.storage.locations import StorageError, StorageLocation

log = logging.getLogger(__name__)

INDEX_FORMAT = "continuity-wal-index/1"
INDEX_PREFIX = "index/wal/"
LATE_PREFIX = "index/wal-late/"
WAL_MANIFESTS = "manifests/" + WAL_ID_PREFIX
READERS = 8  # manifests read in parallel by a refresh: each is one small GET


def group_of(backup_id: str) -> str:
    """The pack a WAL backup belongs in: its timeline and the high digits of its segment number (4,096
    segments, 64 GiB of WAL), or its timeline for a history file."""
    name = backup_id[len(WAL_ID_PREFIX):]
    return name[:15] if len(name) == 24 else name[:8]


def pack_key(group: str, last_id: str) -> str:
    return f"{INDEX_PREFIX}{group}/{last_id}.jsonl.gz"


def _parse_pack_key(key: str) -> tuple[str, str] | None:
    """(group, last backup id) of a pack's key, or None for another key."""
    rest = key[len(INDEX_PREFIX):]
    group, _, name = rest.partition("/")
    if not key.startswith(INDEX_PREFIX) or not name.endswith(".jsonl.gz") or "/" in name:
        return None
    return group, name[:-len(".jsonl.gz")]


def _mac_key(data_key: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"continuity catalog index v1").derive(data_key)


class Entry(BaseModel):
    checksum: str | None  # the stored manifest's checksum when it was read (S3 ETag, file SHA-256)
    manifest: Manifest


@dataclass
class Pack:
    key: str
    group: str
    last_id: str
    kek_id: str
    entries: dict[str, Entry]  # by backup id


def seal_pack(group: str, entries: Iterable[Entry], keyring: Keyring) -> tuple[str, bytes]:
    """The key and gzip bytes of a pack of `entries` (all of `group`)."""
    ordered = sorted(entries, key=lambda e: e.manifest.backup_id)
    if not ordered or any(group_of(e.manifest.backup_id) != group for e in ordered):
        raise ValueError(f"a pack of group {group} must hold entries of that group only")
    last = ordered[-1].manifest.backup_id
    data_key, wrapped = keyring.new_data_key(archive_id=f"wal-index-{group}")
    header = {"format": INDEX_FORMAT, "group": group, "last": last, "count": len(ordered),
              "created_at": datetime.now(timezone.utc).isoformat(), "key": wrapped.to_dict()}
    body = "\n".join([json.dumps(header, sort_keys=True)] + [e.model_dump_json() for e in ordered]).encode() + b"\n"
    mac = hmac.new(_mac_key(data_key), body, hashlib.sha256).hexdigest()
    # Level 1: entries are small JSON that compresses 4-5x at any level; a refresh writes up to 13 packs.
    return pack_key(group, last), gzip.compress(body + json.dumps({"mac": mac}).encode() + b"\n", compresslevel=1)


def open_pack(raw: bytes, keyring: Keyring, *, key: str, where: str) -> Pack:
    """Authenticate and parse a stored pack; IntegrityError for anything that is not one, intact."""
    named = _parse_pack_key(key)
    if named is None:
        raise IntegrityError(f"{where}: not a WAL index pack's key")
    try:
        text = gzip.decompress(raw)
        body, _, trailer = text.rstrip(b"\n").rpartition(b"\n")
        body += b"\n"
        mac = json.loads(trailer)["mac"]
        header = json.loads(body[:body.index(b"\n")])
        wrapped = WrappedKey.from_dict(header["key"])
    except (OSError, EOFError, zlib.error, ValueError, KeyError, TypeError) as exc:
        raise IntegrityError(f"{where}: not a readable WAL index pack ({type(exc).__name__}: {exc})") from None
    if header.get("format") != INDEX_FORMAT or (header.get("group"), header.get("last")) != named:
        raise IntegrityError(f"{where}: the pack's header names group {header.get('group')} up to {header.get('last')}, "
                             f"not what its key says (copied or renamed in storage): it is not trusted")
    try:
        data_key = keyring.unwrap(wrapped, archive_id=f"wal-index-{named[0]}")
    except (KeyringError, ValueError, TypeError) as exc:
        raise IntegrityError(f"{where}: cannot unwrap the pack's key: {exc}") from None
    if not hmac.compare_digest(hmac.new(_mac_key(data_key), body, hashlib.sha256).hexdigest(), str(mac)):
        raise IntegrityError(f"{where}: WAL index pack failed authentication (edited in storage): it is not trusted")
    entries: dict[str, Entry] = {}
    for line in body.splitlines()[1:]:
        entry = Entry.model_validate_json(line)
        entries[entry.manifest.backup_id] = entry
    if len(entries) != header.get("count"):
        raise IntegrityError(f"{where}: the pack holds {len(entries)} entries, its header says {header.get('count')}")
    return Pack(key=key, group=named[0], last_id=named[1], kek_id=wrapped.kek_id, entries=entries)


@dataclass
class IndexRead:
    """What the packs of one location say, and what could not be trusted."""

    packs: list[Pack] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def entries(self) -> dict[str, Entry]:
        merged: dict[str, Entry] = {}
        for pack in self.packs:  # two packs of a group (a refresh stopped between write and delete): either
            merged.update(pack.entries)
        return merged

    @property
    def boundary(self) -> str | None:
        """The highest manifest key packed: every manifest up to it is in a pack or marked late."""
        last = max((p.last_id for p in self.packs), default=None)
        return manifest_key_name(last) if last else None


def read_index(location: StorageLocation, keyring: Keyring) -> IndexRead:
    keys = [k for k in location.list(INDEX_PREFIX) if _parse_pack_key(k)]
    result = IndexRead()

    def one(key: str) -> Pack | str:
        try:
            return open_pack(location.get_bytes(key), keyring, key=key, where=location.describe(key))
        except (IntegrityError, StorageError) as exc:
            return str(exc)

    with ThreadPoolExecutor(max_workers=min(READERS, max(1, len(keys)))) as pool:
        for outcome in pool.map(one, keys):
            (result.problems if isinstance(outcome, str) else result.packs).append(outcome)  # type: ignore[arg-type]
    return result


def read_manifests(location: StorageLocation, keyring: Keyring, backup_ids: Iterable[str], problems: list[str],
                   *, listed: bool = True) -> dict[str, Manifest]:
    """Authentic manifests by id, read in parallel; an unauthentic one is a problem. Ids not `listed` (named
    by a late mark) are looked for first: one deleted since is skipped, not a problem."""

    def one(backup_id: str) -> Manifest | str | None:
        key = manifest_key_name(backup_id)
        try:
            if not listed and location.head(key) is None:
                return None
            return open_manifest(location.get_bytes(key), keyring, where=location.describe(key),
                                 expected_id=backup_id)[0]
        except (IntegrityError, KeyringError, StorageError) as exc:
            return str(exc)

    found: dict[str, Manifest] = {}
    ids = list(backup_ids)
    with ThreadPoolExecutor(max_workers=min(READERS, max(1, len(ids)))) as pool:
        for backup_id, outcome in zip(ids, pool.map(one, ids)):
            if isinstance(outcome, str):
                problems.append(outcome)
            elif outcome is not None:
                found[backup_id] = outcome
    return found


def _ids(keys: Iterable[str]) -> list[str]:
    return [i for i in (backup_id_of_key(k) for k in keys) if i is not None]


def indexed_wal_manifests(location: StorageLocation, keyring: Keyring, problems: list[str]) -> list[Manifest] | None:
    """Every WAL manifest of the location through its index: the packs, the manifests after the highest
    packed key, and those marked late. None when the location has no index or a pack is not trusted
    (the caller reads every manifest instead; the problem is in `problems`)."""
    index = read_index(location, keyring)
    if index.problems:
        problems.extend(f"{p} (reading every WAL manifest instead)" for p in index.problems)
        return None
    if not index.packs:
        return None
    found = {i: e.manifest for i, e in index.entries.items()}
    newer = _ids(location.list(WAL_MANIFESTS, start_after=index.boundary))
    late = [k[len(LATE_PREFIX):] for k in location.list(LATE_PREFIX)]
    found |= read_manifests(location, keyring, newer, problems)
    found |= read_manifests(location, keyring, late, problems, listed=False)
    return list(found.values())


def mark_if_late(location: StorageLocation, backup_id: str) -> bool:
    """After writing a WAL manifest: when a pack already reaches past it, mark it so readers look for it
    (one listing of the packs). Returns whether it was marked."""
    if not backup_id.startswith(WAL_ID_PREFIX):
        return False
    lasts = [named[1] for k in location.list(INDEX_PREFIX) if (named := _parse_pack_key(k))]
    if not lasts or backup_id > max(lasts):
        return False
    location.put_bytes(LATE_PREFIX + backup_id, b"")
    return True


class IndexRefresh(BaseModel):
    """What one refresh found and did in one location."""

    location: str
    manifests: int
    packs: int
    kept: int
    added: int
    changed: int
    gone: int
    packs_written: int
    late_marked: int
    problems: list[str] = []

    def summary(self) -> str:
        return (f"WAL index of location {self.location}: {self.manifests:,} manifests in {self.packs} packs; "
                f"{self.added} added, {self.changed} changed, {self.gone} gone since the last refresh; "
                f"{self.packs_written} packs written" + (f"; {self.late_marked} marked late" if self.late_marked else ""))


def refresh_index(location: StorageLocation, keyring: Keyring, *,
                  report: Callable[[str], None] = log.info) -> IndexRefresh:
    """Bring the location's index in line with its manifests: compare every entry with a listing of the
    manifests, read what is new or changed, drop what is gone, rewrite the packs that differ (or whose
    key is not under the active KEK), then mark anything written meanwhile below the new boundary."""
    problems: list[str] = []
    listed = {info.key: info.checksum for info in location.list_info(WAL_MANIFESTS)}
    index = read_index(location, keyring)
    for problem in index.problems:
        report(f"{problem}; its entries are read again")
    old = index.entries
    listed_ids = {backup_id_of_key(k): c for k, c in listed.items() if backup_id_of_key(k)}
    stale = [i for i, c in listed_ids.items() if i not in old or old[i].checksum != c or c is None]
    read = read_manifests(location, keyring, stale, problems)
    entries = {i: e for i, e in old.items() if i in listed_ids and i not in read and i not in stale}
    entries |= {i: Entry(checksum=listed_ids[i], manifest=manifest) for i, manifest in read.items()}
    groups: dict[str, list[Entry]] = {}
    for backup_id, entry in entries.items():
        groups.setdefault(group_of(backup_id), []).append(entry)
    existing: dict[str, list[Pack]] = {}
    for pack in index.packs:
        existing.setdefault(pack.group, []).append(pack)
    written = 0
    stored_keys = {k for k in location.list(INDEX_PREFIX) if _parse_pack_key(k)}
    for group in sorted(set(groups) | set(existing)):
        wanted = groups.get(group, [])
        current = existing.get(group, [])
        unchanged = (len(current) == 1 and current[0].kek_id == keyring.active
                     and {i: e.checksum for i, e in current[0].entries.items()}
                     == {e.manifest.backup_id: e.checksum for e in wanted})
        if unchanged:
            continue
        keep = None
        if wanted:
            # Written before the old packs go: a refresh stopped in between leaves two packs of the group,
            # which readers merge, never none.
            keep, data = seal_pack(group, wanted, keyring)
            location.put_bytes(keep, data)
            written += 1
        for key in sorted(k for k in stored_keys if (_parse_pack_key(k) or ("",))[0] == group and k != keep):
            location.delete(key)
    after = read_index(location, keyring)
    late = 0
    # Manifests written since the listing, at or below the new boundary, that no pack holds: mark them.
    if after.boundary:
        before = index.boundary if not index.problems else None
        packed = after.entries
        for key in location.list(WAL_MANIFESTS, start_after=before):
            if key > after.boundary:
                break
            backup_id = backup_id_of_key(key)
            if backup_id and backup_id not in packed:
                location.put_bytes(LATE_PREFIX + backup_id, b"")
                late += 1
        for key in location.list(LATE_PREFIX):
            backup_id = key[len(LATE_PREFIX):]
            if backup_id in packed and packed[backup_id].checksum == listed.get(manifest_key_name(backup_id)):
                location.delete(key)  # folded into a pack
    result = IndexRefresh(location=location.name, manifests=len(entries), packs=len(groups),
                          kept=len(entries) - len(read), added=len([i for i in read if i not in old]),
                          changed=len([i for i in read if i in old]), gone=len([i for i in old if i not in listed_ids]),
                          packs_written=written, late_marked=late, problems=problems + after.problems)
    report(result.summary())
    for problem in result.problems:
        report(f"PROBLEM: {problem}")
    return result


def forget(location: StorageLocation, keyring: Keyring, backup_ids: Iterable[str]) -> int:
    """Drop deleted WAL backups from their packs (retention deletes the manifests first); returns the
    packs rewritten. A pack that cannot be read is left for the next refresh."""
    gone = {i for i in backup_ids if i.startswith(WAL_ID_PREFIX)}
    if not gone:
        return 0
    rewritten = 0
    for pack in read_index(location, keyring).packs:
        if not gone & pack.entries.keys():
            continue
        remaining = [e for i, e in pack.entries.items() if i not in gone]
        if remaining:
            key, data = seal_pack(pack.group, remaining, keyring)
            location.put_bytes(key, data)
            if key != pack.key:
                location.delete(pack.key)
        else:
            location.delete(pack.key)
        rewritten += 1
    return rewritten

