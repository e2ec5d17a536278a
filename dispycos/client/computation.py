# -*- test-case-name: tests.test_core -*-
"""
The client API: L{Computation} packages code, schedules it and creates remote
tasks. Every method returns a Deferred.
"""

import os
import tempfile
import time

from twisted.internet import defer
from twisted.logger import Logger

from dispycos import config, metrics, serialize
from dispycos.client.attempts import TaskControl, TaskOptions
from dispycos.client.components import collect, component_name, setup_names
from dispycos.client.control import ClusterControl
from dispycos.client.events import ComputationEvents
from dispycos.client.schedclient import RemoteScheduler
from dispycos.client.taskapi import _TaskMethods
from dispycos.errors import ComputationClosed, PicklingError, ScheduleError
from dispycos.paths import resolve_secret
from dispycos.peer.outcomes import ABANDONED, OK, outcome_result
from dispycos.peer.refs import RemoteTask
from dispycos.peer.registry import runtime_for
from dispycos.peer.tasks import Task
from dispycos.protocol.auth import CLIENT, key_from_secret
from dispycos.protocol.discovery import find_scheduler
from dispycos.protocol.tls import TLS
from dispycos.scheduler.allocate import DispycosNodeAllocate, allocate_cpus
from dispycos.scheduler.core import private_scheduler
from dispycos.status import DispycosStatus, Location, Status, TaskInfo

class Computation(_TaskMethods, ClusterControl):
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
        #: Functions and classes by component name; files (name, path) streamed to every node.
        self._code, self._files = collect(components, (node_setup, server_setup))
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

    def _setup_names(self):
        """Component names of C{node_setup} and C{server_setup} (or None)."""
        return setup_names(self.node_setup, self.server_setup)

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
        name = component_name(fn)
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
            if args:
                serialize.register_types_of(args)
            if kwargs:
                serialize.register_types_of(kwargs.values())
            # In parts: a large bytes argument is streamed from where it is, not copied.
            blob = serialize.dumps_parts((ref, args, kwargs), "arguments of %s" % (component_name(fn),))
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


    # -- files -------------------------------------------------------------------------


    # -- queries -----------------------------------------------------------------------


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


