"""Where a Nexudus-compatible server may answer differently and still match the documentation.

The client is written to the documentation, and the project is run against servers that
differ from this simulator wherever the documentation leaves room. A dialect makes the
simulator one of those servers, so the tests can hold the client to the documentation
rather than to one server's habits.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Envelope = Literal["full", "minimal"]


@dataclass(frozen=True)
class Dialect:
    #: Records a page holds at most. The older reference says 1000; a server may serve fewer.
    max_page_size: int = 1000
    #: `CurrentPageSize` and `PageSize` repeat the size asked for, not the size served.
    echo_requested_size: bool = False
    #: "full": every documented envelope field. "minimal": `Records` and `TotalItems` only
    #: ("some answers also `PageNumber`, `PageSize`": the fields are not all promised).
    envelope: Envelope = "full"
    #: A by-Ids lookup that finds nothing answers 404 "Not found" (the gitbook reference).
    ids_not_found_404: bool = False
    #: Throttled answers: 409 as FACTS.md says, or 429 as some SDK documentation says.
    throttle_status: int = 409
    #: How `CreatedOn` and `UpdatedOn` mark UTC: "Z" as documented, or an offset.
    utc_suffix: str = "Z"
    #: `TotalPages` and `HasNextPage` computed from the size asked, not the size served.
    pages_from_requested_size: bool = False
    #: Ids (records and the records they point at) beyond 2^31, handed out in two interleaved
    #: blocks: a record created later can have a lower Id than one created before it.
    long_ids: bool = False
    #: `CreatedOn`/`UpdatedOn` with up to 7 fractional digits (.NET ticks), trailing zeros trimmed.
    tick_fractions: bool = False
    #: Business dates with a `Z`, as live accounts send them (`"StartDate": "2025-04-01T00:00:00Z"`).
    business_dates_utc: bool = False
    #: The hours east of UTC of the zone the range filters' dates are read in (-5: UTC-5 local
    #: time); 0 reads them in UTC.
    filter_utc_offset_hours: int = 0
    #: One access token's description cut in the middle of an emoji: a lone surrogate escape.
    lone_surrogate: bool = False


#: Named dialects for the CLI (`--dialect`) and the tests.
DIALECTS: dict[str, Dialect] = {
    "reference": Dialect(),
    # Pages capped at 100 while the envelope claims the 1000 asked for.
    "capped": Dialect(max_page_size=100, echo_requested_size=True),
    # Thin envelopes, 404 for empty lookups, 429 for throttling, `+00:00` instead of `Z`.
    "terse": Dialect(
        max_page_size=250, envelope="minimal", ids_not_found_404=True, throttle_status=429, utc_suffix="+00:00"
    ),
    # What live accounts show: long interleaved Ids, tick fractions, business dates with `Z`,
    # pages capped at 100 under a `TotalPages` from the size asked, the filter read in UTC-5,
    # and one string cut mid-emoji.
    "live": Dialect(
        max_page_size=100,
        echo_requested_size=True,
        pages_from_requested_size=True,
        long_ids=True,
        tick_fractions=True,
        business_dates_utc=True,
        filter_utc_offset_hours=-5,
        lone_surrogate=True,
    ),
}
