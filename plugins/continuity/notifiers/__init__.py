"""Airflow notifiers that tell people of incidents: the Slack, PagerDuty and SMTP providers' notifiers
behind one `Sender` per channel (see `continuity.incidents.records`)."""
