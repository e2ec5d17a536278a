# -*- test-case-name: tests.test_blocking_sklearn -*-
"""
A joblib backend: C{import dispycos.joblib} registers C{"dispycos"}, so that
joblib -- and scikit-learn's C{n_jobs} -- runs its work on dispycos servers::

    import joblib
    import dispycos.joblib
    from dispycos.blocking import Computation, Scheduler

    with Scheduler(nodes=["host1", "host2"], secret="..."), Computation([]) as comp:
        with joblib.parallel_config(backend="dispycos", computation=comp):
            scores = cross_val_score(model, X, y, n_jobs=-1)   # -1: all servers

Without C{computation=} the block gets a L{dispycos.blocking.LocalCluster}
of all CPUs of this machine, started when joblib first needs it and stopped
when the block's backend goes away (at the end of the block). The older
C{joblib.parallel_backend("dispycos", ...)} works too. Needs joblib
(C{pip install dispycos[joblib]}).

joblib batches the calls itself (its auto-batching, from the durations
this backend reports through the batch callbacks); each batch is one CPU
task on a server. A call that raised is raised again in the caller as
itself (its remote traceback as the cause). Nested joblib calls inside a
task run sequentially on that task's server.
"""

import concurrent.futures
import threading
import types
import weakref

from joblib import register_parallel_backend
from joblib._parallel_backends import AutoBatchingMixin, ParallelBackendBase, SequentialBackend

from dispycos import serialize
from dispycos.client import background
from dispycos.client.blocking import Computation, LocalCluster, _ComputationAPI
from dispycos.errors import RemoteTaskError

__all__ = ["DispycosBackend", "RemoteTraceback", "register"]

NAME = "dispycos"


def run_batch(batch):
    """Runs on a server: a joblib batch of calls (a callable returning the list of their results)."""
    return batch()


class RemoteTraceback(Exception):
    """The traceback of an exception raised on a server (the cause of the one raised again here)."""

    def __init__(self, text):
        super().__init__(text)
        self.text = text

    def __str__(self):
        return self.text


def _register_code(batch):
    """Let cloudpickle ship the client's own code inside a batch by value (one level deep)."""
    for item in getattr(batch, "items", ()):
        try:
            fn, args, kwargs = item
        except (TypeError, ValueError):
            continue
        for obj in (fn, getattr(fn, "function", None), *args, *kwargs.values()):
            if obj is not None:
                serialize.register_by_value(obj if isinstance(obj, (types.FunctionType, type)) else type(obj))


class _OwnCluster:
    """The L{LocalCluster} and computation of a block without C{computation=}; closed when dropped."""

    def __init__(self):
        self.cluster = LocalCluster(cpus=0).start()
        try:
            self.computation = Computation([run_batch])
            self.computation.schedule()
        except BaseException:
            self.cluster.stop()
            raise

    @staticmethod
    def close(cluster, computation):
        """Close the computation and stop the cluster (from whatever thread drops the backend)."""
        if background.in_reactor_thread():
            d = computation.wrapped.close(terminate=True)
            d.addBoth(lambda _: cluster.wrapped.stop())
            return
        try:
            computation.close(terminate=True)
        finally:
            cluster.stop()


class DispycosBackend(AutoBatchingMixin, ParallelBackendBase):
    """
    The joblib backend C{"dispycos"}.

    @param computation: a scheduled L{dispycos.blocking.Computation} to run
        on; None: a L{LocalCluster} of all CPUs, for as long as this backend
        lives.
    """

    supports_retrieve_callback = True
    supports_inner_max_num_threads = False
    supports_sharedmem = False
    uses_threads = False
    #: n_jobs=None in a "dispycos" block: every server.
    default_n_jobs = -1

    def __init__(self, computation=None, nesting_level=None, inner_max_num_threads=None, **backend_kwargs):
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads,
                         **backend_kwargs)
        if computation is not None and not hasattr(computation, "executor"):
            computation = _ComputationAPI(computation)  # a Deferred-API computation
        self._given = computation
        self._own = None
        self._own_lock = threading.Lock()
        self._executor = None
        self._callbacks = None
        self._futures = weakref.WeakSet()

    def _computation(self):
        if self._given is not None:
            return self._given
        with self._own_lock:
            if self._own is None:
                own = _OwnCluster()
                self._own = own
                weakref.finalize(self, _OwnCluster.close, own.cluster, own.computation)
            return self._own.computation

    def effective_n_jobs(self, n_jobs):
        """C{n_jobs} as asked; -1 (or None): every server of the computation; -2: all but one, ..."""
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None or n_jobs < 0:
            servers = len(self._computation().servers())
            return max(servers + 1 + (n_jobs or -1), 1)
        return n_jobs

    def configure(self, n_jobs=1, parallel=None, **backend_kwargs):
        """Start of a Parallel call: the number of batches to run at once."""
        n_jobs = self.effective_n_jobs(n_jobs)
        self.parallel = parallel
        if self._executor is None:
            self._executor = self._computation().executor()
        return n_jobs

    def submit(self, func, callback=None):
        """Run the batch C{func} as a task; its future (C{callback} gets it when done)."""
        _register_code(func)
        future = self._executor.submit(run_batch, func)
        self._futures.add(future)
        if callback is not None:
            # In a thread of its own, as joblib's pools do: never in the reactor's.
            if self._callbacks is None:
                self._callbacks = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="dispycos-joblib")
            callbacks = self._callbacks
            future.add_done_callback(lambda f: callbacks.submit(callback, f))
        return future

    apply_async = submit  # joblib < 1.5

    def retrieve_result_callback(self, out):
        """The batch's results; a call that raised raises that exception (remote traceback as the cause)."""
        try:
            return out.result()
        except RemoteTaskError as e:
            if e.exception is None:
                raise
            raise e.exception from RemoteTraceback(e.traceback or str(e))

    def abort_everything(self, ensure_ready=True):
        """A batch failed: end the others (cancelled while queued, terminated while running)."""
        for future in list(self._futures):
            future.terminate()

    def terminate(self):
        """End of a Parallel call."""
        self.parallel = None  # no cycle Parallel <-> backend keeps this backend alive
        self.reset_batch_stats()
        callbacks, self._callbacks = self._callbacks, None
        if callbacks is not None:
            callbacks.shutdown(wait=False)

    def get_nested_backend(self):
        """Calls nested in a task run one after another on its server (one CPU)."""
        return SequentialBackend(nesting_level=(self.nesting_level or 0) + 1), None

    def __reduce__(self):
        return (DispycosBackend, ())


def register():
    """Register the backend C{"dispycos"} with joblib (done on import)."""
    register_parallel_backend(NAME, DispycosBackend)


register()
