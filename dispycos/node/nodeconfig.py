# -*- test-case-name: tests.unit.test_nodeconfig -*-
"""
L{NodeConfig}: every setting of a node (L{dispycos.node.service.NodeService}),
in one frozen value.

C{dispycosnode}'s options (L{dispycos.node.tap}) are checked there, where a
bad one gets its command-line message, then built into a C{NodeConfig}; a
program or a test builds one itself. Its fields are in the order of the
node's former keyword arguments, so that C{NodeConfig(cpus, hosts, ports,
secret=...)} takes what C{NodeService(reactor, cpus, hosts, ports,
secret=...)} took (and still takes: it builds the C{NodeConfig}).

Sequences (hosts, ports, peers, ...) are kept as tuples: a config is frozen
all through; the node copies what it changes.
"""

import attr

from dispycos import config


def _tuple(value):
    """A sequence as a tuple (None: empty)."""
    return tuple(value) if value is not None else ()


@attr.s(frozen=True)
class NodeConfig:
    """What a node is told: how many servers, where it listens, whom it trusts, its command-line policies."""

    # -- servers and addresses ---------------------------------------------------

    #: Number of server processes (C{--cpus} resolved: a count, 0 for none).
    cpus = attr.ib()
    #: Addresses to listen on (C{--ip_addr}; "" is every address); servers listen there too.
    hosts = attr.ib(converter=_tuple)
    #: From L{dispycos.node.service.expand_ports}: the node's port, then each server's (0: any).
    ports = attr.ib(converter=_tuple)

    # -- trust -------------------------------------------------------------------

    #: The cluster's shared secret schedulers must prove ("" or None: this user's own secret).
    secret = attr.ib(default="")
    #: The node's name (None: the host name).
    node_name = attr.ib(default=None)
    #: Directory under which computations' files and the pid file are kept (None: L{config.default_dest_path}).
    dest_path = attr.ib(default=None)
    #: Addresses the node is announced at instead of its own (C{--ext_ip_addr}), the first one used.
    ext_hosts = attr.ib(default=(), converter=_tuple)
    #: Log debug messages (servers too).
    debug = attr.ib(default=False)
    #: How server processes are spawned (the reactor's spawnProcess when None); for L{SpawnStarter}.
    spawner = attr.ib(default=None)
    #: File that gets C{host:port} once every server is ready (None: none).
    ready_file = attr.ib(default=None)

    # -- schedulers ----------------------------------------------------------------

    #: Shortest pulse interval a scheduler may ask for (seconds).
    min_pulse_interval = attr.ib(default=config.MinPulseInterval)
    #: Longest pulse interval (seconds): a silent scheduler's limit is counted in it.
    max_pulse_interval = attr.ib(default=config.MaxPulseInterval)
    #: UDP port of the node's discovery.
    udp_port = attr.ib(default=config.NodePort)
    #: Schedulers (C{host[:port]}) this node announces itself to, beyond the broadcast.
    peers = attr.ib(default=(), converter=_tuple)
    #: UDP port schedulers listen on (where announcements go).
    scheduler_port = attr.ib(default=config.SchedulerPort)

    # -- command-line policies (L{dispycos.node.policies}) -------------------------

    #: Serve this many computations, then exit (-1: no limit).
    serve = attr.ib(default=-1)
    #: Called instead of stopping the reactor when the node quits (None: stop the reactor).
    on_exit = attr.ib(default=None)
    #: A L{dispycos.node.service_window.ServiceWindow}, or None: always in service.
    service_window = attr.ib(default=None)
    #: Release a computation idle for this many seconds (0: never).
    zombie_period = attr.ib(default=0)
    #: The pid file (L{dispycos.node.pidfile}), or None: none written.
    pid_file = attr.ib(default=None)
    #: Read console commands from stdin: True, False, or "auto" (only from a foreground terminal).
    stdin_commands = attr.ib(default=False)
    #: Largest file accepted, in bytes (0: no limit).
    max_file_size = attr.ib(default=0)

    # -- transport and servers' processes -------------------------------------------

    #: C{(certfile, keyfile, cafile)}: TLS on every link when any is given.
    tls_files = attr.ib(default=(), converter=_tuple)
    #: Load Twisted's TLS support in every server process.
    twisted_tls = attr.ib(default=False)
    #: The secret schedulers and nodes prove to each other (None: C{secret}).
    node_secret = attr.ib(default=None)
    #: Run servers under the normal scheduling policy rather than SCHED_BATCH.
    sched_normal = attr.ib(default=False)

    # -- observability (L{dispycos.metrics}) ----------------------------------------

    #: Port of the node's C{/metrics} page (None: not served; 0: any).
    metrics_port = attr.ib(default=None)
    #: Address the C{/metrics} page listens on.
    metrics_host = attr.ib(default="127.0.0.1")
    #: The log's format, "text" or "json" (the servers' logs too).
    log_format = attr.ib(default="text")
    #: How servers start (an L{dispycos.node.starters.IServerStarter}; None: spawned, with C{spawner}).
    starter = attr.ib(default=None)

    def replace(self, **changes):
        """A copy of this config with C{changes} (field names and values)."""
        return attr.evolve(self, **changes)
