"""
Stand-ins for in-memory tests of placement and of what places tasks: a
L{Placer} is the real L{Placing} with real L{ServerEntry} records on
stand-in nodes, and only what it needs of a Scheduler.
"""

from collections import deque

from dispycos.scheduler.links import ServerEntry
from dispycos.scheduler.placement import Placing
from dispycos.status import Location


class Node:
    def __init__(self, addr, name):
        self.location = Location(addr, 9706)
        self.addr = addr
        self.info = type("Info", (), {"name": name})()
        self.suspended = False
        self.servers = {}


class Placer(Placing):
    """Placing with what it needs of a Scheduler: the active computation and its servers."""

    def __init__(self, nodes_servers):
        self.active = object()
        self.servers = []
        self.waiting, self.waiting_cpu = deque(), deque()
        self.no_servers = 0
        for addr, count in nodes_servers:
            node = Node(addr, "node-" + addr)
            for i in range(1, count + 1):
                entry = ServerEntry(node, i, Location(addr, 10000 + i))
                node.servers[i] = entry
                self.servers.append(entry)

    def _fail_if_no_servers(self):
        self.no_servers += 1
