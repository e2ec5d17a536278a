"""
Unit tests of the small pieces: sizes, port lists, safe paths, status codes
and locations, the package's exports, task outcomes, the local task runner
(on the real reactor, in this process: no subprocesses) and the validation
done by L{dispycos.Computation}'s constructor.
"""

import builtins
import os
import pickle
import threading

import cloudpickle
import pytest
import pytest_twisted
from twisted.internet import defer, reactor
from twisted.internet.task import deferLater

import dispycos
from dispycos import config, errors, status
from dispycos.client.computation import Computation
from dispycos.errors import FileTransferError, RemoteTaskError, TaskAbandoned, TaskTerminated, UnknownTaskError
from dispycos.node.service import expand_ports
from dispycos.protocol.receiving import safe_join
from dispycos.status import DispycosStatus, Location, Status
from dispycos.peer.tasks import (
    ABANDONED,
    ERROR,
    OK,
    TERMINATED,
    Task,
    TaskRef,
    decode_outcome,
    encode_outcome,
    error_outcome,
    outcome_result,
)

# -- config.parse_size ------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        ("0", 0),
        ("10", 10),
        ("1k", 1024),
        ("10k", 10 * 1024),
        ("10K", 10 * 1024),
        ("3m", 3 * 1024**2),
        (" 2M ", 2 * 1024**2),
        ("2g", 2 * 1024**3),
        ("1t", 1024**4),
        ("", 0),
        ("   ", 0),
        (1234, 1234),
        (0, 0),
    ],
)
def test_parse_size(text, expected):
    assert config.parse_size(text) == expected


@pytest.mark.parametrize("text", ["abc", "k", "10x", "1.5m", "10kb", "-1", "-3k", "m10", "1 0"])
def test_parse_size_errors(text):
    with pytest.raises(ValueError):
        config.parse_size(text)


# -- node.expand_ports --------------------------------------------------------------------


@pytest.mark.parametrize(
    "specs, count, expected",
    [
        (["9000"], 1, [9000]),
        ([9000], 1, [9000]),
        (["9000"], 3, [9000, 9001, 9002]),  # fewer than needed: continue after the highest
        (["9000-9002"], 3, [9000, 9001, 9002]),
        (["9000-9004"], 2, [9000, 9001]),  # more than needed: the first ones
        (["9000-9001", "9010"], 4, [9000, 9001, 9010, 9011]),
        (["9010", "9000-9001"], 4, [9000, 9001, 9010, 9011]),  # sorted
        (["9000,9005"], 3, [9000, 9005, 9006]),
        (["9000, 9000", "9000-9000"], 2, [9000, 9001]),  # duplicates count once
        (["0"], 3, [0, 0, 0]),  # dynamic ports everywhere
        (["0"], 1, [0]),
        ([], 2, [config.NodePort, config.NodePort + 1]),
        (None, 1, [config.NodePort]),
        ([""], 1, [config.NodePort]),
    ],
)
def test_expand_ports(specs, count, expected):
    assert expand_ports(specs, count) == expected


@pytest.mark.parametrize("spec", ["9002-9000", "a-b", "90x", "9000-", "-"])
def test_expand_ports_bad_values(spec):
    with pytest.raises(ValueError):
        expand_ports([spec], 2)


def test_expand_ports_bad_range_names_it():
    with pytest.raises(ValueError, match="9002-9000"):
        expand_ports(["9002-9000"], 2)


# -- node.safe_join -------------------------------------------------------------------------


def test_safe_join_accepts_names_inside(tmp_path):
    root = str(tmp_path)
    real = os.path.realpath(root)
    assert safe_join(root, "a.txt") == os.path.join(real, "a.txt")
    assert safe_join(root, "sub/dir/b.txt") == os.path.join(real, "sub", "dir", "b.txt")
    assert safe_join(root, "sub/../c.txt") == os.path.join(real, "c.txt")
    assert safe_join(root, "..a") == os.path.join(real, "..a")  # a name, not a parent


@pytest.mark.parametrize(
    "name",
    ["..", "../x", "a/../../x", "sub/../../../etc/passwd", "/etc/passwd", "/", "", ".", "a/..", "x\x00y"],
)
def test_safe_join_refuses_escaping_names(tmp_path, name):
    with pytest.raises(FileTransferError):
        safe_join(str(tmp_path), name)


def test_safe_join_refuses_absolute_name_even_inside_root(tmp_path):
    with pytest.raises(FileTransferError):
        safe_join(str(tmp_path), str(tmp_path / "a.txt"))


def test_safe_join_refuses_escaping_symlinks(tmp_path):
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "out").symlink_to(outside)
    (root / "out-file").symlink_to(outside / "f.txt")
    (root / "in").symlink_to(root / "inner", target_is_directory=True)
    (root / "inner").mkdir()
    with pytest.raises(FileTransferError):
        safe_join(str(root), "out/f.txt")
    with pytest.raises(FileTransferError):
        safe_join(str(root), "out-file")
    assert safe_join(str(root), "in/f.txt") == os.path.join(os.path.realpath(str(root)), "inner", "f.txt")


def test_safe_join_with_a_symlinked_root(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    link = tmp_path / "link"
    link.symlink_to(real)
    assert safe_join(str(link), "a") == os.path.join(os.path.realpath(str(real)), "a")


def test_file_transfer_error_is_a_dispycos_error():
    assert issubclass(FileTransferError, errors.DispycosError)


# -- status -----------------------------------------------------------------------------


def test_location_parse_and_str():
    loc = Location.parse("10.0.0.1:9706", 1)
    assert (loc.addr, loc.port) == ("10.0.0.1", 9706)
    assert str(loc) == "10.0.0.1:9706"
    assert repr(loc) == "Location('10.0.0.1', 9706)"
    assert Location.parse("host", 51) == Location("host", 51)
    assert Location.parse("  host:7 ", 51) == Location("host", 7)
    assert Location.parse(loc, 1) is loc
    assert Location("h", "12").port == 12
    assert isinstance(Location(b"x".decode(), 1).addr, str)
    # an IPv6 address without a port keeps the default port
    assert Location.parse("::1", 9) == Location("::1", 9)
    with pytest.raises(ValueError):
        Location.parse("host:port", 1)


def test_location_eq_and_hash():
    a, b, c = Location("h", 1), Location("h", 1), Location("h", 2)
    assert a == b and not (a != b)
    assert a != c and Location("g", 1) != a
    assert a != "h:1" and a != ("h", 1)
    assert hash(a) == hash(b)
    assert {a: 1}[b] == 1
    assert len({a, b, c}) == 2


def test_location_pickles():
    loc = Location("127.0.0.1", 4242)
    for dumps in (pickle.dumps, cloudpickle.dumps):
        back = pickle.loads(dumps(loc))
        assert isinstance(back, Location)
        assert back == loc and str(back) == "127.0.0.1:4242"
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        assert pickle.loads(pickle.dumps(loc, proto)) == loc


def test_location_has_no_dict():
    with pytest.raises(AttributeError):
        Location("h", 1).other = 1


ORIGINAL_CODES = {
    "NodeIgnore": 1,
    "NodeDiscovered": 2,
    "NodeInitialized": 3,
    "NodeSuspended": 4,
    "NodeResumed": 5,
    "NodeClosed": 6,
    "NodeDisconnected": 7,
    "NodeAbandoned": 8,
    "ServerDiscovered": 12,
    "ServerInitialized": 13,
    "ServerSuspended": 14,
    "ServerResumed": 15,
    "ServerClosed": 16,
    "ServerDisconnected": 17,
    "ServerAbandoned": 18,
    "TaskCreated": 21,
    "TaskStarted": 21,
    "TaskFinished": 22,
    "TaskAbandoned": 23,
    "TaskTerminated": 24,
    "ComputationScheduled": 31,
    "ClientScheduled": 31,
    "ComputationClosed": 32,
    "ClientClosed": 32,
}


#: Codes the second edition added (SPEC 6.2), after the original's.
SECOND_EDITION_CODES = {"TaskRetried": 25}

#: Names that the Status enum defines as aliases of an earlier name with the same value.
ALIASES = {"TaskStarted", "ClientScheduled", "ClientClosed"}
CANONICAL = {n: v for n, v in ORIGINAL_CODES.items() if n not in ALIASES}


@pytest.mark.parametrize("name, value", sorted(ORIGINAL_CODES.items(), key=lambda kv: kv[1]))
def test_status_values_match_the_original(name, value):
    assert Status[name] == value
    assert getattr(Status, name) == value
    assert int(getattr(Status, name)) == value


@pytest.mark.parametrize("name, value", sorted(CANONICAL.items(), key=lambda kv: kv[1]))
def test_status_values_are_attributes_of_dispycos_status(name, value):
    assert getattr(DispycosStatus, name) == value
    assert getattr(DispycosStatus, name) is Status[name]


@pytest.mark.parametrize("name", sorted(ALIASES))
def test_status_aliases_are_attributes_of_dispycos_status(name):
    assert getattr(DispycosStatus, name) == ORIGINAL_CODES[name]


def test_status_aliases():
    assert Status.TaskCreated is Status.TaskStarted
    assert Status.ComputationClosed is Status.ClientClosed
    assert Status.ComputationScheduled is Status.ClientScheduled
    assert set(Status.__members__) == set(ORIGINAL_CODES) | set(SECOND_EDITION_CODES)
    assert all(Status[n] == v for n, v in SECOND_EDITION_CODES.items())
    assert {n for n, m in Status.__members__.items() if m.name != n} == ALIASES
    assert isinstance(Status.NodeDiscovered, int)
    assert Status(18) is Status.ServerAbandoned


def test_dispycos_status_record():
    msg = DispycosStatus(Status.NodeInitialized, "info")
    assert msg.status == 3 and msg.info == "info"
    assert DispycosStatus.NodeInitialized == 3
    assert msg.NodeInitialized is Status.NodeInitialized
    assert DispycosStatus(Status.NodeClosed).info is None
    back = pickle.loads(cloudpickle.dumps(msg))
    assert back == msg and back.status is Status.NodeInitialized


def test_status_info_records():
    avail = status.DispycosNodeAvailInfo(Location("h", 1), cpu=50.0, memory=1)
    node = status.DispycosNodeInfo("n", "h", 2, "Linux", avail)
    assert node.avail_info.location == Location("h", 1)
    assert avail.disk is None and avail.swap is None
    info = status.TaskInfo("t", (1,), {"a": 2}, 1.0)
    assert info.end_time is None and info.result is None and info.exception is None
    assert status.DispycosTaskInfo is status.TaskInfo
    assert pickle.loads(pickle.dumps(info)) == info


# -- package exports --------------------------------------------------------------------


def test_star_import_exports_status_names():
    ns = {}
    exec("from dispycos import *", ns)
    for name, value in CANONICAL.items():
        if name in ("TaskTerminated", "TaskAbandoned", "ComputationClosed"):
            continue
        assert ns[name] == value, name
        assert ns[name] is Status[name]
        assert getattr(dispycos, name) is Status[name]
    assert ns["NodeDiscovered"] == 2 and ns["ServerAbandoned"] == 18
    assert ns["TaskCreated"] == 21
    assert ns["TaskTerminated"] is errors.TaskTerminated
    assert ns["TaskAbandoned"] is errors.TaskAbandoned
    for name in ("Computation", "Scheduler", "Task", "TaskRef", "RemoteTask", "Location", "Status",
                 "DispycosStatus", "DispycosError", "RemoteTaskError", "TimeoutError", "LocalCluster"):
        assert ns[name] is getattr(dispycos, name)
    assert ns["MinPulseInterval"] == config.MinPulseInterval
    assert ns["MaxPulseInterval"] == config.MaxPulseInterval


def test_task_terminated_and_abandoned_are_the_exception_classes():
    assert dispycos.TaskTerminated is errors.TaskTerminated
    assert dispycos.TaskAbandoned is errors.TaskAbandoned
    assert issubclass(dispycos.TaskTerminated, dispycos.DispycosError)
    assert issubclass(dispycos.TaskAbandoned, dispycos.TaskError)
    # their status codes are still there
    assert Status.TaskTerminated == 24 and Status.TaskAbandoned == 23
    with pytest.raises(dispycos.TaskTerminated):
        raise errors.TaskTerminated("x")


@pytest.mark.parametrize("name", sorted(ALIASES))
def test_star_import_exports_status_aliases(name):
    ns = {}
    exec("from dispycos import *", ns)
    assert ns[name] == ORIGINAL_CODES[name]


def test_every_exported_name_exists():
    for name in dispycos.__all__:
        assert hasattr(dispycos, name), name


def test_computation_closed_is_the_exception_class():
    assert dispycos.ComputationClosed is errors.ComputationClosed


def test_timeout_error_is_both_dispycos_and_builtin():
    assert dispycos.TimeoutError is dispycos.peer.tasks.TimeoutError
    assert issubclass(dispycos.TimeoutError, dispycos.DispycosError)
    assert issubclass(dispycos.TimeoutError, builtins.TimeoutError)
    assert dispycos.TimeoutError is not builtins.TimeoutError


# -- outcomes ------------------------------------------------------------------------------


class Unpicklable(Exception):
    """An exception holding a lock: it cannot be pickled."""

    def __init__(self, text):
        super().__init__(text)
        self.lock = threading.Lock()


class NeedsTwoArgs(Exception):
    """Pickles, but does not unpickle (its args do not match __init__)."""

    def __init__(self, a, b):
        super().__init__("%s/%s" % (a, b))


def raised(exc):
    try:
        raise exc
    except Exception as e:
        return e


def test_ok_outcome_round_trip():
    for value in (None, 0, "text", [1, {"a": (2, 3)}], Location("h", 1), b"\0" * 100000):
        assert decode_outcome(encode_outcome((OK, value))) == (OK, value)


def test_terminated_and_abandoned_outcomes_round_trip():
    assert decode_outcome(encode_outcome((TERMINATED, None))) == (TERMINATED, None)
    assert decode_outcome(encode_outcome((ABANDONED, "server lost"))) == (ABANDONED, "server lost")


def test_error_outcome_round_trip_with_a_picklable_exception():
    exc = raised(ValueError("bad value"))
    outcome = error_outcome(exc)
    kind, (name, text, tb, same) = outcome
    assert (kind, name, text, same) == (ERROR, "ValueError", "bad value", exc)
    assert "ValueError: bad value" in tb and "raise exc" in tb
    kind, (name, text, tb2, back) = decode_outcome(encode_outcome(outcome))
    assert (kind, name, text, tb2) == (ERROR, "ValueError", "bad value", tb)
    assert isinstance(back, ValueError) and back.args == ("bad value",)


def test_error_outcome_keeps_an_explicit_traceback_text():
    exc = KeyError("k")
    assert error_outcome(exc, "TB") == (ERROR, ("KeyError", "'k'", "TB", exc))


@pytest.mark.parametrize("exc, name, text", [
    (Unpicklable("locked"), "Unpicklable", "locked"),
    (NeedsTwoArgs(1, 2), "NeedsTwoArgs", "1/2"),
])
def test_error_outcome_with_an_unpicklable_exception_keeps_the_text(exc, name, text):
    exc = raised(exc)
    blob = encode_outcome(error_outcome(exc))
    kind, (got_name, got_text, tb, back) = decode_outcome(blob)
    assert kind == ERROR
    assert back is None
    assert (got_name, got_text) == (name, text)
    assert name in tb and text in tb and "Traceback" in tb


def test_unpicklable_result_becomes_an_error_outcome():
    kind, (name, text, tb, exc) = decode_outcome(encode_outcome((OK, threading.Lock())))
    assert kind == ERROR
    assert name == "PicklingError"
    assert "task result" in text
    assert isinstance(exc, errors.PicklingError)


def test_outcome_result():
    assert outcome_result((OK, 5)) == 5
    f = outcome_result((ERROR, ("KeyError", "'k'", "TB", KeyError("k"))), task="t")
    assert isinstance(f.value, RemoteTaskError)
    assert (f.value.type_name, f.value.text, f.value.traceback, f.value.task) == ("KeyError", "'k'", "TB", "t")
    assert isinstance(f.value.exception, KeyError)
    assert str(f.value) == "KeyError: 'k'"
    f = outcome_result((ERROR, ("X", "y", "", None)))
    assert f.value.exception is None
    f = outcome_result((TERMINATED, None), task="t")
    assert isinstance(f.value, TaskTerminated) and f.value.task == "t"
    f = outcome_result((ABANDONED, "node gone"))
    assert isinstance(f.value, TaskAbandoned) and "node gone" in str(f.value)
    assert "server lost" in str(outcome_result((ABANDONED, None)).value)


def test_remote_task_error_pickles_without_the_exception():
    e = RemoteTaskError("ValueError", "v", "TB", ValueError("v"), task="t")
    back = pickle.loads(pickle.dumps(e))
    assert (back.type_name, back.text, back.traceback, back.exception, back.task) == ("ValueError", "v", "TB", None, None)


# -- the local task runner (real reactor) ----------------------------------------------------


def sleep(seconds):
    return deferLater(reactor, seconds, lambda: None)


def gen_return(n, task=None):
    yield task.sleep(0.01)
    return n * 2


def gen_last_yield(task=None):
    yield 1
    yield task.sleep(0.01)
    yield 2
    yield task.sleep(0.01)  # a Deferred's value is not a result


def gen_no_yield_value(task=None):
    yield task.sleep(0.001)


def gen_fired_deferreds(task=None):
    a = yield defer.succeed(3)
    try:
        yield defer.fail(KeyError("k"))
    except KeyError:
        b = 4
    return a + b


def gen_raise(task=None):
    yield task.sleep(0.001)
    raise ValueError("gen failed")


async def coro_add(a, b, task=None):
    await task.sleep(0.01)
    return a + b


async def coro_none(task=None):
    await task.sleep(0.001)


async def coro_raise(task=None):
    await task.sleep(0.001)
    raise KeyError("coro failed")


def plain_receive(task=None):
    msg = task.receive()
    return (msg, threading.get_ident())


def plain_receive_timeout(task=None):
    try:
        task.receive(timeout=0.05)
    except dispycos.TimeoutError as e:
        return ("timeout", isinstance(e, builtins.TimeoutError))
    return "no timeout"


def plain_raise():
    raise ZeroDivisionError("plain failed")


def plain_args(a, b=0):
    return a - b


def gen_receive(task=None):
    msg = yield task.receive()
    return msg


def gen_receive_timeout(task=None):
    try:
        yield task.receive(timeout=0.05)
    except dispycos.TimeoutError as e:
        return ("timeout", isinstance(e, builtins.TimeoutError))
    return "no timeout"


def gen_collect(n, task=None):
    got = []
    for _ in range(n):
        got.append((yield task.receive()))
    return got


def gen_terminated_flag(flag, task=None):
    try:
        yield task.receive()
    finally:
        flag.append("cleanup")


async def coro_wait(task=None):
    await task.sleep(60)


@pytest_twisted.ensureDeferred
async def test_generator_result_is_its_return_value():
    t = Task(gen_return, 21)
    assert t.is_alive()
    assert await t.result(timeout=5) == 42
    assert not t.is_alive()


@pytest_twisted.ensureDeferred
async def test_generator_result_is_the_last_non_deferred_value_yielded():
    assert await Task(gen_last_yield).result(timeout=5) == 2
    assert await Task(gen_no_yield_value).result(timeout=5) is None


@pytest_twisted.ensureDeferred
async def test_generator_gets_values_and_errors_of_fired_deferreds():
    assert await Task(gen_fired_deferreds).result(timeout=5) == 7


@pytest_twisted.ensureDeferred
async def test_generator_exception_is_a_remote_task_error():
    t = Task(gen_raise)
    with pytest.raises(RemoteTaskError) as info:
        await t.result(timeout=5)
    assert info.value.type_name == "ValueError"
    assert info.value.text == "gen failed"
    assert isinstance(info.value.exception, ValueError)
    assert "gen failed" in info.value.traceback
    assert info.value.task is t


@pytest_twisted.ensureDeferred
async def test_coroutine_awaiting_task_sleep():
    assert await Task(coro_add, 2, b=3).result(timeout=5) == 5
    assert await Task(coro_none).result(timeout=5) is None
    with pytest.raises(RemoteTaskError) as info:
        await Task(coro_raise).result(timeout=5)
    assert info.value.type_name == "KeyError"


@pytest_twisted.ensureDeferred
async def test_plain_function_runs_in_a_thread_and_receive_blocks():
    t = Task(plain_receive)
    await sleep(0.05)
    assert t.is_alive()  # blocked in receive()
    t.send("hello")
    msg, ident = await t.result(timeout=5)
    assert msg == "hello"
    assert ident != threading.get_ident()


@pytest_twisted.ensureDeferred
async def test_plain_function_results_and_errors():
    assert await Task(plain_args, 10, b=3).result(timeout=5) == 7
    with pytest.raises(RemoteTaskError) as info:
        await Task(plain_raise).result(timeout=5)
    assert info.value.type_name == "ZeroDivisionError"
    assert isinstance(info.value.exception, ZeroDivisionError)


@pytest_twisted.ensureDeferred
async def test_receive_timeout_in_a_thread_raises_timeout_error():
    assert await Task(plain_receive_timeout).result(timeout=5) == ("timeout", True)


@pytest_twisted.ensureDeferred
async def test_receive_timeout_errbacks_timeout_error():
    assert await Task(gen_receive_timeout).result(timeout=5) == ("timeout", True)
    t = Task(gen_receive)
    try:
        with pytest.raises(dispycos.TimeoutError):
            await t.receive(timeout=0.05)
        with pytest.raises(builtins.TimeoutError):
            await t.receive(timeout=0.01)
        assert not t._receivers or len(t._receivers) == 1  # only the task's own receive is left
        t.send("still works")
        assert await t.result(timeout=5) == "still works"
    finally:
        await t.terminate()


@pytest_twisted.ensureDeferred
async def test_result_timeout():
    t = Task(coro_wait)
    try:
        with pytest.raises(dispycos.TimeoutError):
            await t.result(timeout=0.05)
        assert t.is_alive()
    finally:
        await t.terminate()


@pytest_twisted.ensureDeferred
async def test_terminate_a_generator_waiting_in_receive():
    flag = []
    t = Task(gen_terminated_flag, flag)
    await sleep(0.01)
    assert t.is_alive()
    await t.terminate()
    assert not t.is_alive()
    assert flag == ["cleanup"]
    with pytest.raises(TaskTerminated) as info:
        await t.result(timeout=5)
    assert info.value.task is t
    assert t._receivers == type(t._receivers)()
    # terminating again is harmless
    await t.terminate()


@pytest_twisted.ensureDeferred
async def test_terminate_a_coroutine_waiting_in_sleep():
    t = Task(coro_wait)
    await sleep(0.01)
    await t.terminate()
    with pytest.raises(TaskTerminated):
        await t.result(timeout=5)


@pytest_twisted.ensureDeferred
async def test_messages_arrive_in_order():
    t = Task(gen_collect, 200)
    for i in range(100):
        t.send(i)  # queued before the task reads
    await sleep(0.01)
    for i in range(100, 150):
        t.send(i)
        await sleep(0)
    for i in range(150, 200):
        assert await t.deliver(i) == 1
    assert await t.result(timeout=5) == list(range(200))


@pytest_twisted.ensureDeferred
async def test_deliver_to_an_ended_task_errbacks():
    t = Task(gen_return, 1)
    await t.result(timeout=5)
    with pytest.raises(UnknownTaskError):
        await t.deliver("late")
    t.send("late")  # a send to an ended task is dropped quietly
    assert list(t.mailbox) == []


@pytest_twisted.ensureDeferred
async def test_deliver_through_the_runtime_to_unknown_task_errbacks():
    from dispycos.peer.registry import current_runtime

    rt = current_runtime()
    ref = TaskRef(rt.location, 10**9, "nobody")
    with pytest.raises(UnknownTaskError):
        await rt.deliver(ref, "msg")


@pytest_twisted.ensureDeferred
async def test_task_pickles_into_a_reference():
    from dispycos.peer.registry import current_runtime
    from dispycos.peer.refs import _rebuild_ref

    rt = current_runtime()
    assert rt.location.addr == "127.0.0.1" and rt.location.port > 0
    t = Task(gen_receive)
    try:
        assert t.location == rt.location
        blob = cloudpickle.dumps(t)
        back = pickle.loads(blob)
        # in this process, while it lives, the reference is the task itself
        assert back is t
        assert pickle.loads(pickle.dumps(t)) is t
        # in another process it is a TaskRef to the same location and tid
        fn, args = t.__reduce__()
        assert fn is _rebuild_ref and args == (rt.location.addr, rt.location.port, t.tid, "gen_receive")
        other = _rebuild_ref("10.1.2.3", 9999, t.tid, "gen_receive")
        assert isinstance(other, TaskRef) and other.location == Location("10.1.2.3", 9999) and other.tid == t.tid
        t.send("bye")
        await t.result(timeout=5)
        ref = pickle.loads(cloudpickle.dumps(t))
        assert isinstance(ref, TaskRef) and not isinstance(ref, Task)
        assert (ref.location, ref.tid, ref.name) == (t.location, t.tid, t.name)
        assert ref == t and hash(ref) == hash(t)
        assert str(ref) == "gen_receive/%d@%s" % (t.tid, rt.location)
        # the reference waits on the local runtime's record of the task
        assert await ref.result(timeout=5) == "bye"
    finally:
        await t.terminate()


@pytest_twisted.ensureDeferred
async def test_task_ids_are_unique_and_tasks_are_registered():
    from dispycos.peer.registry import current_runtime

    rt = current_runtime()
    a, b = Task(gen_receive), Task(gen_receive)
    try:
        assert a.tid != b.tid
        assert rt.tasks[a.tid] is a and rt.tasks[b.tid] is b
    finally:
        await a.terminate()
        await b.terminate()
    assert a.tid not in rt.tasks and rt.finished[a.tid] == (TERMINATED, None)


def test_task_of_a_non_callable_is_a_type_error():
    with pytest.raises(TypeError):
        Task(42)


# -- Computation construction --------------------------------------------------------------


def comp_fn(x):
    return x


def comp_gen(x, task=None):
    yield task.sleep(0)
    return x


class CompClass:
    pass


@pytest.mark.parametrize("bad", [42, 3.5, None, object(), b"bytes", ["nested"], {"a": 1}])
def test_computation_bad_component_type_names_the_item(bad):
    with pytest.raises(TypeError) as info:
        Computation([comp_fn, bad])
    assert repr(bad) in str(info.value)


def test_computation_missing_file_names_it(tmp_path):
    missing = str(tmp_path / "no-such-file.py")
    with pytest.raises(ValueError) as info:
        Computation([comp_fn, missing])
    assert "no-such-file.py" in str(info.value)
    with pytest.raises(ValueError, match="is not a readable file"):
        Computation([str(tmp_path)])  # a directory is not a file


def test_computation_module_without_source_is_a_value_error():
    import sys

    with pytest.raises(ValueError, match="sys"):
        Computation([sys])


def test_computation_accepts_functions_classes_and_files(tmp_path):
    data = tmp_path / "data.txt"
    data.write_bytes(b"payload")
    comp = Computation([comp_fn, comp_gen, CompClass, str(data)])
    assert set(comp._code) == {"comp_fn", "comp_gen", "CompClass"}
    assert comp._files == [("data.txt", os.path.abspath(str(data)))]  # streamed from there when scheduled
    assert isinstance(comp._components_blob, bytes)
    # a single component needs no list
    assert set(Computation(comp_fn)._code) == {"comp_fn"}


@pytest.mark.parametrize("interval", [0, 0.5, -1, config.MaxPulseInterval + 1, 1000])
def test_computation_pulse_interval_out_of_range(interval):
    with pytest.raises(ValueError, match="pulse_interval"):
        Computation([comp_fn], pulse_interval=interval)


@pytest.mark.parametrize("interval", [config.MinPulseInterval, 10, config.MaxPulseInterval])
def test_computation_pulse_interval_in_range(interval):
    assert Computation([comp_fn], pulse_interval=interval).pulse_interval == interval


@pytest.mark.parametrize("bad", [42, "name", object(), [1]])
def test_computation_status_task_must_be_task_or_callable(bad):
    with pytest.raises(TypeError, match="status_task"):
        Computation([comp_fn], status_task=bad)


@pytest_twisted.ensureDeferred
async def test_computation_status_task_may_be_task_or_callable():
    got = []
    assert Computation([comp_fn], status_task=got.append).status_task == got.append
    t = Task(gen_collect, 1)
    try:
        comp = Computation([comp_fn], status_task=t)
        assert comp.status_task is t
        comp._status(Status.NodeDiscovered, "n1")
        msgs = await t.result(timeout=5)
        assert msgs == [DispycosStatus(Status.NodeDiscovered, "n1")]
    finally:
        await t.terminate()


def test_computation_unknown_arguments_and_bad_setup():
    with pytest.raises(TypeError, match="bogus"):
        Computation([comp_fn], bogus=1)
    with pytest.raises(TypeError, match="not callable"):
        Computation([comp_fn], node_setup=42)


# -- the computation / scheduler seam -------------------------------------------------------


def test_the_computation_scheduler_seam_is_explicit():
    """Both schedulers provide IScheduler, a computation's events IComputationEvents; no process-global singleton."""
    from twisted.internet.testing import MemoryReactorClock
    from zope.interface.verify import verifyObject

    from dispycos.interfaces import IComputationEvents, IScheduler
    from dispycos.peer.registry import runtime_for
    from dispycos import Computation, Scheduler
    from dispycos.client.schedclient import RemoteScheduler
    from dispycos.scheduler.core import private_scheduler
    from dispycos.scheduler.shared import RemoteComputation

    clock = MemoryReactorClock()
    scheduler = Scheduler(nodes=[], discover=False, reactor=clock)
    try:
        verifyObject(IScheduler, scheduler)
        verifyObject(IScheduler, RemoteScheduler(Location("127.0.0.1", 1), "s", reactor=clock))
        assert private_scheduler(clock) is scheduler
        assert private_scheduler(MemoryReactorClock()) is None  # another reactor, another world
        assert runtime_for(clock) is scheduler.runtime and scheduler.runtime.reactor is clock
        comp = Computation([comp_fn], reactor=clock)
        verifyObject(IComputationEvents, comp._events)
        assert IComputationEvents.implementedBy(RemoteComputation)
    finally:
        scheduler.close()
    assert private_scheduler(clock) is None
