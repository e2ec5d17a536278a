# -*- test-case-name: tests.unit.test_tasks -*-
"""
Outcomes of tasks as they travel between processes: C{(kind, value)} with
kind L{OK} (the result), L{ERROR} (type name, text, traceback, exception),
L{TERMINATED} or L{ABANDONED} (why), and the L{DispycosError} each stands
for at the task's creator. L{TIMEOUT} (the seconds allowed) never travels:
a client gives it to a task it terminated for running too long.
"""

import traceback

from twisted.python.failure import Failure

from dispycos import serialize
from dispycos.errors import PicklingError, RemoteTaskError, TaskAbandoned, TaskTerminated, TaskTimeout

OK, ERROR, TERMINATED, ABANDONED, TIMEOUT = "ok", "error", "terminated", "abandoned", "timeout"


def error_outcome(exc, tb_text=None):
    """An outcome describing exception C{exc}."""
    if tb_text is None:
        tb_text = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return (ERROR, (type(exc).__name__, str(exc), tb_text, exc))


def plain_outcome(outcome):
    """An outcome as it travels: an error's exception pickled apart (None when it cannot be)."""
    kind, value = outcome
    if kind != ERROR:
        return outcome
    name, text, tb_text, exc = value
    try:
        exc_blob = serialize.dumps(exc)
        serialize.loads(exc_blob)
    except Exception:
        exc_blob = None
    return (ERROR, (name, text, tb_text, exc_blob))


def encode_outcome(outcome):
    """Pickle an outcome; a result or exception that cannot be pickled becomes an error."""
    try:
        return serialize.dumps(plain_outcome(outcome), "task result")
    except PicklingError as e:
        return serialize.dumps(plain_outcome(error_outcome(e)))


def _decoded(outcome):
    kind, value = outcome
    if kind == ERROR:
        name, text, tb_text, exc_blob = value
        exc = None
        if exc_blob is not None:
            try:
                exc = serialize.loads(exc_blob)
            except Exception:
                exc = None
        return (kind, (name, text, tb_text, exc))
    return outcome


def decode_outcome(blob):
    """Inverse of L{encode_outcome} (the exception is unpickled when possible)."""
    return _decoded(serialize.loads(blob))


def encode_group_outcomes(values, bad):
    """
    Pickle the outcomes of consecutive tasks of a group in one go: C{values}
    their results (None for a task that did not succeed) and C{bad}
    C{{position: outcome}} of those that did not; no outcome tuple per task.
    A result that cannot be pickled becomes an error.
    """
    plain = {i: plain_outcome(o) for i, o in bad.items()}
    try:
        return serialize.dumps((values, plain), "task results")
    except PicklingError:
        kept = []
        for i, value in enumerate(values):
            if i not in plain:
                try:
                    serialize.dumps(value, "task result")
                except PicklingError as e:
                    plain[i] = plain_outcome(error_outcome(e))
                    value = None
            kept.append(value)
        return serialize.dumps((kept, plain), "task results")


def group_failed(count, outcome):
    """L{encode_group_outcomes} of C{count} tasks that all end with the plain C{outcome}."""
    return serialize.dumps(([None] * count, dict.fromkeys(range(count), outcome)), "outcomes")


def decode_group_outcomes(blob):
    """Inverse of L{encode_group_outcomes}: C{(values, {position: outcome})}."""
    values, bad = serialize.loads(blob)
    if not isinstance(values, list) or not isinstance(bad, dict):
        raise TypeError("not the outcomes of a group")
    return values, {i: _decoded(o) for i, o in bad.items()}


def group_outcome(values, bad, i):
    """The outcome of task C{i} of what L{decode_group_outcomes} gave."""
    outcome = bad.get(i) if bad else None
    return (OK, values[i]) if outcome is None else outcome


def outcome_result(outcome, task=None):
    """The value of an outcome, or the L{DispycosError} it stands for."""
    kind, value = outcome
    if kind == OK:
        return value
    if kind == ERROR:
        name, text, tb_text, exc = value
        return Failure(RemoteTaskError(name, text, tb_text, exc, task))
    if kind == TERMINATED:
        return Failure(TaskTerminated("task %s was terminated" % (task,), task))
    if kind == TIMEOUT:
        return Failure(TaskTimeout("task %s ran longer than its timeout of %s s and was terminated" % (task, value), task))
    return Failure(TaskAbandoned("task %s was abandoned (%s)" % (task, value or "server lost"), task))
