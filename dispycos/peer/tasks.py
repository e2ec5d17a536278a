# -*- test-case-name: tests.unit.test_tasks -*-
"""
Local tasks with a mailbox (L{Task}): pycos-style generator functions,
C{async def} coroutines and plain functions (in a worker thread). References
to tasks in other processes are in L{dispycos.peer.refs}, the runner of
their code in L{dispycos.peer.runner}; both are re-exported here.
"""

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
from dispycos.peer.outcomes import (ABANDONED, ERROR, OK, TERMINATED, decode_group_outcomes, decode_outcome,
                                    encode_group_outcomes, encode_outcome, error_outcome, outcome_result, plain_outcome)
from dispycos.peer.programs import start_program
from dispycos.peer.reactorthread import blocking_in_thread, in_worker_thread, oneway_in_thread, with_timeout
from dispycos.peer.refs import RemoteTask, TaskRef, _TaskAPI
from dispycos.peer.runner import _async_raise, _Runner, _SinkRunner
from dispycos.peer.registry import current_runtime
from dispycos.protocol.streams import send_file

log = Logger()

__all__ = ["Task", "TaskRef", "RemoteTask", "TimeoutError", "OK", "ERROR", "TERMINATED", "ABANDONED",
           "decode_outcome", "decode_group_outcomes", "encode_outcome", "encode_group_outcomes", "error_outcome",
           "outcome_result", "plain_outcome", "blocking_in_thread", "oneway_in_thread", "in_worker_thread",
           "with_timeout"]


#: C{receive(alarm_value=...)} not given.
_NO_ALARM = object()


# -- the runner ---------------------------------------------------------------


# -- task references ------------------------------------------------------------


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
