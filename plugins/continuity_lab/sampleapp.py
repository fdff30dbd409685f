"""The sample platform: a small web application standing in for the AI Model Validation Platform.

What the requirements protect is what users do, so the sandbox runs an application that does it:
log in (a session kept in Redis), upload a video (an object in the region's application bucket and a
`videos` row), have it processed (a worker takes it from a Redis queue and writes detections),
annotate, list projects, run a report. It reaches PostgreSQL only through the entry point
(PgBouncer in transaction mode: no server-side prepared statements) and S3 through its region's
bucket, so a failover that forgets any of them shows up as a failing user transaction.

Configuration comes from the environment (secrets never on a command line):
CONTINUITY_APP_DSN, CONTINUITY_APP_REDIS_URL, CONTINUITY_APP_S3_ENDPOINT, AWS_ACCESS_KEY_ID,
AWS_SECRET_ACCESS_KEY, CONTINUITY_APP_REGION, CONTINUITY_APP_VIDEO_BUCKET, CONTINUITY_APP_INSTANCE,
CONTINUITY_APP_READ_ONLY (restore tests: no writes to the database; without a Redis URL, sessions are
kept in the process).

    python -m continuity_lab.sampleapp serve --port 8001
    python -m continuity_lab.sampleapp worker
"""

from __future__ import annotations

import argparse
import hashlib
import hmac
import json
import logging
import os
import secrets
import signal
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg

log = logging.getLogger(__name__)

SESSION_TTL_SECONDS = 3600
PROCESSING_QUEUE = "queue:videos"
VIDEO_KEY_PREFIX = "videos/"
UPLOAD_SPOOL_BYTES = 4 << 20  # an upload stays in memory up to this size, then spills to a temporary file
MAX_UPLOAD_BYTES = 256 << 20
DETECTIONS_PER_VIDEO = 3


# -- credentials -------------------------------------------------------------------------------------
def hash_password(password: str, *, salt: bytes | None = None) -> str:
    """scrypt (the standard library's), in the `scrypt$n$r$p$salt$hash` form stored in user_credentials."""
    salt = salt or secrets.token_bytes(16)
    n, r, p = 2**14, 8, 1
    digest = hashlib.scrypt(password.encode(), salt=salt, n=n, r=r, p=p, dklen=32)
    return f"scrypt${n}${r}${p}${salt.hex()}${digest.hex()}"


def verify_password(password: str, stored: str) -> bool:
    try:
        scheme, n, r, p, salt, digest = stored.split("$")
    except ValueError:
        return False
    if scheme != "scrypt":
        return False
    candidate = hashlib.scrypt(password.encode(), salt=bytes.fromhex(salt), n=int(n), r=int(r), p=int(p), dklen=32)
    return hmac.compare_digest(candidate.hex(), digest)


def ensure_user(conn: psycopg.Connection, *, email: str, password: str, full_name: str = "DR probe",
                role: str = "annotator") -> int:
    """The user `email` with `password` (created or its password reset), owning at least one project.

    The synthetic transactions log in as this user: it lives in the application database like any
    other, so a restored database that lost it fails its login probe.
    """
    with conn.transaction():
        row = conn.execute("SELECT id FROM users WHERE email = %s", (email,)).fetchone()
        if row is None:
            user_id = conn.execute(
                "INSERT INTO users (id, email, full_name, role, created_at) "
                "SELECT coalesce(max(id), 0) + 1, %s, %s, %s, now() FROM users RETURNING id",
                (email, full_name, role)).fetchone()[0]
        else:
            user_id = row[0]
        conn.execute(
            "INSERT INTO user_credentials (user_id, password_hash, updated_at) VALUES (%s, %s, now()) "
            "ON CONFLICT (user_id) DO UPDATE SET password_hash = excluded.password_hash, updated_at = now()",
            (user_id, hash_password(password)))
        if conn.execute("SELECT 1 FROM projects WHERE owner_id = %s", (user_id,)).fetchone() is None:
            conn.execute("INSERT INTO projects (id, owner_id, name, status, created_at) "
                         "SELECT coalesce(max(id), 0) + 1, %s, 'dr synthetic transactions', 'active', now() "
                         "FROM projects", (user_id,))
    return user_id


# -- the application ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class AppSettings:
    dsn: str
    redis_url: str
    s3_endpoint: str | None
    region: str
    video_bucket: str
    instance: str
    read_only: bool = False

    @classmethod
    def from_environment(cls, environ: dict[str, str] | None = None) -> AppSettings:
        env = os.environ if environ is None else environ
        read_only = env.get("CONTINUITY_APP_READ_ONLY", "") in ("1", "true", "yes")
        needed = ["CONTINUITY_APP_DSN", "CONTINUITY_APP_REGION", "CONTINUITY_APP_VIDEO_BUCKET"]
        missing = [k for k in needed + ([] if read_only else ["CONTINUITY_APP_REDIS_URL"]) if not env.get(k)]
        if missing:
            raise SystemExit(f"sample application: {', '.join(missing)} not set. HINT: the sandbox sets them; "
                             f"see `continuity sandbox status`.")
        return cls(dsn=env["CONTINUITY_APP_DSN"], redis_url=env.get("CONTINUITY_APP_REDIS_URL", ""),
                   s3_endpoint=env.get("CONTINUITY_APP_S3_ENDPOINT") or None, region=env["CONTINUITY_APP_REGION"],
                   video_bucket=env["CONTINUITY_APP_VIDEO_BUCKET"],
                   instance=env.get("CONTINUITY_APP_INSTANCE", "app"),
                   read_only=read_only)


class MemorySessions:
    """Sessions in the process, for a read-only verification instance (a restore test's) that has no Redis:
    what it verifies is the restored database and the object replica, not the cache."""

    def __init__(self) -> None:
        self._values: dict[str, tuple[bytes, float]] = {}

    def set(self, key: str, value: Any, ex: int) -> None:
        self._values[key] = (str(value).encode(), time.monotonic() + ex)

    def get(self, key: str) -> bytes | None:
        value, expires = self._values.get(key, (None, 0.0))
        return value if value is not None and time.monotonic() < expires else None

    def ping(self) -> bool:
        return True


class Backends:
    """The application's three dependencies, built once per process."""

    def __init__(self, settings: AppSettings) -> None:
        import boto3
        import redis

        self.settings = settings
        self.redis: Any = (redis.Redis.from_url(settings.redis_url, socket_timeout=5, socket_connect_timeout=3)
                           if settings.redis_url else MemorySessions())
        self.s3 = boto3.client("s3", endpoint_url=settings.s3_endpoint, region_name=settings.region)

    def db(self) -> psycopg.Connection:
        # PgBouncer in transaction mode: prepared statements would land on another server connection.
        return psycopg.connect(self.settings.dsn, prepare_threshold=None, connect_timeout=5,
                               options="-c statement_timeout=10000")


def create_app(settings: AppSettings | None = None) -> Any:
    from starlette.applications import Starlette
    from starlette.concurrency import run_in_threadpool
    from starlette.requests import Request
    from starlette.responses import JSONResponse, StreamingResponse
    from starlette.routing import Route

    settings = settings or AppSettings.from_environment()
    backends = Backends(settings)

    def error(status: int, message: str) -> JSONResponse:
        return JSONResponse({"error": message, "instance": settings.instance}, status_code=status)

    def session_user(request: Request) -> int | None:
        token = request.cookies.get("session") or request.headers.get("authorization", "").removeprefix("Bearer ")
        if not token:
            return None
        value = backends.redis.get(f"session:{token}")
        return int(value) if value is not None else None

    def writer_refused(user_id: int | None) -> JSONResponse | None:
        """Why a write is refused (no session, or a read-only instance), or None."""
        if user_id is None:
            return error(401, "not logged in")
        if settings.read_only:
            return error(403, "this instance is read-only (a restore test)")
        return None

    def health(request: Request) -> JSONResponse:
        checks: dict[str, str] = {}
        try:
            with backends.db() as conn:
                conn.execute("SELECT 1")
            checks["database"] = "ok"
        except psycopg.Error as exc:
            checks["database"] = f"failed: {str(exc).strip().splitlines()[0]}"
        try:
            backends.redis.ping()
            checks["redis"] = "ok"
        except Exception as exc:  # noqa: BLE001 - any Redis failure is the check's answer
            checks["redis"] = f"failed: {exc}"
        try:
            backends.s3.head_bucket(Bucket=settings.video_bucket)
            checks["storage"] = "ok"
        except Exception as exc:  # noqa: BLE001
            checks["storage"] = f"failed: {exc}"
        healthy = all(v == "ok" for v in checks.values())
        return JSONResponse({"status": "ok" if healthy else "degraded", "instance": settings.instance,
                             "region": settings.region, "read_only": settings.read_only, "checks": checks},
                            status_code=200 if healthy else 503)

    async def login(request: Request) -> JSONResponse:
        try:
            body = await request.json()
            email, password = str(body["email"]), str(body["password"])
        except (ValueError, KeyError, TypeError):
            return error(400, "login needs a JSON body with email and password")
        return await run_in_threadpool(_login, email, password)

    def _login(email: str, password: str) -> JSONResponse:
        with backends.db() as conn:
            row = conn.execute("SELECT u.id, c.password_hash FROM users u JOIN user_credentials c ON c.user_id = u.id "
                               "WHERE u.email = %s", (email,)).fetchone()
            if row is None or not verify_password(password, row[1]):
                return error(401, "wrong email or password")
            if not settings.read_only:
                conn.execute("UPDATE users SET last_login = now() WHERE id = %s", (row[0],))
        token = secrets.token_urlsafe(24)
        backends.redis.set(f"session:{token}", row[0], ex=SESSION_TTL_SECONDS)
        response = JSONResponse({"user_id": row[0], "session": token, "instance": settings.instance})
        response.set_cookie("session", token, httponly=True, max_age=SESSION_TTL_SECONDS)
        return response

    def projects(request: Request) -> JSONResponse:
        user_id = session_user(request)
        if user_id is None:
            return error(401, "not logged in")
        with backends.db() as conn:
            rows = conn.execute("SELECT id, name, status FROM projects WHERE owner_id = %s ORDER BY id LIMIT 100",
                                (user_id,)).fetchall()
        return JSONResponse({"projects": [{"id": r[0], "name": r[1], "status": r[2]} for r in rows]})

    def project_videos(request: Request) -> JSONResponse:
        if session_user(request) is None:
            return error(401, "not logged in")
        project_id = int(request.path_params["project_id"])
        with backends.db() as conn:
            rows = conn.execute("SELECT id, s3_key, size_bytes, status FROM videos WHERE project_id = %s "
                                "ORDER BY id DESC LIMIT 20", (project_id,)).fetchall()
        return JSONResponse({"videos": [{"id": r[0], "s3_key": r[1], "size_bytes": r[2], "status": r[3]} for r in rows]})

    async def upload(request: Request) -> JSONResponse:
        user_id = await run_in_threadpool(session_user, request)
        if refused := writer_refused(user_id):
            return refused
        try:
            project_id = int(request.query_params["project_id"])
        except (KeyError, ValueError):
            return error(400, "upload needs ?project_id=<id>")
        digest, size = hashlib.sha256(), 0
        # Memory stays bounded: the body goes to a spooled file as it arrives, hashed on the way.
        spool = tempfile.SpooledTemporaryFile(max_size=UPLOAD_SPOOL_BYTES)
        try:
            async for chunk in request.stream():
                size += len(chunk)
                if size > MAX_UPLOAD_BYTES:
                    return error(413, f"upload larger than {MAX_UPLOAD_BYTES} bytes")
                digest.update(chunk)
                spool.write(chunk)
            if size == 0:
                return error(400, "empty upload")
            spool.seek(0)
            key = f"{VIDEO_KEY_PREFIX}u-{uuid.uuid4().hex}.mp4"
            return await run_in_threadpool(_store_upload, spool, key, size, digest.hexdigest(), user_id, project_id)
        finally:
            spool.close()

    def _store_upload(spool: Any, key: str, size: int, sha256: str, user_id: int, project_id: int) -> JSONResponse:
        # The object first, then the row: a row never names an object that was not stored.
        backends.s3.upload_fileobj(spool, settings.video_bucket, key)
        with backends.db() as conn:
            if conn.execute("SELECT 1 FROM projects WHERE id = %s", (project_id,)).fetchone() is None:
                return error(404, f"no project {project_id}")
            video_id = conn.execute(
                "INSERT INTO videos (project_id, uploaded_by, s3_key, duration_seconds, size_bytes, sha256, status, "
                "uploaded_at) VALUES (%s, %s, %s, 1, %s, %s, 'uploaded', now()) RETURNING id",
                (project_id, user_id, key, size, sha256)).fetchone()[0]
        backends.redis.lpush(PROCESSING_QUEUE, video_id)
        return JSONResponse({"id": video_id, "s3_key": key, "size_bytes": size, "sha256": sha256,
                             "instance": settings.instance}, status_code=201)

    def video(request: Request) -> JSONResponse:
        if session_user(request) is None:
            return error(401, "not logged in")
        video_id = int(request.path_params["video_id"])
        with backends.db() as conn:
            row = conn.execute("SELECT id, project_id, s3_key, size_bytes, sha256, status, "
                               "(SELECT count(*) FROM detections d WHERE d.video_id = v.id) "
                               "FROM videos v WHERE id = %s", (video_id,)).fetchone()
        if row is None:
            return error(404, f"no video {video_id}")
        return JSONResponse({"id": row[0], "project_id": row[1], "s3_key": row[2], "size_bytes": row[3],
                             "sha256": row[4], "status": row[5], "detections": row[6]})

    def latest_video(request: Request) -> JSONResponse:
        if session_user(request) is None:
            return error(401, "not logged in")
        before = request.query_params.get("uploaded_before")
        try:
            cutoff = datetime.fromisoformat(before) if before else None
        except ValueError:
            return error(400, f"uploaded_before={before!r} is not an ISO 8601 time (e.g. 2026-12-05T03:00:00+00:00)")
        with backends.db() as conn:
            row = conn.execute("SELECT id FROM videos WHERE %s::timestamptz IS NULL OR uploaded_at <= %s "
                               "ORDER BY uploaded_at DESC, id DESC LIMIT 1", (cutoff, cutoff)).fetchone()
        if row is None:
            return error(404, "no videos at all" if cutoff is None else f"no video uploaded before {before}")
        request.path_params["video_id"] = row[0]
        return video(request)

    def video_content(request: Request) -> Any:
        if session_user(request) is None:
            return error(401, "not logged in")
        video_id = int(request.path_params["video_id"])
        with backends.db() as conn:
            row = conn.execute("SELECT s3_key FROM videos WHERE id = %s", (video_id,)).fetchone()
        if row is None:
            return error(404, f"no video {video_id}")
        try:
            body = backends.s3.get_object(Bucket=settings.video_bucket, Key=row[0])["Body"]
        except Exception as exc:  # noqa: BLE001 - the client sees which object is missing, and where
            return error(502, f"object {row[0]} not readable in {settings.video_bucket}: {exc}")
        return StreamingResponse(body.iter_chunks(1 << 20), media_type="video/mp4")

    async def annotate(request: Request) -> JSONResponse:
        user_id = await run_in_threadpool(session_user, request)
        if refused := writer_refused(user_id):
            return refused
        try:
            body = await request.json()
            values = (int(body["video_id"]), user_id, int(body["frame"]), str(body["label"]), json.dumps(body["bbox"]))
        except (ValueError, KeyError, TypeError):
            return error(400, "an annotation needs JSON video_id, frame, label and bbox")
        return await run_in_threadpool(_annotate, values)

    def _annotate(values: tuple) -> JSONResponse:
        with backends.db() as conn:
            try:
                annotation_id = conn.execute(
                    "INSERT INTO annotations (video_id, author_id, frame, label, bbox, created_at) "
                    "VALUES (%s, %s, %s, %s, %s, now()) RETURNING id", values).fetchone()[0]
            except psycopg.errors.ForeignKeyViolation:
                return error(404, f"no video {values[0]}")
        return JSONResponse({"id": annotation_id}, status_code=201)

    def report(request: Request) -> JSONResponse:
        if session_user(request) is None:
            return error(401, "not logged in")
        with backends.db() as conn:
            rows = conn.execute("SELECT label, count(*), round(avg(confidence)::numeric, 3) FROM detections "
                                "WHERE detected_at > now() - interval '30 days' GROUP BY label ORDER BY 2 DESC").fetchall()
        return JSONResponse({"detections_last_30_days": [{"label": r[0], "count": r[1], "mean_confidence": float(r[2])}
                                                         for r in rows]})

    return Starlette(routes=[
        Route("/health", health), Route("/login", login, methods=["POST"]), Route("/projects", projects),
        Route("/projects/{project_id:int}/videos", project_videos),
        Route("/videos", upload, methods=["POST"]), Route("/videos/latest", latest_video),
        Route("/videos/{video_id:int}", video),
        Route("/videos/{video_id:int}/content", video_content), Route("/annotations", annotate, methods=["POST"]),
        Route("/report", report),
    ])


# -- the processing worker ---------------------------------------------------------------------------
def process_video(conn: psycopg.Connection, video_id: int) -> int:
    """Detections for one uploaded video (a stand-in model); returns how many were written."""
    with conn.transaction():
        row = conn.execute("UPDATE videos SET status = 'processing' WHERE id = %s AND status = 'uploaded' "
                           "RETURNING sha256", (video_id,)).fetchone()
        if row is None:
            return 0  # gone, or already taken: the queue may deliver twice after a failover
        labels = ["pedestrian", "car", "cyclist", "truck"]
        seed = int(row[0][:8], 16)
        for i in range(DETECTIONS_PER_VIDEO):
            conn.execute("INSERT INTO detections (video_id, model, frame, label, confidence, detected_at) "
                         "VALUES (%s, 'continuity-sample', %s, %s, %s, now())",
                         (video_id, i * 10, labels[(seed + i) % len(labels)], round(0.5 + (seed % 50) / 100, 2)))
        conn.execute("UPDATE videos SET status = 'processed' WHERE id = %s", (video_id,))
    return DETECTIONS_PER_VIDEO


def run_worker(settings: AppSettings, *, stop_after: float | None = None) -> None:
    backends = Backends(settings)
    stopping = False

    def stop(*_: Any) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    deadline = time.monotonic() + stop_after if stop_after else None
    log.info("worker %s takes videos from %s", settings.instance, PROCESSING_QUEUE)
    while not stopping and (deadline is None or time.monotonic() < deadline):
        try:
            item = backends.redis.brpop([PROCESSING_QUEUE], timeout=1)
        except Exception as exc:  # noqa: BLE001 - Redis away (a failover): wait and try again
            log.warning("queue unreachable (%s); retrying in 1 s", exc)
            time.sleep(1)
            continue
        if item is None:
            continue
        video_id = int(item[1])
        try:
            with backends.db() as conn:
                written = process_video(conn, video_id)
            log.info("video %d processed: %d detections", video_id, written)
        except psycopg.Error as exc:
            # Back on the queue: a video is never dropped because the database was briefly away.
            log.warning("video %d not processed (%s); requeued", video_id, str(exc).strip().splitlines()[0])
            backends.redis.rpush(PROCESSING_QUEUE, video_id)
            time.sleep(1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m continuity_lab.sampleapp")
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve")
    serve.add_argument("--port", type=int, required=True)
    serve.add_argument("--host", default="127.0.0.1")
    sub.add_parser("worker")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = AppSettings.from_environment()
    if args.command == "serve":
        import uvicorn

        uvicorn.run(create_app(settings), host=args.host, port=args.port, log_level="warning", access_log=False)
    else:
        run_worker(settings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
