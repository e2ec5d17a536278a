# -*- test-case-name: tests.test_units -*-
"""
Tasks: local tasks with a mailbox (L{Task}), references to tasks in other
processes (L{TaskRef}, L{RemoteTask}), and the runner that drives pycos-style
generator functions, C{async def} coroutines and plain functions.
"""

import ctypes
import inspect
import threading
import time
from collections import deque

from twisted.internet import defer, threads
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure

from dispycos import config
from dispycos.errors import ConnectionLostError, MailboxFull, TaskTerminated, TimeoutError, UnknownTaskError
from dispycos.peer.channels import ChannelRef
from dispycos.peer.outcomes import (ABANDONED, ERROR, OK, TERMINATED, decode_outcome, decode_outcomes, encode_outcome,
                                    encode_outcomes, error_outcome, outcome_result, plain_outcome)
from dispycos.peer.programs import start_program
from dispycos.peer.reactorthread import blocking_in_thread, in_worker_thread, oneway_in_thread, with_timeout
from dispycos.peer.runtime import current_runtime
from dispycos.protocol.streams import send_file
from dispycos.status import Location

log = Logger()

__all__ = ["Task", "TaskRef", "RemoteTask", "TimeoutError", "OK", "ERROR", "TERMINATED", "ABANDONED",
           "decode_outcome", "decode_outcomes", "encode_outcome", "encode_outcomes", "error_outcome",
           "outcome_result", "plain_outcome", "blocking_in_thread", "oneway_in_thread", "in_worker_thread",
           "with_timeout"]


#: C{receive(alarm_value=...)} not given.
_NO_ALARM = object()
#: Nothing yielded yet (L{_Runner.go_on}).
_NOTHING = object()


# -- the runner ---------------------------------------------------------------


class _Runner:
    """
    Drives a generator (pycos style: yielded Deferreds are awaited, the result
    is the return value or else the last non-Deferred value yielded) or a
    coroutine (awaiting Deferreds) on the reactor.
    """

    def __init__(self, it, coroutine, done):
        self.it = it
        self.coroutine = coroutine
        self.done = done
        self.last = None
        self.waiting = None
        self.terminating = False

    def start(self):
        self._step(None, None)

    def go_on(self, yielded):
        """Take over a generator that someone else started and that yielded C{yielded}."""
        self._step(None, None, yielded)

    def _step(self, value, exc, yielded=_NOTHING):
        it = self.it
        while True:
            try:
                if yielded is not _NOTHING:
                    y, yielded = yielded, _NOTHING
                elif exc is not None:
                    y = it.throw(exc)
                else:
                    y = it.send(value)
            except StopIteration as e:
                if self.terminating:
                    return self.done((TERMINATED, None))
                result = e.value
                if result is None and not self.coroutine:
                    result = self.last
                return self.done((OK, result))
            except TaskTerminated:
                return self.done((TERMINATED, None))
            except BaseException as e:
                if self.terminating and isinstance(e, (GeneratorExit, defer.CancelledError)):
                    return self.done((TERMINATED, None))
                return self.done(error_outcome(e))
            value = exc = None
            if isinstance(y, defer.Deferred):
                if self.coroutine:
                    if y.called and not y.paused:
                        continue
                    self.waiting = y
                    y.addBoth(self._resume)
                    return
                if y.called and not y.paused:
                    box = []
                    y.addBoth(box.append)
                    r = box[0]
                    if isinstance(r, Failure):
                        exc = r.value
                    else:
                        value = r
                    continue
                self.waiting = y
                y.addBoth(self._resume)
                return
            if self.coroutine:
                exc = TypeError("a dispycos coroutine may await only Deferreds, not %r" % (y,))
                continue
            self.last = value = y

    def _resume(self, result):
        self.waiting = None
        if self.terminating:
            self._step(None, TaskTerminated("terminated"))
            return None
        if self.coroutine:
            self._step(None, None)
            return result
        if isinstance(result, Failure):
            self._step(None, result.value)
        else:
            self._step(result, None)
        return None

    def terminate(self):
        """Throw L{TaskTerminated} into the task at its current wait."""
        if self.terminating:
            try:
                self.it.close()
            except BaseException:
                pass
            return self.done((TERMINATED, None))
        self.terminating = True
        w = self.waiting
        if w is not None:
            w.cancel()
            if self.waiting is w:
                # The Deferred ignored the cancel (paused or chained): do not wait for it.
                self.waiting = None
                self._step(None, TaskTerminated("terminated"))


class _SinkRunner(_Runner):
    """
    A runner whose task's prints go to its client (C{forward_output}): its
    C{sink} is this thread's current one around each step of the task's code
    (see L{dispycos.output}).
    """

    def __init__(self, it, coroutine, done, sink):
        super().__init__(it, coroutine, done)
        self.sink = sink

    def _step(self, value, exc, yielded=_NOTHING):
        previous = self.sink.enter()
        try:
            return _Runner._step(self, value, exc, yielded)
        finally:
            self.sink.leave(previous)


def _async_raise(thread_id, exc_type):
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc_type))


# -- task references ------------------------------------------------------------


def _rebuild_ref(addr, port, tid, name):
    # The runtime at hand: the one whose connection is being read (see runtime.current_runtime).
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


_task_param = {}


def _wants_task(fn):
    """Whether C{fn} declares a parameter named C{task} (cached per function)."""
    key = getattr(fn, "__code__", None) or fn
    try:
        return _task_param[key]
    except (KeyError, TypeError):
        pass
    try:
        wants = "task" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        wants = False
    try:
        if len(_task_param) > 10000:
            _task_param.clear()
        _task_param[key] = wants
    except TypeError:
        pass
    return wants


class Task(_TaskAPI):
    """
    A task running in this process, on the reactor, with a mailbox.

    C{Task(fn, *args, **kwargs)} starts C{fn} (a generator function, a
    coroutine function or a plain function, which then runs in a thread);
    when C{fn} declares a parameter named C{task} it receives this object.
    """

    def __init__(self, fn, *args, **kwargs):
        self._setup(current_runtime(), fn, args, kwargs)
        self._start()

    _creator = None
    _in_group = False
    #: Where its prints go (a L{dispycos.peer.output.Sink}: forward_output), or None.
    _sink = None

    @classmethod
    def _create(cls, runtime, fn, args, kwargs, on_done=None, tid=None, creator=None, in_group=False):
        """
        A task not started yet (L{_start}); C{tid} is the id its C{creator}
        (a connection) chose, and a task C{in_group} leaves reporting its
        outcome to its group.
        """
        self = cls.__new__(cls)
        self._creator = creator
        self._in_group = in_group
        self._setup(runtime, fn, args, kwargs, tid)
        self._on_done = on_done
        return self

    def _setup(self, runtime, fn, args, kwargs, tid=None):
        if not callable(fn):
            raise TypeError("%r is not callable" % (fn,))
        self._rt = runtime
        self.fn = fn
        self.args = args
        self.kwargs = dict(kwargs)
        self.name = getattr(fn, "__name__", "task")
        self.tid = runtime.register(self, tid)
        self.start_time = time.time()
        self.mailbox = deque()
        self._mail_sizes = deque()  # bytes each message came in as (0: sent in this process)
        self._mail_bytes = 0
        self._receivers = deque()
        self.outcome = None
        self._waiters = []
        self._runner = None
        self._thread = None
        self._on_done = None
        if _wants_task(fn):
            self.kwargs["task"] = self

    @property
    def reactor(self):
        return self._rt.reactor

    @property
    def location(self):
        """Where this task runs (this process's listening location)."""
        return self._rt.location

    _started = False

    def _start(self):
        if self._started or self.outcome is not None:
            return  # terminated before it started
        self._started = True
        fn = self.fn
        if inspect.isgeneratorfunction(fn) or inspect.iscoroutinefunction(fn):
            try:
                it = fn(*self.args, **self.kwargs)
            except BaseException as e:
                return self._done(error_outcome(e))
            if self._sink is None:
                self._runner = _Runner(it, inspect.iscoroutine(it), self._done)
            else:
                self._runner = _SinkRunner(it, inspect.iscoroutine(it), self._done, self._sink)
            self._runner.start()
        else:
            d = threads.deferToThreadPool(self.reactor, self._rt.threadpool, self._in_thread)
            d.addBoth(self._thread_done)

    def _in_thread(self):
        self._thread = threading.get_ident()
        if getattr(self, "_terminating", False):
            self._thread = None
            return (TERMINATED, None)
        sink = self._sink
        if sink is not None:
            previous = sink.enter()
        try:
            return (OK, self.fn(*self.args, **self.kwargs))
        except TaskTerminated:
            return (TERMINATED, None)
        except BaseException as e:
            if self.outcome is None and getattr(self, "_terminating", False):
                return (TERMINATED, None)
            return error_outcome(e)
        finally:
            self._thread = None
            if sink is not None:
                sink.thread_done()
                sink.leave(previous)

    def _thread_done(self, result):
        if isinstance(result, Failure):
            result = error_outcome(result.value)
        self._done(result)

    def _done(self, outcome):
        if self.outcome is not None:
            return
        self.outcome = outcome
        self.end_time = time.time()
        self._runner = None
        while self._receivers:
            d = self._receivers.popleft()
            d.cancel()
        # Messages nobody will read go with the task.
        self.mailbox.clear()
        self._mail_sizes.clear()
        self._mail_bytes = 0
        try:
            self._rt.task_done(self)
        finally:
            waiters, self._waiters = self._waiters, []
            for d in waiters:
                d.callback(None)
            if self._on_done is not None:
                self._on_done(self)

    # -- inside the task ----------------------------------------------

    @blocking_in_thread
    def receive(self, timeout=None, alarm_value=_NO_ALARM):
        """
        Deferred firing with the next message in the mailbox. After
        C{timeout} seconds without one it fires with C{alarm_value} when that
        is given (as in pycos), else errbacks with L{TimeoutError}. From a
        worker thread it blocks and returns the message.
        """
        if self.mailbox:
            self._mail_bytes -= self._mail_sizes.popleft()
            return defer.succeed(self.mailbox.popleft())
        d = defer.Deferred(lambda d: self._receivers.remove(d) if d in self._receivers else None)
        self._receivers.append(d)
        d = with_timeout(d, timeout, self.reactor, "receive")
        if alarm_value is not _NO_ALARM and timeout is not None:

            def alarm(f):
                f.trap(TimeoutError)
                return alarm_value

            d.addErrback(alarm)
        return d

    recv = receive

    def sleep(self, seconds):
        """
        Deferred firing after C{seconds}; from a worker thread it sleeps.
        """
        if in_worker_thread(self.reactor):
            time.sleep(seconds)
            return None
        return deferLater(self.reactor, seconds, lambda: None)

    def run_program(self, args, cwd=None, env=None):
        """
        Start an external program (a list: the program and its arguments; a
        component file is in C{..}) with pipes to its stdin and stdout; returns
        a L{dispycos.peer.programs.Program}.
        """
        if in_worker_thread(self.reactor):
            return threads.blockingCallFromThread(self.reactor, start_program, self.reactor, args, cwd, env)
        return start_program(self.reactor, args, cwd, env)

    @blocking_in_thread
    def channel(self, name):
        """
        Deferred firing with the client's channel C{name} (a reference), or
        errbacking if the client has none.
        """
        if name in self._rt.channels:
            return defer.succeed(self._rt.channels[name])
        creator = getattr(self, "_creator", None)
        if creator is None or creator.peer_loc is None:
            return defer.fail(UnknownTaskError("no channel %r here" % (name,)))
        ref = ChannelRef(creator.peer_loc, name)
        return ref._op("lookup").addCallback(lambda _: ref)

    @blocking_in_thread
    def send_file(self, path, to=None, dir=None, overwrite=False):
        """
        Send the file at C{path} to the client (default) or to the process of
        task C{to}; fires with the absolute path where it landed there (files
        for the client land in its C{Computation(dest_path=...)}).
        """
        return defer.ensureDeferred(self._send_file(path, to, dir, overwrite))

    async def _send_file(self, path, to, dir, overwrite):
        creator = getattr(self, "_creator", None)
        client = creator.peer_loc if creator is not None else None
        where = to.location if isinstance(to, _TaskAPI) else to
        if where is None or where == client:
            if creator is None or not creator.connected:
                raise ConnectionLostError("the client of task %s is not connected" % (self,))
            proto, dest = creator, "client"
        else:
            proto, dest = await self._rt.connection(where), "server"
        comp = self._rt.default_computation
        return await send_file(proto, path, dest, subdir=dir or "", overwrite=overwrite, computation=comp)

    def _put(self, msg, size=0):
        """
        Put C{msg} (which arrived as C{size} bytes) in the mailbox: False if
        the task has ended.

        @raise MailboxFull: when the mailbox holds C{config.MaxMailbox}
            messages, or C{config.MaxMailboxBytes} of them.
        """
        if self.outcome is not None:
            return False
        if self._receivers:
            self._receivers.popleft().callback(msg)
        elif len(self.mailbox) >= config.MaxMailbox:
            raise MailboxFull("the mailbox of task %s is full (%d messages): message refused"
                              % (self, len(self.mailbox)))
        elif size and self._mail_bytes + size > config.MaxMailboxBytes:
            raise MailboxFull("the mailbox of task %s is full (%d bytes unread): message of %d bytes refused"
                              % (self, self._mail_bytes, size))
        else:
            self.mailbox.append(msg)
            self._mail_sizes.append(size)
            self._mail_bytes += size
        return True

    # -- reference API --------------------------------------------------

    @oneway_in_thread
    def send(self, msg):
        """Put C{msg} in this task's mailbox. Returns None."""
        self._put(msg)

    @blocking_in_thread
    def deliver(self, msg, timeout=None):
        """Deferred firing with 1 once C{msg} is in the mailbox."""
        if self._put(msg):
            return defer.succeed(1)
        return defer.fail(UnknownTaskError("task %s has ended" % (self,)))

    @blocking_in_thread
    def result(self, timeout=None):
        """Deferred firing with the task's result (errbacks as L{RemoteTask.result})."""
        if self.outcome is not None:
            return defer.succeed(None).addCallback(lambda _: outcome_result(self.outcome, self))
        d = defer.Deferred(lambda d: self._waiters.remove(d) if d in self._waiters else None)
        self._waiters.append(d)
        d.addCallback(lambda _: outcome_result(self.outcome, self))
        return with_timeout(d, timeout, self.reactor, "result of %s" % (self,))

    @blocking_in_thread
    def terminate(self):
        """Terminate the task; the Deferred fires once it has ended."""
        if self.outcome is None:
            if not self._started:
                self._done((TERMINATED, None))
            elif self._runner is not None:
                self._runner.terminate()
            else:
                self._terminating = True  # a thread task not running yet sees it first thing
                if self._thread is not None:
                    _async_raise(self._thread, TaskTerminated)
        if self.outcome is not None:
            return defer.succeed(None)
        d = defer.Deferred()
        self._waiters.append(d)
        return d

    def is_alive(self):
        return self.outcome is None
