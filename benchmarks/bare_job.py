"""The yardstick for an hourly run: a job of three assets that do nothing, started the same way.

`python -m dagster job execute -f benchmarks/bare_job.py -j bare` costs what Dagster itself costs a
run: the CLI, its imports, loading definitions, the instance, three steps and their events.
"""

import dagster as dg


@dg.asset
def first() -> None:
    pass


@dg.asset(deps=[first])
def second() -> None:
    pass


@dg.asset(deps=[second])
def third() -> None:
    pass


bare = dg.define_asset_job("bare", selection=[first, second, third], executor_def=dg.in_process_executor)

defs = dg.Definitions(assets=[first, second, third], jobs=[bare])
