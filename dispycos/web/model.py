# -*- test-case-name: tests.unit.test_web_model -*-
"""
The monitor's cluster-state model: nodes, servers, tasks and their counts,
fed by a computation's status messages (L{ClusterModel.record}) and read by
the JSON resources (L{ClusterModel.cluster_status}, C{node_info},
C{server_info}).

Times come from the C{clock} it is given (an C{IReactorTime}: the reactor,
or a L{twisted.internet.task.Clock} in tests); nothing here is global. Every
change is announced to C{on_event(name, data)} (the SSE hub's C{broadcast})
with a sequence number that only grows.
"""

import collections
import ipaddress

from twisted.logger import Logger

from dispycos.status import DispycosNodeAvailInfo, DispycosNodeInfo, DispycosStatus, Location, Status, TaskInfo

__all__ = ["ClusterModel", "Settings", "NodeState", "ServerState"]

log = Logger()

#: seconds of resource history kept per node (for the CPU / memory charts)
HISTORY_SECONDS = 600
#: at most this many samples per node
HISTORY_SAMPLES = 120
#: finished tasks remembered per server (shown on the Server page)
RECENT_FINISHED = 20
#: length of the text shown for one argument
ARG_TEXT_LIMIT = 200

CLOSED_STATES = ("Closed", "Disconnected", "Abandoned")


def state_name(status, prefix):
    """C{Status.NodeSuspended} -> C{"Suspended"}; resumed reads as initialized."""
    name = Status(status).name
    if name.startswith(prefix):
        name = name[len(prefix):]
    return "Initialized" if name == "Resumed" else name


def short_repr(value):
    """C{repr(value)}, cut to L{ARG_TEXT_LIMIT} characters; never raises."""
    try:
        text = repr(value)
    except Exception as e:  # a broken __repr__ must not break the monitor
        text = "<unprintable %s: %s>" % (type(value).__name__, e)
    if len(text) > ARG_TEXT_LIMIT:
        text = text[:ARG_TEXT_LIMIT - 3] + "..."
    return text


def task_id(rtask):
    """The id of a task on the pages and in C{/terminate_tasks}: C{name/tid@addr:port}."""
    return str(rtask)


class ServerState:
    def __init__(self, location, node_addr, now):
        self.location = location
        self.node_addr = node_addr
        self.status = "Discovered"
        self.tasks = collections.OrderedDict()  # task id -> TaskInfo
        self.tasks_submitted = 0
        self.tasks_done = 0
        self.finished = collections.deque(maxlen=RECENT_FINISHED)
        self.update_time = now


class NodeState:
    def __init__(self, addr, name, now):
        self.addr = addr
        self.name = name or addr
        self.cpus = 0
        self.platform = ""
        self.status = "Discovered"
        self.servers = collections.OrderedDict()  # str(location) -> ServerState
        self.tasks_submitted = 0
        self.tasks_done = 0
        self.avail = {"cpu": None, "memory": None, "disk": None, "swap": None}
        self.history = collections.deque(maxlen=HISTORY_SAMPLES)
        self.update_time = now

    def tasks_running(self):
        return sum(len(s.tasks) for s in self.servers.values())


class Settings:
    """What the pages may change: their poll interval and whether task arguments show."""

    def __init__(self, poll_sec=10, show_task_args=True):
        if poll_sec < 1:
            log.warn("HTTPServer: poll_sec {p} is too small; using 1", p=poll_sec)
            poll_sec = 1
        self.poll_sec = poll_sec
        self.show_task_args = bool(show_task_args)

    def update(self, poll_sec=None, show_task_args=None):
        """Change them (C{poll_sec} under 1: 0, events only); ValueError for a bad C{poll_sec}."""
        if poll_sec is not None:
            if poll_sec != poll_sec or poll_sec < 0:
                raise ValueError("poll_sec must be a number >= 0")
            poll_sec = 0 if poll_sec < 1 else poll_sec
            self.poll_sec = int(poll_sec) if poll_sec == int(poll_sec) else poll_sec
        if show_task_args is not None:
            self.show_task_args = bool(show_task_args)

    def as_dict(self):
        return {"poll_sec": self.poll_sec, "show_task_args": self.show_task_args}


class ClusterModel:
    """
    The state of one computation's cluster as its status messages tell it.

    @ivar nodes: node address -> L{NodeState}, in the order first heard of.
    @ivar tasks: task id -> (L{TaskInfo}, L{ServerState}) of the running tasks.
    @ivar seq: the number of the last change announced.
    """

    def __init__(self, clock, settings=None, name=None, on_event=None):
        self.clock = clock
        self.settings = settings or Settings()
        self.name = name
        self.on_event = on_event or (lambda name, data: None)
        self.seq = 0
        self.reset()

    def reset(self):
        """Forget every node and task (another computation follows)."""
        self.nodes = collections.OrderedDict()
        self.tasks = {}
        self.tasks_submitted = 0
        self.tasks_done = 0
        self.computation_status = "Created"

    def next_seq(self):
        self.seq += 1
        return self.seq

    # -- the status stream -----------------------------------------------------------

    def _node(self, addr, name=None):
        node = self.nodes.get(addr)
        if node is None:
            node = self.nodes[addr] = NodeState(addr, name, self.clock.seconds())
        elif name:
            node.name = name
        return node

    def _server(self, location):
        key = str(location)
        addr = location.addr if isinstance(location, Location) else key.rpartition(":")[0]
        node = self._node(addr)
        srv = node.servers.get(key)
        if srv is None:
            srv = node.servers[key] = ServerState(key, addr, self.clock.seconds())
        return node, srv

    def record(self, msg):
        """Take in one status message (others than the monitor's kinds are ignored)."""
        now = self.clock.seconds()
        if isinstance(msg, DispycosNodeAvailInfo):
            if msg.location is None:
                return
            node = self._node(msg.location.addr)
            self._set_avail(node, msg, now)
            node.update_time = now
            self.event("avail", node=node.addr)
            return
        if not isinstance(msg, DispycosStatus):
            return
        status, info = msg.status, msg.info
        if status == Status.ComputationScheduled:
            self.computation_status = "Scheduled"
            self.event("computation")
        elif status == Status.ComputationClosed:
            self.computation_status = "Closed"
            for tid in list(self.tasks):
                self._task_finished(tid, None, now, "TaskAbandoned")
            self.event("computation")
        elif Status.NodeIgnore <= status <= Status.NodeAbandoned and isinstance(info, DispycosNodeInfo):
            self._node_status(status, info, now)
        elif Status.ServerDiscovered <= status <= Status.ServerAbandoned and info is not None:
            node, srv = self._server(info)
            srv.status = state_name(status, "Server")
            srv.update_time = node.update_time = now
            self.event("server", node=node.addr, server=srv.location, status=status.name)
        elif status == Status.TaskCreated and isinstance(info, TaskInfo):
            rtask = info.task
            node, srv = self._server(rtask.location)
            tid = task_id(rtask)
            srv.tasks[tid] = info
            self.tasks[tid] = (info, srv)
            srv.tasks_submitted += 1
            node.tasks_submitted += 1
            self.tasks_submitted += 1
            srv.update_time = node.update_time = now
            self.event("task", node=node.addr, server=srv.location, task=tid, status="TaskCreated")
        elif status in (Status.TaskFinished, Status.TaskTerminated, Status.TaskAbandoned) and isinstance(info, TaskInfo):
            if status == Status.TaskFinished:
                exc = info.exception
                outcome = "done" if exc is None else type(exc).__name__
            else:
                outcome = status.name
            self._task_finished(task_id(info.task), info, now, outcome)

    def _node_status(self, status, info, now):
        node = self._node(info.addr, info.name)
        node.status = state_name(status, "Node")
        if status in (Status.NodeDiscovered, Status.NodeInitialized):
            node.cpus = info.cpus
            node.platform = info.platform or ""
            if info.avail_info is not None:
                self._set_avail(node, info.avail_info, now, sample=False)
        if status == Status.NodeInitialized and self.computation_status == "Created":
            self.computation_status = "Scheduled"
        if status in (Status.NodeClosed, Status.NodeDisconnected, Status.NodeAbandoned):
            for srv in node.servers.values():
                if srv.status not in CLOSED_STATES:
                    srv.status = node.status
                    srv.update_time = now
        node.update_time = now
        self.event("node", node=node.addr, status=status.name)

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
        self.event("task", node=srv.node_addr, server=srv.location, task=tid, status="TaskFinished",
                   outcome=outcome)

    def _set_avail(self, node, avail, now, sample=True):
        node.avail = {"cpu": avail.cpu, "memory": avail.memory, "disk": avail.disk, "swap": avail.swap}
        if not sample:  # (a node's first CPU figure, taken at connection, is meaningless)
            return
        node.history.append((round(now, 2), avail.cpu, avail.memory))
        while node.history and node.history[0][0] < now - HISTORY_SECONDS:
            node.history.popleft()

    # -- announcing changes ------------------------------------------------------------

    def event(self, kind, **data):
        """Announce a change of C{kind} (a C{"message"} event with the totals)."""
        data.update(type=kind, seq=self.next_seq(), time=self.clock.seconds(), tasks_submitted=self.tasks_submitted,
                    tasks_running=len(self.tasks), tasks_done=self.tasks_done,
                    computation=self.computation_status)
        self.on_event("message", data)

    def update_settings(self, poll_sec=None, show_task_args=None):
        """L{Settings.update}, announced as a C{"settings"} event; the settings."""
        self.settings.update(poll_sec=poll_sec, show_task_args=show_task_args)
        self.on_event("settings", dict(self.settings.as_dict(), type="settings", seq=self.next_seq()))
        return self.settings.as_dict()

    def hello(self):
        """What a new event stream is told first."""
        return {"type": "hello", "seq": self.seq, "time": self.clock.seconds(), "poll_sec": self.settings.poll_sec,
                "show_task_args": self.settings.show_task_args, "computation": self.computation_status}

    # -- data for the pages -------------------------------------------------------------

    def _node_dict(self, node, history=True):
        d = {
            "addr": node.addr,
            "name": node.name,
            "status": node.status,
            "cpus": node.cpus,
            "platform": node.platform,
            "servers": len(node.servers),
            "servers_active": sum(1 for s in node.servers.values() if s.status not in CLOSED_STATES),
            "tasks_submitted": node.tasks_submitted,
            "tasks_running": node.tasks_running(),
            "tasks_done": node.tasks_done,
            "avail": dict(node.avail),
            "update_time": node.update_time,
        }
        if history:
            d["history"] = [list(h) for h in node.history]
        return d

    def common(self):
        """The totals and settings every answer carries."""
        return {"tasks_submitted": self.tasks_submitted, "tasks_running": len(self.tasks),
                "tasks_done": self.tasks_done, "computation": self.computation_status,
                "seq": self.seq, "time": self.clock.seconds(), "poll_sec": self.settings.poll_sec,
                "show_task_args": self.settings.show_task_args, "name": self.name}

    def _page_common(self):
        return {k: v for k, v in self.common().items() if k.startswith(("poll_", "show_", "comp", "seq"))}

    def cluster_status(self, history=True):
        """What C{GET /cluster_status} answers."""
        out = {"nodes": [self._node_dict(n, history) for n in self.nodes.values()]}
        out.update(self.common())
        return out

    def find_node(self, host):
        """The node of address or name C{host}, or None."""
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
        node = self.find_node(host)
        if node is None:
            return None
        out = self._node_dict(node)
        out["servers"] = [{"location": s.location, "status": s.status, "tasks_submitted": s.tasks_submitted,
                           "tasks_running": len(s.tasks), "tasks_done": s.tasks_done,
                           "update_time": s.update_time} for s in node.servers.values()]
        out["cluster"] = self.common()
        out.update(self._page_common())
        return out

    def find_server(self, location):
        """The server at C{location} (C{"addr:port"}), or None."""
        location = (location or "").strip()
        for node in self.nodes.values():
            srv = node.servers.get(location)
            if srv is not None:
                return srv
        return None

    def _task_dict(self, tid, info):
        show = self.settings.show_task_args
        return {
            "task": tid,
            "name": getattr(info.task, "name", ""),
            "args": ", ".join(short_repr(a) for a in info.args or ()) if show else "",
            "kwargs": ", ".join("%s=%s" % (k, short_repr(v)) for k, v in (info.kwargs or {}).items()) if show else "",
            "start_time": info.start_time,
        }

    def server_info(self, location, limit=100):
        """What C{GET /server_info?location=&limit=} answers, or None for an unknown server."""
        srv = self.find_server(location)
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
        out.update(self._page_common())
        return out
