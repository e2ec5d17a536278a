# -*- test-case-name: tests.unit.test_tasks -*-
"""
References to tasks: L{TaskRef} (any task, wherever it runs: what a task
reference unpickles to) and L{RemoteTask} (a task this process created
elsewhere, with its outcome).
"""

from twisted.internet import defer, threads
from twisted.python.failure import Failure

from dispycos.errors import TimeoutError
from dispycos.peer.outcomes import outcome_result
from dispycos.peer.reactorthread import blocking_in_thread, in_worker_thread
from dispycos.peer.registry import current_runtime
from dispycos.status import Location


def _rebuild_ref(addr, port, tid, name):
    # The runtime at hand: the one whose connection is being read (see registry.current_runtime).
    runtime = current_runtime(create=False)
    location = Location(addr, port)
    if runtime is not None and runtime.location == location:
        task = runtime.tasks.get(tid)
        if task is not None:
            return task
    return TaskRef(location, tid, name, runtime)


class _TaskAPI:
    """What every task reference offers (local or remote)."""

    location = None
    tid = None
    name = ""

    def __reduce__(self):
        return (_rebuild_ref, (self.location.addr, self.location.port, self.tid, self.name))

    def __eq__(self, other):
        return isinstance(other, _TaskAPI) and (self.location, self.tid) == (other.location, other.tid)

    def __hash__(self):
        return hash((self.location, self.tid))

    def __str__(self):
        return "%s/%s@%s" % (self.name, self.tid, self.location)

    __repr__ = __str__

    def finish(self, timeout=None):
        """Alias of C{result}."""
        return self.result(timeout)

    def __call__(self, timeout=None):
        return self.result(timeout)


class TaskRef(_TaskAPI):
    """
    A reference to a task in another process of the computation. It pickles,
    so it can be passed in arguments and messages.
    """

    def __init__(self, location, tid, name="", runtime=None):
        self.location = location
        self.tid = tid
        self.name = name
        self._rt = runtime

    def _runtime(self):
        return self._rt or current_runtime()

    @property
    def reactor(self):
        return self._runtime().reactor

    def send(self, msg):
        """
        Send C{msg} (no acknowledgement; ordered per sender). Returns None. It
        never blocks the reactor: a fast producer there should C{await
        drain()} now and then; from a worker thread it blocks while the
        connection is backed up.
        """
        runtime = self._runtime()
        if not in_worker_thread(runtime.reactor):
            runtime.send(self, msg)
            return
        runtime.reactor.callFromThread(runtime.send, self, msg)
        if runtime.backed_up(self.location):
            threads.blockingCallFromThread(runtime.reactor, runtime.drain, self)

    @blocking_in_thread
    def drain(self):
        """Deferred firing once messages sent to this task have gone out of this process."""
        return self._runtime().drain(self)

    @blocking_in_thread
    def deliver(self, msg, timeout=None):
        """Deferred firing with 1 once C{msg} is in the task's mailbox."""
        return self._runtime().deliver(self, msg, timeout)

    @blocking_in_thread
    def result(self, timeout=None):
        """Deferred firing with the task's result (see L{RemoteTask.result})."""
        return self._runtime().wait_task(self, timeout)

    @blocking_in_thread
    def terminate(self):
        """Deferred firing once the task has ended."""
        return self._runtime().terminate(self)


class RemoteTask(TaskRef):
    """
    A task created by this process on a server (what C{Computation.run}
    returns). Its outcome is pushed here, so C{result()} costs no round trip.

    A task with retries or a timeout may run as several attempts (each with
    an id of its own, maybe on another server): C{location} and C{tid} are
    those of the current attempt, and C{send}, C{deliver}, C{terminate} and
    C{result} follow it (see L{dispycos.attempts}).
    """

    #: The attempts of a task with options (L{dispycos.client.attempts.TaskControl}), else None.
    _control = None
    #: C{(location, tid)} of the first attempt once another was made (the hash stays).
    _key0 = None
    _entry = None

    def __init__(self, location, tid, name="", computation=None, info=None):
        super().__init__(location, tid, name, computation.runtime if computation is not None else None)
        self.computation = computation
        self.info = info
        self.outcome = None
        self._waiters = []

    def __hash__(self):
        key = self._key0
        return hash(key if key is not None else (self.location, self.tid))

    def _set_outcome(self, outcome):
        """
        Record the outcome (of the last attempt: one that is retried starts
        another); the computation books it before waiters wake up.
        """
        if self.outcome is not None:
            return False
        control = self._control
        if control is not None:
            outcome = control.settle(outcome)
            if outcome is None:
                return False  # another attempt runs
        self.outcome = outcome
        comp = self.computation
        if comp is not None:
            comp._task_ended(self)
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)
        return True

    def send(self, msg):
        """As L{TaskRef.send}, to the current attempt (between two: to the next one)."""
        control = self._control
        if control is None:
            return TaskRef.send(self, msg)
        control.send(msg)

    @blocking_in_thread
    def deliver(self, msg, timeout=None):
        """As L{TaskRef.deliver}, to the current attempt (between two: to the next one)."""
        control = self._control
        if control is None:
            return self._runtime().deliver(self, msg, timeout)
        return control.deliver(msg, timeout)

    @blocking_in_thread
    def terminate(self):
        """Terminate the task (no attempt follows); the Deferred fires once it has ended."""
        control = self._control
        if control is None:
            return self._runtime().terminate(self)
        return control.terminate()

    @blocking_in_thread
    def result(self, timeout=None):
        """
        Deferred firing with the task's return value; errbacks with
        L{RemoteTaskError} if it raised, L{TaskTerminated} if it was
        terminated, L{TaskAbandoned} if its server or node was lost,
        L{TaskTimeout} if it ran longer than its timeout, L{TimeoutError}
        if C{timeout} seconds pass first (the task goes on).
        C{cancel()} on the Deferred terminates the task.
        """
        if self.outcome is not None:
            result = outcome_result(self.outcome, self)
            return defer.fail(result) if isinstance(result, Failure) else defer.succeed(result)
        d = defer.Deferred(self._cancel_wait)
        self._waiters.append(d)
        d.addCallback(self._outcome_value)
        if timeout is not None:
            self._wait_at_most(d, timeout)
        return d

    def _outcome_value(self, _):
        return outcome_result(self.outcome, self)

    def _cancel_wait(self, d):
        """C{cancel()} on a C{result()} Deferred: stop waiting, and terminate the task."""
        if d in self._waiters:
            self._waiters.remove(d)
        if self.outcome is None:
            self.terminate().addErrback(lambda f: None)

    def _wait_at_most(self, d, timeout):
        """Errback C{d} with L{TimeoutError} after C{timeout} seconds; the task is left alone."""

        def expired():
            if d in self._waiters:
                self._waiters.remove(d)
            if not d.called:
                d.errback(TimeoutError("result of %s timed out after %s s" % (self, timeout)))

        call = self._runtime().reactor.callLater(timeout, expired)

        def done(result):
            if call.active():
                call.cancel()
            return result

        d.addBoth(done)
