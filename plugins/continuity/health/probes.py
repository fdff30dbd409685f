"""Synthetic transactions: each business function proven by doing what its users do.

A probe round checks every application instance of a region (`/health`) and then runs, through the
region's URL, the transaction the policy gives each business function: log in, upload a small video
and read it back (the SHA-256 compared), have it processed (detections written by the worker),
annotate it, list projects, run the report. A result names the function, what was done, how long it
took and, on failure, the step and what came back — the application health of dr_health_monitor,
the validation of a DR site after failover and the application check of restore tests are all this.

Read-only rounds (restore tests, drills against a restored database) never write: login, list
projects, fetch the newest video's metadata and object; what a read-only round cannot prove
(uploading, processing, annotating) is `not measured`, never passed, though reading can still fail it.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import httpx
from pydantic import BaseModel

log = logging.getLogger(__name__)

# The order transactions run in: each may use what an earlier one left (the session, the uploaded video).
TRANSACTION_ORDER = ("login", "list_projects", "upload", "process", "annotate", "report")
PROBE_VIDEO_BYTES = 4096


class InstanceHealth(BaseModel):
    url: str
    ok: bool
    reason: str
    instance: str | None = None


class TransactionResult(BaseModel):
    function: str
    transaction: str
    ok: bool | None  # None: not measured (a read-only round cannot prove it)
    seconds: float
    reason: str
    finished_at: datetime


class ApplicationProbe(BaseModel):
    region: str
    url: str
    read_only: bool
    started_at: datetime
    instances: list[InstanceHealth]
    transactions: list[TransactionResult]

    @property
    def ok(self) -> bool:
        return bool(self.transactions) and all(t.ok is not False for t in self.transactions)

    @property
    def failed_functions(self) -> list[str]:
        return [t.function for t in self.transactions if t.ok is False]

    @property
    def failed_instances(self) -> list[str]:
        return [i.url for i in self.instances if not i.ok]

    def summary(self) -> str:
        done = ", ".join(f"{t.function} {'ok' if t.ok else 'not measured' if t.ok is None else 'FAILED'} "
                         f"{t.seconds:.2f}s" for t in self.transactions)
        down = f"; instances down: {', '.join(self.failed_instances)}" if self.failed_instances else ""
        return f"application in {self.region} ({self.url}): {done}{down}"

    def first_failure(self) -> str | None:
        for t in self.transactions:
            if t.ok is False:
                return f"{t.function} ({t.transaction}): {t.reason}"
        if not self.transactions:
            return "no transaction ran"
        return None


@dataclass(frozen=True)
class ProbeTarget:
    region: str
    url: str  # the region's URL (a load balancer in production)
    instance_urls: list[str] = field(default_factory=list)  # each instance behind it, for /health

    @classmethod
    def from_connection(cls, region: str, *, host: str, port: int | None, schema: str | None,
                        extra: dict[str, Any]) -> ProbeTarget:
        """From an Airflow http connection: host (and port) is the region's URL, extra `instances` each instance."""
        base = host if "://" in host else f"{schema or 'http'}://{host}"
        if port:
            base = f"{base.rstrip('/')}:{port}"
        return cls(region=region, url=base.rstrip("/"), instance_urls=list(extra.get("instances") or []))


class _TransactionFailed(Exception):
    pass


class _ReadOnly(str):
    """What a read-only round did instead of a function's transaction: it can show the function broken (a
    failure still fails) but never prove it works, so a success is `not measured`, saying what was read."""


class _Session:
    """One probe round's state against one URL: the login, the project, the video it uploaded."""

    def __init__(self, client: httpx.Client, url: str, *, email: str, password: str, processing_timeout: float,
                 read_only: bool, uploaded_before: datetime | None = None) -> None:
        self.client, self.url = client, url
        self.uploaded_before = uploaded_before
        self.email, self.password = email, password
        self.processing_timeout, self.read_only = processing_timeout, read_only
        self.token: str | None = None
        self.project_id: int | None = None
        self.video: dict[str, Any] | None = None

    def call(self, method: str, path: str, *, expect: int = 200, **kwargs: Any) -> Any:
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        try:
            response = self.client.request(method, f"{self.url}{path}", headers=headers, **kwargs)
        except httpx.HTTPError as exc:
            raise _TransactionFailed(f"{method} {path}: {type(exc).__name__}: {exc}") from None
        if response.status_code != expect:
            detail = response.text[:200].strip()
            raise _TransactionFailed(f"{method} {path}: HTTP {response.status_code} (expected {expect}): {detail}")
        return response

    def need_login(self) -> None:
        if self.token is None:
            raise _TransactionFailed("no session: the login failed")

    # -- the transactions ------------------------------------------------------------------------
    def login(self) -> str:
        body = self.call("POST", "/login", json={"email": self.email, "password": self.password}).json()
        self.token = body["session"]
        return f"logged in as user {body['user_id']} on {body.get('instance')}"

    def list_projects(self) -> str:
        self.need_login()
        projects = self.call("GET", "/projects").json()["projects"]
        if not projects:
            raise _TransactionFailed(f"GET /projects: the probe user {self.email} owns no project")
        self.project_id = projects[0]["id"]
        return f"{len(projects)} project(s) listed"

    def upload(self) -> str:
        self.need_login()
        if self.read_only:
            return _ReadOnly(self._read_newest_video())
        if self.project_id is None:
            self.list_projects()
        content = secrets.token_bytes(PROBE_VIDEO_BYTES)
        sha256 = hashlib.sha256(content).hexdigest()
        self.video = self.call("POST", f"/videos?project_id={self.project_id}", content=content, expect=201).json()
        if self.video["sha256"] != sha256:
            raise _TransactionFailed(f"upload: the application stored SHA-256 {self.video['sha256']}, sent {sha256}")
        read_back = self.call("GET", f"/videos/{self.video['id']}/content").content
        if hashlib.sha256(read_back).hexdigest() != sha256:
            raise _TransactionFailed(f"video {self.video['id']} ({self.video['s3_key']}) read back with a different "
                                     f"SHA-256 ({len(read_back)} bytes)")
        return f"video {self.video['id']} uploaded ({PROBE_VIDEO_BYTES} bytes) and read back, SHA-256 equal"

    def _read_newest_video(self) -> str:
        # A restored database may reference objects newer than the object replica it reads from (their
        # copy is not due yet: the category's RPO exposure, which the consistency check reports); the
        # newest video the replica can hold is the one to read.
        params = {"uploaded_before": self.uploaded_before.isoformat()} if self.uploaded_before else None
        video = self.call("GET", "/videos/latest", params=params).json()
        content = self.call("GET", f"/videos/{video['id']}/content")
        digest = hashlib.sha256(content.content).hexdigest()
        if digest != video["sha256"]:
            raise _TransactionFailed(f"video {video['id']} ({video['s3_key']}): object SHA-256 {digest} differs from "
                                     f"the row's {video['sha256']}")
        self.video = video
        newest = ("newest video" if self.uploaded_before is None
                  else f"newest video uploaded before {self.uploaded_before.isoformat(timespec='seconds')} (the "
                       f"object replica's newest copy)")
        return f"{newest}, {video['id']}, and its object read ({len(content.content)} bytes, SHA-256 equal)"

    def process(self) -> str:
        self.need_login()
        if self.read_only:
            video = self.video or self.call("GET", "/videos/latest", params=(
                {"uploaded_before": self.uploaded_before.isoformat()} if self.uploaded_before else None)).json()
            return _ReadOnly(f"video {video['id']} metadata read: status {video['status']}, "
                             f"{video['detections']} detection(s)")
        if self.video is None:
            self.upload()
        assert self.video is not None
        deadline = time.monotonic() + self.processing_timeout
        while True:
            state = self.call("GET", f"/videos/{self.video['id']}").json()
            if state["status"] == "processed" and state["detections"] > 0:
                return f"video {self.video['id']} processed: {state['detections']} detection(s)"
            if state["status"] == "failed":
                raise _TransactionFailed(f"video {self.video['id']}: processing failed")
            if time.monotonic() > deadline:
                raise _TransactionFailed(f"video {self.video['id']} still {state['status']!r} after "
                                         f"{self.processing_timeout:.0f} s (is a worker running?)")
            time.sleep(0.2)

    def annotate(self) -> str | None:
        self.need_login()
        if self.read_only:
            return None
        if self.video is None:
            self.upload()
        assert self.video is not None
        body = {"video_id": self.video["id"], "frame": 1, "label": "probe", "bbox": {"x": 1, "y": 1, "w": 2, "h": 2}}
        annotation = self.call("POST", "/annotations", json=body, expect=201).json()
        return f"annotation {annotation['id']} created on video {self.video['id']}"

    def report(self) -> str:
        self.need_login()
        rows = self.call("GET", "/report").json()["detections_last_30_days"]
        return f"report ran: {len(rows)} label(s)"


def probe_instances(client: httpx.Client, urls: list[str]) -> list[InstanceHealth]:
    results = []
    for url in urls:
        try:
            response = client.get(f"{url.rstrip('/')}/health")
            body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
            failed = {k: v for k, v in (body.get("checks") or {}).items() if v != "ok"}
            ok = response.status_code == 200
            reason = "healthy" if ok else f"HTTP {response.status_code}" + (f": {failed}" if failed else "")
            results.append(InstanceHealth(url=url, ok=ok, reason=reason, instance=body.get("instance")))
        except httpx.HTTPError as exc:
            results.append(InstanceHealth(url=url, ok=False, reason=f"unreachable: {type(exc).__name__}"))
    return results


def run_synthetic_transactions(target: ProbeTarget, *, email: str, password: str, functions: dict[str, str],
                               read_only: bool = False, timeout: float = 10.0, processing_timeout: float = 30.0,
                               clock: Callable[[], datetime] | None = None,
                               uploaded_before: datetime | None = None,
                               transport: httpx.BaseTransport | None = None) -> ApplicationProbe:
    """One probe round: every instance's /health, then each function's transaction through the region's URL.

    `functions` maps a business function to its transaction name (the policy's application.functions).
    `uploaded_before` (read-only rounds): read the newest video uploaded before it, not the newest of all.
    `transport`: httpx's, for an application answered in-process (the unit tier); None is the network.
    """
    now = clock or (lambda: datetime.now(timezone.utc))
    started = now()
    with httpx.Client(timeout=timeout, transport=transport) as client:
        instances = probe_instances(client, target.instance_urls or [target.url])
        url = target.url
        healthy = [i.url for i in instances if i.ok]
        if target.instance_urls and url not in healthy and healthy:
            url = healthy[0]  # what a load balancer does: route around a failed instance
        session = _Session(client, url, email=email, password=password, processing_timeout=processing_timeout,
                           read_only=read_only, uploaded_before=uploaded_before)
        results: list[TransactionResult] = []
        outcome: dict[str, tuple[bool | None, str]] = {}
        wanted = set(functions.values())
        for transaction in TRANSACTION_ORDER:
            if transaction not in wanted and transaction != "login":
                continue
            begun = time.monotonic()
            try:
                said = getattr(session, transaction)()
                outcome[transaction] = ((None, "not measured (read-only round)") if said is None else
                                        (None, f"not measured (read-only round): {said}") if isinstance(said, _ReadOnly)
                                        else (True, said))
            except _TransactionFailed as exc:
                outcome[transaction] = (False, str(exc))
            except (KeyError, ValueError, TypeError) as exc:  # a malformed answer is a failure, named
                outcome[transaction] = (False, f"unexpected answer: {type(exc).__name__}: {exc}")
            elapsed = time.monotonic() - begun
            for function, name in functions.items():
                if name == transaction:
                    ok, reason = outcome[transaction]
                    results.append(TransactionResult(function=function, transaction=transaction, ok=ok,
                                                     seconds=round(elapsed, 3), reason=reason, finished_at=now()))
    probe = ApplicationProbe(region=target.region, url=url, read_only=read_only, started_at=started,
                             instances=instances, transactions=results)
    log.info("%s", probe.summary())
    return probe
