"""Storage: locations (S3, file), the archive format and keys, manifests, the catalog and the WAL index."""
