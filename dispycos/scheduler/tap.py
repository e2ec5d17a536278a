# -*- test-case-name: tests.test_cli -*-
"""
Options and service of the shared scheduler program C{dispycos} (and
C{twistd dispycos}).
"""



from dispycos import config
from dispycos.logs import for_twistd
from dispycos.options import UnderscoreOptions


class Options(UnderscoreOptions):
    synopsis = "[options]"
    longdesc = "Run a shared dispycos scheduler: clients' computations queue and run one at a time."

    optFlags = [
        ["debug", "d", "Log debug messages."],
        ["daemon", None, "Do not read commands from stdin."],
        ["stdin_commands", None, "Read commands from stdin even when it is not a terminal."],
        ["insecure", None, "Allow listening on non-loopback addresses without a secret (dangerous)."],
    ]
    optParameters = [
        ["udp_port", "u", 9705, "UDP port for discovery.", int],
        ["tcp_port", "t", 9705, "TCP port for clients.", int],
        ["name", "n", None, "Name of the scheduler."],
        ["dest_path", None, None, "Directory for computation files."],
        ["max_file_size", None, "0", "Largest file accepted."],
        ["secret", "s", None, "Shared secret of clients and nodes (visible to every local user: prefer "
                              "--secret_file; default: $DISPYCOS_SECRET or none)."],
        ["secret_file", None, None, "Read the secret from the first line of this file (keep it chmod 600)."],
        ["node_secret_file", None, None, "The secret schedulers and nodes prove to each other, read from the first "
                                         "line of this file: give it to nodes and schedulers only, and clients of "
                                         "a shared scheduler cannot pose as nodes (default: the secret)."],
        ["certfile", None, None, "TLS certificate."],
        ["keyfile", None, None, "TLS key."],
        ["cafile", None, None, "CA to verify peers against."],
        ["zombie_period", None, None, "Seconds of silence after which a client is dropped.", float],
        ["http_port", None, None, "Serve the monitor on this port.", int],
    ] + UnderscoreOptions.observability_parameters
    _repeatable = ("ip_addr", "ext_ip_addr", "node")

    def opt_node(self, value):
        """A node to use, host[:port] (repeatable)."""
        self["node"].append(value)


    def postOptions(self):
        from twisted.python import usage

        try:
            self["max_file_size"] = config.parse_size(self["max_file_size"])
        except ValueError:
            raise usage.UsageError("--max_file_size: not a size: %r" % self["max_file_size"])
        if self["zombie_period"] is not None and self["zombie_period"] < 0:
            raise usage.UsageError("--zombie_period must not be negative")
        self.check_security("clients could run code on every node",
                            "the dispycos scheduler runs WITHOUT A SECRET on a non-loopback address")
        self.check_observability()


def makeService(options, reactor=None):
    """The shared scheduler's service, from parsed L{Options}."""
    if reactor is None:
        from twisted.internet import reactor
    from twisted.python import usage

    from dispycos.scheduler.shared import SchedulerService  # lazily: plugin discovery imports this module

    try:
        dest_path = options.private_dest_path()
    except usage.UsageError as e:
        options.fail("dispycos", e)
    return for_twistd(SchedulerService(
        reactor,
        hosts=options["ip_addr"],
        tcp_port=options["tcp_port"],
        secret=options["secret"],
        node_secret=options.node_secret(),
        nodes=options["node"],
        zombie_period=options["zombie_period"],
        udp_port=options["udp_port"],
        ext_hosts=options["ext_ip_addr"],
        certfile=options["certfile"],
        keyfile=options["keyfile"],
        cafile=options["cafile"],
        stdin_commands=True if options["stdin_commands"] else (False if options["daemon"] else "auto"),
        http_port=options["http_port"],
        name=options["name"],
        dest_path=dest_path,
        max_file_size=options["max_file_size"],
        metrics_port=options["metrics_port"],
        metrics_host=options["metrics_host"],
    ), options)
