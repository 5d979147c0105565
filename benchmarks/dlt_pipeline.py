"""The comparison: a plain dlt `rest_api` pipeline over the same three lists, into DuckDB.

Usage: python benchmarks/dlt_pipeline.py DUCKDB_FILE PIPELINES_DIR
(NEXUDUS_BASE_URL, NEXUDUS_USERNAME, NEXUDUS_PASSWORD from the environment). The tables land
in schema `raw` of DUCKDB_FILE, named as ours are.
"""

from __future__ import annotations

import os
import sys

import dlt
from dlt.sources.rest_api import rest_api_source
from dlt.sources.rest_api.typing import EndpointResource
from processes import ENTITIES


def resource(name: str, path: str, prefix: str) -> EndpointResource:
    return {
        "name": name,
        "primary_key": "Id",
        "write_disposition": "merge",
        "endpoint": {
            "path": path,
            "data_selector": "Records",
            "params": {
                "size": 1000,
                # The default order anyway; sent so that every contender asks for the same pages.
                "orderby": "Id",
                f"from_{prefix}_UpdatedOn": {
                    "type": "incremental",
                    "cursor_path": "UpdatedOn",
                    "initial_value": "2000-01-01T00:00",
                },
            },
        },
    }


def main(database: str, pipelines_dir: str) -> None:
    source = rest_api_source(
        {
            "client": {
                "base_url": os.environ["NEXUDUS_BASE_URL"].rstrip("/") + "/",
                "auth": {
                    "type": "http_basic",
                    "username": os.environ["NEXUDUS_USERNAME"],
                    "password": os.environ["NEXUDUS_PASSWORD"],
                },
                "paginator": {"type": "page_number", "base_page": 1, "page_param": "page", "total_path": "TotalPages"},
            },
            "resources": [resource(*entity) for entity in ENTITIES],
        }
    )
    pipeline = dlt.pipeline(
        pipeline_name="nexudus_bench",
        destination=dlt.destinations.duckdb(database),
        dataset_name="raw",
        pipelines_dir=pipelines_dir,
    )
    print(pipeline.run(source))


if __name__ == "__main__":
    main(*sys.argv[1:3])
