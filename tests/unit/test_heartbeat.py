"""SilenceWatch, the one silence detector of every dispycos link, on a fake clock."""

from twisted.internet.task import Clock

from dispycos.heartbeat import SilenceWatch


def make(limit=5, interval=1, ping=True):
    clock = Clock()
    silent, pings = [], []
    watch = SilenceWatch(clock, interval, limit, silent.append, (lambda: pings.append(clock.seconds())) if ping else None)
    return clock, watch, silent, pings


def test_pings_every_interval_while_the_peer_answers():
    clock, watch, silent, pings = make()
    watch.start()
    for _ in range(20):
        clock.advance(1)
        watch.heard()  # the answer to each ping
    assert pings == [float(i) for i in range(1, 21)] and silent == [] and watch.watching


def test_silence_over_the_limit_is_reported_once_and_the_watch_stops():
    clock, watch, silent, pings = make(limit=5)
    watch.start()
    clock.advance(1)
    watch.heard()  # last word at t=1
    for _ in range(10):
        clock.advance(1)
    assert silent == [6.0] and not watch.watching  # checked at t=7: 6 s silent > 5
    assert pings == [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]


def test_interval_and_limit_may_change_between_checks():
    state = {"interval": 1, "limit": 100}
    clock = Clock()
    silent = []
    watch = SilenceWatch(clock, lambda: state["interval"], lambda: state["limit"], silent.append)
    watch.start()
    clock.advance(1)
    state["interval"] = 3
    clock.advance(1)  # the loop takes the new interval at this check
    assert silent == []
    state["limit"] = 2
    clock.advance(3)
    assert silent == [5.0]


def test_no_limit_never_declares_silence():
    for limit in (None, 0):
        clock, watch, silent, pings = make(limit=limit)
        watch.start(now=True)
        clock.pump([10] * 10)
        assert silent == [] and len(pings) == 11 and watch.watching
        watch.stop()
        clock.advance(100)
        assert len(pings) == 11 and not watch.watching


def test_restart_keeps_what_was_heard():
    clock, watch, silent, pings = make(limit=5, ping=False)
    watch.start()
    clock.advance(4)
    watch.start()  # e.g. at a computation's own pulse interval: silence still counts from t=0
    clock.advance(2)
    assert silent == [6.0]
