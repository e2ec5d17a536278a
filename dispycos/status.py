# -*- test-case-name: tests.unit.test_tasks -*-
"""
Status codes and the small records sent to a computation's C{status_task}.
"""

import enum
from dataclasses import dataclass
from typing import Any, Optional


class Status(enum.IntEnum):
    """Status codes, numbered as in the original dispycos."""

    NodeIgnore = 1
    NodeDiscovered = 2
    NodeInitialized = 3
    NodeSuspended = 4
    NodeResumed = 5
    NodeClosed = 6
    NodeDisconnected = 7
    NodeAbandoned = 8
    ServerDiscovered = 12
    ServerInitialized = 13
    ServerSuspended = 14
    ServerResumed = 15
    ServerClosed = 16
    ServerDisconnected = 17
    ServerAbandoned = 18
    TaskCreated = 21
    TaskStarted = 21
    TaskFinished = 22
    TaskAbandoned = 23
    TaskTerminated = 24
    #: A task runs again (a retry): info is the new attempt's L{TaskInfo}.
    TaskRetried = 25
    ComputationScheduled = 31
    ClientScheduled = 31
    ComputationClosed = 32
    ClientClosed = 32


class Location:
    """
    The address of a dispycos process (node, server or client): C{addr:port}.
    """

    __slots__ = ("addr", "port")

    def __init__(self, addr, port):
        self.addr = str(addr)
        self.port = int(port)

    @classmethod
    def parse(cls, text, default_port):
        """
        Parse C{"host[:port]"} (or return a L{Location} unchanged).
        """
        if isinstance(text, Location):
            return text
        text = str(text).strip()
        if text.count(":") == 1:
            host, port = text.split(":")
            return cls(host, int(port))
        return cls(text, default_port)

    def __eq__(self, other):
        return isinstance(other, Location) and (self.addr, self.port) == (other.addr, other.port)

    def __hash__(self):
        return hash((self.addr, self.port))

    def __str__(self):
        return "%s:%d" % (self.addr, self.port)

    def __repr__(self):
        return "Location(%r, %d)" % (self.addr, self.port)

    def __reduce__(self):
        return (Location, (self.addr, self.port))


@dataclass
class DispycosNodeAvailInfo:
    """Resources a node has available: idle CPU %, bytes of memory, disk and swap."""

    location: Optional[Location]
    cpu: Optional[float] = None
    memory: Optional[int] = None
    disk: Optional[int] = None
    swap: Optional[int] = None


@dataclass
class DispycosNodeInfo:
    """A node: its name, address, number of servers, platform and resources."""

    name: str
    addr: str
    cpus: int
    platform: str
    avail_info: Optional[DispycosNodeAvailInfo] = None


@dataclass
class TaskInfo:
    """
    A task's creation record; a finished task's record also carries
    C{end_time}, C{result} and C{exception}.
    """

    task: Any
    args: tuple
    kwargs: dict
    start_time: float
    end_time: Optional[float] = None
    result: Any = None
    exception: Any = None


DispycosTaskInfo = TaskInfo


@dataclass
class DispycosStatus:
    """
    A status message: C{status} (a L{Status}) and its C{info}; a setup
    failure also carries the C{exception} (a L{SetupError}).
    """

    status: Status
    info: Any = None
    exception: Any = None


# Status constants reachable as attributes of DispycosStatus, as in the original.
for _name, _member in Status.__members__.items():
    setattr(DispycosStatus, _name, _member)
del _name, _member
