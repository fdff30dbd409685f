"""A probe round's verdicts from what the application answers: each business function's transaction, the step
that failed named, a read-only round never claiming what it cannot prove, a load balancer's routing around a
failed instance. The application is answered in-process (httpx's MockTransport); the sandbox tests run the same
rounds against the real sample application (tests/integration/test_application.py, test_probe_rounds.py)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone

import httpx

from continuity.health.probes import PROBE_VIDEO_BYTES, ProbeTarget, run_synthetic_transactions

FUNCTIONS = {"user_authentication": "login", "video_upload": "upload", "video_processing": "process",
             "annotation_system": "annotate", "project_management": "list_projects",
             "reporting_analytics": "report"}
OLD_VIDEO = b"an old video"


@dataclass
class SampleApplication:
    """Answers like the sample application's API (continuity_lab.sampleapp), with faults a test turns on."""

    down: set[str] = field(default_factory=set)  # instance hosts answering 503
    wrong_password: bool = False
    store_other_bytes: bool = False
    processing: str = "processed"  # or "failed", "queued"
    malformed_report: bool = False
    videos: dict[int, dict] = field(default_factory=dict)
    contents: dict[int, bytes] = field(default_factory=dict)
    writes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._add(OLD_VIDEO)

    def _add(self, content: bytes) -> dict:
        video_id = len(self.videos) + 1
        self.videos[video_id] = {"id": video_id, "sha256": hashlib.sha256(content).hexdigest(), "status": "processed",
                                 "detections": 2, "s3_key": f"videos/{video_id}.mp4"}
        self.contents[video_id] = content
        return self.videos[video_id]

    def __call__(self, request: httpx.Request) -> httpx.Response:
        host, path, method = request.url.host, request.url.path, request.method
        if path == "/health":
            if host in self.down:
                return httpx.Response(503, json={"instance": host, "checks": {"database": "ok", "redis": "down"}})
            return httpx.Response(200, json={"instance": host, "checks": {"database": "ok"}})
        if method != "GET":
            self.writes.append(f"{method} {path}")
        if path == "/login":
            if self.wrong_password:
                return httpx.Response(401, text="bad credentials")
            return httpx.Response(200, json={"session": "s1", "user_id": 7, "instance": host})
        if request.headers.get("Authorization") != "Bearer s1":
            return httpx.Response(401, text="no session")
        if path == "/projects":
            return httpx.Response(200, json={"projects": [{"id": 3}]})
        if path == "/videos" and method == "POST":
            video = self._add(request.content)
            if self.store_other_bytes:
                self.contents[video["id"]] = request.content[::-1]
            return httpx.Response(201, json=video)
        if path == "/videos/latest":
            return httpx.Response(200, json=self.videos[1])
        if path.startswith("/videos/"):
            video_id = int(path.split("/")[2])
            if path.endswith("/content"):
                return httpx.Response(200, content=self.contents[video_id])
            return httpx.Response(200, json={**self.videos[video_id], "status": self.processing})
        if path == "/annotations":
            return httpx.Response(201, json={"id": 11, **json.loads(request.content)})
        if path == "/report":
            return httpx.Response(200, json={"rows": []} if self.malformed_report else
                                  {"detections_last_30_days": [{"label": "car", "count": 2}]})
        return httpx.Response(404, text=f"no route {path}")


def _round(app: SampleApplication, **kwargs):
    target = ProbeTarget(region="us-east-1", url="http://app.example",
                         instance_urls=["http://web-1.example", "http://web-2.example"])
    return run_synthetic_transactions(target, email="probe@example.com", password="x", functions=FUNCTIONS,
                                      processing_timeout=0.5, transport=httpx.MockTransport(app), **kwargs)


def test_a_healthy_application_passes_every_function_saying_what_was_done() -> None:
    probe = _round(SampleApplication())
    assert probe.ok and probe.failed_functions == [] and probe.first_failure() is None
    reasons = {t.function: t.reason for t in probe.transactions}
    assert [t.transaction for t in probe.transactions] == ["login", "list_projects", "upload", "process", "annotate",
                                                            "report"], "each may use what an earlier one left"
    assert reasons["user_authentication"] == "logged in as user 7 on web-1.example"
    assert reasons["video_upload"] == (f"video 2 uploaded ({PROBE_VIDEO_BYTES} bytes) and read back, SHA-256 equal")
    assert reasons["video_processing"] == "video 2 processed: 2 detection(s)"
    assert reasons["reporting_analytics"] == "report ran: 1 label(s)"
    assert probe.summary().startswith("application in us-east-1 (http://web-1.example): user_authentication ok ")


def test_a_failed_instance_is_named_and_the_round_goes_through_a_healthy_one() -> None:
    probe = _round(SampleApplication(down={"web-1.example"}))
    assert probe.failed_instances == ["http://web-1.example"]
    assert probe.instances[0].reason == "HTTP 503: {'redis': 'down'}"
    assert probe.url == "http://web-2.example" and probe.ok
    assert probe.summary().endswith("; instances down: http://web-1.example")


def test_a_failed_login_fails_every_function_that_needs_the_session_naming_why() -> None:
    probe = _round(SampleApplication(wrong_password=True))
    assert not probe.ok and set(probe.failed_functions) == set(FUNCTIONS)
    assert probe.first_failure() == ("user_authentication (login): POST /login: HTTP 401 (expected 200): "
                                     "bad credentials")
    assert {t.reason for t in probe.transactions if t.transaction != "login"} == {"no session: the login failed"}


def test_an_upload_read_back_with_other_bytes_and_a_failed_processing_are_failures() -> None:
    probe = _round(SampleApplication(store_other_bytes=True, processing="failed"))
    results = {t.function: t for t in probe.transactions}
    assert results["video_upload"].ok is False
    assert "read back with a different SHA-256" in results["video_upload"].reason
    assert results["video_processing"].ok is False
    assert probe.failed_functions == ["video_upload", "video_processing"]


def test_processing_that_never_ends_fails_after_its_timeout_and_a_malformed_answer_is_named() -> None:
    probe = _round(SampleApplication(processing="queued", malformed_report=True))
    results = {t.function: t for t in probe.transactions}
    assert results["video_processing"].reason == "video 2 still 'queued' after 0 s (is a worker running?)"
    assert results["reporting_analytics"].reason == "unexpected answer: KeyError: 'detections_last_30_days'"


def test_a_read_only_round_writes_nothing_and_says_not_measured_for_what_it_cannot_prove() -> None:
    app = SampleApplication()
    probe = _round(app, read_only=True, uploaded_before=datetime(2026, 12, 7, tzinfo=timezone.utc))
    assert app.writes == ["POST /login"], "a login is the only POST a read-only round makes"
    results = {t.function: t for t in probe.transactions}
    assert {f: t.ok for f, t in results.items()} == {"user_authentication": True, "project_management": True,
                                                     "reporting_analytics": True, "video_upload": None,
                                                     "video_processing": None, "annotation_system": None}
    assert results["annotation_system"].reason == "not measured (read-only round)"
    assert results["video_upload"].reason.startswith("not measured (read-only round): newest video uploaded before "
                                                     "2026-12-07T00:00:00+00:00")
    assert results["video_processing"].reason == ("not measured (read-only round): video 1 metadata read: status "
                                                  "processed, 2 detection(s)")
    assert probe.ok, "not measured is not a failure, and not a pass either"
    assert "annotation_system not measured" in probe.summary() and "video_upload not measured" in probe.summary()


def test_a_read_only_round_can_still_find_a_function_broken() -> None:
    app = SampleApplication()
    app.contents[1] = b"not the bytes the row records"
    [upload] = [t for t in _round(app, read_only=True).transactions if t.function == "video_upload"]
    assert upload.ok is False and "object SHA-256" in upload.reason and "differs from the row's" in upload.reason
