"""PagerDuty Events API v2 through the provider's hook, at the connection's URL when it names one.

The provider's hook always talks to events.pagerduty.com. A deployment behind an egress proxy or a
regional endpoint, and the sandbox's local receiver, need the URL from the connection's host and a CA
bundle from its extra (`ca_bundle`); everything else (payload, dedup keys, retries) stays the
provider's and the `pagerduty` library's.
"""

from __future__ import annotations

import ssl
from typing import Any

import pagerduty
from airflow.providers.pagerduty.hooks.pagerduty_events import PagerdutyEventsHook, prepare_event_data


class ContinuityPagerdutyEventsHook(PagerdutyEventsHook):
    """:param pagerduty_events_conn_id: connection with the integration key as password; host (optional):
    the Events API base URL (https only); extra `ca_bundle` (optional): a CA file to trust."""

    def __init__(self, *, pagerduty_events_conn_id: str) -> None:
        super().__init__(pagerduty_events_conn_id=pagerduty_events_conn_id)
        connection = self.get_connection(pagerduty_events_conn_id)
        self.base_url = connection.host or None
        self.ca_bundle = connection.extra_dejson.get("ca_bundle")

    def events_client(self) -> pagerduty.EventsApiV2Client:
        extra: dict[str, Any] = {}
        if self.ca_bundle:
            extra["verify"] = ssl.create_default_context(cafile=self.ca_bundle)
        return pagerduty.EventsApiV2Client(self.integration_key, base_url=self.base_url, **extra)

    def send_event(self, summary: str, severity: str, source: str = "airflow", action: str = "trigger",  # type: ignore[override]
                   dedup_key: str | None = None, custom_details: Any | None = None, **kwargs: Any) -> str:
        data = prepare_event_data(summary=summary, severity=severity, source=source, custom_details=custom_details,
                                  action=action, dedup_key=dedup_key, **kwargs)
        with self.events_client() as client:
            return client.send_event(**data)

    def create_change_event(self, summary: str, source: str = "airflow", custom_details: Any | None = None,  # type: ignore[override]
                            timestamp: Any = None, links: list[Any] | None = None) -> str | None:
        payload: dict[str, Any] = {"summary": summary, "source": source}
        if custom_details is not None:
            payload["custom_details"] = custom_details
        if timestamp is not None:
            payload["timestamp"] = timestamp.isoformat()
        with self.events_client() as client:
            client.send_change_event(payload=payload, links=links)
        return None
