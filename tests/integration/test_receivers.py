"""The sandbox's stand-ins for SMTP and the webhook services, reached through the providers' own
client code (SMTP provider, Slack provider) with the sandbox's connections: what was sent is on disk."""

from __future__ import annotations

import json

import pytest

from continuity_lab.receivers import mails, received


def test_mail_sent_through_the_smtp_provider_lands_in_the_mail_directory(sandbox) -> None:
    from airflow.providers.smtp.hooks.smtp import SmtpHook

    marker = "receiver-test-mail"
    with SmtpHook(smtp_conn_id="continuity_smtp") as hook:
        hook.send_email_smtp(to=["oncall@example.com"], subject=f"[{marker}] alert", html_content="<p>hello</p>",
                             from_email="continuity@example.com")
    [message] = [m for m in mails(sandbox.receivers_dir) if marker in m]
    assert "X-Continuity-Envelope-To: oncall@example.com" in message and f"Subject: [{marker}] alert" in message


def test_a_slack_webhook_through_the_slack_provider_is_recorded(sandbox) -> None:
    from airflow.providers.slack.hooks.slack_webhook import SlackWebhookHook

    response = SlackWebhookHook(slack_webhook_conn_id="continuity_slack").send(text="receiver test: hello slack")
    assert response.status_code == 200 and response.body == "ok"
    [request] = [r for r in received(sandbox.receivers_dir, "slack") if r["body"]["text"] == "receiver test: hello slack"]
    assert request["method"] == "POST" and request["path"].startswith("/slack/services/T0SANDBOX/")


def test_a_failing_service_answers_500_and_records_nothing(sandbox) -> None:
    from airflow.providers.slack.hooks.slack_webhook import SlackWebhookHook

    fail = sandbox.receivers_dir / "webhooks" / "slack" / ".fail"
    fail.parent.mkdir(parents=True, exist_ok=True)
    fail.touch()
    before = len(received(sandbox.receivers_dir, "slack"))
    try:
        with pytest.raises(Exception):
            SlackWebhookHook(slack_webhook_conn_id="continuity_slack").send(text="should not arrive")
    finally:
        fail.unlink()
    assert len(received(sandbox.receivers_dir, "slack")) == before


def test_status_shows_the_receivers(sandbox) -> None:
    status = sandbox.status()["receivers"]
    assert status["running"] and status["webhooks"].startswith("http://127.0.0.1:")
    assert json.loads(json.dumps(status))["mail_dir"].endswith("receivers/mail")
