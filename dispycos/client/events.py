# -*- test-case-name: tests.test_core -*-
"""
L{ComputationEvents}: a computation as its scheduler sees it (the
L{dispycos.interfaces.IComputationEvents} side of the seam).
"""

from zope.interface import implementer

from dispycos.interfaces import IComputationEvents
from dispycos.status import DispycosStatus


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
