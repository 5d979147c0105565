"""Page-number paging that survives records being inserted or deleted while it walks."""

from __future__ import annotations

import math
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from nexudus_assets.nexudus.errors import ResponseFormatError
from nexudus_assets.nexudus.models import Page, valid_id

#: Pages a walk reads at most when the server announces no `TotalItems`: 100 million records
#: at the documented 1000 a page, and still a bound for a server that pages for ever.
DEFAULT_MAX_PAGES = 100_000
#: Pages beyond what `TotalItems` allows before the walk stops: room for records inserted
#: while it runs, never room for a server that answers every page with `HasNextPage: true`.
EXTRA_PAGES = 3


@dataclass
class PagingSummary:
    pages: int = 0
    records: int = 0
    #: The last `TotalItems` the server claimed.
    total_items: int | None = None
    #: The list ended before the count the server promised (a truncated or inflated answer).
    ended_short: bool = False
    #: Times a shrinking total made the walk step back.
    backoffs: int = 0


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
    """Walks `page=1, 2, ...` of a list ordered by Id and yields each record's raw JSON once.

    Deleting a record the walk has passed shifts every later record one place to the left,
    so the next page would start one record late. A drop in `TotalItems` gives that away:
    the walk steps back as many pages as the drop spans and re-reads them. Records it has
    already yielded are recognised by Id, so re-reads, and inserts that shift records to
    the right, never yield a record twice.

    Pages are measured by what the server sends, not by what was asked or what it says it
    sends: a server may cap `size` below the request and still echo the request back.

    Every walk ends: once past the pages `TotalItems` allows (plus `EXTRA_PAGES`), or past
    `max_pages` when no total is announced, it raises instead of asking for more.
    """

    fetch: Callable[[int, int], Page]
    size: int
    max_backoffs: int = 50
    summary: PagingSummary = field(default_factory=PagingSummary)
    max_pages: int = DEFAULT_MAX_PAGES
    #: Names the list in errors (`GET /spaces/accesstokens`).
    described: str = "the list"

    def __iter__(self) -> Iterator[list[dict[str, Any]]]:
        # The next page is asked for before this one is handed over, so the server works on it
        # while the caller validates and stores this one. A step back discards the guess.
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="nexudus-prefetch") as prefetch:
            ahead: tuple[int, Future[Page]] | None = None

            def fetch(number: int) -> Page:
                nonlocal ahead
                guessed, ahead = ahead, None
                if guessed is not None:
                    guessed_number, future = guessed
                    if guessed_number == number:
                        return future.result()
                    future.exception()  # wait for it: one request at a time, and its failure is moot
                return self.fetch(number, self.size)

            for records, next_number in self._walk(fetch):
                if next_number is not None:
                    ahead = (next_number, prefetch.submit(self.fetch, next_number, self.size))
                if records:
                    yield records
            if ahead is not None:
                ahead[1].exception()

    def _walk(self, fetch: Callable[[int], Page]) -> Iterator[tuple[list[dict[str, Any]], int | None]]:
        """(fresh records, the page to read next or None) for each page read."""
        seen = SeenKeys()
        number = 1
        #: The furthest page read: pages at or before it are re-reads after a step back.
        frontier = 0
        #: The longest page seen: the server's real page size (the last page may be shorter).
        page_length = 0
        previous_total: int | None = None
        stale_pages = 0
        while True:
            page = fetch(number)
            self.summary.pages += 1
            records = page.records
            page_length = max(page_length, len(records))
            total = page.total_items
            if previous_total is not None and total is not None and total < previous_total and number > 1:
                self.summary.backoffs += 1
                if self.summary.backoffs > self.max_backoffs:
                    raise ResponseFormatError(
                        f"{self.described}: the list kept shrinking while being read"
                        f" ({self.summary.backoffs} step-backs); try again later"
                    )
                frontier = max(frontier, number)
                number = max(1, number - math.ceil((previous_total - total) / max(page_length, 1)))
                previous_total = total
                continue
            previous_total = total
            self.summary.total_items = total

            fresh = [record for record in records if seen.add(record)]
            # New ground that only repeats what was read, three pages running: the server
            # is not paging at all (it ignores `page`).
            if number > frontier:
                stale_pages = stale_pages + 1 if records and not fresh else 0
                frontier = number
            if stale_pages >= 3:
                raise ResponseFormatError(
                    f"{self.described}: pages {number - 2} to {number} repeat records already read:"
                    " the server ignores `page`"
                )
            self.summary.records += len(fresh)
            more = bool(records) and self._has_next(page, number, len(records), page_length)
            if more:
                self._refuse_endless(number, total, page_length)
            else:
                self.summary.ended_short = total is not None and self.summary.records < total
            yield fresh, number + 1 if more else None
            if not more:
                return
            number += 1

    def _refuse_endless(self, number: int, total: int | None, page_length: int) -> None:
        """Raise when the server says there is more after page `number` than it could hold."""
        if total is not None:
            announced = math.ceil(total / page_length)
            if number + 1 > announced + EXTRA_PAGES:
                raise ResponseFormatError(
                    f"{self.described}: the server announced {total} items ({announced} pages of {page_length})"
                    f" but still claims more after page {number}; stopped rather than page for ever"
                )
        if number + 1 > self.max_pages:
            raise ResponseFormatError(
                f"{self.described}: still more after {number} pages, the most one walk reads"
                " (max_pages); stopped rather than page for ever"
            )

    @staticmethod
    def _has_next(page: Page, number: int, count: int, page_length: int) -> bool:
        # The documented envelope is not consistent (a by-Ids example says HasNextPage true on
        # its only page), so the arithmetic fields are trusted before the flag.
        if page.total_pages is not None:
            return number < page.total_pages
        if page.has_next_page is not None:
            return page.has_next_page
        if page.total_items is not None:
            return number * page_length < page.total_items
        # No envelope to go by: a page shorter than an earlier one is the last; otherwise
        # only an empty page ends the list.
        return count >= page_length
