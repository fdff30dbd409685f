#!/bin/bash
# docker-compose: clone the primary once (creating this standby's slot), then run as a standby.
# The replication password is in the OS user's ~/.pgpass (0600), never on a command line or in the
# server's settings; the upstream and the slot are in continuity.conf (included by postgresql.conf), the
# file failover's node control rewrites when this node follows another primary.
set -euo pipefail
name=$1
home=${HOME:-/var/lib/postgresql}
umask 077
# ~/.pgpass (replicator and postgres) was written by the node image's entrypoint (include/docker/node).
until pg_isready -h pg-primary -U postgres; do sleep 1; done
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pg_basebackup -h pg-primary -U replicator -D "$PGDATA" -X stream -C -S "$name" --checkpoint=fast
    chmod 700 "$PGDATA"
    cat > "$PGDATA/continuity.conf" <<CONF
primary_conninfo = 'host=pg-primary user=replicator application_name=$name passfile=$home/.pgpass'
primary_slot_name = '$name'
CONF
    touch "$PGDATA/standby.signal"
fi
exec postgres -D "$PGDATA" -c cluster_name="$name"
