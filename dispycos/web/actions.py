# -*- test-case-name: tests.unit.test_web_resources -*-
"""
What the monitor's POSTs do to the computation it watches: terminate tasks
(with their own C{terminate()}), suspend and resume nodes and servers (with
the computation's C{suspend_node}, C{resume_node}, C{suspend_server} and
C{resume_server}, each returning a Deferred).
"""

from twisted.internet import defer
from twisted.logger import Logger

from dispycos.status import Location

__all__ = ["Actions", "CONTROL_METHODS"]

log = Logger()

#: the computation's methods C{control} may call
CONTROL_METHODS = ("suspend_node", "resume_node", "suspend_server", "resume_server")


class Actions:
    """
    @param model: the L{dispycos.web.model.ClusterModel} (its running tasks).
    @param computation: a callable giving the computation watched now.
    """

    def __init__(self, model, computation):
        self.model = model
        self.computation = computation

    def terminate_tasks(self, ids):
        """Terminate the running tasks with these ids; the list of ids acted on."""
        done = []
        for tid in ids:
            entry = self.model.tasks.get(tid)
            if entry is None:
                continue
            rtask = entry[0].task
            try:
                d = rtask.terminate()
            except Exception as e:
                log.warn("cannot terminate {t}: {e}", t=tid, e=e)
                continue
            if isinstance(d, defer.Deferred):
                d.addErrback(lambda f, tid=tid: log.warn("terminating {t} failed: {e}", t=tid, e=f.getErrorMessage()))
            done.append(tid)
        return done

    @defer.inlineCallbacks
    def control(self, method, targets):
        """Call C{computation.<method>(target)} for each; fires with C{{"done": [...], "failed": {...}}}."""
        if method not in CONTROL_METHODS:
            raise ValueError("no action %r" % (method,))
        computation = self.computation()
        done, failed = [], {}
        for target in targets:
            try:
                arg = Location.parse(target, 0) if method.endswith("_server") else target
                yield getattr(computation, method)(arg)
            except Exception as e:
                failed[target] = str(e) or type(e).__name__
            else:
                done.append(target)
        return {"done": done, "failed": failed}
