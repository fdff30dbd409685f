#!/bin/bash
# docker-compose's node containers: sshd keeps the container up and PostgreSQL runs beside it, so that
# failover's node control (over SSH, as the postgres OS user) can stop, fence, rewind and start the server.
# The server's first start is the service's command, as postgres and in the background: the image's own
# entrypoint on the primary (it initialises an empty data directory), start-standby.sh on a standby.
set -euo pipefail
home=/var/lib/postgresql
# The host key and the one authorized client key come from secrets: Airflow's SSH connections pin the host
# key (CONTINUITY_NODE_HOST_PUBLIC_KEY) and log in with the matching private key.
install -d -m 700 -o postgres -g postgres "$home/.ssh"
install -m 600 -o postgres -g postgres /run/secrets/continuity_node_authorized_keys "$home/.ssh/authorized_keys"
install -m 600 /run/secrets/continuity_node_host_key /etc/ssh/ssh_host_ed25519_key
# Replication (replicator) and pg_rewind (postgres, include/docker/policy-overlay.yaml's rewind_user)
# authenticate from the OS user's ~/.pgpass: no password on a command line or in a settings file.
umask 077
printf '*:*:*:replicator:%s\n*:*:*:postgres:%s\n' "$CONTINUITY_REPLICATION_PASSWORD" "$CONTINUITY_PG_PASSWORD" \
    > "$home/.pgpass"
chown postgres:postgres "$home/.pgpass"
umask 022
cat > /etc/ssh/sshd_config.d/continuity.conf <<CONF
HostKey /etc/ssh/ssh_host_ed25519_key
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
AllowUsers postgres
AllowTcpForwarding no
X11Forwarding no
CONF
mkdir -p /run/sshd /var/run/postgresql
chown postgres:postgres /var/run/postgresql
if [ "$1" = postgres ]; then
    docker-entrypoint.sh "$@" &  # drops to postgres itself after initialising
else
    gosu postgres "$@" &
fi
exec /usr/sbin/sshd -D -e
