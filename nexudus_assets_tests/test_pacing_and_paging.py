"""The pacer and the paginator as pure logic: a fake clock and scripted pages (the walk runs in a thread of its own)."""

import itertools
import threading
import time

import pytest

from nexudus_assets.nexudus import Pacer, Page, RateLimits, ResponseFormatError, Window
from nexudus_assets.nexudus.paging import EXTRA_PAGES, MAX_PASSES, PAGES_AHEAD, PageNumberPaginator, SeenKeys


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_the_pacer_spaces_requests_and_honours_every_window():
    clock = FakeClock()
    pacer = Pacer(
        RateLimits(all_methods=(Window(1, 0.1), Window(120, 60)), writes=(Window(60, 60),), margin=0),
        clock=clock,
        sleep=clock.sleep,
    )
    sent = []
    for _ in range(121):
        with pacer.slot(write=False):
            sent.append(clock.now)
    assert all(b - a >= 0.1 - 1e-9 for a, b in itertools.pairwise(sent))
    assert sent[120] - sent[0] >= 60  # the 121st waits for the minute window
    clock.now += 120
    writes = []
    for _ in range(61):
        with pacer.slot(write=True):
            writes.append(clock.now)
    assert writes[60] - writes[0] >= 60


def test_a_retry_after_pause_holds_every_caller():
    clock = FakeClock()
    pacer = Pacer(RateLimits.unlimited(), clock=clock, sleep=clock.sleep)
    pacer.throttled(5.0)
    with pacer.slot(write=False) as waited:
        assert waited == pytest.approx(5.0)
    with pacer.slot(write=False) as waited:
        assert waited == 0  # without limits, nothing slows the requests after the pause


def test_after_throttling_the_pacer_slows_every_request_for_a_while():
    clock = FakeClock()
    limits = RateLimits(all_methods=(Window(1, 0.1),), writes=(), margin=0, throttled_interval=1.0, slowdown_seconds=60)
    pacer = Pacer(limits, clock=clock, sleep=clock.sleep)
    pacer.throttled(2.0)
    sent = []
    for _ in range(70):
        with pacer.slot(write=False):
            sent.append(clock.now)
    assert sent[0] == pytest.approx(2.0)
    gaps = [b - a for a, b in itertools.pairwise(sent)]
    slowed = [gap for gap, at in zip(gaps, sent[1:], strict=True) if at <= 62.0]
    assert slowed and all(gap == pytest.approx(1.0) for gap in slowed)
    # Once the slowdown is over, the published interval alone spaces them again.
    assert gaps[-1] == pytest.approx(0.1)


def test_the_next_request_is_spaced_from_the_previous_answer_not_from_its_sending():
    clock = FakeClock()
    pacer = Pacer(
        RateLimits(all_methods=(Window(1, 0.1), Window(3, 10)), writes=(), margin=0), clock=clock, sleep=clock.sleep
    )
    sent = []
    for _ in range(4):
        with pacer.slot(write=False):
            sent.append(clock.now)
            clock.now += 0.25  # the answer takes a quarter of a second to come back
    assert sent[1] - sent[0] == pytest.approx(0.35)  # 0.25 in flight, then the 100 ms interval
    # The fourth waits ten seconds from the first answer, not from the first request.
    assert sent[3] == pytest.approx(sent[0] + 0.25 + 10)


def scripted(answers: list[Page], then: "ListServer"):
    """The answers in order, then whatever `then` serves: the list as it stands once they are given."""
    pending = iter(answers)
    return lambda number, size: next(pending, None) or then(number, size)


class ListServer:
    """Ids served `size` a page as they stand, with an honest envelope."""

    def __init__(self, ids: list[int], size: int) -> None:
        self.ids = ids
        self.size = size

    def __call__(self, number: int, size: int) -> Page:
        start = (number - 1) * self.size
        pages = -(-len(self.ids) // self.size)
        records = [{"Id": i} for i in self.ids[start : start + self.size]]
        return Page(records=records, total_items=len(self.ids), total_pages=pages, has_next_page=number < pages)


def test_a_shrinking_total_steps_back_and_finds_the_shifted_record():
    # ids 1..6, size 2; after page 2 is read, id 1 is deleted: 5 shifts onto page 2.
    answers = scripted(
        [
            Page(records=[{"Id": 1}, {"Id": 2}], total_items=6, has_next_page=True),
            Page(records=[{"Id": 3}, {"Id": 4}], total_items=6, has_next_page=True),
            Page(records=[{"Id": 6}], total_items=5, has_next_page=False),  # 5 slid back to page 2
            Page(records=[{"Id": 4}, {"Id": 5}], total_items=5, has_next_page=True),  # the re-read
            Page(records=[{"Id": 6}], total_items=5, has_next_page=False),
        ],
        then=ListServer([2, 3, 4, 5, 6], 2),
    )
    paginator = PageNumberPaginator(fetch=answers, size=2)
    seen = [record["Id"] for page in paginator for record in page]
    assert sorted(set(seen)) == [1, 2, 3, 4, 5, 6]
    assert paginator.summary.backoffs == 1
    assert paginator.summary.incomplete is None


def test_a_server_that_ignores_page_is_detected():
    same = Page(records=[{"Id": 1}, {"Id": 2}], has_next_page=True)
    paginator = PageNumberPaginator(fetch=lambda number, size: same, size=2)
    with pytest.raises(ResponseFormatError, match="ignores `page`"):
        list(paginator)


def test_without_has_next_page_the_walk_uses_total_pages_then_short_pages():
    def by_total(number: int, size: int) -> Page:
        return Page(records=[{"Id": number}], total_pages=2)

    assert list(PageNumberPaginator(fetch=by_total, size=1)) == [[{"Id": 1}], [{"Id": 2}], []]

    def by_length(number: int, size: int) -> Page:
        return Page(records=[{"Id": 1}, {"Id": 2}] if number == 1 else [{"Id": 3}])

    walk = PageNumberPaginator(fetch=by_length, size=2)
    assert list(walk) == [[{"Id": 1}, {"Id": 2}], [{"Id": 3}], []] and walk.summary.pages == 4


def test_a_list_shorter_than_promised_is_flagged():
    def short(number: int, size: int) -> Page:
        return Page(records=[{"Id": 1}] if number == 1 else [], total_items=3, has_next_page=number == 1)

    paginator = PageNumberPaginator(fetch=short, size=1)
    assert sum(len(page) for page in paginator) == 1
    assert paginator.summary.ended_short
    assert "ended after 1 of the 3 records it announced, in 2 passes alike" in str(paginator.summary.incomplete)


def test_a_list_that_announces_no_total_stops_at_the_page_cap():
    fresh_ids = iter(range(1, 1_000_000))

    def full_page_of_fresh_ids(number: int, size: int) -> Page:
        return Page(records=[{"Id": next(fresh_ids)}, {"Id": next(fresh_ids)}])

    paginator = PageNumberPaginator(fetch=full_page_of_fresh_ids, size=2, max_pages=5)
    with pytest.raises(ResponseFormatError, match="still more after 5 pages"):
        list(paginator)
    assert paginator.summary.pages == 5


def test_a_lying_total_pages_does_not_outweigh_the_total_items():
    fresh_ids = iter(range(1, 1_000_000))

    def endless(number: int, size: int) -> Page:
        return Page(records=[{"Id": next(fresh_ids)}], total_items=4, total_pages=number + 1, has_next_page=True)

    paginator = PageNumberPaginator(fetch=endless, size=1)
    with pytest.raises(ResponseFormatError, match="announced 4 items"):
        list(paginator)
    assert paginator.summary.pages == 4 + 3


def test_seen_keys_tell_hostile_ids_apart_from_real_ones():
    seen = SeenKeys()
    records = [{"Id": 1}, {"Id": True}, {"Id": 1.0}, {"Id": "1"}, {"Id": {"a": 1}}, {"Id": [1]}, {"Id": 2**70}]
    assert [seen.add(record) for record in records] == [True] * len(records)
    assert [seen.add(record) for record in records] == [False] * len(records)


class CappedServer:
    """A list of ids served `cap` at a time whatever `size` asks, echoing the asked size back."""

    def __init__(self, ids: list[int], cap: int, *, envelope: str = "full") -> None:
        self.ids = ids
        self.cap = cap
        self.envelope = envelope
        self.after_page: dict[int, list[int]] = {}  # page number -> ids deleted once it is served

    def __call__(self, number: int, size: int) -> Page:
        start = (number - 1) * self.cap
        records = [{"Id": i} for i in self.ids[start : start + self.cap]]
        total = len(self.ids)
        for gone in self.after_page.pop(number, []):
            self.ids.remove(gone)
        if self.envelope == "total-items-only":
            return Page(records=records, total_items=total)
        if self.envelope == "records-only":
            return Page(records=records)
        # "asked-size": `TotalPages` and `HasNextPage` computed from the size asked, not served.
        pages = -(-total // (size if self.envelope == "asked-size" else self.cap))
        return Page(
            records=records, total_items=total, total_pages=pages, has_next_page=number < pages, current_page_size=size
        )


@pytest.mark.parametrize("envelope", ["full", "total-items-only"])
def test_deletions_behind_the_walk_skip_nothing_when_the_server_caps_the_page_size(envelope):
    # 1000 asked, 100 served (and 1000 echoed back); 250 records behind the walk vanish after page 3.
    server = CappedServer(list(range(1, 1001)), cap=100, envelope=envelope)
    server.after_page[3] = list(range(1, 251))
    paginator = PageNumberPaginator(fetch=server, size=1000)
    seen = [record["Id"] for page in paginator for record in page]
    assert set(range(251, 1001)) <= set(seen)
    assert paginator.summary.records == len(set(seen)) and paginator.summary.incomplete is None


def test_total_pages_wins_over_a_has_next_page_that_contradicts_it():
    # The reference's by-Ids example: one record, one page, and yet HasNextPage true.
    calls = []

    def fetch(number, size):
        calls.append(number)
        return Page(records=[{"Id": 7}], total_items=1, total_pages=1, has_next_page=True)

    assert [r["Id"] for page in PageNumberPaginator(fetch=fetch, size=25) for r in page] == [7]
    assert calls == [1]


def test_with_total_items_alone_the_walk_reads_until_it_has_them_all():
    server = CappedServer(list(range(1, 251)), cap=100, envelope="total-items-only")
    paginator = PageNumberPaginator(fetch=server, size=1000)
    assert sum(len(page) for page in paginator) == 250
    # Three pages, then the same three again to see that nothing moved past the walk.
    assert (paginator.summary.pages, paginator.summary.verification_pages, paginator.summary.passes) == (6, 3, 2)


def test_with_no_envelope_a_short_first_page_is_not_taken_for_the_last():
    # A server capping at 100 with nothing but `Records`: only an empty or shorter page ends the list.
    server = CappedServer(list(range(1, 301)), cap=100, envelope="records-only")
    paginator = PageNumberPaginator(fetch=server, size=1000)
    assert sum(len(page) for page in paginator) == 300
    assert paginator.summary.pages == 2 * 4  # the fourth, empty, ends each pass


def test_a_server_capping_pages_below_the_size_asked_with_total_pages_from_that_size_gives_every_record():
    # 2,500 records, 1000 asked, 100 served, `TotalPages: 3` and `HasNextPage` false after page 3.
    server = CappedServer(list(range(1, 2501)), cap=100, envelope="asked-size")
    paginator = PageNumberPaginator(fetch=server, size=1000)
    seen = [record["Id"] for page in paginator for record in page]
    assert sorted(seen) == list(range(1, 2501))
    assert paginator.summary.incomplete is None
    assert paginator.summary.pages == 25 + 25


def test_a_total_that_grows_by_a_page_with_every_page_stops_the_walk_within_a_bound_and_says_why():
    ids = list(range(1, 301))
    requests = []

    def growing(number: int, size: int) -> Page:
        requests.append(number)
        start = (number - 1) * 100
        page = Page(records=[{"Id": i} for i in ids[start : start + 100]], total_items=len(ids), has_next_page=True)
        ids.extend(range(ids[-1] + 1, ids[-1] + 101))  # a page more after every page
        return page

    paginator = PageNumberPaginator(fetch=growing, size=100)
    seen = {record["Id"] for page in paginator for record in page}
    assert set(range(1, 301)) <= seen  # everything that was there at the start is read
    assert len(requests) == 3 + EXTRA_PAGES  # bound by the first answer's 300, not the growing total
    assert paginator.summary.incomplete is not None
    assert "announced 300 records at first" in paginator.summary.incomplete


class DriftingServer:
    """Ids served `size` a page; between two page requests, a record before the boundary is
    deleted and one after it inserted, so `TotalItems` never changes."""

    def __init__(self, ids: list[int], size: int, drift_after_page: int, delete: int, insert: int) -> None:
        self.ids = ids
        self.size = size
        self.drift = (drift_after_page, delete, insert)
        self.requests = 0

    def __call__(self, number: int, size: int) -> Page:
        self.requests += 1
        start = (number - 1) * self.size
        page = Page(records=[{"Id": i} for i in self.ids[start : start + self.size]], total_items=len(self.ids))
        after, delete, insert = self.drift
        if self.requests == after:
            self.ids.remove(delete)
            self.ids = sorted([*self.ids, insert])
        return page


def test_a_deletion_before_a_boundary_and_an_insertion_after_it_skip_no_record():
    # Ids interleaved: the inserted record gets a low Id after the boundary of page 2, not the highest.
    server = DriftingServer([10, 20, 30, 40, 50, 60, 70, 80, 90], size=3, drift_after_page=1, delete=20, insert=75)
    paginator = PageNumberPaginator(fetch=server, size=3)
    seen = {record["Id"] for page in paginator for record in page}
    # 40 moved onto page 1, already read, when 20 went: a single pass would miss it.
    assert {10, 30, 40, 50, 60, 70, 80, 90} <= seen and 75 in seen
    summary = paginator.summary
    assert summary.incomplete is None
    # The first pass (3 pages) found nothing amiss; the second found 40; the third, nothing new.
    assert (summary.passes, summary.pages, summary.verification_pages) == (3, 9, 6)


def test_without_drift_a_walk_of_several_pages_costs_one_more_pass_and_a_single_page_none():
    server = ListServer(list(range(1, 10)), 3)
    paginator = PageNumberPaginator(fetch=server, size=3)
    assert sum(len(page) for page in paginator) == 9
    assert (paginator.summary.passes, paginator.summary.verification_pages) == (2, 3)
    single = PageNumberPaginator(fetch=ListServer(list(range(1, 4)), 3), size=3)
    assert sum(len(page) for page in single) == 3
    assert (single.summary.passes, single.summary.pages, single.summary.verification_pages) == (1, 1, 0)


def test_a_list_that_keeps_drifting_is_reported_unsettled():
    ids = list(range(1, 31))
    state = {"next": 1000}

    def drifting(number: int, size: int) -> Page:
        page = Page(records=[{"Id": i} for i in ids[(number - 1) * 5 : number * 5]], total_items=len(ids))
        ids.remove(ids[0])  # always before the boundary
        ids.append(state["next"])  # always after it: the total holds still
        state["next"] += 1
        return page

    paginator = PageNumberPaginator(fetch=drifting, size=5)
    list(paginator)
    assert paginator.summary.passes == MAX_PASSES
    assert "kept changing while it was read" in str(paginator.summary.incomplete)


def test_a_record_answered_twice_in_the_first_pass_is_handed_over_twice():
    answers = scripted(
        [
            Page(records=[{"Id": 1, "V": "old"}, {"Id": 2}], total_items=3),
            Page(records=[{"Id": 1, "V": "new"}, {"Id": 3}], total_items=3),
        ],
        then=ListServer([1, 2, 3], 2),
    )
    handed = [record for page in PageNumberPaginator(fetch=answers, size=2) for record in page]
    assert [record.get("V") for record in handed if record["Id"] == 1] == ["old", "new"]


def test_a_list_short_of_its_total_is_read_again_before_the_walk_is_called_short():
    # The record counted in `TotalItems` arrives with the second read: the walk is complete.
    answers = scripted([Page(records=[{"Id": 1}], total_items=2)], then=ListServer([1, 2], 5))
    paginator = PageNumberPaginator(fetch=answers, size=5)
    assert sorted(record["Id"] for page in paginator for record in page) == [1, 2]
    assert paginator.summary.incomplete is None


class RecordingServer(ListServer):
    """A `ListServer` that remembers which pages were asked for, in order, and from which thread."""

    def __init__(self, ids: list[int], size: int, fail_on: int | None = None, seconds: float = 0.0) -> None:
        super().__init__(ids, size)
        self.asked: list[int] = []
        self.threads: set[str] = set()
        self.fail_on = fail_on
        self.seconds = seconds

    def __call__(self, number: int, size: int) -> Page:
        time.sleep(self.seconds)
        self.asked.append(number)
        self.threads.add(threading.current_thread().name)
        if number == self.fail_on:
            raise ResponseFormatError(f"page {number} is not a list envelope")
        return super().__call__(number, size)


def wait_until(condition, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def test_the_walk_reads_ahead_of_a_caller_busy_with_a_page_and_no_further_than_pages_ahead():
    server = RecordingServer(list(range(1, 21)), 2)
    walk = iter(PageNumberPaginator(fetch=server, size=2))
    next(walk)
    # While the caller holds page 1: PAGES_AHEAD pages wait for it, and the next is read.
    assert wait_until(lambda: len(server.asked) == 2 + PAGES_AHEAD)
    time.sleep(0.1)
    assert len(server.asked) == 2 + PAGES_AHEAD
    assert sum(len(page) for page in walk) == 18
    assert threading.current_thread().name not in server.threads


def test_the_pass_that_checks_the_walk_goes_on_while_the_caller_stores_the_last_pages():
    # 4 pages, then the pass that checks them: all 8 requests made while the caller holds page 2
    # (pages 3 and 4 and the empty list that ends the first pass wait for it).
    server = RecordingServer(list(range(1, 9)), 2)
    walk = iter(PageNumberPaginator(fetch=server, size=2))
    handed = [next(walk), next(walk)]
    assert wait_until(lambda: len(server.asked) == 8)
    assert server.asked == [1, 2, 3, 4, 1, 2, 3, 4]
    assert [[record["Id"] for record in page] for page in [*handed, *walk]] == [[1, 2], [3, 4], [5, 6], [7, 8], []]


def test_a_walk_of_several_pages_hands_over_an_empty_list_where_its_first_pass_ends():
    # Records a check finds missing come after it; a walk of one page needs no check and has none.
    server = DriftingServer([10, 20, 30, 40, 50, 60, 70, 80, 90], size=3, drift_after_page=1, delete=20, insert=75)
    walk = list(PageNumberPaginator(fetch=server, size=3))
    assert walk.count([]) == 1
    first_pass, checked = walk[: walk.index([])], walk[walk.index([]) + 1 :]
    assert [r["Id"] for page in first_pass for r in page] == [10, 20, 30, 50, 60, 70, 75, 80, 90]
    assert [r["Id"] for page in checked for r in page] == [40]
    assert list(PageNumberPaginator(fetch=ListServer([1, 2], 2), size=2)) == [[{"Id": 1}, {"Id": 2}]]


def test_a_failed_request_reaches_the_caller_after_the_pages_before_it():
    server = RecordingServer(list(range(1, 9)), 2, fail_on=3)
    walk = iter(PageNumberPaginator(fetch=server, size=2))
    handed = [record["Id"] for _ in range(2) for record in next(walk)]
    with pytest.raises(ResponseFormatError, match="page 3"):
        next(walk)
    assert handed == [1, 2, 3, 4]
    assert server.asked == [1, 2, 3]


def test_a_caller_that_stops_early_stops_the_walk():
    server = RecordingServer(list(range(1, 201)), 2)
    walk = iter(PageNumberPaginator(fetch=server, size=2))
    next(walk)
    assert wait_until(lambda: len(server.asked) == 2 + PAGES_AHEAD)
    walk.close()  # what a `for` loop left by an exception does
    asked = len(server.asked)
    time.sleep(0.2)
    assert asked == 2 + PAGES_AHEAD and len(server.asked) == asked
    assert not any(thread.name == "nexudus-walk" for thread in threading.enumerate())


def test_a_caller_that_stops_during_the_checking_pass_stops_it_after_the_request_it_is_making():
    # 4 pages, then a pass of 4 more that hands nothing over; each answer takes 50 ms.
    server = RecordingServer(list(range(1, 9)), 2, seconds=0.05)
    walk = iter(PageNumberPaginator(fetch=server, size=2))
    for _ in range(4):
        next(walk)
    walk.close()  # the walk is making the first request of its checking pass
    assert server.asked in ([1, 2, 3, 4], [1, 2, 3, 4, 1])
