# -*- test-case-name: tests.unit.test_heartbeat -*-
"""
L{SilenceWatch}: how every dispycos link notices that the other side fell
silent. Four links expect regular word: a node from the scheduler of its
computation, a scheduler from each of its nodes (which it pulses), a shared
scheduler from the client of its active computation, and a client from its
shared scheduler (which it pulses).
"""

from twisted.internet import task

from dispycos.services import StartStopService


def _value(v):
    return v() if callable(v) else v


class SilenceWatch(StartStopService):
    """
    Every C{interval} seconds on C{clock}: when nothing was L{heard} for more
    than C{limit} seconds, the watch stops and calls C{on_silent(seconds)};
    otherwise it calls C{ping()}, if given (an active heartbeat: whatever
    answers the ping calls L{heard}). C{interval} and C{limit} are numbers or
    callables read at every check; a C{limit} of None or 0 never declares
    silence (the pings still go). As a service, it watches while it runs.

    A check that comes over an interval late means this process itself did
    not run its reactor meanwhile (a long computation or loop in the
    reactor thread): the peer's word may be waiting unread in the socket,
    so that check declares nothing and pings; the next one, after the
    reactor has read, decides.

    @ivar last_heard: the clock's time when the peer was last heard of
        (creation counts).
    """

    def __init__(self, clock, interval, limit, on_silent, ping=None):
        self.clock = clock
        self.interval = interval
        self.limit = limit
        self.on_silent = on_silent
        self.ping = ping
        self.last_heard = clock.seconds()
        self._loop = None
        self._checked = None  # the clock's time at the last check (or start)

    def heard(self):
        """The peer said something: its silence starts again from now."""
        self.last_heard = self.clock.seconds()

    def silent_for(self):
        """Seconds since the peer was last heard of."""
        return self.clock.seconds() - self.last_heard

    @property
    def watching(self):
        """Whether checks (and pings) go on."""
        return self._loop is not None and self._loop.running

    def start(self, now=False):
        """Check (and ping) every interval from now on (at once too with C{now}); restarts a running watch."""
        self.stop()
        self._checked = self.clock.seconds()
        self._loop = task.LoopingCall(self._check)
        self._loop.clock = self.clock
        self._loop.start(_value(self.interval), now=now)

    def stop(self):
        """No more checks or pings (until L{start})."""
        loop, self._loop = self._loop, None
        if loop is not None and loop.running:
            loop.stop()

    def _check(self):
        loop = self._loop
        interval = _value(self.interval)
        if loop is not None and loop.interval != interval:
            loop.interval = interval
        limit = _value(self.limit)
        now = self.clock.seconds()
        stalled = self._checked is not None and now - self._checked > 2 * interval
        self._checked = now
        silent = self.silent_for()
        if limit and silent > limit and not stalled:
            self.stop()
            self.on_silent(silent)
        elif self.ping is not None:
            self.ping()
