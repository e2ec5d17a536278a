# -*- test-case-name: tests.unit.test_tasks -*-
"""
Exceptions of dispycos. Every failure a Deferred of the public API reports is
a L{DispycosError}.
"""

import builtins


class DispycosError(Exception):
    """Base class of every dispycos error."""


class ScheduleError(DispycosError):
    """A computation could not be scheduled (no scheduler, nodes refused, timeout)."""


class AuthenticationError(DispycosError):
    """A peer failed the shared-secret handshake."""


class PayloadTooLarge(DispycosError):
    """A pickled payload is larger than the inline cap."""


class PicklingError(DispycosError):
    """An object could not be pickled for transfer."""


class NoServerError(DispycosError):
    """No server can run the task (none left, or the named node/server is unknown)."""


class ComputationClosed(DispycosError):
    """The computation was closed (or never scheduled)."""


class ConnectionLostError(DispycosError):
    """The connection to a peer was lost before an answer arrived."""


class UnknownTaskError(DispycosError):
    """A message or request named a task that does not exist (any more)."""


class TaskError(DispycosError):
    """Base class of errors about one task; C{task} names it (may be None)."""

    def __init__(self, message="", task=None):
        super().__init__(message)
        self.task = task


class RemoteTaskError(TaskError):
    """
    A task raised an exception.

    @ivar type_name: the remote exception's class name.
    @ivar text: C{str()} of the remote exception.
    @ivar traceback: the remote traceback text.
    @ivar exception: the exception itself when it could be unpickled, else None.
    """

    def __init__(self, type_name, text, traceback="", exception=None, task=None):
        super().__init__("%s: %s" % (type_name, text), task)
        self.type_name = type_name
        self.text = text
        self.traceback = traceback
        self.exception = exception

    def __reduce__(self):
        return (self.__class__, (self.type_name, self.text, self.traceback, None, None))


class TaskTerminated(TaskError):
    """The task was terminated before it finished."""


class TaskAbandoned(TaskError):
    """The task was lost with its server or node."""


class TaskTimeout(TaskError):
    """The task ran longer than its C{timeout} and was terminated (its server replaced if it had to be)."""


class MailboxFull(DispycosError):
    """A task's mailbox holds as many messages as allowed; the message was refused."""


class SetupError(DispycosError):
    """C{node_setup} or C{server_setup} failed."""


class TimeoutError(DispycosError, builtins.TimeoutError):
    """A C{receive}, C{deliver} or C{result} did not complete in time."""


class FileTransferError(DispycosError):
    """A file could not be transferred (size limit, bad path, I/O error)."""
