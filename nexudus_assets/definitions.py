"""The code location: everything assembled into one `defs`."""

import os
from typing import Any

import dagster as dg

from nexudus_assets.assets.insights import insight_assets
from nexudus_assets.assets.raw import raw_assets
from nexudus_assets.checks import asset_checks
from nexudus_assets.jobs import nexudus_full_refresh, nexudus_sync
from nexudus_assets.nexudus import DEFAULT_BASE_URL
from nexudus_assets.resources import NexudusResource, WarehouseResource
from nexudus_assets.schedules import schedules


def _env(name: str, default: Any) -> Any:
    """An EnvVar when the variable is set (resolved at run time, hidden in the UI), else the default."""
    return dg.EnvVar(name) if name in os.environ else default


def resources_from_env() -> dict[str, Any]:
    return {
        "nexudus": NexudusResource(
            base_url=_env("NEXUDUS_BASE_URL", DEFAULT_BASE_URL),
            username=dg.EnvVar("NEXUDUS_USERNAME"),
            password=dg.EnvVar("NEXUDUS_PASSWORD"),
            auth=_env("NEXUDUS_AUTH", "basic"),
            totp=_env("NEXUDUS_TOTP", None),
            page_size=dg.EnvVar.int("NEXUDUS_PAGE_SIZE") if "NEXUDUS_PAGE_SIZE" in os.environ else 1000,
        ),
        "warehouse": WarehouseResource(database=_env("NEXUDUS_DUCKDB_PATH", "data/nexudus.duckdb")),
    }


def build_defs(resources: dict[str, Any]) -> dg.Definitions:
    return dg.Definitions(
        assets=[*raw_assets, *insight_assets],
        asset_checks=asset_checks,
        jobs=[nexudus_sync, nexudus_full_refresh],
        schedules=schedules,
        resources=resources,
        executor=dg.in_process_executor,
    )


defs = build_defs(resources_from_env())
