# -*- test-case-name: tests.unit.test_web_service -*-
"""
The monitor's listener: L{MonitorSite} (every request checked by a
L{dispycos.web.auth.RequestGuard}, every answer with the security headers)
served by L{MonitorService}, which listens on a strports description
(C{"tcp:8181:interface=127.0.0.1"}, C{"ssl:0:privateKey=...:certKey=..."})
when started, not when made, so it can be a child of a service tree.
"""

from twisted.application import service
from twisted.internet import defer, endpoints
from twisted.logger import Logger
from twisted.protocols.policies import WrappingFactory
from twisted.web import server

from dispycos.web.auth import SECURITY_HEADERS
from dispycos.web.resources import ErrorResource

__all__ = ["MonitorService", "MonitorSite", "listen_description"]

log = Logger()


def listen_description(host, port, certfile=None, keyfile=None):
    """The strports description of C{host:port} (TLS with C{certfile}; its key in C{keyfile} or in it)."""
    quote = endpoints.quoteStringArgument
    if certfile:
        desc = "ssl:%d:privateKey=%s:certKey=%s" % (port, quote(keyfile or certfile), quote(certfile))
    else:
        desc = "tcp:%d" % port
    if host:
        desc += ":interface=%s" % quote(host)
    return desc


class MonitorSite(server.Site):
    """Checks every request with C{guard} (its host, its token, the origin of a POST); no access log."""

    def __init__(self, root, guard, reactor=None):
        super().__init__(root, reactor=reactor)
        self.guard = guard
        self.noisy = False

    def log(self, request):
        pass  # no access log

    def getResourceFor(self, request):
        for name, value in SECURITY_HEADERS.items():
            request.setHeader(name, value)
        why = self.guard.refuse(request)
        if why is not None:
            log.warn("monitor refused {method} {uri}: {why}", method=request.method, uri=request.uri, why=why)
            return ErrorResource(403, why)
        return super().getResourceFor(request)


class MonitorService(service.Service):
    """
    Serves C{site} on the strports C{description} while running.

    @ivar port: the port listened on once started (the real one for port 0).
    @ivar listening: the Deferred of the listening port, from C{startService}.
    """

    name = "monitor-http"

    def __init__(self, reactor, description, site):
        self.reactor = reactor
        self.description = description
        self.site = site
        self.factory = WrappingFactory(site)  # (it knows the connections, to close them at the end)
        self.port = None
        self.listening = None
        self._listener = None

    def startService(self):
        """Listen; a failure to (port in use) is raised at once when the endpoint says so at once."""
        endpoint = endpoints.serverFromString(self.reactor, self.description)
        d = endpoint.listen(self.factory)
        failures = []
        d.addCallbacks(self._listened, failures.append)
        if failures:
            failures[0].raiseException()
        self.listening = d
        super().startService()

    def _listened(self, listener):
        self._listener = listener
        self.port = listener.getHost().port
        return listener

    @defer.inlineCallbacks
    def stopService(self):
        """Stop listening and close the connections still open."""
        super().stopService()
        if self._listener is not None:
            yield defer.maybeDeferred(self._listener.stopListening)
            self._listener = None
        for proto in list(self.factory.protocols):
            transport = getattr(proto, "transport", None)
            if transport is not None:
                transport.loseConnection()
