# -*- test-case-name: tests.unit.test_protocol -*-
"""
Every AMP command of dispycos, grouped by link, but for those between a
client and a shared scheduler (L{dispycos.protocol.scheduling}).

Session commands run first on every TCP connection; until they succeed no
other command is dispatched (see L{dispycos.protocol.base}). Payload
arguments are L{BigBytes}: raw bytes that responders unpickle explicitly.
"""

from twisted.protocols import amp

from dispycos import errors
from dispycos.protocol.arguments import JSON, BigBytes


_common_errors = {
    errors.UnknownTaskError: b"UNKNOWN_TASK",
    errors.MailboxFull: b"MAILBOX_FULL",
    errors.PayloadTooLarge: b"TOO_LARGE",
    errors.ComputationClosed: b"CLOSED",
    errors.NoServerError: b"NO_SERVER",
    errors.SetupError: b"SETUP",
    errors.PicklingError: b"PICKLING",
    errors.DispycosError: b"DISPYCOS",
}

# Subclasses before DispycosError: AMP reports the first class that matches.
_file_errors = {errors.FileTransferError: b"FILE"}
_file_errors.update(_common_errors)

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


class Prepare(amp.Command):
    """
    Scheduler → node: hold the node for a computation whose component files
    (C{files}: C{[name, size]} pairs) the scheduler streams next, into the
    node directory. Refused (the node is busy, quitting, outside its service
    window, or a file is over its C{--max_file_size}) with the reason.
    """

    arguments = [(b"computation", amp.Unicode()), (b"files", JSON())]
    response = []
    errors = _file_errors


class Reserve(amp.Command):
    """
    Scheduler → node: set up a prepared computation on (some of) the node's
    servers. Answers with the servers' locations once every server is
    initialized.
    """

    arguments = [
        (b"computation", amp.Unicode()),
        (b"key", amp.String()),
        (b"cpus", amp.Integer()),
        (b"components", BigBytes()),
        (b"client", amp.Unicode()),
        (b"node_setup", amp.Unicode(optional=True)),
        (b"server_setup", amp.Unicode(optional=True)),
        (b"setup_args", BigBytes(optional=True)),
        (b"disable_servers", amp.Boolean(optional=True)),
    ]
    response = [(b"servers", JSON()), (b"node_dir", amp.Unicode())]
    errors = _common_errors


class EnableServer(amp.Command):
    """Scheduler → node: run C{server_setup(*args)} on a held server, then use it."""

    arguments = [(b"computation", amp.Unicode()), (b"index", amp.Integer()), (b"args", BigBytes(optional=True))]
    response = []
    errors = _common_errors


class CloseServer(amp.Command):
    """Scheduler → node: close one server (ending or awaiting its tasks), maybe restart it."""

    arguments = [
        (b"computation", amp.Unicode()),
        (b"index", amp.Integer()),
        (b"terminate", amp.Boolean()),
        (b"restart", amp.Boolean()),
    ]
    response = []
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


class RunTasks(amp.Command):
    """
    One-way batch of task creations: C{(task id, pickled (function, args,
    kwargs))} pairs. The creator chooses the ids; C{function} is a
    component's name or the id of code sent before with L{DefineCode}. A
    task that cannot be created ends at once with an error outcome
    (L{TaskEnded}).
    """

    arguments = [(b"batch", BigBytes())]
    requiresAnswer = False


class RunTaskBlob(amp.Command):
    """One-way: create task C{task} whose pickled creation is the blob streamed as C{blob} (large arguments)."""

    arguments = [(b"task", amp.Integer()), (b"blob", amp.Integer())]
    requiresAnswer = False


class DefineCode(amp.Command):
    """One-way: the pickled function C{code} that later task creations on this connection name by C{id}."""

    arguments = [(b"id", amp.Integer()), (b"code", BigBytes())]
    requiresAnswer = False


class RunGroup(amp.Command):
    """
    One-way: C{count} tasks of one function, ids C{task} .. C{task + count -
    1}, run one after another as one CPU task (a batch of a map):
    C{calls} is the pickled C{(function, [args, ...])}. Their outcomes come
    back, in order, with L{GroupEnded}.
    """

    arguments = [(b"task", amp.Integer()), (b"count", amp.Integer()), (b"calls", BigBytes())]
    requiresAnswer = False


class GroupEnded(amp.Command):
    """
    One-way: the pickled outcomes of tasks C{task + start} ... of group
    C{task}, in order; C{seconds}: how long the group's tasks ran so far,
    C{first}: how long its first task ran (which also paid for whatever
    runs once: a fresh server's first pages, the function's first call). The
    creator sizes its batches from them.
    """

    arguments = [(b"task", amp.Integer()), (b"start", amp.Integer()), (b"outcomes", BigBytes()),
                 (b"seconds", amp.Float(optional=True)), (b"first", amp.Float(optional=True))]
    requiresAnswer = False


class Messages(amp.Command):
    """One-way batch of messages: C{(task id, pickled message)} pairs."""

    arguments = [(b"batch", BigBytes())]
    requiresAnswer = False


class MessagesRefused(amp.Command):
    """One-way: messages sent to task C{task} were refused (C{reason}); later sends fail."""

    arguments = [(b"task", amp.Integer()), (b"reason", amp.Unicode())]
    requiresAnswer = False


class Deliver(amp.Command):
    """Put one message in a task's mailbox and acknowledge it."""

    arguments = [(b"task", amp.Integer()), (b"message", BigBytes()), (b"message_blob", amp.Integer(optional=True))]
    response = []
    errors = _common_errors


class TaskEnded(amp.Command):
    """One-way batch of task outcomes: C{(task id, pickled outcome)} pairs."""

    arguments = [(b"batch", BigBytes())]
    requiresAnswer = False


class TaskEndedBlob(amp.Command):
    """A task's outcome too large to send inline: it was streamed as blob C{blob}."""

    arguments = [(b"task", amp.Integer()), (b"blob", amp.Integer())]
    requiresAnswer = False


class WaitTask(amp.Command):
    """Answer with a task's pickled outcome once it has ended."""

    arguments = [(b"task", amp.Integer())]
    response = [(b"outcome", BigBytes(optional=True)), (b"outcome_blob", amp.Integer(optional=True))]
    errors = _common_errors


class Terminate(amp.Command):
    """
    Terminate a task; answers once it has ended. With C{grace}, a task still
    running C{grace} seconds later ends its server process (the node starts a
    fresh one).
    """

    arguments = [(b"task", amp.Integer()), (b"grace", amp.Float(optional=True))]
    response = []
    errors = _common_errors


# -- node ⇄ server (private pipes, no handshake) -----------------------------


class Ready(amp.Command):
    """Server → node: listening on C{port}."""

    arguments = [(b"port", amp.Integer()), (b"pid", amp.Integer())]
    response = []


class Init(amp.Command):
    """
    Node → server: load a computation's components (and the globals its
    C{node_setup} made); become its server.
    """

    arguments = [
        (b"computation", amp.Unicode()),
        (b"key", amp.String()),
        (b"components", BigBytes()),
        (b"node_dir", amp.Unicode()),
        (b"server_dir", amp.Unicode()),
        (b"location", amp.Unicode()),
        (b"node_globals", BigBytes(optional=True)),
    ]
    response = []
    errors = _common_errors


class RunSetup(amp.Command):
    """
    Node → server: run the component C{function} (C{node_setup} or
    C{server_setup}) with the pickled C{args}; it must finish with 0. For a
    node setup the globals it made come back pickled.
    """

    arguments = [
        (b"function", amp.Unicode()),
        (b"args", BigBytes(optional=True)),
        (b"node_level", amp.Boolean()),
        (b"cwd", amp.Unicode()),
    ]
    response = [(b"globals", BigBytes(optional=True))]
    errors = _common_errors


class CloseRequest(amp.Command):
    """
    Server → node: a task called C{dispycos_close_server} (C{node=False}) or
    C{dispycos_close_node} (C{node=True}).
    """

    arguments = [(b"node", amp.Boolean()), (b"terminate", amp.Boolean()), (b"restart", amp.Boolean())]
    requiresAnswer = False


class Busy(amp.Command):
    """Server → node, every second while tasks run: how many run (keeps a busy
    computation from looking like a zombie)."""

    arguments = [(b"tasks", amp.Integer())]
    requiresAnswer = False


class Close(amp.Command):
    """Node → server: end every task (reporting it terminated) and exit."""

    arguments = [(b"terminate", amp.Boolean())]
    response = []


# -- streams (files, and payloads over the inline cap), any peer link ------------------


class StreamOpen(amp.Command):
    """
    Open a stream of C{size} bytes with digest C{sha256}: C{purpose} is
    C{"file"} (C{name} lands under C{dest}: C{"client"}, C{"server"} or
    C{"node"}, in sub-directory C{dir}) or C{"blob"} (a payload over the inline
    cap, referred to by the stream id afterwards).
    """

    arguments = [
        (b"purpose", amp.Unicode()),
        (b"name", amp.Unicode()),
        (b"dir", amp.Unicode()),
        (b"dest", amp.Unicode()),
        (b"size", amp.Integer()),
        (b"sha256", amp.String()),
        (b"overwrite", amp.Boolean()),
        (b"computation", amp.Unicode()),
    ]
    response = [(b"stream", amp.Integer())]
    errors = _file_errors


class StreamChunk(amp.Command):
    """The next bytes of a stream, at C{offset}; acknowledged (flow control)."""

    arguments = [(b"stream", amp.Integer()), (b"offset", amp.Integer()), (b"data", BigBytes(cap=4 * 1024 * 1024, pieces=True))]
    response = []
    errors = _file_errors


class StreamData(amp.Command):
    """
    One-way: the next C{size} bytes of stream C{stream}, at C{offset}, follow
    this box on the wire as they are (outside AMP's framing).
    """

    arguments = [(b"stream", amp.Integer()), (b"offset", amp.Integer()), (b"size", amp.Integer())]
    requiresAnswer = False


class StreamClose(amp.Command):
    """Finish a stream: size and digest are checked; answers with where it landed."""

    arguments = [(b"stream", amp.Integer())]
    response = [(b"path", amp.Unicode())]
    errors = _file_errors


class StreamAbort(amp.Command):
    """Give a stream up: the partial file is removed."""

    arguments = [(b"stream", amp.Integer()), (b"reason", amp.Unicode())]
    requiresAnswer = False


# -- channels (owned by the process that created them) -------------------------------


class ChannelOp(amp.Command):
    """
    C{subscribe}/C{unsubscribe} the task C{task} (pickled reference), or
    C{lookup} whether the channel exists.
    """

    arguments = [(b"name", amp.Unicode()), (b"op", amp.Unicode()), (b"task", BigBytes(optional=True))]
    response = [(b"count", amp.Integer())]
    errors = _common_errors


class ChannelSend(amp.Command):
    """Broadcast a pickled message to a channel's subscribers; with C{n} > 0 or
    C{acked}, wait for that many subscribers and answer with how many got it."""

    arguments = [
        (b"name", amp.Unicode()),
        (b"message", BigBytes()),
        (b"acked", amp.Boolean()),
        (b"n", amp.Integer()),
        (b"timeout", amp.Float(optional=True)),
    ]
    response = [(b"count", amp.Integer())]
    errors = _common_errors


# -- observability (dispycos.metrics, dispycos.output) ----------------------------------


class ServerCounts(amp.Command):
    """
    Server → node, once a second while they change and once as the server
    closes: its counts since it started (L{dispycos.metrics.FIELDS} order).
    """

    arguments = [(b"counts", amp.ListOf(amp.Integer()))]
    response = []


class TaskOutput(amp.Command):
    """
    Server → client, one-way batch (C{Computation(forward_output=True)}):
    C{(stream, lines)} pairs, stream 1 for stdout and 2 for stderr, lines
    already prefixed with their task and server.
    """

    arguments = [(b"batch", BigBytes())]
    requiresAnswer = False
