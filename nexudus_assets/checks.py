"""Asset checks on the raw tables, as SQL. ERROR checks block: derived assets never see broken data.

Row checks, the row-count check and the drift checks (records rejected, records marked deleted)
are evaluated by the raw asset itself, right after it wrote the table (check specs on the asset:
no step of their own). `synced_recently` stands alone: it
runs on its own schedule, to notice a sync that stopped running.
"""

import datetime as dt
from dataclasses import dataclass

import dagster as dg
import duckdb

from nexudus_assets.names import WAREHOUSE, AccountNames
from nexudus_assets.nexudus import ACCESS_TOKENS, COWORKER_CONTRACTS, COWORKER_TIME_PASSES, ENTITIES, Entity
from nexudus_assets.warehouse import SCHEMA, one_row, qualified
from nexudus_assets.warehouse.bookkeeping import SyncShares, most_common_rejection, sync_shares

ERROR = dg.AssetCheckSeverity.ERROR
WARN = dg.AssetCheckSeverity.WARN
#: How many offending ids a failed check names in its metadata.
SAMPLE_IDS = 20
LIVE = "_deleted_at IS NULL"


@dataclass(frozen=True)
class RowCheck:
    """A check that passes when `offending_sql` (a query returning `id`s) returns no row."""

    entity: Entity
    name: str
    description: str
    severity: dg.AssetCheckSeverity
    offending_sql: str


def _where(entity: Entity, condition: str) -> str:
    return f"SELECT id FROM {qualified(entity)} WHERE {LIVE} AND ({condition})"


def _standard_checks(entity: Entity) -> list[RowCheck]:
    table = qualified(entity)
    required = " OR ".join(f"{field} IS NULL" for field in entity.required_fields)
    return [
        RowCheck(
            entity,
            "ids_unique_not_null",
            "Every row has an id and no id appears twice.",
            ERROR,
            f"SELECT id FROM {table} WHERE id IS NULL UNION ALL SELECT id FROM {table} GROUP BY id HAVING count(*) > 1",
        ),
        RowCheck(
            entity,
            "required_fields_present",
            f"Fields the API marks required are present: {', '.join(entity.required_fields)}.",
            ERROR,
            _where(entity, required),
        ),
    ]


ROW_CHECKS: tuple[RowCheck, ...] = (
    *(check for entity in ENTITIES for check in _standard_checks(entity)),
    RowCheck(
        ACCESS_TOKENS,
        "minutes_left_within_included",
        "0 <= minutes_left <= minutes_included.",
        WARN,
        _where(ACCESS_TOKENS, "minutes_left < 0 OR minutes_left > minutes_included"),
    ),
    RowCheck(
        ACCESS_TOKENS,
        "valid_window_ordered",
        "valid_from <= valid_to where both are set.",
        WARN,
        _where(ACCESS_TOKENS, "valid_from > valid_to"),
    ),
    RowCheck(
        COWORKER_CONTRACTS,
        "renewal_after_start",
        "renewal_date is not before start_date.",
        WARN,
        _where(COWORKER_CONTRACTS, "renewal_date < start_date"),
    ),
    RowCheck(
        COWORKER_CONTRACTS,
        "tariff_present",
        "Every contract names its tariff: revenue insights group by it.",
        ERROR,
        _where(COWORKER_CONTRACTS, "tariff_id IS NULL"),
    ),
    RowCheck(
        COWORKER_TIME_PASSES,
        "remaining_uses_within_total",
        "0 <= remaining_uses <= total_uses.",
        WARN,
        _where(COWORKER_TIME_PASSES, "remaining_uses < 0 OR remaining_uses > total_uses"),
    ),
)


def _row_check_result(conn: duckdb.DuckDBPyConnection, check: RowCheck) -> dg.AssetCheckResult:
    # One pass over the table for both: at a million rows each pass is what the check costs.
    count, first = one_row(
        conn, f"SELECT count(*), list(id ORDER BY id NULLS LAST)[1:{SAMPLE_IDS}] FROM ({check.offending_sql})"
    )
    sample = first or []
    return dg.AssetCheckResult(
        check_name=check.name,
        passed=count == 0,
        severity=check.severity,
        metadata={"offending_rows": count, "first_offending_ids": dg.MetadataValue.json(sample)},
    )


FRESHNESS_CHECK = "synced_recently"


def freshness_check_keys(names: AccountNames) -> list[dg.AssetCheckKey]:
    return [dg.AssetCheckKey(names.key(entity.table), FRESHNESS_CHECK) for entity in ENTITIES]


def build_freshness_check(entity: Entity, hours: float, names: AccountNames) -> dg.AssetChecksDefinition:
    @dg.asset_check(
        asset=names.key(entity.table),
        name=FRESHNESS_CHECK,
        description=f"The last successful sync finished less than {hours:g} hours ago (NEXUDUS_MAX_SYNC_AGE_HOURS).",
        required_resource_keys=names.resource_keys(WAREHOUSE),
    )
    def _freshness(context: dg.AssetCheckExecutionContext) -> dg.AssetCheckResult:
        with names.warehouse(context).working_read_connection() as conn:
            # `finished_at` is UTC; DuckDB's now() would be cast to the machine's zone.
            (age,) = one_row(
                conn,
                f"SELECT date_diff('second', max(finished_at), ?) / 3600.0 FROM {SCHEMA}._sync_log WHERE entity = ?",
                [dt.datetime.now(dt.UTC).replace(tzinfo=None), entity.table],
            )
        return dg.AssetCheckResult(
            passed=age is not None and age <= hours,
            severity=WARN,
            metadata={"hours_since_last_sync": round(age, 2) if age is not None else None, "limit_hours": hours},
        )

    return _freshness


ROW_COUNT_STABLE = "row_count_stable"
ROW_COUNT_DESCRIPTION = "Live rows do not fall between two syncs by more than the deletions the later one recorded."


def _row_count_result(conn: duckdb.DuckDBPyConnection, entity: Entity) -> dg.AssetCheckResult:
    history = conn.execute(
        f"SELECT live_rows, deleted FROM {SCHEMA}._sync_log WHERE entity = ? ORDER BY finished_at DESC LIMIT 2",
        [entity.table],
    ).fetchall()
    if len(history) < 2:
        passed, metadata = True, {"syncs_compared": len(history)}
    else:
        (now_rows, deleted), (before_rows, _) = history
        unexplained = before_rows - now_rows - deleted
        passed = unexplained <= 0
        metadata = {
            "rows_before": before_rows,
            "rows_now": now_rows,
            "deletions_recorded": deleted,
            "unexplained_drop": max(unexplained, 0),
        }
    return dg.AssetCheckResult(check_name=ROW_COUNT_STABLE, severity=WARN, passed=passed, metadata=metadata)


@dataclass(frozen=True)
class DriftLimits:
    """How much of a sync may go wrong before its drift checks fail, in percent."""

    #: Share of the records received that failed validation (NEXUDUS_MAX_REJECTED_PERCENT).
    max_rejected_percent: float = 1.0
    #: Share of the live rows a full refresh marks deleted (NEXUDUS_MAX_DELETED_PERCENT).
    max_deleted_percent: float = 10.0


REJECTED_SHARE = "rejected_within_limit"
DELETED_SHARE = "deletions_within_limit"


def _rejected_description(limits: DriftLimits) -> str:
    return (
        f"At most {limits.max_rejected_percent:g}% of the records the sync received failed validation "
        "(NEXUDUS_MAX_REJECTED_PERCENT); more means the API's records changed shape, and the insights "
        "would act on frozen data. Names the most common reason from raw._rejected_records."
    )


def _deleted_description(limits: DriftLimits) -> str:
    return (
        f"A full refresh marks at most {limits.max_deleted_percent:g}% of the live rows deleted "
        "(NEXUDUS_MAX_DELETED_PERCENT). Past half, the refresh refuses and writes nothing."
    )


def _percent(part: int, whole: int) -> float:
    return 100 * part / whole if whole else 0.0


def _rejected_result(
    conn: duckdb.DuckDBPyConnection, entity: Entity, run_id: str, shares: SyncShares, limits: DriftLimits
) -> dg.AssetCheckResult:
    percent = _percent(shares.rejected, shares.fetched)
    passed = percent <= limits.max_rejected_percent
    percent = round(percent, 2)  # shown; the comparison above is exact
    reason, count = most_common_rejection(conn, entity, run_id)
    if reason is None:
        description = f"{shares.rejected} of {shares.fetched} records rejected."
    else:
        description = (
            f"{shares.rejected} of {shares.fetched} records rejected ({percent:g}%); "
            f"the most common reason ({count} records): {reason}"
        )
    return dg.AssetCheckResult(
        check_name=REJECTED_SHARE,
        passed=passed,
        severity=ERROR,
        description=description,
        metadata={
            "rejected_percent": percent,
            "limit_percent": limits.max_rejected_percent,
            "rejected": shares.rejected,
            "received": shares.fetched,
            "most_common_reason": dg.MetadataValue.text(reason or ""),
            "most_common_reason_records": count,
        },
    )


def _deleted_result(entity: Entity, shares: SyncShares, limits: DriftLimits) -> dg.AssetCheckResult:
    percent = _percent(shares.deleted, shares.live_before)
    return dg.AssetCheckResult(
        check_name=DELETED_SHARE,
        passed=percent <= limits.max_deleted_percent,
        severity=WARN,
        description=f"{shares.mode} sync marked {shares.deleted} of {shares.live_before} live rows deleted.",
        metadata={
            "mode": shares.mode,
            "deleted_percent": round(percent, 2),
            "limit_percent": limits.max_deleted_percent,
            "deleted": shares.deleted,
            "live_rows_before": shares.live_before,
        },
    )


def raw_check_specs(entity: Entity, key: dg.AssetKey, limits: DriftLimits = DriftLimits()) -> list[dg.AssetCheckSpec]:
    """The checks the raw asset of `entity` (its key `key`) evaluates itself; ERROR ones block what is downstream."""
    return [
        *(
            dg.AssetCheckSpec(check.name, asset=key, description=check.description, blocking=check.severity == ERROR)
            for check in ROW_CHECKS
            if check.entity == entity
        ),
        dg.AssetCheckSpec(ROW_COUNT_STABLE, asset=key, description=ROW_COUNT_DESCRIPTION),
        dg.AssetCheckSpec(REJECTED_SHARE, asset=key, description=_rejected_description(limits), blocking=True),
        dg.AssetCheckSpec(DELETED_SHARE, asset=key, description=_deleted_description(limits)),
    ]


def evaluate_raw_checks(
    conn: duckdb.DuckDBPyConnection, entity: Entity, run_id: str, limits: DriftLimits = DriftLimits()
) -> list[dg.AssetCheckResult]:
    """One result per spec of `raw_check_specs(entity, limits)`, in the same order.

    The drift checks read the sync that run `run_id` published last for `entity`.
    """
    rows = [_row_check_result(conn, check) for check in ROW_CHECKS if check.entity == entity]
    shares = sync_shares(conn, entity, run_id)
    return [
        *rows,
        _row_count_result(conn, entity),
        _rejected_result(conn, entity, run_id, shares, limits),
        _deleted_result(entity, shares, limits),
    ]


def build_freshness_checks(max_sync_age_hours: float, names: AccountNames) -> list[dg.AssetChecksDefinition]:
    """Run on a schedule of their own: after a sync they always pass, and a sync that stopped
    running would otherwise never be checked again."""
    return [build_freshness_check(entity, max_sync_age_hours, names) for entity in ENTITIES]
