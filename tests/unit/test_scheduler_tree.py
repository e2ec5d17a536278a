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


def book_server(scheduler, where, node="127.0.0.1:9801", computation="c1"):
    """Book a ready server at C{where} of C{node} (a link of C{scheduler}'s) for C{computation}."""
    from types import SimpleNamespace

    from dispycos.status import Location

    loc = Location.parse(node, 0)
    if loc not in scheduler.links:
        scheduler.add_node(node)
    quiet = SimpleNamespace(id=computation, status=lambda *a: None, status_message=lambda *a: None,
                            server_ready=lambda: None)
    scheduler._add_servers(scheduler.links[loc], quiet, [(1, where, True, None)])


@pytest.mark.parametrize("private", [True, False])
def test_only_a_private_scheduler_connects_to_servers_and_hears_of_lost_ones(private):
    # A shared scheduler's runtime carries no task: its clients connect to the
    # servers (with their own TLS). Its own connection to a TLS server would
    # fail, and must not make that server unready for its clients.
    from dispycos.status import Location

    reactor = MemoryReactorClock()
    s = Scheduler(nodes=["127.0.0.1:9801"], secret="s3cret", reactor=reactor, discover=False, private=private)
    try:
        s.runtime.keys["c1"] = b"k" * 32
        before = len(reactor.tcpClients)
        where = Location("127.0.0.1", 9811)
        book_server(s, where)
        assert [(c[0], c[1]) for c in reactor.tcpClients[before:]] == ([("127.0.0.1", 9811)] if private else [])
        s.runtime._unreachable(where)
        assert [e.ready for e in s.servers] == [not private]
    finally:
        s.close()


def test_a_shared_schedulers_client_tells_it_of_a_gone_server_and_only_the_active_one_is_heard(tmp_path):
    # The client of a shared scheduler finds a server gone (its connection
    # refused or broken) before the scheduler hears it from the node: it says
    # so, and the scheduler places nothing more there.
    from types import SimpleNamespace

    from dispycos.client.schedclient import RemoteScheduler
    from dispycos.protocol import scheduling
    from dispycos.scheduler.shared import ClientChannel, SchedulerService
    from dispycos.status import Location

    reactor = MemoryReactorClock()
    where, other = Location("127.0.0.1", 9811), Location("127.0.0.1", 9812)

    # The client's side: only its computation's servers, only while connected.
    client = RemoteScheduler(Location("127.0.0.1", 9700), "s3cret", reactor=reactor)
    sent = []
    lost = []
    client.comp = SimpleNamespace(id="c1", scheduler_lost=lost.append)
    client.proto = SimpleNamespace(queue_call=lambda command, **kw: sent.append((command, kw)))
    client.runtime.computation_of.update({where: "c1", other: "c2"})
    client.runtime.lost_hooks.append(client._server_gone)  # as submit() does
    client.runtime._unreachable(where)
    client.runtime._unreachable(other)
    assert sent == [(scheduling.ServerGone, {"computation": "c1", "location": "127.0.0.1:9811"})]
    client._lost(client.proto)
    assert client._server_gone not in client.runtime.lost_hooks and len(lost) == 1

    # The scheduler's side: the active computation's client marks the server unready.
    daemon = SchedulerService(reactor, hosts=["127.0.0.1"], tcp_port=0, secret="s3cret",
                              dest_path=str(tmp_path), udp_port=0)
    daemon.startService()
    try:
        scheduler = daemon.scheduler
        book_server(scheduler, where)
        channel = ClientChannel(daemon)
        mine = channel.computations["c1"] = SimpleNamespace(id="c1", closed=False)
        scheduler.active = SimpleNamespace(id="c0")  # another client's computation has the servers
        channel._server_gone("c1", "127.0.0.1:9811")
        assert [e.ready for e in scheduler.servers] == [True]
        scheduler.active = mine
        channel._server_gone("c9", "127.0.0.1:9811")  # not this client's
        assert [e.ready for e in scheduler.servers] == [True]
        channel._server_gone("c1", "127.0.0.1:x")  # a bad location is ignored
        assert [e.ready for e in scheduler.servers] == [True]
        channel._server_gone("c1", "127.0.0.1:9811")
        assert [e.ready for e in scheduler.servers] == [False]
    finally:
        scheduler.active = None
        daemon.stopService()
