"""One raw asset per Nexudus entity: the API's records, typed, in `raw.<table>` and `raw.<table>_history`."""

import datetime as dt
from contextlib import nullcontext

import dagster as dg
from pydantic import Field

from nexudus_assets.assets.metadata import table_metadata
from nexudus_assets.checks import DriftLimits, evaluate_raw_checks, raw_check_specs
from nexudus_assets.names import API, WAREHOUSE, AccountNames
from nexudus_assets.nexudus import ENTITIES, Entity
from nexudus_assets.warehouse import history_table, qualified, table_columns
from nexudus_assets.warehouse.load import load_entity

GROUP = "nexudus_raw"


class SyncConfig(dg.Config):
    full_refresh: bool = Field(
        default=False, description="Read every record and mark the ones gone upstream as deleted."
    )
    overlap_minutes: int = Field(
        default=5, description="Incremental runs re-read records updated this long before the high-water mark."
    )
    max_delete_fraction: float = Field(
        default=0.5, description="A full refresh refuses to mark more than this share of the rows deleted."
    )


def column_schema(entity: Entity) -> dg.TableSchema:
    return dg.TableSchema(
        columns=[
            dg.TableColumn(name=column.name, type=column.duckdb_type, description=column.description)
            for column in table_columns(entity)
        ]
    )


def build_raw_asset(entity: Entity, limits: DriftLimits, names: AccountNames) -> dg.AssetsDefinition:
    schema = column_schema(entity)
    table = qualified(entity)

    @dg.asset(
        name=entity.table,
        key_prefix=names.key_prefix,
        group_name=names.name(GROUP),
        description=(
            f"Every {entity.name} record from `GET /{entity.path}`, one row per record, keyed by `id`. "
            "Incremental by `UpdatedOn`; a full refresh also marks records deleted upstream (`_deleted_at`). "
            f"Every version a sync saw is kept in `{history_table(entity)}`. "
            "Records that fail validation are quarantined in `raw._rejected_records`."
        ),
        kinds={"nexudus", "duckdb"},
        owners=["team:data"],
        metadata={"dagster/table_name": table, "dagster/column_schema": schema},
        check_specs=raw_check_specs(entity, names.key(entity.table), limits),
        required_resource_keys=names.resource_keys(API, WAREHOUSE),
    )
    def _raw(context: dg.AssetExecutionContext, config: SyncConfig) -> dg.MaterializeResult:
        nexudus_api, warehouse = names.api(context), names.warehouse(context)
        # One write session: the checks read what the sync just committed.
        with nexudus_api.get_client() as client, warehouse.get_connection() as conn:
            report = load_entity(
                client,
                lambda: nullcontext(conn),
                entity,
                run_id=context.run.run_id,
                full_refresh=config.full_refresh,
                overlap=dt.timedelta(minutes=config.overlap_minutes),
                max_delete_fraction=config.max_delete_fraction,
            )
            metadata = table_metadata(conn, table, where="_deleted_at IS NULL", schema=schema)
            check_results = evaluate_raw_checks(conn, entity, context.run.run_id, limits)
        result = report.result
        context.log.info(
            f"{entity.name}: {report.mode} sync read {result.fetched} records in {report.requests} requests "
            f"({result.inserted} new, {result.updated} updated, {result.deleted} deleted, {result.rejected} rejected;"
            f" {report.known} already held, left unvalidated)"
        )
        return dg.MaterializeResult(
            check_results=check_results,
            metadata={
                **metadata,
                "mode": report.mode,
                "updated_since": dg.MetadataValue.text(str(report.updated_since or "everything")),
                "rows_inserted": result.inserted,
                "rows_updated": result.updated,
                "rows_unchanged": result.unchanged,
                "rows_known_unread": report.known,
                "rows_deleted": result.deleted,
                "rows_rejected": result.rejected,
                "rows_recovered_by_id": report.recovered,
                "rows_total": result.live_rows,
                "requests": report.requests,
                "throttled_responses": report.throttled,
                "throttle_wait_seconds": round(report.throttle_wait_seconds, 3),
                "password_grants": report.password_grants,
                "pages": report.pages,
                "verification_requests": report.paging.verification_pages,
                "walk_incomplete": dg.MetadataValue.text(report.paging.incomplete or ""),
                "duration_seconds": round(report.seconds, 3),
                "high_water_mark": dg.MetadataValue.text(str(result.high_water_mark)),
            },
        )

    return _raw


def build_raw_assets(limits: DriftLimits, names: AccountNames) -> list[dg.AssetsDefinition]:
    """One raw asset per entity, their drift checks failing past `limits`."""
    return [build_raw_asset(entity, limits, names) for entity in ENTITIES]
