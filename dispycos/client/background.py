# -*- test-case-name: tests.test_blocking -*-
"""
The reactor of the blocking API (L{dispycos.blocking}): one per process,
running in a daemon thread started on first use, shared by every blocking
object of the process, stopped cleanly at interpreter exit.

L{wait} runs a function in the reactor's thread and blocks the caller until
the Deferred it returns fires. Waiting is bounded (C{timeout}) and can be
interrupted (Ctrl-C): either way the call is I{abandoned} -- the caller gets
L{dispycos.TimeoutError} or C{KeyboardInterrupt}, and the call's own
C{abandon} function (if any) runs in the reactor's thread to undo what the
call started (terminate its tasks, take it off a queue).

A reactor outside the main thread gets no SIGCHLD, so Twisted would never
notice that a child process (a L{dispycos.LocalCluster}'s node) ended: a
poll in the reactor's thread reaps them (L{REAP_INTERVAL}).

Written on Twisted directly rather than on crochet: crochet (maintained,
but slow-moving) would bring the same two pieces -- a reactor thread with a
polling reaper, and a blocking wait -- but its waits know nothing of what
an abandoned dispycos call must undo (terminate its tasks, leave a queue),
and it stops the reactor in an exit hook of its own, which would take the
shutting down at interpreter exit (computations closed, clusters' nodes
stopped, by the reactor's shutdown triggers) out of dispycos's hands; a
dependency for some eighty lines is not worth that.
"""

import atexit
import threading
import time

from twisted.internet import defer
from twisted.python import threadable
from twisted.python.failure import Failure

from dispycos.errors import DispycosError, TimeoutError

#: Seconds between two looks for child processes that ended.
REAP_INTERVAL = 0.1
#: Longest wait for the reactor thread to start.
START_SECONDS = 30
#: Longest wait at interpreter exit for computations and clusters to close.
EXIT_SECONDS = 60
#: Waits look this often whether the reactor still runs.
_SLICE = 1.0

_lock = threading.Lock()
_state = {"reactor": None, "thread": None, "reaper": None}


class ReactorThreadError(DispycosError, RuntimeError):
    """A blocking call made in the reactor's own thread, where it would deadlock."""


def _global_reactor():
    from twisted.internet import reactor  # installs the default one if none is

    return reactor


def in_reactor_thread():
    """True in the thread of the running reactor."""
    reactor = _state["reactor"] or _global_reactor()
    return bool(reactor.running) and threadable.isInIOThread()


def check_thread(what="this call"):
    """
    @raise ReactorThreadError: in the reactor's thread, where blocking would
        stop the very loop that must fire the result.
    """
    if in_reactor_thread():
        raise ReactorThreadError(
            "%s blocks until the reactor answers, and it was made in the reactor's own thread "
            "(a callback, a status_task function, a local task): there use the Deferred API "
            "(dispycos.Computation and friends), or call from another thread" % (what,))


def get_reactor():
    """
    The reactor of the blocking API, running: the global Twisted reactor,
    started in a daemon thread the first time (or used where it already
    runs, in whatever thread).
    """
    reactor = _state["reactor"]
    if reactor is not None and reactor.running:
        return reactor
    with _lock:
        reactor = _global_reactor()
        if not reactor.running:
            if _state["thread"] is not None:
                raise RuntimeError("the reactor of dispycos.blocking has stopped (interpreter exit?)")
            if getattr(reactor, "_startedBefore", False):
                raise RuntimeError("this process's Twisted reactor ran and stopped; it cannot run again, "
                                   "so dispycos.blocking cannot start it")
            _start_thread(reactor)
        if _state["reaper"] is None:
            _state["reaper"] = True
            reactor.callFromThread(_start_reaper, reactor)
        _state["reactor"] = reactor
    return reactor


def _start_thread(reactor):
    ready = threading.Event()
    errors = []
    reactor.callWhenRunning(ready.set)

    def run():
        try:
            # No signal handlers: this is not the main thread (SIGCHLD: see _start_reaper).
            reactor.run(installSignalHandlers=False)
        except BaseException as e:
            errors.append(e)
        finally:
            ready.set()

    thread = threading.Thread(target=run, name="dispycos-reactor", daemon=True)
    thread.start()
    if not ready.wait(START_SECONDS) or errors or not reactor.running:
        raise RuntimeError("the reactor thread of dispycos.blocking did not start: %r" % (errors[:1] or "timeout",))
    _state["thread"] = thread
    atexit.register(_stop_at_exit, reactor, thread)


def _start_reaper(reactor):
    """Reap ended child processes by polling (no SIGCHLD reaches a reactor outside the main thread)."""
    from twisted.internet import process
    from twisted.internet.task import LoopingCall

    def reap():
        if process.reapProcessHandlers:
            process.reapAllProcesses()

    loop = LoopingCall(reap)
    loop.clock = reactor
    loop.start(REAP_INTERVAL, now=False)
    _state["reaper"] = loop


def _stop_at_exit(reactor, thread):
    """
    Stop the reactor: its shutdown triggers close the computations still
    open and stop the clusters still running (their nodes included), then
    the thread ends.
    """
    def stop():
        if reactor.running and not getattr(reactor, "_stopped", False):
            reactor.stop()

    if thread.is_alive():
        reactor.callFromThread(stop)
        thread.join(EXIT_SECONDS)


def call_soon(fn, *args, **kwargs):
    """Run C{fn(*args, **kwargs)} in the reactor's thread, soon; returns at once (any thread)."""
    reactor = get_reactor()
    if in_reactor_thread():
        reactor.callLater(0, fn, *args, **kwargs)
    else:
        reactor.callFromThread(fn, *args, **kwargs)


class _Call:
    """One blocking call: started in the reactor's thread, waited for in the caller's."""

    def __init__(self):
        self.done = threading.Event()
        self.result = None
        self.returned = None
        self.abandoned = False

    def start(self, thunk):
        try:
            result = thunk()
        except BaseException:
            result = Failure()
        self.returned = result
        if isinstance(result, defer.Deferred):
            result.addBoth(self._finish)
        else:
            self._finish(result)

    def _finish(self, result):
        if not self.abandoned:
            self.result = result
            self.done.set()
        # else: nobody waits; a failure is dropped here rather than logged as unhandled
        return None

    def abandon(self, abandon):
        self.abandoned = True
        self.result = None
        returned, self.returned = self.returned, None
        if abandon is not None:
            d = defer.maybeDeferred(abandon, returned)
            d.addErrback(lambda f: None)


def wait(thunk, timeout=None, abandon=None, what=None):
    """
    Call C{thunk()} in the reactor's thread and block until its result (a
    Deferred's, or a plain value) is there: return it, or raise the
    exception it failed with.

    @param timeout: seconds to wait at most (None: no limit); then
        L{dispycos.TimeoutError} is raised.
    @param abandon: called in the reactor's thread with what C{thunk}
        returned (a Deferred, usually) when the wait ends without the
        result: on timeout or C{KeyboardInterrupt}.
    @param what: names the call in errors.
    @raise ReactorThreadError: when called in the reactor's thread.
    """
    what = what or getattr(thunk, "__qualname__", None) or repr(thunk)
    check_thread(what)
    reactor = get_reactor()
    call = _Call()
    try:
        reactor.callFromThread(call.start, thunk)
        _wait_done(call.done, reactor, timeout, what)
    except BaseException:
        # Ctrl-C (KeyboardInterrupt), a timeout, a stopped reactor: undo, then raise.
        reactor.callFromThread(call.abandon, abandon)
        raise
    result, call.result = call.result, None
    if isinstance(result, Failure):
        result.raiseException()
    return result


def call(fn, *args, **kwargs):
    """
    C{fn(*args, **kwargs)} run in the reactor's thread: its value, or the
    value of the Deferred it returns (blocking until then); for what the
    blocking API does not wrap, such as C{dispycos.httpd.HTTPServer(comp.wrapped)}.
    """
    return wait(lambda: fn(*args, **kwargs), what=getattr(fn, "__qualname__", None))


def _wait_done(event, reactor, timeout, what):
    """Wait for C{event} at most C{timeout} seconds (None: for ever), while the reactor runs."""
    deadline = None if timeout is None else time.monotonic() + max(timeout, 0)
    while True:
        step = _SLICE if deadline is None else min(_SLICE, max(deadline - time.monotonic(), 0))
        if event.wait(step):
            return
        if not reactor.running:
            raise RuntimeError("%s: the reactor stopped before it answered" % (what,))
        if deadline is not None and time.monotonic() >= deadline:
            raise TimeoutError("%s did not finish within %s s" % (what, timeout))
