"""The current objects, listing against listing: what changed since the previous run's stored listing."""

from __future__ import annotations

import gzip
import json
import logging
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from datetime import datetime
from typing import Any, Literal, NamedTuple


from continuity.storage.locations import StorageError, StorageLocation

log = logging.getLogger(__name__)
from continuity.objects.store import ObjectStore




# -- the current objects, listing against listing ------------------------------------------------
# Listing every version costs as much as the history kept (uploads keep every version forever, videos
# seven years), so between two listings of every version (`objects.every_version_listing`, at least
# hourly) a run lists only the current objects (ListObjectsV2) and compares them, key by key, with the
# listing the previous run stored: a key new or changed is one HEAD for its current version, a key gone
# one HEAD for its delete marker. What only a listing of every version sees (a version overwritten
# again, or deleted, before the next run) waits for the next one, inside the category's RPO maximum.
class CurrentObject(NamedTuple):
    key: str
    last_modified: str  # ISO 8601, as the listing gave it: equal listings give equal strings
    etag: str
    size: int


class ListingUnusable(RuntimeError):
    """The stored listing cannot be compared with (missing, from another run, out of key order, damaged)."""


def current_listing_key(category: str) -> str:
    return f"objects/{category}/current.jsonl.gz"


def list_current(store: ObjectStore) -> Iterator[CurrentObject]:
    """The current objects under the store's prefix, in key order (refused otherwise: the comparison needs it)."""
    previous = ""
    for page in store.client.get_paginator("list_objects_v2").paginate(Bucket=store.bucket, Prefix=store.prefix):
        for entry in page.get("Contents", []):
            if entry["Key"] <= previous:
                raise ListingUnusable(f"{store.describe(store.prefix)} listed {entry['Key']!r} after {previous!r}: "
                                      f"not in key order")
            previous = entry["Key"]
            yield CurrentObject(entry["Key"], entry["LastModified"].isoformat(), entry.get("ETag", "").strip('"'),
                                entry["Size"])


def compare_current(previous: Iterable[CurrentObject],
                    listed: Iterable[CurrentObject]) -> Iterator[tuple[Literal["new", "changed", "gone"], CurrentObject]]:
    """The differences between two key-ordered listings, merged in one pass (memory: one entry of each)."""
    before, now = iter(previous), iter(listed)
    old, new = next(before, None), next(now, None)
    while old is not None or new is not None:
        if new is None or (old is not None and old.key < new.key):
            yield "gone", old  # type: ignore[misc]
            old = next(before, None)
        elif old is None or new.key < old.key:
            yield "new", new
            new = next(now, None)
        else:
            if new != old:
                yield "changed", new
            old, new = next(before, None), next(now, None)


class CurrentListing:
    """A key-ordered listing of the current objects, kept in a local temporary file (gzip JSON lines
    behind a header naming when it was listed) to compare the next listing with and to store."""

    def __init__(self, category: str, *, listed_at: datetime) -> None:
        self.category, self.listed_at = category, listed_at
        self.objects = 0
        self.unusable: str | None = None
        self._file = tempfile.TemporaryFile(prefix="continuity-current-")
        self._writer: gzip.GzipFile | None = gzip.GzipFile(fileobj=self._file, mode="wb", compresslevel=3)
        self._write({"category": category, "listed_at": listed_at.isoformat()})
        self._last = ""

    def _write(self, value: Any) -> None:
        assert self._writer is not None
        self._writer.write(json.dumps(value, separators=(",", ":")).encode() + b"\n")

    def add(self, entry: CurrentObject) -> None:
        if entry.key <= self._last and self.objects:
            self.unusable = f"{entry.key!r} came after {self._last!r}: the listing is not in key order"
        self._last = entry.key
        self.objects += 1
        self._write(list(entry))

    def recording(self, entries: Iterable[CurrentObject]) -> Iterator[CurrentObject]:
        """`entries`, each added on the way."""
        for entry in entries:
            self.add(entry)
            yield entry

    def finish(self) -> CurrentListing:
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        return self

    def __iter__(self) -> Iterator[CurrentObject]:
        self.finish()
        self._file.seek(0)
        with gzip.GzipFile(fileobj=self._file, mode="rb") as lines:
            lines.readline()
            for line in lines:
                yield CurrentObject(*json.loads(line))

    def store(self, state: Mapping[str, StorageLocation]) -> None:
        """Into every state location: the checkpoint names it afterwards, by its `listed_at`."""
        self.finish()
        for location in state.values():
            self._file.seek(0)
            writer = location.open_writer(current_listing_key(self.category))
            try:
                while chunk := self._file.read(2**20):
                    writer.write(chunk)
                writer.commit()
            except BaseException:
                writer.abort()
                raise

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
        self._file.close()


@contextmanager
def stored_listing(state: Mapping[str, StorageLocation], category: str, *,
                   listed_at: datetime) -> Iterator[Iterator[CurrentObject]]:
    """The listing the previous run stored, from the first state location holding the one the checkpoint
    names (by when it was listed): a location holding another run's is passed over, never used."""
    problems = []
    for location in state.values():
        try:
            reader = location.open_reader(current_listing_key(category))
        except StorageError as exc:
            problems.append(f"{location.name}: {str(exc).splitlines()[0]}")
            continue
        with reader, gzip.GzipFile(fileobj=reader, mode="rb") as lines:
            try:
                header = json.loads(lines.readline())
            except (OSError, EOFError, ValueError) as exc:
                problems.append(f"{location.name}: unreadable ({exc})")
                continue
            if header.get("listed_at") != listed_at.isoformat():
                problems.append(f"{location.name}: holds the listing of {header.get('listed_at')}, "
                                f"not {listed_at.isoformat()}")
                continue
            yield (CurrentObject(*json.loads(line)) for line in lines)
            return
    raise ListingUnusable(f"no stored listing of the current objects of {category} from {listed_at.isoformat()} "
                          f"({'; '.join(problems) or 'no state location'})")
