"""
Service windows (--service_start/--service_stop/--service_end): the pure
logic with an injected clock, and its wiring into NodeService with
twisted.internet.task.Clock.
"""

from datetime import datetime, timedelta

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from dispycos.errors import DispycosError
from dispycos.node.hosting import HostedComputation
from dispycos.node.service import NodeService
from dispycos.node.service_window import (
    ENDED,
    IN_SERVICE,
    STOPPED,
    ServiceWindow,
    ServiceWindowError,
    parse_hhmm,
)

DAY = datetime(2024, 3, 5)


def at(hhmm, day=0):
    h, m = (int(x) for x in hhmm.split(":"))
    return DAY + timedelta(days=day, hours=h, minutes=m)


def test_parse_hhmm():
    assert parse_hhmm("00:00") == 0
    assert parse_hhmm("7:05") == 7 * 60 + 5
    assert parse_hhmm(" 23:59 ") == 23 * 60 + 59
    for bad in ["24:00", "12:60", "1200", "12:5x", "", "-1:00", "12:00:00", None, 1200, "a:b"]:
        with pytest.raises(ServiceWindowError):
            parse_hhmm(bad)


def test_overnight_window_17_07_08():
    w = ServiceWindow("17:00", "07:00", "08:00")
    expect = {
        "17:00": IN_SERVICE, "18:00": IN_SERVICE, "23:59": IN_SERVICE, "00:00": IN_SERVICE,
        "06:59": IN_SERVICE, "07:00": STOPPED, "07:30": STOPPED, "07:59": STOPPED,
        "08:00": ENDED, "12:00": ENDED, "16:59": ENDED,
    }
    for hhmm, phase in expect.items():
        assert w.phase(at(hhmm)) == phase, hhmm
    assert w.in_service(at("18:00")) and w.in_service(at("06:59"))
    assert not w.in_service(at("07:00")) and w.past_stop(at("07:59")) and not w.past_end(at("07:59"))
    assert w.past_end(at("08:00")) and w.past_end(at("16:59")) and w.past_stop(at("16:59"))
    # Seconds precision at the boundaries.
    assert w.phase(at("06:59") + timedelta(seconds=59.9)) == IN_SERVICE
    assert w.phase(at("07:59") + timedelta(seconds=59.9)) == STOPPED


def test_overnight_next_transition():
    w = ServiceWindow("17:00", "07:00", "08:00")
    assert w.next_transition(at("18:00")) == (13 * 3600, STOPPED)
    assert w.next_transition(at("06:59")) == (60, STOPPED)
    assert w.next_transition(at("07:00")) == (3600, ENDED)
    assert w.next_transition(at("07:30")) == (1800, ENDED)
    assert w.next_transition(at("08:00")) == (9 * 3600, IN_SERVICE)
    assert w.next_transition(at("16:59")) == (60, IN_SERVICE)
    # Walking transitions for two days visits every phase in order.
    t, seen = at("12:00"), []
    for _ in range(6):
        delay, phase = w.next_transition(t)
        t += timedelta(seconds=delay)
        assert w.phase(t) == phase
        seen.append((t.strftime("%H:%M"), phase))
    assert seen == [("17:00", IN_SERVICE), ("07:00", STOPPED), ("08:00", ENDED)] * 2


def test_same_day_window():
    w = ServiceWindow("09:00", "17:00", "18:30")
    assert w.phase(at("08:59")) == ENDED
    assert w.phase(at("09:00")) == IN_SERVICE
    assert w.phase(at("16:59")) == IN_SERVICE
    assert w.phase(at("17:00")) == STOPPED
    assert w.phase(at("18:29")) == STOPPED
    assert w.phase(at("18:30")) == ENDED
    assert w.phase(at("23:00")) == ENDED
    assert w.next_transition(at("18:30")) == (14.5 * 3600, IN_SERVICE)
    assert w.next_transition(at("10:00")) == (7 * 3600, STOPPED)


def test_end_wraps_past_midnight():
    # Serves in the day, lets computations run on through the night.
    w = ServiceWindow("08:00", "17:00", "07:00")
    assert w.phase(at("12:00")) == IN_SERVICE
    assert w.phase(at("23:00")) == STOPPED
    assert w.phase(at("06:59")) == STOPPED
    assert w.phase(at("07:00")) == ENDED
    assert w.phase(at("07:59")) == ENDED


def test_only_stop_or_only_end():
    only_stop = ServiceWindow("09:00", stop="17:00")
    assert only_stop.phase(at("16:00")) == IN_SERVICE
    assert only_stop.phase(at("17:00")) == STOPPED
    assert only_stop.phase(at("08:59")) == STOPPED  # never ENDED: running ones go on
    assert only_stop.next_transition(at("20:00")) == (13 * 3600, IN_SERVICE)
    only_end = ServiceWindow("09:00", end="17:00")
    assert only_end.phase(at("16:59")) == IN_SERVICE
    assert only_end.phase(at("17:00")) == ENDED
    assert only_end.next_transition(at("16:00")) == (3600, ENDED)


def test_start_defaults_to_now():
    now = at("10:17") + timedelta(seconds=30)
    w = ServiceWindow(stop="12:00", clock=lambda: now)
    assert w.start == 10 * 60 + 17
    assert w.in_service()  # the injected clock is "now"
    assert w.phase(at("12:00")) == STOPPED
    assert w.phase(at("10:16")) == STOPPED
    # A Clock (seconds() is a POSIX timestamp, read as local time) works too.
    clock = Clock()
    clock.advance(at("22:00").timestamp())
    w = ServiceWindow(end="06:00", clock=clock)
    assert w.start == 22 * 60 and w.in_service()
    clock.advance(8 * 3600)
    assert w.phase() == ENDED and w.next_transition()[1] == IN_SERVICE


def test_validation():
    with pytest.raises(ServiceWindowError, match="stop time or an end time"):
        ServiceWindow("17:00")
    with pytest.raises(ServiceWindowError, match="not a time"):
        ServiceWindow("17:00", "25:00")
    with pytest.raises(ServiceWindowError, match="not a time"):
        ServiceWindow("5pm", "07:00")
    with pytest.raises(ServiceWindowError, match="equals the start"):
        ServiceWindow("17:00", "17:00")
    with pytest.raises(ServiceWindowError, match="equals the start"):
        ServiceWindow("17:00", "07:00", "17:00")
    with pytest.raises(ServiceWindowError, match="before the stop"):
        ServiceWindow("17:00", "08:00", "07:00")
    with pytest.raises(ServiceWindowError, match="before the stop"):
        ServiceWindow("09:00", "17:00", "16:00")
    ServiceWindow("17:00", "07:00", "07:00")  # stop == end: terminate at stop


def test_options_validate_service_times():
    from twisted.python import usage

    from dispycos.node.tap import Options

    o = Options()
    o.parseOptions(["--service_start", "17:00", "--service_stop", "07:00", "--service_end", "08:00"])
    assert (o["service_start"], o["service_stop"], o["service_end"]) == ("17:00", "07:00", "08:00")
    for argv in (["--service_start", "17:00"], ["--service_stop", "7"], ["--service_start", "9:00", "--service_stop", "9:00"]):
        with pytest.raises(usage.UsageError):
            Options().parseOptions(argv)


# -- wiring into the node, with a Clock as its reactor ----------------------------


class FakeProto:
    connected = False


def make_node(clock, tmp_path, **kw):
    node = NodeService(clock, cpus=0, hosts=["127.0.0.1"], ports=[0], node_name="nodeW",
                       dest_path=str(tmp_path), **kw)
    node.node_dir = str(tmp_path)
    node.port = 1
    return node


def fake_active(node, computation="c1"):
    node.active = HostedComputation(computation, FakeProto(), "127.0.0.1", {}, initialized=True, client="x",
                                    key=b"", components=b"", served=True)
    return node.active


def reserve_error(node):
    """What a scheduler asking to hold the node for computation c2 (its first command) gets."""
    with pytest.raises(DispycosError) as refused:
        node.prepare(FakeProto(), "c2", [])
    return refused.value


def test_node_follows_overnight_window(tmp_path):
    clock = Clock()
    clock.advance(at("16:00").timestamp())
    window = ServiceWindow("17:00", "07:00", "08:00", clock=clock)
    node = make_node(clock, tmp_path, service_window=window)
    releases = []
    real_release = node.release

    def release(computation, terminate):
        releases.append((computation, terminate))
        return real_release(computation, terminate)

    node.release = release
    node._start_extras()
    try:
        assert node.service_phase == ENDED
        err = reserve_error(node)
        assert isinstance(err, DispycosError) and "outside its service window" in str(err) and "nodeW" in str(err)

        clock.advance(3600)  # 17:00
        assert node.service_phase == IN_SERVICE
        fake_active(node)
        clock.advance(14 * 3600 - 1)  # 06:59:59
        assert node.service_phase == IN_SERVICE and node.active is not None
        clock.advance(1)  # 07:00: no new computation, the running one goes on
        assert node.service_phase == STOPPED
        assert node.active is not None and releases == []
        assert "outside its service window" in str(reserve_error(node))
        clock.advance(3600)  # 08:00: the running computation is terminated
        assert node.service_phase == ENDED
        assert releases == [("c1", True)] and node.active is None
        assert node.served == 1
        clock.advance(9 * 3600)  # 17:00 again
        assert node.service_phase == IN_SERVICE
        node._check_accepting()  # does not raise
    finally:
        node._stop_extras()
    assert not clock.getDelayedCalls()


def test_node_serve_limit_calls_exit_hook(tmp_path):
    clock = Clock()
    exits = []
    node = make_node(clock, tmp_path, serve=2, on_exit=lambda: exits.append(clock.seconds()))
    for n in (1, 2):
        fake_active(node, "c%d" % n)
        node.release("c%d" % n, False)
        clock.advance(0)
        assert node.served == n
    assert exits and node.exiting
    assert "quitting" in str(reserve_error(node))


def test_node_zombie_period(tmp_path):
    clock = Clock()
    node = make_node(clock, tmp_path, zombie_period=5)
    active = fake_active(node)
    node.note_activity()
    clock.advance(4)
    node.note_activity()  # activity: the timer starts over
    clock.advance(4)
    assert node.active is active
    clock.advance(1.5)
    assert node.active is None and node.served == 1
    assert not clock.getDelayedCalls()


def test_node_quit_without_computation(tmp_path):
    clock = Clock()
    exits = []
    node = make_node(clock, tmp_path, on_exit=lambda: exits.append(1))
    d = node.quit()
    clock.advance(0)
    assert exits == [1]
    assert isinstance(d, defer.Deferred)


def test_the_node_is_a_tree_of_named_services(tmp_path):
    """Discovery, /metrics and the heartbeat are children of the node, started after it listens."""
    from twisted.application import service

    from dispycos.heartbeat import SilenceWatch
    from dispycos.protocol.discovery import Discovery

    node = make_node(Clock(), tmp_path, metrics_port=0)
    assert isinstance(node, service.MultiService)
    assert [s.name for s in node] == ["discovery", "metrics", "heartbeat"]
    assert isinstance(node.getServiceNamed("discovery"), Discovery)
    assert isinstance(node.getServiceNamed("heartbeat"), SilenceWatch)
    assert [s.name for s in make_node(Clock(), tmp_path)] == ["discovery", "heartbeat"]  # no /metrics asked for
