# -*- test-case-name: tests.test_retries -*-
"""
Retries and timeouts of remote tasks (SPEC 6.2), kept at the client.

L{TaskOptions} holds C{retries}, C{retry_on} and C{timeout}: a
computation's defaults, or those of a view (C{comp.options(...)}). A task
created with options that ask for nothing (no retries, no timeout) costs
nothing more than before; one that asks gets a L{TaskControl}, which runs
its attempts behind the one L{dispycos.RemoteTask}:

* an attempt lost with its server or node (C{TaskAbandoned}), or that
  raised one of the C{retry_on} types, is sent again - with a new task id,
  on another server of the computation when one exists - up to C{retries}
  times; each new attempt is reported with C{Status.TaskRetried};
* messages sent to the task between two attempts wait for the next one;
* an attempt running longer than C{timeout} seconds is terminated, with a
  grace of L{TERMINATE_GRACE} seconds after which its server process ends
  itself (a plain function stuck in a C call cannot be stopped otherwise)
  and its node starts a fresh one; its outcome is then L{TIMEOUT}.
"""

import time

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure

from dispycos.errors import TaskTimeout, UnknownTaskError
from dispycos.peer.outcomes import ABANDONED, ERROR, TERMINATED, TIMEOUT
from dispycos.peer.reactorthread import in_worker_thread, with_timeout
from dispycos.status import Status, TaskInfo

#: Seconds a task terminated for its timeout may take to end before its
#: server process is replaced.
TERMINATE_GRACE = 1.0
#: Seconds after that grace before the client asks the scheduler to restart
#: a server that did not even answer the termination (its reactor is stuck).
ESCALATE_AFTER = 3.0

log = Logger()


class TaskOptions:
    """
    How tasks run: C{retries} (attempts after the first, for tasks lost
    with their server or node, or that raised a C{retry_on} type),
    C{retry_on} (exception classes, or names of remote exception types),
    C{timeout} (seconds an attempt may run; None: no limit).
    """

    __slots__ = ("retries", "retry_on", "timeout", "plain", "_classes", "_names")

    def __init__(self, retries=0, retry_on=(), timeout=None):
        if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
            raise ValueError("retries must be an integer >= 0, not %r" % (retries,))
        if isinstance(retry_on, (type, str)):
            retry_on = (retry_on,)
        retry_on = tuple(retry_on or ())
        for item in retry_on:
            if not (isinstance(item, str) or (isinstance(item, type) and issubclass(item, BaseException))):
                raise TypeError("retry_on takes exception classes or their names, not %r" % (item,))
        if timeout is not None:
            if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not timeout > 0:
                raise ValueError("timeout must be a number of seconds > 0 or None, not %r" % (timeout,))
        self.retries = retries
        self.retry_on = retry_on
        self.timeout = timeout
        #: True when these options ask for nothing: the task path stays as it is.
        self.plain = retries == 0 and timeout is None
        self._classes = tuple(c for c in retry_on if isinstance(c, type))
        self._names = frozenset(c if isinstance(c, str) else c.__name__ for c in retry_on)

    def replace(self, **changes):
        """These options with C{changes} (C{retries}, C{retry_on}, C{timeout})."""
        values = {"retries": self.retries, "retry_on": self.retry_on, "timeout": self.timeout}
        unknown = set(changes) - set(values)
        if unknown:
            raise TypeError("options() got unexpected arguments: %s" % ", ".join(sorted(unknown)))
        values.update(changes)
        return TaskOptions(**values)

    def retries_outcome(self, outcome):
        """
        Whether an attempt that ended with C{outcome} is worth another: it was
        lost (abandoned), or it raised a C{retry_on} type (matched against the
        unpickled exception, else by its type's name), or it timed out and
        C{retry_on} names L{TaskTimeout}.
        """
        kind = outcome[0]
        if kind == ABANDONED:
            return True
        if kind == ERROR and self.retry_on:
            name, _, _, exc = outcome[1]
            if exc is not None and self._classes and isinstance(exc, self._classes):
                return True
            return name in self._names
        if kind == TIMEOUT:
            return any(issubclass(c, TaskTimeout) for c in self._classes) or "TaskTimeout" in self._names
        return False

    def __repr__(self):
        return "TaskOptions(retries=%r, retry_on=%r, timeout=%r)" % (self.retries, self.retry_on, self.timeout)


#: The options of a computation that was given none.
DEFAULT = TaskOptions()


def _relay(result, d):
    """Pass C{result} on to C{d} unless C{d} already fired (it timed out)."""
    if not d.called:
        if isinstance(result, Failure):
            d.errback(result)
        else:
            d.callback(result)


class TaskControl:
    """
    The attempts of one task with options (see the module): created when its
    first attempt is sent, dropped with its last outcome.
    """

    def __init__(self, comp, rtask, options, blob, code, args, kwargs, cpu, where):
        self.comp = comp
        self.rtask = rtask
        self.options = options
        self.blob = blob
        self.code = code
        self.args = args
        self.kwargs = kwargs
        self.cpu = cpu
        self.where = where
        self.reactor = comp.reactor
        #: Attempts made after the first.
        self.retried = 0
        #: Locations of earlier attempts (avoided while another server exists).
        self.avoid = set()
        self.timer = None
        self.escalation = None
        self.timed_out = False
        self.terminating = False
        #: Between two attempts: the placement asked for the next one, and
        #: the messages waiting for it (C{(message, Deferred or None)}).
        self.placing = None
        self.held = None
        #: The outcome of the last attempt that ended (what is final if no other comes).
        self.last = None

    # -- attempts ------------------------------------------------------------------

    def sent(self):
        """An attempt went out: its deadline starts."""
        timeout = self.options.timeout
        if timeout is not None:
            self.timer = self.reactor.callLater(timeout, self._expired)

    def settle(self, outcome):
        """
        The current attempt ended with C{outcome}: the task's outcome, or None
        when another attempt follows.
        """
        self._stop_timers()
        if self.timed_out:
            self.timed_out = False
            if outcome[0] in (TERMINATED, ABANDONED):
                outcome = (TIMEOUT, self.options.timeout)
        if (not self.terminating and self.retried < self.options.retries and self.options.retries_outcome(outcome)
                and self.comp._takes_retries()):
            self._again(outcome)
            return None
        self._finish()
        return outcome

    def _again(self, outcome):
        """Free the lost attempt's server and ask for another (not the same, while another exists)."""
        comp, rtask = self.comp, self.rtask
        self.retried += 1
        comp._counts.tasks_retried += 1
        self.last = outcome
        self.avoid.add(rtask.location)
        entry, rtask._entry = rtask._entry, None
        scheduler = comp._scheduler
        if entry is not None:
            scheduler.task_done(entry, self.cpu)
        self.held = []
        try:
            placed = scheduler.place(comp._events, self.cpu, self.where, avoid=frozenset(self.avoid))
        except Exception:
            placed = defer.fail()
        if isinstance(placed, defer.Deferred):
            self.placing = placed
            placed.addCallbacks(self._placed, self._place_failed)
        else:
            self._placed(placed)

    def _placed(self, entry):
        """Send the next attempt to C{entry}'s server, then what waited for it."""
        self.placing = None
        comp, rtask = self.comp, self.rtask
        runtime = comp.runtime
        if rtask._key0 is None:
            rtask._key0 = (rtask.location, rtask.tid)  # its hash stays what it was
        comp._tasks.pop(rtask.tid, None)
        tid = runtime.next_remote_tid()
        rtask.location, rtask.tid, rtask._entry = entry.location, tid, entry
        comp._tasks[tid] = rtask
        runtime.expect(rtask)
        if comp.status_task is not None:
            rtask.info = TaskInfo(rtask, self.args, self.kwargs, time.time())
            comp._status(Status.TaskRetried, rtask.info)
        runtime.send_task(entry.location, tid, self.blob, self.code)
        held, self.held = self.held, None
        for msg, acked in held or ():
            self._pass_on(msg, acked)
        self.sent()

    def _place_failed(self, failure):
        """No server for another attempt: the last attempt's outcome is the task's."""
        self.placing = None
        if self.terminating and failure.check(defer.CancelledError):
            return None  # terminate() took it off the queue and ended the task
        log.info("task {t} cannot run again ({e}): its last attempt's outcome stands", t=self.rtask,
                 e=failure.getErrorMessage())
        self._end(self.last)
        return None

    def _end(self, outcome):
        """End the task with C{outcome} (no attempt runs)."""
        self._finish()
        self.rtask._set_outcome(outcome)

    def _finish(self):
        """No more attempts: stop the clocks, tell waiting deliveries, let go of the task."""
        self._stop_timers()
        held, self.held = self.held, None
        for _, acked in held or ():
            if acked is not None and not acked.called:
                acked.errback(UnknownTaskError("task %s has ended" % (self.rtask,)))
        self.rtask._control = None
        self.blob = self.code = self.args = self.kwargs = None

    # -- the deadline ------------------------------------------------------------------

    def _expired(self):
        """The attempt ran too long: terminate it (its server ends itself if that fails)."""
        self.timer = None
        self.timed_out = True
        rtask = self.rtask
        self.comp.runtime.terminate(rtask, grace=TERMINATE_GRACE).addErrback(lambda f: None)
        self.escalation = self.reactor.callLater(TERMINATE_GRACE + ESCALATE_AFTER, self._escalate,
                                                 rtask.location, rtask.tid)

    def _escalate(self, location, tid):
        """The terminated attempt did not end at all (its server's reactor is stuck): restart that server."""
        self.escalation = None
        if self.rtask.tid != tid or self.rtask.outcome is not None:
            return
        log.warn("task {t} did not end after its timeout: restarting server {loc}", t=self.rtask, loc=location)
        d = self.comp._control("close_server", location, terminate=True, restart=True)
        d.addErrback(lambda f: log.warn("restarting server {loc}: {e}", loc=location, e=f.getErrorMessage()))

    def _stop_timers(self):
        for name in ("timer", "escalation"):
            call = getattr(self, name)
            if call is not None:
                setattr(self, name, None)
                if call.active():
                    call.cancel()

    # -- what the task's reference does ------------------------------------------------

    def send(self, msg):
        """C{RemoteTask.send}: to the current attempt, or to the next one when between two."""
        if in_worker_thread(self.reactor):
            self.reactor.callFromThread(self.send, msg)
            return
        if self.held is not None:
            self.held.append((msg, None))
        else:
            self.comp.runtime.send(self.rtask, msg)

    def deliver(self, msg, timeout=None):
        """C{RemoteTask.deliver}: as C{send}, acknowledged once in the mailbox of the attempt that gets it."""
        if self.held is None:
            return self.comp.runtime.deliver(self.rtask, msg, timeout)
        d = defer.Deferred()
        self.held.append((msg, d))
        return with_timeout(d, timeout, self.reactor, "deliver to %s" % (self.rtask,))

    def _pass_on(self, msg, acked):
        """A message that waited between attempts goes to the new one (in order)."""
        runtime = self.comp.runtime
        if acked is None:
            try:
                runtime.send(self.rtask, msg)
            except Exception as e:
                log.warn("message to {t} lost: {e}", t=self.rtask, e=e)
        elif not acked.called:  # (not timed out meanwhile)
            runtime.deliver(self.rtask, msg).addBoth(_relay, acked)

    def terminate(self):
        """C{RemoteTask.terminate}: no more attempts; the current one is terminated."""
        self.terminating = True
        placing = self.placing
        if placing is None:
            return self.comp.runtime.terminate(self.rtask)
        self.placing = None
        placing.cancel()  # off the scheduler's queue: it never runs again
        self._end((TERMINATED, None))
        return defer.succeed(None)
