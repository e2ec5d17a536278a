# -*- test-case-name: tests.test_cli -*-
"""
Options and service of the shared scheduler program C{dispycos} (and
C{twistd dispycos}).

The shared scheduler is not part of this release yet: the options parse, and
starting it says so plainly. Use a private L{dispycos.Scheduler} meanwhile.
"""

from twisted.python import usage

from .options import UnderscoreOptions


class Options(UnderscoreOptions):
    synopsis = "[options]"
    longdesc = "Run a shared dispycos scheduler (not available in this release)."

    optFlags = [
        ["debug", "d", "Log debug messages."],
        ["daemon", None, "Do not read commands from stdin."],
    ]
    optParameters = [
        ["udp_port", "u", 9705, "UDP port for discovery.", int],
        ["tcp_port", "t", 9705, "TCP port for clients.", int],
        ["name", "n", None, "Name of the scheduler."],
        ["dest_path", None, None, "Directory for computation files."],
        ["max_file_size", None, "0", "Largest file accepted."],
        ["secret", "s", None, "Shared secret."],
        ["certfile", None, None, "TLS certificate."],
        ["keyfile", None, None, "TLS key."],
        ["cafile", None, None, "CA to verify peers against."],
        ["zombie_period", None, None, "Seconds of silence after which a client is dropped.", float],
        ["http_port", None, None, "Serve the monitor on this port.", int],
    ]
    _repeatable = ("ip_addr", "ext_ip_addr", "node")

    def __init__(self):
        super().__init__()
        self["ip_addr"] = []
        self["ext_ip_addr"] = []
        self["node"] = []

    def opt_ip_addr(self, value):
        """Address to listen on (repeatable)."""
        self["ip_addr"].append(value)

    opt_i = opt_ip_addr

    def opt_ext_ip_addr(self, value):
        """Address announced to peers (repeatable)."""
        self["ext_ip_addr"].append(value)

    def opt_node(self, value):
        """A node to use, host[:port] (repeatable)."""
        self["node"].append(value)


def makeService(options, reactor=None):
    raise usage.UsageError(
        "the shared scheduler program is not available in this release yet; "
        "run computations with a private dispycos.Scheduler(nodes=[...]) or dispycos.LocalCluster"
    )
