"""Storage locations for the unit tier that a test can cut off, as a region's storage outage does."""

from __future__ import annotations

from continuity.storage.locations import FileLocation, StorageUnreachable


class RegionStorage(FileLocation):
    """A file location that can be cut off: every call fails as an unreachable S3 endpoint does through
    S3Location (StorageUnreachable, naming the endpoint error)."""

    gone = False

    def _check(self) -> None:
        if self.gone:
            raise StorageUnreachable(f"location {self.name}: EndpointConnectionError: Could not connect to "
                               f"the endpoint URL for {self.name}")

    def open_writer(self, key, **kwargs):
        self._check()
        return super().open_writer(key, **kwargs)

    def open_reader(self, key):
        self._check()
        return super().open_reader(key)

    def head(self, key):
        self._check()
        return super().head(key)

    def list(self, prefix, **kwargs):
        self._check()
        return super().list(prefix, **kwargs)

    def delete(self, key, **kwargs):
        self._check()
        return super().delete(key, **kwargs)
