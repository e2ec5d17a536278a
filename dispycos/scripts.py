# -*- test-case-name: tests.test_cli -*-
"""
Console scripts: C{dispycosnode} and C{dispycos} run the same services as the
twistd plugins, without plugin discovery.
"""

import os
import signal
import sys

from twisted.application.service import MultiService
from twisted.internet import defer, task
from twisted.logger import ILogObserver
from twisted.python import usage
from twisted.python.components import Componentized

from .logs import log_observer, log_predicate, open_log_file, start_logging  # noqa: F401 (log_predicate: API)


class _TwistdLogLevel(MultiService):
    """
    The top service a twistd plugin returns: on joining twistd's
    application it gives it the log observer twistd would make for
    C{--logfile} (stdout with C{-n}; the plugin's C{--log_file} wins),
    filtered at the level the plugin's C{-d} asks for and in the format of
    its C{--log_format}, as the console scripts do. (twistd uses an
    application's ILogObserver component instead of making its own.)
    """

    def __init__(self, child, debug, twistd, log_format="text", log_file=None):
        super().__init__()
        self.debug = debug
        self.twistd = twistd
        self.log_format = log_format
        self.log_file = log_file
        child.setServiceParent(self)

    def setServiceParent(self, parent):
        if isinstance(parent, Componentized) and parent.getComponent(ILogObserver) is None:
            parent.setComponent(ILogObserver, log_observer(self.debug, self._log_file(), self.log_format))
        return super().setServiceParent(parent)

    def _log_file(self):
        if self.log_file:
            return open_log_file(self.log_file)
        path = self.twistd.get("logfile")
        if path == "-" or (not path and self.twistd.get("nodaemon")):
            return sys.stdout
        from twisted.internet import reactor
        from twisted.python.logfile import LogFile

        log_file = LogFile.fromFullPath(path or "twistd.log")
        # As twistd: SIGUSR1 rotates the log.
        signal.signal(signal.SIGUSR1, lambda *_: reactor.callFromThread(log_file.rotate))
        return log_file


def for_twistd(service, options):
    """
    C{service} as a twistd plugin's C{makeService} should return it: with
    C{-d} deciding the log level and C{--log_format}/C{--log_file} its
    format and file, unless twistd was told how to log (C{--logger},
    C{--syslog}). Outside twistd, C{service} itself.
    """
    twistd = getattr(options, "parent", None)
    if twistd is None or not hasattr(twistd, "get") or twistd.get("logger") or twistd.get("syslog"):
        return service
    return _TwistdLogLevel(service, bool(options.get("debug")), twistd, options.get("log_format") or "text",
                           options.get("log_file"))


def _run_service(options_class, make_service, argv, prog):
    options = options_class()
    try:
        options.parseOptions(argv)
    except usage.UsageError as e:
        print("%s: %s" % (prog, e), file=sys.stderr)
        sys.exit(2)
    from twisted.internet import reactor as global_reactor

    try:
        svc = make_service(options, global_reactor)
    except usage.UsageError as e:
        print("%s: %s" % (prog, e), file=sys.stderr)
        sys.exit(2)
    start_logging(options.get("debug"), log_format=options.get("log_format") or "text",
                  log_file=options.get("log_file"))

    def main(reactor):
        svc.privilegedStartService()
        svc.startService()
        # As twistd does: SIGINT/SIGTERM stop the reactor, which first stops the
        # service (ending tasks and server processes); a second signal during
        # that wait ends the process at once.
        reactor.addSystemEventTrigger("before", "shutdown", svc.stopService)
        reactor.addSystemEventTrigger("before", "shutdown", _second_signal_kills)
        return defer.Deferred()

    task.react(main)


def _second_signal_kills():
    def now(*_):
        os._exit(1)

    signal.signal(signal.SIGINT, now)
    signal.signal(signal.SIGTERM, now)


def node_main(argv=None):
    """Entry point of C{dispycosnode}."""
    from . import _lean, zygote

    argv = sys.argv[1:] if argv is None else argv
    # Before the reactor: the zygote its servers are forked from (dispycos.zygote).
    zygote.prefork_for_node(argv)
    _lean.import_twisted()  # the node never needs Twisted's own TLS plumbing
    from .nodetap import Options, makeService

    _run_service(Options, makeService, argv, "dispycosnode")


def scheduler_main(argv=None):
    """Entry point of C{dispycos}, the shared scheduler."""
    from .tap import Options, makeService

    _run_service(Options, makeService, sys.argv[1:] if argv is None else argv, "dispycos")


if __name__ == "__main__":
    node_main()
