# -*- test-case-name: tests.test_cli -*-
"""
Shared pieces of the command-line options of C{dispycosnode} and C{dispycos}.
"""

import sys

from twisted.python import usage

from dispycos import config, logs, paths
from dispycos._twisted import wrap_option_handlers


class _Recorder:
    """Wraps an option's handler to note that the option was given."""

    def __init__(self, options, name, handler):
        self.options = options
        self.name = name.replace("-", "_")
        self.handler = handler

    def __call__(self, name, value=None):
        self.options.given.add(self.name)
        if isinstance(self.handler, usage.CoerceParameter):
            return self.handler.dispatch(name, value)
        return self.handler(name, value)


class UnderscoreOptions(usage.Options):
    """
    C{usage.Options} whose repeatable C{opt_*} methods also answer to the
    underscore spelling of the manual (C{--tcp_ports} as well as C{--tcp-ports}).

    @ivar given: the names (underscore spelling) of the options given on the
        command line, so values from elsewhere (a configuration file) can
        yield to them.
    """

    def __init__(self):
        super().__init__()
        self.given = set()
        wrap_option_handlers(self, lambda name, handler: _Recorder(self, name, handler))
        for name in self._repeatable:
            self[name] = []

    def check_security(self, danger, warning):
        """
        The secure default (no secret: loopback only, unless --insecure) and
        a usable TLS configuration, for either program.

        @param danger: what an exposed listener without a secret allows.
        @param warning: what --insecure prints.
        """
        import os

        self._take_secret()
        if self["secret"] is None:
            self["secret"] = os.environ.get("DISPYCOS_SECRET", "")
        if not self["ip_addr"]:
            self["ip_addr"] = ["" if self["secret"] else "127.0.0.1"]
        if not self["secret"]:
            from dispycos.protocol.tls import is_loopback  # lazily here and below: pyOpenSSL only with TLS

            exposed = [h for h in self["ip_addr"] if not is_loopback(h or "0.0.0.0")]
            if exposed and not self["insecure"]:
                raise usage.UsageError(
                    "refusing to listen on %s without a secret: %s; give one with -s/--secret "
                    "(or $DISPYCOS_SECRET), or --insecure to override"
                    % (", ".join(h or "all interfaces" for h in exposed), danger))
            if self["insecure"]:
                print("WARNING: %s" % warning, file=sys.stderr)
        if self["certfile"] or self["keyfile"] or self["cafile"]:
            from dispycos.protocol.tls import TLS, TLSConfigError

            if not self["certfile"]:
                raise usage.UsageError("TLS needs --certfile (and --keyfile) for this program's own certificate")
            try:
                TLS(self["certfile"], self["keyfile"], self["cafile"])
            except TLSConfigError as e:
                raise usage.UsageError(str(e))

    #: Where the secret came from: "file" (--secret_file), "command line" (-s), or None.
    secret_source = None

    def _take_secret(self):
        """
        The secret of C{-s} (with a warning: every local user can read a
        command line) or of C{--secret_file} (with a warning when others can
        read the file); C{-s} on the command line wins over a C{--config}
        file's C{secret_file}.
        """
        on_command_line = "secret" in self.given
        if on_command_line and "secret_file" in self.given:
            raise usage.UsageError("give the secret with -s/--secret or --secret_file, not both")
        if on_command_line:
            self.secret_source = "command line"
            print("WARNING: -s/--secret puts the secret where every local user can read it "
                  "(/proc/*/cmdline); use --secret_file FILE or $DISPYCOS_SECRET instead", file=sys.stderr)
        elif self["secret_file"]:
            try:
                self["secret"] = paths.read_secret_file(self["secret_file"])
            except ValueError as e:
                raise usage.UsageError(str(e))
            self.secret_source = "file"
            exposed = paths.exposed_secret_file(self["secret_file"])
            if exposed:
                print("WARNING: %s" % exposed, file=sys.stderr)

    def node_secret(self):
        """The secret of C{--node_secret_file} (None: nodes prove the secret); L{usage.UsageError} if unreadable."""
        path = self.get("node_secret_file")
        if not path:
            return None
        try:
            secret = paths.read_secret_file(path)
        except ValueError as e:
            raise usage.UsageError(str(e))
        exposed = paths.exposed_secret_file(path)
        if exposed:
            print("WARNING: %s" % exposed, file=sys.stderr)
        return secret

    def private_dest_path(self):
        """
        C{--dest_path} (or the default) made or checked private to this user
        (L{paths.private_dir}); L{usage.UsageError} when it is not.
        """
        try:
            return paths.private_dir(self["dest_path"] or config.default_dest_path(), "--dest_path")
        except paths.UnsafePathError as e:
            raise usage.UsageError(str(e))

    #: Options of both programs: /metrics and the log stream (see L{check_observability}).
    observability_parameters = [
        ["metrics_port", None, None, "Serve /metrics (Prometheus text format; needs dispycos[metrics]) on this port "
                                     "(0: any free port, logged).", int],
        ["metrics_host", None, "127.0.0.1", "Address /metrics listens on (default: loopback)."],
        ["log_format", None, "text", "Log stream format: text, or json (one JSON object per record)."],
        ["log_file", None, None, "Write the log stream to this file (appended) instead of stderr."],
    ]

    def check_observability(self):
        """C{--metrics_port} needs prometheus_client; C{--log_format}/C{--log_file} must be usable."""
        logs.check_options(self)
        if self["metrics_port"] is not None:
            if not 0 <= self["metrics_port"] < 65536:
                raise usage.UsageError("--metrics_port must be a port number (0-65535)")
            from dispycos.metrics import MetricsUnavailable, check_available

            try:
                check_available()
            except MetricsUnavailable as e:
                raise usage.UsageError("--metrics_port: %s" % e)

    @staticmethod
    def fail(prog, error):
        """End the program at once (2) with C{error} on one line of stderr, from the console script and twistd alike."""
        print("%s: %s" % (prog, error), file=sys.stderr)
        raise SystemExit(2)

    def opt_ip_addr(self, value):
        """Address to listen on (repeatable)."""
        self["ip_addr"].append(value)

    opt_i = opt_ip_addr

    def opt_ext_ip_addr(self, value):
        """Address announced to peers (NAT, cloud), paired with -i in order (repeatable)."""
        self["ext_ip_addr"].append(value)

    def __init_subclass__(cls, **kw):
        super().__init_subclass__(**kw)
        # --no_FLAG for every flag: switches off a flag a --config file turned on.
        for flag in [f[0] for f in cls.optFlags]:
            if not hasattr(cls, "opt_no_" + flag):
                setattr(cls, "opt_no_" + flag, _negation(flag))

    def parseOptions(self, options=None):
        if options is None:
            options = sys.argv[1:]
        # opt_* methods answer to --a-b; the manual spells them --a_b.
        known = {name.rstrip("=") for name in self.longOpt}
        fixed = []
        for arg in options:
            if arg.startswith("--"):
                name, eq, value = arg[2:].partition("=")
                if name not in known and name.replace("_", "-") in known:
                    arg = "--" + name.replace("_", "-") + eq + value
            fixed.append(arg)
        return super().parseOptions(fixed)

    _repeatable = ()


def _negation(flag):
    def opt_no(self):
        self[flag] = 0
        self.given.add(flag)

    opt_no.__doc__ = "Turn --%s off (over a --config file)." % flag
    return opt_no
