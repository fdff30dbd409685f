"""Incidents: records and deliveries, the communication plan, the post-incident report, the status page."""
