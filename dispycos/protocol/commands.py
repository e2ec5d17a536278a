# -*- test-case-name: tests.test_protocol -*-
"""
Every AMP command of dispycos, grouped by link.

Session commands run first on every TCP connection; until they succeed no
other command is dispatched (see L{dispycos.protocol.base}). Payload
arguments are L{BigBytes}: raw bytes that responders unpickle explicitly.
"""

import json

from twisted.protocols import amp

from .. import errors
from .arguments import BigBytes


class JSON(BigBytes):
    """A JSON document (UTF-8), for metadata; never pickle."""

    def toBox(self, name, strings, objects, proto):
        key = amp._wireNameToPythonIdentifier(name)
        if key in objects:
            objects[key] = json.dumps(objects[key]).encode("utf-8")
        super().toBox(name, strings, objects, proto)

    def fromBox(self, name, strings, objects, proto):
        super().fromBox(name, strings, objects, proto)
        key = amp._wireNameToPythonIdentifier(name)
        if objects.get(key) is not None:
            objects[key] = json.loads(objects[key].decode("utf-8"))


_common_errors = {
    errors.UnknownTaskError: b"UNKNOWN_TASK",
    errors.PayloadTooLarge: b"TOO_LARGE",
    errors.ComputationClosed: b"CLOSED",
    errors.NoServerError: b"NO_SERVER",
    errors.SetupError: b"SETUP",
    errors.PicklingError: b"PICKLING",
    errors.DispycosError: b"DISPYCOS",
}

# -- session (every TCP link) ----------------------------------------------


class Hello(amp.Command):
    """Connector → listener: start the handshake, with the connector's nonce."""

    arguments = [
        (b"version", amp.Integer()),
        (b"role", amp.Unicode()),
        (b"computation", amp.Unicode()),
        (b"location", amp.Unicode()),
        (b"nonce", amp.String()),
    ]
    response = [
        (b"version", amp.Integer()),
        (b"location", amp.Unicode()),
        (b"nonce", amp.String()),
        (b"proof", amp.String()),
    ]
    fatalErrors = {errors.AuthenticationError: b"AUTH"}


class Authenticate(amp.Command):
    """Connector → listener: the connector's proof; success opens the session."""

    arguments = [(b"proof", amp.String())]
    response = []
    fatalErrors = {errors.AuthenticationError: b"AUTH"}


# -- scheduler ⇄ node --------------------------------------------------------


class NodeInfo(amp.Command):
    """Scheduler → node: who are you and what do you have?"""

    arguments = []
    response = [
        (b"name", amp.Unicode()),
        (b"cpus", amp.Integer()),
        (b"platform", amp.Unicode()),
        (b"avail", JSON()),
        (b"busy", amp.Boolean()),
    ]


class Reserve(amp.Command):
    """
    Scheduler → node: set up a computation on (some of) the node's servers.
    Answers with the servers' locations once every server is initialized.
    """

    arguments = [
        (b"computation", amp.Unicode()),
        (b"key", amp.String()),
        (b"cpus", amp.Integer()),
        (b"components", BigBytes()),
        (b"files", BigBytes()),
        (b"client", amp.Unicode()),
    ]
    response = [(b"servers", JSON()), (b"node_dir", amp.Unicode())]
    errors = _common_errors


class Release(amp.Command):
    """Scheduler → node: the computation is over; end its tasks, wipe its files."""

    arguments = [(b"computation", amp.Unicode()), (b"terminate", amp.Boolean())]
    response = []
    errors = _common_errors


class Pulse(amp.Command):
    """
    Scheduler → node heartbeat (both sides count the silence): the node
    answers with its free resources.
    """

    arguments = [(b"interval", amp.Float())]
    response = [(b"avail", JSON())]


class ServerEvent(amp.Command):
    """Node → scheduler: a server of the computation died, or is ready again."""

    arguments = [
        (b"computation", amp.Unicode()),
        (b"index", amp.Integer()),
        (b"event", amp.Unicode()),
        (b"location", amp.Unicode()),
    ]
    requiresAnswer = False


# -- peers of one computation (client ⇄ server, server ⇄ server) -------------


class RunTask(amp.Command):
    """
    Create a task on a server: C{function} names a component, or C{code} is
    the pickled function; C{args} is the pickled C{(args, kwargs)}.
    """

    arguments = [
        (b"function", amp.Unicode()),
        (b"code", BigBytes(optional=True)),
        (b"args", BigBytes()),
    ]
    response = [(b"task", amp.Integer()), (b"name", amp.Unicode())]
    errors = _common_errors


class Messages(amp.Command):
    """One-way batch of messages: C{(task id, pickled message)} pairs."""

    arguments = [(b"batch", BigBytes())]
    requiresAnswer = False


class Deliver(amp.Command):
    """Put one message in a task's mailbox and acknowledge it."""

    arguments = [(b"task", amp.Integer()), (b"message", BigBytes())]
    response = []
    errors = _common_errors


class TaskEnded(amp.Command):
    """One-way batch of task outcomes: C{(task id, pickled outcome)} pairs."""

    arguments = [(b"batch", BigBytes())]
    requiresAnswer = False


class WaitTask(amp.Command):
    """Answer with a task's pickled outcome once it has ended."""

    arguments = [(b"task", amp.Integer())]
    response = [(b"outcome", BigBytes())]
    errors = _common_errors


class Terminate(amp.Command):
    """Terminate a task; answers once it has ended."""

    arguments = [(b"task", amp.Integer())]
    response = []
    errors = _common_errors


# -- node ⇄ server (private pipes, no handshake) -----------------------------


class Ready(amp.Command):
    """Server → node: listening on C{port}."""

    arguments = [(b"port", amp.Integer()), (b"pid", amp.Integer())]
    response = []


class Init(amp.Command):
    """Node → server: load a computation's components; become its server."""

    arguments = [
        (b"computation", amp.Unicode()),
        (b"key", amp.String()),
        (b"components", BigBytes()),
        (b"node_dir", amp.Unicode()),
        (b"server_dir", amp.Unicode()),
        (b"location", amp.Unicode()),
    ]
    response = []
    errors = _common_errors


class Close(amp.Command):
    """Node → server: end every task (reporting it terminated) and exit."""

    arguments = [(b"terminate", amp.Boolean())]
    response = []


# -- client ⇄ shared scheduler ----------------------------------------------------


class Submit(amp.Command):
    """Client → scheduler: queue a computation; answers with its id at once."""

    arguments = [
        (b"components", BigBytes()),
        (b"files", BigBytes()),
        (b"options", JSON()),
    ]
    response = [(b"computation", amp.Unicode())]
    errors = _common_errors


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
    ]
    response = [(b"location", amp.Unicode()), (b"node", amp.Unicode())]
    errors = _common_errors


class TaskDone(amp.Command):
    """Client → scheduler: one-way batch of C{(cpu, server location)} of ended tasks."""

    arguments = [(b"batch", BigBytes())]
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
