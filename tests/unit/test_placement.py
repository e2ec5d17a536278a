"""
The scheduler's placement of tasks (dispycos.scheduler.placement), in
memory: real ServerEntry records on stand-in nodes, no connection.
"""

import pytest
from twisted.internet import defer

from dispycos.errors import ComputationClosed, NoServerError
from dispycos.status import Location

from .placefakes import Placer


def placed(result):
    assert not isinstance(result, defer.Deferred), result
    return result


def test_cpu_tasks_wait_first_come_first_served_for_a_server_without_one():
    s = Placer([("10.0.0.1", 2)])
    a, b = placed(s.place(s.active, True)), placed(s.place(s.active, True))
    assert {a, b} == set(s.servers) and a.cpu_busy and b.cpu_busy
    third, fourth = s.place(s.active, True), s.place(s.active, True)
    assert isinstance(third, defer.Deferred) and not third.called and not fourth.called
    got = []
    third.addCallback(got.append)
    fourth.addCallback(got.append)
    s.task_done(b, True)
    assert got == [b]  # the first waiting, on the server that freed up
    s.task_done(a, True)
    assert got == [b, a]
    assert (a.tasks, b.tasks, a.tasks_done, b.tasks_done) == (1, 1, 1, 1)


def test_other_tasks_go_at_once_to_the_least_loaded_server():
    s = Placer([("10.0.0.1", 2)])
    cpu = placed(s.place(s.active, True))
    placed(s.place(s.active, True))
    io = [placed(s.place(s.active, False)) for _ in range(4)]
    assert [e.tasks for e in s.servers] == [3, 3] and io[0] is not io[1]
    assert cpu.cpu_busy


def test_cpu_tasks_spread_over_nodes_before_doubling_up():
    s = Placer([("10.0.0.1", 2), ("10.0.0.2", 2)])
    first, second = placed(s.place(s.active, True)), placed(s.place(s.active, True))
    assert first.node is not second.node  # the least busy node first


def test_where_restricts_and_an_unknown_place_fails():
    s = Placer([("10.0.0.1", 1), ("10.0.0.2", 1)])
    for where in ("10.0.0.2", "node-10.0.0.2", "10.0.0.2:10001", Location("10.0.0.2", 10001)):
        entry = placed(s.place(s.active, False, where=where))
        assert entry.node.addr == "10.0.0.2"
    failed = []
    s.place(s.active, False, where="10.9.9.9").addErrback(failed.append)
    assert failed and failed[0].check(NoServerError)


def test_avoid_steers_away_while_another_server_exists():
    s = Placer([("10.0.0.1", 2)])
    first = s.servers[0]
    again = placed(s.place(s.active, True, avoid={first.location}))
    assert again is s.servers[1]
    s.task_done(again, True)
    only = Placer([("10.0.0.1", 1)])
    assert placed(only.place(only.active, True, avoid={only.servers[0].location})) is only.servers[0]


def test_suspended_servers_and_nodes_take_nothing():
    s = Placer([("10.0.0.1", 2)])
    s.servers[0].suspended = True
    assert placed(s.place(s.active, False)) is s.servers[1]
    s.servers[1].node.suspended = True
    d = s.place(s.active, False)
    assert isinstance(d, defer.Deferred) and not d.called and s.no_servers == 1
    s.servers[1].node.suspended = False
    s._dispatch()
    assert d.called


def test_a_cancelled_wait_leaves_the_queue_and_an_inactive_computation_is_refused():
    s = Placer([("10.0.0.1", 1)])
    busy = placed(s.place(s.active, True))
    d = s.place(s.active, True)
    d.addErrback(lambda f: f.trap(defer.CancelledError))
    d.cancel()
    assert not s.waiting_cpu
    s.task_done(busy, True)
    assert not busy.cpu_busy  # nobody was waiting any more
    refused = []
    s.place(object(), True).addErrback(refused.append)
    assert refused and refused[0].check(ComputationClosed)


@pytest.mark.parametrize("n", [50])
def test_many_cpu_tasks_all_run_once_in_order(n):
    s = Placer([("10.0.0.1", 3), ("10.0.0.2", 1)])
    order = []
    pending = [s.place(s.active, True) for _ in range(n)]
    running = []
    for i, r in enumerate(pending):
        if isinstance(r, defer.Deferred):
            r.addCallback(lambda e, i=i: (order.append(i), running.append(e)))
        else:
            order.append(i)
            running.append(r)
    for _ in range(n):  # bounded: one task ends per step
        s.task_done(running.pop(0), True)
    assert order == list(range(n)) and not s.waiting_cpu
    assert sum(e.tasks_done for e in s.servers) == n
