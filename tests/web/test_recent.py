"""web.recent: a value is served while it is less than a second old, judged by the ``now`` given."""

from datetime import timedelta

import pytest
from django.utils import timezone

from web.recent import RecentReads


@pytest.fixture
def kept(settings):
    settings.READS_MAX_AGE_SECONDS = 1
    return RecentReads(size=2)


class Reads:
    """A read that says how often it ran and what ``now`` it was given."""

    def __init__(self):
        self.times = []

    def __call__(self, now):
        self.times.append(now)
        return len(self.times)


T0 = timezone.now()


def at(seconds: float):
    return T0 + timedelta(seconds=seconds)


def test_a_value_is_served_until_it_is_a_second_old(kept):
    read = Reads()

    assert kept.get("k", now=at(0), read=read) == (1, at(0))
    assert kept.get("k", now=at(0.999), read=read) == (1, at(0))
    assert kept.get("k", now=at(1), read=read) == (2, at(1))
    assert read.times == [at(0), at(1)]


def test_never_longer_than_a_second_whatever_the_setting(kept, settings):
    settings.READS_MAX_AGE_SECONDS = 60
    read = Reads()
    kept.get("k", now=at(0), read=read)

    assert kept.get("k", now=at(1.5), read=read) == (2, at(1.5))


def test_zero_reads_every_time(kept, settings):
    settings.READS_MAX_AGE_SECONDS = 0
    read = Reads()

    assert [kept.get("k", now=at(0), read=read) for _ in range(2)] == [(1, at(0)), (2, at(0))]


def test_a_clock_that_steps_back_does_not_keep_a_value_alive(kept):
    read = Reads()
    kept.get("k", now=at(10), read=read)

    assert kept.get("k", now=at(9.5), read=read) == (1, at(10))  # read while this caller waited: fresh enough
    assert kept.get("k", now=at(8), read=read) == (2, at(8))


def test_a_failed_read_keeps_nothing(kept):
    def failing(now):
        raise LookupError

    with pytest.raises(LookupError):
        kept.get("k", now=at(0), read=failing)
    assert kept.get("k", now=at(0.1), read=Reads()) == (1, at(0.1))


def test_keys_are_kept_apart_and_the_least_recently_used_goes_first(kept):
    read = Reads()
    kept.get("a", now=at(0), read=read)
    kept.get("b", now=at(0), read=read)
    kept.get("a", now=at(0.1), read=read)  # served: "a" is now the most recently used
    kept.get("c", now=at(0.2), read=read)  # the third key: "b" goes

    assert kept.get("a", now=at(0.3), read=read) == (1, at(0))
    assert kept.get("b", now=at(0.3), read=read) == (4, at(0.3))
