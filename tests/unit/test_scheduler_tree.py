"""The private scheduler as a service tree, on a memory reactor (no sockets)."""

import pytest
from twisted.internet.testing import MemoryReactorClock

from dispycos.protocol.discovery import Discovery
from dispycos.scheduler.core import Scheduler
from dispycos.scheduler.links import NodeLink


@pytest.fixture
def scheduler():
    reactor = MemoryReactorClock()
    s = Scheduler(nodes=["127.0.0.1:9801", "127.0.0.2:9802"], secret="s3cret", reactor=reactor, discover=True)
    yield s
    if s.running:
        s.close()


def test_children_are_named_and_started_in_order(scheduler):
    assert scheduler.running
    names = [child.name for child in scheduler]
    assert names == ["discovery", "node 127.0.0.1:9801", "node 127.0.0.2:9802"]
    assert isinstance(scheduler.getServiceNamed("discovery"), Discovery)
    link = scheduler.getServiceNamed("node 127.0.0.2:9802")
    assert isinstance(link, NodeLink) and link.running and link.retrying
    assert link is scheduler.links[link.location]


def test_a_node_found_later_joins_the_tree_and_starts(scheduler):
    scheduler.add_node("127.0.0.3:9803", listed=False)
    link = scheduler.getServiceNamed("node 127.0.0.3:9803")
    assert link.running and link.state == "connecting"
    scheduler.add_node("127.0.0.3:9803", listed=False)  # known already: the same child
    assert [c.name for c in scheduler].count("node 127.0.0.3:9803") == 1


def test_close_stops_every_child_for_good(scheduler):
    links = list(scheduler.links.values())
    done = []
    scheduler.close().addCallback(done.append)
    assert done == [None]
    assert not scheduler.running
    assert not any(child.running for child in scheduler)
    assert all(not link.retrying for link in links)
    for link in links:
        link.connect()  # stopped for good: nothing starts again
        assert not link.retrying


def test_the_shared_schedulers_children_start_in_order_and_stop_before_it_closes(tmp_path):
    from dispycos.scheduler.shared import SchedulerService

    reactor = MemoryReactorClock()
    daemon = SchedulerService(reactor, hosts=["127.0.0.1"], tcp_port=0, secret="s3cret",
                              dest_path=str(tmp_path), udp_port=0)
    assert [child.name for child in daemon] == ["listener"]
    daemon.startService()
    try:
        assert daemon.running and daemon.scheduler is not None and daemon.scheduler.running
        listener = daemon.getServiceNamed("listener")
        assert listener.running and listener.ports and daemon.dest_path.startswith(str(tmp_path))
        assert daemon.scheduler.advertise == ("127.0.0.1", daemon.port)
    finally:
        done = []
        daemon.stopService().addCallback(done.append)
    assert done == [None]
    assert not listener.running and listener.ports == []
    assert not daemon.scheduler.running  # closed after its children stopped


@pytest.mark.parametrize("private", [True, False])
def test_only_a_private_scheduler_connects_to_servers_and_hears_of_lost_ones(private):
    # A shared scheduler's runtime carries no task: its clients connect to the
    # servers (with their own TLS). Its own connection to a TLS server would
    # fail, and must not make that server unready for its clients.
    from types import SimpleNamespace

    from dispycos.status import Location

    reactor = MemoryReactorClock()
    s = Scheduler(nodes=["127.0.0.1:9801"], secret="s3cret", reactor=reactor, discover=False, private=private)
    try:
        link = s.links[Location("127.0.0.1", 9801)]
        comp = SimpleNamespace(id="c1", status=lambda *a: None, status_message=lambda *a: None,
                               server_ready=lambda: None)
        s.runtime.keys["c1"] = b"k" * 32
        before = len(reactor.tcpClients)
        where = Location("127.0.0.1", 9811)
        s._add_servers(link, comp, [(1, where, True, None)])
        assert [(c[0], c[1]) for c in reactor.tcpClients[before:]] == ([("127.0.0.1", 9811)] if private else [])
        s.runtime._unreachable(where)
        assert [e.ready for e in s.servers] == [not private]
    finally:
        s.close()
