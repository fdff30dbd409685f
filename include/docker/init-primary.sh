#!/bin/bash
# docker-compose: roles, replication access and the sample schema on a fresh primary.
set -euo pipefail
psql -v ON_ERROR_STOP=1 -U postgres <<SQL
CREATE ROLE replicator LOGIN REPLICATION PASSWORD '${CONTINUITY_REPLICATION_PASSWORD}';
CREATE ROLE continuity_backup LOGIN REPLICATION BYPASSRLS PASSWORD '${CONTINUITY_REPLICATION_PASSWORD}';
GRANT pg_read_all_data, pg_monitor TO continuity_backup;
CREATE ROLE app LOGIN PASSWORD '${CONTINUITY_APP_PASSWORD}';
CREATE DATABASE app OWNER app;
SQL
psql -v ON_ERROR_STOP=1 -U app -d app -f /opt/continuity/app_schema.sql
# Server settings in postgresql.auto.conf, not on the command line: they survive node control's restarts
# (pg_ctl start reads no command line) and pg_basebackup copies them to the standbys, which archive once
# promoted. WAL is queued in the spool (at most 256 waiting: include/policy.yaml backups.incremental.max_queued)
# and sent by the wal-pusher service as each segment closes; archive_timeout closes one at least every minute.
psql -v ON_ERROR_STOP=1 -U postgres <<'SQL'
ALTER SYSTEM SET wal_level = 'replica';
ALTER SYSTEM SET max_wal_senders = 10;
ALTER SYSTEM SET max_replication_slots = 10;
ALTER SYSTEM SET max_slot_wal_keep_size = '8192MB';  -- include/policy.yaml health_monitor.max_slot_wal_keep
ALTER SYSTEM SET wal_log_hints = 'on';
ALTER SYSTEM SET archive_mode = 'on';
ALTER SYSTEM SET archive_command = '/bin/sh /opt/continuity/archive-wal.sh /var/lib/postgresql/wal-spool %p %f 256';
ALTER SYSTEM SET archive_timeout = '60s';
SQL
echo "host replication replicator all scram-sha-256" >> "$PGDATA/pg_hba.conf"
echo "host replication continuity_backup all scram-sha-256" >> "$PGDATA/pg_hba.conf"
# Settings failover's node control rewrites (the synchronous standbys here; the upstream on a standby) live
# in continuity.conf. Written last: the entrypoint's temporary server must not wait for a synchronous
# standby that does not exist yet (with synchronous_standby_names on its command line, init hung).
echo "synchronous_standby_names = 'ANY 1 (sync1, sync2)'" > "$PGDATA/continuity.conf"
echo "include_if_exists = 'continuity.conf'" >> "$PGDATA/postgresql.conf"
