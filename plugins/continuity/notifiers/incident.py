"""One sender per channel of the communication matrix, built on the providers' notifiers.

Each sender calls its notifier's `notify` directly: the notifiers' `__call__` re-renders their fields
with Airflow's Jinja (a message quoting `{{` would change) and logs-and-reraises, which is fine, but a
sender must raise on any failure so the delivery is retried and recorded, never counted as delivered.
The publishing channels (status page, in-app banner) write to storage and the application's buckets.
"""

from __future__ import annotations

import html
import json
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from functools import cached_property
from typing import Any

from airflow.providers.pagerduty.notifications.pagerduty import PagerdutyNotifier
from airflow.providers.slack.notifications.slack_webhook import SlackWebhookNotifier
from airflow.providers.smtp.notifications.smtp import SmtpNotifier

from continuity.incidents import statuspage
from continuity.hooks.pagerduty import ContinuityPagerdutyEventsHook
from continuity.incidents.records import IncidentStore, Message, Sender, TimelineEvent
from continuity.objects.store import ObjectStore
from continuity.policy.model import Policy
from continuity.storage.locations import StorageLocation

# PagerDuty's four severities, from the incident's.
PAGERDUTY_SEVERITY = {"critical": "critical", "high": "error", "medium": "warning", "low": "info"}
BANNER_NAME = "banner.json"


class ContinuityPagerdutyNotifier(PagerdutyNotifier):
    """The provider's notifier with the connection's URL and CA (see ContinuityPagerdutyEventsHook); its
    `action` may also be "change" (a change event: drills and planned switchovers page nobody)."""

    @cached_property
    def hook(self) -> ContinuityPagerdutyEventsHook:  # type: ignore[override]
        return ContinuityPagerdutyEventsHook(pagerduty_events_conn_id=self.pagerduty_events_conn_id or "")

    def notify(self, context: Any) -> None:
        if self.action == "change":
            self.hook.create_change_event(summary=self.summary, source=self.source, custom_details=self.custom_details)
            self.response = None
        else:
            self.response = self.hook.send_event(summary=self.summary, severity=self.severity, source=self.source,
                                                 action=self.action, dedup_key=self.dedup_key,
                                                 custom_details=self.custom_details)


def channel_senders(policy: Policy, context: Mapping[str, Any], *, store: IncidentStore | None = None,
                    status_locations: Sequence[StorageLocation] = (),
                    banners: Sequence[ObjectStore] = ()) -> dict[str, Sender]:
    assert policy.communication is not None
    communication = policy.communication
    connections = communication.connections

    def slack(recipients: list[str], message: Message, incident_id: str) -> str | None:
        # An incoming webhook posts to the one channel it was made for: one connection per channel
        # (communication.slack_webhooks), the default connection for channels not listed.
        prefix = "[TEST] " if message.test else ""
        for channel in recipients or [""]:
            SlackWebhookNotifier(slack_webhook_conn_id=communication.slack_webhooks.get(channel, connections["slack"]),
                                 text=f"*{prefix}{message.subject}*\n```\n{message.body}\n```").notify(dict(context))
        return ", ".join(recipients) or None

    def pagerduty(recipients: list[str], message: Message, incident_id: str) -> str | None:
        notifier = ContinuityPagerdutyNotifier(
            pagerduty_events_conn_id=connections["pagerduty"], summary=message.subject[:1024],
            severity=PAGERDUTY_SEVERITY[message.severity], source="continuity", action=message.event,
            dedup_key=incident_id, custom_details={"incident_id": incident_id, "test": message.test,
                                                   "text": message.body[:4000]})
        notifier.notify(dict(context))
        return notifier.response

    def email(recipients: list[str], message: Message, incident_id: str) -> str | None:
        if not recipients:
            raise ValueError("no e-mail recipients for this audience in communication.audiences")
        SmtpNotifier(to=recipients, from_email=communication.from_email,
                     subject=("[TEST] " if message.test else "") + message.subject,
                     html_content=f"<pre>{html.escape(message.body)}</pre>", smtp_conn_id=connections["email"],
                     custom_headers={"X-Continuity-Incident": incident_id,
                                     "X-Continuity-Test": "yes" if message.test else "no"}).notify(dict(context))
        return None

    senders: dict[str, Sender] = {"slack": slack, "pagerduty": pagerduty, "email": email}
    if store is not None and status_locations:
        def status_page(recipients: list[str], message: Message, incident_id: str) -> str | None:
            incident = store.get(incident_id)
            incident.updates.append(TimelineEvent(at=datetime.now(timezone.utc), what=message.body))
            store.save(incident)
            statuspage.publish(policy, store, status_locations)
            return f"{len(incident.updates)} update(s)"

        senders["status_page"] = status_page
    if banners:
        def in_app_banner(recipients: list[str], message: Message, incident_id: str) -> str | None:
            document = json.dumps({"active": message.event != "resolve", "incident_id": incident_id,
                                   "severity": message.severity, "title": message.subject, "text": message.body,
                                   "updated_at": datetime.now(timezone.utc).isoformat()}).encode()
            for banner in banners:
                banner.client.put_object(Bucket=banner.bucket, Key=f"{banner.prefix}{BANNER_NAME}", Body=document,
                                         ContentType="application/json")
            return ", ".join(b.describe(f"{b.prefix}{BANNER_NAME}") for b in banners)

        senders["in_app_banner"] = in_app_banner
    return senders


def clear_banners(banners: Sequence[ObjectStore]) -> list[str]:
    """The incident is over: the banner object goes (a delete marker where the bucket keeps versions)."""
    for banner in banners:
        banner.client.delete_object(Bucket=banner.bucket, Key=f"{banner.prefix}{BANNER_NAME}")
    return [b.describe(f"{b.prefix}{BANNER_NAME}") for b in banners]
