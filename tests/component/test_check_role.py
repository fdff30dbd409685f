"""The role a drill reads a rebuilt copy as (#30 item 11), on one real PostgreSQL: no superuser, reads every
table, cannot run a program, and logs in even where the source's pg_hba.conf admits only the superuser."""

from __future__ import annotations

import psycopg
import pytest

from continuity.restore.engine import CHECK_ROLE, scratch_cluster


def test_the_check_role_reads_the_applications_tables_and_runs_no_program() -> None:
    with scratch_cluster(prefix="continuity-checkrole-") as scratch:
        cluster = scratch.cluster
        cluster.psql("CREATE ROLE app LOGIN; CREATE DATABASE app OWNER app;")
        cluster.psql("SET ROLE app; CREATE TABLE videos (id int); INSERT INTO videos VALUES (1), (2);", dbname="app")
        # As a production source's rules might say: nobody but the superuser over the socket.
        cluster.user.write_file(cluster.data_dir / "pg_hba.conf", "local all postgres trust\n")
        cluster.psql("SELECT pg_reload_conf();")

        assert scratch.add_check_role() == CHECK_ROLE
        assert scratch.add_check_role() == CHECK_ROLE, "a second call (the PITR copy of the same drill) is harmless"
        with scratch.connect("app", user=CHECK_ROLE) as conn:
            assert conn.execute("SELECT count(*) FROM videos").fetchone()[0] == 2
            assert conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()[0] is False
            with pytest.raises(psycopg.errors.InsufficientPrivilege, match="pg_execute_server_program"):
                conn.execute("COPY (SELECT 1) TO PROGRAM 'true'")
        with pytest.raises(psycopg.OperationalError):
            scratch.connect("app", user="app").close()  # the source's rules still hold for every other role
