# -*- test-case-name: tests.test_retries -*-
"""
The methods that create tasks (C{run*}, C{run_results}, C{map}, C{options}),
shared by a L{dispycos.client.computation.Computation} and the views its
C{options()} returns.
"""

from twisted.internet import defer

from dispycos.client.mapping import MapRun, run_results
from dispycos.errors import ComputationClosed


def _result_of(rtask):
    return rtask.result()


#: An option of C{options()} not given (keep the current value).
_KEEP = object()


class _TaskMethods:
    """
    The methods that create tasks, shared by a L{Computation} (with its
    default options) and the views C{options()} returns (with theirs).
    """

    def options(self, retries=_KEEP, retry_on=_KEEP, timeout=_KEEP):
        """
        A view of this computation whose C{run*}, C{map} and C{run_results}
        methods use these options instead (those not given stay): C{retries}
        (attempts after the first for a task lost with its server or node,
        or that raised a C{retry_on} type), C{retry_on} (exception classes or
        names), C{timeout} (seconds a task may run; then it is terminated and
        C{result()} errbacks with L{dispycos.TaskTimeout})::

            rtask = await comp.options(retries=2, timeout=60).run(compute, 5)
        """
        changes = {name: value for name, value in
                   (("retries", retries), ("retry_on", retry_on), ("timeout", timeout)) if value is not _KEEP}
        return TaskOptionsView(self._computation, self._options.replace(**changes))

    def run_at(self, where, fn, *args, **kwargs):
        """
        Deferred firing with a L{RemoteTask} for C{fn(*args, **kwargs)} on node
        C{where} (IP or name) or server C{where} (a L{Location}), once it has
        no CPU task. C{cancel()} before it fires takes the task off the queue.
        """
        return self._computation._run(where, fn, args, kwargs, True, self._options)

    def run(self, fn, *args, **kwargs):
        """
        Deferred firing with a L{RemoteTask} on the least-loaded free server
        (C{cancel()} before it fires takes the task off the queue).
        """
        return self._computation._run(None, fn, args, kwargs, True, self._options)

    def run_async_at(self, where, fn, *args, **kwargs):
        """As L{run_at}, but the task does not count as a CPU task."""
        return self._computation._run(where, fn, args, kwargs, False, self._options)

    def run_async(self, fn, *args, **kwargs):
        """As L{run}, but the task does not count as a CPU task."""
        return self._computation._run(None, fn, args, kwargs, False, self._options)

    def run_result_at(self, where, fn, *args, **kwargs):
        """Deferred firing with the result of C{fn} run at C{where}."""
        return self.run_at(where, fn, *args, **kwargs).addCallback(_result_of)

    def run_result(self, fn, *args, **kwargs):
        """Deferred firing with the result of C{fn} run on some server."""
        return self.run(fn, *args, **kwargs).addCallback(_result_of)

    def run_results(self, fn, iterable, progress=False):
        """
        Deferred firing with the list of results of C{fn} over C{iterable}, in
        input order (a tuple item is the argument list). Errbacks with the
        first failure. Tasks go to servers in batches (see L{map}). With
        C{progress}, a progress bar on stderr when it is a terminal.
        """
        comp = self._computation
        try:
            comp._check_open()
        except ComputationClosed:
            return defer.fail()
        return run_results(comp, fn, iterable, self._options, progress)

    def map(self, fn, iterable, ordered=True, window=None, progress=False):
        """
        An async iterator of the results of C{fn} over C{iterable} (a tuple
        item is the argument list): in input order, or as they come when not
        C{ordered}. The input is read lazily and at most C{window} tasks
        (default: 4 x servers x batch size) are submitted and not yet yielded;
        tasks go to servers in batches sized from their measured durations,
        each batch one CPU task. The first failure ends the iteration with
        that error (the map's other tasks are terminated). With retries, the
        unfinished tasks of a lost batch run again (each result comes once).
        With C{progress}, a progress bar on stderr when it is a terminal::

            async for result in comp.map(compute, range(1000000)):
                ...
        """
        comp = self._computation
        comp._check_open()
        return MapRun(comp, fn, iterable, ordered=ordered, window=window, options=self._options,
                      progress=progress)

    # pycos names
    rtask_at = run_at
    rtask = run
    io_rtask_at = run_async_at
    io_rtask = run_async


class TaskOptionsView(_TaskMethods):
    """
    A computation with other task options (what C{Computation.options()}
    returns): its C{run*}, C{map} and C{run_results} methods create the
    computation's tasks with these options.
    """

    def __init__(self, computation, options):
        self._computation = computation
        self._options = options

    @property
    def computation(self):
        """The L{Computation} this is a view of."""
        return self._computation

    def __repr__(self):
        return "<%r of %r>" % (self._options, self._computation)
