"""
dispycos.protocol.auth.StretchedKey: a secret's key stretched in a thread
while the node goes on starting, and a handshake that comes first waiting for
it. A fake thread pool decides when the "thread" finishes.
"""

from twisted.internet.interfaces import IReactorThreads
from twisted.internet.task import Clock
from twisted.logger import capturedLogs
from twisted.test import iosim
from zope.interface import implementer

from dispycos.protocol import auth
from dispycos.protocol.base import DispycosAMP

from .test_protocol import CONNECTOR_LOC, LISTENER_LOC, Connector


class FakePool:
    """callInThreadWithCallback runs nothing until L{finish}."""

    def __init__(self):
        self.jobs = []

    def callInThreadWithCallback(self, on_result, f, *args, **kw):
        self.jobs.append((on_result, f, args, kw))

    def finish(self):
        jobs, self.jobs = self.jobs, []
        for on_result, f, args, kw in jobs:
            try:
                value = f(*args, **kw)
            except BaseException as e:
                from twisted.python.failure import Failure

                on_result(False, Failure(e))
            else:
                on_result(True, value)


@implementer(IReactorThreads)
class ThreadedClock(Clock):
    def __init__(self):
        super().__init__()
        self.pool = FakePool()

    def getThreadPool(self):
        return self.pool

    def callFromThread(self, f, *args, **kw):
        f(*args, **kw)

    def callInThread(self, f, *args, **kw):
        self.pool.callInThreadWithCallback(lambda ok, r: None, f, *args, **kw)

    def suggestThreadPoolSize(self, size):
        pass


def test_without_threads_the_key_is_stretched_at_once():
    key = auth.StretchedKey(Clock(), "s1")
    assert key.value is None
    key.start()
    assert key.value == auth.key_from_secret("s1")
    assert key.wait().result == key.value


def test_in_a_thread_the_key_comes_later_and_waiters_get_it():
    reactor = ThreadedClock()
    key = auth.StretchedKey(reactor, "s2")
    key.start()
    key.start()  # once
    assert len(reactor.pool.jobs) == 1
    assert key.value is None
    waiting = key.wait()
    got = []
    waiting.addCallback(got.append)
    assert got == []
    reactor.pool.finish()
    assert got == [auth.key_from_secret("s2")] and key.value == got[0]
    assert key.now() == got[0] and reactor.pool.jobs == []


def test_now_does_not_wait_for_the_thread():
    reactor = ThreadedClock()
    key = auth.StretchedKey(reactor, "s3")
    key.start()
    assert key.now() == auth.key_from_secret("s3")
    reactor.pool.finish()  # the thread's result changes nothing
    assert key.value == auth.key_from_secret("s3")


def test_a_failure_reaches_every_waiter_and_is_logged(monkeypatch):
    def broken(secret, use):
        raise MemoryError("no memory for scrypt")

    reactor = ThreadedClock()
    key = auth.StretchedKey(reactor, "s4")
    monkeypatch.setattr(auth, "key_from_secret", broken)
    key.start()
    early = key.wait()
    with capturedLogs() as events:
        reactor.pool.finish()
    assert any("cannot stretch" in e.get("log_format", "") for e in events)
    for d in (early, key.wait()):
        errors = []
        d.addErrback(errors.append)
        assert errors and errors[0].check(MemoryError)


def test_a_handshake_waits_for_a_key_being_stretched():
    reactor = ThreadedClock()
    stretched = auth.StretchedKey(reactor, "node secret")
    stretched.start()

    class Listener(DispycosAMP):
        def __init__(self, clock):
            super().__init__(clock, keyring=lambda role, comp: stretched.value or stretched.wait(),
                             location=LISTENER_LOC)

    client, server, pump = iosim.connectedServerAndClient(
        lambda: Listener(reactor), lambda: Connector(reactor), clock=reactor)
    done = []
    client.handshake(auth.key_from_secret("node secret"), "scheduler", "").addBoth(done.append)
    pump.flush()
    assert done == [] and not server.authenticated  # the listener has no key yet
    reactor.pool.finish()
    pump.flush()
    assert done == [None] and client.authenticated and server.authenticated
    assert server.peer_location == CONNECTOR_LOC
