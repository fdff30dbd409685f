#!/bin/bash
# docker-compose: clone the primary once (creating this standby's slot), then run as a standby.
set -euo pipefail
name=$1
until pg_isready -h pg-primary -U postgres; do sleep 1; done
if [ ! -s "$PGDATA/PG_VERSION" ]; then
    pg_basebackup -h pg-primary -U replicator -D "$PGDATA" -X stream -C -S "$name" -R --checkpoint=fast
    chmod 700 "$PGDATA"
fi
exec postgres -D "$PGDATA" -c primary_slot_name="$name" -c cluster_name="$name" \
    -c "primary_conninfo=host=pg-primary user=replicator password=$PGPASSWORD application_name=$name"
