"""
Fakes for the monitor's fast tests: requests that need no connection, a
computation and its tasks, and status messages to feed the model.
"""

from twisted.internet import defer
from twisted.web.http_headers import Headers
from twisted.web.test.requesthelper import DummyChannel, DummyRequest

from dispycos.status import (DispycosNodeAvailInfo, DispycosNodeInfo, DispycosStatus, Location, Status,
                             TaskInfo)


class FakeTransport:
    """A connection's transport: what the stream's abort does to it."""

    def __init__(self):
        self.aborted = False

    def abortConnection(self):
        self.aborted = True


class FakeRequest(DummyRequest):
    """
    A L{DummyRequest} with what the monitor uses of a real request: the
    query in C{uri} and C{args}, cookies, a push producer kept (not pulled
    in a loop), a channel with a transport, and C{lose_connection()} as a
    dropped connection looks to the request (its C{notifyFinish} fails,
    its C{channel} is None).
    """

    def __init__(self, path=b"/", method=b"GET", args=None, headers=None, cookies=None, secure=False):
        segments = path.lstrip(b"/").partition(b"?")[0].split(b"/")
        super().__init__(segments)
        self.method = method
        self.uri = path
        self.path = path.partition(b"?")[0]
        for name, values in (args or {}).items():
            self.args[name.encode() if isinstance(name, str) else name] = [
                v.encode() if isinstance(v, str) else v for v in (values if isinstance(values, list) else [values])]
        self.requestHeaders = Headers()
        for name, value in (headers or {}).items():
            self.requestHeaders.addRawHeader(name, value)
        self.received_cookies = dict(cookies or {})
        self.cookies = []
        self.secure = secure
        self.producer = None
        self.channel = DummyChannel()
        self.channel.transport = FakeTransport()

    def getCookie(self, name):
        return self.received_cookies.get(name)

    def addCookie(self, k, v, **kw):
        self.cookies.append((k, v, kw))

    def isSecure(self):
        return self.secure

    def registerProducer(self, producer, streaming):
        self.producer = producer

    def unregisterProducer(self):
        self.producer = None

    def lose_connection(self):
        """The connection is gone, as a real request sees it."""
        self.channel = None
        self.processingFailed(Exception("connection lost"))

    def body(self):
        return b"".join(self.written)


class FakeTask:
    """A remote task as the monitor sees one: a name, a location, C{terminate()}."""

    def __init__(self, name, tid, location):
        self.name = name
        self.tid = tid
        self.location = Location.parse(location, 0)
        self.terminated = 0

    def __str__(self):
        return "%s/%d@%s" % (self.name, self.tid, self.location)

    def terminate(self):
        self.terminated += 1
        return defer.succeed(None)


class FakeComputation:
    """What the monitor needs of a computation: C{status_task} and the four controls."""

    def __init__(self, status_task=None, fail=()):
        self.status_task = status_task
        self.fail = set(fail)
        self.calls = []
        self.pending = {}

    def _control(self, method, target):
        self.calls.append((method, str(target)))
        if str(target) in self.fail:
            return defer.fail(RuntimeError("no such target %s" % target))
        if str(target) == "slow":
            d = self.pending[method, "slow"] = defer.Deferred()
            return d
        return defer.succeed(None)

    def suspend_node(self, target):
        return self._control("suspend_node", target)

    def resume_node(self, target):
        return self._control("resume_node", target)

    def suspend_server(self, target):
        return self._control("suspend_server", target)

    def resume_server(self, target):
        return self._control("resume_server", target)


def node_status(status, addr="10.0.0.1", name="n1", cpus=4, platform="test-os", avail=None):
    return DispycosStatus(status, DispycosNodeInfo(name, addr, cpus, platform, avail))


def server_status(status, location):
    return DispycosStatus(status, Location.parse(location, 0))


def avail(addr, cpu, memory=1000, disk=2000, swap=0):
    return DispycosNodeAvailInfo(Location(addr, 0), cpu, memory, disk, swap)


def task_created(rtask, start_time, args=(), kwargs=None):
    return DispycosStatus(Status.TaskCreated, TaskInfo(rtask, tuple(args), dict(kwargs or {}), start_time))


def task_finished(rtask, start_time, end_time, exception=None, status=Status.TaskFinished):
    return DispycosStatus(status, TaskInfo(rtask, (), {}, start_time, end_time, None, exception))
