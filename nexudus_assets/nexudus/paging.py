"""Page-number paging that survives records being inserted or deleted while it walks."""

from __future__ import annotations

import math
import queue
import threading
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterator
from contextlib import suppress
from dataclasses import dataclass, field
from typing import Any

from nexudus_assets.nexudus.errors import ResponseFormatError
from nexudus_assets.nexudus.models import Page, valid_id

#: Pages a walk reads at most when the server announces no `TotalItems`: 100 million records
#: at the documented 1000 a page, and still a bound for a server that pages for ever.
DEFAULT_MAX_PAGES = 100_000
#: Pages beyond what the first answer's `TotalItems` allows before a pass stops: room for
#: records inserted while it runs, never room for a server whose total keeps growing.
EXTRA_PAGES = 3
#: Passes over a list at most: the first, then re-walks until one brings nothing new.
MAX_PASSES = 4
#: Pages a walk reads ahead of its caller at most: a few megabytes of JSON at 1000 records a page.
PAGES_AHEAD = 3


@dataclass
class PagingSummary:
    pages: int = 0
    #: Distinct records read.
    records: int = 0
    #: The last `TotalItems` the server claimed.
    total_items: int | None = None
    #: The `TotalItems` of the first answer: what bounds the walk.
    first_total_items: int | None = None
    #: Passes over the list: 1, or more when the first spanned several pages.
    passes: int = 0
    #: Requests of the passes after the first, which check that nothing moved past the walk.
    verification_pages: int = 0
    #: Times a shrinking total made the walk step back.
    backoffs: int = 0
    #: Why the walk cannot account for every record; None when it can.
    incomplete: str | None = None

    @property
    def ended_short(self) -> bool:
        return self.incomplete is not None


class SeenKeys:
    """The records a walk has yielded, by Id: 8 bytes an Id, so a million cost 8 MB, not 100.

    Valid Ids go to a sorted array; a list ordered by Id appends at its end. Anything else
    (an Id of any other JSON type, a record without one) is kept in a set by its text, which
    every JSON value has: `true` is not the same as `1`, and `{"a": 1}` hashes.
    """

    def __init__(self) -> None:
        self._ids = array("q")
        self._others: set[Any] = set()

    def add(self, record: Any) -> bool:
        """Remember the record; False when it was seen before."""
        raw_key = record.get("Id") if isinstance(record, dict) else None
        key = valid_id(raw_key)
        if key is not None:
            ids = self._ids
            if not ids or key > ids[-1]:
                ids.append(key)
                return True
            at = bisect_left(ids, key)
            if at < len(ids) and ids[at] == key:
                return False
            ids.insert(at, key)
            return True
        other = ("without-id", repr(record)) if raw_key is None else ("id", type(raw_key).__name__, repr(raw_key))
        if other in self._others:
            return False
        self._others.add(other)
        return True


@dataclass
class PageNumberPaginator:
    """Walks `page=1, 2, ...` of a list ordered by Id and yields each record's raw JSON.

    Pages are measured by what the server sends, not by what was asked or what it says it
    sends: a server may cap `size` below the request and still compute `TotalPages` and
    `HasNextPage` from the size asked. So a pass keeps walking while it holds fewer distinct
    records than `TotalItems`, until an empty page.

    Lists drift while they are read. Deleting a record the walk has passed shifts every later
    record one place to the left, so the next page starts one record late and the record at
    the boundary is never read; an insertion after the boundary leaves `TotalItems` unchanged,
    so nothing in the answers gives the skip away, and neither Ids (handed out in interleaved
    blocks) nor timestamps (not every server keeps them) say which records are new. So a walk
    of more than one page is checked by walking the list again: each further pass yields only
    records no earlier pass read, and the walk is settled by a pass that brings nothing new
    while its `TotalItems` held still and it read as many records as that total. A skip needs
    a deletion before the boundary; unless an insertion compensates, `TotalItems` changes, and
    an insertion after the boundary is a record the pass has not read before. A walk still
    unsettled after `MAX_PASSES` says so in `summary.incomplete`. A drop in `TotalItems`
    within a pass also steps it back, as many pages as the drop spans.

    Within the first pass a record answered twice is yielded twice: the caller keeps the copy
    with the latest `UpdatedOn`. Later passes yield only records no pass has read, and the first
    of them starts with an empty list, the only one a walk hands over: every record the first pass
    read has been handed over, and the caller may act on them while the list is checked.

    Every walk ends: a pass stops past the pages the first answer's `TotalItems` allows (plus
    `EXTRA_PAGES`), however the total grows meanwhile, and records the stop in
    `summary.incomplete`; past `max_pages` when no total is announced, or when the server
    claims more pages than records it counts, it raises instead of asking for more.
    """

    fetch: Callable[[int, int], Page]
    size: int
    max_backoffs: int = 50
    summary: PagingSummary = field(default_factory=PagingSummary)
    max_pages: int = DEFAULT_MAX_PAGES
    #: Names the list in errors (`GET /spaces/accesstokens`).
    described: str = "the list"
    #: The longest page seen: the server's real page size (the last page may be shorter).
    _page_length: int = field(default=0, init=False, repr=False)

    def __iter__(self) -> Iterator[list[dict[str, Any]]]:
        # The walk runs in a thread of its own, up to `PAGES_AHEAD` pages ahead of the caller: the
        # server answers the next pages while the caller validates and stores this one, and the
        # passes that only check the walk go on while the caller stores the last pages. Still one
        # request at a time, and only the ones the walk decides on.
        stop = threading.Event()
        return _read_ahead(self._pages(stop), PAGES_AHEAD, stop, thread_name="nexudus-walk")

    def _pages(self, stop: threading.Event) -> Iterator[list[dict[str, Any]]]:
        """The records to hand over from each page read, pass after pass; empty pages left out, and
        an empty list when a second pass starts.

        Once `stop` is set no further page is asked for: the caller no longer wants any.
        """
        summary = self.summary
        seen = SeenKeys()
        while not stop.is_set():
            summary.passes += 1
            if summary.passes == 2:
                yield []
            outcome = _PassOutcome()
            for records in self._pass(seen, outcome, verifying=summary.passes > 1):
                if records:
                    yield records
                if stop.is_set():
                    return
            if not self._another_pass(outcome):
                return

    def _another_pass(self, outcome: _PassOutcome) -> bool:
        """Whether the pass just ended leaves the walk unsettled; records why when it must stop."""
        summary = self.summary
        if summary.incomplete is not None:
            return False  # the pass hit its bound: another would too
        total = summary.total_items
        counted = total is None or outcome.distinct >= total
        if summary.passes == 1 and outcome.pages == 1 and not outcome.total_moved:
            # One page read in one answer: nothing can have moved past it. Short of its total,
            # a second pass tells a record added meanwhile from a count that is wrong.
            return not counted
        if summary.passes > 1 and not outcome.new and not outcome.total_moved:
            if not counted:
                summary.incomplete = (
                    f"the list ended after {outcome.distinct} of the {total} records it announced,"
                    f" in {summary.passes} passes alike"
                )
            return False
        if summary.passes >= MAX_PASSES:
            found = (
                f"still found {outcome.new} records the earlier ones had not"
                if outcome.new
                else "still saw its TotalItems change"
            )
            summary.incomplete = (
                f"the list kept changing while it was read: pass {summary.passes} of {MAX_PASSES} {found}"
                + ("" if counted else f" and ended after {outcome.distinct} of the {total} it announced")
            )
            return False
        return True

    def _pass(self, seen: SeenKeys, outcome: _PassOutcome, verifying: bool) -> Iterator[list[dict[str, Any]]]:
        summary = self.summary
        in_pass = SeenKeys()
        number = 1
        #: The furthest page read: pages at or before it are re-reads after a step back.
        frontier = 0
        previous_total: int | None = None
        stale_pages = 0
        while True:
            page = self.fetch(number, self.size)
            summary.pages += 1
            outcome.pages += 1
            if verifying:
                summary.verification_pages += 1
            records = page.records
            self._page_length = max(self._page_length, len(records))
            total = page.total_items
            if summary.passes == 1 and number == 1:
                summary.first_total_items = total
            if previous_total is not None and total != previous_total:
                outcome.total_moved = True
            if previous_total is not None and total is not None and total < previous_total and number > 1:
                summary.backoffs += 1
                if summary.backoffs > self.max_backoffs:
                    raise ResponseFormatError(
                        f"{self.described}: the list kept shrinking while being read"
                        f" ({summary.backoffs} step-backs); try again later"
                    )
                frontier = max(frontier, number)
                number = max(1, number - math.ceil((previous_total - total) / max(self._page_length, 1)))
                previous_total = total
                continue
            previous_total = total
            summary.total_items = total

            in_pass_flags = [in_pass.add(record) for record in records]
            fresh_in_pass = sum(in_pass_flags)
            outcome.distinct += fresh_in_pass
            new = [record for record in records if seen.add(record)]
            outcome.new += len(new)
            summary.records += len(new)
            # New ground that only repeats what this pass read, three pages running: the
            # server is not paging at all (it ignores `page`).
            if number > frontier:
                stale_pages = stale_pages + 1 if records and not fresh_in_pass else 0
                frontier = number
            if stale_pages >= 3:
                raise ResponseFormatError(
                    f"{self.described}: pages {number - 2} to {number} repeat records already read:"
                    " the server ignores `page`"
                )
            more = bool(records) and self._has_next(page, number, len(records), outcome.distinct)
            if more and not self._within_bounds(number, total, outcome.distinct):
                more = False
            yield new if verifying else records
            if not more:
                return
            number += 1

    def _within_bounds(self, number: int, total: int | None, distinct: int) -> bool:
        """Whether page `number + 1` may be read; records why not, or raises when the server contradicts itself."""
        first_total = self.summary.first_total_items
        if first_total is not None:
            allowed = math.ceil(first_total / max(self._page_length, 1)) + EXTRA_PAGES
            if number + 1 > allowed:
                if total is not None and distinct >= total:
                    # Every record it counts is read and it still claims more: no growth explains that.
                    raise ResponseFormatError(
                        f"{self.described}: the server announced {total} items ({allowed - EXTRA_PAGES} pages"
                        f" of {self._page_length}) but still claims more after page {number};"
                        " stopped rather than page for ever"
                    )
                self.summary.incomplete = (
                    f"the list announced {first_total} records at first but {total} after page {number},"
                    f" more than {EXTRA_PAGES} pages beyond the first count; the walk stopped there"
                    f" with {distinct} records read"
                )
                return False
        if number + 1 > self.max_pages:
            raise ResponseFormatError(
                f"{self.described}: still more after {number} pages, the most one walk reads"
                " (max_pages); stopped rather than page for ever"
            )
        return True

    def _has_next(self, page: Page, number: int, count: int, distinct: int) -> bool:
        total = page.total_items
        if total is not None and distinct < total:
            # Records are missing against the count, whatever `TotalPages` or `HasNextPage` say:
            # they may be computed from the size asked rather than the size served.
            return True
        # The documented envelope is not consistent (a by-Ids example says HasNextPage true on
        # its only page), so the arithmetic fields are trusted before the flag.
        if page.total_pages is not None:
            return number < page.total_pages
        if page.has_next_page is not None:
            return page.has_next_page
        if total is not None:
            return False
        # No envelope to go by: a page shorter than an earlier one is the last; otherwise
        # only an empty page ends the list.
        return count >= self._page_length


@dataclass
class _PassOutcome:
    """What one pass over the list found."""

    pages: int = 0
    #: Distinct records this pass read.
    distinct: int = 0
    #: Records no earlier pass had read.
    new: int = 0
    #: `TotalItems` changed between two of its answers.
    total_moved: bool = False


class _Failed:
    """What the walk raised, handed to the caller in its place."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


_END = object()


def _read_ahead(items: Iterator[Any], depth: int, stop: threading.Event, *, thread_name: str) -> Iterator[Any]:
    """`items`, produced in a thread of their own at most `depth` ahead of the caller.

    What the producer raises is raised to the caller once the items before it are consumed. When the
    caller stops early, `stop` is set (`items` heeds it between two of its requests) and the
    caller waits for the producer to end.
    """
    handed: queue.Queue[Any] = queue.Queue(maxsize=depth)

    def produce() -> None:
        try:
            for item in items:
                handed.put(item)
        except BaseException as error:  # the caller's to handle, in the caller's thread
            handed.put(_Failed(error))
        else:
            handed.put(_END)

    producer = threading.Thread(target=produce, name=thread_name, daemon=True)
    producer.start()
    try:
        while (item := handed.get()) is not _END:
            if isinstance(item, _Failed):
                raise item.error
            yield item
    finally:
        stop.set()
        # A producer blocked on a full queue needs room to notice the stop.
        while producer.is_alive():
            with suppress(queue.Empty):
                handed.get(timeout=0.05)
        producer.join()
