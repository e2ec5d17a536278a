# -*- test-case-name: tests.test_cli -*-
"""
Console scripts: C{dispycosnode} and C{dispycos} run the same services as the
twistd plugins, without plugin discovery.
"""

import os
import signal
import sys

from dispycos import _lean

# Before this module imports Twisted: a node, and the servers it forks, load
# what Twisted imports only for cookies on first use (~3 MiB a process), and
# no asyncio (~2.7 MiB and 30-50 ms a process).
_lean.defer_cookiejar()
_lean.defer_asyncio()

from twisted.internet import defer, task  # noqa: E402
from twisted.python import usage  # noqa: E402

from dispycos.logs import log_predicate, start_logging  # noqa: E402,F401 (log_predicate: API)


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

    task.react(lambda reactor: run_until_stopped(reactor, svc))


def run_until_stopped(reactor, svc):
    """
    C{task.react}'s C{main}: start C{svc} once C{reactor} runs and stop it
    when the reactor shuts down. The Deferred returned fails (so C{react}
    logs the error and exits 1) if the service cannot start, and otherwise
    never fires.

    C{react} calls its C{main} before C{reactor.run()}, and the reactor
    installs its SIGINT/SIGTERM handlers only as it starts: a service
    started in C{main} itself listens (and forks) while those signals still
    kill the process at once, unlogged, its children left behind. So the
    service starts in C{callWhenRunning}, after the handlers.
    """

    done = defer.Deferred()

    def start():
        try:
            svc.privilegedStartService()
            svc.startService()
        except BaseException:
            done.errback()
            return
        # As twistd does: SIGINT/SIGTERM stop the reactor, which first stops the
        # service (ending tasks and server processes); a second signal during
        # that wait ends the process at once.
        reactor.addSystemEventTrigger("before", "shutdown", svc.stopService)
        reactor.addSystemEventTrigger("before", "shutdown", _second_signal_kills)

    reactor.callWhenRunning(start)
    return done


def _second_signal_kills():
    def now(*_):
        os._exit(1)

    signal.signal(signal.SIGINT, now)
    signal.signal(signal.SIGTERM, now)


def node_main(argv=None):
    """Entry point of C{dispycosnode}."""
    from dispycos.node import zygote

    argv = sys.argv[1:] if argv is None else argv
    # Before the reactor: the zygote its servers are forked from (dispycos.node.zygote).
    zygote.prefork_for_node(argv)
    _lean.import_twisted()  # the node never needs Twisted's own TLS plumbing
    from dispycos.node.tap import Options, makeService  # only now: after _lean

    _run_service(Options, makeService, argv, "dispycosnode")


def scheduler_main(argv=None):
    """Entry point of C{dispycos}, the shared scheduler."""
    from dispycos.scheduler.tap import Options, makeService  # lazily, as node_main's

    _run_service(Options, makeService, sys.argv[1:] if argv is None else argv, "dispycos")


if __name__ == "__main__":
    node_main()
