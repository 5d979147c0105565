"""`nexudus.command_runs`: every command sent (or that a dry run would send), per record.

A live call is written as `pending` and committed BEFORE it is sent, then finished with its
outcome. A run killed in between leaves `pending`, which counts as actioned: a command that
may have reached Nexudus is never sent again blindly.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Sequence
from typing import Any, Literal

import duckdb

from nexudus_assets.warehouse.schema import COMMAND_RUNS, SCHEMA, transaction

Outcome = Literal["dry_run", "pending", "succeeded", "failed", "uncertain", "skipped"]
#: Outcomes after which the record may have changed in Nexudus: it rests for the cooldown.
ACTIONED: tuple[Outcome, ...] = ("pending", "succeeded", "uncertain")


def _exists(conn: duckdb.DuckDBPyConnection) -> bool:
    found = conn.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_schema = ? AND table_name = 'command_runs'",
        [SCHEMA],
    ).fetchone()
    return bool(found and found[0])


def record_calls(
    conn: duckdb.DuckDBPyConnection,
    *,
    rule: str,
    entity: str,
    command_key: str,
    calls: Sequence[Sequence[int]],
    parameters: Sequence[dict[str, Any]],
    dry_run: bool,
    outcome: Outcome,
    message: str,
    run_id: str,
    now: dt.datetime,
) -> list[str]:
    """One row per record, grouped by call; returns the call ids, in order. One transaction."""
    call_ids = [str(uuid.uuid4()) for _ in calls]
    finished = now if outcome not in ("pending",) else None
    rows = [
        (call_id, rule, entity, command_key, record_id, json.dumps(list(parameters)), dry_run, outcome, message,
         run_id, now, finished)
        for call_id, ids in zip(call_ids, calls, strict=True)
        for record_id in ids
    ]
    if rows:
        with transaction(conn):
            conn.executemany(f"INSERT INTO {COMMAND_RUNS} VALUES (?, ?, ?, ?, ?, CAST(? AS JSON), ?, ?, ?, ?, ?, ?)", rows)
    return call_ids


def finish_call(
    conn: duckdb.DuckDBPyConnection, call_id: str, outcome: Outcome, message: str, now: dt.datetime
) -> None:
    with transaction(conn):
        conn.execute(
            f"UPDATE {COMMAND_RUNS} SET outcome = ?, message = ?, finished_at = ? WHERE call_id = ?",
            [outcome, message, now, call_id],
        )


def blocked_ids(
    conn: duckdb.DuckDBPyConnection, rule: str, *, cooldown: dt.timedelta, max_attempts: int, now: dt.datetime
) -> set[int]:
    """Records the rule must leave alone now: actioned within the cooldown, or out of attempts.

    Dry runs change nothing in Nexudus, so they never block.
    """
    if not _exists(conn):
        return set()
    actioned = ", ".join(f"'{outcome}'" for outcome in ACTIONED)
    rows = conn.execute(
        f"""SELECT record_id FROM {COMMAND_RUNS}
            WHERE rule = ? AND NOT dry_run AND created_at > ?
            GROUP BY record_id
            HAVING count(*) FILTER (WHERE outcome IN ({actioned})) > 0
                OR count(*) FILTER (WHERE outcome = 'failed') >= ?""",
        [rule, now - cooldown, max_attempts],
    ).fetchall()
    return {record_id for (record_id,) in rows}
