"""PostgresNodeHook hands the core exactly what the provider's own get_conn() would connect with."""

from __future__ import annotations

import json

import pytest
from psycopg.conninfo import conninfo_to_dict

from continuity.hooks.postgres_node import PostgresNodeHook


@pytest.fixture
def node_connection(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("AIRFLOW_CONN_NODE_WITH_TLS", json.dumps({
        "conn_type": "postgres", "host": "db.example.internal", "port": 6543, "login": "continuity_backup",
        "password": "s3cret-pw", "schema": "postgres",
        "extra": {"sslmode": "verify-full", "sslrootcert": "/etc/ssl/dr-ca.pem", "options": "-c statement_timeout=0",
                  "target_session_attrs": "read-write", "keepalives_idle": "30", "cursor": "dictcursor"},
    }))
    return "node_with_tls"


def test_the_nodes_conninfo_keeps_every_libpq_setting_of_the_connection(node_connection: str) -> None:
    node = PostgresNodeHook(postgres_conn_id=node_connection, node_name="dr").get_node()
    params = conninfo_to_dict(node.conninfo)
    assert node.name == "dr"
    assert params == {"host": "db.example.internal", "port": "6543", "user": "continuity_backup",
                      "password": "s3cret-pw", "dbname": "postgres", "sslmode": "verify-full",
                      "sslrootcert": "/etc/ssl/dr-ca.pem", "options": "-c statement_timeout=0",
                      "target_session_attrs": "read-write", "keepalives_idle": "30"}


def test_describing_the_connection_opens_none(node_connection: str) -> None:
    hook = PostgresNodeHook(postgres_conn_id=node_connection)
    hook.connection_params()  # db.example.internal does not resolve: a connection attempt would raise
    assert hook.conn is None


def test_backup_tools_get_the_settings_with_no_secret_on_their_command_line(node_connection: str) -> None:
    address = PostgresNodeHook(postgres_conn_id=node_connection).get_node_address("dr")
    assert (address.host, address.port, address.user) == ("db.example.internal", 6543, "continuity_backup")
    env = address.tool_env()
    assert env == {"PGPASSWORD": "s3cret-pw", "PGSSLMODE": "verify-full", "PGSSLROOTCERT": "/etc/ssl/dr-ca.pem",
                   "PGOPTIONS": "-c statement_timeout=0", "PGTARGETSESSIONATTRS": "read-write"}
    # keepalives_idle has no environment variable: it travels in --dbname, without the password.
    assert conninfo_to_dict(address.tool_dbname("app")) == {"dbname": "app", "keepalives_idle": "30"}
    assert conninfo_to_dict(address.conninfo("app"))["password"] == "s3cret-pw"


def test_a_secret_libpq_reads_from_no_environment_variable_is_refused_for_tools(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_CONN_NODE_SSLPASS", json.dumps({
        "conn_type": "postgres", "host": "h", "login": "u", "extra": {"sslpassword": "key-pass"}}))
    address = PostgresNodeHook(postgres_conn_id="node_sslpass").get_node_address("n")
    with pytest.raises(ValueError, match="sslpassword is a secret .* command line; HINT"):
        address.tool_dbname("app")
