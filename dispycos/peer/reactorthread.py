# -*- test-case-name: tests.unit.test_tasks -*-
"""
Calls that work from the reactor's thread and from worker threads alike: a
plain-function task (or a program of the blocking API) runs outside the
reactor's thread, and there the dispycos calls block and return their value
instead of a Deferred. Which thread is the reactor's is what Twisted
records when a reactor starts running (L{threadable.isInIOThread}).
"""

import functools

from twisted.internet import defer, threads
from twisted.python import threadable
from twisted.python.failure import Failure

from dispycos.errors import TimeoutError


def _reactor_of(obj):
    """The reactor of C{obj} (its C{reactor} attribute), else the global one."""
    reactor = getattr(obj, "reactor", None)
    if reactor is None:
        from twisted.internet import reactor  # the public API's default
    return reactor


def in_worker_thread(reactor=None):
    """True in a thread other than the reactor's while the reactor runs."""
    if reactor is None:
        from twisted.internet import reactor  # the public API's default
    return reactor.running and not threadable.isInIOThread()


def blocking_in_thread(method):
    """
    Decorate a Deferred-returning method so that, called from a worker
    thread (a plain-function task), it blocks and returns the value.
    """

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        reactor = _reactor_of(self)
        if not in_worker_thread(reactor):
            return method(self, *args, **kwargs)
        return threads.blockingCallFromThread(reactor, method, self, *args, **kwargs)

    return wrapper


def oneway_in_thread(method):
    """Decorate a method returning None so worker threads hand it to the reactor."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        reactor = _reactor_of(self)
        if not in_worker_thread(reactor):
            return method(self, *args, **kwargs)
        reactor.callFromThread(method, self, *args, **kwargs)

    return wrapper


def with_timeout(d, timeout, reactor, what):
    """Errback C{d} with L{TimeoutError} after C{timeout} seconds (None: never)."""
    if timeout is None:
        return d

    def timed_out(result, timeout):
        if isinstance(result, Failure) and result.check(defer.CancelledError):
            raise TimeoutError("%s timed out after %s s" % (what, timeout))
        return result

    return d.addTimeout(timeout, reactor, onTimeoutCancel=timed_out)
