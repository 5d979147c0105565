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


#: Named dialects for the CLI (`--dialect`) and the tests.
DIALECTS: dict[str, Dialect] = {
    "reference": Dialect(),
    # Pages capped at 100 while the envelope claims the 1000 asked for.
    "capped": Dialect(max_page_size=100, echo_requested_size=True),
    # Thin envelopes, 404 for empty lookups, 429 for throttling, `+00:00` instead of `Z`.
    "terse": Dialect(
        max_page_size=250, envelope="minimal", ids_not_found_404=True, throttle_status=429, utc_suffix="+00:00"
    ),
}
