#!/bin/sh
# PostgreSQL archive_command: archive-wal.sh SPOOL_DIR %p %f
# Copies one completed WAL file into the spool atomically: a temporary name first, then a
# no-clobber hard link to the final name. Succeeds when an identical file is already there (a
# retry after a crash); fails, and never overwrites, when a different file has that name.
set -eu
spool=$1
source=$2
name=$3
final="$spool/$name"

if [ -e "$final" ]; then
    if cmp -s "$source" "$final"; then
        exit 0
    fi
    echo "archive-wal: $final already exists with different contents; refusing to overwrite it" >&2
    exit 1
fi

tmp="$spool/.$name.$$.tmp"
trap 'rm -f "$tmp"' EXIT
cp "$source" "$tmp"
sync "$tmp"
# ln fails if the final name appeared meanwhile: that case is re-checked like above.
if ! ln "$tmp" "$final" 2>/dev/null; then
    cmp -s "$source" "$final" && exit 0
    echo "archive-wal: $final appeared concurrently with different contents" >&2
    exit 1
fi
sync "$spool"
