"""The pacer: by default never more than 1 send in any 2 s window (with a margin), callers in
order; any other limit holds the same way."""

import asyncio

import pytest

from okx_loan_exporter.pacing import Pacer


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_by_default_one_send_per_window_with_its_margin():
    clock = Clock()
    pacer = Pacer(clock=clock)
    assert [pacer.reserve() for _ in range(4)] == pytest.approx([0.0, 2.2, 4.4, 6.6])


def test_two_at_once_then_one_window_later():
    clock = Clock()
    pacer = Pacer(2, clock=clock)
    assert [pacer.reserve() for _ in range(5)] == pytest.approx([0.0, 0.0, 2.2, 2.2, 4.4])


def test_an_idle_pacer_sends_at_once_again():
    clock = Clock()
    pacer = Pacer(2, clock=clock)
    pacer.reserve(), pacer.reserve()
    clock.now += 2.2
    assert pacer.reserve() == 0.0
    clock.now += 0.5
    assert pacer.reserve() == 0.0
    assert pacer.reserve() == pytest.approx(1.7)  # the older of the last two sends + 2.2 s


@pytest.mark.parametrize("limit", [1, 2])
def test_no_window_ever_holds_more_than_the_limit(limit):
    clock = Clock()
    sends: list[float] = []

    async def sleep(delay: float) -> None:
        clock.now += delay

    async def run() -> None:
        pacer = Pacer(limit, clock=clock, sleep=sleep)
        for step in (0.0, 0.1, 0.0, 0.7, 0.0, 0.0, 3.0, 0.0, 0.0, 0.0):
            clock.now += step
            await pacer.wait_turn()
            sends.append(clock.now)

    asyncio.run(run())
    for start in sends:
        assert sum(start <= at < start + 2.0 for at in sends) <= limit, sends
    assert len(sends) == 10


def test_a_request_that_ended_late_counts_its_window_from_its_end():
    clock = Clock()
    pacer = Pacer(clock=clock)
    assert pacer.reserve() == 0.0
    clock.now += 1.5  # it waited for a connection, then for its answer
    pacer.finished()
    assert pacer.reserve() == pytest.approx(2.2)  # 2.2 s after it ended, not after it was booked
    clock.now += 2.2
    pacer.finished()  # on time: nothing moves
    assert pacer.reserve() == pytest.approx(2.2)
