# -*- test-case-name: tests.test_httpd -*-
"""
A browser monitor for a computation, served by C{twisted.web} on the
client's reactor.

    comp = dispycos.Computation([compute])
    monitor = dispycos.httpd.HTTPServer(comp)        # before comp.schedule()
    await comp.schedule()
    ...
    await comp.close()
    await monitor.shutdown()

Open C{http://127.0.0.1:8181/} for the Cluster page (nodes, their resources
and task counts), then the Node and Server pages (a server's running tasks,
which can be terminated from there).

The monitor learns everything from the computation's status messages: it
installs itself as the computation's C{status_task} and forwards every
message to the C{status_task} the computation already had (a local L{Task}
or a callable), so both see the same stream. Create it before
C{comp.schedule()}; created later it still works, but knows only of what
happens afterwards.

Every request needs the monitor's access token, a random value (or the
C{token} given): the monitor logs and prints its address with it
(C{http://127.0.0.1:8181/?token=...}, also L{HTTPServer.url}). A request
with the right C{token} query parameter is answered with the token as an
HttpOnly, SameSite=Strict cookie (C{dispycos_monitor_<port>}), which serves
instead from then on; without either, or with a wrong one: 403. So only who
was shown the address (the user who started the monitor) can watch or act,
other local users and other sites cannot.

Any number of browsers may watch at once: every page fetches the full state
from the JSON resources (C{/cluster_status}, C{/node_info}, C{/server_info})
and re-fetches when C{/events} (server-sent events) announces a change, and
every C{poll_sec} seconds in any case. Requests that change the cluster
(C{/terminate_tasks}, C{/suspend_node}, ...) are POST only and are refused
(403) when the browser says they come from another site (C{Origin},
C{Referer} or C{Sec-Fetch-Site}); requests naming a host that is neither an
IP address, C{localhost}, this machine's name nor the configured C{host}
are refused too (DNS rebinding). Clients other than browsers (which send
neither C{Origin} nor C{Referer}) may POST.

Resources (every answer is JSON unless said otherwise):

    GET  /, /cluster.html, /node.html, /server.html, /monitor.js, /monitor.css
    GET  /cluster_status[?history=0]     totals and every node (with a short
                                         resource history per node)
    GET  /node_info?host=IP-or-name      a node and its servers (404 if unknown)
    GET  /server_info?location=A:P&limit=N
                                         a server and its running tasks (limit 0: all),
                                         plus its recently finished ones
    GET  /events                         text/event-stream: "hello", then a
                                         "message" for every change, "settings",
                                         "shutdown"; ": keepalive" every 15 s
    POST /terminate_tasks  task=ID ...   -> list of the ids terminated
    POST /suspend_node, /resume_node  host=IP ...
    POST /suspend_server, /resume_server  location=A:P ...
                                         -> {"done": [...], "failed": {target: error}}
    POST /update  poll_sec=S show_task_args=true|false
                                         -> the settings; GET /update reads them

At most C{max_streams} (32) C{/events} streams are served at once (more are
refused with 503), and a stream whose browser does not read is dropped
once more than L{MAX_UNSENT} bytes wait for it.

Task ids are C{str(rtask)}: C{name/tid@addr:port}. State survives the
computation's close: the resources answer with the final state until
L{HTTPServer.shutdown}.

The monitor needs of its C{computation} only a C{status_task} attribute and,
for the actions, C{suspend_node}, C{resume_node}, C{suspend_server} and
C{resume_server} returning Deferreds; tasks are terminated with their own
C{terminate()}.
"""

import collections
import hmac
import ipaddress
import json
import mimetypes
import os
import secrets
import socket
import time
import urllib.parse

from twisted.internet import defer
from twisted.internet.interfaces import IPushProducer
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory
from twisted.web import resource, server
from zope.interface import implementer

from .status import DispycosNodeAvailInfo, DispycosNodeInfo, DispycosStatus, Location, Status, TaskInfo
from .tasks import Task
from .web import STATIC_DIR

__all__ = ["HTTPServer"]

log = Logger()

#: seconds of resource history kept per node (for the CPU / memory charts)
HISTORY_SECONDS = 600
#: at most this many samples per node
HISTORY_SAMPLES = 120
#: finished tasks remembered per server (shown on the Server page)
RECENT_FINISHED = 20
#: length of the text shown for one argument
ARG_TEXT_LIMIT = 200
#: C{/events} streams served at once (the default of C{max_streams})
MAX_STREAMS = 32
#: bytes that may wait for an C{/events} stream that does not read before it is dropped
MAX_UNSENT = 1024 * 1024

_CLOSED_STATES = ("Closed", "Disconnected", "Abandoned")


def _state_name(status, prefix):
    """C{Status.NodeSuspended} -> C{"Suspended"}; resumed reads as initialized."""
    name = Status(status).name
    if name.startswith(prefix):
        name = name[len(prefix):]
    return "Initialized" if name == "Resumed" else name


def _short_repr(value):
    try:
        text = repr(value)
    except Exception as e:  # a broken __repr__ must not break the monitor
        text = "<unprintable %s: %s>" % (type(value).__name__, e)
    if len(text) > ARG_TEXT_LIMIT:
        text = text[:ARG_TEXT_LIMIT - 3] + "..."
    return text


def _task_id(rtask):
    """The id of a task on the pages and in C{/terminate_tasks}: C{name/tid@addr:port}."""
    return str(rtask)


class _ServerState:
    def __init__(self, location, node_addr):
        self.location = location
        self.node_addr = node_addr
        self.status = "Discovered"
        self.tasks = collections.OrderedDict()  # task id -> TaskInfo
        self.tasks_submitted = 0
        self.tasks_done = 0
        self.finished = collections.deque(maxlen=RECENT_FINISHED)
        self.update_time = time.time()


class _NodeState:
    def __init__(self, addr, name=None):
        self.addr = addr
        self.name = name or addr
        self.cpus = 0
        self.platform = ""
        self.status = "Discovered"
        self.servers = collections.OrderedDict()  # str(location) -> _ServerState
        self.tasks_submitted = 0
        self.tasks_done = 0
        self.avail = {"cpu": None, "memory": None, "disk": None, "swap": None}
        self.history = collections.deque(maxlen=HISTORY_SAMPLES)
        self.update_time = time.time()

    def tasks_running(self):
        return sum(len(s.tasks) for s in self.servers.values())


class _Settings:
    def __init__(self, poll_sec, show_task_args):
        self.poll_sec = poll_sec
        self.show_task_args = show_task_args


# -- the HTTP side --------------------------------------------------------------------


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


def _send_json(request, obj, code=200):
    request.setResponseCode(code)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    return json.dumps(obj, default=str).encode("utf-8")


def _truthy(text):
    return str(text).strip().lower() in ("1", "true", "yes", "on")


class _JSONResource(resource.Resource):
    isLeaf = True

    def __init__(self, monitor):
        super().__init__()
        self.monitor = monitor

    def render(self, request):
        method = request.method.decode("ascii", "replace")
        if not hasattr(self, "render_" + method) and not (method == "HEAD" and hasattr(self, "render_GET")):
            allowed = sorted(n[len("render_"):] for n in dir(self) if n.startswith("render_"))
            request.setHeader(b"allow", ", ".join(allowed).encode())
            return _send_json(request, {"error": "method %s not allowed" % method}, 405)
        return super().render(request)


class _ClusterStatus(_JSONResource):
    def render_GET(self, request):
        return _send_json(request, self.monitor.cluster_status(history=_arg(request, "history", "1") != "0"))

    render_POST = render_GET


class _NodeInfo(_JSONResource):
    def render_GET(self, request):
        host = _arg(request, "host", "")
        info = self.monitor.node_info(host)
        if info is None:
            return _send_json(request, {"error": "no node %s" % (host,)}, 404)
        return _send_json(request, info)

    render_POST = render_GET


class _ServerInfo(_JSONResource):
    def render_GET(self, request):
        location = _arg(request, "location", "")
        try:
            limit = int(_arg(request, "limit", "100"))
        except ValueError:
            return _send_json(request, {"error": "limit must be an integer"}, 400)
        info = self.monitor.server_info(location, limit)
        if info is None:
            return _send_json(request, {"error": "no server %s" % (location,)}, 404)
        return _send_json(request, info)

    render_POST = render_GET


class _TerminateTasks(_JSONResource):
    def render_POST(self, request):
        ids = _args(request, "task") or _json_list_arg(request, "tasks")
        return _send_json(request, self.monitor.terminate_tasks(ids))


class _Control(_JSONResource):
    """POST C{/suspend_node} etc.: calls the computation's method for every target."""

    def __init__(self, monitor, method, field, legacy_field):
        super().__init__(monitor)
        self.method = method
        self.field = field
        self.legacy_field = legacy_field

    def render_POST(self, request):
        targets = _args(request, self.field) or _json_list_arg(request, self.legacy_field)
        d = self.monitor.control(self.method, targets)

        def answer(result):
            if not request.finished and not getattr(request, "_disconnected", False):
                request.write(_send_json(request, result))
                request.finish()

        d.addCallback(answer)
        d.addErrback(lambda f: log.failure("{m} failed", f, m=self.method))
        return server.NOT_DONE_YET


class _Update(_JSONResource):
    def render_POST(self, request):
        poll = _arg(request, "poll_sec", _arg(request, "timeout"))
        show = _arg(request, "show_task_args")
        try:
            settings = self.monitor.update(poll_sec=None if poll in (None, "") else float(poll),
                                           show_task_args=None if show is None else _truthy(show))
        except ValueError as e:
            return _send_json(request, {"error": str(e)}, 400)
        return _send_json(request, settings)

    def render_GET(self, request):
        return _send_json(request, self.monitor.settings())


@implementer(IPushProducer)
class _EventStream:
    """
    One C{/events} response, registered as the producer of its connection:
    written to while the connection takes data; while it is paused (its
    send buffer full: the browser does not read) what comes is kept and
    counted in C{unsent}, and once more than L{MAX_UNSENT} bytes wait, the
    connection is aborted and the stream dropped.
    """

    def __init__(self, request, monitor):
        self.request = request
        self.monitor = monitor
        self.paused = False
        self.pending = collections.deque()
        self.unsent = 0
        request.registerProducer(self, True)

    def write(self, data):
        if self.request.finished or getattr(self.request, "_disconnected", False):
            self.monitor._drop_stream(self)
        elif self.paused:
            self.pending.append(data)
            self.unsent += len(data)
            if self.unsent > MAX_UNSENT:
                log.warn("monitor: an event stream has {n} bytes unsent (its browser does not read): dropped",
                         n=self.unsent)
                self.abort()
        else:
            self.request.write(data)

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        while self.pending and not self.paused:
            data = self.pending.popleft()
            self.unsent -= len(data)
            self.request.write(data)

    def stopProducing(self):
        self.monitor._drop_stream(self)

    def abort(self):
        """Drop the stream and its connection at once (what waits for it is let go)."""
        self.pending.clear()
        self.unsent = 0
        self.monitor._drop_stream(self)
        transport = self.request.channel.transport if self.request.channel is not None else None
        if transport is not None:
            transport.abortConnection()

    def finish(self):
        """End the response (monitor shut down)."""
        self.request.unregisterProducer()
        if not self.request.finished and not getattr(self.request, "_disconnected", False):
            self.request.finish()


class _Events(_JSONResource):
    """C{GET /events}: server-sent events; every browser gets the whole stream."""

    def render_GET(self, request):
        if self.monitor._shut:
            return _send_json(request, {"error": "monitor shut down"}, 503)
        if len(self.monitor._streams) >= self.monitor.max_streams:
            return _send_json(request, {"error": "too many event streams (%d)" % self.monitor.max_streams}, 503)
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"cache-control", b"no-store")
        request.setHeader(b"x-accel-buffering", b"no")
        self.monitor._add_stream(request)
        return server.NOT_DONE_YET

    def render_HEAD(self, request):
        request.setHeader(b"content-type", b"text/event-stream; charset=utf-8")
        return b""


class _ErrorResource(resource.Resource):
    isLeaf = True

    def __init__(self, code, message):
        super().__init__()
        self.code = code
        self.message = message

    def render(self, request):
        return _send_json(request, {"error": self.message}, self.code)


_TYPES = {".html": "text/html; charset=utf-8", ".js": "text/javascript; charset=utf-8",
          ".css": "text/css; charset=utf-8", ".json": "application/json", ".png": "image/png",
          ".svg": "image/svg+xml", ".ico": "image/x-icon", ".txt": "text/plain; charset=utf-8"}


class _StaticFile(resource.Resource):
    isLeaf = True

    def __init__(self, path):
        super().__init__()
        self.path = path

    def render_GET(self, request):
        try:
            with open(self.path, "rb") as f:
                data = f.read()
        except OSError:
            return _send_json(request, {"error": "not found"}, 404)
        ext = os.path.splitext(self.path)[1].lower()
        ctype = _TYPES.get(ext) or mimetypes.guess_type(self.path)[0] or "application/octet-stream"
        request.setHeader(b"content-type", ctype.encode())
        request.setHeader(b"cache-control", b"no-cache")
        return data

    def render_HEAD(self, request):
        self.render_GET(request)
        return b""

    def render(self, request):
        if request.method not in (b"GET", b"HEAD"):
            return _send_json(request, {"error": "method not allowed"}, 405)
        return super().render(request)


class _StaticDir(resource.Resource):
    """Pages, scripts and styles from a directory; no listings, no hidden files, nothing outside."""

    def __init__(self, path, index=("cluster.html", "index.html")):
        super().__init__()
        self.path = path
        self.index = index

    def getChild(self, name, request):
        try:
            name = name.decode("utf-8")
        except UnicodeDecodeError:
            return _ErrorResource(404, "not found")
        if name == "":
            for index in self.index:
                path = os.path.join(self.path, index)
                if os.path.isfile(path):
                    return _StaticFile(path)
            return _ErrorResource(404, "not found")
        if name.startswith(".") or "/" in name or "\\" in name or "\x00" in name:
            return _ErrorResource(404, "not found")
        path = os.path.join(self.path, name)
        if os.path.isdir(path):
            return _StaticDir(path, index=("index.html",))
        if os.path.isfile(path):
            return _StaticFile(path)
        return _ErrorResource(404, "not found")

    def render(self, request):
        # "/dir" without its trailing slash
        request.redirect(request.uri + b"/" if b"?" not in request.uri else request.uri.replace(b"?", b"/?", 1))
        return b""


_SECURITY_HEADERS = {
    b"x-content-type-options": b"nosniff",
    b"x-frame-options": b"DENY",
    b"referrer-policy": b"same-origin",
    b"content-security-policy": (b"default-src 'self'; script-src 'self'; style-src 'self'; "
                                 b"img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; "
                                 b"form-action 'self'; base-uri 'none'"),
}


class _Site(server.Site):
    """Checks the Host of every request and the origin of every POST."""

    def __init__(self, root, monitor):
        super().__init__(root)
        self.monitor = monitor
        self.noisy = False

    def log(self, request):
        pass  # no access log

    def getResourceFor(self, request):
        for name, value in _SECURITY_HEADERS.items():
            request.setHeader(name, value)
        why = self.monitor._refuse(request)
        if why is not None:
            log.warn("monitor refused {method} {uri}: {why}", method=request.method, uri=request.uri, why=why)
            return _ErrorResource(403, why)
        return super().getResourceFor(request)


# -- the monitor ---------------------------------------------------------------------------


class HTTPServer:
    """
    Serve the monitor of C{computation} on C{host:port} (HTTPS when
    C{certfile} is given; the key is in C{keyfile} or in C{certfile}).

    @param poll_sec: how often pages re-fetch their data even without events
        (seconds, at least 1; changeable from the pages).
    @param DocumentRoot: a directory of pages to serve instead of the
        package's own (C{cluster.html}, C{node.html}, C{server.html}, ...).
    @param show_task_args: whether the Server page shows task arguments.
    @param allowed_hosts: host names (besides IP addresses, C{localhost},
        this machine's name and C{host}) browsers may use to reach the
        monitor.
    @param name: a name shown with the cluster data (C{"name"}), such as a
        shared scheduler's C{-n}.
    @param token: the access token every request needs (None: a random one).
    @param max_streams: the most C{/events} streams served at once.
    @ivar port: the port listened on (the real one when C{port} is 0).
    @ivar token: the access token.
    @ivar status_task: the callable installed as the computation's
        C{status_task}.
    """

    keepalive_sec = 15

    def __init__(self, computation, host="127.0.0.1", port=8181, poll_sec=10, DocumentRoot=None, keyfile=None,
                 certfile=None, show_task_args=True, reactor=None, allowed_hosts=(), name=None, token=None,
                 max_streams=MAX_STREAMS):
        if reactor is None:
            from twisted.internet import reactor
        self.reactor = reactor
        self.host = host or ""
        self.name = name
        self.token = token or secrets.token_urlsafe(24)
        self.max_streams = max_streams
        if poll_sec < 1:
            log.warn("HTTPServer: poll_sec {p} is too small; using 1", p=poll_sec)
            poll_sec = 1
        self._settings = _Settings(poll_sec, bool(show_task_args))
        self.document_root = os.path.abspath(DocumentRoot) if DocumentRoot else STATIC_DIR
        if not os.path.isdir(self.document_root):
            raise ValueError("DocumentRoot %r is not a directory" % (DocumentRoot,))
        self._allowed_hosts = {h.lower() for h in allowed_hosts} | {"localhost"}
        if self.host:
            self._allowed_hosts.add(self.host.lower())
        try:
            self._allowed_hosts.add(socket.gethostname().lower())
        except OSError:
            pass

        self.seq = 0
        self._streams = []
        self._shut = False
        self.status_task = self._status_received
        self.computation = None

        self.site = _Site(self._build_tree(), self)
        self._factory = WrappingFactory(self.site)
        self.scheme = "http"
        if certfile:
            from twisted.internet import ssl

            with open(certfile, "rb") as f:
                pem = f.read()
            if keyfile:
                with open(keyfile, "rb") as f:
                    pem = pem + b"\n" + f.read()
            cert = ssl.PrivateCertificate.loadPEM(pem)
            self._listener = reactor.listenSSL(port, self._factory, cert.options(), interface=self.host)
            self.scheme = "https"
        else:
            self._listener = reactor.listenTCP(port, self._factory, interface=self.host)
        self.port = self._listener.getHost().port
        self.attach(computation)  # once listening: a port in use leaves the computation as it was
        from twisted.internet import task

        self._keepalive = task.LoopingCall(self._send_keepalive)
        self._keepalive.clock = reactor
        self._keepalive.start(self.keepalive_sec, now=False)
        log.info("Started HTTP{s} server at {host}:{port}", s="S" if self.scheme == "https" else "",
                 host=self.host or "*", port=self.port)
        self._announce()

    def attach(self, computation):
        """
        Watch C{computation} from now on (the state shown so far is
        dropped): chain its C{status_task} and give back the previous
        computation's own. For a program that runs computations one after
        another, such as a shared scheduler.
        """
        old = self.computation
        if old is not None and old.status_task == self.status_task:
            old.status_task = self._previous
        self.computation = computation
        self.nodes = collections.OrderedDict()  # addr -> _NodeState
        self.tasks = {}  # task id -> (TaskInfo, _ServerState)
        self.tasks_submitted = 0
        self.tasks_done = 0
        self.computation_status = "Created"
        self._previous = computation.status_task
        computation.status_task = self.status_task
        if old is not None:
            self._event("computation")

    @property
    def url(self):
        """The monitor's address with its token, e.g. C{http://127.0.0.1:8181/?token=...}."""
        host = self.host if self.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
        if ":" in host:
            host = "[%s]" % host
        return "%s://%s:%d/?token=%s" % (self.scheme, host, self.port, self.token)

    def _announce(self):
        """Log and print the address to open (only who sees it can use the monitor)."""
        log.info("dispycos monitor at {url}", url=self.url)
        try:
            print("dispycos monitor at %s" % self.url, flush=True)
        except Exception:
            pass

    @property
    def cookie_name(self):
        """The cookie that carries the token (one per port: cookies do not tell ports apart)."""
        return "dispycos_monitor_%d" % self.port

    @property
    def poll_sec(self):
        return self._settings.poll_sec

    @property
    def show_task_args(self):
        return self._settings.show_task_args

    def _build_tree(self):
        root = _StaticDir(self.document_root)
        root.putChild(b"cluster_status", _ClusterStatus(self))
        root.putChild(b"node_info", _NodeInfo(self))
        root.putChild(b"server_info", _ServerInfo(self))
        root.putChild(b"terminate_tasks", _TerminateTasks(self))
        root.putChild(b"update", _Update(self))
        root.putChild(b"events", _Events(self))
        root.putChild(b"suspend_node", _Control(self, "suspend_node", "host", "nodes"))
        root.putChild(b"resume_node", _Control(self, "resume_node", "host", "nodes"))
        root.putChild(b"suspend_server", _Control(self, "suspend_server", "location", "servers"))
        root.putChild(b"resume_server", _Control(self, "resume_server", "location", "servers"))
        return root

    # -- request checks ---------------------------------------------------------------

    def _host_allowed(self, hostport):
        if hostport.startswith("["):
            host = hostport[1:].partition("]")[0]
        elif hostport.count(":") == 1:
            host = hostport.partition(":")[0]
        else:
            host = hostport
        host = host.lower().rstrip(".")
        try:
            ipaddress.ip_address(host)
            return True
        except ValueError:
            pass
        return host in self._allowed_hosts or host.endswith(".localhost")

    def _authorized(self, request):
        """
        True when C{request} carries the token: as its C{token} query
        parameter (then it gets the cookie) or in the cookie.
        """
        query = urllib.parse.parse_qs(urllib.parse.urlsplit(request.uri).query.decode("latin-1"))
        given = (query.get("token") or [""])[0]
        if given and hmac.compare_digest(given.encode("utf-8", "replace"), self.token.encode()):
            request.addCookie(self.cookie_name.encode(), self.token.encode(), path=b"/", httpOnly=True,
                              sameSite="strict", secure=request.isSecure() or None)
            return True
        cookie = request.getCookie(self.cookie_name.encode())
        return bool(cookie) and hmac.compare_digest(cookie, self.token.encode())

    def _refuse(self, request):
        """Why C{request} is refused, or None."""
        host = (request.getHeader(b"host") or b"").decode("latin-1").strip()
        if host and not self._host_allowed(host):
            return "unknown host name %r (give it in allowed_hosts)" % (host,)
        if not self._authorized(request):
            return "missing or wrong access token: open the address the monitor printed (with ?token=...)"
        if request.method in (b"GET", b"HEAD"):
            return None
        fetch_site = (request.getHeader(b"sec-fetch-site") or b"").decode("latin-1").lower()
        if fetch_site in ("cross-site", "same-site"):
            return "cross-site request"
        scheme = "https" if request.isSecure() else "http"
        expected = ("%s://%s" % (scheme, host)).lower()
        origin = request.getHeader(b"origin")
        if origin is not None:
            if origin.decode("latin-1").strip().lower() != expected:
                return "cross-site request (Origin %s)" % (origin.decode("latin-1"),)
            return None
        referer = request.getHeader(b"referer")
        if referer is not None:
            parts = urllib.parse.urlsplit(referer.decode("latin-1").strip())
            if ("%s://%s" % (parts.scheme, parts.netloc)).lower() != expected:
                return "cross-site request (Referer)"
        return None

    # -- the status stream ---------------------------------------------------------------

    def _status_received(self, msg):
        if not self._shut:
            try:
                self._record(msg)
            except Exception:
                log.failure("monitor could not record {msg}", msg=msg)
        previous = self._previous
        if previous is None:
            return
        try:
            if isinstance(previous, Task):
                previous.send(msg)
            else:
                previous(msg)
        except Exception:
            log.failure("chained status_task failed on {msg}", msg=msg)

    def _node(self, addr, name=None):
        node = self.nodes.get(addr)
        if node is None:
            node = self.nodes[addr] = _NodeState(addr, name)
        elif name:
            node.name = name
        return node

    def _server(self, location):
        key = str(location)
        addr = location.addr if isinstance(location, Location) else key.rpartition(":")[0]
        node = self._node(addr)
        srv = node.servers.get(key)
        if srv is None:
            srv = node.servers[key] = _ServerState(key, addr)
        return node, srv

    def _record(self, msg):
        now = time.time()
        if isinstance(msg, DispycosNodeAvailInfo):
            if msg.location is None:
                return
            node = self._node(msg.location.addr)
            self._set_avail(node, msg, now)
            node.update_time = now
            self._event("avail", node=node.addr)
            return
        if not isinstance(msg, DispycosStatus):
            return
        status, info = msg.status, msg.info
        if status in (Status.ComputationScheduled,):
            self.computation_status = "Scheduled"
            self._event("computation")
        elif status == Status.ComputationClosed:
            self.computation_status = "Closed"
            for tid in list(self.tasks):
                self._task_finished(tid, None, now, "TaskAbandoned")
            self._event("computation")
        elif Status.NodeIgnore <= status <= Status.NodeAbandoned and isinstance(info, DispycosNodeInfo):
            node = self._node(info.addr, info.name)
            node.status = _state_name(status, "Node")
            if status in (Status.NodeDiscovered, Status.NodeInitialized):
                node.cpus = info.cpus
                node.platform = info.platform or ""
            if info.avail_info is not None and status in (Status.NodeDiscovered, Status.NodeInitialized):
                self._set_avail(node, info.avail_info, now, sample=False)
            if status == Status.NodeInitialized and self.computation_status == "Created":
                self.computation_status = "Scheduled"
            if status in (Status.NodeClosed, Status.NodeDisconnected, Status.NodeAbandoned):
                for srv in node.servers.values():
                    if srv.status not in _CLOSED_STATES:
                        srv.status = node.status
                        srv.update_time = now
            node.update_time = now
            self._event("node", node=node.addr, status=status.name)
        elif Status.ServerDiscovered <= status <= Status.ServerAbandoned and info is not None:
            node, srv = self._server(info)
            srv.status = _state_name(status, "Server")
            srv.update_time = node.update_time = now
            self._event("server", node=node.addr, server=srv.location, status=status.name)
        elif status == Status.TaskCreated and isinstance(info, TaskInfo):
            rtask = info.task
            node, srv = self._server(rtask.location)
            tid = _task_id(rtask)
            srv.tasks[tid] = info
            self.tasks[tid] = (info, srv)
            srv.tasks_submitted += 1
            node.tasks_submitted += 1
            self.tasks_submitted += 1
            srv.update_time = node.update_time = now
            self._event("task", node=node.addr, server=srv.location, task=tid, status="TaskCreated")
        elif status in (Status.TaskFinished, Status.TaskTerminated, Status.TaskAbandoned) and isinstance(info, TaskInfo):
            tid = _task_id(info.task)
            if status == Status.TaskFinished:
                exc = info.exception
                outcome = "done" if exc is None else type(exc).__name__
            else:
                outcome = status.name
            self._task_finished(tid, info, now, outcome)

    def _task_finished(self, tid, info, now, outcome):
        entry = self.tasks.pop(tid, None)
        if entry is None:
            return
        created, srv = entry
        info = info or created
        srv.tasks.pop(tid, None)
        node = self.nodes.get(srv.node_addr)
        srv.tasks_done += 1
        self.tasks_done += 1
        srv.finished.appendleft({"task": tid, "name": getattr(info.task, "name", ""), "start_time": info.start_time,
                                 "end_time": info.end_time or now, "outcome": outcome})
        srv.update_time = now
        if node is not None:
            node.tasks_done += 1
            node.update_time = now
        self._event("task", node=srv.node_addr, server=srv.location, task=tid, status="TaskFinished",
                    outcome=outcome)

    def _set_avail(self, node, avail, now, sample=True):
        node.avail = {"cpu": avail.cpu, "memory": avail.memory, "disk": avail.disk, "swap": avail.swap}
        if not sample:  # (a node's first CPU figure, taken at connection, is meaningless)
            return
        node.history.append((round(now, 2), avail.cpu, avail.memory))
        while node.history and node.history[0][0] < now - HISTORY_SECONDS:
            node.history.popleft()

    # -- server-sent events ----------------------------------------------------------------

    def _event(self, kind, **data):
        self.seq += 1
        data.update(type=kind, seq=self.seq, time=time.time(), tasks_submitted=self.tasks_submitted,
                    tasks_running=len(self.tasks), tasks_done=self.tasks_done,
                    computation=self.computation_status)
        self._broadcast("message", data)

    def _broadcast(self, name, data):
        if not self._streams:
            return
        text = "id: %d\nevent: %s\ndata: %s\n\n" % (self.seq, name, json.dumps(data, default=str))
        payload = text.encode("utf-8")
        for stream in list(self._streams):
            self._write(stream, payload)

    def _write(self, stream, payload):
        try:
            stream.write(payload)
        except Exception:
            self._drop_stream(stream)

    def _add_stream(self, request):
        stream = _EventStream(request, self)
        self._streams.append(stream)
        request.notifyFinish().addBoth(lambda _: self._drop_stream(stream))
        hello = {"type": "hello", "seq": self.seq, "time": time.time(), "poll_sec": self.poll_sec,
                 "show_task_args": self.show_task_args, "computation": self.computation_status}
        stream.write(("retry: 3000\nevent: hello\ndata: %s\n\n" % json.dumps(hello)).encode("utf-8"))

    def _drop_stream(self, stream):
        if stream in self._streams:
            self._streams.remove(stream)

    def _send_keepalive(self):
        for stream in list(self._streams):
            self._write(stream, b": keepalive\n\n")

    # -- data for the pages -------------------------------------------------------------

    def settings(self):
        return {"poll_sec": self.poll_sec, "show_task_args": self.show_task_args}

    def _node_dict(self, node, history=True):
        d = {
            "addr": node.addr,
            "name": node.name,
            "status": node.status,
            "cpus": node.cpus,
            "platform": node.platform,
            "servers": len(node.servers),
            "servers_active": sum(1 for s in node.servers.values() if s.status not in _CLOSED_STATES),
            "tasks_submitted": node.tasks_submitted,
            "tasks_running": node.tasks_running(),
            "tasks_done": node.tasks_done,
            "avail": dict(node.avail),
            "update_time": node.update_time,
        }
        if history:
            d["history"] = [list(h) for h in node.history]
        return d

    def _common(self):
        return {"tasks_submitted": self.tasks_submitted, "tasks_running": len(self.tasks),
                "tasks_done": self.tasks_done, "computation": self.computation_status,
                "seq": self.seq, "time": time.time(), "poll_sec": self.poll_sec,
                "show_task_args": self.show_task_args, "name": self.name}

    def cluster_status(self, history=True):
        """What C{GET /cluster_status} answers."""
        out = {"nodes": [self._node_dict(n, history) for n in self.nodes.values()]}
        out.update(self._common())
        return out

    def _find_node(self, host):
        host = (host or "").strip()
        if host in self.nodes:
            return self.nodes[host]
        try:
            canon = str(ipaddress.ip_address(host.strip("[]")))
            if canon in self.nodes:
                return self.nodes[canon]
        except ValueError:
            pass
        for node in self.nodes.values():
            if node.name == host:
                return node
        return None

    def node_info(self, host):
        """What C{GET /node_info?host=} answers, or None for an unknown node."""
        node = self._find_node(host)
        if node is None:
            return None
        out = self._node_dict(node)
        out["servers"] = [{"location": s.location, "status": s.status, "tasks_submitted": s.tasks_submitted,
                           "tasks_running": len(s.tasks), "tasks_done": s.tasks_done,
                           "update_time": s.update_time} for s in node.servers.values()]
        out["cluster"] = self._common()
        out.update({k: v for k, v in self._common().items() if k.startswith(("poll_", "show_", "comp", "seq"))})
        return out

    def _find_server(self, location):
        location = (location or "").strip()
        for node in self.nodes.values():
            srv = node.servers.get(location)
            if srv is not None:
                return srv
        return None

    def _task_dict(self, tid, info):
        show = self.show_task_args
        return {
            "task": tid,
            "name": getattr(info.task, "name", ""),
            "args": ", ".join(_short_repr(a) for a in info.args or ()) if show else "",
            "kwargs": ", ".join("%s=%s" % (k, _short_repr(v)) for k, v in (info.kwargs or {}).items()) if show else "",
            "start_time": info.start_time,
        }

    def server_info(self, location, limit=100):
        """What C{GET /server_info?location=&limit=} answers, or None for an unknown server."""
        srv = self._find_server(location)
        if srv is None:
            return None
        tasks = sorted(srv.tasks.items(), key=lambda item: item[1].start_time or 0)
        if limit and limit > 0:
            tasks = tasks[:limit]
        node = self.nodes.get(srv.node_addr)
        out = {
            "location": srv.location,
            "status": srv.status,
            "node": srv.node_addr,
            "node_name": node.name if node else srv.node_addr,
            "tasks_submitted": srv.tasks_submitted,
            "tasks_running": len(srv.tasks),
            "tasks_done": srv.tasks_done,
            "update_time": srv.update_time,
            "tasks": [self._task_dict(tid, info) for tid, info in tasks],
            "finished": list(srv.finished),
        }
        out.update({k: v for k, v in self._common().items() if k.startswith(("poll_", "show_", "comp", "seq"))})
        return out

    # -- actions -------------------------------------------------------------------------

    def terminate_tasks(self, ids):
        """Terminate the running tasks with these ids; the list of ids acted on."""
        done = []
        for tid in ids:
            entry = self.tasks.get(tid)
            if entry is None:
                continue
            rtask = entry[0].task
            try:
                d = rtask.terminate()
            except Exception as e:
                log.warn("cannot terminate {t}: {e}", t=tid, e=e)
                continue
            if isinstance(d, defer.Deferred):
                d.addErrback(lambda f, tid=tid: log.warn("terminating {t} failed: {e}", t=tid, e=f.getErrorMessage()))
            done.append(tid)
        return done

    @defer.inlineCallbacks
    def control(self, method, targets):
        """Call C{computation.<method>(target)} for each; fires with C{{"done": [...], "failed": {...}}}."""
        done, failed = [], {}
        for target in targets:
            arg = Location.parse(target, 0) if method.endswith("_server") else target
            try:
                yield getattr(self.computation, method)(arg)
            except Exception as e:
                failed[target] = str(e) or type(e).__name__
            else:
                done.append(target)
        return {"done": done, "failed": failed}

    def update(self, poll_sec=None, show_task_args=None):
        """Change the pages' poll interval (0: events only) and whether task arguments show."""
        if poll_sec is not None:
            if poll_sec != poll_sec or poll_sec < 0:
                raise ValueError("poll_sec must be a number >= 0")
            self._settings.poll_sec = 0 if poll_sec < 1 else poll_sec
            if self._settings.poll_sec == int(self._settings.poll_sec):
                self._settings.poll_sec = int(self._settings.poll_sec)
        if show_task_args is not None:
            self._settings.show_task_args = bool(show_task_args)
        self.seq += 1
        self._broadcast("settings", dict(self.settings(), type="settings", seq=self.seq))
        return self.settings()

    # -- ending ------------------------------------------------------------------------------

    @defer.inlineCallbacks
    def shutdown(self, wait=True):
        """
        Stop serving: with C{wait}, first give browsers a moment to fetch the
        final state; then close event streams and connections and stop
        listening. Fires with None. The status stream still reaches the
        C{status_task} the computation had before.
        """
        if self._shut:
            return None
        if wait and self._streams:
            self.seq += 1
            self._broadcast("shutdown", {"type": "shutdown", "seq": self.seq})
            from twisted.internet.task import deferLater

            yield deferLater(self.reactor, 0.5, lambda: None)
        self._shut = True
        if self.computation.status_task == self.status_task:
            self.computation.status_task = self._previous
        if self._keepalive.running:
            self._keepalive.stop()
        for stream in list(self._streams):
            try:
                stream.finish()
            except Exception:
                pass
        self._streams = []
        yield defer.maybeDeferred(self._listener.stopListening)
        for proto in list(self._factory.protocols):
            transport = getattr(proto, "transport", None)
            if transport is not None:
                transport.loseConnection()
        log.info("Stopped HTTP server at port {port}", port=self.port)
        return None
