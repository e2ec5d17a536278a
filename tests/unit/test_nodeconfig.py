"""
L{NodeConfig}: a node's settings in one frozen value, its defaults those of
the node's former keyword arguments, and NodeService built from one or from
those arguments as before.
"""

import inspect

import attr
import pytest
from twisted.internet.testing import MemoryReactorClock

from dispycos import config
from dispycos.node.nodeconfig import NodeConfig
from dispycos.node.service import NodeService

#: The defaults of NodeService's keyword arguments before NodeConfig (the fields after cpus, hosts, ports).
FORMER_DEFAULTS = dict(
    secret="", node_name=None, dest_path=None, ext_hosts=(), debug=False, spawner=None, ready_file=None,
    min_pulse_interval=config.MinPulseInterval, max_pulse_interval=config.MaxPulseInterval,
    udp_port=config.NodePort, peers=(), scheduler_port=config.SchedulerPort, serve=-1, on_exit=None,
    service_window=None, zombie_period=0, pid_file=None, stdin_commands=False, max_file_size=0, tls_files=(),
    twisted_tls=False, node_secret=None, sched_normal=False, metrics_port=None, metrics_host="127.0.0.1",
    log_format="text", starter=None,
)


def test_the_fields_are_the_former_arguments_in_order_with_their_defaults():
    fields = attr.fields(NodeConfig)
    assert [f.name for f in fields] == ["cpus", "hosts", "ports"] + list(FORMER_DEFAULTS)
    assert all(f.default is attr.NOTHING for f in fields[:3])  # cpus, hosts, ports: required, as before
    c = NodeConfig(2, ["127.0.0.1"], [0, 0, 0])
    assert {name: getattr(c, name) for name in FORMER_DEFAULTS} == FORMER_DEFAULTS
    assert (c.cpus, c.hosts, c.ports) == (2, ("127.0.0.1",), (0, 0, 0))
    with pytest.raises(TypeError):
        NodeConfig(hosts=["127.0.0.1"], ports=[0])  # no cpus


def test_every_field_is_documented():
    source = inspect.getsource(NodeConfig)
    for f in attr.fields(NodeConfig):
        head = source.split("\n    %s = attr.ib(" % f.name)[0].rstrip()
        assert head.splitlines()[-1].strip().startswith("#: "), f.name


def test_a_config_is_frozen_and_its_sequences_are_tuples():
    hosts = ["127.0.0.1"]
    c = NodeConfig(1, hosts, [0, 0], peers=["sched:9705"], tls_files=[None, None, None])
    with pytest.raises(attr.exceptions.FrozenInstanceError):
        c.cpus = 3
    with pytest.raises(attr.exceptions.FrozenInstanceError):
        c.secret = "x"
    hosts.append("10.0.0.1")  # the caller's list is not the config's
    assert c.hosts == ("127.0.0.1",)
    assert (c.peers, c.tls_files, c.ext_hosts) == (("sched:9705",), (None, None, None), ())
    d = c.replace(cpus=3, secret="s")
    assert (d.cpus, d.secret, c.cpus, c.secret) == (3, "s", 1, "")
    assert d == NodeConfig(3, ["127.0.0.1"], [0, 0], secret="s", peers=["sched:9705"], tls_files=[None] * 3)


def _node(*args, **kwargs):
    return NodeService(MemoryReactorClock(), *args, **kwargs)


def test_node_service_takes_a_config(tmp_path):
    c = NodeConfig(0, ["127.0.0.1"], [0], node_name="cfgnode", dest_path=str(tmp_path), serve=3,
                   zombie_period=7, peers=["sched"], ext_hosts=["ext"], max_file_size=10, log_format="json")
    for node in (_node(c), _node(config=c)):
        assert node.config is c
        assert (node.cpus, node.hosts, node.ports, node.name, node.dest_path) == (
            0, ["127.0.0.1"], [0], "cfgnode", str(tmp_path))
        assert (node.serve, node.zombie_period, node.peers, node.ext_hosts) == (3, 7, ["sched"], ["ext"])
        assert (node.max_file_size, node.log_format, node.udp_port) == (10, "json", config.NodePort)
        assert node.tls is None and node.pid_file is None and node.stdin_commands is False
        assert node.starter is not None
    with pytest.raises(TypeError, match="not both"):
        _node(c, serve=2)


def test_node_service_keeps_its_keyword_form(tmp_path):
    """NodeService(reactor, cpus, hosts, ports, secret=..., ...): the form tests and benchmarks use."""
    exits = []
    kw = dict(node_name="kwnode", dest_path=str(tmp_path), serve=2, on_exit=lambda: exits.append(1),
              min_pulse_interval=1.0, max_pulse_interval=3.0, secret="s3")
    by_keyword = _node(cpus=0, hosts=["127.0.0.1"], ports=[0], **kw)
    by_position = _node(0, ["127.0.0.1"], [0], **kw)
    assert by_keyword.config == by_position.config == NodeConfig(0, ["127.0.0.1"], [0], **kw)
    for node in (by_keyword, by_position):
        assert (node.name, node.serve, node.min_pulse_interval, node.max_pulse_interval) == ("kwnode", 2, 1.0, 3.0)
        node._exit_now()
    assert exits == [1, 1]
    assert by_keyword.key == by_position.key
    assert _node(0, ["127.0.0.1"], [0], secret="other").key != by_keyword.key
    with pytest.raises(TypeError):
        _node(0, ["127.0.0.1"], [0], no_such_setting=1)


def test_the_node_copies_what_it_changes(tmp_path):
    """The node's lists are its own: the frozen config stays as it was given."""
    c = NodeConfig(0, ["127.0.0.1"], [0], dest_path=str(tmp_path), peers=["a"])
    node = _node(c)
    node.peers.append("b")
    node.hosts.append("::1")
    assert (c.peers, c.hosts) == (("a",), ("127.0.0.1",))


def test_the_tap_builds_a_config(tmp_path):
    from dispycos.node.tap import Options, node_config

    o = Options()
    o.parseOptions(["-c", "2", "-i", "127.0.0.1", "--tcp_ports", "0", "--serve", "3", "--zombie_period", "4",
                    "--peer", "h:1", "--daemon", "--no_fork", "--max_file_size", "1k"])
    c = node_config(o, MemoryReactorClock(), str(tmp_path), str(tmp_path / "pid"))
    assert isinstance(c, NodeConfig)
    assert (c.cpus, c.hosts, c.ports, c.serve, c.zombie_period, c.peers) == (
        2, ("127.0.0.1",), (0, 0, 0), 3, 4.0, ("h:1",))
    assert (c.dest_path, c.pid_file, c.stdin_commands, c.max_file_size) == (
        str(tmp_path), str(tmp_path / "pid"), False, 1024)
    assert c.tls_files == (None, None, None) and c.starter is not None
