"""The sample platform in the sandbox: web instances and a worker in us-east-1 serving through PgBouncer,
S3 and Redis; the us-west-2 set stopped until a failover starts it; and the synthetic transactions
that prove each business function by doing what its users do."""

from __future__ import annotations

import hashlib

import httpx
import psycopg
import pytest

from continuity.health.probes import run_synthetic_transactions
from continuity_lab.sampleapp import AppSettings, hash_password, verify_password
from continuity.failover.servicecontrol import ServiceControlError, service_control_for


def transactions(sandbox) -> dict[str, str]:
    return {name: spec.transaction for name, spec in sandbox.policy.application.functions.items()}


def probe(sandbox, region: str = "us-east-1", **kwargs):
    return run_synthetic_transactions(sandbox.probe_target(region), email=sandbox.PROBE_EMAIL,
                                      password=sandbox.password("app_probe"), functions=transactions(sandbox), **kwargs)


def test_every_business_functions_transaction_passes_on_a_healthy_sandbox(sandbox) -> None:
    result = probe(sandbox)
    assert result.ok, result.summary()
    assert sorted(t.function for t in result.transactions) == sorted(sandbox.policy.business_functions)
    assert [i.ok for i in result.instances] == [True, True]
    upload = next(t for t in result.transactions if t.function == "video_upload")
    assert "read back, SHA-256 equal" in upload.reason
    processing = next(t for t in result.transactions if t.function == "video_processing")
    assert "processed: 3 detection(s)" in processing.reason


def test_an_upload_stores_the_object_in_the_regions_bucket_and_a_row_through_pgbouncer(sandbox) -> None:
    url = sandbox.application_urls("us-east-1")[1]  # the second instance: sessions live in Redis, not in one process
    with httpx.Client(base_url=url, timeout=10) as client:
        token = client.post("/login", json={"email": sandbox.PROBE_EMAIL, "password": sandbox.password("app_probe")}
                            ).json()["session"]
        project = client.get("/projects", headers={"Authorization": f"Bearer {token}"}).json()["projects"][0]["id"]
        content = b"frame" * 1000
        video = client.post(f"/videos?project_id={project}", content=content,
                            headers={"Authorization": f"Bearer {token}"}).json()
    obj = sandbox.s3_client().get_object(Bucket="app-videos-us-east-1", Key=video["s3_key"])["Body"].read()
    assert obj == content and video["sha256"] == hashlib.sha256(content).hexdigest()
    with psycopg.connect(sandbox.app_conninfo(through_pgbouncer=False)) as conn:
        row = conn.execute("SELECT size_bytes, sha256 FROM videos WHERE id = %s", (video["id"],)).fetchone()
    assert row == (len(content), video["sha256"])


def test_wrong_password_and_missing_session_are_refused(sandbox) -> None:
    url = sandbox.application_urls("us-east-1")[0]
    with httpx.Client(base_url=url, timeout=10) as client:
        bad = client.post("/login", json={"email": sandbox.PROBE_EMAIL, "password": "not-the-password"})
        assert bad.status_code == 401 and bad.json()["error"] == "wrong email or password"
        assert client.get("/projects").status_code == 401
        assert client.post("/login", content=b"{not json").status_code == 400
    result = run_synthetic_transactions(sandbox.probe_target("us-east-1"), email=sandbox.PROBE_EMAIL,
                                        password="wrong", functions=transactions(sandbox))
    assert not result.ok
    assert result.first_failure().startswith("user_authentication (login): POST /login: HTTP 401")
    assert set(result.failed_functions) == set(sandbox.policy.business_functions)  # nothing works without a login


def test_status_lists_every_instance_with_its_url_and_state(sandbox) -> None:
    status = sandbox.status()["application"]
    assert status["us-east-1"]["state"] == "serving" and status["us-west-2"]["state"] == "standby"
    east = status["us-east-1"]["instances"]
    assert [i["kind"] for i in east] == ["web", "web", "worker"] and all(i["running"] for i in east)
    assert all(i["url"].startswith("http://127.0.0.1:") for i in east if i["kind"] == "web")
    assert not any(i["running"] for i in status["us-west-2"]["instances"])
    conn = sandbox.connections()["continuity_app_us_east_1"]
    assert conn["conn_type"] == "http" and conn["extra"]["instances"] == sandbox.application_urls("us-east-1")


def test_secrets_reach_the_application_by_environment_never_argv(sandbox) -> None:
    for item in sandbox.state["application"]["us-east-1"]["web"]:
        cmdline = open(f"/proc/{item['pid']}/cmdline", "rb").read().decode(errors="replace")
        for secret in ("app", "redis", "s3_secret_key"):
            assert sandbox.password(secret) not in cmdline


def test_a_stopped_instance_set_fails_every_function_and_is_named(sandbox) -> None:
    try:
        stopped = sandbox.stop_application("us-east-1", state="serving")
        assert len(stopped) == 3
        result = probe(sandbox, timeout=2)
        assert not result.ok and set(result.failed_functions) == set(sandbox.policy.business_functions)
        assert result.failed_instances == sandbox.application_urls("us-east-1")
        assert "unreachable" in result.instances[0].reason
    finally:
        sandbox.start_application("us-east-1")
    assert probe(sandbox).ok


def test_a_failed_instance_is_routed_around(sandbox) -> None:
    first = sandbox.state["application"]["us-east-1"]["web"][0]
    from continuity.postgres.cluster import stop_pid

    try:
        stop_pid(first["pid"], name=first["name"])
        result = probe(sandbox, timeout=2)
        assert result.ok, result.summary()
        assert result.failed_instances == [f"http://127.0.0.1:{first['port']}"]
        assert result.url == sandbox.application_urls("us-east-1")[1]
    finally:
        sandbox.start_application("us-east-1")


def test_the_dr_set_starts_through_service_control_once_its_redis_is_primary(sandbox, monkeypatch) -> None:
    monkeypatch.setenv("CONTINUITY_SANDBOX", str(sandbox.root))
    control = service_control_for(sandbox.policy)
    try:
        assert control.start_region("us-west-2") == ["application web-us-west-2-1", "application worker-us-west-2-1"]
        assert all(control.running("us-west-2").values())
        before = probe(sandbox, "us-west-2")
        # Its Redis still replicates the primary region's: sessions cannot be written there.
        assert before.first_failure().startswith("user_authentication (login): POST /login: HTTP 500")
        assert control.promote_cache("us-west-2") == "Redis in us-west-2 promoted (REPLICAOF NO ONE)"
        after = probe(sandbox, "us-west-2")
        assert after.ok, after.summary()
        upload = next(t for t in after.transactions if t.function == "video_upload")
        video_key = upload.reason.split()[1]
        assert video_key.isdigit()
    finally:
        control.stop_region("us-west-2")
        control.follow_cache("us-west-2", "us-east-1")
    assert not any(control.running("us-west-2").values())
    assert sandbox.redis_client("us-west-2").info("replication")["role"] == "slave"


def test_read_only_rounds_never_write_and_say_what_they_did_not_measure(sandbox) -> None:
    env = sandbox._application_environment("us-east-1", "read-only-probe")
    settings = AppSettings.from_environment({**env, "CONTINUITY_APP_READ_ONLY": "1"})
    from starlette.testclient import TestClient

    from continuity_lab.sampleapp import create_app

    with psycopg.connect(sandbox.app_conninfo(through_pgbouncer=False)) as conn:
        counts_before = conn.execute("SELECT (SELECT count(*) FROM videos), (SELECT count(*) FROM annotations), "
                                     "(SELECT last_login FROM users WHERE email = %s)", (sandbox.PROBE_EMAIL,)).fetchone()
    with TestClient(create_app(settings)) as client:
        token = client.post("/login", json={"email": sandbox.PROBE_EMAIL, "password": sandbox.password("app_probe")}
                            ).json()["session"]
        refused = client.post("/videos?project_id=1", content=b"x", headers={"Authorization": f"Bearer {token}"})
        assert refused.status_code == 403 and "read-only" in refused.json()["error"]
    with psycopg.connect(sandbox.app_conninfo(through_pgbouncer=False)) as conn:
        counts_after = conn.execute("SELECT (SELECT count(*) FROM videos), (SELECT count(*) FROM annotations), "
                                    "(SELECT last_login FROM users WHERE email = %s)", (sandbox.PROBE_EMAIL,)).fetchone()
    assert counts_after == counts_before


def test_a_read_only_round_reads_the_newest_video_whose_object_the_bucket_can_hold(sandbox) -> None:
    # A restored database can reference an object the DR replica does not hold yet (its copy is not due:
    # the category's RPO). Reading the newest video of all then fails; the restore test and the drill give
    # the replica's newest copy as `uploaded_before`, and the round reads the newest video older than it.
    assert probe(sandbox).ok  # at least one video whose object is in us-east-1's bucket
    with psycopg.connect(sandbox.app_conninfo(through_pgbouncer=False), autocommit=True) as conn:
        cutoff, project, user = conn.execute(
            "SELECT uploaded_at, project_id, uploaded_by FROM videos ORDER BY uploaded_at DESC LIMIT 1").fetchone()
        uncopied = conn.execute(
            "INSERT INTO videos (project_id, uploaded_by, s3_key, duration_seconds, size_bytes, sha256, status, "
            "uploaded_at) VALUES (%s, %s, 'videos/not-copied-yet.mp4', 1, 10, %s, 'uploaded', now()) RETURNING id",
            (project, user, "ab" * 32)).fetchone()[0]
    try:
        newest = next(t for t in probe(sandbox, read_only=True).transactions if t.function == "video_upload")
        assert newest.ok is False and "videos/not-copied-yet.mp4 not readable in app-videos-us-east-1" in newest.reason
        older = probe(sandbox, read_only=True, uploaded_before=cutoff)
        assert older.ok, older.summary()
        upload = next(t for t in older.transactions if t.function == "video_upload")
        assert upload.reason.startswith(f"not measured (read-only round): newest video uploaded before "
                                        f"{cutoff.isoformat(timespec='seconds')}")
        assert f", {uncopied}," not in upload.reason and "SHA-256 equal" in upload.reason
        url = sandbox.application_urls("us-east-1")[0]
        with httpx.Client(base_url=url, timeout=10) as client:
            token = client.post("/login", json={"email": sandbox.PROBE_EMAIL, "password": sandbox.password("app_probe")}
                                ).json()["session"]
            bad = client.get("/videos/latest", params={"uploaded_before": "yesterday"},
                             headers={"Authorization": f"Bearer {token}"})
        assert bad.status_code == 400 and "uploaded_before='yesterday' is not an ISO 8601 time" in bad.json()["error"]
    finally:
        with psycopg.connect(sandbox.app_conninfo(through_pgbouncer=False), autocommit=True) as conn:
            conn.execute("DELETE FROM videos WHERE id = %s", (uncopied,))


def test_passwords_are_scrypt_hashes() -> None:
    stored = hash_password("correct horse")
    assert stored.startswith("scrypt$16384$8$1$") and "correct horse" not in stored
    assert verify_password("correct horse", stored) and not verify_password("wrong", stored)
    assert not verify_password("x", "md5$abc")


def test_service_control_must_be_configured(sandbox) -> None:
    policy = sandbox.policy.model_copy(update={"application": sandbox.policy.application.model_copy(
        update={"service_control": None})})
    with pytest.raises(ServiceControlError, match="no service control is configured"):
        service_control_for(policy)
