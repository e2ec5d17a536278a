# -*- test-case-name: tests.test_engine -*-
"""
Maps over many items: C{Computation.map} (an async iterator) and
C{Computation.run_results}.

The input is read lazily; items go to servers in batches (groups) that a
server runs one after another as one CPU task, sized from the durations
measured so far as joblib's auto batching does; at most C{window} tasks are
submitted and not yet yielded, so a million-item map runs in bounded memory.

With retries (C{comp.options(retries=N)}), the unfinished tasks of a batch
lost with its server go out again in new batches, on other servers while
there are any, and so does a task that raised a C{retry_on} type: each
result is taken once, whatever ran twice. With a timeout, a batch that
reports no outcome for that long is terminated: its running task ends with
L{dispycos.TaskTimeout}, the ones behind it go out again.
"""

import collections
import itertools
import time

from twisted.internet import defer
from twisted.logger import Logger

from dispycos import serialize
from dispycos.client.groups import PROBE_SECONDS, BatchSizer, RemoteGroup
from dispycos.client.mapretries import MapRetries
from dispycos.client.progress import progress_bar
from dispycos.errors import PicklingError
from dispycos.peer.outcomes import OK, group_outcome, outcome_result
from dispycos.peer.refs import RemoteTask
from dispycos.status import Status, TaskInfo


def _as_args(item):
    return item if isinstance(item, tuple) else (item,)


def _any_tuple(items):
    """Whether some of C{items} is a tuple (an argument list)."""
    return any(issubclass(t, tuple) for t in set(map(type, items)))


class MapRun(MapRetries):
    """
    One map of C{fn} over C{iterable} on computation C{comp}: an async
    iterator of results (in input order when C{ordered}), or, with
    C{collect}, a Deferred of the list of all results (L{result}). With
    C{options} (retries, a timeout: L{dispycos.client.attempts.TaskOptions}) lost
    tasks run again and groups have a deadline; with C{progress}, a progress
    bar on stderr when it is a terminal.
    """

    log = Logger()

    def __init__(self, comp, fn, iterable, ordered=True, window=None, collect=False, options=None, progress=False):
        self.comp = comp
        self.runtime = comp.runtime
        self.scheduler = comp._scheduler
        self.events = comp._events  # how the scheduler knows the computation
        self.counts = comp._counts
        self.ref, self.code = comp._function_ref(fn)
        self.name = getattr(fn, "__name__", "task")
        self.items = iter(iterable)
        self.total = len(iterable) if hasattr(iterable, "__len__") else None
        self.ordered = ordered
        self.window = window
        self.collect = collect
        self.sizer = BatchSizer()
        if self.total:
            self.sizer.start(self.total, len(self.scheduler.servers_now(comp._events)))
        self.next_index = 0  # items read (and sent) so far
        self.yielded = 0
        self.exhausted = False
        self.failure = None
        self.closed = False
        self.groups = {}
        self.placing = None
        self.pending = {}  # ordered: index -> outcome not yielded yet
        self.ready = collections.deque()  # unordered: outcomes not yielded yet
        self.results = [] if collect else None
        self._waiter = None
        # Cancelling run_results() ends the map (its running tasks are terminated).
        self._done = defer.Deferred(lambda d: self.close()) if collect else None
        self.reactor = comp.reactor
        self._probe_timer = None
        self._probe_over = False
        #: Options that ask for something (retries, a timeout), else None.
        self.options = options if options is not None and not options.plain else None
        #: Tasks to send again: C{(servers to avoid, [(index, args, attempts), ...])}.
        self.retry_queue = collections.deque()
        self.progress = progress_bar(self.total, desc=self.name) if progress else None

    # -- the async iterator ------------------------------------------------------

    def __aiter__(self):
        return self

    def __anext__(self):
        if self._waiter is not None:
            return defer.fail(RuntimeError("map: one __anext__ at a time"))
        self._fill()
        d = defer.Deferred()
        self._waiter = d
        self._wake()
        return d

    def _wake(self):
        d = self._waiter
        if d is None:
            return
        if self.failure is not None:
            self._waiter = None
            d.errback(self.failure)
            return
        outcome = self._next_outcome()
        if outcome is not None:
            self._waiter = None
            self.yielded += 1
            self._fill()
            try:
                d.callback(outcome_result(outcome))
            except Exception:
                d.errback()
        elif self._finished():
            self._waiter = None
            self._stop_probe()
            self._end_progress()
            d.errback(StopAsyncIteration())

    def _next_outcome(self):
        if self.ordered:
            return self.pending.pop(self.yielded, None)
        return self.ready.popleft() if self.ready else None

    def _finished(self):
        if not self.exhausted or self.groups or self.retry_queue:
            return False
        return self.collect or self.yielded >= self.next_index

    def result(self):
        """With C{collect}: a Deferred of the list of results, in input order."""
        self._fill()
        self._check_done()
        return self._done

    def _stop_probe(self):
        if self._probe_timer is not None and self._probe_timer.active():
            self._probe_timer.cancel()

    def _check_done(self):
        if self._finished() or self.failure is not None:
            self._stop_probe()
            self._end_progress()
        if self._done is None or self._done.called:
            return
        if self.failure is not None:
            self._done.errback(self.failure)
        elif self._finished():
            self._done.callback(self.results)

    # -- sending ----------------------------------------------------------------

    def _in_flight(self):
        return self.next_index - self.yielded

    def _limit(self):
        if self.window is not None:
            return max(1, self.window)
        servers = max(1, len(self.scheduler.servers_now(self.events)))
        return 4 * servers * self.sizer.size

    def _probing(self):
        """
        True while the first batch is out and nothing is measured yet (and
        not for longer than L{PROBE_SECONDS}): short tasks are measured on
        one server before their batches are sized for all of them; long ones
        lose no more than that wait.
        """
        if self.sizer.per_task is not None or not self.groups or self._probe_over:
            return False
        if self._probe_timer is None:
            self._probe_timer = self.reactor.callLater(PROBE_SECONDS, self._end_probe)
        return True

    def _end_probe(self):
        self._probe_over = True
        self.sizer.unmeasured()
        self._fill()

    def _fill(self):
        """Ask for servers while there are tasks to send again, or input and room in the window."""
        while self.placing is None and self.failure is None and not self.closed:
            retry = bool(self.retry_queue)
            if not retry and not (not self.exhausted and (self.collect or self._in_flight() < self._limit())
                                  and not self._probing()):
                return
            try:
                if retry:  # (within the window: these were read already)
                    placed = self.scheduler.place(self.events, True, None, avoid=self.retry_queue[0][0])
                else:
                    placed = self.scheduler.place(self.events, True, None)
            except Exception as e:
                self._fail(e)
                return
            if isinstance(placed, defer.Deferred):
                self.placing = placed
                placed.addCallbacks(self._placed, self._place_failed, callbackArgs=(retry,))
                return
            self._submit(placed, retry)

    def _placed(self, entry, retry=False):
        self.placing = None
        self._submit(entry, retry)
        self._fill()

    def _place_failed(self, failure):
        self.placing = None
        if not failure.check(defer.CancelledError):
            self._fail(failure.value)

    def _submit(self, entry, retry=False):
        """Send the next batch to C{entry} (a free server), or give it back when there is nothing to send."""
        if retry and self.retry_queue and self.failure is None and not self.closed:
            self._resubmit(entry)
            return
        size = self.sizer.size
        if self.total is not None:
            # Near the end, spread what is left over the servers (down to
            # batches still worth their round trip).
            servers = max(1, len(self.scheduler.servers_now(self.events)))
            spread = -(-(self.total - self.next_index) // servers)
            size = max(1, min(size, max(spread, self.sizer.smallest_worth_sending())))
        if not self.collect:
            size = min(size, max(1, self._limit() - self._in_flight()))
        try:
            batch = list(itertools.islice(self.items, size))
        except Exception as e:  # the input itself failed
            self.scheduler.task_done(entry, True)
            self._fail(e)
            return
        # Items that are not tuples travel as they are, one argument each (no
        # tuple per item to make, pickle and unpickle), unless the group is
        # kept for retries or status (which take argument tuples).
        single = self.options is None and self.comp.status_task is None and not _any_tuple(batch)
        if not single:
            batch = [_as_args(item) for item in batch]
        if len(batch) < size:
            self.exhausted = True
        if not batch or self.failure is not None or self.closed:
            self.scheduler.task_done(entry, True)
            self._wake()
            self._check_done()
            return
        try:
            serialize.register_types_of(batch if single else itertools.chain.from_iterable(batch))
            calls = serialize.dumps((self.ref, batch, single), "arguments of %s" % (self.name,))
        except PicklingError as e:
            self.scheduler.task_done(entry, True)
            self._fail(e)
            return
        first = self.next_index
        self.next_index += len(batch)
        tid = self.runtime.next_remote_tids(len(batch))
        infos = self._created(entry, tid, batch) if self.comp.status_task is not None else None
        if self.options is None:
            group = RemoteGroup(self, entry, tid, len(batch), first, infos)
        else:
            group = RemoteGroup(self, entry, tid, len(batch), first, infos, calls=batch)
        self.counts.tasks_started += len(batch)
        self._send_group(group, calls)

    def _send_group(self, group, calls):
        self.groups[group.tid] = group
        self.runtime.send_group(group.location, group, calls, self.code)
        if self.options is not None and self.options.timeout is not None:
            group.watch = self.reactor.callLater(self.options.timeout, self._group_expired, group)

    def _created(self, entry, tid, batch, status=Status.TaskCreated):
        """TaskCreated (or TaskRetried) for each task of a batch (only when someone listens)."""
        infos, now = [], time.time()
        for i, args in enumerate(batch):
            rtask = RemoteTask(entry.location, tid + i, self.name)
            info = TaskInfo(rtask, args, {}, now)
            infos.append(info)
            self.comp._status(status, info)
        return infos

    # -- outcomes -----------------------------------------------------------------

    def _outcomes(self, group, start, values, bad):
        if group.tid not in self.groups:
            return
        again = False
        n = len(values)
        if self.options is None:
            first = group.first + start
            self.counts.tasks_ended += n
            if self.collect and not bad and group.infos is None:
                self._collect(first, values)  # the common case: no outcome per task
            else:
                for i in range(n):
                    outcome = group_outcome(values, bad, i)
                    self._one(first + i, outcome)
                    if group.infos is not None:
                        self._finished_status(group.infos[start + i], outcome)
            if self.progress is not None:
                self.progress.update(n)
        else:
            again = self._screened(group, start, values, bad)
        group.received = max(group.received, start + n)
        if group.received >= group.count:
            self._group_done(group)
        elif group.watch is not None and not group.timed_out:
            group.watch.reset(self.options.timeout)  # it goes on: the deadline is for the next outcome
        if again:
            self._fill()
        self._wake()
        self._check_done()

    def _group_done(self, group):
        del self.groups[group.tid]
        self.runtime.remote_groups.pop(group.tid, None)
        self.scheduler.task_done(group.entry, True)
        if group.watch is not None:
            if group.watch.active():
                group.watch.cancel()
            group.watch = None
        group.calls = None
        if not group.faulty:
            self.sizer.observe(group.count, time.monotonic() - group.sent_at, group.ran, group.first_ran)
        self._fill()

    def _collect(self, first, values):
        """The results of tasks C{first}... that all succeeded (a C{run_results})."""
        results = self.results
        end = first + len(values)
        if len(results) < end:
            results.extend([None] * (end - len(results)))
        results[first:end] = values

    def _one(self, index, outcome):
        if outcome[0] != OK:
            self.counts.ended_badly(outcome[0])
            if self.failure is None:
                self._fail(outcome_result(outcome).value)
        if self.collect:
            if outcome[0] == OK:
                results = self.results
                if index == len(results):
                    results.append(outcome[1])
                else:
                    if index > len(results):
                        results.extend([None] * (index - len(results) + 1))
                    results[index] = outcome[1]
        elif self.ordered:
            self.pending[index] = outcome
        else:
            self.ready.append(outcome)

    def _finished_status(self, info, outcome):
        info.end_time = time.time()
        if outcome[0] == OK:
            info.result = outcome[1]
        else:
            info.exception = outcome_result(outcome, info.task).value
        self.comp._status(Status.TaskFinished, info)

    def _fail(self, exc):
        if self.failure is None:
            self.failure = exc
        self.close()
        self._wake()
        self._check_done()

    def _end_progress(self):
        progress, self.progress = self.progress, None
        if progress is not None:
            progress.close()

    def close(self):
        """Stop: no more input is read; tasks of this map still running are terminated."""
        if self.closed:
            return
        self.closed = True
        self.retry_queue.clear()
        self._stop_probe()
        self._end_progress()
        if self.placing is not None:
            placing, self.placing = self.placing, None
            placing.cancel()
        for group in list(self.groups.values()):
            self.runtime.terminate_group(group).addErrback(lambda f: None)

    def aclose(self):
        """The async-generator way to stop early (C{async for} ... C{break} in a context)."""
        self.close()
        return defer.succeed(None)


def run_results(comp, fn, iterable, options=None, progress=False):
    """The list of C{fn}'s results over C{iterable}, in input order (the first failure errbacks)."""
    try:
        run = MapRun(comp, fn, iterable, collect=True, options=options, progress=progress)
    except Exception:
        return defer.fail()
    return run.result()

