"""
dispycos: distributed communicating tasks on Twisted.

A L{Computation} ships code to servers that C{dispycosnode} runs on every
compute host; tasks there exchange messages with the client and each other.
"""

import importlib

from dispycos._version import __version__
from dispycos.errors import (
    AuthenticationError,
    ComputationClosed,
    DispycosError,
    FileTransferError,
    MailboxFull,
    NoServerError,
    PayloadTooLarge,
    PicklingError,
    RemoteTaskError,
    ScheduleError,
    SetupError,
    TaskAbandoned,
    TaskError,
    TaskTerminated,
    TaskTimeout,
    TimeoutError,
    UnknownTaskError,
)
from dispycos.status import (
    DispycosNodeAvailInfo,
    DispycosNodeInfo,
    DispycosStatus,
    DispycosTaskInfo,
    Location,
    Status,
    TaskInfo,
)

# The rest is imported on first use (PEP 562), so that node and server
# processes ("python -m dispycos.server") load only what they run.
_LAZY = {
    "DispycosNodeAllocate": ".scheduler.allocate",
    "Channel": ".peer.channels",
    "ChannelRef": ".peer.channels",
    "Client": ".client.computation",
    "Computation": ".client.computation",
    "LocalCluster": ".client.local",
    "default_cluster": ".client.local",
    "Scheduler": ".scheduler.core",
    "RemoteTask": ".peer.refs",
    "Task": ".peer.tasks",
    "TaskRef": ".peer.refs",
    "as_completed": ".client.completion",
}


def __getattr__(name):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError("module %r has no attribute %r" % (__name__, name))
    value = getattr(importlib.import_module(module, __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_LAZY))


# Status codes at module level for "from dispycos import *", except the names
# that are exception classes (their codes stay reachable as Status.X).
_status_names = [name for name in Status.__members__ if name not in ("TaskTerminated", "TaskAbandoned", "ComputationClosed")]
globals().update({name: Status[name] for name in _status_names})
MinPulseInterval = 1
MaxPulseInterval = 100

__all__ = [
    "__version__", "Channel", "ChannelRef", "DispycosNodeAllocate", "Client", "Computation", "Scheduler", "LocalCluster", "default_cluster", "Task", "TaskRef", "RemoteTask",
    "Location", "Status", "DispycosStatus", "DispycosNodeInfo", "DispycosNodeAvailInfo", "DispycosTaskInfo",
    "TaskInfo", "DispycosError", "ScheduleError", "RemoteTaskError", "TaskTerminated", "TaskAbandoned",
    "TaskTimeout", "as_completed", "TaskError", "FileTransferError", "MailboxFull", "NoServerError", "ComputationClosed", "PayloadTooLarge", "PicklingError", "SetupError",
    "AuthenticationError", "UnknownTaskError", "TimeoutError", "MinPulseInterval", "MaxPulseInterval",
] + _status_names
