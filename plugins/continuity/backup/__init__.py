"""Backups: the engine, WAL shipping, logical and physical full backups, configuration, validation."""
