# -*- test-case-name: tests.test_retries -*-
"""
C{dispycos.as_completed(rtasks, timeout=None)}: the tasks in the order they
end, as an async iterator::

    async for rtask in dispycos.as_completed(rtasks, timeout=60):
        print(await rtask.result())
"""

from collections import deque

from twisted.internet import defer

from dispycos.errors import TimeoutError


def as_completed(rtasks, timeout=None, reactor=None):
    """
    An async iterator of the tasks C{rtasks} (task references: what C{run}
    returns, local L{dispycos.Task}s) in the order they end, whatever their
    outcome (C{result()} of each says it). With C{timeout} (seconds from
    now), L{dispycos.TimeoutError} once that time is over and the tasks that
    ended by then were taken while others still run (those go on).
    """
    return _Completion(list(rtasks), timeout, reactor)


class _Completion:
    """The iterator of L{as_completed}."""

    def __init__(self, rtasks, timeout, reactor):
        self.pending = len(rtasks)
        self.ended = deque()
        self.waiter = None
        self.expired = False
        self.timeout = timeout
        self.call = None
        if timeout is not None and rtasks:
            if reactor is None:
                reactor = getattr(rtasks[0], "reactor", None)
            if reactor is None:
                from twisted.internet import reactor  # the public API's default
            self.call = reactor.callLater(timeout, self._expire)
        for rtask in rtasks:
            rtask.result().addBoth(self._ended, rtask)

    def __aiter__(self):
        return self

    def __anext__(self):
        if self.waiter is not None:
            return defer.fail(RuntimeError("as_completed: one __anext__ at a time"))
        d = self.waiter = defer.Deferred()
        self._wake()
        return d

    def _ended(self, _, rtask):
        self.pending -= 1
        self.ended.append(rtask)
        if not self.pending:
            self._stop_clock()
        self._wake()
        return None  # (the outcome stays with the task: its result() says it)

    def _expire(self):
        self.call = None
        self.expired = True
        self._wake()

    def _stop_clock(self):
        call, self.call = self.call, None
        if call is not None and call.active():
            call.cancel()

    def _wake(self):
        d = self.waiter
        if d is None:
            return
        if self.ended:
            self.waiter = None
            d.callback(self.ended.popleft())
        elif not self.pending:
            self.waiter = None
            d.errback(StopAsyncIteration())
        elif self.expired:
            self.waiter = None
            d.errback(TimeoutError("as_completed: %d task(s) still running after %s s" % (self.pending, self.timeout)))
