# -*- test-case-name: tests.test_blocking_executor -*-
"""
C{comp.executor()}: a L{concurrent.futures.Executor} whose calls run as
tasks of a blocking L{dispycos.blocking.Computation}, so that code written
for the standard library's executors (C{submit}, C{map}, C{shutdown},
C{as_completed}, C{wait}) runs on a dispycos cluster unchanged.

C{submit(fn, *args, **kwargs)} is C{comp.run(fn, *args, **kwargs)} followed
by the task's C{result()}: its future fails with the exception the Deferred
API errbacks with (L{dispycos.RemoteTaskError}, L{dispycos.TaskTerminated},
...). A future is pending while its task waits for a free server (then
C{cancel()} takes it off the queue) and running once the task was sent.
Done-callbacks run in the blocking API's reactor thread: they must not
block (a blocking dispycos call there raises L{ReactorThreadError}).
"""

import concurrent.futures
import itertools
import threading
import types

from twisted.python.failure import Failure

from dispycos.client import background

_PLAIN_FUNCTIONS = (types.FunctionType, types.BuiltinFunctionType)


def call_object(fn, args, kwargs):
    """Runs on a server: call C{fn}, any callable object (a task function of its own)."""
    return fn(*args, **kwargs)


def call_chunk(fn, chunk):
    """Runs on a server: C{fn} over the argument tuples of C{chunk} (C{map}'s C{chunksize})."""
    return [fn(*args) for args in chunk]


class TaskFuture(concurrent.futures.Future):
    """
    The future of one task: pending while the task waits for a server,
    running once it was sent; C{cancel()} of a pending one takes it off
    the queue; L{terminate} ends a running one.
    """

    def __init__(self):
        super().__init__()
        self._placing = None
        self._rtask = None

    def cancel(self):
        """Cancel a pending future (its task is taken off the queue); False once it runs."""
        with self._condition:
            if self.cancelled():
                return True
            if not super().cancel():
                return False
            # Notified at once (no worker will do it later): wait() and as_completed() see it.
            self.set_running_or_notify_cancel()
        background.call_soon(self._unplace)
        return True

    def _claim(self):
        """Pending -> running, unless it was cancelled (then False)."""
        with self._condition:
            return not self.cancelled() and self.set_running_or_notify_cancel()

    def terminate(self):
        """End the task (non-blocking): cancelled if pending, terminated if running."""
        if not self.cancel():
            background.call_soon(self._terminate)

    # -- in the reactor's thread ---------------------------------------------

    def _start(self, comp, fn, args, kwargs):
        if self.cancelled():
            return
        if not isinstance(fn, _PLAIN_FUNCTIONS):
            # A callable object (a partial, an instance): one task function for all of them.
            fn, args, kwargs = call_object, (fn, args, kwargs), {}
        try:
            self._placing = comp.run(fn, *args, **kwargs)
        except Exception:
            self._failed(Failure())
            return
        self._placing.addCallbacks(self._placed, self._failed)

    def _placed(self, rtask):
        self._placing = None
        if not self._claim():
            rtask.terminate().addErrback(lambda f: None)  # cancelled meanwhile
            return
        self._rtask = rtask
        rtask.result().addCallbacks(self._succeeded, self._failed)

    def _succeeded(self, result):
        self._rtask = None
        self.set_result(result)

    def _failed(self, failure):
        self._placing = self._rtask = None
        if self.cancelled():
            return
        if self.running() or self._claim():
            self.set_exception(failure.value)

    def _unplace(self):
        placing, self._placing = self._placing, None
        if placing is not None and not placing.called:
            placing.cancel()

    def _terminate(self):
        if self._rtask is not None and self._rtask.outcome is None:
            self._rtask.terminate().addErrback(lambda f: None)


def _chunks(chunksize, iterables):
    """Lists of up to C{chunksize} argument tuples."""
    it = zip(*iterables)
    while True:
        chunk = list(itertools.islice(it, chunksize))
        if not chunk:
            return
        yield chunk


class DispycosExecutor(concurrent.futures.Executor):
    """
    A C{concurrent.futures.Executor} on a blocking computation (see the
    module's doc): C{submit}, C{map(fn, *iterables, timeout=None,
    chunksize=1)}, C{shutdown(wait=True, cancel_futures=False)}. Shutting it
    down does not close the computation.
    """

    def __init__(self, computation):
        self._comp = computation
        self._lock = threading.Lock()
        self._shutdown = False
        self._futures = set()

    def submit(self, fn, /, *args, **kwargs):
        """Run C{fn(*args, **kwargs)} as a task; its L{TaskFuture}."""
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            future = TaskFuture()
            self._futures.add(future)
        future.add_done_callback(self._forget)
        background.call_soon(future._start, self._comp.wrapped, fn, args, kwargs)
        return future

    def _forget(self, future):
        with self._lock:
            self._futures.discard(future)

    def map(self, fn, *iterables, timeout=None, chunksize=1):
        """
        As C{Executor.map}: results in order, C{timeout} counted from the
        call; with C{chunksize} > 1 each task runs C{fn} over that many
        items.
        """
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        if chunksize == 1:
            return super().map(fn, *iterables, timeout=timeout)
        lists = super().map(call_chunk, itertools.repeat(fn), _chunks(chunksize, iterables), timeout=timeout)
        return itertools.chain.from_iterable(lists)

    def shutdown(self, wait=True, *, cancel_futures=False):
        """
        Take no more calls; with C{cancel_futures} cancel those still
        waiting for a server; with C{wait} wait until the others are done.
        """
        with self._lock:
            self._shutdown = True
            futures = list(self._futures)
        if cancel_futures:
            for future in futures:
                future.cancel()
        if wait:
            background.check_thread("Executor.shutdown(wait=True)")
            concurrent.futures.wait(futures)
