#!/bin/bash
# docker-compose: roles, replication access and the sample schema on a fresh primary.
set -euo pipefail
psql -v ON_ERROR_STOP=1 -U postgres <<SQL
CREATE ROLE replicator LOGIN REPLICATION PASSWORD '${CONTINUITY_REPLICATION_PASSWORD}';
CREATE ROLE continuity_backup LOGIN REPLICATION PASSWORD '${CONTINUITY_REPLICATION_PASSWORD}';
GRANT pg_read_all_data, pg_monitor TO continuity_backup;
CREATE ROLE app LOGIN PASSWORD '${CONTINUITY_APP_PASSWORD}';
CREATE DATABASE app OWNER app;
SQL
psql -v ON_ERROR_STOP=1 -U app -d app -f /opt/continuity/app_schema.sql
echo "host replication replicator all scram-sha-256" >> "$PGDATA/pg_hba.conf"
echo "host replication continuity_backup all scram-sha-256" >> "$PGDATA/pg_hba.conf"
# Settings failover's node control rewrites (the synchronous standbys here; the upstream on a standby) live
# in continuity.conf. Written last: the entrypoint's temporary server must not wait for a synchronous
# standby that does not exist yet (with synchronous_standby_names on its command line, init hung).
echo "synchronous_standby_names = 'sync1'" > "$PGDATA/continuity.conf"
echo "include_if_exists = 'continuity.conf'" >> "$PGDATA/postgresql.conf"
