"""The pacer and the paginator as pure logic: a fake clock and scripted pages."""

import itertools

import pytest

from nexudus_assets.nexudus import Pacer, Page, RateLimits, ResponseFormatError, Window
from nexudus_assets.nexudus.paging import PageNumberPaginator, SeenKeys


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


def test_a_shrinking_total_steps_back_and_finds_the_shifted_record():
    # ids 1..6, size 2; after page 2 is read, id 1 is deleted: 5 shifts onto page 2.
    answers = iter(
        [
            Page(records=[{"Id": 1}, {"Id": 2}], total_items=6, has_next_page=True),
            Page(records=[{"Id": 3}, {"Id": 4}], total_items=6, has_next_page=True),
            Page(records=[{"Id": 6}], total_items=5, has_next_page=False),  # 5 slid back to page 2
            Page(records=[{"Id": 4}, {"Id": 5}], total_items=5, has_next_page=True),  # the re-read
            Page(records=[{"Id": 6}], total_items=5, has_next_page=False),
        ]
    )
    paginator = PageNumberPaginator(fetch=lambda number, size: next(answers), size=2)
    seen = [record["Id"] for page in paginator for record in page]
    assert seen == [1, 2, 3, 4, 5, 6]
    assert paginator.summary.backoffs == 1


def test_a_server_that_ignores_page_is_detected():
    same = Page(records=[{"Id": 1}, {"Id": 2}], has_next_page=True)
    paginator = PageNumberPaginator(fetch=lambda number, size: same, size=2)
    with pytest.raises(ResponseFormatError, match="ignores `page`"):
        list(paginator)


def test_without_has_next_page_the_walk_uses_total_pages_then_short_pages():
    by_total = iter([Page(records=[{"Id": 1}], total_pages=2), Page(records=[{"Id": 2}], total_pages=2)])
    assert len(list(PageNumberPaginator(fetch=lambda n, s: next(by_total), size=1))) == 2
    by_length = iter([Page(records=[{"Id": 1}, {"Id": 2}]), Page(records=[{"Id": 3}])])
    assert len(list(PageNumberPaginator(fetch=lambda n, s: next(by_length), size=2))) == 2


def test_a_list_shorter_than_promised_is_flagged():
    answers = iter([Page(records=[{"Id": 1}], total_items=3, has_next_page=True), Page(records=[], total_items=3)])
    paginator = PageNumberPaginator(fetch=lambda n, s: next(answers), size=1)
    assert sum(len(page) for page in paginator) == 1
    assert paginator.summary.ended_short


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
        pages = -(-total // self.cap)
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
    assert len(seen) == len(set(seen))
    assert set(range(251, 1001)) <= set(seen)


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
    assert paginator.summary.pages == 3


def test_with_no_envelope_a_short_first_page_is_not_taken_for_the_last():
    # A server capping at 100 with nothing but `Records`: only an empty or shorter page ends the list.
    server = CappedServer(list(range(1, 301)), cap=100, envelope="records-only")
    paginator = PageNumberPaginator(fetch=server, size=1000)
    assert sum(len(page) for page in paginator) == 300
    assert paginator.summary.pages == 4  # the fourth, empty, ends it
