# -*- test-case-name: tests.test_core -*-
"""
A server process: C{python -m dispycos.server}, started by a node, one per CPU.

It speaks AMP to its node over the pipes on fds 3 (in) and 4 (out), and
listens on TCP for the computation's clients and peers, who create tasks and
exchange messages with it directly. It dies with its node: the pipe closing
ends it, and on Linux so does the node's death (PR_SET_PDEATHSIG).
"""

import argparse
import os
import shutil
import signal
import sys

from twisted.internet import defer
from twisted.logger import Logger
from twisted.protocols import amp

from . import serialize
from .errors import DispycosError, SetupError
from .protocol import commands
from .status import Location

_FD_IN, _FD_OUT = 3, 4

log = Logger()


def die_with_parent(parent_pid):
    """Ask Linux to kill this process when its parent dies (best effort)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:
        pass
    if parent_pid and os.getppid() != parent_pid:
        os._exit(1)


def _in_globals(components, name, value):
    """Set C{name} in the globals of every component function."""
    seen = set()
    for obj in components.values():
        g = getattr(obj, "__globals__", None)
        if g is not None and id(g) not in seen:
            seen.add(id(g))
            g[name] = value


class ServerControl(amp.AMP):
    """The server's side of the pipe to its node."""

    def __init__(self, server):
        super().__init__()
        self.server = server

    def connectionMade(self):
        super().connectionMade()
        self.callRemote(commands.Ready, port=self.server.runtime.location.port, pid=os.getpid())

    def connectionLost(self, reason):
        super().connectionLost(reason)
        # The node is gone (or closed us): nothing may outlive it.
        os._exit(0 if self.server.closing else 1)

    @commands.Init.responder
    def _init(self, computation, key, components, node_dir, server_dir, location):
        return self.server.init(computation, key, components, node_dir, server_dir)

    @commands.Close.responder
    def _close(self, terminate):
        return self.server.close(terminate).addCallback(lambda _: {})


class Server:
    """One server's state: its runtime, the computation's components, its tasks."""

    def __init__(self, reactor, runtime, index):
        self.reactor = reactor
        self.runtime = runtime
        self.index = index
        self.components = {}
        self.closing = False
        runtime.executor = self.execute

    def init(self, computation, key, components, node_dir, server_dir):
        try:
            os.makedirs(server_dir, exist_ok=True)
            os.chdir(server_dir)
            for path in (node_dir, server_dir):
                if path not in sys.path:
                    sys.path.insert(0, path)
            self.components = serialize.loads(components)
        except Exception as e:
            raise SetupError("server %d could not load the computation: %s: %s" % (self.index, type(e).__name__, e))
        _in_globals(self.components, "dispycos_server_location", self.runtime.location)
        self.runtime.keys[computation] = key
        self.runtime.default_computation = computation
        log.info("server {i} at {loc} initialized for computation {c}", i=self.index, loc=self.runtime.location, c=computation)
        return {}

    def execute(self, proto, function, code, args):
        from .tasks import Task

        if code is not None:
            fn = serialize.loads(code)
        else:
            fn = self.components.get(function)
            if fn is None:
                raise DispycosError("%r is not a component of this computation" % (function,))
        try:
            a, kw = serialize.loads(args)
        except Exception as e:
            raise DispycosError("arguments could not be unpickled: %s: %s" % (type(e).__name__, e))
        task = Task._create(self.runtime, fn, a, kw)
        task._creator = proto
        task._start()
        return {"task": task.tid, "name": task.name}

    @defer.inlineCallbacks
    def close(self, terminate):
        """End every task (reported as terminated), flush, and leave."""
        self.closing = True
        self.runtime.keys.clear()
        tasks = list(self.runtime.tasks.values())
        ends = [t.terminate() for t in tasks]
        if ends:
            timeout = self.reactor.callLater(3, lambda: [d.cancel() for d in ends if not d.called])
            yield defer.DeferredList(ends, consumeErrors=True)
            if timeout.active():
                timeout.cancel()
        # Let the outcomes go out, then close every connection cleanly.
        lost = []
        for link in list(self.runtime.links.values()):
            if link.proto is not None and link.proto.connected:
                link.proto.flush()
                if link.proto.lost is not None:
                    lost.append(link.proto.lost)
                link.proto.transport.loseConnection()
        if lost:
            call = self.reactor.callLater(2, lambda: [d.cancel() for d in lost if not d.called])
            yield defer.DeferredList(lost, consumeErrors=True)
            if call.active():
                call.cancel()
        self.reactor.callLater(0, self._exit)

    def _exit(self):
        os._exit(0)


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m dispycos.server")
    parser.add_argument("--index", type=int, required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--announce", default=None)
    parser.add_argument("--parent", type=int, default=0)
    parser.add_argument("--debug", action="store_true")
    args = parser.parse_args(argv)
    die_with_parent(args.parent)
    sys.setswitchinterval(0.001)
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    from twisted.internet import reactor, stdio
    from twisted.python.threadpool import ThreadPool

    from .scripts import start_logging

    start_logging(args.debug)
    from .runtime import Runtime, set_runtime

    pool = ThreadPool(minthreads=1, maxthreads=64, name="dispycos-tasks")
    pool.start()
    reactor.addSystemEventTrigger("during", "shutdown", pool.stop)
    runtime = Runtime(reactor, host=args.host, port=args.port, announce=args.announce, threadpool=pool)
    runtime.listen()
    set_runtime(runtime)
    server = Server(reactor, runtime, args.index)
    stdio.StandardIO(ServerControl(server), stdin=_FD_IN, stdout=_FD_OUT)
    reactor.run(installSignalHandlers=False)


if __name__ == "__main__":
    main()
