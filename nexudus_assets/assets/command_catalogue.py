"""`nexudus_commands`: what can be run on each entity, so rules can be checked and the UI shows it."""

import datetime as dt

import dagster as dg

from nexudus_assets.assets.metadata import table_metadata
from nexudus_assets.assets.raw import GROUP
from nexudus_assets.nexudus import ENTITIES
from nexudus_assets.resources import NexudusApiResource, WarehouseResource
from nexudus_assets.warehouse.catalogue import CATALOGUE_TABLE, store_catalogue


@dg.asset(
    name="nexudus_commands",
    group_name=GROUP,
    description=(
        "The command catalogue of every entity (`GET <entity>/commands`): keys, the records each takes, "
        "and the parameters it requires. Command rules are checked against it."
    ),
    kinds={"nexudus", "duckdb"},
    owners=["team:data"],
    metadata={"dagster/table_name": CATALOGUE_TABLE},
)
def command_catalogue(nexudus_api: NexudusApiResource, warehouse: WarehouseResource) -> dg.MaterializeResult:
    with nexudus_api.get_client() as client:
        catalogue = {entity: client.commands(entity) for entity in ENTITIES}
    with warehouse.get_connection() as conn:
        store_catalogue(conn, catalogue, dt.datetime.now(dt.UTC).replace(tzinfo=None), nexudus_api.account())
        metadata = table_metadata(conn, CATALOGUE_TABLE)
    return dg.MaterializeResult(
        metadata={**metadata, **{f"commands_{entity.table}": len(catalogue[entity]) for entity in ENTITIES}}
    )
