#!/bin/sh
# PostgreSQL archive_command: archive-wal.sh SPOOL_DIR %p %f [MAX_QUEUED]
# Queues one completed WAL file in the spool atomically: a temporary name first, then a no-clobber
# hard link to the final name (the WAL pusher, `continuity wal pusher`, sends the spool to storage).
# Succeeds when an identical file is already there (a retry after a crash); fails, and never
# overwrites, when a different file has that name; fails when MAX_QUEUED files already wait, so
# PostgreSQL keeps the segment in pg_wal and retries instead of the spool filling the disk.
set -eu
spool=$1
source=$2
name=$3
max_queued=${4:-0}
final="$spool/$name"

if [ -e "$final" ]; then
    if cmp -s "$source" "$final"; then
        exit 0
    fi
    echo "archive-wal: $final already exists with different contents; refusing to overwrite it" >&2
    exit 1
fi

if [ "$max_queued" -gt 0 ]; then
    queued=$(find "$spool" -maxdepth 1 -type f ! -name '.*' | wc -l)
    if [ "$queued" -ge "$max_queued" ]; then
        echo "archive-wal: the spool $spool already holds $queued files (limit $max_queued): $name is not queued;" \
             "PostgreSQL keeps it and retries. HINT: is the WAL pusher running and the storage reachable?" >&2
        exit 1
    fi
fi

tmp="$spool/.$name.$$.tmp"
trap 'rm -f "$tmp"' EXIT
cp "$source" "$tmp"
# Readable by the spool's group: the shippers (the WAL pusher, Airflow's workers) may run as another user
# of that group (docker-compose: the setgid spool belongs to group 0, Airflow's containers' group).
chmod 0640 "$tmp"
sync "$tmp"
# ln fails if the final name appeared meanwhile: that case is re-checked like above.
if ! ln "$tmp" "$final" 2>/dev/null; then
    cmp -s "$source" "$final" && exit 0
    echo "archive-wal: $final appeared concurrently with different contents" >&2
    exit 1
fi
sync "$spool"
