"""
The monitor's cluster-state model (dispycos.web.model) fed status messages,
on a twisted.internet.task.Clock: no processes, no sockets.
"""

import pytest
from twisted.internet.task import Clock

from dispycos.status import DispycosNodeAvailInfo, DispycosStatus, Status
from dispycos.web.model import HISTORY_SECONDS, RECENT_FINISHED, ClusterModel, Settings

from .webfakes import FakeTask, avail, node_status, server_status, task_created, task_finished


@pytest.fixture
def clock():
    c = Clock()
    c.advance(1000)
    return c


@pytest.fixture
def events():
    return []


@pytest.fixture
def model(clock, events):
    return ClusterModel(clock, Settings(poll_sec=5), name="cluster-a", on_event=lambda n, d: events.append((n, d)))


def test_nodes_servers_and_tasks_counted(model, clock, events):
    model.record(node_status(Status.NodeDiscovered, avail=avail("10.0.0.1", 50.0)))
    assert model.computation_status == "Created"
    model.record(node_status(Status.NodeInitialized))
    assert model.computation_status == "Scheduled"  # a node initialized: the computation is scheduled
    model.record(server_status(Status.ServerInitialized, "10.0.0.1:9706"))
    a, b = FakeTask("job", 1, "10.0.0.1:9706"), FakeTask("job", 2, "10.0.0.1:9706")
    clock.advance(5)
    model.record(task_created(a, clock.seconds(), args=(1, "x"), kwargs={"k": 2}))
    model.record(task_created(b, clock.seconds() + 1))
    clock.advance(3)
    model.record(task_finished(a, 1005, clock.seconds()))

    status = model.cluster_status()
    assert (status["tasks_submitted"], status["tasks_running"], status["tasks_done"]) == (2, 1, 1)
    assert status["name"] == "cluster-a" and status["time"] == 1008 and status["poll_sec"] == 5
    [n] = status["nodes"]
    assert (n["addr"], n["name"], n["status"], n["cpus"], n["platform"]) == ("10.0.0.1", "n1", "Initialized", 4,
                                                                             "test-os")
    assert (n["servers"], n["servers_active"], n["tasks_running"], n["tasks_done"]) == (1, 1, 1, 1)
    assert n["avail"]["cpu"] == 50.0 and n["history"] == []  # the figure taken at connection is no sample
    assert n["update_time"] == 1008

    srv = model.server_info("10.0.0.1:9706")
    assert [t["task"] for t in srv["tasks"]] == [str(b)]
    assert srv["finished"] == [{"task": str(a), "name": "job", "start_time": 1005, "end_time": 1008,
                                "outcome": "done"}]
    # every change was announced, with a sequence number that only grows
    seqs = [d["seq"] for _, d in events]
    assert seqs == list(range(1, len(events) + 1)) and model.seq == len(events)
    kinds = [(d["type"], d.get("status")) for _, d in events]
    assert kinds == [("node", "NodeDiscovered"), ("node", "NodeInitialized"), ("server", "ServerInitialized"),
                     ("task", "TaskCreated"), ("task", "TaskCreated"), ("task", "TaskFinished")]
    assert events[-1][1]["outcome"] == "done" and events[-1][1]["tasks_done"] == 1


def test_outcomes_and_close(model, clock):
    model.record(server_status(Status.ServerInitialized, "10.0.0.1:9706"))
    tasks = [FakeTask("job", i, "10.0.0.1:9706") for i in range(4)]
    for t in tasks:
        model.record(task_created(t, clock.seconds()))
    model.record(task_finished(tasks[0], 1, 2, exception=ZeroDivisionError("x")))
    model.record(task_finished(tasks[1], 1, 2, status=Status.TaskTerminated))
    model.record(task_finished(tasks[1], 1, 2))  # (told twice: counted once)
    model.record(DispycosStatus(Status.ComputationClosed))
    outcomes = {f["task"]: f["outcome"] for f in model.server_info("10.0.0.1:9706")["finished"]}
    assert outcomes == {str(tasks[0]): "ZeroDivisionError", str(tasks[1]): "TaskTerminated",
                        str(tasks[2]): "TaskAbandoned", str(tasks[3]): "TaskAbandoned"}
    status = model.cluster_status()
    assert (status["tasks_submitted"], status["tasks_running"], status["tasks_done"]) == (4, 0, 4)
    assert status["computation"] == "Closed"


def test_a_closed_node_closes_its_servers(model):
    model.record(node_status(Status.NodeInitialized))
    model.record(server_status(Status.ServerInitialized, "10.0.0.1:1"))
    model.record(server_status(Status.ServerClosed, "10.0.0.1:2"))
    model.record(node_status(Status.NodeSuspended))
    assert model.find_node("10.0.0.1").status == "Suspended"
    model.record(node_status(Status.NodeResumed))
    assert model.find_node("10.0.0.1").status == "Initialized"  # resumed reads as initialized
    model.record(node_status(Status.NodeDisconnected))
    info = model.node_info("n1")  # by name too
    assert info["status"] == "Disconnected" and info["servers_active"] == 0
    assert {s["location"]: s["status"] for s in info["servers"]} == {"10.0.0.1:1": "Disconnected",
                                                                     "10.0.0.1:2": "Closed"}


def test_resource_history_follows_the_clock(model, clock):
    model.record(node_status(Status.NodeInitialized))
    for i in range(10):
        model.record(avail("10.0.0.1", float(i), memory=100 + i))
        clock.advance(100)
    history = model.node_info("10.0.0.1")["history"]
    # samples older than HISTORY_SECONDS (on the model's clock) are gone
    assert history[0][0] >= clock.seconds() - 100 - HISTORY_SECONDS
    assert [h[1] for h in history] == [3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]
    assert history[-1] == [1900.0, 9.0, 109]
    assert "history" not in model.cluster_status(history=False)["nodes"][0]


def test_lookups_of_what_is_not_there(model):
    model.record(node_status(Status.NodeInitialized, addr="::1", name="v6"))
    assert model.node_info("[::1]")["addr"] == "::1" and model.node_info("0:0::1")["addr"] == "::1"
    assert model.node_info("10.9.9.9") is None and model.node_info("") is None
    assert model.server_info("10.9.9.9:1") is None
    model.record(DispycosNodeAvailInfo(None, 1.0))  # no location: ignored
    model.record(DispycosStatus(Status.NodeInitialized, None))  # no info: ignored
    model.record("not a status message")
    assert list(model.nodes) == ["::1"]


def test_finished_tasks_kept_per_server_are_bounded(model):
    for i in range(RECENT_FINISHED + 5):
        t = FakeTask("job", i, "10.0.0.1:9")
        model.record(task_created(t, i))
        model.record(task_finished(t, i, i + 1))
    finished = model.server_info("10.0.0.1:9")["finished"]
    assert len(finished) == RECENT_FINISHED and finished[0]["task"] == "job/%d@10.0.0.1:9" % (RECENT_FINISHED + 4)


def test_task_arguments_shown_or_hidden_and_cut(model, events):
    t = FakeTask("job", 1, "10.0.0.1:9")

    class Broken:
        def __repr__(self):
            raise RuntimeError("no repr")

    model.record(task_created(t, 1, args=("x" * 500, Broken()), kwargs={"secret": "hunter2"}))
    [shown] = model.server_info("10.0.0.1:9")["tasks"]
    first, second = shown["args"].split(", ", 1)
    assert len(first) == 200 and first.endswith("...") and second == "<unprintable Broken: no repr>"
    assert shown["kwargs"] == "secret='hunter2'"
    assert model.update_settings(show_task_args=False) == {"poll_sec": 5, "show_task_args": False}
    [hidden] = model.server_info("10.0.0.1:9")["tasks"]
    assert hidden["args"] == "" and hidden["kwargs"] == "" and "hunter2" not in repr(model.server_info("10.0.0.1:9"))
    assert events[-1] == ("settings", {"poll_sec": 5, "show_task_args": False, "type": "settings",
                                       "seq": model.seq})


def test_settings_are_checked():
    s = Settings(poll_sec=0.2)
    assert s.poll_sec == 1  # at least a second to start with
    s.update(poll_sec=0.5)
    assert s.poll_sec == 0  # under a second: events only
    s.update(poll_sec=7.0)
    assert s.poll_sec == 7 and isinstance(s.poll_sec, int)
    s.update(poll_sec=2.5)
    assert s.poll_sec == 2.5
    for bad in (-1, float("nan")):
        with pytest.raises(ValueError):
            s.update(poll_sec=bad)
    assert s.as_dict() == {"poll_sec": 2.5, "show_task_args": True}


def test_reset_forgets_everything(model):
    model.record(node_status(Status.NodeInitialized))
    model.record(task_created(FakeTask("job", 1, "10.0.0.1:9"), 1))
    seq = model.seq
    model.reset()
    assert model.cluster_status()["nodes"] == [] and model.tasks == {} and model.computation_status == "Created"
    assert model.seq == seq  # ids of events go on growing
