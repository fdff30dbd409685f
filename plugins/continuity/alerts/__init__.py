"""Airflow layer: Deadline Alerts and the callbacks the scheduler runs when a run misses its RTO."""
