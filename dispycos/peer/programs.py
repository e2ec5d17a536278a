# -*- test-case-name: tests.test_programs -*-
"""
External programs driven by tasks over pipes: C{task.run_program(args)}
starts one (a Twisted C{ProcessProtocol} underneath) and returns a
L{Program} to write its stdin and read its stdout line by line.
"""

import os

from twisted.internet import defer
from twisted.internet.protocol import ProcessProtocol

from dispycos.peer.reactorthread import blocking_in_thread, oneway_in_thread


class Program(ProcessProtocol):
    """
    A running program. C{readline()} fires with the next line of its output
    (without the newline; None at the end), C{write(data)} feeds its stdin,
    C{close_stdin()} ends it, C{wait()} fires with its exit code. From a
    plain-function task the calls block and return the value.
    """

    def __init__(self, encoding="utf-8"):
        self.encoding = encoding
        self._lines = defer.DeferredQueue()
        self._buf = b""
        self.stderr = b""
        self.exit_code = None
        self._ended = defer.Deferred()
        self.pid = None

    def connectionMade(self):
        self.pid = self.transport.pid

    def outReceived(self, data):
        self._buf += data
        *lines, self._buf = self._buf.split(b"\n")
        for line in lines:
            self._lines.put(line.decode(self.encoding, "replace").rstrip("\r"))

    def errReceived(self, data):
        self.stderr = (self.stderr + data)[-65536:]

    def processEnded(self, reason):
        if self._buf:
            self._lines.put(self._buf.decode(self.encoding, "replace"))
            self._buf = b""
        self._lines.put(None)
        code = getattr(reason.value, "exitCode", None)
        if code is None:
            signal = getattr(reason.value, "signal", None)
            code = -signal if signal else 0
        self.exit_code = code
        self._ended.callback(code)

    @blocking_in_thread
    def readline(self):
        """Deferred firing with the next output line, or None once the program ended."""
        return self._lines.get()

    @oneway_in_thread
    def write(self, data):
        """Write C{data} (str or bytes) to the program's stdin."""
        if isinstance(data, str):
            data = data.encode(self.encoding)
        if self.exit_code is None:
            self.transport.write(data)

    @oneway_in_thread
    def writeline(self, line):
        """Write C{line} and a newline."""
        self.write(str(line) + "\n")

    @oneway_in_thread
    def close_stdin(self):
        """Close the program's stdin (most programs then finish)."""
        if self.exit_code is None:
            self.transport.closeStdin()

    @blocking_in_thread
    def wait(self):
        """Deferred firing with the exit code once the program ended."""
        if self.exit_code is not None:
            return defer.succeed(self.exit_code)
        d = defer.Deferred()
        self._ended.addBoth(lambda code: (d.callback(code), code)[1])
        return d

    @oneway_in_thread
    def kill(self, sig=9):
        """Send signal C{sig} to the program."""
        if self.exit_code is None:
            self.transport.signalProcess(sig)


def start_program(reactor, args, cwd=None, env=None, encoding="utf-8"):
    """Start C{args} (a list: the program and its arguments); returns its L{Program}."""
    args = [str(a) for a in args]
    if not args:
        raise ValueError("no program given")
    program = args[0]
    if os.sep not in program:
        from twisted.python.procutils import which

        found = which(program)
        if not found:
            raise FileNotFoundError("program %r not found on PATH" % (program,))
        program = found[0]
    proto = Program(encoding)
    reactor.spawnProcess(proto, program, args, env=dict(os.environ) if env is None else env, path=cwd)
    return proto
