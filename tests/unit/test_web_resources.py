"""
The monitor's JSON resources (dispycos.web.resources) and actions rendered
with fake requests: their answers, the render helper's error answers (a
failing action answers instead of hanging), nothing written once the
connection is gone.
"""

import json

import pytest
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.web import server

from dispycos.status import Status
from dispycos.web.actions import Actions
from dispycos.web.model import ClusterModel, Settings
from dispycos.web.resources import (ClusterStatus, Control, JSONError, NodeInfo, ServerInfo, TerminateTasks, Update,
                                    render_json)

from .webfakes import FakeComputation, FakeRequest, FakeTask, node_status, server_status, task_created


def answer(resource, request):
    """(code, JSON) of a resource that answers at once."""
    body = resource.render(request)
    assert body is not server.NOT_DONE_YET
    assert request.responseHeaders.getRawHeaders(b"content-type") == [b"application/json; charset=utf-8"]
    assert request.responseHeaders.getRawHeaders(b"cache-control") == [b"no-store"]
    return request.responseCode or 200, json.loads(body)


def pending(resource, request):
    """Render C{request}, which is answered later; a function giving (code, JSON) once it is."""
    assert resource.render(request) is server.NOT_DONE_YET

    def result():
        assert request.finished == 1
        return request.responseCode or 200, json.loads(request.body())

    return result


@pytest.fixture
def model():
    clock = Clock()
    m = ClusterModel(clock, Settings(poll_sec=3))
    m.record(node_status(Status.NodeInitialized, addr="10.0.0.1", name="n1"))
    m.record(server_status(Status.ServerInitialized, "10.0.0.1:9706"))
    return m


@pytest.fixture
def comp():
    return FakeComputation(fail={"10.9.9.9"})


@pytest.fixture
def actions(model, comp):
    return Actions(model, lambda: comp)


def test_cluster_node_and_server_info(model):
    t = FakeTask("job", 1, "10.0.0.1:9706")
    model.record(task_created(t, 5, args=(1,)))
    code, status = answer(ClusterStatus(model), FakeRequest(b"/cluster_status"))
    assert code == 200 and status["tasks_running"] == 1 and status["nodes"][0]["history"] == []
    code, status = answer(ClusterStatus(model), FakeRequest(b"/cluster_status?history=0", args={"history": "0"}))
    assert "history" not in status["nodes"][0]
    code, info = answer(NodeInfo(model), FakeRequest(b"/node_info", args={"host": "n1"}))
    assert code == 200 and info["addr"] == "10.0.0.1" and [s["location"] for s in info["servers"]] == ["10.0.0.1:9706"]
    code, info = answer(NodeInfo(model), FakeRequest(b"/node_info", args={"host": "10.9.9.9"}))
    assert code == 404 and info == {"error": "no node 10.9.9.9"}
    code, srv = answer(ServerInfo(model), FakeRequest(b"/server_info", args={"location": "10.0.0.1:9706"}))
    assert code == 200 and [x["task"] for x in srv["tasks"]] == [str(t)] and srv["tasks"][0]["args"] == "1"
    code, srv = answer(ServerInfo(model), FakeRequest(b"/server_info", args={"location": "10.0.0.1:1"}))
    assert code == 404
    code, srv = answer(ServerInfo(model), FakeRequest(b"/server_info", args={"location": "10.0.0.1:9706",
                                                                             "limit": "many"}))
    assert code == 400 and srv == {"error": "limit must be an integer"}


def test_methods_not_allowed(model, actions):
    request = FakeRequest(b"/cluster_status", method=b"DELETE")
    code, body = answer(ClusterStatus(model), request)
    assert code == 405 and "DELETE" in body["error"]
    assert b"GET" in request.responseHeaders.getRawHeaders(b"allow")[0]
    code, _ = answer(TerminateTasks(actions), FakeRequest(b"/terminate_tasks", args={"task": "x"}))
    assert code == 405  # actions are POST only


def test_update_reads_and_changes_the_settings(model):
    code, settings = answer(Update(model), FakeRequest(b"/update", method=b"POST",
                                                       args={"poll_sec": "7", "show_task_args": "false"}))
    assert code == 200 and settings == {"poll_sec": 7, "show_task_args": False}
    assert answer(Update(model), FakeRequest(b"/update"))[1] == settings
    code, body = answer(Update(model), FakeRequest(b"/update", method=b"POST", args={"poll_sec": "soon"}))
    assert code == 400 and "error" in body
    code, body = answer(Update(model), FakeRequest(b"/update", method=b"POST", args={"timeout": "4"}))
    assert body["poll_sec"] == 4  # (the original pages' name of the field)


def test_terminate_tasks(model, actions):
    running = [FakeTask("job", i, "10.0.0.1:9706") for i in range(3)]
    for t in running:
        model.record(task_created(t, 1))
    request = FakeRequest(b"/terminate_tasks", method=b"POST", args={"task": [str(running[0]), "nosuch/1@1.2.3.4:5"]})
    code, done = answer(TerminateTasks(actions), request)
    assert code == 200 and done == [str(running[0])] and [t.terminated for t in running] == [1, 0, 0]
    legacy = FakeRequest(b"/terminate_tasks", method=b"POST", args={"tasks": json.dumps([str(running[1])])})
    assert answer(TerminateTasks(actions), legacy)[1] == [str(running[1])]


def test_control_answers_done_and_failed(actions, comp):
    resource = Control(actions, "resume_node", "host", "nodes")
    result = pending(resource, FakeRequest(b"/resume_node", method=b"POST", args={"host": ["10.0.0.1", "10.9.9.9"]}))
    code, body = result()
    assert code == 200 and body["done"] == ["10.0.0.1"] and "no such target" in body["failed"]["10.9.9.9"]
    result = pending(Control(actions, "suspend_server", "location", "servers"),
                     FakeRequest(b"/suspend_server", method=b"POST", args={"servers": '["10.0.0.1:9706"]'}))
    assert result() == (200, {"done": ["10.0.0.1:9706"], "failed": {}})
    assert comp.calls == [("resume_node", "10.0.0.1"), ("resume_node", "10.9.9.9"),
                          ("suspend_server", "10.0.0.1:9706")]


def test_a_failing_action_answers_with_an_error(model):
    class Broken:
        def control(self, method, targets):
            return defer.fail(RuntimeError("the scheduler went away"))

        def terminate_tasks(self, ids):
            raise RuntimeError("cannot")

    result = pending(Control(Broken(), "suspend_node", "host", "nodes"),
                     FakeRequest(b"/suspend_node", method=b"POST", args={"host": "10.0.0.1"}))
    code, body = result()
    assert code == 500 and "the scheduler went away" in body["error"] and "/suspend_node" in body["error"]
    code, body = answer(TerminateTasks(Broken()), FakeRequest(b"/terminate_tasks", method=b"POST",
                                                              args={"task": "x"}))
    assert code == 500 and "cannot" in body["error"]


def test_render_helper_deferred_results_and_errors():
    later = defer.Deferred()
    request = FakeRequest(b"/x")
    assert render_json(request, lambda: later) is server.NOT_DONE_YET
    assert request.finished == 0  # not answered before the result
    later.callback({"ok": True})
    assert request.finished == 1 and json.loads(request.body()) == {"ok": True}

    def refuse():
        raise JSONError(409, "not now")

    request = FakeRequest(b"/x")
    assert json.loads(render_json(request, refuse)) == {"error": "not now"} and request.responseCode == 409
    request = FakeRequest(b"/x")
    assert render_json(request, lambda: defer.fail(JSONError(404, "gone"))) is server.NOT_DONE_YET
    assert request.responseCode == 404 and json.loads(request.body()) == {"error": "gone"}


def test_nothing_is_written_after_the_connection_is_lost(actions, comp):
    request = FakeRequest(b"/suspend_node", method=b"POST", args={"host": "slow"})
    assert Control(actions, "suspend_node", "host", "nodes").render(request) is server.NOT_DONE_YET
    request.lose_connection()
    comp.pending["suspend_node", "slow"].callback(None)  # the answer comes after the browser left
    assert request.written == [] and request.finished == 0
