# -*- test-case-name: tests.test_cli,tests.test_node_cli -*-
"""
Options and service of C{dispycosnode} (and C{twistd dispycosnode}).

Beyond the node's own parameters, this module holds the node's command-line
features that act before the node starts: C{--save_config}/C{--config}
(see L{dispycos.node.configfile}) and the pid file checked by C{--clean}
(L{dispycos.node.pidfile}).

The C{--dest_path} (by default L{config.default_dest_path}) must be this
user's alone (L{paths.private_dir}): otherwise the node exits at once (2)
with one line on stderr.
"""

import os

from twisted.python import usage

from dispycos import config
from dispycos.logs import for_twistd
from dispycos.node import configfile
from dispycos.node.nodeconfig import NodeConfig
from dispycos.node.pidfile import PID_FILE_NAME, check_pid_file, pid_file_path
from dispycos.node.service import NodeService, expand_ports
from dispycos.node.service_window import ServiceWindow, ServiceWindowError
from dispycos.options import UnderscoreOptions


class Options(UnderscoreOptions):
    synopsis = "[options]"
    longdesc = (
        "Run a dispycos node: one server process per CPU runs the tasks of computations. "
        "Without --daemon and with a terminal on stdin, reads the commands status, close, "
        "quit/exit and terminate from stdin."
    )

    optFlags = [
        ["debug", "d", "Log debug messages."],
        ["daemon", None, "Do not read commands from stdin."],
        ["insecure", None, "Allow listening on non-loopback addresses without a secret (dangerous)."],
        ["clean", None, "Kill the processes of a previous dispycosnode with the same --dest_path "
                        "(recorded in <dest_path>/%s) and start anyway." % PID_FILE_NAME],
        ["stdin_commands", None, "Read commands from stdin even when it is not a terminal (a pipe); "
                                 "overrides --daemon."],
        ["sched_normal", None, "Run server processes under the normal Linux scheduling policy; by default they run "
                               "as SCHED_BATCH (throughput work that does not preempt other processes on wake-up)."],
        ["no_fork", None, "Start every server as a new interpreter instead of forking it from the node's "
                          "pre-loaded zygote (also DISPYCOS_NO_FORK=1; the default off Linux and with "
                          "--twisted_tls)."],
        ["twisted_tls", None, "Load Twisted's TLS support (pyOpenSSL, ~12 MiB) in every server process, for tasks "
                              "that use reactor.connectSSL, startTLS or https with Twisted's Agent."],
    ]
    optParameters = [
        ["cpus", "c", 0, "Number of servers: 0 = all CPUs, N > 0 = N, N < 0 = all but N.", int],
        ["name", "n", None, "Name of the node (default: host name)."],
        ["dest_path", None, None, "Directory under which computation files (and the pid file) are kept."],
        ["secret", "s", None, "Shared secret schedulers must prove (visible to every local user: prefer "
                              "--secret_file; default: $DISPYCOS_SECRET or none)."],
        ["secret_file", None, None, "Read the secret from the first line of this file (keep it chmod 600)."],
        ["node_secret_file", None, None, "The secret schedulers and nodes prove to each other, read from the first "
                                         "line of this file: give it to nodes and schedulers only, and clients of "
                                         "a shared scheduler cannot pose as nodes (default: the secret)."],
        ["max_file_size", None, "0", "Largest file accepted (bytes; suffix k, m, g, t)."],
        ["ready_file", None, None, "Write host:port here once every server is ready."],
        ["certfile", None, None, "TLS certificate (PEM; may hold the key too): every link of this node uses TLS."],
        ["keyfile", None, None, "TLS private key (PEM)."],
        ["cafile", None, None, "CA (PEM) to verify peers against; schedulers and clients then need certificates."],
        ["udp_port", "u", config.NodePort, "UDP port for discovery.", int],
        ["scheduler_port", None, config.SchedulerPort, "UDP port schedulers listen on (for announcements).", int],
        ["min_pulse_interval", None, config.MinPulseInterval, "Shortest pulse interval a client may ask for (s).", float],
        ["max_pulse_interval", None, config.MaxPulseInterval, "Longest pulse interval (s).", float],
        ["zombie_period", None, 0.0,
         "Release a computation that did nothing for this many seconds (0 = never).", float],
        ["serve", None, -1, "Serve this many computations, then exit (-1 = no limit).", int],
        ["service_start", None, None, "Daily time HH:MM from which computations are accepted (default: now)."],
        ["service_stop", None, None, "Daily time HH:MM after which no new computation is accepted."],
        ["service_end", None, None, "Daily time HH:MM at which a running computation is terminated."],
        ["save_config", None, None, "Save the options (JSON) to this file and exit."],
        ["config", None, None, "Load options from this file (written by --save_config); "
                               "options on the command line win."],
    ] + UnderscoreOptions.observability_parameters

    _repeatable = ("ip_addr", "ext_ip_addr", "tcp_ports", "peer")
    #: Derived in postOptions, not options of their own.
    _derived = ("servers", "ports")

    def opt_peer(self, value):
        """A scheduler (host:port of its UDP port) to announce this node to (repeatable)."""
        self["peer"].append(value)

    def opt_tcp_ports(self, value):
        """Port n or range n1-n2 (repeatable): the node's first, its servers' next."""
        self["tcp_ports"].append(value)

    def option_names(self):
        """The names of every option (what --save_config saves, and --config may set)."""
        names = [p[0] for p in self.optParameters] + [f[0] for f in self.optFlags] + list(self._repeatable)
        return [n for n in names if n not in configfile.NOT_SAVED]

    def saved_values(self):
        """
        The options as --save_config writes them (a secret read from
        C{--secret_file} is not copied: the file's path is saved instead).
        """
        values = {name: self[name] for name in self.option_names()}
        if self.secret_source == "file":
            values["secret"] = None
        return values

    def _load_config(self):
        try:
            values = configfile.load(self["config"], known=self.option_names())
        except configfile.ConfigFileError as e:
            raise usage.UsageError(str(e))
        coerce = {p[0]: p[4] for p in self.optParameters if len(p) > 4 and p[4] is not None}
        for name, value in values.items():
            if name in self.given:
                continue
            if name in self._repeatable:
                if not isinstance(value, list):
                    raise usage.UsageError("configuration file %s: %s must be a list" % (self["config"], name))
                value = [str(v) for v in value]
            elif value is not None and name in coerce:
                try:
                    value = coerce[name](value)
                except (TypeError, ValueError):
                    raise usage.UsageError("configuration file %s: bad value %r for %s" % (self["config"], value, name))
            self[name] = value

    def postOptions(self):
        if self["config"]:
            self._load_config()
        ncpu = os.cpu_count() or 1
        cpus = self["cpus"]
        if cpus == 0:
            cpus = ncpu
        elif cpus < 0:
            cpus = ncpu + cpus
            if cpus <= 0:
                raise usage.UsageError("--cpus %d leaves no CPU" % self["cpus"])
        self["servers"] = cpus
        try:
            self["max_file_size"] = config.parse_size(self["max_file_size"])
        except ValueError:
            raise usage.UsageError("--max_file_size: not a size: %r" % self["max_file_size"])
        self.check_security("anyone who can connect could run code here",
                            "dispycosnode runs WITHOUT A SECRET on a non-loopback address: "
                            "anyone who can reach it can run code on this machine")
        if not (0 < self["min_pulse_interval"] <= self["max_pulse_interval"]):
            raise usage.UsageError("need 0 < --min_pulse_interval <= --max_pulse_interval")
        try:
            self["ports"] = expand_ports(self["tcp_ports"], cpus + 1)
        except ValueError as e:
            raise usage.UsageError("--tcp_ports: %s" % e)
        if self["serve"] == 0 or self["serve"] < -1:
            raise usage.UsageError("--serve must be -1 (no limit) or a positive number, not %d" % self["serve"])
        if self["zombie_period"] < 0:
            raise usage.UsageError("--zombie_period must not be negative")
        service_window(self)  # validates the service times
        self.check_observability()


def service_window(options, clock=None):
    """The L{ServiceWindow} of the options, or None without service times."""
    times = [options["service_start"], options["service_stop"], options["service_end"]]
    if not any(times):
        return None
    try:
        return ServiceWindow(*times, clock=clock)
    except ServiceWindowError as e:
        raise usage.UsageError(str(e))


def server_starter(options, reactor):
    """
    How the node starts servers: forked by the zygote C{dispycosnode} forked
    before its reactor (see L{dispycos.node.zygote}), else spawned (C{--no_fork},
    C{--twisted_tls}, twistd, not Linux).
    """
    from dispycos.node import zygote
    from dispycos.node.starters import SpawnStarter, ZygoteStarter

    handle = zygote.take()
    no_fork = options["no_fork"] or options["twisted_tls"] or os.environ.get("DISPYCOS_NO_FORK", "") not in ("", "0")
    if handle is not None and not no_fork:
        return ZygoteStarter(reactor, handle)
    if handle is not None:
        zygote.discard(handle)
    return SpawnStarter(reactor)


def makeService(options, reactor=None):
    """
    The node's service, from parsed L{Options}. With C{--save_config}, saves
    the options and exits (C{SystemExit(0)}) instead.
    """
    if reactor is None:
        from twisted.internet import reactor
    if options["save_config"]:
        try:
            configfile.save(options["save_config"], options.saved_values())
        except OSError as e:
            raise usage.UsageError("cannot save configuration to %s: %s" % (options["save_config"], e.strerror or e))
        print("dispycosnode: configuration saved to %s" % options["save_config"])
        raise SystemExit(0)
    try:
        dest_path = options.private_dest_path()
        pid_file = pid_file_path(dest_path)
        check_pid_file(pid_file, clean=options["clean"])
    except usage.UsageError as e:
        options.fail("dispycosnode", e)
    return for_twistd(NodeService(reactor, node_config(options, reactor, dest_path, pid_file)), options)


def node_config(options, reactor, dest_path, pid_file):
    """The L{NodeConfig} of parsed L{Options} (checked by them), with the private C{dest_path} and C{pid_file}."""
    # Without --daemon the node reads stdin if it is a terminal when it starts.
    stdin_commands = True if options["stdin_commands"] else (False if options["daemon"] else "auto")
    return NodeConfig(
        starter=server_starter(options, reactor),
        cpus=options["servers"],
        hosts=options["ip_addr"],
        ports=options["ports"],
        secret=options["secret"],
        node_secret=options.node_secret(),
        node_name=options["name"],
        dest_path=dest_path,
        ext_hosts=options["ext_ip_addr"],
        debug=options["debug"],
        twisted_tls=options["twisted_tls"],
        sched_normal=options["sched_normal"],
        ready_file=options["ready_file"],
        min_pulse_interval=options["min_pulse_interval"],
        max_pulse_interval=options["max_pulse_interval"],
        udp_port=options["udp_port"],
        peers=options["peer"],
        scheduler_port=options["scheduler_port"],
        max_file_size=options["max_file_size"],
        tls_files=(options["certfile"], options["keyfile"], options["cafile"]),
        serve=options["serve"],
        service_window=service_window(options, clock=reactor),
        zombie_period=options["zombie_period"],
        pid_file=pid_file,
        stdin_commands=stdin_commands,
        metrics_port=options["metrics_port"],
        metrics_host=options["metrics_host"],
        log_format=options["log_format"],
    )
