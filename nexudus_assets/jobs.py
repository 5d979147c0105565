"""Jobs. They run in one process: DuckDB takes one writer and the API budget is per process."""

import dagster as dg

from nexudus_assets.assets import insights, raw
from nexudus_assets.nexudus import ENTITIES

SYNC_SELECTION = dg.AssetSelection.groups(raw.GROUP, insights.GROUP)

nexudus_sync = dg.define_asset_job(
    name="nexudus_sync",
    selection=SYNC_SELECTION,
    description="Incremental sync of every entity, then the insights, with their checks.",
    executor_def=dg.in_process_executor,
)

nexudus_full_refresh = dg.define_asset_job(
    name="nexudus_full_refresh",
    selection=SYNC_SELECTION,
    description="Reads every record, marks the ones deleted upstream, then rebuilds the insights.",
    config={"ops": {entity.table: {"config": {"full_refresh": True}} for entity in ENTITIES}},
    executor_def=dg.in_process_executor,
)
