# -*- test-case-name: tests.test_engine -*-
"""
How a server runs the tasks its clients create: L{Starter} starts them a
reactor turn after they arrived, a time slice at a time, once what is queued
for other processes has been written out; L{ServerGroup} runs a batch of a
map's tasks one after another as one CPU task.

So no task's code, however long it holds the reactor, delays the creation,
messages or outcomes of other tasks: everything that arrived in the same
read is taken in first, and outcomes already queued go out before any new
task code runs.
"""

import inspect
import threading
import time
from collections import deque

from twisted.internet import defer, threads
from twisted.logger import Logger
from twisted.python.failure import Failure

from . import serialize
from .protocol import commands
from .tasks import OK, TERMINATED, Task, TaskTerminated, _async_raise, _Runner, _wants_task, encode_outcomes, error_outcome

#: Seconds of task starts (of tasks that end at once) in one reactor turn.
SLICE = 0.005
#: A group running in a thread reports what ended at least this often (seconds).
REPORT_EVERY = 0.02


class Starter:
    """Starts tasks (and groups) in arrival order, a reactor turn after they arrived."""

    def __init__(self, reactor, runtime):
        self.reactor = reactor
        self.runtime = runtime
        self.queue = deque()
        self._call = None

    def enqueue(self, unit):
        """Start C{unit} (a L{Task}, a group: anything with C{_start()}) on a later reactor turn."""
        self.queue.append(unit)
        if self._call is None:
            self._call = self.reactor.callLater(0, self._run)

    def later(self, fn):
        """Call C{fn} on a later turn, as a unit of its own (a group going on)."""
        self.enqueue(_Call(fn))

    def _run(self):
        self._call = None
        self.runtime.flush_links()
        deadline = time.monotonic() + SLICE
        queue = self.queue
        while queue:
            queue.popleft()._start()
            if queue and time.monotonic() > deadline:
                self._call = self.reactor.callLater(0, self._run)
                break
        # Outcomes of the tasks that ended at once go out now.
        self.runtime.flush_links()


class _Call:
    __slots__ = ("_start",)

    def __init__(self, fn):
        self._start = fn


class ServerGroup:
    """
    A batch of C{count} tasks of one function (ids C{tid} ...), run one
    after another; their outcomes go back to C{proto}, in order, a slice at
    a time. Tasks of a function that takes a C{task} argument are full
    L{Task}s (with mailboxes); others are plain calls, in one worker-thread
    job for a plain function.
    """

    log = Logger()

    def __init__(self, server, proto, tid, fn, calls):
        self.server = server
        self.runtime = server.runtime
        self.reactor = server.reactor
        self.proto = proto
        self.tid = tid
        self.fn = fn
        self.calls = calls
        self.count = len(calls)
        self.index = 0
        self.outcomes = []
        self.reported = 0
        self.terminating = False
        self.current = None
        self.thread = None
        self.ended = False
        self._waiters = []
        self._looping = False
        self.on_reactor = inspect.isgeneratorfunction(fn) or inspect.iscoroutinefunction(fn)
        self.wants_task = _wants_task(fn)
        self.runtime.groups[tid] = self

    def _start(self):
        if self.ended:
            return  # terminated before it started
        if not self.on_reactor and not self.wants_task:
            d = threads.deferToThreadPool(self.reactor, self.runtime.threadpool, self._in_thread)
            d.addBoth(self._thread_done)
        else:
            self._loop()

    # -- on the reactor ------------------------------------------------------------

    def _loop(self):
        self._looping = True
        try:
            deadline = time.monotonic() + SLICE
            while self.index < self.count and not self.terminating:
                i = self.index
                self.index += 1
                if not self._run_one(i):
                    return  # it waits: its end goes on
                if time.monotonic() > deadline and self.index < self.count:
                    self._report()
                    self.server.starter.later(self._loop)
                    return
            self._finish()
        finally:
            self._looping = False

    def _run_one(self, i):
        """Start task C{i}; True when it ended at once."""
        args = self.calls[i]
        if self.wants_task:
            task = Task._create(self.runtime, self.fn, args, {}, on_done=self._task_done, tid=self.tid + i,
                                creator=self.proto, in_group=True)
            self.current = task
            task._start()
            return task.outcome is not None
        try:
            it = self.fn(*args)
        except BaseException as e:
            self.outcomes.append(error_outcome(e))
            return True
        box = []
        runner = _Runner(it, inspect.iscoroutine(it), box.append)
        self.current = runner
        runner.start()
        if box:
            self.outcomes.append(box[0])
            return True
        runner.done = self._runner_done
        return False

    def _task_done(self, task):
        self.current = None
        self.outcomes.append(task.outcome)
        if not self._looping:
            self._resume()

    def _runner_done(self, outcome):
        self.current = None
        self.outcomes.append(outcome)
        self._resume()

    def _resume(self):
        self._report()
        self.server.starter.later(self._loop)

    # -- in a worker thread (a plain function) ---------------------------------------

    def _in_thread(self):
        self.thread = threading.get_ident()
        fn, calls, outcomes = self.fn, self.calls, self.outcomes
        last = time.monotonic()
        try:
            for i in range(self.count):
                if self.terminating:
                    break
                self.index = i + 1
                try:
                    outcomes.append((OK, fn(*calls[i])))
                except TaskTerminated:
                    outcomes.append((TERMINATED, None))
                except BaseException as e:
                    outcomes.append((TERMINATED, None) if self.terminating else error_outcome(e))
                now = time.monotonic()
                if now - last > REPORT_EVERY:
                    last = now
                    self.reactor.callFromThread(self._report)
        finally:
            self.thread = None

    def _thread_done(self, result):
        if isinstance(result, Failure):
            self.log.failure("group {t} failed", result, t=self.tid)
        self._finish()

    # -- outcomes ----------------------------------------------------------------

    def _report(self):
        """Send the outcomes not sent yet (in pieces under the inline cap)."""
        end = len(self.outcomes)
        if end <= self.reported or not self.proto.connected:
            return
        start, self.reported = self.reported, end
        self._send(start, self.outcomes[start:end])
        for i in range(start, end):
            self.outcomes[i] = None  # sent: let the values go

    def _send(self, start, outcomes):
        from .runtime import INLINE_LIMIT

        blob = encode_outcomes(outcomes)
        if len(blob) <= INLINE_LIMIT:
            self.proto.queue_call(commands.GroupEnded, task=self.tid, start=start, outcomes=blob)
        elif len(outcomes) > 1:
            half = len(outcomes) // 2
            self._send(start, outcomes[:half])
            self._send(start + half, outcomes[half:])
        else:  # one large result: streamed, as a task's own
            from .tasks import encode_outcome

            self.runtime.send_outcome(self.proto, self.tid + start, encode_outcome(outcomes[0]))

    def _finish(self):
        if self.ended:
            return
        # What was never run (terminated) ends as terminated.
        while len(self.outcomes) < self.count:
            self.outcomes.append((TERMINATED, None))
        self.ended = True
        self._report()
        self.runtime.groups.pop(self.tid, None)
        self.calls = self.outcomes = ()
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    def result(self):
        """Deferred firing once the group has ended."""
        if self.ended:
            return defer.succeed(None)
        d = defer.Deferred()
        self._waiters.append(d)
        return d

    def terminate(self):
        """End the group: the running task is terminated, the rest never start."""
        if self.ended:
            return defer.succeed(None)
        self.terminating = True
        current = self.current
        if isinstance(current, Task):
            current.terminate()
        elif isinstance(current, _Runner):
            current.terminate()
        if self.thread is not None:
            _async_raise(self.thread, TaskTerminated)
        elif self.current is None:
            self._finish()  # between two tasks (or not started): nothing runs
        return self.result()


def resolve_function(server, proto, ref):
    """The function a task creation names: a component's name, or the id of code defined before."""
    from .errors import DispycosError

    if isinstance(ref, str):
        fn = server.components.get(ref)
        if fn is None:
            raise DispycosError("%r is not a component of this computation" % (ref,))
        return fn
    functions = server.functions
    fn = functions.get(ref)
    if fn is None:
        code = server.runtime.codes.get(ref)
        if code is None:
            raise DispycosError("no code %r was defined here" % (ref,))
        try:
            fn = functions[ref] = serialize.loads(code)
        except Exception as e:
            raise DispycosError("the function could not be unpickled here: %s: %s" % (type(e).__name__, e))
    return fn
