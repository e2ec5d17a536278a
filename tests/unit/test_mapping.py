"""
How a map sizes its batches (dispycos.client.mapping and groups), in
memory: the real MapRun and placement on stand-in servers, a Clock, no
connection.
"""

import itertools
import threading

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock

from dispycos.client.groups import FIRST_BATCH, OVERHEAD_WINDOW, PROBE_SECONDS, BatchSizer
from dispycos.client.mapping import MapRun
from dispycos.errors import RemoteTaskError
from dispycos.metrics import Counts
from dispycos.peer.outcomes import (ERROR, OK, TERMINATED, decode_group_outcomes, encode_group_outcomes,
                                    error_outcome, group_outcome)

from .placefakes import Placer


class FakeRuntime:
    """What a map asks of the client's runtime: ids, and the groups it sends (kept, in order)."""

    def __init__(self):
        self.sent = []
        self.remote_groups = {}
        self._tids = itertools.count(1)

    def next_remote_tids(self, n):
        first = next(self._tids)
        self._tids = itertools.count(first + n)
        return first

    def send_group(self, location, group, calls, code=None):
        self.remote_groups[group.tid] = group
        self.sent.append(group)

    def terminate_group(self, group, grace=None):
        return defer.succeed(None)


class FakeComputation:
    status_task = None

    def __init__(self, servers):
        self.reactor = Clock()
        self._scheduler = Placer(servers)
        self._events = self._scheduler.active
        self._counts = Counts()
        self.runtime = FakeRuntime()

    def _function_ref(self, fn):
        return fn.__name__, None

    def _takes_retries(self):
        return True


def noop(x):
    return x


def cluster(nodes, servers):
    return FakeComputation([("10.0.0.%d" % n, servers) for n in range(1, nodes + 1)])


def finish(group, per_task=2e-6):
    """Every outcome of C{group} comes back, its tasks having run C{per_task} seconds each."""
    group.outcomes(0, [group.index(i) for i in range(group.count)], {}, per_task * group.count)


def finish_all(comp, run):
    for _ in range(10000):  # bounded: each round ends at least one group
        out = [g for g in comp.runtime.sent if g.tid in run.groups]
        if not out:
            return
        for group in out:
            finish(group)
    raise AssertionError("the map did not end")


def test_the_first_batch_measures_the_tasks_and_the_rest_wait_for_it():
    comp = cluster(8, 4)
    run = MapRun(comp, noop, range(20000), collect=True)
    d = run.result()
    sent = comp.runtime.sent
    # 32 servers: the first batch may hold a server's share (625), at most FIRST_BATCH.
    assert [g.count for g in sent] == [FIRST_BATCH]
    finish(sent[0])
    # Sized from what it measured: larger batches, on several servers at once.
    assert len(sent) > 2 and min(g.count for g in sent[1:-1]) > FIRST_BATCH
    finish_all(comp, run)
    assert d.called and d.result == list(range(20000))
    assert not comp.reactor.getDelayedCalls()  # the probe's timer is gone too


def test_unmeasured_batches_hold_a_32nd_of_a_servers_share():
    comp = cluster(8, 4)
    run = MapRun(comp, noop, range(20000), collect=True)
    d = run.result()
    sent = comp.runtime.sent
    assert len(sent) == 1
    comp.reactor.advance(PROBE_SECONDS)  # the first batch is still out: long tasks, as far as the map knows
    assert len(sent) == 32
    assert {g.count for g in sent[1:]} == {20000 // (32 * 32)}
    assert len({g.location for g in sent}) == 32
    finish_all(comp, run)
    assert d.called and d.result == list(range(20000))


def test_the_first_batch_is_at_most_a_servers_share_on_many_servers():
    comp = cluster(25, 4)  # 100 servers: a share of 2,000 items is 20
    run = MapRun(comp, noop, range(2000), collect=True)
    d = run.result()
    sent = comp.runtime.sent
    assert [g.count for g in sent] == [20]
    comp.reactor.advance(PROBE_SECONDS)
    assert len(sent) == 100 and {g.count for g in sent[1:]} == {1}
    finish_all(comp, run)
    assert d.called and d.result == list(range(2000))


def test_an_input_without_a_length_starts_with_single_tasks():
    comp = cluster(1, 2)
    run = MapRun(comp, noop, iter(range(500)), collect=True)
    d = run.result()
    sent = comp.runtime.sent
    assert [g.count for g in sent] == [1]
    comp.reactor.advance(PROBE_SECONDS)
    assert [g.count for g in sent] == [1, 1]
    finish_all(comp, run)
    assert d.called and d.result == list(range(500))


# -- the sizer --------------------------------------------------------------------


def test_the_sizer_grows_towards_the_target_at_most_64_times_a_batch():
    sizer = BatchSizer(target=0.05)
    sizer.size = 10
    sizer.observe(10, 0.0011, 0.001)  # 0.1 ms a task: 500 make 50 ms
    assert sizer.size == 500
    sizer.observe(500, 0.0002, 0.0001)  # faster than it looked: 250,000 would do, 64 times is the most
    assert sizer.size == 500 * 64


def test_the_sizer_halves_a_batch_that_held_its_server_too_long():
    sizer = BatchSizer(target=0.05, longest=0.5)
    sizer.size = 100
    sizer.observe(100, 0.9, 0.8)
    assert sizer.size == 50


def test_a_batch_whose_outcomes_waited_does_not_make_every_batch_look_costly():
    sizer = BatchSizer()
    sizer.size = 64
    sizer.observe(64, 0.0012, 0.0002)  # 1 ms besides its tasks
    assert sizer.overhead == pytest.approx(0.001)
    sizer.observe(4096, 0.026, 0.006)  # its outcomes waited 20 ms for a busy client
    assert sizer.overhead == pytest.approx(0.001)
    # The end of a map is spread over the servers in batches of 4 ms of work (4 x 1 ms), not 80.
    assert sizer.smallest_worth_sending() == pytest.approx(4 * 0.001 / (0.006 / 4096), rel=0.01)
    for _ in range(OVERHEAD_WINDOW):  # ... and when every batch waits, that is what a batch costs
        sizer.observe(4096, 0.026, 0.006)
    assert sizer.overhead == pytest.approx(0.02)


# -- a group's outcomes ----------------------------------------------------------


def test_a_groups_outcomes_travel_as_its_results_and_those_that_did_not_succeed():
    blob = encode_group_outcomes([1, None, 3, None], {1: error_outcome(ValueError("bad 1")), 3: (TERMINATED, None)})
    values, bad = decode_group_outcomes(blob)
    assert values == [1, None, 3, None] and set(bad) == {1, 3}
    kind, (name, text, _tb, exc) = bad[1]
    assert (kind, name, text) == (ERROR, "ValueError", "bad 1") and isinstance(exc, ValueError)
    assert [group_outcome(values, bad, i)[0] for i in range(4)] == [OK, ERROR, OK, TERMINATED]


def test_a_result_that_cannot_be_pickled_becomes_that_tasks_error():
    values, bad = decode_group_outcomes(encode_group_outcomes([1, threading.Lock(), 3], {}))
    assert values == [1, None, 3] and list(bad) == [1] and bad[1][0] == ERROR


def test_a_task_that_failed_fails_run_results_and_the_rest_are_terminated():
    comp = cluster(1, 2)
    run = MapRun(comp, noop, range(1000), collect=True)
    d = run.result()
    first = comp.runtime.sent[0]
    values = [first.index(i) for i in range(first.count)]
    values[5] = None
    first.outcomes(0, values, {5: error_outcome(ZeroDivisionError("boom"))}, 1e-6)
    assert d.called
    failure = d.result
    d.addErrback(lambda f: None)
    assert isinstance(failure.value, RemoteTaskError) and "boom" in str(failure.value)
    assert run.closed and comp._counts.tasks_failed == 1


def test_what_a_task_takes_is_measured_without_the_first_of_its_batch():
    sizer = BatchSizer(target=0.05)
    sizer.size = 64
    # A fresh server: its first task took 1 ms (page copies), the other 63 took 63 us.
    sizer.observe(64, 0.0015, 0.001063, first=0.001)
    assert sizer.per_task == pytest.approx(1e-6)
    assert sizer.overhead == pytest.approx(0.0015 - 64e-6)  # the first task's extra cost counts as the batch's
    assert sizer.size == 64 * 64  # not the 3,000 that 16.6 us a task would have made
    plain = BatchSizer(target=0.05)
    plain.size = 64
    plain.observe(64, 0.0015, 0.001063)
    assert plain.per_task == pytest.approx(0.001063 / 64)
