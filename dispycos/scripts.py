# -*- test-case-name: tests.test_cli -*-
"""
Console scripts: C{dispycosnode} and C{dispycos} run the same services as the
twistd plugins, without plugin discovery.
"""

import os
import signal
import sys

from twisted.internet import defer, task
from twisted.logger import FilteringLogObserver, LogLevel, LogLevelFilterPredicate, globalLogBeginner, textFileLogObserver
from twisted.python import usage


def log_predicate(debug):
    """Info (or debug) level, without AMP's per-connection chatter unless debugging."""
    predicate = LogLevelFilterPredicate(LogLevel.debug if debug else LogLevel.info)
    if not debug:
        for namespace in ("twisted.protocols.amp", "twisted.internet.protocol", "dispycos.discovery._Socket"):
            predicate.setLogLevelForNamespace(namespace, LogLevel.warn)
    return predicate


def start_logging(debug, stream=None):
    """Log to C{stream} (stderr) at the level L{log_predicate} gives."""
    globalLogBeginner.beginLoggingTo(
        [FilteringLogObserver(textFileLogObserver(stream or sys.stderr), [log_predicate(debug)])],
        redirectStandardIO=False,
    )


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
    start_logging(options.get("debug"))

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
    from . import _lean

    _lean.import_twisted()  # the node never needs Twisted's own TLS plumbing
    from .nodetap import Options, makeService

    _run_service(Options, makeService, sys.argv[1:] if argv is None else argv, "dispycosnode")


def scheduler_main(argv=None):
    """Entry point of C{dispycos}, the shared scheduler."""
    from .tap import Options, makeService

    _run_service(Options, makeService, sys.argv[1:] if argv is None else argv, "dispycos")


if __name__ == "__main__":
    node_main()
