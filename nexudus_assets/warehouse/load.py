"""Load one entity from the API into the warehouse: page, stage in batches, confirm, publish."""

from __future__ import annotations

import datetime as dt
import gc
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, field, replace

import duckdb

from nexudus_assets.nexudus import Entity, NexudusClient, NexudusRecord, PagingSummary
from nexudus_assets.nexudus.account import Account
from nexudus_assets.warehouse.bookkeeping import SyncResult, read_high_water_mark
from nexudus_assets.warehouse.staging import RejectedRecord
from nexudus_assets.warehouse.sync import EntitySync

Connect = Callable[[], AbstractContextManager[duckdb.DuckDBPyConnection]]

log = logging.getLogger(__name__)

#: How far the range filter's bound is moved back beyond the overlap so that no zone the server
#: may read it in hides a change. The zone is documented nowhere and clients send UTC; a server
#: reading `12:00` as local time in UTC-12, the westernmost zone, means 12:00 + 12 h UTC.
#: Zones east of UTC read it earlier, which only re-reads more.
FILTER_ZONE_MARGIN = dt.timedelta(hours=12)


@dataclass
class LoadReport:
    entity: Entity
    mode: str
    #: The lower bound sent as `from_<Entity>_UpdatedOn`; None when everything was read.
    updated_since: dt.datetime | None
    result: SyncResult
    requests: int
    throttled: int
    pages: int
    seconds: float
    #: Seconds waited on throttling answers, and the password grants (sign-ins) the load needed.
    throttle_wait_seconds: float = 0.0
    password_grants: int = 0
    #: Ids the full listing missed but a by-Ids lookup found (page drift, or a truncated list).
    recovered: int = 0
    #: Records an incremental walk left out unvalidated: versions the live table holds (also unchanged).
    known: int = 0
    paging: PagingSummary = field(default_factory=PagingSummary)


@contextmanager
def _heap_so_far_frozen() -> Iterator[None]:
    """Garbage collection leaves the objects alive at the start alone until the end.

    A Dagster run holds hundreds of thousands of objects, and every full collection traverses all
    of them; the records of a load set off several. Frozen, the collections see only what the
    load makes, and the garbage it makes is collected as before. A host that froze objects of its
    own (before forking, say) is left as it is: unfreezing gives back every frozen object at once.
    """
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def load_entity(
    client: NexudusClient,
    connect: Connect,
    entity: Entity,
    *,
    run_id: str,
    full_refresh: bool = False,
    overlap: dt.timedelta = dt.timedelta(minutes=5),
    batch_rows: int = 5_000,
    max_delete_fraction: float = 0.5,
) -> LoadReport:
    """Sync one entity. Only the publish touches the live table, in one transaction.

    Incremental runs ask for records updated since the high-water mark, floored to the
    minute (the filter's precision) and moved back by `overlap` for records committed late
    and by `FILTER_ZONE_MARGIN` for a server that reads the bound in another zone.
    A run with no high-water mark yet reads everything. Every write is a transaction of its
    own on one connection, held for the load: each close of a DuckDB file checkpoints it.
    """
    started = time.monotonic()
    before = replace(client.stats)
    account = Account.of(client.base_url, client.username)
    sync = EntitySync(entity, run_id=run_id, mode="full" if full_refresh else "incremental", account=account)
    with _heap_so_far_frozen(), connect() as conn:
        sync.begin(conn)
        high_water_mark = read_high_water_mark(conn, entity)

        updated_since = None
        if not full_refresh and high_water_mark is not None:
            updated_since = high_water_mark.replace(second=0, microsecond=0) - overlap - FILTER_ZONE_MARGIN
        ranges = {"UpdatedOn": (updated_since, None)} if updated_since else None
        # The margins re-read hours of changes the warehouse already holds: left out unvalidated.
        known_versions = sync.known_versions(conn, updated_since, overlap) if updated_since else None

        records: list[NexudusRecord] = []
        rejected: list[RejectedRecord] = []

        def flush() -> None:
            if records or rejected:
                sync.stage(conn, records, rejected)
                records.clear()
                rejected.clear()

        paging = PagingSummary()
        # A sync from a high-water mark writes its changes while the walk checks its first pass
        # (requests and waits on the server): committed if the check finds nothing that pass
        # missed, rolled back and written again with what it found if it does. A first sync,
        # whose long walk drift is likely to catch, and a full one, which asks by Id for the
        # records the walk did not see, wait for the check.
        publish_early = ranges is not None
        try:
            for page in client.iter_pages(entity, ranges=ranges, summary=paging, known_versions=known_versions):
                sync.count_known(page.known)
                if page.first_pass_over and publish_early:
                    flush()
                    sync.start_publish(conn, max_delete_fraction=max_delete_fraction)
                elif sync.publish_started and (page.records or page.rejected):
                    sync.abandon_publish(conn)
                records.extend(page.records)
                rejected.extend(RejectedRecord.from_error(error) for error in page.rejected)
                if len(records) + len(rejected) >= batch_rows:
                    flush()
        except BaseException:
            sync.abandon_publish(conn)
            raise
        flush()

        recovered = 0
        if full_refresh:
            missing = sync.missing_ids(conn)
            if missing:
                # Not in the listing is not yet deleted: a record skipped by page drift or a
                # truncated answer must not be marked deleted. Ask for each one by Id.
                for page in client.iter_pages(entity, ids=missing):
                    records.extend(page.records)
                    rejected.extend(RejectedRecord.from_error(error) for error in page.rejected)
                    recovered += len(page.records) + len(page.rejected)
                flush()
                if recovered:
                    log.warning("%s: %d records missing from the listing still exist upstream", entity.name, recovered)

        requests = client.stats.requests - before.requests
        throttled = client.stats.throttled - before.throttled
        if not sync.publish_started:
            sync.start_publish(conn, max_delete_fraction=max_delete_fraction)
        result = sync.finish_publish(
            conn,
            requests=requests,
            throttled=throttled,
            pages=paging.pages,
            verification_pages=paging.verification_pages,
            walk_incomplete=paging.incomplete,
        )
    return LoadReport(
        entity=entity,
        mode=sync.mode,
        updated_since=updated_since,
        result=result,
        requests=requests,
        throttled=throttled,
        pages=paging.pages,
        seconds=time.monotonic() - started,
        recovered=recovered,
        known=sync.known,
        paging=paging,
        throttle_wait_seconds=client.stats.throttle_wait_seconds - before.throttle_wait_seconds,
        password_grants=client.stats.password_grants - before.password_grants,
    )
