"""`nexudus_commands`: what can be run on each entity, so rules can be checked and the UI shows it."""

import datetime as dt

import dagster as dg

from nexudus_assets.assets.metadata import table_metadata
from nexudus_assets.assets.raw import GROUP
from nexudus_assets.names import API, WAREHOUSE, AccountNames
from nexudus_assets.nexudus import ENTITIES
from nexudus_assets.warehouse.catalogue import CATALOGUE_TABLE, store_catalogue

NAME = "nexudus_commands"


def build_command_catalogue(names: AccountNames) -> dg.AssetsDefinition:
    @dg.asset(
        name=NAME,
        key_prefix=names.key_prefix,
        group_name=names.name(GROUP),
        description=(
            "The command catalogue of every entity (`GET <entity>/commands`): keys, the records each takes, "
            "and the parameters it requires. Command rules are checked against it."
        ),
        kinds={"nexudus", "duckdb"},
        owners=["team:data"],
        metadata={"dagster/table_name": CATALOGUE_TABLE},
        required_resource_keys=names.resource_keys(API, WAREHOUSE),
    )
    def command_catalogue(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        nexudus_api = names.api(context)
        with nexudus_api.get_client() as client:
            catalogue = {entity: client.commands(entity) for entity in ENTITIES}
        with names.warehouse(context).get_connection() as conn:
            store_catalogue(conn, catalogue, dt.datetime.now(dt.UTC).replace(tzinfo=None), nexudus_api.account())
            metadata = table_metadata(conn, CATALOGUE_TABLE)
        return dg.MaterializeResult(
            metadata={**metadata, **{f"commands_{entity.table}": len(catalogue[entity]) for entity in ENTITIES}}
        )

    return command_catalogue
