# -*- test-case-name: tests.test_core -*-
"""
The client API: L{Computation} packages code, schedules it and creates remote
tasks. Every method returns a Deferred.
"""

import inspect
import os
import tempfile
import time
import types

from twisted.internet import defer
from twisted.logger import Logger

from zope.interface import implementer

from dispycos import config, metrics, serialize
from dispycos.client.attempts import TaskControl, TaskOptions
from dispycos.client.mapping import MapRun, run_results
from dispycos.client.schedclient import RemoteScheduler
from dispycos.errors import ComputationClosed, NoServerError, PicklingError, ScheduleError
from dispycos.interfaces import IComputationEvents
from dispycos.paths import resolve_secret
from dispycos.peer.outcomes import ABANDONED, OK, outcome_result
from dispycos.peer.refs import RemoteTask
from dispycos.peer.runtime import runtime_for
from dispycos.peer.tasks import Task
from dispycos.protocol.auth import CLIENT, key_from_secret
from dispycos.protocol.discovery import find_scheduler
from dispycos.protocol.streams import send_file
from dispycos.protocol.tls import TLS
from dispycos.scheduler.allocate import DispycosNodeAllocate, allocate_cpus
from dispycos.scheduler.core import private_scheduler
from dispycos.status import DispycosStatus, Location, Status, TaskInfo

_ANY_CALLABLE = (types.FunctionType, type)


def _component_name(obj):
    return getattr(obj, "__qualname__", None) or getattr(obj, "__name__", None)


def _result_of(rtask):
    return rtask.result()


#: An option of C{options()} not given (keep the current value).
_KEEP = object()


class _TaskMethods:
    """
    The methods that create tasks, shared by a L{Computation} (with its
    default options) and the views C{options()} returns (with theirs).
    """

    def options(self, retries=_KEEP, retry_on=_KEEP, timeout=_KEEP):
        """
        A view of this computation whose C{run*}, C{map} and C{run_results}
        methods use these options instead (those not given stay): C{retries}
        (attempts after the first for a task lost with its server or node,
        or that raised a C{retry_on} type), C{retry_on} (exception classes or
        names), C{timeout} (seconds a task may run; then it is terminated and
        C{result()} errbacks with L{dispycos.TaskTimeout})::

            rtask = await comp.options(retries=2, timeout=60).run(compute, 5)
        """
        changes = {name: value for name, value in
                   (("retries", retries), ("retry_on", retry_on), ("timeout", timeout)) if value is not _KEEP}
        return TaskOptionsView(self._computation, self._options.replace(**changes))

    def run_at(self, where, fn, *args, **kwargs):
        """
        Deferred firing with a L{RemoteTask} for C{fn(*args, **kwargs)} on node
        C{where} (IP or name) or server C{where} (a L{Location}), once it has
        no CPU task. C{cancel()} before it fires takes the task off the queue.
        """
        return self._computation._run(where, fn, args, kwargs, True, self._options)

    def run(self, fn, *args, **kwargs):
        """
        Deferred firing with a L{RemoteTask} on the least-loaded free server
        (C{cancel()} before it fires takes the task off the queue).
        """
        return self._computation._run(None, fn, args, kwargs, True, self._options)

    def run_async_at(self, where, fn, *args, **kwargs):
        """As L{run_at}, but the task does not count as a CPU task."""
        return self._computation._run(where, fn, args, kwargs, False, self._options)

    def run_async(self, fn, *args, **kwargs):
        """As L{run}, but the task does not count as a CPU task."""
        return self._computation._run(None, fn, args, kwargs, False, self._options)

    def run_result_at(self, where, fn, *args, **kwargs):
        """Deferred firing with the result of C{fn} run at C{where}."""
        return self.run_at(where, fn, *args, **kwargs).addCallback(_result_of)

    def run_result(self, fn, *args, **kwargs):
        """Deferred firing with the result of C{fn} run on some server."""
        return self.run(fn, *args, **kwargs).addCallback(_result_of)

    def run_results(self, fn, iterable, progress=False):
        """
        Deferred firing with the list of results of C{fn} over C{iterable}, in
        input order (a tuple item is the argument list). Errbacks with the
        first failure. Tasks go to servers in batches (see L{map}). With
        C{progress}, a progress bar on stderr when it is a terminal.
        """
        comp = self._computation
        try:
            comp._check_open()
        except ComputationClosed:
            return defer.fail()
        return run_results(comp, fn, iterable, self._options, progress)

    def map(self, fn, iterable, ordered=True, window=None, progress=False):
        """
        An async iterator of the results of C{fn} over C{iterable} (a tuple
        item is the argument list): in input order, or as they come when not
        C{ordered}. The input is read lazily and at most C{window} tasks
        (default: 4 x servers x batch size) are submitted and not yet yielded;
        tasks go to servers in batches sized from their measured durations,
        each batch one CPU task. The first failure ends the iteration with
        that error (the map's other tasks are terminated). With retries, the
        unfinished tasks of a lost batch run again (each result comes once).
        With C{progress}, a progress bar on stderr when it is a terminal::

            async for result in comp.map(compute, range(1000000)):
                ...
        """
        comp = self._computation
        comp._check_open()
        return MapRun(comp, fn, iterable, ordered=ordered, window=window, options=self._options,
                      progress=progress)

    # pycos names
    rtask_at = run_at
    rtask = run
    io_rtask_at = run_async_at
    io_rtask = run_async


class TaskOptionsView(_TaskMethods):
    """
    A computation with other task options (what C{Computation.options()}
    returns): its C{run*}, C{map} and C{run_results} methods create the
    computation's tasks with these options.
    """

    def __init__(self, computation, options):
        self._computation = computation
        self._options = options

    @property
    def computation(self):
        """The L{Computation} this is a view of."""
        return self._computation

    def __repr__(self):
        return "<%r of %r>" % (self._options, self._computation)


class Computation(_TaskMethods):
    """
    A computation: code (C{components}) that runs as tasks on servers.

    @param components: functions (generator, coroutine or plain), classes,
        modules and paths of files. Functions and classes travel with
        cloudpickle; modules and files are copied to every node.
    @param status_task: a local L{Task} (messages go to its mailbox) or a
        callable, given every L{DispycosStatus}.
    @param retries: how many times a task lost with its server or node (or
        that raised a C{retry_on} type) runs again, on another server when
        there is one (default 0). A retried task may have run partly: its
        side effects happen at least once.
    @param retry_on: exception classes (or their names) that also retry a
        task that raised them, within C{retries}.
    @param timeout: seconds a task may run; then it is terminated (a plain
        function by replacing its server process if it does not end within a
        second) and C{result()} errbacks with L{dispycos.TaskTimeout}.
    @param forward_output: what tasks print (their stdout and stderr lines)
        appears on this process's stdout and stderr, each line prefixed
        C{[task-name@server] } (see L{dispycos.output}).
    """

    log = Logger()

    def __init__(self, components, pulse_interval=10, node_allocations=(), status_task=None,
                 node_setup=None, server_setup=None, disable_nodes=False, disable_servers=False,
                 peers_communicate=False, secret="", certfile=None, keyfile=None, cafile=None,
                 dest_path=None, nodes=None, reactor=None, retries=0, retry_on=(), timeout=None,
                 forward_output=False, **unknown):
        if unknown:
            raise TypeError("Computation() got unexpected arguments: %s" % ", ".join(sorted(unknown)))
        self._options = TaskOptions(retries, retry_on, timeout)
        if not isinstance(components, (list, tuple)):
            components = [components]
        if not (config.MinPulseInterval <= pulse_interval <= config.MaxPulseInterval):
            raise ValueError("pulse_interval must be between %s and %s" % (config.MinPulseInterval, config.MaxPulseInterval))
        if status_task is not None and not (isinstance(status_task, Task) or callable(status_task)):
            raise TypeError("status_task must be a Task or a callable, not %r" % (status_task,))
        self.pulse_interval = pulse_interval
        self.node_allocations = []
        for alloc in list(node_allocations or ()) + list(nodes or ()):
            if isinstance(alloc, str):
                alloc = DispycosNodeAllocate(alloc)
            if not isinstance(alloc, DispycosNodeAllocate):
                raise TypeError("node_allocations items must be DispycosNodeAllocate or host strings, not %r" % (alloc,))
            self.node_allocations.append(alloc)
        self.status_task = status_task
        self.node_setup = node_setup
        self.server_setup = server_setup
        self.disable_nodes = disable_nodes
        self.disable_servers = disable_servers
        self.peers_communicate = peers_communicate
        self.secret = secret
        self.certfile, self.keyfile, self.cafile = certfile, keyfile, cafile
        self.dest_path = dest_path
        self.forward_output = bool(forward_output)
        #: Its tasks, counted here (its private scheduler's L{metrics.Counts} once scheduled).
        self._counts = metrics.Counts()
        self._code = {}
        self._files = []
        for item in components:
            self._add_component(item)
        for fn in (node_setup, server_setup):
            if fn is not None:
                if not callable(fn):
                    raise TypeError("setup function %r is not callable" % (fn,))
                self._code.setdefault(_component_name(fn), fn)
        for obj in self._code.values():
            serialize.register_by_value(obj)
        try:
            self._components_blob = serialize.dumps(self._code, "components")
        except PicklingError as e:
            raise TypeError("components cannot be pickled: %s" % e) from e
        self.id = None
        self.key = None
        self.reactor = reactor
        self._events = ComputationEvents(self)
        self._scheduler = None
        self._pending_schedule = None
        self._active = False
        self._closing = False
        self._closed = False
        self._tasks = {}
        self._code_refs = {}
        self._ready_timer = None
        self._exit_trigger = None
        self._scheduler_gone = None

    def _add_component(self, item):
        if isinstance(item, str):
            path = os.path.abspath(item)
            if not os.path.isfile(path):
                raise ValueError("component %r is not a readable file" % (item,))
            self._add_file(path)
        elif isinstance(item, types.ModuleType):
            path = getattr(item, "__file__", None)
            if not path or not path.endswith((".py", ".pyc")):
                raise ValueError("module component %r has no Python source file" % (item.__name__,))
            if path.endswith(".pyc"):
                path = path[:-1]
            self._add_file(os.path.abspath(path), item.__name__.rpartition(".")[0].replace(".", os.sep))
        elif isinstance(item, _ANY_CALLABLE) or inspect.isroutine(item):
            name = _component_name(item)
            if not name:
                raise ValueError("component %r has no name" % (item,))
            self._code[name] = item
        else:
            raise TypeError("invalid component %r: give functions, classes, modules or file paths" % (item,))

    def _add_file(self, path, subdir=None):
        cwd = os.getcwd()
        if subdir is None:
            rel = os.path.relpath(path, cwd)
            name = rel if not rel.startswith("..") else os.path.basename(path)
        else:
            name = os.path.join(subdir, os.path.basename(path)) if subdir else os.path.basename(path)
        if any(n == name for n, _ in self._files):
            return
        if not os.access(path, os.R_OK):
            raise ValueError("component %r is not readable" % (path,))
        # Streamed to every node when the computation is scheduled (read then, not held here).
        self._files.append((name, path))

    def _setup_names(self):
        """Component names of C{node_setup} and C{server_setup} (or None)."""
        return (_component_name(self.node_setup) if self.node_setup else None,
                _component_name(self.server_setup) if self.server_setup else None)

    def _allocate(self, info):
        """How many servers of the node described by C{info} to use."""
        return allocate_cpus(self.node_allocations, info)

    # -- status -------------------------------------------------------------------

    def _status(self, status, info=None):
        if self.status_task is not None:  # (no message built per task for nobody)
            self._status_raw(DispycosStatus(status, info))

    def _status_raw(self, msg):
        target = self.status_task
        if target is None or self._closed:
            return
        try:
            if isinstance(target, Task):
                target.send(msg)
            else:
                target(msg)
        except Exception:
            self.log.failure("status_task failed on {msg}", msg=msg)

    # -- scheduling -------------------------------------------------------------

    def schedule(self, location=None, timeout=None):
        """
        Deferred firing with 0 once this computation is active and a server
        is ready; errbacks with L{ScheduleError} (see the manual).
        """
        if self._active or self._pending_schedule is not None:
            return defer.fail(ScheduleError("computation is already scheduled"))
        if self._closed:
            return defer.fail(ScheduleError("computation is closed"))
        reactor = self._reactor()
        scheduler = private_scheduler(reactor) if location is None else None
        if scheduler is None:
            if location is None:
                return self._find_and_schedule(timeout)
            try:
                where = Location.parse(location, config.SchedulerPort)
            except (TypeError, ValueError):
                return defer.fail(ScheduleError("invalid scheduler location %r" % (location,)))
            tls = TLS(self.certfile, self.keyfile, self.cafile)
            if tls.cert is not None:
                runtime = runtime_for(reactor, create=True)
                if runtime.tls is None and not runtime.links:
                    runtime.tls = tls  # servers of a TLS cluster speak TLS too
                    runtime.rebind(runtime.host)
            scheduler = RemoteScheduler(where, self.secret, reactor=reactor, tls=tls if tls.enabled else None)
        self._scheduler = scheduler
        self.reactor = scheduler.reactor
        self.runtime = scheduler.runtime
        self._counts = getattr(scheduler, "counts", None) or self._counts
        if self.forward_output:
            from dispycos.peer.output import write_output  # lazily: forward_output only

            self.runtime.task_output = write_output
        # What servers must know of the computation travels with its code.
        settings = {"peers_communicate": bool(self.peers_communicate), "client": str(self.runtime.location),
                    "forward_output": self.forward_output}
        self._components_blob = serialize.dumps(dict(self._code, __dispycos__=settings), "components")
        d = self._pending_schedule = defer.Deferred()

        def refused(f):
            self._schedule_failed(f.value if isinstance(f.value, ScheduleError)
                                  else ScheduleError("cannot submit to the scheduler: %s" % f.getErrorMessage()))

        if timeout is not None:
            call = self.reactor.callLater(timeout, lambda: self._schedule_failed(
                ScheduleError("not scheduled within %s s%s" % (timeout, self._node_report()))))
            d.addBoth(lambda r: (call.cancel() if call.active() else None, r)[1])
        self._exit_trigger = self.reactor.addSystemEventTrigger("before", "shutdown", self._close_at_exit)
        defer.maybeDeferred(scheduler.submit, self._events).addErrback(refused)
        return d

    def _reactor(self):
        if self.reactor is None:
            from twisted.internet import reactor  # the public API's default

            self.reactor = reactor
        return self.reactor

    @defer.inlineCallbacks
    def _find_and_schedule(self, timeout):
        reactor = self._reactor()
        runtime = runtime_for(reactor, create=True)
        key = key_from_secret(resolve_secret(self.secret), CLIENT)
        location = yield find_scheduler(reactor, key, runtime.host or "")
        if location is None:
            raise ScheduleError(
                "no scheduler: none answered on the local network; create dispycos.Scheduler(nodes=[...]) "
                "in this process, use dispycos.LocalCluster, or give the location of a shared scheduler")
        result = yield self.schedule(location, timeout)
        return result

    def _node_report(self):
        return self._scheduler.node_report() if self._scheduler else ""

    def _activated(self):
        self._active = True
        if self.dest_path is None:
            # A fresh directory, under the private scheduler's dest_path when it has one.
            parent = getattr(self._scheduler, "dest_path", None)
            if parent:
                os.makedirs(parent, exist_ok=True)
            self.dest_path = tempfile.mkdtemp(prefix="dispycos-client-", dir=parent or None)
            self._own_dest = True
        os.makedirs(self.dest_path, exist_ok=True)
        self.runtime.file_roots[("client", self.id)] = self.dest_path
        if self.disable_nodes or self.disable_servers:
            # Held nodes/servers wait for enable_node/enable_server: active is enough.
            self._server_ready()
            return
        self._ready_timer = self.reactor.callLater(60, lambda: self._schedule_failed(
            ScheduleError("no server ready 60 s after activation%s" % self._node_report())))

    def _server_ready(self):
        if self._ready_timer is not None and self._ready_timer.active():
            self._ready_timer.cancel()
        d, self._pending_schedule = self._pending_schedule, None
        if d is not None:
            d.callback(0)

    def _schedule_failed(self, exc):
        d, self._pending_schedule = self._pending_schedule, None
        if d is None:
            return
        if self._ready_timer is not None and self._ready_timer.active():
            self._ready_timer.cancel()
        scheduler = self._scheduler
        self._active = False
        self._closed = True
        self._remove_exit_trigger()
        self._drop_own_dest()
        if scheduler is not None:
            scheduler.release(self._events)
        d.errback(exc)

    def _scheduler_lost(self, exc):
        """The shared scheduler is gone: pending Deferreds errback, nothing hangs."""
        if self._pending_schedule is not None:
            self._schedule_failed(ScheduleError(str(exc)))
            return
        self._scheduler_gone = exc

    def _closed_by_scheduler(self, reason):
        if self._closed:
            return
        self._closing = True  # (no task runs again)
        for rtask in list(self._tasks.values()):
            self.runtime._settle(rtask, (ABANDONED, "computation closed by the scheduler: %s" % reason))
        self._active = False
        self._remove_exit_trigger()
        self._status(Status.ComputationClosed, self.id)
        self._closed = True
        self._drop_own_dest()

    def _remove_exit_trigger(self):
        if self._exit_trigger is not None:
            try:
                self.reactor.removeSystemEventTrigger(self._exit_trigger)
            except (ValueError, KeyError):
                pass
            self._exit_trigger = None

    def _close_at_exit(self):
        self._exit_trigger = None
        if self._active and not self._closed:
            return self.close(terminate=True)

    # -- remote tasks ---------------------------------------------------------------

    def _function_ref(self, fn):
        """
        How a task names C{fn}: C{(name, None)} for a component, else
        C{(code id, (code id, pickled function))}: the code travels once per
        connection (L{commands.DefineCode}) and tasks name it by its id.
        """
        name = _component_name(fn)
        if name is not None and self._code.get(name) is fn:
            return name, None
        if not callable(fn):
            raise TypeError("%r is not a function" % (fn,))
        known = self._code_refs.get(id(fn))
        if known is None or known[0] is not fn:
            serialize.register_by_value(fn)
            blob = serialize.dumps(fn, "function %s" % (name,))
            cid = len(self._code_refs) + 1
            known = self._code_refs[id(fn)] = (fn, (cid, blob))
        return known[1][0], known[1]

    def _check_open(self):
        if not self._active or self._closing:
            raise ComputationClosed("computation is not scheduled" if not self._closing else "computation is closing")
        if self._scheduler_gone is not None:
            raise ComputationClosed("the scheduler is gone: %s" % (self._scheduler_gone,))

    @property
    def _computation(self):
        return self

    @property
    def retries(self):
        """Default retries of this computation's tasks."""
        return self._options.retries

    @property
    def retry_on(self):
        """Default C{retry_on} of this computation's tasks."""
        return self._options.retry_on

    @property
    def timeout(self):
        """Default timeout of this computation's tasks (seconds, or None)."""
        return self._options.timeout

    def _takes_retries(self):
        """Whether a task may run again now (not while the computation closes)."""
        return self._active and not self._closing and not self._closed and self._scheduler_gone is None

    def _run(self, where, fn, args, kwargs, cpu, options):
        # Explicit callbacks, no generator: this is the per-task path.
        if options.plain:
            options = None
        try:
            self._check_open()
            ref, code = self._function_ref(fn)
            for obj in args:
                serialize.register_by_value(type(obj))
            for obj in kwargs.values():
                serialize.register_by_value(type(obj))
            # In parts: a large bytes argument is streamed from where it is, not copied.
            blob = serialize.dumps_parts((ref, args, kwargs), "arguments of %s" % (_component_name(fn),))
            if len(blob) == 1:
                blob = blob[0]
            if where is not None and not isinstance(where, Location):
                where = str(where)
            placed = self._scheduler.place(self._events, cpu, where)
        except Exception:
            return defer.fail()
        if isinstance(placed, defer.Deferred):
            return placed.addCallback(self._send_task, fn, blob, code, args, kwargs, cpu, options, where)
        return defer.succeed(self._send_task(placed, fn, blob, code, args, kwargs, cpu, options, where))

    def _send_task(self, entry, fn, blob, code, args, kwargs, cpu, options=None, where=None):
        """
        Create the task on C{entry}'s server (one-way): its L{RemoteTask} at
        once. With C{options} (retries, a timeout) a L{TaskControl} runs its
        attempts.
        """
        runtime = self.runtime
        tid = runtime.next_remote_tid()
        rtask = RemoteTask(entry.location, tid, getattr(fn, "__name__", "task"), computation=self)
        rtask._entry = entry
        rtask._cpu = cpu
        self._tasks[tid] = rtask
        self._counts.tasks_started += 1
        runtime.expect(rtask)
        if self.status_task is not None:  # no record per task for nobody
            rtask.info = TaskInfo(rtask, args, kwargs, time.time())
            self._status(Status.TaskCreated, rtask.info)
        if options is not None:
            control = rtask._control = TaskControl(self, rtask, options, blob, code, args, kwargs, cpu, where)
            runtime.send_task(entry.location, tid, blob, code)
            control.sent()
            return rtask
        runtime.send_task(entry.location, tid, blob, code)
        return rtask

    def _task_ended(self, rtask):
        self._tasks.pop(rtask.tid, None)
        counts = self._counts
        counts.tasks_ended += 1
        if rtask.outcome[0] != OK:
            counts.ended_badly(rtask.outcome[0])
        entry = rtask._entry
        if self._scheduler is not None and entry is not None:
            self._scheduler.task_done(entry, rtask._cpu)
        info = rtask.info
        if info is not None and self.status_task is not None:
            info.end_time = time.time()
            kind, value = rtask.outcome
            if kind == OK:
                info.result = value
            else:
                info.exception = outcome_result(rtask.outcome, rtask).value
            self._status(Status.TaskFinished, info)

    # -- control of nodes and servers ------------------------------------------------

    def _control(self, action, target, args=None, terminate=False, restart=False):
        if not self._active or self._closed:
            return defer.fail(ComputationClosed("computation is not scheduled"))
        blob = None
        if args:
            for a in args:
                serialize.register_by_value(type(a))
            try:
                blob = serialize.dumps(tuple(args), "arguments of %s" % action)
            except PicklingError as e:
                return defer.fail(e)
        if isinstance(target, Location):
            target = str(target)
        return self._scheduler.control(self._events, action, str(target), blob, terminate, restart)

    def enable_node(self, ip, *setup_args):
        """Set up a held node (C{disable_nodes}) with C{node_setup(*setup_args)}, or resume it."""
        return self._control("enable_node", ip, setup_args)

    def enable_server(self, location, *setup_args):
        """Set up a held server (C{disable_servers}) with C{server_setup(*setup_args)}, or resume it."""
        return self._control("enable_server", location, setup_args)

    def suspend_node(self, ip):
        """Place no new tasks on node C{ip} (running ones go on)."""
        return self._control("suspend_node", ip)

    def resume_node(self, ip):
        """Place tasks on node C{ip} again."""
        return self._control("resume_node", ip)

    def suspend_server(self, location):
        """Place no new tasks on server C{location}."""
        return self._control("suspend_server", location)

    def resume_server(self, location):
        """Place tasks on server C{location} again."""
        return self._control("resume_server", location)

    def close_server(self, location, terminate=False, restart=False):
        """
        Close server C{location} once its tasks end (terminate them when
        C{terminate}); with C{restart} a fresh server process takes its place.
        """
        return self._control("close_server", location, terminate=terminate, restart=restart)

    def restart_server(self, location, terminate=False):
        """C{close_server(location, terminate, restart=True)}."""
        return self.close_server(location, terminate, restart=True)

    def close_node(self, ip, terminate=False):
        """Release node C{ip} from this computation (its servers close)."""
        return self._control("close_node", ip, terminate=terminate)

    # -- files -------------------------------------------------------------------------

    @defer.inlineCallbacks
    def send_file(self, where, path, dir=None, overwrite=False):
        """
        Send the file at C{path} to a node (C{where}: its IP address; the file
        lands in the node directory, C{..} of every server) or to a server
        (C{where}: its L{Location}; the file lands in its directory), in
        sub-directory C{dir}. Fires with the absolute path where it landed.
        """
        if not self._active or self._closed:
            raise ComputationClosed("computation is not scheduled")
        if not os.path.isfile(path):
            raise ValueError("%r is not a file" % (path,))
        servers = yield self.servers()
        if isinstance(where, Location):
            if where not in servers:
                raise NoServerError("no server %s in this computation" % (where,))
            target, dest = where, "server"
        else:
            at = [s for s in servers if s.addr == str(where)]
            if not at:
                # A node held for enable_node has no servers yet: a private
                # scheduler sends the file over its own link to that node.
                proto = self._held_node_link(str(where))
                if proto is None:
                    raise NoServerError("no node %s in this computation" % (where,))
                landed = yield send_file(proto, path, "node", subdir=dir or "", overwrite=overwrite,
                                         computation=self.id)
                return landed
            target, dest = at[0], "node"
        proto = yield self.runtime.connection(target)
        landed = yield send_file(proto, path, dest, subdir=dir or "", overwrite=overwrite, computation=self.id)
        return landed

    def _held_node_link(self, where):
        return self._scheduler.held_node_link(self._events, where)

    # -- queries -----------------------------------------------------------------------

    def nodes(self):
        """Deferred firing with the addresses of the nodes in use."""
        if not self._active:
            return defer.succeed([])
        return self._scheduler.nodes_of(self._events)

    def servers(self):
        """Deferred firing with the L{Location}s of the servers in use."""
        if not self._active:
            return defer.succeed([])
        return self._scheduler.servers_of(self._events)

    def tasks(self, where=None):
        """
        Deferred firing with the L{RemoteTask}s of this computation still
        running: all of them, or those on node C{where} (its IP address or
        name) or on server C{where} (a L{Location}).
        """
        running = [t for t in self._tasks.values() if t.outcome is None]
        if where is None:
            return defer.succeed(running)
        if isinstance(where, Location):
            return defer.succeed([t for t in running if t.location == where])
        where = str(where)
        return defer.succeed([t for t in running
                              if where in (t.location.addr, getattr(t._entry, "node_addr", None),
                                           getattr(t._entry, "node_name", None))])

    # -- closing --------------------------------------------------------------------

    @defer.inlineCallbacks
    def close(self, await_async=False, terminate=False):
        """
        Close the computation: wait for its CPU tasks (and asynchronous ones
        when C{await_async}), terminate the rest (every task when
        C{terminate}), release the nodes. Fires with None.
        """
        if self._closed or self._closing:
            return None
        if self._pending_schedule is not None:
            self._schedule_failed(ScheduleError("computation closed before it was scheduled"))
            return None
        if not self._active:
            return None
        self._closing = True
        self._remove_exit_trigger()
        tasks = list(self._tasks.values())
        if terminate:
            waits = [t.terminate() for t in tasks]
        else:
            waits = [t.result() for t in tasks if t._cpu or await_async]
        yield defer.DeferredList(waits, consumeErrors=True)
        leftovers = [t.terminate() for t in self._tasks.values()]
        if leftovers:
            yield defer.DeferredList(leftovers, consumeErrors=True)
        yield self._scheduler.release(self._events, terminate=True)
        for rtask in list(self._tasks.values()):
            self.runtime._settle(rtask, (ABANDONED, "computation closed"))
        self._active = False
        self._status(Status.ComputationClosed, self.id)
        self._closed = True
        self._drop_own_dest()
        return None

    def _drop_own_dest(self):
        """Remove the directory made for files coming back, if none came."""
        if getattr(self, "_own_dest", False):
            self._own_dest = False
            try:
                os.rmdir(self.dest_path)
            except OSError:
                pass


Client = Computation


@implementer(IComputationEvents)
class ComputationEvents:
    """A L{Computation} as its scheduler sees it: what the scheduler tells it, and asks of it."""

    def __init__(self, computation):
        self._comp = computation

    @property
    def id(self):
        return self._comp.id

    @id.setter
    def id(self, value):
        self._comp.id = value

    @property
    def key(self):
        return self._comp.key

    @key.setter
    def key(self, value):
        self._comp.key = value

    @property
    def status_task(self):
        return self._comp.status_task

    @status_task.setter
    def status_task(self, value):
        self._comp.status_task = value

    pulse_interval = property(lambda self: self._comp.pulse_interval)
    disable_nodes = property(lambda self: self._comp.disable_nodes)
    disable_servers = property(lambda self: self._comp.disable_servers)
    components = property(lambda self: self._comp._components_blob)
    files = property(lambda self: self._comp._files)
    allocations = property(lambda self: bool(self._comp.node_allocations))

    def scheduling(self):
        return self._comp._pending_schedule is not None

    def activated(self):
        self._comp._activated()

    def server_ready(self):
        self._comp._server_ready()

    def schedule_failed(self, exc):
        self._comp._schedule_failed(exc)

    def closed_by_scheduler(self, reason):
        self._comp._closed_by_scheduler(reason)

    def scheduler_lost(self, exc):
        self._comp._scheduler_lost(exc)

    def status(self, status, info=None, exception=None):
        if exception is None:
            self._comp._status(status, info)
        else:
            self._comp._status_raw(DispycosStatus(status, info, exception))

    def status_message(self, msg):
        self._comp._status_raw(msg)

    def allocate(self, info):
        return self._comp._allocate(info)

    def setup_names(self):
        return self._comp._setup_names()

    def close(self, terminate=False):
        return self._comp.close(terminate=terminate)
