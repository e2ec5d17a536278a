"""
Unit tests of the scheduler's node links (L{dispycos.scheduler.links.NodeLink}
on Twisted's C{ClientService}): connecting, the backoff after each kind of
failure, refusals, lost and abandoned connections, unlisted links, stop().
A L{MemoryReactorClock} stands in for the reactor, L{iosim} connects the
link to a fake node (a listening L{DispycosAMP} that answers NodeInfo and
Pulse), and a minimal fake scheduler records what the link tells it.
"""

from types import SimpleNamespace

import pytest
from twisted.internet import defer
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import globalLogPublisher
from twisted.python.failure import Failure
from twisted.test import iosim

from dispycos.protocol import auth, commands
from dispycos.protocol.base import DispycosAMP
from dispycos.scheduler.links import NodeLink
from dispycos.status import Location

KEY = auth.key_from_secret("the cluster's secret")
WRONG = auth.key_from_secret("another secret")
PORT = 9700
PULSE = 2.0
AVAIL = {"cpu": 90.0, "memory": 1 << 30, "disk": 1 << 32, "swap": 0}


class FakeScheduler:
    """What a L{NodeLink} uses of its scheduler, recording what it is told."""

    def __init__(self, reactor, key=KEY):
        self.reactor = reactor
        self.key = key
        self.tls = None
        self.runtime = SimpleNamespace(counts=None)
        self.active = None
        self.told = []

    def stretched_key(self):
        return defer.succeed(self.key)

    def pulse_interval(self):
        return PULSE

    def silence_limit(self, interval):
        return 3 * interval

    def _node_connected(self, link):
        self.told.append(("connected", link.state))

    def _node_refused(self, link):
        self.told.append(("refused", link.state, link.refusal))

    def _node_lost(self, link):
        self.told.append(("lost", link.state))

    def _node_abandoned(self, link):
        self.told.append(("abandoned", link.state))

    def _server_event(self, link, computation, index, event, location):
        self.told.append(("server event", event))

    def said(self, what):
        return [t for t in self.told if t[0] == what]


class FakeNode(DispycosAMP):
    """A node's listening side: the handshake with C{KEY}, NodeInfo and Pulse."""

    def __init__(self, reactor, key=KEY):
        super().__init__(reactor, keyring=lambda role, comp: key if role == "scheduler" else None,
                         location="127.0.0.1:%d" % PORT)

    @commands.NodeInfo.responder
    def _info(self):
        return {"name": "fake", "cpus": 2, "platform": "test", "avail": AVAIL, "busy": False}

    @commands.Pulse.responder
    def _pulse(self, interval):
        return {"avail": AVAIL}


class DroppingNode(FakeNode):
    """A node that closes every connection it accepts (TLS on one side only, say)."""

    def connectionMade(self):
        super().connectionMade()
        self.transport.loseConnection()


@pytest.fixture
def logged_failures():
    """Failures logged meanwhile (none is expected: the service's machine must never be confused)."""
    failures = []

    def observe(event):
        if event.get("log_failure") is not None:
            failures.append(event["log_failure"])

    globalLogPublisher.addObserver(observe)
    yield failures
    globalLogPublisher.removeObserver(observe)
    assert failures == []


def make(listed=True, node=FakeNode, key=KEY):
    reactor = MemoryReactorClock()
    scheduler = FakeScheduler(reactor, key)
    reactor.listenTCP(PORT, Factory.forProtocol(lambda: node(reactor)))
    link = NodeLink(scheduler, Location("127.0.0.1", PORT), listed=listed)
    return reactor, scheduler, link


def attempts(reactor):
    """Connection attempts waiting for an outcome."""
    return len(reactor.tcpClients)


def fail_attempt(reactor):
    assert attempts(reactor) == 1
    iosim.ConnectionCompleter(reactor).failOnce(Failure(ConnectionRefusedError()))


def complete_attempt(reactor):
    """The attempt reaches the node; its pump, flushed (the handshake done or failed)."""
    assert attempts(reactor) == 1
    pump = iosim.ConnectionCompleter(reactor).succeedOnce()
    pump.flush()
    return pump


def next_attempt(reactor, step=0.01, limit=60):
    """Seconds (to C{step}) until the link makes its next attempt."""
    before = attempts(reactor)
    start = reactor.seconds()
    while attempts(reactor) == before:
        assert reactor.seconds() - start < limit, "no new attempt"
        reactor.advance(step)
    return reactor.seconds() - start


def no_attempt_within(reactor, seconds=60):
    before = attempts(reactor)
    for _ in range(int(seconds)):
        reactor.advance(1)
    return attempts(reactor) == before


def connected(reactor, scheduler, link):
    pump = complete_attempt(reactor)
    reactor.advance(0)  # the scheduler hears of it on the next turn
    assert link.state == "connected" and link.proto is not None
    assert link.info.name == "fake" and link.info.cpus == 2
    return pump


# -- connecting -------------------------------------------------------------------


def test_a_new_link_connects_and_the_scheduler_hears_of_it_once_authenticated(logged_failures):
    reactor, scheduler, link = make()
    assert link.state == "new" and attempts(reactor) == 0
    link.connect()
    assert link.state == "connecting" and attempts(reactor) == 1
    link.connect()  # already running: no second attempt
    assert attempts(reactor) == 1
    connected(reactor, scheduler, link)
    assert link.proto.authenticated and link.refusal is None
    assert scheduler.told == [("connected", "connected")]


def test_unreachable_retries_grow_by_half_up_to_ten_seconds(logged_failures):
    reactor, scheduler, link = make()
    link.connect()
    delays = []
    for _ in range(13):
        fail_attempt(reactor)
        assert link.state == "unreachable" and link.refusal is None and link.retrying
        delays.append(next_attempt(reactor))
    expected = [min(0.2 * 1.5 ** i, 10.0) for i in range(13)]
    assert delays == pytest.approx(expected, abs=0.011)
    assert delays[:3] == pytest.approx([0.2, 0.3, 0.45], abs=0.011) and delays[-3:] == pytest.approx([10] * 3, abs=0.011)
    assert scheduler.told == []


def test_a_connection_resets_the_backoff(logged_failures):
    reactor, scheduler, link = make()
    link.connect()
    for _ in range(4):
        fail_attempt(reactor)
        next_attempt(reactor)
    pump = connected(reactor, scheduler, link)
    pump.server.transport.loseConnection()
    pump.flush()
    next_attempt(reactor)
    fail_attempt(reactor)
    assert next_attempt(reactor) == pytest.approx(0.2, abs=0.011)


# -- refusals ---------------------------------------------------------------------


def test_a_wrong_secret_is_a_refusal_reported_once_and_retried_after_five_seconds(logged_failures):
    reactor, scheduler, link = make(key=WRONG)
    link.connect()
    complete_attempt(reactor)
    assert link.state == "refused" and "secret" in link.refusal
    assert link.proto is None and link.info is None
    assert scheduler.told == [("refused", "refused", link.refusal)]
    assert next_attempt(reactor) == pytest.approx(5.0, abs=0.011)
    assert link.state == "connecting"
    complete_attempt(reactor)  # refused again: reported again, once
    assert link.state == "refused"
    assert len(scheduler.said("refused")) == 2
    assert next_attempt(reactor) >= 5.0
    assert scheduler.said("connected") == [] and scheduler.said("lost") == []


def test_a_refusal_waits_at_least_the_grown_backoff(logged_failures):
    reactor, scheduler, link = make(key=WRONG)
    link.connect()
    for _ in range(10):  # the backoff has grown to 0.2 * 1.5 ** 10 > 10: capped at 10
        fail_attempt(reactor)
        next_attempt(reactor)
    complete_attempt(reactor)
    assert link.state == "refused"
    assert next_attempt(reactor) == pytest.approx(10.0, abs=0.011)


def test_a_node_that_closes_during_the_handshake_refused(logged_failures):
    reactor, scheduler, link = make(node=DroppingNode)
    link.connect()
    complete_attempt(reactor)
    assert link.state == "refused"
    assert "closed the connection during the handshake" in link.refusal
    assert scheduler.told == [("refused", "refused", link.refusal)]
    assert next_attempt(reactor) >= 5.0


# -- lost and abandoned connections ---------------------------------------------------


def test_a_lost_connection_reconnects_after_half_a_second(logged_failures):
    reactor, scheduler, link = make()
    link.connect()
    pump = connected(reactor, scheduler, link)
    pump.server.transport.loseConnection()
    pump.flush()
    assert link.state == "lost" and link.proto is None and not link.watch.watching
    assert scheduler.said("lost") == [("lost", "lost")]
    assert next_attempt(reactor) == pytest.approx(0.5, abs=0.011)
    connected(reactor, scheduler, link)  # the service hands on its next connection too
    assert [t[0] for t in scheduler.told] == ["connected", "lost", "connected"]


def test_a_silent_node_is_abandoned_and_tried_again_after_the_pulse_interval(logged_failures):
    reactor, scheduler, link = make()
    link.connect()
    pump = connected(reactor, scheduler, link)
    start = reactor.seconds()
    while not link.abandoned:  # the node's answers to the pulses are never delivered
        assert reactor.seconds() - start < 30
        reactor.advance(0.5)
    assert link.state == "lost" and link.proto is None
    assert scheduler.said("abandoned") == [("abandoned", "connected")]
    pump.flush()  # the aborted connection closes: the link was already done with it
    assert scheduler.said("lost") == []
    assert next_attempt(reactor) == pytest.approx(PULSE, abs=0.011)
    connected(reactor, scheduler, link)
    assert not link.abandoned


# -- unlisted links and stop() -----------------------------------------------------------


def test_an_unlisted_link_does_not_retry_until_connected_again(logged_failures):
    reactor, scheduler, link = make(listed=False)
    link.connect()
    fail_attempt(reactor)
    assert link.state == "unreachable"
    reactor.advance(0)
    assert not link.retrying
    assert no_attempt_within(reactor)
    link.connect()  # the node is announced again
    assert attempts(reactor) == 1 and link.state == "connecting"
    pump = connected(reactor, scheduler, link)
    pump.server.transport.loseConnection()
    pump.flush()
    assert link.state == "lost"
    assert no_attempt_within(reactor)
    assert not link.retrying


def test_an_unlisted_link_refused_does_not_retry(logged_failures):
    reactor, scheduler, link = make(listed=False, key=WRONG)
    link.connect()
    complete_attempt(reactor)
    assert link.state == "refused" and len(scheduler.said("refused")) == 1
    assert no_attempt_within(reactor)


def test_stop_cancels_a_pending_retry(logged_failures):
    reactor, scheduler, link = make()
    link.connect()
    fail_attempt(reactor)
    assert link.retrying and [c for c in reactor.getDelayedCalls() if c.active()]
    stopped = []
    link.stop().addCallback(stopped.append)
    assert stopped == [None] and not link.retrying
    assert [c for c in reactor.getDelayedCalls() if c.active()] == []
    assert no_attempt_within(reactor)
    link.connect()  # stopped for good
    assert attempts(reactor) == 0


def test_stop_closes_the_connection_and_the_scheduler_loses_the_node(logged_failures):
    reactor, scheduler, link = make()
    link.connect()
    pump = connected(reactor, scheduler, link)
    stopped = []
    link.stop().addCallback(stopped.append)
    assert not link.watch.watching
    pump.flush()
    assert stopped == [None]
    assert not pump.server.connected and link.state == "lost"
    assert [t[0] for t in scheduler.told] == ["connected", "lost"]
    assert no_attempt_within(reactor)


def test_stop_while_connecting_aborts_a_connection_made_after_all(logged_failures):
    reactor, scheduler, link = make()
    link.connect()
    link.stop()
    pump = iosim.ConnectionCompleter(reactor).succeedOnce()
    pump.flush()
    assert not pump.server.connected and not pump.client.connected
    assert link.proto is None and scheduler.told == []
    assert no_attempt_within(reactor)


def test_stop_during_the_handshake_drops_it(logged_failures):
    reactor, scheduler, link = make()
    link.connect()
    pump = iosim.ConnectionCompleter(reactor).succeedOnce(greet=False)
    reactor.advance(0)
    pump.pump()  # Hello sent, its answer not read yet
    link.stop()
    pump.flush()
    reactor.advance(0)
    assert not pump.server.connected
    assert link.proto is None and scheduler.told == []
    assert no_attempt_within(reactor)
