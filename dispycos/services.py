"""
L{StartStopService}: a Twisted service around something that has its own
C{start()} and C{stop()} (a heartbeat, discovery sockets), so that it can be
a named child of a C{MultiService} and still be used on its own.
"""

from twisted.application import service


class StartStopService(service.Service):
    """C{start()} when the service starts, C{stop()} when it stops."""

    def start(self):
        raise NotImplementedError

    def stop(self):
        raise NotImplementedError

    def startService(self):
        super().startService()
        self.start()

    def stopService(self):
        super().stopService()
        self.stop()
