"""WAL the sandbox's primary closes for a test: a writer's work, then a switch to the next segment."""

from __future__ import annotations

import psycopg


def close_segments(sandbox, count: int) -> list[str]:
    """A writer's work closing `count` segments on the primary; their names."""
    primary = sandbox.node("primary")
    closed = []
    for _ in range(count):
        with psycopg.connect(sandbox.app_conninfo()) as conn:
            conn.execute("UPDATE detections SET confidence = confidence WHERE id <= 300")
        with primary.connect() as conn:
            closed.append(conn.execute("SELECT pg_walfile_name(pg_switch_wal()) AS name").fetchone()["name"])
    return closed
