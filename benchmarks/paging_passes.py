"""What each pass of the hourly walk over access tokens costs: the first, and the one checking it.

A simulator of 1M tokens (in this process, served over HTTP on 127.0.0.1) has 1% of them changed,
then the client walks `from_AccessToken_UpdatedOn` at 12 h 10 min back, as the hourly sync does,
three times. For each walk: its wall time (records validated as they arrive) and the seconds spent
in the requests of each pass (the next page is fetched while the current one is validated).

    python benchmarks/paging_passes.py [tokens]
"""

from __future__ import annotations

import datetime as dt
import sys
import time

from nexudus_assets.nexudus import ACCESS_TOKENS, NexudusClient, parse_record
from nexudus_assets.nexudus.models import Page
from nexudus_assets.nexudus.pacing import RateLimits
from nexudus_assets.nexudus.paging import PageNumberPaginator, PagingSummary
from nexudus_assets.simulator import DEFAULT_PASSWORD, DEFAULT_USERNAME, Simulator, SimulatorServer

SEED = 5
PAGE_SIZE = 1000


def main(tokens: int) -> None:
    started = time.monotonic()
    sim = Simulator(seed=SEED, tokens=tokens, contracts=10, passes=10)
    sim.mutate(ACCESS_TOKENS, update=tokens // 100)
    print(f"simulator of {tokens:,} tokens ready in {time.monotonic() - started:.0f} s, 1% changed")
    since = dt.datetime.now(dt.UTC).replace(tzinfo=None) - dt.timedelta(hours=12, minutes=10)
    with (
        SimulatorServer(sim) as server,
        NexudusClient(
            base_url=server.base_url,
            username=DEFAULT_USERNAME,
            password=DEFAULT_PASSWORD,
            limits=RateLimits.unlimited(),
        ) as client,
    ):
        for _ in range(3):
            summary = PagingSummary()
            by_pass: dict[int, float] = {}

            def fetch(
                number: int, size: int, summary: PagingSummary = summary, by_pass: dict[int, float] = by_pass
            ) -> Page:
                began = time.perf_counter()
                page = client.list_page(ACCESS_TOKENS, page=number, size=size, ranges={"UpdatedOn": (since, None)})
                by_pass[summary.passes] = by_pass.get(summary.passes, 0.0) + time.perf_counter() - began
                return page

            began = time.perf_counter()
            records = sum(
                len([parse_record(ACCESS_TOKENS, raw) for raw in page])
                for page in PageNumberPaginator(fetch=fetch, size=PAGE_SIZE, summary=summary)
            )
            passes = ", ".join(f"pass {number} {seconds:.2f} s" for number, seconds in sorted(by_pass.items()))
            print(
                f"walk {time.perf_counter() - began:.2f} s: {records:,} records, {summary.pages} requests"
                f" ({summary.verification_pages} checking the first pass); requests' seconds: {passes}"
            )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000)
