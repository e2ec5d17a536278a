# -*- test-case-name: tests.test_httpd -*-
"""
L{HTTPServer}: the browser monitor of a computation, put together from its
parts (L{dispycos.web}'s package docstring has the picture): it installs
itself as the computation's C{status_task}, feeds the model, chains every
message to the C{status_task} the computation had, and serves.
"""

import os

from twisted.application import service
from twisted.internet import defer, task
from twisted.logger import Logger

from dispycos.peer.tasks import Task
from dispycos.web import STATIC_DIR
from dispycos.web.actions import Actions
from dispycos.web.auth import RequestGuard, new_token, this_host_names
from dispycos.web.model import ClusterModel, Settings
from dispycos.web.pages import Pages
from dispycos.web.resources import add_api
from dispycos.web.service import MonitorService, MonitorSite, listen_description
from dispycos.web.sse import MAX_STREAMS, EventHub

__all__ = ["HTTPServer", "Monitor"]

log = Logger()


class Monitor(service.MultiService):
    """
    The monitor as a service: a model, an event hub, the request guard, the
    resource tree and a listening child service (named C{"monitor-http"})
    on a strports C{description}. Nothing listens before C{startService}.

    See L{HTTPServer} for the parameters; C{description} is a strports
    description (L{listen_description} makes one from host and port).
    """

    keepalive_sec = 15

    def __init__(self, computation, description, reactor, host="127.0.0.1", poll_sec=10, DocumentRoot=None,
                 show_task_args=True, allowed_hosts=(), name=None, token=None, max_streams=MAX_STREAMS,
                 scheme="http"):
        super().__init__()
        self.reactor = reactor
        self.host = host or ""
        self.name = name
        self.scheme = scheme
        self.token = token or new_token()
        self.document_root = os.path.abspath(DocumentRoot) if DocumentRoot else STATIC_DIR
        if not os.path.isdir(self.document_root):
            raise ValueError("DocumentRoot %r is not a directory" % (DocumentRoot,))
        self.model = ClusterModel(reactor, Settings(poll_sec, show_task_args), name=name)
        self.hub = EventHub(reactor, hello=self.model.hello, max_streams=max_streams,
                            keepalive_sec=self.keepalive_sec)
        self.model.on_event = self.hub.broadcast
        self.actions = Actions(self.model, lambda: self.computation)
        self.guard = RequestGuard(self.token, set(allowed_hosts) | this_host_names(self.host), lambda: self.port)
        root = add_api(Pages(self.document_root), self.model, self.hub, self.actions)
        self.site = MonitorSite(root, self.guard, reactor=reactor)
        self.http = MonitorService(reactor, description, self.site)
        self.http.setServiceParent(self)
        self.computation = None
        self._previous = None
        self._shut = False
        self.status_task = self._status_received
        self.attach(computation)

    def startService(self):
        super().startService()  # (listens: a port in use raises here)
        self.hub.start()
        log.info("Started HTTP{s} server at {host}:{port}", s="S" if self.scheme == "https" else "",
                 host=self.host or "*", port=self.port)
        self._announce()

    def _announce(self):
        """Log and print the address to open (only who sees it can use the monitor)."""
        log.info("dispycos monitor at {url}", url=self.url)
        try:
            print("dispycos monitor at %s" % self.url, flush=True)
        except Exception:
            pass

    @property
    def port(self):
        """The port listened on (the real one when asked for 0); None before starting."""
        return self.http.port

    @property
    def url(self):
        """The monitor's address with its token, e.g. C{http://127.0.0.1:8181/?token=...}."""
        host = self.host if self.host not in ("", "0.0.0.0", "::") else "127.0.0.1"
        if ":" in host:
            host = "[%s]" % host
        return "%s://%s:%d/?token=%s" % (self.scheme, host, self.port, self.token)

    @property
    def cookie_name(self):
        """The cookie that carries the token (one per port: cookies do not tell ports apart)."""
        return self.guard.cookie_name

    # -- the computation and its status stream --------------------------------------------

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
        self.model.reset()
        self._previous = computation.status_task
        computation.status_task = self.status_task
        if old is not None:
            self.model.event("computation")

    def _status_received(self, msg):
        if not self._shut:
            try:
                self.model.record(msg)
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
        if wait and self.hub.streams:
            self.hub.broadcast("shutdown", {"type": "shutdown", "seq": self.model.next_seq()})
            yield task.deferLater(self.reactor, 0.5, lambda: None)
        if self._shut:
            return None
        if self.running:
            yield defer.maybeDeferred(self.stopService)
        else:
            self._detach()
        log.info("Stopped HTTP server at port {port}", port=self.port)
        return None

    def stopService(self):
        """Stop watching (the computation gets its own C{status_task} back), end the streams, stop listening."""
        self._detach()
        return super().stopService()

    def _detach(self):
        self._shut = True
        if self.computation.status_task == self.status_task:
            self.computation.status_task = self._previous
        self.hub.close()

    # -- what the pages show and do (kept on the monitor for programs and tests) -----------

    nodes = property(lambda self: self.model.nodes, doc="node address -> its state")
    tasks = property(lambda self: self.model.tasks, doc="task id -> (TaskInfo, server state) of running tasks")
    seq = property(lambda self: self.model.seq, doc="the number of the last change announced")
    poll_sec = property(lambda self: self.model.settings.poll_sec)
    show_task_args = property(lambda self: self.model.settings.show_task_args)
    computation_status = property(lambda self: self.model.computation_status)

    @property
    def max_streams(self):
        """The most C{/events} streams served at once."""
        return self.hub.max_streams

    @max_streams.setter
    def max_streams(self, value):
        self.hub.max_streams = value

    _streams = property(lambda self: self.hub.streams, doc="the open event streams")

    def cluster_status(self, history=True):
        """What C{GET /cluster_status} answers."""
        return self.model.cluster_status(history)

    def node_info(self, host):
        """What C{GET /node_info?host=} answers, or None for an unknown node."""
        return self.model.node_info(host)

    def server_info(self, location, limit=100):
        """What C{GET /server_info?location=&limit=} answers, or None for an unknown server."""
        return self.model.server_info(location, limit)

    def _find_server(self, location):
        return self.model.find_server(location)

    def settings(self):
        return self.model.settings.as_dict()

    def update(self, poll_sec=None, show_task_args=None):
        """Change the pages' poll interval (0: events only) and whether task arguments show."""
        return self.model.update_settings(poll_sec=poll_sec, show_task_args=show_task_args)

    def terminate_tasks(self, ids):
        """Terminate the running tasks with these ids; the list of ids acted on."""
        return self.actions.terminate_tasks(ids)

    def control(self, method, targets):
        """Call C{computation.<method>(target)} for each; fires with C{{"done": [...], "failed": {...}}}."""
        return self.actions.control(method, targets)


class HTTPServer(Monitor):
    """
    Serve the monitor of C{computation} on C{host:port} (HTTPS when
    C{certfile} is given; the key is in C{keyfile} or in C{certfile}),
    listening at once unless C{start=False} (then, like any L{Monitor}, it
    listens when started: C{startService()}, or as a child of a service
    tree).

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
    @param listen: a strports description to listen on instead of
        C{host}, C{port}, C{certfile} and C{keyfile} (C{host} still names
        the monitor in its address).
    @param start: whether to listen now (the address is then printed).
    @ivar port: the port listened on (the real one when C{port} is 0).
    @ivar token: the access token.
    @ivar status_task: the callable installed as the computation's
        C{status_task}.
    """

    def __init__(self, computation, host="127.0.0.1", port=8181, poll_sec=10, DocumentRoot=None, keyfile=None,
                 certfile=None, show_task_args=True, reactor=None, allowed_hosts=(), name=None, token=None,
                 max_streams=MAX_STREAMS, listen=None, start=True):
        if reactor is None:
            from twisted.internet import reactor  # the default of the public API; the parts get it injected
        description = listen or listen_description(host or "", port, certfile, keyfile)
        scheme = "https" if description.split(":", 1)[0] in ("ssl", "tls") or (listen is None and certfile) else "http"
        previous = computation.status_task  # (given back if it cannot listen: a port in use changes nothing)
        super().__init__(computation, description, reactor, host=host, poll_sec=poll_sec, DocumentRoot=DocumentRoot,
                         show_task_args=show_task_args, allowed_hosts=allowed_hosts, name=name, token=token,
                         max_streams=max_streams, scheme=scheme)
        if start:
            try:
                self.startService()
            except BaseException:
                computation.status_task = previous
                self.running = 0
                raise
