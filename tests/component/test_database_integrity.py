"""The daily database integrity check on one real PostgreSQL (#31 item 9: `database_integrity` ran no database
check): a byte flipped in a table's page on disk is caught and named; an intact database passes."""

from __future__ import annotations

import os

from continuity.postgres.integrity import IntegrityCheckError, check_integrity
from continuity.postgres.node import PostgresNode

from tests.support.scratch import empty_cluster


def test_a_flipped_byte_in_a_table_page_is_caught_and_named_and_an_intact_database_passes() -> None:
    with empty_cluster() as cluster:
        def node_for(database: str) -> PostgresNode:
            return PostgresNode(name="scratch", conninfo=f"host={cluster.socket_dir} port={cluster.port} "
                                                          f"user=postgres dbname={database}")

        try:
            check_integrity(node_for, ["postgres"], node_name="scratch")
            raise AssertionError("the check ran without amcheck")
        except IntegrityCheckError as exc:
            assert "has no amcheck extension: nothing was checked. HINT: on the primary, CREATE EXTENSION" in str(exc)
        cluster.psql("CREATE EXTENSION amcheck; CREATE TABLE accounts (id int PRIMARY KEY, owner text); "
                     "INSERT INTO accounts SELECT g, md5(g::text) FROM generate_series(1, 2000) g; "
                     "CREATE TABLE orders (id int PRIMARY KEY); INSERT INTO orders SELECT generate_series(1, 100); "
                     "CHECKPOINT")
        intact = check_integrity(node_for, ["postgres"], node_name="scratch")
        assert intact.ok and intact.tables >= 2 and intact.indexes >= 2, intact.summary()
        assert intact.summary().startswith("intact: ")

        relative = cluster.psql("SELECT pg_relation_filepath('accounts')").strip()
        cluster.stop(mode="fast")
        path = cluster.data_dir / relative
        with open(path, "r+b") as data:  # the tuple area of block 0, past the page header
            data.seek(6000)
            byte = data.read(1)
            data.seek(6000)
            data.write(bytes([byte[0] ^ 0xFF]))
            data.flush()
            os.fsync(data.fileno())
        cluster.start()
        corrupt = check_integrity(node_for, ["postgres"], node_name="scratch")
        # The table, and its index whose heapallindexed pass reads the same page; `orders` is intact.
        assert [(p.relation, p.kind) for p in corrupt.problems] == [("accounts", "table"), ("accounts_pkey", "index")]
        assert "checksum" in corrupt.problems[0].detail or "invalid page" in corrupt.problems[0].detail
        assert corrupt.summary().startswith("CORRUPT: 2 relation(s)") and "postgres.accounts (table)" in corrupt.summary()
