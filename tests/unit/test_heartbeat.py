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


def test_a_check_after_our_own_stall_waits_for_the_reactor_to_read():
    """
    Our reactor did not run for 30 s (the peer's answers wait unread in the
    socket): the late check declares nothing; the next one decides, on what
    the reactor read in between.
    """
    clock, watch, silent, pings = make(limit=5)
    watch.start()
    clock.advance(1)
    watch.heard()
    clock.advance(30)  # one late check, at t=31: 30 s "silent"
    assert silent == [] and watch.watching and pings == [1.0, 31.0]
    watch.heard()  # the reactor read the answers that were waiting
    clock.advance(1)
    assert silent == [] and watch.watching
    # a peer that really is silent is still declared, one interval later
    clock.advance(30)
    assert silent == [] and watch.watching
    clock.advance(1)
    assert silent == [32.0] and not watch.watching  # heard last at t=31
