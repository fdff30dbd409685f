"""The development lab: what stands in for a production estate on one machine (PostgreSQL nodes, PgBouncer, S3
and its regional gateways, Redis, the sample application, receivers for Slack/PagerDuty/e-mail, SSH, Airflow's
control plane) for `make run`, the tests, `make bench` and game days. It imports the product; the product never
imports it and finds it by name (`continuity.policy.registry`)."""
