"""dfs.net.logthrottle: one line per host per interval, then the count of the ones held back."""

from __future__ import annotations

from dfs.net.logthrottle import OTHERS, LogThrottle


def test_the_first_event_is_logged_and_the_rest_are_summed_up_once_an_interval() -> None:
    t = LogThrottle(interval=60.0)
    assert t.note("10.0.0.1", 0.0)
    assert not any(t.note("10.0.0.1", 0.001 * i) for i in range(1, 2000))
    assert t.note("10.0.0.2", 5.0)  # another host has its own line
    assert t.due(59.0) == []
    assert t.due(60.5) == [("10.0.0.1", 1999, 60.5)]  # 10.0.0.2 held nothing back: forgotten
    assert not t.note("10.0.0.1", 70.0)  # still flooding: counted in the next interval
    assert t.due(100.0) == []
    assert t.due(121.0) == [("10.0.0.1", 1, 60.5)]
    assert t.due(182.0) == []  # a quiet interval ends it ...
    assert t.note("10.0.0.1", 183.0)  # ... and the next attempt is logged in full
    assert t.note("10.0.0.2", 183.0)


def test_past_max_keys_the_other_hosts_share_one_line() -> None:
    t = LogThrottle(interval=10.0, max_keys=3)
    assert [t.note(f"h{i}", 0.0) for i in range(3)] == [True, True, True]
    assert t.note("h3", 0.0)  # the first of the others is logged ...
    assert not any(t.note(f"h{i}", 1.0) for i in range(4, 500))  # ... the rest counted
    assert t.due(11.0) == [(OTHERS, 496, 11.0)]


def test_every_sums_up_what_is_held_back_when_the_server_stops() -> None:
    t = LogThrottle(interval=60.0)
    t.note("a", 0.0)
    t.note("a", 1.0)
    t.note("b", 1.0)
    assert t.due(2.0, every=True) == [("a", 1, 2.0)]
    assert t.due(3.0, every=True) == [] and t.note("a", 3.0)
