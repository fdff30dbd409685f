"""The sample application database and a generator of realistic rows, so backups prove something.

Rows are generated deterministically from a seed (timestamps relative to the moment of
generation) and streamed with COPY, so a given `scale` always yields the same rows and memory
stays flat whatever the scale. Each `videos` row names an object (`s3_key`) whose contents are
generated from its key and size (`object_chunks`), so the sandbox can put the very bytes the row's
size and SHA-256 describe into the application bucket, and put them back after a restart.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import psycopg

from continuity.policy.project import include_dir

log = logging.getLogger(__name__)

TABLES = ("users", "projects", "videos", "annotations", "detections")
SEQUENCE_TABLES = ("videos", "annotations", "detections")  # the application inserts into these
ROWS_PER_SCALE = {"users": 200, "projects": 40, "videos": 1_000, "annotations": 5_000, "detections": 20_000}

_FIRST = ["Ada", "Grace", "Alan", "Edsger", "Barbara", "Donald", "Frances", "Ken", "Radia", "Leslie", "Margaret", "Linus"]
_LAST = ["Lovelace", "Hopper", "Turing", "Dijkstra", "Liskov", "Knuth", "Allen", "Thompson", "Perlman", "Lamport"]
_LABELS = ["pedestrian", "cyclist", "car", "truck", "traffic_light", "stop_sign", "bus", "dog"]
_MODELS = ["yolov8n", "yolov8m", "detr-r50", "rtdetr-l"]
VIDEO_PREFIX = "videos/"
UPLOAD_PREFIX = "uploads/"
UPLOADS_PER_SCALE = 100


def object_chunks(key: str, size: int, *, chunk_size: int = 1 << 20) -> Iterator[bytes]:
    """The sample object `key` of `size` bytes, in chunks: the same bytes every time, never all in memory."""
    rng = random.Random(f"continuity-object:{key}:{size}")
    remaining = size
    while remaining:
        n = min(chunk_size, remaining)
        yield rng.randbytes(n)
        remaining -= n


def object_sha256(key: str, size: int) -> str:
    digest = hashlib.sha256()
    for chunk in object_chunks(key, size):
        digest.update(chunk)
    return digest.hexdigest()


def video_size(video_id: int, rng: random.Random) -> int:
    """A few KiB mostly, some hundreds of KiB, and every fiftieth video (1, 51, ...) over 9 MiB, so copies
    run multipart at every scale."""
    if video_id % 50 == 1:
        return rng.randint(9 * 2**20, 12 * 2**20)
    if rng.random() < 0.1:
        return rng.randint(64 * 2**10, 1 * 2**20)
    return rng.randint(2 * 2**10, 64 * 2**10)


def upload_objects(scale: float, *, seed: int = 42) -> Iterator[tuple[str, int]]:
    """The user uploads of the sample application (avatars, attachments): (key, size), deterministic."""
    rng = random.Random(f"uploads-{seed}")
    for i in range(1, max(1, int(UPLOADS_PER_SCALE * scale)) + 1):
        kind = rng.choice(["avatar.png", "attachment.pdf", "notes.txt"])
        yield f"{UPLOAD_PREFIX}user-{rng.randint(1, 10_000):05d}/{i:05d}-{kind}", rng.randint(512, 256 * 2**10)


def apply_schema(conn: psycopg.Connection, schema_path: Path | None = None) -> None:
    conn.execute((schema_path or include_dir() / "sql" / "app_schema.sql").read_text())


def _rows(table: str, count: int, counts: dict[str, int], rng: random.Random, epoch: datetime) -> Iterator[tuple]:
    def when(max_days: float = 365, *, newest: bool = False) -> datetime:
        # The last row of a table is from the last day: a live application writes every day, whatever the
        # scale (a restore's freshness check then means something at any size).
        if newest:
            return epoch + timedelta(days=365) - timedelta(seconds=rng.uniform(0, 86400))
        return epoch + timedelta(seconds=rng.uniform(0, max_days * 86400))

    if table == "users":
        for i in range(1, count + 1):
            first, last = rng.choice(_FIRST), rng.choice(_LAST)
            created = when()
            yield (i, f"{first.lower()}.{last.lower()}.{i}@example.com", f"{first} {last}",
                   rng.choices(["admin", "annotator", "reviewer", "viewer"], [1, 10, 4, 5])[0],
                   created, min(created + timedelta(days=rng.uniform(0, 30)), epoch + timedelta(days=365))
                   if rng.random() < 0.9 else None)
    elif table == "projects":
        for i in range(1, count + 1):
            yield (i, rng.randint(1, counts["users"]), f"validation set {i:04d}",
                   rng.choices(["active", "paused", "archived"], [6, 1, 2])[0], when())
    elif table == "videos":
        for i in range(1, count + 1):
            size, key = video_size(i, rng), f"{VIDEO_PREFIX}{i:08d}.mp4"
            yield (i, rng.randint(1, counts["projects"]), rng.randint(1, counts["users"]),
                   key, round(rng.uniform(5, 1800), 2), size, object_sha256(key, size),
                   rng.choices(["uploaded", "processing", "processed", "failed"], [1, 1, 12, 1])[0],
                   when(newest=i == count))
    elif table == "annotations":
        for i in range(1, count + 1):
            x, y = rng.randint(0, 1800), rng.randint(0, 1000)
            yield (i, rng.randint(1, counts["videos"]), rng.randint(1, counts["users"]), rng.randint(0, 50_000),
                   rng.choice(_LABELS), json.dumps({"x": x, "y": y, "w": rng.randint(10, 300), "h": rng.randint(10, 300)}),
                   when())
    elif table == "detections":
        for i in range(1, count + 1):
            yield (i, rng.randint(1, counts["videos"]), rng.choice(_MODELS), rng.randint(0, 50_000),
                   rng.choice(_LABELS), round(rng.random(), 4), when(newest=i == count))
    else:  # pragma: no cover - TABLES is the closed list
        raise ValueError(f"unknown sample table {table!r}")


def generate(conn: psycopg.Connection, *, scale: float = 1.0, seed: int = 42) -> dict[str, int]:
    """Fill empty sample tables with `scale` times the base row counts; returns rows per table.

    Refuses to touch tables that already hold rows: the generator seeds, it never mixes.
    """
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    counts = {table: max(1, int(n * scale)) for table, n in ROWS_PER_SCALE.items()}
    rng = random.Random(seed)
    # The year up to the moment of generation: the newest rows are recent, as in a live application,
    # so a restore's freshness check means something. Contents stay deterministic for a seed and scale.
    epoch = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=365)
    with conn.transaction():
        apply_schema(conn)
        existing = {t: conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}  # noqa: S608
        if any(existing.values()):
            log.info("sample tables already hold rows (%s); not generating more", existing)
            return existing
        for table in TABLES:
            with conn.cursor().copy(f"COPY {table} FROM STDIN") as copy:
                for row in _rows(table, counts[table], counts, rng, epoch):
                    copy.write_row(row)
            log.info("generated %d rows in %s", counts[table], table)
        for table in SEQUENCE_TABLES:
            conn.execute(f"SELECT setval('{table}_id_seq', (SELECT max(id) FROM {table}))")  # noqa: S608
    return counts
