# -*- test-case-name: tests.test_engine -*-
"""
Maps over many items: C{Computation.map} (an async iterator) and
C{Computation.run_results}.

The input is read lazily; items go to servers in batches (groups) that a
server runs one after another as one CPU task, sized from the durations
measured so far as joblib's auto batching does; at most C{window} tasks are
submitted and not yet yielded, so a million-item map runs in bounded memory.
"""

import collections
import itertools
import time

from twisted.internet import defer
from twisted.logger import Logger

from . import serialize
from .errors import PicklingError
from .status import Status, TaskInfo
from .outcomes import OK, outcome_result
from .tasks import RemoteTask

#: A group should take about this long on its server (seconds): long enough
#: that the round trip between groups is a small part, short enough to
#: balance the last groups over the servers.
TARGET_SECONDS = 0.05
#: ... and never longer than this.
MAX_SECONDS = 0.5
#: Most tasks in one group.
MAX_BATCH = 100000
#: Seconds the first batch of a map may take before the others go out unmeasured.
PROBE_SECONDS = 0.01
#: Largest first batch of a map whose input has a length.
FIRST_BATCH = 64
#: Largest pickled group (arguments) sent at once.
MAX_GROUP_BYTES = 4 * 1024 * 1024


class BatchSizer:
    """
    Batch sizes from measured durations, as joblib's auto batching: start
    small, grow while a batch holds its server for less than the target time
    (towards the size that would take that long, at most 64 times at once),
    halve when one takes more than L{MAX_SECONDS}. A batch's time is what
    its server reports it ran; the rest of the time from sending it to its
    last outcome is the cost of a batch (round trip, (un)pickling, waiting for
    a CPU), and the target grows to four times that, so that batches of short
    tasks are not mostly overhead.
    """

    def __init__(self, target=TARGET_SECONDS, longest=MAX_SECONDS, largest=MAX_BATCH):
        self.size = 1
        self.target = target
        self.longest = longest
        self.largest = largest
        #: Seconds per task (on its server) of the last batch, or None.
        self.per_task = None
        #: Seconds a batch costs besides its tasks (the largest seen lately).
        self.overhead = 0.0

    def _target(self):
        return max(self.target, 4 * self.overhead)

    def smallest_worth_sending(self):
        """
        The fewest tasks a batch should hold at the end of a map: spreading
        the last tasks over every server only pays for batches that take
        longer than what a batch costs.
        """
        if self.per_task is None:
            return 1
        return max(1, int(4 * self.overhead / max(self.per_task, 1e-7)))

    def observe(self, count, seconds, ran=None):
        """
        A batch of C{count} tasks took C{seconds} from sending to its last
        outcome, its tasks C{ran} seconds on their server (None: unknown).
        """
        count = max(count, 1)
        if ran is None or ran > seconds:
            ran = seconds
        self.per_task = ran / count
        self.overhead = max(self.overhead * 0.75, seconds - ran)
        if count < self.size // 2:
            return  # a short last batch says little
        target = self._target()
        if ran < target:
            ideal = int(count * target / max(ran, 1e-6))
            self.size = max(1, min(64 * self.size, ideal, self.largest))
        elif ran > self.longest and self.size > 1:
            self.size = max(1, self.size // 2)


class RemoteGroup:
    """The client's record of a group of a map's tasks sent to one server."""

    __slots__ = ("mapper", "entry", "location", "tid", "count", "first", "received", "sent_at", "infos", "ran")

    def __init__(self, mapper, entry, tid, count, first, infos=None):
        self.mapper = mapper
        self.entry = entry
        self.location = entry.location
        self.tid = tid
        self.count = count
        self.first = first
        self.received = 0
        self.sent_at = time.monotonic()
        self.infos = infos
        #: Seconds its tasks held their server so far (as the server reports).
        self.ran = None

    def outcomes(self, start, outcomes, seconds=None):
        if seconds is not None:
            self.ran = seconds
        self.mapper._outcomes(self, start, outcomes)

    def abandoned(self, outcome):
        """Its server or node was lost: what did not come back is abandoned."""
        left = self.count - self.received
        if left > 0:
            self.mapper._outcomes(self, self.received, [outcome] * left)


def _as_args(item):
    return item if isinstance(item, tuple) else (item,)


class MapRun:
    """
    One map of C{fn} over C{iterable} on computation C{comp}: an async
    iterator of results (in input order when C{ordered}), or, with
    C{collect}, a Deferred of the list of all results (L{result}).
    """

    log = Logger()

    def __init__(self, comp, fn, iterable, ordered=True, window=None, collect=False):
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
            # Many items: the first batches need not be single tasks (each
            # server would first take a round trip per task).
            servers = max(1, len(self.scheduler.servers_now(comp._events)))
            self.sizer.size = max(1, min(self.total // (32 * servers), FIRST_BATCH))
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
        self._done = defer.Deferred() if collect else None
        self.reactor = comp.reactor
        self._probe_timer = None
        self._probe_over = False

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
            d.errback(StopAsyncIteration())

    def _next_outcome(self):
        if self.ordered:
            return self.pending.pop(self.yielded, None)
        return self.ready.popleft() if self.ready else None

    def _finished(self):
        if not self.exhausted or self.groups:
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
        self._fill()

    def _fill(self):
        """Ask for servers while there is input and room in the window."""
        while (self.placing is None and not self.exhausted and self.failure is None and not self.closed
               and (self.collect or self._in_flight() < self._limit()) and not self._probing()):
            try:
                placed = self.scheduler.place(self.events, True, None)
            except Exception as e:
                self._fail(e)
                return
            if isinstance(placed, defer.Deferred):
                self.placing = placed
                placed.addCallbacks(self._placed, self._place_failed)
                return
            self._submit(placed)

    def _placed(self, entry):
        self.placing = None
        self._submit(entry)
        self._fill()

    def _place_failed(self, failure):
        self.placing = None
        if not failure.check(defer.CancelledError):
            self._fail(failure.value)

    def _submit(self, entry):
        """Send the next batch to C{entry} (a free server), or give it back when there is nothing to send."""
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
            batch = [_as_args(item) for item in itertools.islice(self.items, size)]
        except Exception as e:  # the input itself failed
            self.scheduler.task_done(entry, True)
            self._fail(e)
            return
        if len(batch) < size:
            self.exhausted = True
        if not batch or self.failure is not None or self.closed:
            self.scheduler.task_done(entry, True)
            self._wake()
            self._check_done()
            return
        try:
            for args in batch:
                for a in args:
                    serialize.register_by_value(type(a))
            calls = serialize.dumps((self.ref, batch), "arguments of %s" % (self.name,))
        except PicklingError as e:
            self.scheduler.task_done(entry, True)
            self._fail(e)
            return
        first = self.next_index
        self.next_index += len(batch)
        tid = self.runtime.next_remote_tids(len(batch))
        infos = self._created(entry, tid, batch) if self.comp.status_task is not None else None
        group = RemoteGroup(self, entry, tid, len(batch), first, infos)
        self.groups[tid] = group
        self.counts.tasks_started += len(batch)
        self.runtime.send_group(entry.location, group, calls, self.code)

    def _created(self, entry, tid, batch):
        """TaskCreated for each task of a batch (only when someone listens)."""
        infos, now = [], time.time()
        for i, args in enumerate(batch):
            rtask = RemoteTask(entry.location, tid + i, self.name)
            info = TaskInfo(rtask, args, {}, now)
            infos.append(info)
            self.comp._status(Status.TaskCreated, info)
        return infos

    # -- outcomes -----------------------------------------------------------------

    def _outcomes(self, group, start, outcomes):
        if group.tid not in self.groups:
            return
        first = group.first + start
        self.counts.tasks_ended += len(outcomes)
        for i, outcome in enumerate(outcomes):
            self._one(first + i, outcome)
            if group.infos is not None:
                self._finished_status(group.infos[start + i], outcome)
        group.received = max(group.received, start + len(outcomes))
        if group.received >= group.count:
            del self.groups[group.tid]
            self.runtime.remote_groups.pop(group.tid, None)
            self.scheduler.task_done(group.entry, True)
            self.sizer.observe(group.count, time.monotonic() - group.sent_at, group.ran)
            self._fill()
        self._wake()
        self._check_done()

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

    def close(self):
        """Stop: no more input is read; tasks of this map still running are terminated."""
        if self.closed:
            return
        self.closed = True
        self._stop_probe()
        if self.placing is not None:
            placing, self.placing = self.placing, None
            placing.cancel()
        for group in list(self.groups.values()):
            self.runtime.terminate_group(group).addErrback(lambda f: None)

    def aclose(self):
        """The async-generator way to stop early (C{async for} ... C{break} in a context)."""
        self.close()
        return defer.succeed(None)


def run_results(comp, fn, iterable):
    """The list of C{fn}'s results over C{iterable}, in input order (the first failure errbacks)."""
    try:
        run = MapRun(comp, fn, iterable, collect=True)
    except Exception:
        return defer.fail()
    return run.result()

