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

from dispycos import serialize
from dispycos.errors import DispycosError, TaskTerminated
from dispycos.peer.connection import INLINE_LIMIT
from dispycos.peer.outcomes import OK, TERMINATED, encode_group_outcomes, encode_outcome, error_outcome
from dispycos.peer.runner import _async_raise, _Runner, _SinkRunner
from dispycos.peer.tasks import Task, _wants_task
from dispycos.protocol import commands

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
        with self.runtime.queued:  # what the tasks queue goes out at the end (FlushGroup)
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


class _LazyTask:
    """
    The C{task} argument of a group's task: the full L{Task} (a mailbox, an
    id others can reach) is made only when the task's code first uses it, so
    a map of a function that declares C{task} but never uses it costs no
    task object per item.
    """

    __slots__ = ("_group", "_tid", "_task")

    def __init__(self, group, tid):
        self._group = group
        self._tid = tid
        self._task = None

    def _real(self):
        task = self._task
        if task is None:
            task = self._task = self._group._task_for(self._tid)
        return task

    def __getattr__(self, name):
        return getattr(self._real(), name)

    def __reduce__(self):
        return self._real().__reduce__()

    def __eq__(self, other):
        return self._real() == other

    def __hash__(self):
        return hash(self._real())

    def __str__(self):
        return str(self._real())

    __repr__ = __str__


class ServerGroup:
    """
    A batch of C{count} tasks of one function (ids C{tid} ...), run one
    after another; their outcomes go back to C{proto}, in order, a slice at
    a time. A generator or coroutine function runs on the reactor, a plain
    function in one worker-thread job; a C{task} argument is a L{_LazyTask}.
    """

    log = Logger()

    def __init__(self, server, proto, tid, fn, calls, single=False):
        self.server = server
        self.runtime = server.runtime
        self.reactor = server.reactor
        self.proto = proto
        self.tid = tid
        self.fn = fn
        self.calls = calls
        #: Each of C{calls} is its task's one argument (else its argument tuple).
        self.single = single
        self.count = len(calls)
        self.index = 0
        #: The results of its tasks that ended, in order (None where one did not succeed) ...
        self.outcomes = []
        #: ... and the outcomes of those: {index: outcome}.
        self.bad = {}
        self.reported = 0
        self.terminating = False
        self.current = None
        self.thread = None
        self.ended = False
        self._waiters = []
        self._going_on = False
        #: Its tasks that failed / were terminated so far (the rest finished): counted at its end.
        self.failed = 0
        self.terminated = 0
        #: Where its tasks' prints go (a L{dispycos.peer.output.Sink}: forward_output), or None.
        self.sink = None
        #: When its first task started (how long it has held its server tells its creator how to size batches),
        #: and how long that task ran (when it ended without waiting).
        self.started_at = None
        self.first_seconds = None
        self.on_reactor = inspect.isgeneratorfunction(fn) or inspect.iscoroutinefunction(fn)
        self.coroutine = inspect.iscoroutinefunction(fn)
        self.wants_task = _wants_task(fn)
        self.runtime.groups[tid] = self

    def _start(self):
        if self.ended:
            return  # terminated before it started
        self.started_at = time.monotonic()
        if not self.on_reactor:
            d = threads.deferToThreadPool(self.reactor, self.runtime.threadpool, self._in_thread)
            d.addBoth(self._thread_done)
        else:
            self._loop()

    def _task_for(self, tid):
        """The full task of group member C{tid} (its C{task} argument was used)."""
        return Task._create(self.runtime, self.fn, (), {}, tid=tid, creator=self.proto, in_group=True)

    def _call(self, i):
        """Call the function for task C{i}: its generator, coroutine or result, and its lazy task (or None)."""
        args = self.calls[i]
        if self.wants_task:
            lazy = _LazyTask(self, self.tid + i)
            return (self.fn(args, task=lazy) if self.single else self.fn(*args, task=lazy)), lazy
        return (self.fn(args) if self.single else self.fn(*args)), None

    @staticmethod
    def _ended(lazy, outcome):
        """A task ended: its full task (if its code made one) ends too."""
        if lazy is not None and lazy._task is not None:
            lazy._task._done(outcome)

    # -- on the reactor ------------------------------------------------------------

    def _loop(self):
        sink = self.sink
        if sink is None:
            return self._slice()
        previous = sink.enter()
        try:
            self._slice()
        finally:
            sink.leave(previous)

    def _slice(self):
        deadline = time.monotonic() + SLICE
        while self.index < self.count and not self.terminating:
            i = self.index
            self.index += 1
            if not self._run_one(i):
                return  # it waits: its end goes on
            if not i:
                self.first_seconds = time.monotonic() - self.started_at
            if time.monotonic() > deadline and self.index < self.count:
                self._report()
                self.server.starter.later(self._loop)
                return
        self._finish()

    def _run_one(self, i):
        """Run task C{i} as far as it goes at once; True when it ended."""
        lazy = None
        try:
            it, lazy = self._call(i)
            y = it.send(None)
        except StopIteration as e:  # the common case: ended without waiting
            self.outcomes.append(e.value)  # (no outcome tuple per task)
            if lazy is not None:
                self._ended(lazy, (OK, e.value))
            return True
        except TaskTerminated:
            self._item_ended(lazy, (TERMINATED, None))
            return True
        except BaseException as e:
            self._item_ended(lazy, error_outcome(e))
            return True
        done = lambda outcome: self._waited(lazy, outcome)  # noqa: E731
        runner = _Runner(it, self.coroutine, done) if self.sink is None else _SinkRunner(it, self.coroutine, done,
                                                                                         self.sink)
        self.current = runner
        self._going_on = True
        try:
            runner.go_on(y)
        finally:
            self._going_on = False
        return self.current is None

    def _item_ended(self, lazy, outcome):
        self._add(outcome)
        self._ended(lazy, outcome)

    def _add(self, outcome):
        if outcome[0] is OK:
            self.outcomes.append(outcome[1])
        else:
            self.bad[len(self.outcomes)] = outcome
            self.outcomes.append(None)
            self._count_bad(outcome)

    def _count_bad(self, outcome):
        if outcome[0] == TERMINATED:
            self.terminated += 1
        else:
            self.failed += 1

    def _waited(self, lazy, outcome):
        self.current = None
        self._item_ended(lazy, outcome)
        if not self._going_on:  # it ended after a wait: go on with the next ones
            self._report()
            self.server.starter.later(self._loop)

    # -- in a worker thread (a plain function) ---------------------------------------

    def _in_thread(self):
        self.thread = threading.get_ident()
        add = self._add
        last = time.monotonic()
        sink = self.sink
        if sink is not None:
            previous = sink.enter()
        try:
            for i in range(self.count):
                if self.terminating:
                    break
                self.index = i + 1
                lazy = None
                try:
                    result, lazy = self._call(i)
                    outcome = (OK, result)
                except TaskTerminated:
                    outcome = (TERMINATED, None)
                except BaseException as e:
                    outcome = (TERMINATED, None) if self.terminating else error_outcome(e)
                add(outcome)
                if lazy is not None and lazy._task is not None:
                    self.reactor.callFromThread(lazy._task._done, outcome)
                now = time.monotonic()
                if not i:
                    self.first_seconds = now - self.started_at
                if now - last > REPORT_EVERY:
                    last = now
                    self.reactor.callFromThread(self._report)
        finally:
            self.thread = None
            if sink is not None:
                sink.thread_done()
                sink.leave(previous)

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
        bad = {}
        if self.bad:
            for i in [i for i in list(self.bad) if start <= i < end]:  # (a worker thread may add to it)
                bad[i - start] = self.bad.pop(i)
        self._send(start, self.outcomes[start:end], bad)
        for i in range(start, end):
            self.outcomes[i] = None  # sent: let the values go

    def _send(self, start, values, bad):
        blob = encode_group_outcomes(values, bad)
        if len(blob) <= INLINE_LIMIT:
            self.proto.queue_call(commands.GroupEnded, task=self.tid, start=start, outcomes=blob,
                                  seconds=time.monotonic() - self.started_at if self.started_at else None,
                                  first=self.first_seconds)
        elif len(values) > 1:
            half = len(values) // 2
            self._send(start, values[:half], {i: o for i, o in bad.items() if i < half})
            self._send(start + half, values[half:], {i - half: o for i, o in bad.items() if i >= half})
        else:  # one large result: streamed, as a task's own
            outcome = bad.get(0) or (OK, values[0])
            self.runtime.send_outcome(self.proto, self.tid + start, encode_outcome(outcome))

    def _finish(self):
        if self.ended:
            return
        # What was never run (terminated) ends as terminated.
        never = self.count - len(self.outcomes)
        while len(self.outcomes) < self.count:
            self.bad[len(self.outcomes)] = (TERMINATED, None)
            self.outcomes.append(None)
        self.ended = True
        counts = self.runtime.counts
        counts.tasks_ended += self.count
        counts.tasks_failed += self.failed
        counts.tasks_terminated += self.terminated + max(0, never)
        self._report()
        self.runtime.groups.pop(self.tid, None)
        self.calls = self.outcomes = ()
        self.bad = {}
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
        if self.current is not None:
            self.current.terminate()  # a task waiting on the reactor
        if self.thread is not None:
            _async_raise(self.thread, TaskTerminated)
        elif self.current is None:
            self._finish()  # between two tasks (or not started): nothing runs
        return self.result()


def resolve_function(server, proto, ref):
    """The function a task creation names: a component's name, or the id of code defined before."""
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
