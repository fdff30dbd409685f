#!/usr/bin/env bash
# Prepare this machine for `make run` / `make test`:
#   1. PostgreSQL server binaries, PgBouncer, Redis, curl and OpenSSH's server from Debian packages when
#      they are absent (and
#      rclone and pgBackRest for `make bench`, which sets CONTINUITY_BENCH=1);
#   2. .venv from requirements.txt when it is missing or stale (the stamp is a hash of the inputs).
# Exit codes: 0 ready, 10 packages missing and we cannot install them (not root, no sudo),
# 11 no apt-get on this machine, 12 no suitable Python, 13 package install failed, 14 pip failed.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf 'bootstrap: %s\n' "$*"; }
die() { local code=$1; shift; printf 'bootstrap: error: %s\n' "$*" >&2; exit "$code"; }

have_postgres_server() { compgen -G '/usr/lib/postgresql/*/bin/initdb' >/dev/null; }
have_pgbouncer() { command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ]; }
have_redis() { command -v redis-server >/dev/null 2>&1 || [ -x /usr/bin/redis-server ]; }
# The standbys' restore_command (include/scripts/fetch-wal.sh) asks the WAL service with curl.
have_curl() { command -v curl >/dev/null 2>&1; }
# Node control over SSH is tested against an OpenSSH server the sandbox starts on loopback.
have_sshd() { command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ]; }
# `make bench` compares object replication with rclone and backups with pgBackRest (CONTINUITY_BENCH=1);
# tests need neither.
need_rclone() { [ "${CONTINUITY_BENCH:-0}" = 1 ] && ! command -v rclone >/dev/null 2>&1; }
need_pgbackrest() { [ "${CONTINUITY_BENCH:-0}" = 1 ] && ! command -v pgbackrest >/dev/null 2>&1; }

if ! have_postgres_server || ! have_pgbouncer || ! have_redis || ! have_curl || ! have_sshd || need_rclone || need_pgbackrest; then
    packages=()
    have_postgres_server || packages+=(postgresql postgresql-contrib)
    have_pgbouncer || packages+=(pgbouncer)
    have_redis || packages+=(redis-server)
    have_curl || packages+=(curl)
    have_sshd || packages+=(openssh-server)
    need_rclone && packages+=(rclone)
    need_pgbackrest && packages+=(pgbackrest)
    command -v apt-get >/dev/null 2>&1 \
        || die 11 "missing ${packages[*]} and this machine has no apt-get; install them with its package manager (PostgreSQL server binaries, PgBouncer, Redis, curl, OpenSSH server)"
    if [ "$(id -u)" -eq 0 ]; then
        sudo=()
    elif command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
        sudo=(sudo -n)
    else
        die 10 "missing Debian packages ${packages[*]}; run as root or with passwordless sudo, or: sudo apt-get install ${packages[*]}"
    fi
    say "installing Debian packages: ${packages[*]}"
    # The sandbox makes its own clusters; do not let the package create and start a default one.
    "${sudo[@]}" mkdir -p /etc/postgresql-common/createcluster.d
    echo "create_main_cluster = false" | "${sudo[@]}" tee /etc/postgresql-common/createcluster.d/continuity.conf >/dev/null
    export DEBIAN_FRONTEND=noninteractive
    "${sudo[@]}" apt-get update -qq || die 13 "apt-get update failed"
    "${sudo[@]}" apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null \
        || die 13 "apt-get install ${packages[*]} failed"
fi

python=${PYTHON:-python3}
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null \
    || die 12 "Python 3.11 or newer is needed (set PYTHON=/path/to/python3.11)"

UV_VERSION=0.13.10
stamp_inputs() { cat requirements.txt pyproject.toml; "$python" --version; echo "uv $UV_VERSION"; }
want=$(stamp_inputs | sha256sum | cut -d' ' -f1)
have=$(cat .venv/.continuity-stamp 2>/dev/null || true)
if [ "$want" != "$have" ] || [ ! -x .venv/bin/python ]; then
    say "creating .venv from requirements.txt (under a minute with uv; a few with pip)"
    [ -x .venv/bin/python ] || "$python" -m venv .venv
    .venv/bin/pip install -q --upgrade pip >/dev/null || die 14 "pip upgrade failed"
    # uv installs the pinned set in seconds where pip's resolver and installer take about a minute and a half
    # (measured on this machine: 8 s with an empty uv cache against pip's 95 s with its wheels cached), and
    # `make test` on a fresh clone pays for it every time. pip stays the way where uv cannot be had.
    if .venv/bin/pip install -q "uv==$UV_VERSION" >/dev/null 2>&1; then
        install=(.venv/bin/uv pip install -q --python .venv/bin/python)
        check=(.venv/bin/uv pip check -q --python .venv/bin/python)
    else
        say "uv $UV_VERSION could not be installed; installing with pip (slower)"
        install=(.venv/bin/pip install -q)
        check=(.venv/bin/pip check)
    fi
    "${install[@]}" -r requirements.txt || die 14 "installing requirements.txt failed (${install[0]})"
    "${install[@]}" --no-deps -e . || die 14 "installing the project (-e .) failed (${install[0]})"
    "${check[@]}" || die 14 "the venv has conflicting requirements (${check[0]} check)"
    echo "$want" > .venv/.continuity-stamp
fi
say "ready: $(.venv/bin/python --version), PostgreSQL $(ls /usr/lib/postgresql | sort -n | tail -1), $(pgbouncer --version 2>/dev/null | head -1 || /usr/sbin/pgbouncer --version | head -1)"
