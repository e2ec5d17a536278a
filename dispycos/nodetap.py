# -*- test-case-name: tests.test_cli -*-
"""
Options and service of C{dispycosnode} (and C{twistd dispycosnode}).
"""

import os
import sys

from twisted.python import usage

from . import config
from .options import UnderscoreOptions
from .node import NodeService, expand_ports, is_loopback


class Options(UnderscoreOptions):
    synopsis = "[options]"
    longdesc = "Run a dispycos node: one server process per CPU runs the tasks of computations."

    optFlags = [
        ["debug", "d", "Log debug messages."],
        ["daemon", None, "Do not read commands from stdin."],
        ["insecure", None, "Allow listening on non-loopback addresses without a secret (dangerous)."],
    ]
    optParameters = [
        ["cpus", "c", 0, "Number of servers: 0 = all CPUs, N > 0 = N, N < 0 = all but N.", int],
        ["name", "n", None, "Name of the node (default: host name)."],
        ["dest_path", None, None, "Directory under which computation files are kept."],
        ["secret", "s", None, "Shared secret schedulers must prove (default: $DISPYCOS_SECRET or none)."],
        ["max_file_size", None, "0", "Largest file accepted (bytes; suffix k, m, g, t)."],
        ["ready_file", None, None, "Write host:port here once every server is ready."],
        ["udp_port", "u", config.NodePort, "UDP port for discovery.", int],
        ["scheduler_port", None, config.SchedulerPort, "UDP port schedulers listen on (for announcements).", int],
        ["min_pulse_interval", None, config.MinPulseInterval, "Shortest pulse interval a client may ask for (s).", float],
        ["max_pulse_interval", None, config.MaxPulseInterval, "Longest pulse interval (s).", float],
    ]

    _repeatable = ("ip_addr", "ext_ip_addr", "tcp_ports", "peer")

    def __init__(self):
        super().__init__()
        self["ip_addr"] = []
        self["ext_ip_addr"] = []
        self["tcp_ports"] = []
        self["peer"] = []

    def opt_peer(self, value):
        """A scheduler (host:port of its UDP port) to announce this node to (repeatable)."""
        self["peer"].append(value)

    def opt_ip_addr(self, value):
        """Address to listen on (repeatable)."""
        self["ip_addr"].append(value)

    opt_i = opt_ip_addr

    def opt_ext_ip_addr(self, value):
        """Address announced to peers, paired with -i in order (repeatable)."""
        self["ext_ip_addr"].append(value)

    def opt_tcp_ports(self, value):
        """Port n or range n1-n2 (repeatable): the node's first, its servers' next."""
        self["tcp_ports"].append(value)

    def postOptions(self):
        ncpu = os.cpu_count() or 1
        cpus = self["cpus"]
        if cpus == 0:
            cpus = ncpu
        elif cpus < 0:
            cpus = ncpu + cpus
            if cpus <= 0:
                raise usage.UsageError("--cpus %d leaves no CPU" % self["cpus"])
        self["servers"] = cpus
        if self["secret"] is None:
            self["secret"] = os.environ.get("DISPYCOS_SECRET", "")
        try:
            self["max_file_size"] = config.parse_size(self["max_file_size"])
        except ValueError:
            raise usage.UsageError("--max_file_size: not a size: %r" % self["max_file_size"])
        if not self["ip_addr"]:
            self["ip_addr"] = ["" if self["secret"] else "127.0.0.1"]
        if not self["secret"] and not self["insecure"]:
            exposed = [h for h in self["ip_addr"] if not is_loopback(h or "0.0.0.0")]
            if exposed:
                raise usage.UsageError(
                    "refusing to listen on %s without a secret: anyone who can connect could run code here; "
                    "give one with -s/--secret (or $DISPYCOS_SECRET), or --insecure to override"
                    % ", ".join(h or "all interfaces" for h in exposed)
                )
        if not self["secret"] and self["insecure"]:
            print("WARNING: dispycosnode runs WITHOUT A SECRET on a non-loopback address: "
                  "anyone who can reach it can run code on this machine", file=sys.stderr)
        if not (0 < self["min_pulse_interval"] <= self["max_pulse_interval"]):
            raise usage.UsageError("need 0 < --min_pulse_interval <= --max_pulse_interval")
        try:
            self["ports"] = expand_ports(self["tcp_ports"], cpus + 1)
        except ValueError as e:
            raise usage.UsageError("--tcp_ports: %s" % e)


def makeService(options, reactor=None):
    """The node's service, from parsed L{Options}."""
    if reactor is None:
        from twisted.internet import reactor
    return NodeService(
        reactor,
        cpus=options["servers"],
        hosts=options["ip_addr"],
        ports=options["ports"],
        secret=options["secret"],
        node_name=options["name"],
        dest_path=options["dest_path"],
        ext_hosts=options["ext_ip_addr"],
        debug=options["debug"],
        ready_file=options["ready_file"],
        min_pulse_interval=options["min_pulse_interval"],
        max_pulse_interval=options["max_pulse_interval"],
        udp_port=options["udp_port"],
        peers=options["peer"],
        scheduler_port=options["scheduler_port"],
    )
