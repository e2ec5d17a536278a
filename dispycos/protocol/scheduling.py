# -*- test-case-name: tests.test_shared -*-
"""
The AMP commands between a client and a shared scheduler (C{dispycos}):
submitting and closing a computation, placing its tasks, and the events and
status messages the scheduler sends back.
"""

from twisted.protocols import amp

from dispycos.protocol.arguments import JSON, BigBytes
from dispycos.protocol.commands import _common_errors, _file_errors


class Submit(amp.Command):
    """
    Client → scheduler: stage a computation (its pickled C{components}, which
    the scheduler passes on unread; C{files}: C{[name, size]} of the
    component files the client streams next); answers with its id at once.
    """

    arguments = [
        (b"components", BigBytes()),
        (b"files", JSON()),
        (b"options", JSON()),
    ]
    response = [(b"computation", amp.Unicode())]
    errors = _file_errors


class Enqueue(amp.Command):
    """Client → scheduler: the staged computation's files are all there: queue it."""

    arguments = [(b"computation", amp.Unicode())]
    response = []
    errors = _file_errors


class ComputationEvent(amp.Command):
    """
    Scheduler → client: the computation became C{active} (with its C{key}),
    has a C{ready} server, C{failed} to schedule, or was C{closed}.
    """

    arguments = [
        (b"computation", amp.Unicode()),
        (b"event", amp.Unicode()),
        (b"key", amp.String()),
        (b"reason", amp.Unicode()),
    ]
    requiresAnswer = False


class StatusBatch(amp.Command):
    """Scheduler → client: pickled status messages for the computation's status_task."""

    arguments = [(b"batch", BigBytes())]
    requiresAnswer = False


class Place(amp.Command):
    """Client → scheduler: choose a server for a task (answers once one is free)."""

    arguments = [
        (b"computation", amp.Unicode()),
        (b"cpu", amp.Boolean()),
        (b"where", amp.Unicode()),
        (b"server", amp.Boolean()),
        # Servers to keep off while another exists (a retried task's earlier ones).
        (b"avoid", amp.ListOf(amp.Unicode(), optional=True)),
    ]
    response = [(b"location", amp.Unicode()), (b"node", amp.Unicode())]
    errors = _common_errors


class TaskDone(amp.Command):
    """Client → scheduler: one-way batch of C{(cpu, server location)} of ended tasks."""

    arguments = [(b"batch", BigBytes())]
    requiresAnswer = False


class ServerGone(amp.Command):
    """
    Client → scheduler, one-way: the client's connection to a server of the
    computation was refused or broke (its node may not have said yet that the
    server is gone): the scheduler places nothing more there until the node
    reports the server again.
    """

    arguments = [(b"computation", amp.Unicode()), (b"location", amp.Unicode())]
    requiresAnswer = False


class Query(amp.Command):
    """Client → scheduler: C{nodes} or C{servers} of the computation."""

    arguments = [(b"computation", amp.Unicode()), (b"what", amp.Unicode())]
    response = [(b"result", JSON())]
    errors = _common_errors


class CloseComputation(amp.Command):
    """Client → scheduler: close the computation; answers once its nodes are released."""

    arguments = [(b"computation", amp.Unicode()), (b"terminate", amp.Boolean())]
    response = []
    errors = _common_errors


class ClientPulse(amp.Command):
    """Client → scheduler heartbeat (both sides count the silence)."""

    arguments = [(b"computation", amp.Unicode())]
    response = []


class AllocateNode(amp.Command):
    """Scheduler → client: how many servers of this node the computation uses."""

    arguments = [(b"computation", amp.Unicode()), (b"node", JSON())]
    response = [(b"cpus", amp.Integer())]


class Control(amp.Command):
    """
    Client → shared scheduler: C{enable_node}, C{enable_server}, C{suspend_node},
    C{resume_node}, C{suspend_server}, C{resume_server}, C{close_server} or
    C{close_node} on C{target} (a node address or a server location).
    """

    arguments = [
        (b"computation", amp.Unicode()),
        (b"action", amp.Unicode()),
        (b"target", amp.Unicode()),
        (b"args", BigBytes(optional=True)),
        (b"terminate", amp.Boolean()),
        (b"restart", amp.Boolean()),
    ]
    response = []
    errors = _common_errors
