"""Great Expectations checks of a restored database, derived from the manifest and the restored catalog.

Every restore is checked for: each table's exact row count from the manifest, the schema fingerprint,
primary keys unique and not null, every foreign key resolving, and freshness (the newest timestamp
close to the backup time, from the suite file in include/expectations/). The GE context is
ephemeral: nothing is written outside the run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
import yaml

from continuity.backup.full import schema_fingerprint, table_fingerprints
from continuity.storage.manifest import Manifest
from continuity.policy.model import parse_duration
from continuity.policy.project import include_dir

log = logging.getLogger(__name__)

_PRIMARY_KEYS = """
    SELECT c.relname, a.attname FROM pg_index i
    JOIN pg_class c ON c.oid = i.indrelid JOIN pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = ANY(i.indkey)
    WHERE i.indisprimary AND n.nspname = 'public' ORDER BY 1, 2
"""
_FOREIGN_KEYS = """
    SELECT c.relname, a.attname, rc.relname, ra.attname, con.conname
    FROM pg_constraint con
    JOIN pg_class c ON c.oid = con.conrelid JOIN pg_namespace n ON n.oid = c.relnamespace
    JOIN pg_class rc ON rc.oid = con.confrelid
    JOIN pg_attribute a ON a.attrelid = c.oid AND a.attnum = con.conkey[1]
    JOIN pg_attribute ra ON ra.attrelid = rc.oid AND ra.attnum = con.confkey[1]
    WHERE con.contype = 'f' AND n.nspname = 'public' AND array_length(con.conkey, 1) = 1 ORDER BY 1, 5
"""


@dataclass(frozen=True)
class CheckResult:
    table: str
    expectation: str
    success: bool
    observed: Any
    description: str


def load_suite(database: str) -> dict[str, Any]:
    path = include_dir() / "expectations" / f"{database}.yaml"
    return yaml.safe_load(path.read_text()) if path.exists() else {}


def validate_restored(
    *, manifest: Manifest, socket_dir: Path, port: int, database: str, tables: list[str] | None = None,
    suite: dict[str, Any] | None = None, exact: bool = True, user: str = "postgres",
) -> list[CheckResult]:
    """Run the checks on the restored `database`; returns one result per expectation (failures included).

    `exact=False` is for a database recovered to a later point than `manifest` (a drill): the row
    counts and the schema fingerprint may legitimately have moved on; keys, references and
    freshness are still checked.
    """
    import great_expectations as gx

    suite = load_suite(manifest.source.get("database", database)) if suite is None else suite
    counts: dict[str, int] = {k.split(".", 1)[-1]: v for k, v in manifest.details.get("row_counts", {}).items()}
    wanted = tables or sorted(counts)
    results: list[CheckResult] = []
    conninfo = f"host={socket_dir} port={port} user={user} dbname={database}"
    with psycopg.connect(conninfo) as conn:
        keys = conn.execute(_PRIMARY_KEYS).fetchall()
        foreign = conn.execute(_FOREIGN_KEYS).fetchall()
        if tables is None and exact:
            fingerprint = schema_fingerprint(conn)
            expected = manifest.details.get("schema_fingerprint")
            results.append(CheckResult("(schema)", "schema_fingerprint_matches", fingerprint == expected,
                                       fingerprint[:16], f"schema fingerprint equals the manifest's {str(expected)[:16]}…"))
        elif tables is not None and exact and not manifest.details.get("table_fingerprints"):
            log.warning("backup %s predates per-table schema fingerprints: the sample's schema is not compared",
                        manifest.backup_id)
        elif tables is not None and exact:
            # A sample holds only some tables: compare each one's columns and constraints.
            restored = {k.split(".", 1)[-1]: v for k, v in table_fingerprints(conn).items()}
            expected_by_table = {k.split(".", 1)[-1]: v for k, v in manifest.details["table_fingerprints"].items()}
            for table in tables:
                got, want = restored.get(table, "(missing)"), expected_by_table.get(table)
                results.append(CheckResult(table, "table_schema_matches", got == want, got[:16],
                                           f"{table}'s columns and constraints match the manifest's schema"))
    context = gx.get_context(mode="ephemeral")
    source = context.data_sources.add_sql(
        name="restored", connection_string=f"postgresql+psycopg://{user}@/{database}?host={socket_dir}&port={port}")
    backup_time: datetime = manifest.finished_at
    for table in wanted:
        expectations: list[Any] = [gx.expectations.ExpectTableRowCountToEqual(
            value=counts[table], description=f"{table} has exactly the {counts[table]:,} rows of the manifest")] \
            if exact else []
        for key_table, column in keys:
            if key_table == table:
                expectations.append(gx.expectations.ExpectColumnValuesToBeUnique(
                    column=column, description=f"primary key {table}.{column} is unique"))
                expectations.append(gx.expectations.ExpectColumnValuesToNotBeNull(
                    column=column, description=f"primary key {table}.{column} is not null"))
        for fk_table, column, ref_table, ref_column, name in foreign:
            if fk_table == table and (tables is None or ref_table in wanted):
                expectations.append(gx.expectations.UnexpectedRowsExpectation(
                    # {batch} is already an aliased subquery; NOT IN is safe as the referenced key is never null.
                    # Names come from the restored catalog (data of the application): always quoted.
                    unexpected_rows_query=(f"SELECT {_ident(column)} FROM {{batch}} WHERE {_ident(column)} IS NOT NULL "
                                           f"AND {_ident(column)} NOT IN (SELECT {_ident(ref_column)} FROM "
                                           f"public.{_ident(ref_table)})"),
                    description=f"foreign key {name}: every {table}.{column} resolves to {ref_table}.{ref_column}"))
        fresh = suite.get("freshness", {}).get(table)
        if fresh:
            oldest = backup_time - parse_duration(fresh["tolerance"])
            expectations.append(gx.expectations.ExpectColumnMaxToBeBetween(
                column=fresh["column"], min_value=oldest.isoformat(),
                description=f"newest {table}.{fresh['column']} is within {fresh['tolerance']} before the backup time"))
        asset = source.add_table_asset(name=table, table_name=table, schema_name="public")
        gx_suite = context.suites.add(gx.ExpectationSuite(name=f"restored.{table}", expectations=expectations))
        definition = context.validation_definitions.add(gx.ValidationDefinition(
            name=f"restored.{table}", data=asset.add_batch_definition_whole_table("whole"), suite=gx_suite))
        outcome = definition.run()
        for result in outcome.results:
            config = result.expectation_config
            observed = result.result.get("observed_value", result.result.get("unexpected_count"))
            description = config.description or ""
            if result.exception_info and any(v.get("raised_exception") for v in result.exception_info.values()
                                             if isinstance(v, dict)):
                description += " (the check itself raised an error)"
            results.append(CheckResult(table, config.type, bool(result.success), _plain(observed), description))
    return results


def _ident(name: str) -> str:
    return sql.Identifier(name).as_string()


def _plain(value: Any) -> Any:
    if isinstance(value, (int, float, str, bool)) or value is None:
        return value
    return str(value)
