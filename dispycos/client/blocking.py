# -*- test-case-name: tests.test_blocking -*-
"""
The blocking API: dispycos from plain scripts and notebooks, without Twisted
code::

    from dispycos.blocking import Computation, LocalCluster

    def compute(n):
        return n * n

    with LocalCluster(cpus=2), Computation([compute]) as comp:
        print(comp.run_result(compute, 7))              # 49
        print(comp.run_results(compute, range(5)))      # [0, 1, 4, 9, 16]
        for square in comp.map(compute, range(3)):      # 0, 1, 4
            print(square)

L{Scheduler}, L{LocalCluster} and L{Computation} take the names and
arguments of the Deferred API (L{dispycos.Scheduler}, ...) and return values
instead of Deferreds; C{map} returns a plain iterator; tasks are blocking
L{RemoteTask} and L{Task} handles. Each is a context manager and has
C{close()}: entering a L{Computation} schedules it, leaving closes it
(terminating its tasks when the block raised).

All of them share one reactor, running in a daemon thread of this process
(L{dispycos.background}). A call waits at most C{Computation(...,
call_timeout=S)} seconds, or C{timeout=S} on the calls that take no task
arguments (C{schedule}, C{close}, C{nodes}, C{servers}, C{result},
C{deliver}, C{receive}, ...; where the Deferred API has a C{timeout} of its
own, that one is used); C{run}, C{run_at}, C{run_async}, C{run_async_at},
C{run_result} and C{run_result_at} pass every keyword to the task. On
timeout: L{dispycos.TimeoutError}. On Ctrl-C: C{KeyboardInterrupt}, and a
C{run*}/C{run_results}/C{map} call terminates the tasks it started, while
C{result()}/C{receive()} only stop waiting; the computation stays usable.
"""

import functools
import inspect

from twisted.internet import defer

from dispycos.client import background
from dispycos.client.background import ReactorThreadError, call, wait
from dispycos.client.wrapping import GRACE, _blocking, _cancel, _generate, _unwrap, _wrap, _Wrapper, handles
from dispycos.errors import TimeoutError
from dispycos.status import Status

# The Deferred API's modules (tasks, computation, scheduler, local) are
# imported where first used: importing this module starts no reactor and
# loads little.

__all__ = ["Scheduler", "LocalCluster", "Computation", "Client", "RemoteTask", "Task", "TaskRef", "MapIterator",
           "ReactorThreadError", "TimeoutError", "call"]

# -- tasks --------------------------------------------------------------------------


def _deferred_task_classes():
    from dispycos.peer import tasks

    return tasks


class TaskRef(_Wrapper):
    """
    A blocking reference to a task (pickles as the task's reference, so it
    can go in arguments and messages): C{send(msg)}, C{deliver(msg,
    timeout=None)}, C{result(timeout=None)} (alias C{finish}),
    C{terminate(timeout=None)}, C{location}, C{name}.
    """

    def __init__(self, wrapped, call_timeout=None):
        self.wrapped = wrapped
        self.call_timeout = call_timeout

    @classmethod
    def _around(cls, wrapped, call_timeout):
        return cls(wrapped, call_timeout)

    def send(self, msg):
        """Send C{msg} (no acknowledgement, ordered per sender); returns None."""
        self.wrapped.send(_unwrap(msg))

    def __reduce__(self):
        return self.wrapped.__reduce__()

    def __eq__(self, other):
        return self.wrapped == _unwrap(other)

    def __hash__(self):
        return hash(self.wrapped)

    def __str__(self):
        return str(self.wrapped)


def _task_methods(cls_name, names, abandon=None):
    from dispycos.peer import tasks

    namespace = {}
    _generate(namespace, getattr(tasks, cls_name), names, abandon)
    return namespace


# result() of an interrupted wait only stops waiting; the task goes on.
for _name, _method in _task_methods("TaskRef", ("deliver", "result", "terminate", "drain")).items():
    setattr(TaskRef, _name, _method)
TaskRef.finish = TaskRef.result


class RemoteTask(TaskRef):
    """A blocking handle on a task this process created on a server (what C{Computation.run} returns)."""


RemoteTask.result = RemoteTask.finish = _blocking(_deferred_task_classes().RemoteTask, "result")


class Task(TaskRef):
    """
    A local task on the blocking API's reactor, with a mailbox:
    C{Task(fn, *args, **kwargs)} starts C{fn} as L{dispycos.Task} does;
    C{Task()} is just a mailbox (until C{terminate()}), to give remote tasks
    as a reply address and read with C{receive(timeout=None,
    alarm_value=...)} -- an interrupted C{receive} takes nothing out.
    """

    def __init__(self, fn=None, *args, call_timeout=None, **kwargs):
        from dispycos.peer import tasks

        if fn is None:
            if args or kwargs:
                raise TypeError("Task() without a function takes no arguments")
            fn = _mailbox
        wrapped = wait(lambda: tasks.Task(fn, *map(_unwrap, args), **kwargs), what="Task")
        super().__init__(wrapped, call_timeout)

    @classmethod
    def _around(cls, wrapped, call_timeout):
        self = cls.__new__(cls)
        TaskRef.__init__(self, wrapped, call_timeout)
        return self


for _name, _method in _task_methods("Task", ("deliver", "result", "terminate", "receive"),
                                    {"receive": _cancel}).items():
    setattr(Task, _name, _method)
Task.finish = Task.result
Task.recv = Task.receive
del _name, _method

# What the blocking calls return as handles, most specific first.
handles.extend([(_deferred_task_classes().Task, Task), (_deferred_task_classes().RemoteTask, RemoteTask),
                (_deferred_task_classes().TaskRef, TaskRef)])


async def _mailbox(task=None):
    """A task that only keeps a mailbox: it waits until terminated."""
    await defer.Deferred()


# -- maps ---------------------------------------------------------------------------


class MapIterator:
    """
    The results of C{Computation.map}: a plain iterator (each C{next()}
    waits at most C{timeout} seconds). C{close()}, leaving a C{with} block
    or a C{KeyboardInterrupt} while waiting ends the map: its tasks still
    running are terminated.
    """

    def __init__(self, run, timeout=None):
        self._run = run
        self._timeout = timeout
        self._done = False

    def __iter__(self):
        return self

    def __next__(self):
        if self._done:
            raise StopIteration
        try:
            return wait(self._run.__anext__, self._timeout, self._abandon, "Computation.map")
        except StopAsyncIteration:
            self._done = True
            raise StopIteration from None
        except BaseException:
            self._done = True
            raise

    def _abandon(self, _returned):
        self._run.close()

    def close(self):
        """Stop the map: no more input is read, its running tasks are terminated."""
        if not self._done:
            self._done = True
            background.call_soon(self._run.close)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass  # interpreter exit: the reactor is gone


# -- the computation ----------------------------------------------------------------


class _TaskCall:
    """
    A C{run*} call in the reactor's thread: remembers the task it started,
    so that an abandoned call takes it off the queue or terminates it.
    """

    def __init__(self, method, args, kwargs, want_result):
        self.method, self.args, self.kwargs = method, args, kwargs
        self.want_result = want_result
        self.placing = None
        self.rtask = None

    def start(self):
        self.placing = self.method(*self.args, **self.kwargs)
        self.method = self.args = self.kwargs = None
        return self.placing.addCallback(self._placed)

    def _placed(self, rtask):
        self.rtask = rtask
        return rtask.result() if self.want_result else rtask

    def abandon(self, _returned):
        if self.rtask is None:
            if self.placing is not None and not self.placing.called:
                self.placing.cancel()  # off the queue
        elif self.rtask.outcome is None:
            return self.rtask.terminate()


def _run_method(name, via, want_result):
    def method(self, *args, **kwargs):
        call = _TaskCall(getattr(self.wrapped, via), tuple(map(_unwrap, args)), kwargs, want_result)
        return _wrap(wait(call.start, self.call_timeout, call.abandon, "Computation." + name), self.call_timeout)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = ("Blocking Computation.%s: %s. Every keyword goes to the task; the wait is bounded by "
                      "call_timeout; interrupted or timed out, the task is taken off the queue or terminated."
                      % (name, "the task's result" if want_result else "a blocking RemoteTask"))
    return method


#: The blocking C{run*} methods: what each calls in the Deferred API, and whether it waits for the result.
_RUN = {"run": ("run", False), "run_async": ("run_async", False), "run_result": ("run", True),
        "run_at": ("run_at", False), "run_async_at": ("run_async_at", False), "run_result_at": ("run_at", True)}
#: Methods of the Deferred API the blocking Computation writes by hand (or leaves out).
_BY_HAND = set(_RUN) | {"run_results", "map", "schedule"}


def _computation_api():
    from dispycos.client import computation as client

    return client.Computation


class _ComputationAPI(_Wrapper):
    """The blocking methods of a computation (or of a view of one with other task options)."""

    def __init__(self, wrapped, call_timeout=None):
        self.wrapped = wrapped
        self.call_timeout = call_timeout

    def run_results(self, fn, iterable, timeout=None, **options):
        """
        The list of results of C{fn} over C{iterable}, in input order (a
        tuple item is the argument list); the first failure is raised.
        Interrupted or timed out, it terminates its tasks.
        """
        thunk = functools.partial(self.wrapped.run_results, _unwrap(fn), iterable, **options)
        return wait(thunk, self.call_timeout if timeout is None else timeout, _cancel, "Computation.run_results")

    def map(self, fn, iterable, timeout=None, **options):
        """
        An iterator of the results of C{fn} over C{iterable}, read lazily
        (C{ordered=True}, C{window=None} as in the Deferred API); each
        result is waited for at most C{timeout} seconds (default:
        C{call_timeout}).
        """
        run = wait(functools.partial(self.wrapped.map, _unwrap(fn), iterable, **options), self.call_timeout,
                   None, "Computation.map")
        return MapIterator(run, self.call_timeout if timeout is None else timeout)

    def executor(self):
        """A C{concurrent.futures.Executor} running its calls as tasks of this computation."""
        from dispycos.client.executor import DispycosExecutor

        return DispycosExecutor(self)


for _name, (_via, _want) in _RUN.items():
    setattr(_ComputationAPI, _name, _run_method(_name, _via, _want))
del _name, _via, _want


class Computation(_ComputationAPI):
    """
    The blocking form of L{dispycos.Computation}: the same arguments, plus
    C{call_timeout} (seconds any call waits at most; None: no limit).
    C{with Computation([...]) as comp:} schedules it (unless C{schedule()}
    was called before) and closes it at the end (terminating its tasks when
    the block raised).
    """

    def __init__(self, components, *args, call_timeout=None, **kwargs):
        if "reactor" in kwargs:
            raise TypeError("the blocking Computation runs on the reactor of dispycos.blocking: no reactor=")
        Deferred = _computation_api()
        kwargs = {k: _unwrap(v) for k, v in kwargs.items()}
        reactor = background.get_reactor()
        super().__init__(wait(lambda: Deferred(components, *args, reactor=reactor, **kwargs), what="Computation"),
                         call_timeout)

    def schedule(self, location=None, timeout=None):
        """
        0 once this computation is active with a server ready (the Deferred
        API's rules and errors); interrupted, the scheduling is given up
        and the computation closed.
        """
        timeout = self.call_timeout if timeout is None else timeout
        thunk = functools.partial(self.wrapped.schedule, location, timeout)
        result = wait(thunk, None if timeout is None else timeout + GRACE, self._give_up, "Computation.schedule")
        self._scheduled = True
        return result

    def _give_up(self, _returned):
        return self.wrapped.close(terminate=True)

    _scheduled = False

    def __enter__(self):
        if not self._scheduled:  # (a schedule() of its own may have come first, with other arguments)
            self.schedule()
        return self

    def __exit__(self, exc_type, exc, tb):
        self.close(terminate=exc_type is not None)
        return False


def _generate_computation_methods():
    """Every other public method of the Deferred API's Computation, in blocking form (aliases too)."""
    cls = _computation_api()
    from dispycos.client.taskapi import _TaskMethods  # (written by hand here: run*, map, run_results)

    functions = {}
    for klass in reversed(cls.__mro__):  # Computation and the parts it is made of (ClusterControl)
        if klass not in (object, _TaskMethods):
            functions.update((n, v) for n, v in vars(klass).items() if not n.startswith("_") and inspect.isfunction(v))
    for name, function in functions.items():
        if function.__name__ == name and name not in _BY_HAND:
            setattr(_ComputationAPI, name, _blocking(cls, name))
    for name, function in functions.items():
        if function.__name__ != name:  # an alias (rtask = run): the same blocking method
            setattr(_ComputationAPI, name, getattr(_ComputationAPI, function.__name__, None)
                    or getattr(Computation, function.__name__))


_generate_computation_methods()
Client = Computation


# -- clusters and schedulers -----------------------------------------------------------


class _Closing(_Wrapper):
    """A context manager whose C{close()} runs at the end of the block."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False


class Scheduler(_Closing):
    """
    The blocking form of L{dispycos.Scheduler}: a private scheduler in this
    process, on the blocking API's reactor, with the same options.
    """

    def __init__(self, **options):
        from dispycos.scheduler import core as scheduler

        if "reactor" in options:
            raise TypeError("the blocking Scheduler runs on the reactor of dispycos.blocking: no reactor=")
        reactor = background.get_reactor()
        self.wrapped = wait(lambda: scheduler.Scheduler(reactor=reactor, **options), what="Scheduler")

    def close(self, timeout=None):
        """Close its computations and disconnect from the nodes."""
        return wait(self.wrapped.close, timeout, None, "Scheduler.close")


for _name, _member in Status.__members__.items():
    setattr(Scheduler, _name, _member)
del _name, _member


class LocalCluster(_Closing):
    """
    The blocking form of L{dispycos.LocalCluster}: a node of C{cpus}
    servers in a child process (a session of its own: a Ctrl-C does not
    reach it) and a private scheduler; C{start()}/C{stop()}, or C{with}.
    """

    def __init__(self, cpus=2, echo=False, debug=False, **scheduler_options):
        from dispycos.client import local

        if "reactor" in scheduler_options:
            raise TypeError("the blocking LocalCluster runs on the reactor of dispycos.blocking: no reactor=")
        self.wrapped = local.LocalCluster(cpus=cpus, reactor=background.get_reactor(), echo=echo, debug=debug,
                                          **scheduler_options)

    def start(self, timeout=None):
        """Start the node and the scheduler; returns this cluster (interrupted: stopped again)."""
        wait(self.wrapped.start, timeout, lambda _: self.wrapped.stop(), "LocalCluster.start")
        return self

    def stop(self, timeout=None):
        """Close the scheduler, stop the node and remove its files."""
        return wait(self.wrapped.stop, timeout, None, "LocalCluster.stop")

    close = stop

    def __enter__(self):
        return self.start()
