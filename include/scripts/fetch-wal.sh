#!/bin/sh
# restore_command = 'fetch-wal.sh SOCKET %f %p' for standbys: the archived WAL file, decrypted and verified
# by the local WAL service (`continuity wal pusher --socket`), which holds the keys; the database's OS user
# never does. Exit 1 when the file is not archived or the service is not running: PostgreSQL then streams
# from its upstream, or ends recovery at the archive's end. Written beside %p under a hidden name, then
# renamed: PostgreSQL never reads half a segment.
socket=$1 name=$2 target=$3
[ -S "$socket" ] || exit 1
partial="$(dirname "$target")/.$name.fetching"
if curl --silent --fail --max-time 300 --unix-socket "$socket" --output "$partial" "http://wal/wal/$name"; then
    exec mv "$partial" "$target"
fi
rm -f "$partial"
exit 1
