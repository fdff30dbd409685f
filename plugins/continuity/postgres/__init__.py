"""PostgreSQL: read-only node queries and local clusters from the server binaries."""
