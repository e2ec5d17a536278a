# -*- test-case-name: tests.test_observe -*-
"""
The log stream of dispycos's programs: text (Twisted's usual lines) or JSON
(C{--log_format json}: twisted.logger's JSON observer, one object per
record, each record C{RS JSON NL} as RFC 7464 has it), to stderr or a file
(C{--log_file F}); and the records of server processes, which a node logs
as its own.

A JSON record is what C{twisted.logger.eventAsJSON} makes of the event
(C{log_format} and its fields, C{log_level}, C{log_namespace},
C{log_time}, ...; L{twisted.logger.eventsFromJSONLogFile} reads them back)
plus two keys for log pipelines: C{level} (C{"info"}, C{"warn"}, ...) and
C{message} (the formatted text, with the traceback of a failure).
"""

import signal
import sys

from twisted.application.service import MultiService, Service
from twisted.logger import ILogObserver
from twisted.logger import (FilteringLogObserver, LogLevel, LogLevelFilterPredicate, eventFromJSON, formatEvent,
                            jsonFileLogObserver, textFileLogObserver)
from twisted.python.components import Componentized

#: The values of C{--log_format}.
FORMATS = ("text", "json")


def log_predicate(debug):
    """
    Info (or debug) level, without AMP's per-connection chatter (nor the
    scheduler's node links' "Scheduling retry" lines, from Twisted's
    ClientService) unless debugging.
    """
    predicate = LogLevelFilterPredicate(LogLevel.debug if debug else LogLevel.info)
    if not debug:
        for namespace in ("twisted.protocols.amp", "twisted.internet.protocol", "dispycos.protocol.discovery._Socket",
                          "twisted.application._client_service"):
            predicate.setLogLevelForNamespace(namespace, LogLevel.warn)
    return predicate


def event_text(event):
    """What a record says: its formatted text, and the traceback of its failure."""
    text = formatEvent(event)
    failure = event.get("log_failure")
    if failure is not None:
        try:
            text = "%s\n%s" % (text, failure.getTraceback())
        except Exception:
            pass
    return text


def json_observer(stream):
    """twisted.logger's JSON observer on C{stream}, each record with C{level} and C{message} added."""
    write = jsonFileLogObserver(stream)

    def observe(event):
        level = event.get("log_level")
        write(dict(event, level=getattr(level, "name", None), message=event_text(event)))

    return observe


def log_observer(debug, stream, log_format="text"):
    """The observer of a program's log stream: C{log_format} to C{stream}, filtered by L{log_predicate}."""
    observer = json_observer(stream) if log_format == "json" else textFileLogObserver(stream)
    return FilteringLogObserver(observer, [log_predicate(debug)])


def open_log_file(path):
    """C{--log_file F}: appended to, a line at a time."""
    return open(path, "a", buffering=1, encoding="utf-8", errors="replace")


def check_options(options):
    """C{--log_format} is one of L{FORMATS} and C{--log_file} can be written (a L{usage.UsageError} otherwise)."""
    from twisted.python import usage

    if options["log_format"] not in FORMATS:
        raise usage.UsageError("--log_format must be %s, not %r" % (" or ".join(FORMATS), options["log_format"]))
    if options["log_file"]:
        try:
            open_log_file(options["log_file"]).close()
        except OSError as e:
            raise usage.UsageError("--log_file %s: %s" % (options["log_file"], e.strerror or e))


def start_logging(debug, stream=None, log_format="text", log_file=None):
    """Log to C{log_file} (a path) or C{stream} (stderr) in C{log_format}, at the level L{log_predicate} gives."""
    from twisted.logger import globalLogBeginner

    if log_file:
        stream = open_log_file(log_file)
    globalLogBeginner.beginLoggingTo([log_observer(debug, stream or sys.stderr, log_format)],
                                     redirectStandardIO=False)


# -- a server's records, logged by its node ---------------------------------------------------


def server_event(index, line):
    """
    The event of the JSON record C{line} that server C{index} wrote, as its
    node logs it (its text prefixed with C{server N: }, its fields kept), or
    None when C{line} is no such record.
    """
    text = line.lstrip("\x1e").strip()
    if not text.startswith("{"):
        return None
    try:
        event = eventFromJSON(text)
    except ValueError:
        return None
    if not isinstance(event, dict) or "log_format" not in event:
        return None
    message = event.pop("message", None)
    if not isinstance(message, str):
        message = event_text(event)
    for key in ("level", "log_flattened", "log_logger", "log_source", "log_failure"):
        event.pop(key, None)
    if not isinstance(event.get("log_level"), type(LogLevel.info)):
        event["log_level"] = LogLevel.info
    event["log_server_format"] = event.get("log_format")
    event["log_format"] = "server {log_server}: {log_server_text}"
    event["log_server"] = index
    event["log_server_text"] = message
    return event


# -- under twistd -------------------------------------------------------------------


class _TwistdLogLevel(MultiService):
    """
    The top service a twistd plugin returns: on joining twistd's
    application it gives it the log observer twistd would make for
    C{--logfile} (stdout with C{-n}; the plugin's C{--log_file} wins),
    filtered at the level the plugin's C{-d} asks for and in the format of
    its C{--log_format}, as the console scripts do. (twistd uses an
    application's ILogObserver component instead of making its own.)

    It also starts its child only once the child's reactor runs: twistd
    starts the application before C{reactor.run()}, before the reactor
    installs its SIGINT/SIGTERM handlers, and a node that listened and
    forked then would die of an early signal unlogged, its servers left
    behind (as L{dispycos.scripts.run_until_stopped} for the console
    scripts).
    """

    def __init__(self, child, debug, twistd, log_format="text", log_file=None):
        super().__init__()
        self.debug = debug
        self.twistd = twistd
        self.log_format = log_format
        self.log_file = log_file
        self._reactor = getattr(child, "reactor", None)
        child.setServiceParent(self)

    def startService(self):
        reactor = self._reactor
        if reactor is None or getattr(reactor, "running", True):
            return super().startService()
        Service.startService(self)
        reactor.callWhenRunning(self._start_children)

    def _start_children(self):
        if self.running:
            for child in self:
                child.startService()

    def stopService(self):
        if any(child.running for child in self):
            return super().stopService()
        Service.stopService(self)  # stopped before the reactor ran: nothing of its child started

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
