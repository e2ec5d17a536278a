# -*- test-case-name: tests.test_core -*-
"""
Placement of tasks on a computation's servers (L{Placing}, a part of L{dispycos.scheduler.core.Scheduler}).
"""

from collections import deque

from twisted.internet import defer

from dispycos.errors import ComputationClosed, NoServerError
from dispycos.status import Location


class _Placement:
    """A task waiting for a server: C{where} it may go, and servers to C{avoid} while another exists."""

    __slots__ = ("computation", "cpu", "where", "deferred", "avoid")

    def __init__(self, computation, cpu, where, deferred, avoid=None):
        self.computation = computation
        self.cpu = cpu
        self.where = where
        self.deferred = deferred
        self.avoid = avoid


class Placing:
    """
    How L{Scheduler} places tasks: a CPU task waits FIFO for a server without
    one, other tasks go at once; C{where} restricts and C{avoid} steers away
    from servers while another exists.
    """

    def place(self, comp, cpu, where=None, avoid=None):
        """
        The L{ServerEntry} to run a task on, booked for it: at once when one
        is free (and no task waits ahead of it), else a Deferred firing with
        it (C{cancel()} takes it off the queue). A CPU task needs a server
        without a CPU task (waiting, first come first served, while there is
        none); least loaded first. C{avoid}: locations not to use while the
        computation has another server (a retried task's earlier ones); such
        a task goes before the tasks waiting their first turn.
        """
        if comp is not self.active:
            return defer.fail(ComputationClosed("computation is not active"))
        if where is not None and not self._known(where):
            return defer.fail(NoServerError("no server at %s" % (where,)))
        queue = self.waiting_cpu if cpu and where is None and not avoid else self.waiting
        p = _Placement(comp, cpu, where, None, avoid or None)
        if not queue or queue is self.waiting:
            entry = self._pick(p)
            if entry is not None:
                self._book(p, entry)
                return entry
        d = p.deferred = defer.Deferred(lambda d: self._unqueue(p))
        queue.append(p)
        self._dispatch()
        if not d.called:
            self._fail_if_no_servers()
        return d

    def _unqueue(self, p):
        """A waiting placement was cancelled: it leaves the queue."""
        for queue in (self.waiting, self.waiting_cpu):
            try:
                queue.remove(p)
            except ValueError:
                pass

    def servers_now(self, comp):
        """The servers of C{comp} that take tasks (a list, at once)."""
        if comp is not self.active:
            return []
        return [e for e in self.servers if e.ready]

    def _known(self, where):
        for entry in self.servers:
            if self._matches(entry, where):
                return True
        return False

    @staticmethod
    def _matches(entry, where):
        if where is None:
            return True
        if isinstance(where, Location):
            return entry.location == where
        where = str(where)
        info = entry.node.info
        return where in (entry.node.location.addr, str(entry.location), info.name if info else None)

    def _usable(self, entry, where):
        return (entry.ready and not entry.suspended and not entry.node.suspended
                and (where is None or self._matches(entry, where)))

    def _pick(self, p):
        best, best_key = None, None
        cpu = p.cpu
        avoid = p.avoid
        if avoid and not any(e.location not in avoid and self._usable(e, p.where) for e in self.servers):
            avoid = None  # no other server: the same one again
        busy = {}  # node -> its servers running a CPU task
        for entry in self.servers:
            if entry.cpu_busy:
                busy[entry.node] = busy.get(entry.node, 0) + 1
        for entry in self.servers:
            if (not entry.ready or entry.suspended or (cpu and entry.cpu_busy) or entry.node.suspended
                    or (p.where is not None and not self._matches(entry, p.where))
                    or (avoid is not None and entry.location in avoid)):
                continue
            node = entry.node
            key = (busy.get(node, 0) / max(len(node.servers), 1), entry.tasks)
            if best is None or key < best_key:
                best, best_key = entry, key
        return best

    def _take_waiting(self):
        waiting = list(self.waiting) + list(self.waiting_cpu)
        self.waiting, self.waiting_cpu = deque(), deque()
        return waiting

    @staticmethod
    def _book(p, entry):
        if p.cpu:
            entry.cpu_busy = True
        entry.tasks += 1
        entry.tasks_submitted += 1

    def _assign(self, p, entry):
        self._book(p, entry)
        p.deferred.callback(entry)

    def _dispatch(self):
        if self.waiting:
            remaining = deque()
            while self.waiting:
                p = self.waiting.popleft()
                if p.deferred.called:
                    continue
                entry = self._pick(p)
                if entry is None:
                    remaining.append(p)
                else:
                    self._assign(p, entry)
            self.waiting = remaining
        # CPU tasks for any server: serve the head while a server is free, and
        # stop at the first that must wait (the rest wait behind it).
        queue = self.waiting_cpu
        while queue:
            p = queue[0]
            if p.deferred.called:
                queue.popleft()
                continue
            entry = self._pick(p)
            if entry is None:
                break
            queue.popleft()
            self._assign(p, entry)

    def task_done(self, entry, cpu):
        """A task placed on C{entry} ended."""
        entry.tasks -= 1
        entry.tasks_done += 1
        if cpu:
            entry.cpu_busy = False
        self._dispatch()
