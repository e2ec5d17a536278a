# -*- test-case-name: tests.test_retries -*-
"""
The retries and timeouts of a map (L{MapRetries}, a part of
L{dispycos.client.mapping.MapRun}): outcomes of lost or failed tasks held
back and sent again in new batches, and batches that report nothing for
their timeout terminated (and their server restarted when even that goes
unanswered).
"""

from dispycos import serialize
from dispycos.client.attempts import ESCALATE_AFTER, TERMINATE_GRACE
from dispycos.client.groups import RemoteGroup
from dispycos.errors import PicklingError
from dispycos.peer.outcomes import ABANDONED, OK, TERMINATED, TIMEOUT, group_outcome
from dispycos.status import Status


class MapRetries:
    """
    What a L{dispycos.client.mapping.MapRun} with options (retries, a
    timeout) does besides sending and taking outcomes; it has the map's
    C{options}, C{retry_queue}, C{groups}, C{sizer} and the rest.
    """

    def _resubmit(self, entry):
        """Send tasks of lost groups again, as a group of their own, to C{entry}."""
        avoid, items = self.retry_queue[0]
        size = max(1, self.sizer.size)
        if len(items) > size:
            self.retry_queue[0] = (avoid, items[size:])
            items = items[:size]
        else:
            self.retry_queue.popleft()
        indices = [index for index, _, _ in items]
        batch = [args for _, args, _ in items]
        try:
            calls = serialize.dumps((self.ref, batch, False), "arguments of %s" % (self.name,))
        except PicklingError as e:  # (they pickled before)
            self.scheduler.task_done(entry, True)
            self._fail(e)
            return
        tid = self.runtime.next_remote_tids(len(batch))
        infos = (self._created(entry, tid, batch, Status.TaskRetried) if self.comp.status_task is not None
                 else None)
        group = RemoteGroup(self, entry, tid, len(batch), None, infos, calls=batch, indices=indices,
                            attempts=[n for _, _, n in items])
        self._send_group(group, calls)

    def _screened(self, group, start, values, bad):
        """
        Outcomes of a map with options: those of lost or failed tasks that
        run again are held back (L{_screen}). True when some run again.
        """
        again = False
        taken = 0
        for i in range(len(values)):
            outcome = group_outcome(values, bad, i)
            pos = start + i
            if outcome[0] != OK:
                outcome = self._screen(group, pos, outcome)
                if outcome is None:
                    again = True
                    continue
            self.counts.tasks_ended += 1
            self._one(group.index(pos), outcome)
            taken += 1
            if group.infos is not None:
                self._finished_status(group.infos[pos], outcome)
        if self.progress is not None:
            self.progress.update(taken)
        return again

    def _screen(self, group, pos, outcome):
        """
        The outcome of task C{pos} of C{group} that did not succeed, or None
        when it runs again. Of the tasks a group lost (with its server, or
        terminated for its timeout) the first was the one running: it counts
        an attempt (its outcome is L{TIMEOUT} when the group timed out); the
        ones behind it never ran, or their outcomes went with the server:
        they go again as they were.
        """
        kind = outcome[0]
        if kind == ABANDONED or (group.timed_out and kind == TERMINATED):
            if group.lost_seen:
                self._again(group, pos, 0)
                return None
            group.lost_seen = True
            if group.timed_out:
                outcome = (TIMEOUT, self.options.timeout)
        attempts = group.attempts[pos] if group.attempts is not None else 0
        options = self.options
        if attempts < options.retries and options.retries_outcome(outcome) and self.comp._takes_retries():
            self._again(group, pos, 1)
            return None
        return outcome

    def _again(self, group, pos, attempt):
        """Queue task C{pos} of C{group} to be sent again (C{attempt}: 1 when that counts as a retry)."""
        if self.failure is not None or self.closed:
            return
        attempts = (group.attempts[pos] if group.attempts is not None else 0) + attempt
        self.counts.tasks_retried += attempt
        item = (group.index(pos), group.calls[pos], attempts)
        avoid = frozenset((group.location,))
        queue = self.retry_queue
        if queue and queue[-1][0] == avoid:
            queue[-1][1].append(item)
        else:
            queue.append((avoid, [item]))

    def _group_expired(self, group):
        """No outcome of C{group} for C{timeout} seconds: terminate it (its server ends itself if it must)."""
        group.watch = None
        if group.tid not in self.groups:
            return
        group.timed_out = group.faulty = True
        self.runtime.terminate_group(group, TERMINATE_GRACE).addErrback(lambda f: None)
        group.watch = self.reactor.callLater(TERMINATE_GRACE + ESCALATE_AFTER, self._group_stuck, group)

    def _group_stuck(self, group):
        """The terminated group did not even answer: its server's reactor is stuck; restart the server."""
        group.watch = None
        if group.tid not in self.groups:
            return
        self.log.warn("map batch {t} did not end after its timeout: restarting server {loc}", t=group.tid,
                      loc=group.location)
        self.comp._control("close_server", group.location, terminate=True, restart=True).addErrback(
            lambda f: self.log.warn("restarting server {loc}: {e}", loc=group.location, e=f.getErrorMessage()))
