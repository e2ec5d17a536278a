# -*- test-case-name: tests.test_engine -*-
"""
The groups a map sends: L{BatchSizer} sizes them from measured durations (as
joblib's auto batching does), L{RemoteGroup} is the client's record of one
group of tasks sent to a server.
"""

import collections
import time


#: A group should take about this long on its server (seconds): long enough
#: that the round trip between groups is a small part, short enough to
#: balance the last groups over the servers.
TARGET_SECONDS = 0.05


#: ... and never longer than this.
MAX_SECONDS = 0.5


#: How many batches' costs the cost of the next is estimated from.
OVERHEAD_WINDOW = 8


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
    tasks are not mostly overhead. That cost is the least of the last
    L{OVERHEAD_WINDOW} batches': a batch whose outcomes waited for a busy
    client (a collection of its heap, the outcomes of other batches) says
    how busy the client was, not what one more batch costs.
    """

    def __init__(self, target=TARGET_SECONDS, longest=MAX_SECONDS, largest=MAX_BATCH):
        self.size = 1
        self.target = target
        self.longest = longest
        self.largest = largest
        #: Seconds per task (on its server) of the last batch, or None.
        self.per_task = None
        #: Seconds a batch costs besides its tasks (the least of the last few).
        self.overhead = 0.0
        self._overheads = collections.deque(maxlen=OVERHEAD_WINDOW)

    #: The size of the batches that go out before any is measured (see L{unmeasured}).
    _unmeasured = 1

    def start(self, total, servers):
        """
        Size the first batches of a map of C{total} items on C{servers}
        servers. Many items need not go as single tasks (each server would
        first take a round trip per task). The first batch measures the
        tasks: it may hold a server's share of the input (and 1/32 of it),
        so the first task a cold server runs does not make them all look
        slow. The batches that go out unmeasured hold 1/32 of a share.
        """
        servers = max(1, servers)
        self._unmeasured = max(1, min(total // (32 * servers), FIRST_BATCH))
        self.size = max(1, min(total // max(32, servers), FIRST_BATCH))

    def unmeasured(self):
        """The first batch took too long to wait for: the next go out unmeasured (long tasks, balanced)."""
        if self.per_task is None:
            self.size = min(self.size, self._unmeasured)

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

    def observe(self, count, seconds, ran=None, first=None):
        """
        A batch of C{count} tasks took C{seconds} from sending to its last
        outcome, its tasks C{ran} seconds on their server (None: unknown),
        the first of them C{first}. What a task takes is measured without
        the first, which also pays for what runs once (a fresh server's
        first task costs about a millisecond of page copies; a function may
        import on its first call).
        """
        count = max(count, 1)
        if ran is None or ran > seconds:
            ran = seconds
        if first is not None and count > 1 and 0 <= first < ran:
            ran = (ran - first) * count / (count - 1)  # as if every task took what the others took
        self.per_task = ran / count
        self._overheads.append(seconds - ran)
        self.overhead = min(self._overheads)
        if count < self.size // 2:
            return  # a short last batch says little
        target = self._target()
        if ran < target:
            ideal = int(count * target / max(ran, 1e-6))
            self.size = max(1, min(64 * self.size, ideal, self.largest))
        elif ran > self.longest and self.size > 1:
            self.size = max(1, self.size // 2)


class RemoteGroup:
    """
    The client's record of a group of a map's tasks sent to one server: the
    map's items C{first}... (or, for a group of tasks sent again, the items
    C{indices}); with retries or a timeout, their C{calls} and C{attempts}.
    """

    __slots__ = ("mapper", "entry", "location", "tid", "count", "first", "received", "sent_at", "infos", "ran",
                 "calls", "indices", "attempts", "faulty", "timed_out", "lost_seen", "watch", "first_ran")

    def __init__(self, mapper, entry, tid, count, first, infos=None, calls=None, indices=None, attempts=None):
        self.mapper = mapper
        self.entry = entry
        self.location = entry.location
        self.tid = tid
        self.count = count
        self.first = first
        self.received = 0
        self.sent_at = time.monotonic()
        self.infos = infos
        #: Seconds its tasks held their server so far, and its first task (as the server reports).
        self.ran = None
        self.first_ran = None
        self.calls = calls
        self.indices = indices
        self.attempts = attempts
        #: Lost or timed out (its timings say nothing of its tasks).
        self.faulty = False
        self.timed_out = False
        #: Whether the first task it lost (the one that was running) was seen.
        self.lost_seen = False
        #: Its timeout (no outcome for that long), then its escalation.
        self.watch = None

    def index(self, pos):
        """The map's index of the group's task C{pos}."""
        indices = self.indices
        return self.first + pos if indices is None else indices[pos]

    def outcomes(self, start, values, bad, seconds=None, first=None):
        """
        Outcomes of its tasks C{start}...: their results C{values} (None
        where one did not succeed) and C{bad} C{{position: outcome}} of those;
        C{seconds} its tasks ran so far, C{first} its first task.
        """
        if seconds is not None:
            self.ran = seconds
        if first is not None:
            self.first_ran = first
        self.mapper._outcomes(self, start, values, bad)

    def abandoned(self, outcome):
        """Its server or node was lost: what did not come back is abandoned."""
        left = self.count - self.received
        if left > 0:
            self.faulty = True
            self.mapper._outcomes(self, self.received, [None] * left, dict.fromkeys(range(left), outcome))
