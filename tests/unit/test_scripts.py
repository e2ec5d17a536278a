"""The console scripts' main: the service starts only once the reactor runs."""

from twisted.application import service
from twisted.internet.testing import MemoryReactor

from dispycos.scripts import run_until_stopped


class Recorder(service.Service):
    def __init__(self, fail=False):
        self.calls = []
        self.fail = fail

    def privilegedStartService(self):
        self.calls.append("privileged")

    def startService(self):
        self.calls.append("start")
        if self.fail:
            raise OSError("port in use")
        super().startService()

    def stopService(self):
        self.calls.append("stop")
        return super().stopService()


def test_the_service_starts_after_the_reactor_does():
    # task.react calls main before reactor.run(), i.e. before the reactor
    # installs its SIGTERM handler: nothing may listen or fork yet.
    reactor = MemoryReactor()
    svc = Recorder()
    done = run_until_stopped(reactor, svc)
    assert svc.calls == []
    assert reactor.triggers.get("before", {}).get("shutdown", []) == []
    reactor.run()  # MemoryReactor.run runs the callWhenRunning hooks
    assert svc.calls == ["privileged", "start"]
    before = [f for f, args, kw in reactor.triggers["before"]["shutdown"]]
    assert svc.stopService in before
    assert not done.called


def test_a_service_that_cannot_start_fails_main():
    reactor = MemoryReactor()
    done = run_until_stopped(reactor, Recorder(fail=True))
    reactor.run()
    failures = []
    done.addErrback(failures.append)
    assert len(failures) == 1 and failures[0].check(OSError)
    assert reactor.triggers.get("before", {}).get("shutdown", []) == []


class WithReactor(Recorder):
    def __init__(self, reactor):
        super().__init__()
        self.reactor = reactor


def twistd_top():
    """A memory reactor, a service on it, and the plugins' top service around it."""
    from dispycos.logs import _TwistdLogLevel

    reactor = MemoryReactor()
    child = WithReactor(reactor)
    return reactor, child, _TwistdLogLevel(child, False, {"nodaemon": True})


def test_under_twistd_the_service_starts_after_the_reactor_does():
    # twistd starts its application before reactor.run(): the plugins' top service
    # (dispycos.logs.for_twistd) starts its child only once the reactor runs.
    reactor, child, top = twistd_top()
    top.privilegedStartService()
    top.startService()
    assert top.running and child.calls == ["privileged"]
    reactor.run()
    assert child.calls == ["privileged", "start"] and child.running
    top.stopService()
    assert child.calls[-1] == "stop" and not child.running


def test_under_twistd_a_stop_before_the_reactor_ran_stops_nothing_unstarted():
    reactor, child, top = twistd_top()
    top.startService()
    top.stopService()
    reactor.run()  # the hook finds the service stopped
    assert child.calls == [] and not top.running
