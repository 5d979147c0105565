"""`raw.commands`: the command catalogue per entity, as last fetched from the API."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Mapping, Sequence

import duckdb

from nexudus_assets.nexudus import CommandDescription, Entity
from nexudus_assets.nexudus.account import Account
from nexudus_assets.warehouse.bookkeeping import claim_for_account, refuse_other_account
from nexudus_assets.warehouse.schema import SCHEMA, ensure_schema, table_exists, transaction

CATALOGUE_TABLE = f"{SCHEMA}.commands"


def store_catalogue(
    conn: duckdb.DuckDBPyConnection,
    catalogue: Mapping[Entity, Sequence[CommandDescription]],
    now: dt.datetime,
    account: Account,
) -> None:
    """Replace the whole catalogue of `account` in one transaction; another account's warehouse is refused."""
    rows = [
        (
            entity.name,
            command.key,
            command.name,
            command.applies_only_to_one_entity,
            command.applies_only_to_two_entities,
            command.applies_only_to_multiple_entities,
            command.needs_entities_to_run,
            command.order,
            json.dumps([{"Name": p.name, "Type": p.type} for p in command.requires_parameters]),
            now,
        )
        for entity, commands in catalogue.items()
        for command in commands
    ]
    refuse_other_account(conn, account)
    # The schema first: a warehouse of an earlier version moves its tables, this one included.
    ensure_schema(conn)
    with transaction(conn):
        claim_for_account(conn, account)
        conn.execute(
            f"""CREATE OR REPLACE TABLE {CATALOGUE_TABLE} (
                entity VARCHAR NOT NULL, key VARCHAR NOT NULL, name VARCHAR,
                applies_only_to_one_entity BOOLEAN, applies_only_to_two_entities BOOLEAN,
                applies_only_to_multiple_entities BOOLEAN, needs_entities_to_run BOOLEAN,
                "order" INTEGER, requires_parameters JSON, fetched_at TIMESTAMP NOT NULL,
                PRIMARY KEY (entity, key))"""
        )
        if rows:
            conn.executemany(f"INSERT INTO {CATALOGUE_TABLE} VALUES (?, ?, ?, ?, ?, ?, ?, ?, CAST(? AS JSON), ?)", rows)


def read_catalogue(conn: duckdb.DuckDBPyConnection, entity: Entity) -> list[CommandDescription] | None:
    """The stored catalogue of one entity; None when it was never fetched."""
    if not table_exists(conn, CATALOGUE_TABLE):
        return None
    rows = conn.execute(
        f"""SELECT key, name, applies_only_to_one_entity, applies_only_to_two_entities,
                   applies_only_to_multiple_entities, needs_entities_to_run, "order", requires_parameters
            FROM {CATALOGUE_TABLE} WHERE entity = ? ORDER BY "order", key""",
        [entity.name],
    ).fetchall()
    return [
        CommandDescription(
            key=key,
            name=name,
            applies_only_to_one_entity=one,
            applies_only_to_two_entities=two,
            applies_only_to_multiple_entities=many,
            needs_entities_to_run=needs,
            order=order,
            requires_parameters=json.loads(parameters),
        )
        for key, name, one, two, many, needs, order, parameters in rows
    ]
