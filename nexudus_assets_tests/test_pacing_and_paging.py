"""The rate limiter and the paginator as pure logic: a fake clock and scripted pages."""

import pytest

from nexudus_assets.nexudus import Page, RateLimiter, RateLimits, ResponseFormatError, Window
from nexudus_assets.nexudus.paging import PageNumberPaginator


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def test_the_limiter_spaces_requests_and_honours_every_window():
    clock = FakeClock()
    limiter = RateLimiter(
        RateLimits(all_methods=(Window(1, 0.1), Window(120, 60)), writes=(Window(60, 60),), margin=0),
        clock=clock,
        sleep=clock.sleep,
    )
    sent = []
    for _ in range(121):
        limiter.acquire(write=False)
        sent.append(clock.now)
    assert all(b - a >= 0.1 - 1e-9 for a, b in zip(sent, sent[1:], strict=False))
    assert sent[120] - sent[0] >= 60  # the 121st waits for the minute window
    clock.now += 120
    writes = []
    for _ in range(61):
        limiter.acquire(write=True)
        writes.append(clock.now)
    assert writes[60] - writes[0] >= 60


def test_a_retry_after_pause_holds_every_caller():
    clock = FakeClock()
    limiter = RateLimiter(RateLimits.unlimited(), clock=clock, sleep=clock.sleep)
    limiter.pause_until(5.0)
    assert limiter.acquire(write=False) == pytest.approx(5.0)


def test_a_shrinking_total_steps_back_and_finds_the_shifted_record():
    # ids 1..6, size 2; after page 2 is read, id 1 is deleted: 5 shifts onto page 2.
    answers = iter([
        Page(records=[{"Id": 1}, {"Id": 2}], total_items=6, has_next_page=True),
        Page(records=[{"Id": 3}, {"Id": 4}], total_items=6, has_next_page=True),
        Page(records=[{"Id": 6}], total_items=5, has_next_page=False),  # 5 slid back to page 2
        Page(records=[{"Id": 4}, {"Id": 5}], total_items=5, has_next_page=True),  # the re-read
        Page(records=[{"Id": 6}], total_items=5, has_next_page=False),
    ])
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
