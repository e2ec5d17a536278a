# -*- test-case-name: tests.test_core -*-
"""
A server process, one per CPU of a node: forked from the node's zygote
(L{dispycos.node.zygote}, which calls L{main}), or spawned as C{python -m
dispycos.server} (L{dispycos.server.__main__}, see L{dispycos.node.starters}).

It speaks AMP to its node over the pipes on fds 3 (in) and 4 (out), and
listens on TCP for the computation's clients and peers, who create tasks and
exchange messages with it directly. It dies with its node: the pipe closing
ends it, and on Linux so does its parent's death (PR_SET_PDEATHSIG: the node's,
or the zygote's, which dies with the node).
"""

import os
import signal
import sys
import types

from twisted.internet import defer
from twisted.logger import Logger
from twisted.protocols import amp

from dispycos import serialize
from dispycos.errors import DispycosError, SetupError
from dispycos.logs import start_logging
from dispycos.peer.outcomes import error_outcome, group_failed, plain_outcome
from dispycos.peer.reactorthread import in_worker_thread
from dispycos.peer.registry import set_runtime
from dispycos.peer.runtime import Runtime
from dispycos.peer.tasks import Task
from dispycos.protocol import commands
from dispycos.server.heap import Heap
from dispycos.server.taskrunner import ServerGroup, Starter, resolve_function
from dispycos.status import Location

_FD_IN, _FD_OUT = 3, 4
#: Exit status of a server that ends itself because a terminated task would not end.
STUCK_EXIT = 3

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


def batch_scheduling():
    """
    Run this process under Linux's SCHED_BATCH policy (best effort): servers
    do throughput work, and a batch process that wakes up (a task arrived)
    does not preempt the running one - typically the client that just sent
    it and is about to send more. Fewer context switches per task; CPU
    shares are unchanged.
    """
    try:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    except (AttributeError, OSError):
        pass


def _globals_of(components):
    """The distinct globals dicts of the component functions."""
    seen, out = set(), []
    for obj in components.values():
        g = getattr(obj, "__globals__", None)
        if g is not None and id(g) not in seen:
            seen.add(id(g))
            out.append(g)
    return out


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
        from twisted.internet import task

        self._busy = task.LoopingCall(self._report_busy)
        self._busy.clock = self.server.reactor
        self._busy.start(1.0, now=False)

    def _report_busy(self):
        n = len(self.server.runtime.tasks) + len(self.server.runtime.groups)
        if not n:
            self.server.heap.release_if_idle()
        if n or self.server.was_busy:
            self.callRemote(commands.Busy, tasks=n)
        self.server.was_busy = bool(n)
        self.report_counts()

    _reported = None

    def report_counts(self):
        """Tell the node this process's counts (L{dispycos.metrics}) when they changed; a Deferred."""
        values = self.server.runtime.counts.as_list()
        if values == self._reported:
            return defer.succeed(None)
        self._reported = values
        return self.callRemote(commands.ServerCounts, counts=values).addErrback(lambda f: None)

    def connectionLost(self, reason):
        super().connectionLost(reason)
        # The node is gone (or closed us): nothing may outlive it.
        os._exit(0 if self.server.closing else 1)

    @commands.Init.responder
    def _init(self, computation, key, components, node_dir, server_dir, location, node_globals):
        return self.server.init(computation, key, components, node_dir, server_dir, location, node_globals)

    @commands.RunSetup.responder
    def _run_setup(self, function, args, node_level, cwd):
        return self.server.run_setup(function, args, node_level, cwd)

    @commands.Close.responder
    def _close(self, terminate):
        return self.server.close(terminate).addCallback(lambda _: {})


class Server:
    """One server's state: its runtime, the computation's components, its tasks."""

    def __init__(self, reactor, runtime, index, heap=None):
        self.reactor = reactor
        #: The malloc policy (L{dispycos.server.heap.Heap}): large blocks kept while busy, released when idle.
        self.heap = Heap(libc=False) if heap is None else heap
        self.runtime = runtime
        self.index = index
        self.components = {}
        self.closing = False
        self.control = None
        self.server_dir = None
        self.was_busy = False
        #: Functions of code (DefineCode) unpickled so far, by id.
        self.functions = {}
        self.starter = Starter(reactor, runtime)
        runtime.executor = self
        #: With forward_output, where tasks' prints go (a L{dispycos.peer.output.Output}); else None.
        self.output = None

    def init(self, computation, key, components, node_dir, server_dir, location="", node_globals=None):
        try:
            os.makedirs(server_dir, exist_ok=True)
            os.chdir(server_dir)
            self.server_dir = server_dir
            for path in (node_dir, server_dir):
                if path not in sys.path:
                    sys.path.insert(0, path)
            self.components = serialize.loads(components)
            settings = self.components.pop("__dispycos__", {})
            extra = serialize.loads(node_globals) if node_globals else {}
        except Exception as e:
            raise SetupError("server %d could not load the computation: %s: %s" % (self.index, type(e).__name__, e))
        if location:
            self.runtime.location = Location.parse(location, self.runtime.location.port)
        self.node_dir = node_dir
        self.runtime.file_roots.update({"server": server_dir, "node": node_dir, "blob": server_dir})
        client = settings.get("client")
        if not settings.get("peers_communicate") and client:
            client = Location.parse(client, 0)
            self.runtime.may_connect = lambda loc: loc == client
        else:
            self.runtime.may_connect = None
        for name, value in extra.items():
            _in_globals(self.components, name, value)
        _in_globals(self.components, "dispycos_server_location", self.runtime.location)
        _in_globals(self.components, "dispycos_close_server", self.close_server)
        _in_globals(self.components, "dispycos_close_node", self.close_node)
        if settings.get("forward_output") and self.output is None:
            from dispycos.peer.output import Output  # lazily: forward_output only

            self.output = Output(self.reactor, str(self.runtime.location))
        self.runtime.keys[computation] = key
        self.runtime.default_computation = computation
        log.info("server {i} at {loc} initialized for computation {c}", i=self.index, loc=self.runtime.location, c=computation)
        return {}

    # -- setup functions ------------------------------------------------------------

    @defer.inlineCallbacks
    def run_setup(self, function, args, node_level, cwd):
        """Run C{node_setup}/C{server_setup}; it must finish with 0."""
        fn = self.components.get(function)
        if fn is None:
            raise SetupError("setup function %r is not a component" % (function,))
        a = serialize.loads(args) if args else ()
        spaces = _globals_of(self.components)
        before = [dict(g) for g in spaces]
        here = os.getcwd()
        os.chdir(cwd or here)
        try:
            task = Task._create(self.runtime, fn, tuple(a), {})
            task._start()
            try:
                result = yield task.result()
            except Exception as e:
                raise SetupError("%s failed at %s: %s" % (function, self.runtime.location, e))
        finally:
            os.chdir(here)
        if result != 0:
            raise SetupError("%s at %s finished with %r, not 0" % (function, self.runtime.location, result))
        if not node_level:
            return {"globals": None}
        made = {}
        for g, old in zip(spaces, before):
            for name, value in g.items():
                if name.startswith("__") or name.startswith("dispycos_"):
                    continue
                if name not in old or old[name] is not value:
                    try:
                        serialize.dumps(value)
                    except Exception as e:
                        log.warn("global {n} made by {f} cannot reach other servers: {e}", n=name, f=function, e=e)
                        continue
                    made[name] = value
        return {"globals": serialize.dumps(made, "globals of %s" % function)}

    # -- closing from inside a task ----------------------------------------------------

    def close_server(self, terminate=False, restart=False):
        """C{dispycos_close_server()}: ask the node to close (and maybe restart) this server."""
        self._close_request(False, terminate, restart)

    def close_node(self, terminate=False):
        """C{dispycos_close_node()}: ask the node to release the whole node from the computation."""
        self._close_request(True, terminate, False)

    def _close_request(self, node, terminate, restart):
        call = lambda: self.control.callRemote(commands.CloseRequest, node=node, terminate=terminate, restart=restart)
        if in_worker_thread():
            self.reactor.callFromThread(call)
        else:
            call()

    def create(self, proto, tid, blob):
        """
        Create task C{tid} for C{proto} from its pickled C{(function, args,
        kwargs)}; it starts on a later reactor turn. A task that cannot be
        created ends at once with that error.
        """
        runtime = self.runtime
        try:
            if tid in runtime.tasks or tid in runtime.finished:
                raise DispycosError("task id %d is in use at %s" % (tid, runtime.location))
            try:
                ref, args, kwargs = serialize.loads(blob)
            except Exception as e:
                raise DispycosError("the task could not be unpickled here: %s: %s" % (type(e).__name__, e))
            fn = resolve_function(self, proto, ref)
            task = Task._create(runtime, fn, args, kwargs, tid=tid, creator=proto)
        except Exception as e:
            counts = runtime.counts
            counts.tasks_started += 1
            counts.tasks_ended += 1
            counts.tasks_failed += 1
            runtime.creation_failed(proto, tid, e)
            return
        runtime.counts.tasks_started += 1
        if self.output is not None:
            task._sink = self.output.sink(proto, task.name)
        self.starter.enqueue(task)

    def create_group(self, proto, tid, count, calls):
        """
        Create the C{count} tasks of a group (a map's batch) from their
        pickled C{(function, [args, ...], single)}: with C{single}, each
        item of the list is the one argument of its task.
        """
        try:
            ref, arglist, single = serialize.loads(calls)
            if len(arglist) != count:
                raise DispycosError("a group of %d tasks came with %d calls" % (count, len(arglist)))
            fn = resolve_function(self, proto, ref)
        except Exception as e:
            counts = self.runtime.counts
            counts.tasks_started += count
            counts.tasks_ended += count
            counts.tasks_failed += count
            self.runtime.log.warn("group {tid} from {peer} not created: {e}", tid=tid, peer=proto._peer(), e=e)
            # One error for every task of the group (pickled once: the same object).
            failed = plain_outcome(error_outcome(e, ""))
            proto.queue_call(commands.GroupEnded, task=tid, start=0, outcomes=group_failed(count, failed))
            return
        self.runtime.counts.tasks_started += count
        group = ServerGroup(self, proto, tid, fn, arglist, single)
        if self.output is not None:
            group.sink = self.output.sink(proto, getattr(fn, "__name__", "task"))
        self.starter.enqueue(group)

    def end_if_stuck(self, task, ended, grace):
        """
        C{task} (a task or group) is being terminated (C{ended} fires once it
        has ended): if it is still running C{grace} seconds from now - a plain
        function in a C call or a sleep, which no exception interrupts - this
        process ends, what is queued for other processes written first; the
        node starts a fresh one, and the clients of the tasks that were here
        see them abandoned.
        """
        if ended.called:
            return
        call = self.reactor.callLater(grace, self._stuck, task)

        def done(result):
            if call.active():
                call.cancel()
            return result

        ended.addBoth(done)

    def _stuck(self, task):
        log.warn("task {t} did not end within its grace after being terminated: server {i} ends, its node "
                 "starts a fresh one", t=task.tid, i=self.index)
        self.runtime.flush_links()
        os._exit(STUCK_EXIT)

    @defer.inlineCallbacks
    def close(self, terminate):
        """
        End every task (with C{terminate}: terminate them, reported as
        terminated; else wait for them), flush, and leave.
        """
        self.closing = True
        tasks = list(self.runtime.tasks.values()) + list(self.runtime.groups.values())
        if terminate:
            ends = [t.terminate() for t in tasks]
        else:
            ends = [t.result() for t in tasks]
        if ends:
            timeout = self.reactor.callLater(3, lambda: [d.cancel() for d in ends if not d.called]) if terminate else None
            yield defer.DeferredList(ends, consumeErrors=True)
            if timeout is not None and timeout.active():
                timeout.cancel()
        self.runtime.keys.clear()
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
        # The last counts reach the node before this process ends (bounded wait).
        if self.control is not None:
            report = self.control.report_counts()
            call = self.reactor.callLater(2, report.cancel)
            yield report
            if call.active():
                call.cancel()
        self.reactor.callLater(0, self._exit)

    def _exit(self):
        os._exit(0)


#: Options of a server process (the node writes its command line): name -> (type, default); bool = a flag.
_OPTIONS = {
    "index": (int, None), "host": (str, "127.0.0.1"), "port": (int, 0), "announce": (str, None),
    "parent": (int, 0), "debug": (bool, False), "max_file_size": (int, 0), "certfile": (str, None),
    "keyfile": (str, None), "cafile": (str, None), "sched_normal": (bool, False), "twisted_tls": (bool, False),
    "log_format": (str, "text"),
}


def parse_args(argv):
    """
    The options in C{argv} (C{--name value} or C{--flag}) as a namespace;
    ValueError for anything else. (Not argparse: it and gettext cost every
    server process memory and start-up time for a command line only the node
    writes.)
    """
    values = {name: default for name, (kind, default) in _OPTIONS.items()}
    items = iter(argv)
    for arg in items:
        name = arg[2:] if arg.startswith("--") else None
        if name not in _OPTIONS:
            raise ValueError("unknown argument %r" % (arg,))
        kind = _OPTIONS[name][0]
        if kind is bool:
            values[name] = True
            continue
        value = next(items, None)
        if value is None:
            raise ValueError("--%s needs a value" % (name,))
        try:
            values[name] = kind(value)
        except ValueError:
            raise ValueError("--%s: bad value %r" % (name, value))
    if values["index"] is None:
        raise ValueError("--index is required")
    return types.SimpleNamespace(**values)


def main(argv=None):
    try:
        args = parse_args(sys.argv[1:] if argv is None else argv)
    except ValueError as e:
        print("python -m dispycos.server: %s" % (e,), file=sys.stderr)
        sys.exit(2)
    die_with_parent(args.parent)
    heap = Heap()
    heap.keep_large_blocks()
    sys.setswitchinterval(0.001)
    if not args.sched_normal:
        batch_scheduling()
    signal.signal(signal.SIGINT, signal.SIG_IGN)

    from twisted.internet import reactor, stdio
    from twisted.python.threadpool import ThreadPool

    from dispycos import _lean

    _lean.refuse_reactor_tls()  # tasks needing Twisted's TLS are told how to get it

    # (JSON records on stderr: the node logs them as its own, see ServerSlot.)
    start_logging(args.debug, log_format=args.log_format)

    # No worker thread until a plain function needs one (then it stays): an
    # idle thread costs a server ~0.2 MiB of its own, and most never run one.
    pool = ThreadPool(minthreads=0, maxthreads=64, name="dispycos-tasks")
    pool.start()
    reactor.addSystemEventTrigger("during", "shutdown", pool.stop)
    runtime = Runtime(reactor, host=args.host, port=args.port, announce=args.announce, threadpool=pool)
    if args.certfile or args.cafile:
        from dispycos.protocol.tls import TLS  # lazily: pyOpenSSL only for a TLS server

        runtime.tls = TLS(args.certfile, args.keyfile, args.cafile)
    runtime.listen()
    runtime.max_file_size = args.max_file_size
    set_runtime(runtime)
    server = Server(reactor, runtime, args.index, heap)
    server.control = ServerControl(server)
    stdio.StandardIO(server.control, stdin=_FD_IN, stdout=_FD_OUT)
    # Twisted's signal handlers reap the programs tasks start (SIGCHLD); the
    # node, not Ctrl-C at a terminal, decides when a server ends.
    reactor.callWhenRunning(signal.signal, signal.SIGINT, signal.SIG_IGN)
    reactor.run()
