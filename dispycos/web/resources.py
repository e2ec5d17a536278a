# -*- test-case-name: tests.unit.test_web_resources -*-
"""
The monitor's JSON resources, sharing one render helper (L{render_json}): a
resource's method returns a value, a L{Deferred} of one, or raises
L{JSONError}; the helper answers with the JSON of the value, or with an
error answer (C{{"error": ...}}) when the method raised or its Deferred
failed, so no request is left hanging.

    GET  /cluster_status[?history=0]     totals and every node
    GET  /node_info?host=IP-or-name      a node and its servers (404 if unknown)
    GET  /server_info?location=A:P&limit=N
                                         a server and its running tasks
    GET  /events                         text/event-stream (L{dispycos.web.sse})
    POST /terminate_tasks  task=ID ...   -> list of the ids terminated
    POST /suspend_node, /resume_node  host=IP ...
    POST /suspend_server, /resume_server  location=A:P ...
                                         -> {"done": [...], "failed": {target: error}}
    POST /update  poll_sec=S show_task_args=true|false
                                         -> the settings; GET /update reads them
"""

import json

from twisted.internet import defer
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web import resource, server

from dispycos.web.sse import StreamRefused

__all__ = ["JSONError", "JSONResource", "ErrorResource", "render_json", "json_body", "add_api"]

log = Logger()


class JSONError(Exception):
    """An error answer: C{code} and C{message} (sent as C{{"error": message}})."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code
        self.message = message


def json_body(request, obj, code=200):
    """Set C{code} and the JSON headers of C{request}; the body of C{obj}."""
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(obj, default=str).encode("utf-8")


def _error_of(failure, what):
    if failure.check(JSONError):
        return failure.value.code, failure.value.message
    log.failure("monitor: {what} failed", failure, what=what)
    return 500, "%s failed: %s" % (what, failure.getErrorMessage() or failure.type.__name__)


def render_json(request, produce, *args):
    """
    Answer C{request} with the JSON of C{produce(*args)}: at once for a
    value, when it fires for a Deferred (C{NOT_DONE_YET} is returned then).
    L{JSONError}: its code and message; another exception or failure: 500
    with the error. Nothing is written once the request has ended (its
    connection lost: C{notifyFinish()} fails).
    """
    what = request.uri.partition(b"?")[0].decode("latin-1", "replace")
    try:
        result = produce(*args)
    except Exception:
        code, message = _error_of(Failure(), what)
        return json_body(request, {"error": message}, code)
    if not isinstance(result, defer.Deferred):
        return json_body(request, result)

    ended = []
    request.notifyFinish().addErrback(ended.append)  # the connection was lost before the answer

    def send(obj, code=200):
        if ended or request.finished:
            return
        request.write(json_body(request, obj, code))
        request.finish()

    def failed(f):
        code, message = _error_of(f, what)
        send({"error": message}, code)

    result.addCallbacks(send, failed)
    result.addErrback(lambda f: log.failure("monitor: answering {what} failed", f, what=what))
    return server.NOT_DONE_YET


def _arg(request, name, default=None):
    values = request.args.get(name.encode())
    if not values:
        return default
    return values[0].decode("utf-8", "replace")


def _args(request, name):
    return [v.decode("utf-8", "replace") for v in request.args.get(name.encode(), [])]


def _json_list_arg(request, name):
    """Values of a form field given as a JSON list (the original pages' way)."""
    out = []
    for text in _args(request, name):
        try:
            value = json.loads(text)
        except ValueError:
            value = text
        out.extend(value if isinstance(value, list) else [value])
    return [str(v) for v in out]


def _truthy(text):
    return str(text).strip().lower() in ("1", "true", "yes", "on")


class JSONResource(resource.Resource):
    """A leaf answering JSON; methods it has no C{render_<METHOD>} for: 405 with C{Allow}."""

    isLeaf = True

    def render(self, request):
        method = request.method.decode("ascii", "replace")
        if not hasattr(self, "render_" + method) and not (method == "HEAD" and hasattr(self, "render_GET")):
            allowed = sorted(n[len("render_"):] for n in dir(self) if n.startswith("render_"))
            request.setHeader(b"allow", ", ".join(allowed).encode())
            return json_body(request, {"error": "method %s not allowed" % method}, 405)
        return super().render(request)


class ErrorResource(resource.Resource):
    """Any request: the JSON error C{message} with C{code}."""

    isLeaf = True

    def __init__(self, code, message):
        super().__init__()
        self.code = code
        self.message = message

    def render(self, request):
        return json_body(request, {"error": self.message}, self.code)


class ClusterStatus(JSONResource):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def render_GET(self, request):
        return render_json(request, self.model.cluster_status, _arg(request, "history", "1") != "0")

    render_POST = render_GET


class NodeInfo(JSONResource):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def answer(self, host):
        info = self.model.node_info(host)
        if info is None:
            raise JSONError(404, "no node %s" % (host,))
        return info

    def render_GET(self, request):
        return render_json(request, self.answer, _arg(request, "host", ""))

    render_POST = render_GET


class ServerInfo(JSONResource):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def answer(self, location, limit):
        try:
            limit = int(limit)
        except ValueError:
            raise JSONError(400, "limit must be an integer")
        info = self.model.server_info(location, limit)
        if info is None:
            raise JSONError(404, "no server %s" % (location,))
        return info

    def render_GET(self, request):
        return render_json(request, self.answer, _arg(request, "location", ""), _arg(request, "limit", "100"))

    render_POST = render_GET


class TerminateTasks(JSONResource):
    def __init__(self, actions):
        super().__init__()
        self.actions = actions

    def render_POST(self, request):
        ids = _args(request, "task") or _json_list_arg(request, "tasks")
        return render_json(request, self.actions.terminate_tasks, ids)


class Control(JSONResource):
    """POST C{/suspend_node} etc.: calls the computation's method for every target."""

    def __init__(self, actions, method, field, legacy_field):
        super().__init__()
        self.actions = actions
        self.method = method
        self.field = field
        self.legacy_field = legacy_field

    def render_POST(self, request):
        targets = _args(request, self.field) or _json_list_arg(request, self.legacy_field)
        return render_json(request, self.actions.control, self.method, targets)


class Update(JSONResource):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def answer(self, poll, show):
        try:
            return self.model.update_settings(poll_sec=None if poll in (None, "") else float(poll),
                                              show_task_args=None if show is None else _truthy(show))
        except ValueError as e:
            raise JSONError(400, str(e))

    def render_POST(self, request):
        return render_json(request, self.answer, _arg(request, "poll_sec", _arg(request, "timeout")),
                           _arg(request, "show_task_args"))

    def render_GET(self, request):
        return render_json(request, self.model.settings.as_dict)


class Events(JSONResource):
    """C{GET /events}: server-sent events from the hub; every browser gets the whole stream."""

    def __init__(self, hub):
        super().__init__()
        self.hub = hub

    def render_GET(self, request):
        if self.hub.closed:
            return json_body(request, {"error": "monitor shut down"}, 503)
        if len(self.hub.streams) >= self.hub.max_streams:
            return json_body(request, {"error": "too many event streams (%d)" % self.hub.max_streams}, 503)
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-accel-buffering", b"no")
        try:
            self.hub.add(request)
        except StreamRefused as e:  # (checked above; kept for a hub shared otherwise)
            return json_body(request, {"error": str(e)}, 503)
        return server.NOT_DONE_YET

    def render_HEAD(self, request):
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        return b""


def add_api(root, model, hub, actions):
    """Put the JSON resources and C{/events} under C{root}; C{root}."""
    root.putChild(b"cluster_status", ClusterStatus(model))
    root.putChild(b"node_info", NodeInfo(model))
    root.putChild(b"server_info", ServerInfo(model))
    root.putChild(b"terminate_tasks", TerminateTasks(actions))
    root.putChild(b"update", Update(model))
    root.putChild(b"events", Events(hub))
    root.putChild(b"suspend_node", Control(actions, "suspend_node", "host", "nodes"))
    root.putChild(b"resume_node", Control(actions, "resume_node", "host", "nodes"))
    root.putChild(b"suspend_server", Control(actions, "suspend_server", "location", "servers"))
    root.putChild(b"resume_server", Control(actions, "resume_server", "location", "servers"))
    return root
