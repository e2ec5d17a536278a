"""
dispycos: distributed communicating tasks on Twisted.

A L{Computation} ships code to servers that C{dispycosnode} runs on every
compute host; tasks there exchange messages with the client and each other.
"""

from ._version import __version__
from .allocate import DispycosNodeAllocate
from .channels import Channel, ChannelRef
from .client import Client, Computation
from .errors import (
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
    UnknownTaskError,
)
from .local import LocalCluster, default_cluster
from .scheduler import Scheduler
from .status import (
    DispycosNodeAvailInfo,
    DispycosNodeInfo,
    DispycosStatus,
    DispycosTaskInfo,
    Location,
    Status,
    TaskInfo,
)
from .tasks import RemoteTask, Task, TaskRef, TimeoutError

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
    "TaskError", "FileTransferError", "MailboxFull", "NoServerError", "ComputationClosed", "PayloadTooLarge", "PicklingError", "SetupError",
    "AuthenticationError", "UnknownTaskError", "TimeoutError", "MinPulseInterval", "MaxPulseInterval",
] + _status_names
