# -*- test-case-name: tests.unit.test_tasks -*-
"""
The runner of a task's code: it drives pycos-style generator functions
(yielding Deferreds) and C{async def} coroutines step by step, and raises
L{TaskTerminated} into them; L{_SinkRunner} sends what each step prints to
the task's client (forward_output).
"""

import ctypes

from twisted.internet import defer
from twisted.python.failure import Failure

from dispycos.errors import TaskTerminated
from dispycos.peer.outcomes import OK, TERMINATED, error_outcome


#: Nothing yielded yet (L{_Runner.go_on}).
_NOTHING = object()


class _Runner:
    """
    Drives a generator (pycos style: yielded Deferreds are awaited, the result
    is the return value or else the last non-Deferred value yielded) or a
    coroutine (awaiting Deferreds) on the reactor.
    """

    def __init__(self, it, coroutine, done):
        self.it = it
        self.coroutine = coroutine
        self.done = done
        self.last = None
        self.waiting = None
        self.terminating = False

    def start(self):
        self._step(None, None)

    def go_on(self, yielded):
        """Take over a generator that someone else started and that yielded C{yielded}."""
        self._step(None, None, yielded)

    def _step(self, value, exc, yielded=_NOTHING):
        it = self.it
        while True:
            try:
                if yielded is not _NOTHING:
                    y, yielded = yielded, _NOTHING
                elif exc is not None:
                    y = it.throw(exc)
                else:
                    y = it.send(value)
            except StopIteration as e:
                if self.terminating:
                    return self.done((TERMINATED, None))
                result = e.value
                if result is None and not self.coroutine:
                    result = self.last
                return self.done((OK, result))
            except TaskTerminated:
                return self.done((TERMINATED, None))
            except BaseException as e:
                if self.terminating and isinstance(e, (GeneratorExit, defer.CancelledError)):
                    return self.done((TERMINATED, None))
                return self.done(error_outcome(e))
            value = exc = None
            if isinstance(y, defer.Deferred):
                if self.coroutine:
                    if y.called and not y.paused:
                        continue
                    self.waiting = y
                    y.addBoth(self._resume)
                    return
                if y.called and not y.paused:
                    box = []
                    y.addBoth(box.append)
                    r = box[0]
                    if isinstance(r, Failure):
                        exc = r.value
                    else:
                        value = r
                    continue
                self.waiting = y
                y.addBoth(self._resume)
                return
            if self.coroutine:
                exc = TypeError("a dispycos coroutine may await only Deferreds, not %r" % (y,))
                continue
            self.last = value = y

    def _resume(self, result):
        self.waiting = None
        if self.terminating:
            self._step(None, TaskTerminated("terminated"))
            return None
        if self.coroutine:
            self._step(None, None)
            return result
        if isinstance(result, Failure):
            self._step(None, result.value)
        else:
            self._step(result, None)
        return None

    def terminate(self):
        """Throw L{TaskTerminated} into the task at its current wait."""
        if self.terminating:
            try:
                self.it.close()
            except BaseException:
                pass
            return self.done((TERMINATED, None))
        self.terminating = True
        w = self.waiting
        if w is not None:
            w.cancel()
            if self.waiting is w:
                # The Deferred ignored the cancel (paused or chained): do not wait for it.
                self.waiting = None
                self._step(None, TaskTerminated("terminated"))


class _SinkRunner(_Runner):
    """
    A runner whose task's prints go to its client (C{forward_output}): its
    C{sink} is this thread's current one around each step of the task's code
    (see L{dispycos.output}).
    """

    def __init__(self, it, coroutine, done, sink):
        super().__init__(it, coroutine, done)
        self.sink = sink

    def _step(self, value, exc, yielded=_NOTHING):
        previous = self.sink.enter()
        try:
            return _Runner._step(self, value, exc, yielded)
        finally:
            self.sink.leave(previous)


def _async_raise(thread_id, exc_type):
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id), ctypes.py_object(exc_type))
