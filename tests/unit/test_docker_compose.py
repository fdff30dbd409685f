"""docker-compose.yaml is parsed and checked for structure (no Docker engine runs on these machines)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import psycopg
import pytest
import yaml

from continuity_lab.controlplane import worker_regions
from continuity.dag_defaults import region_queue
from continuity.policy.loading import load_policy

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yaml").read_text())
SERVICES = COMPOSE["services"]
LIBPQ_KEYWORDS = {option.keyword.decode() for option in psycopg.pq.Conninfo.get_defaults()}
WORKERS = [f"airflow-worker-{region}" for region in worker_regions(load_policy())]
AIRFLOW_SERVICES = ["airflow-apiserver", "airflow-scheduler", "airflow-dag-processor", "airflow-triggerer", *WORKERS]


def _depends(service: dict) -> list[str]:
    depends = service.get("depends_on", [])
    return list(depends) if isinstance(depends, (dict, list)) else []


def test_distributed_airflow_services_exist() -> None:
    for name in [*AIRFLOW_SERVICES, "airflow-init", "redis", "airflow-metadata"]:
        assert name in SERVICES, name
    assert SERVICES["airflow-scheduler"]["environment"]["AIRFLOW__CORE__EXECUTOR"] == "CeleryExecutor"
    build = SERVICES["airflow-scheduler"]["build"]
    assert "FROM apache/airflow:3.3" in (ROOT / build["context"] / build["dockerfile"]).read_text()


def test_a_celery_worker_per_region_on_its_queue_and_the_rest_in_the_control_region() -> None:
    """What `continuity run --distributed` starts (continuity_lab.controlplane), in the compose file's terms."""
    policy = load_policy()
    for region in worker_regions(policy):
        command = SERVICES[f"airflow-worker-{region}"]["command"].split()
        assert command[:2] == ["celery", "worker"]
        assert command[command.index("--queues") + 1] == region_queue(region), region
    environment = SERVICES["airflow-scheduler"]["environment"]
    assert environment["AIRFLOW__OPERATORS__DEFAULT_QUEUE"] == region_queue(policy.control_region)
    assert policy.control_region != policy.topology.primary_region
    assert "airflow-worker" not in SERVICES, "a worker on no region's queue would run region-pinned tasks anywhere"


def test_protected_system_counterparts_exist() -> None:
    for name in ["pg-primary", "pg-sync1", "pg-dr", "pgbouncer", "minio-us-east-1", "minio-us-west-2"]:
        assert name in SERVICES, name



def _command(service: dict) -> str:
    command = service.get("command", "")
    return " ".join(command) if isinstance(command, list) else str(command)


def test_the_primary_initialises_without_waiting_for_a_synchronous_standby() -> None:
    # On the command line, the entrypoint's temporary init server waited for a standby that cannot exist yet.
    for name, service in SERVICES.items():
        assert "synchronous_standby_names" not in _command(service), name
    init = (ROOT / "include/docker/init-primary.sh").read_text()
    assert "synchronous_standby_names = 'ANY 1 (sync1, sync2)'\" > \"$PGDATA/continuity.conf\"" in init
    assert "include_if_exists = 'continuity.conf'" in init


def test_standbys_keep_their_upstream_where_node_control_rewrites_it_and_no_password_on_a_command_line() -> None:
    script = (ROOT / "include/docker/start-standby.sh").read_text()
    assert "continuity.conf" in script and "passfile=" in script and "standby.signal" in script
    assert " -R " not in script, "pg_basebackup -R would put the upstream (and its password) in postgresql.auto.conf"
    exec_line = next(line for line in script.splitlines() if line.startswith("exec postgres"))
    assert "primary_conninfo" not in exec_line and "PASSWORD" not in exec_line
    for name, service in SERVICES.items():
        assert "password=" not in _command(service).lower(), f"{name}: a password on a command line"


def _mounts(service: dict) -> dict[str, str]:
    return {v.split(":")[1]: v.split(":")[0] for v in service.get("volumes", [])}


def test_the_wal_spool_is_shared_by_everything_that_writes_or_ships_it_and_owned_for_them() -> None:
    spool = "/var/lib/postgresql/wal-spool"
    # Every node: a standby promoted by failover archives into the same spool, with the same script.
    for name in ["pg-primary", "pg-sync1", "pg-dr", "wal-pusher", *AIRFLOW_SERVICES]:
        assert _mounts(SERVICES[name]).get(spool) == "wal-spool", f"{name} does not mount the spool at {spool}"
    for name in ["pg-primary", "pg-sync1", "pg-dr"]:
        assert _mounts(SERVICES[name]).get("/opt/continuity/archive-wal.sh") == "./include/scripts/archive-wal.sh", name
    init = SERVICES["wal-spool-init"]
    assert _mounts(init).get(spool) == "wal-spool" and init["user"] == "root"
    assert f"chown postgres:0 {spool}" in _command(init) and f"chmod 2770 {spool}" in _command(init)
    for name in ["pg-primary", "pg-sync1", "pg-dr", *AIRFLOW_SERVICES]:
        assert SERVICES[name]["depends_on"]["wal-spool-init"]["condition"] == "service_completed_successfully", name
    # The files archive_command queues are readable by the spool's group (Airflow's user is in group 0).
    assert 'chmod 0640 "$tmp"' in (ROOT / "include/scripts/archive-wal.sh").read_text()


def _listen_port(name: str) -> int:
    service = SERVICES[name]
    if name == "pgbouncer":
        return int(service["environment"]["LISTEN_PORT"])
    node_image = service.get("build", {}).get("dockerfile") == "include/docker/node/Dockerfile"  # FROM postgres:15
    assert service["image"].startswith("postgres:") or node_image, name
    return 5432


@pytest.mark.parametrize("name", AIRFLOW_SERVICES)
def test_every_postgres_connection_names_the_port_its_service_listens_on(name: str) -> None:
    for key, value in SERVICES[name]["environment"].items():
        if key.startswith("AIRFLOW_CONN_"):
            conn = json.loads(re.sub(r"\$\{[^}]+\}", "secret", value))
            if conn["conn_type"] == "postgres":
                assert conn["port"] == _listen_port(conn["host"]), f"{key}: port {conn['port']}"
    published = SERVICES["pgbouncer"]["ports"][0].split(":")
    assert int(published[1]) == _listen_port("pgbouncer")


def test_the_pgbouncer_admin_user_is_in_its_userlist_with_a_password() -> None:
    policy = load_policy()
    admin = json.loads(re.sub(r"\$\{[^}]+\}", "secret", SERVICES["airflow-scheduler"]["environment"][
        f"AIRFLOW_CONN_{policy.topology.entry_point.admin_conn_id.upper()}"]))
    assert admin["login"] in SERVICES["pgbouncer"]["environment"]["ADMIN_USERS"].split(",")
    init = SERVICES["pgbouncer-init"]
    assert f'"{admin["login"]}" "%s"' in _command(init) and "/etc/pgbouncer/userlist.txt" in _command(init)
    assert "umask 077" in _command(init)
    assert init["environment"]["ADMIN_PASSWORD"] == "${CONTINUITY_PG_PASSWORD:?}"
    assert admin["password"] == "secret"  # the same ${CONTINUITY_PG_PASSWORD} as the userlist's
    assert _mounts(init)["/etc/pgbouncer"] == _mounts(SERVICES["pgbouncer"])["/etc/pgbouncer"]
    assert SERVICES["pgbouncer"]["depends_on"]["pgbouncer-init"]["condition"] == "service_completed_successfully"


def test_the_airflow_image_has_the_postgresql_server_binaries_of_the_protected_cluster() -> None:
    build = SERVICES["airflow-scheduler"]["build"]
    dockerfile = (ROOT / build["context"] / build["dockerfile"]).read_text()
    major = SERVICES["pg-primary"]["image"].split(":")[1]
    assert f"postgresql-{major}" in dockerfile and f"/usr/lib/postgresql/{major}/bin" in dockerfile
    assert "pip install --no-cache-dir -r /opt/airflow/requirements.txt" in dockerfile
    image = SERVICES["airflow-scheduler"]["image"]
    assert SERVICES["wal-pusher"]["image"] == image, "the WAL pusher runs the same code"
    for name in AIRFLOW_SERVICES:
        assert "_PIP_ADDITIONAL_REQUIREMENTS" not in SERVICES[name]["environment"]


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_referenced_service_exists(name: str) -> None:
    for dependency in _depends(SERVICES[name]):
        assert dependency in SERVICES, f"{name} depends on unknown service {dependency}"


@pytest.mark.parametrize("name", sorted(SERVICES))
def test_every_mounted_project_file_exists(name: str) -> None:
    for volume in SERVICES[name].get("volumes", []):
        source = volume.split(":")[0]
        if source.startswith("./"):
            assert (ROOT / source).exists(), f"{name} mounts missing {source}"
        else:
            assert source in COMPOSE["volumes"], f"{name} uses undeclared volume {source}"


@pytest.mark.parametrize("name", AIRFLOW_SERVICES)
def test_airflow_services_mount_the_project_and_define_every_connection(name: str) -> None:
    service = SERVICES[name]
    mounts = {v.split(":")[1] for v in service["volumes"]}
    assert {"/opt/airflow/dags", "/opt/airflow/plugins", "/opt/airflow/include"} <= mounts
    policy = load_policy()
    needed = {n.conn_id for n in policy.topology.nodes} | {n.backup_conn_id for n in policy.topology.nodes}
    entry = policy.topology.entry_point
    needed |= {entry.conn_id, entry.admin_conn_id, entry.config_conn_id}
    needed |= {loc.conn_id for loc in policy.storage.locations if loc.conn_id}
    needed.add("continuity_keyring")
    env = service["environment"]
    for conn_id in needed:
        key = f"AIRFLOW_CONN_{conn_id.upper()}"
        assert key in env, f"{name}: connection {conn_id} is not defined"
        # The JSON form parses once the ${...} secrets are substituted.
        conn = json.loads(re.sub(r"\$\{[^}]+\}", "secret", env[key]))
        assert conn["conn_type"] in {"postgres", "aws", "generic"}
        if conn["conn_type"] == "postgres":
            assert conn["host"] in SERVICES, f"{conn_id} points at unknown service {conn['host']}"
            # The provider hands every extra to libpq, which refuses keys it does not know.
            assert set(conn.get("extra", {})) <= LIBPQ_KEYWORDS, f"{conn_id}: extras libpq rejects"
        if conn["conn_type"] == "aws":
            host = re.match(r"http://([^:]+):", conn["extra"]["endpoint_url"]).group(1)
            assert host in SERVICES


def test_no_secret_is_written_in_the_file() -> None:
    text = (ROOT / "docker-compose.yaml").read_text()
    for key in ["CONTINUITY_PG_PASSWORD", "CONTINUITY_APP_PASSWORD", "CONTINUITY_S3_SECRET", "CONTINUITY_KEK"]:
        assert f"${{{key}:?" in text
    assert not re.search(r'"password": "(?!\$\{)', text), "passwords must come from the environment"


def test_wal_is_queued_bounded_and_pushed_from_the_shared_spool() -> None:
    policy = load_policy()
    # In postgresql.auto.conf (the init script), so that node control's restarts keep them.
    settings = (ROOT / "include/docker/init-primary.sh").read_text()
    assert (f"archive_command = '/bin/sh /opt/continuity/archive-wal.sh /var/lib/postgresql/wal-spool %p %f "
            f"{policy.backups.incremental.max_queued}'") in settings
    assert f"archive_timeout = '{int(policy.backups.incremental.archive_timeout.total_seconds())}s'" in settings
    assert "ALTER SYSTEM SET archive_mode = 'on'" in settings and "ALTER SYSTEM SET wal_log_hints = 'on'" in settings
    # A lost standby's slot must not fill the primary's disk: the policy's bound, in PostgreSQL's unit.
    assert f"max_slot_wal_keep_size = '{policy.health_monitor.max_slot_wal_keep_setting}MB'" in settings
    assert SERVICES["pg-primary"]["command"] == ["postgres"], "no setting on a command line node control cannot repeat"
    pusher = SERVICES["wal-pusher"]
    assert "wal pusher --spool /var/lib/postgresql/wal-spool" in " ".join(pusher["command"])
    spool_mounts = {v.split(":")[0] for v in pusher["volumes"]} & {v.split(":")[0] for v in SERVICES["pg-primary"]["volumes"]}
    assert "wal-spool" in spool_mounts, "the pusher reads the spool the primary's archive_command writes"
    for location in policy.storage.locations:
        if location.kind == "s3":
            assert f"CONTINUITY_S3_ENDPOINT_{location.region.upper().replace('-', '_')}" in pusher["environment"]


def test_airflow_has_users_with_roles_from_a_secret_never_a_shared_admin() -> None:
    from continuity.policy.access import AUTH_MANAGER

    environment = COMPOSE["x-airflow-common"]["environment"]
    assert environment["AIRFLOW__CORE__AUTH_MANAGER"] == AUTH_MANAGER
    assert not any("SIMPLE_AUTH" in key for key in environment)
    init = COMPOSE["services"]["airflow-init"]
    assert "python -m continuity.auth.fab < /run/secrets/continuity_users" in init["command"][-1]
    assert "continuity_users" in init["secrets"] and "continuity_users" in COMPOSE["secrets"]
    assert COMPOSE["secrets"]["continuity_users"]["file"].startswith("${CONTINUITY_USERS_FILE:?")


NODE_SERVICES = {"primary": "pg-primary", "sync1": "pg-sync1", "sync2": "pg-sync2", "dr": "pg-dr"}


def _compose_policy(monkeypatch: pytest.MonkeyPatch):
    """The policy as the compose file's Airflow reads it: include/policy.yaml under its overlay."""
    environment = COMPOSE["x-airflow-common"]["environment"]
    overlay = environment["CONTINUITY_POLICY_OVERLAY"]
    assert overlay.startswith("/opt/airflow/include/")
    monkeypatch.setenv("CONTINUITY_POLICY_OVERLAY", str(ROOT / "include" / overlay.removeprefix("/opt/airflow/include/")))
    return load_policy()


def test_failover_in_compose_reaches_every_node_over_ssh_and_needs_a_second_person(monkeypatch) -> None:
    policy = _compose_policy(monkeypatch)
    assert policy.topology.node_control == "ssh" and policy.failover.approval.required
    environment = COMPOSE["x-airflow-common"]["environment"]
    for node in policy.topology.nodes:
        service = SERVICES[NODE_SERVICES[node.name]]
        assert node.host.address == NODE_SERVICES[node.name]
        conn = json.loads(re.sub(r"\$\{[^}]+\}", "secret", environment[f"AIRFLOW_CONN_{node.host.ssh_conn_id.upper()}"]))
        assert (conn["conn_type"], conn["host"], conn["login"]) == ("ssh", NODE_SERVICES[node.name], "postgres")
        assert conn["extra"]["key_file"] == "/run/secrets/continuity_ssh_key" and conn["extra"]["host_key"]
        # The node runs the image whose sshd keeps the container up while node control stops the server.
        assert service["build"]["dockerfile"] == "include/docker/node/Dockerfile" and service["init"] is True
        assert set(service["secrets"]) == {"continuity_node_authorized_keys", "continuity_node_host_key"}
        assert "user" not in service, "the entrypoint starts sshd as root and the server as postgres"
        # Where the overlay says the data directory is, the service's PGDATA (the image's default otherwise).
        assert node.host.data_directory == service["environment"].get("PGDATA", "/var/lib/postgresql/data")
        # pg_rewind and replication authenticate from ~/.pgpass, which the entrypoint writes for both users.
        assert {"CONTINUITY_REPLICATION_PASSWORD", "CONTINUITY_PG_PASSWORD"} <= set(service["environment"])
        assert node.host.rewind_user in ("postgres", "replicator")
    for name in [*AIRFLOW_SERVICES, "airflow-init"]:
        assert "continuity_ssh_key" in SERVICES[name]["secrets"], name
    assert {"continuity_ssh_key", "continuity_node_authorized_keys", "continuity_node_host_key"} <= set(COMPOSE["secrets"])


def test_the_node_image_keeps_sshd_up_and_starts_postgres_beside_it() -> None:
    dockerfile = (ROOT / "include/docker/node/Dockerfile").read_text()
    assert "FROM postgres:15" in dockerfile and "openssh-server" in dockerfile
    entrypoint = (ROOT / "include/docker/node/entrypoint.sh").read_text()
    lines = [line.strip() for line in entrypoint.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert lines[-1] == "exec /usr/sbin/sshd -D -e", "sshd, not PostgreSQL, keeps the container running"
    assert "AllowUsers postgres" in entrypoint and "PasswordAuthentication no" in entrypoint
    assert "/run/secrets/continuity_node_authorized_keys" in entrypoint and "/run/secrets/continuity_node_host_key" in entrypoint
    assert '*:*:*:replicator:%s\\n*:*:*:postgres:%s\\n' in entrypoint
    assert "gosu postgres" in entrypoint and 'docker-entrypoint.sh "$@" &' in entrypoint
    assert '> "$home/.pgpass"' not in (ROOT / "include/docker/start-standby.sh").read_text(), \
        "the standby script leaves the entrypoint's ~/.pgpass as it is"


def test_a_node_following_a_new_primary_fetches_archived_wal_from_the_pushers_socket(monkeypatch) -> None:
    policy = _compose_policy(monkeypatch)
    pusher = SERVICES["wal-pusher"]
    command = " ".join(pusher["command"]).split()
    socket = command[command.index("--socket") + 1]
    # Owned by the node image's postgres (postgres:15 runs it as uid 999): the pusher must be able to chown.
    assert command[command.index("--socket-owner") + 1] == "999:999" and pusher["user"] == "root"
    socket_dir = str(Path(socket).parent)
    assert _mounts(pusher).get(socket_dir) == "wal-fetch" and "wal-fetch" in COMPOSE["volumes"]
    for node in policy.topology.nodes:
        service = SERVICES[NODE_SERVICES[node.name]]
        assert _mounts(service).get(socket_dir) == "wal-fetch", node.name
        assert _mounts(service).get("/opt/continuity/fetch-wal.sh") == "./include/scripts/fetch-wal.sh", node.name
        assert node.host.restore_command == f"/bin/sh /opt/continuity/fetch-wal.sh {socket} %f %p", node.name
    # fetch-wal.sh asks the socket with curl, which the node image installs.
    assert "curl --silent --fail" in (ROOT / "include/scripts/fetch-wal.sh").read_text()
    assert " curl" in (ROOT / "include/docker/node/Dockerfile").read_text()
