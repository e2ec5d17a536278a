"""
Lifecycles and options found broken by trying every feature as a new user
would (issue 11): each test starts real node, scheduler and server processes
and fails on the old behaviour.
"""

import hashlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from datetime import datetime, timedelta

import pytest
import pytest_twisted

import dispycos
from dispycos import Computation, DispycosStatus, Location, ScheduleError, Scheduler, Status

from .conftest import Session, env_for_children, free_port
from .test_core import sleep, wait_for
from .test_node_cli import Node
from .test_shared import SchedulerProcess

MiB = 1024 * 1024


# -- task functions (shipped by value) -------------------------------------------------


def sleeper(seconds, task=None):
    yield task.sleep(seconds)
    return seconds * 10


def where():
    import os

    return os.getpid()


def digest_of(name):
    """SHA-256 of a component file, read where components land: the node directory (..)."""
    import hashlib
    import os

    with open(os.path.join("..", name), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def setup_returns_1():
    return 1


def setup_raises():
    raise RuntimeError("no database here")


def receive_with_alarm(task=None):
    msg = yield task.receive(0.2, alarm_value="alarm")
    return msg


def receive_plain_with_alarm(task=None):
    return task.receive(0.2, alarm_value="plain alarm")


def receive_without_alarm(task=None):
    msg = yield task.receive(0.2)
    return msg


async def servers_of(comp, n, timeout=30):
    """The computation's servers once there are C{n} (bounded wait)."""
    await wait_for(lambda: len(comp._scheduler.servers) >= n, timeout=timeout)
    return sorted(await comp.servers(), key=str)


def statuses_of(statuses, status):
    return [m.info for m in statuses if isinstance(m, DispycosStatus) and m.status == status]



def big_file(tmp_path, mib=20):
    path = tmp_path / "big.bin"
    data = os.urandom(mib * MiB)
    path.write_bytes(data)
    return str(path), hashlib.sha256(data).hexdigest()


# -- 1. a node that releases a computation by itself reports every server -----------


@pytest_twisted.ensureDeferred
async def test_node_releasing_on_its_own_reports_every_server(fresh_node):
    node = fresh_node(cpus=2, args=["--zombie_period", "3"])
    scheduler = Scheduler(nodes=[node.location], secret=node.secret, discover=False)
    statuses = []
    try:
        comp = Computation([where], status_task=statuses.append)
        await comp.schedule(timeout=30)
        servers = await servers_of(comp, 2)
        # Idle for the zombie period: the node releases the computation itself.
        await wait_for(lambda: statuses_of(statuses, Status.NodeClosed), timeout=30)
        assert sorted(map(str, statuses_of(statuses, Status.ServerClosed))) == sorted(map(str, servers))
        assert await comp.servers() == [] and await comp.nodes() == []
        await comp.close()
        # The node is free again, with both servers, for the next computation.
        comp2 = Computation([where])
        await comp2.schedule(timeout=30)
        try:
            servers2 = await servers_of(comp2, 2)
            pids = [await comp2.run_result_at(loc, where) for loc in servers2]
            assert len(set(pids)) == 2
        finally:
            await comp2.close()
    finally:
        await scheduler.close()


# -- 2. closing a node without terminate lets its tasks finish ----------------------------


@pytest_twisted.ensureDeferred
async def test_close_node_lets_running_tasks_finish(fresh_node):
    node = fresh_node(cpus=2)
    async with Session(node, [sleeper]) as comp:
        rtask = await comp.run(sleeper, 6)
        await sleep(0.5)
        await comp.close_node("127.0.0.1")  # waits for the task, which outlives the old 3 s kill
        assert await rtask.result(timeout=30) == 60
    async with Session(node, [sleeper]) as comp:
        rtask = await comp.run(sleeper, 60)
        await sleep(0.5)
        await comp.close_node("127.0.0.1", terminate=True)
        with pytest.raises(dispycos.TaskTerminated):
            await rtask.result(timeout=20)


@pytest.mark.parametrize("command", ["quit", "terminate"])
@pytest_twisted.ensureDeferred
async def test_console_quit_waits_for_tasks_and_terminate_ends_them(tmp_path, command):
    node = Node(str(tmp_path), ["--stdin_commands", "-c", "2"], stdin=subprocess.PIPE)
    scheduler = Scheduler(nodes=[node.location], secret=node.secret, discover=False)
    comp = Computation([sleeper])
    try:
        await comp.schedule(timeout=30)
        rtask = await comp.run(sleeper, 6 if command == "quit" else 60)
        await sleep(0.5)
        node.send(command)
        if command == "quit":
            assert await rtask.result(timeout=30) == 60
        else:
            with pytest.raises(dispycos.TaskTerminated):
                await rtask.result(timeout=20)
        await wait_for(lambda: node.proc.poll() is not None, timeout=30)  # then the node exits
        assert node.proc.returncode == 0
    finally:
        await comp.close()
        await scheduler.close()
        node.stop()


# -- 3. component files travel as streams ------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_component_file_of_20_mb_arrives_whole(fresh_node, tmp_path):
    node = fresh_node(cpus=2)
    path, digest = big_file(tmp_path)
    async with Session(node, [digest_of, path]) as comp:
        for loc in await servers_of(comp, 2):
            assert await comp.run_result_at(loc, digest_of, "big.bin") == digest


@pytest_twisted.ensureDeferred
async def test_component_file_over_the_node_limit_fails_schedule_at_once(fresh_node, tmp_path):
    node = fresh_node(cpus=1, args=["--max_file_size", "10m"])
    path, _ = big_file(tmp_path)
    scheduler = Scheduler(nodes=[node.location], secret=node.secret, discover=False)
    try:
        comp = Computation([digest_of, path])
        started = time.monotonic()
        with pytest.raises(ScheduleError) as failed:
            await comp.schedule(timeout=60)
        assert time.monotonic() - started < 30  # not at the timeout
        text = str(failed.value)
        assert "big.bin" in text and str(10 * MiB) in text and "max_file_size" in text, text
    finally:
        await scheduler.close()
    assert os.listdir(node.node_dir) == []  # nothing of it was written


@pytest_twisted.ensureDeferred
async def test_component_files_through_a_shared_scheduler(fresh_node, tmp_path):
    node = fresh_node(cpus=1)
    dest = tmp_path / "scheduler-files"
    path, digest = big_file(tmp_path)
    sched = SchedulerProcess([node.location], node.secret, args=["--dest_path", str(dest)])
    try:
        comp = Computation([digest_of, path], secret=node.secret)
        await comp.schedule(sched.location, timeout=30)
        try:
            assert await comp.run_result(digest_of, "big.bin") == digest
            # what the scheduler wrote is under its --dest_path
            kept = [os.path.join(d, f) for d, _, files in os.walk(dest) for f in files]
            assert [os.path.basename(k) for k in kept] == ["big.bin"], kept
        finally:
            await comp.close()
        await wait_for(lambda: not [f for _, _, files in os.walk(dest) for f in files], timeout=10)
    finally:
        sched.stop()


@pytest_twisted.ensureDeferred
async def test_shared_scheduler_max_file_size_refuses_at_once(fresh_node, tmp_path):
    node = fresh_node(cpus=1)
    path, _ = big_file(tmp_path, mib=2)
    sched = SchedulerProcess([node.location], node.secret, args=["--max_file_size", "1m"])
    try:
        comp = Computation([digest_of, path], secret=node.secret)
        with pytest.raises(ScheduleError) as failed:
            await comp.schedule(sched.location, timeout=60)
        text = str(failed.value)
        assert "big.bin" in text and str(MiB) in text, text
    finally:
        sched.stop()


# -- 5. a setup that fails ends schedule() at once, with the reason -----------------------


@pytest.mark.parametrize("which", ["node_setup", "server_setup"])
@pytest_twisted.ensureDeferred
async def test_failed_setup_fails_schedule_with_the_reason(fresh_node, which):
    node = fresh_node(cpus=2)
    scheduler = Scheduler(nodes=[node.location], secret=node.secret, discover=False)
    try:
        setup = {"node_setup": setup_returns_1} if which == "node_setup" else {"server_setup": setup_raises}
        comp = Computation([where], **setup)
        started = time.monotonic()
        with pytest.raises(ScheduleError) as failed:
            await comp.schedule(timeout=60)
        assert time.monotonic() - started < 30  # not the 60 s wait for a ready server
        text = str(failed.value)
        assert node.location in text, text
        if which == "node_setup":
            assert "setup_returns_1" in text and "not 0" in text, text
        else:
            assert "no database here" in text, text
    finally:
        await scheduler.close()


# -- 6. options that were parsed and dropped ------------------------------------------------


def test_shared_scheduler_name_in_log_console_and_monitor(tmp_path):
    http_port, tcp_port = free_port(), free_port()
    env = env_for_children(tmp_path)
    env["DISPYCOS_SECRET"] = "s3"
    log = open(tmp_path / "sched.log", "wb")
    proc = subprocess.Popen([sys.executable, "-c", "from dispycos.scripts import scheduler_main; scheduler_main()",
                             "-i", "127.0.0.1", "-t", str(tcp_port), "-n", "sched-under-test", "--http_port",
                             str(http_port), "--stdin_commands", "--dest_path", str(tmp_path / "d")],
                            stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 30
        status = None
        while status is None and time.monotonic() < deadline:
            # the address the monitor printed, with its token
            printed = re.search(r"^dispycos monitor at (\S+)$", (tmp_path / "sched.log").read_text(), re.M)
            try:
                if printed:
                    base, _, token = printed.group(1).partition("?")
                    status = json.load(urllib.request.urlopen(base + "cluster_status?" + token, timeout=5))
                    continue
            except OSError:
                pass
            time.sleep(0.1)
        assert status is not None and status["name"] == "sched-under-test"
        proc.stdin.write(b"status\n")
        proc.stdin.flush()
        text = ""
        while "active computation" not in text and time.monotonic() < deadline:
            time.sleep(0.1)
            text = (tmp_path / "sched.log").read_text()
        log_lines = [line for line in text.splitlines() if "[" in line]
        assert "sched-under-test" in log_lines[0], log_lines[:3]
        status_line = [line for line in text.splitlines() if "active computation" in line]
        assert status_line and "sched-under-test" in status_line[0], text
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


SILENT_CLIENT = r'''
import sys
from twisted.internet import task, defer
import dispycos

def nap(task=None):
    yield task.sleep(600)

async def main(reactor):
    comp = dispycos.Computation([nap], secret=sys.argv[2], pulse_interval=1)
    await comp.schedule(sys.argv[1], timeout=30)
    await comp.run(nap)
    print("ACTIVE", flush=True)
    await defer.Deferred()

task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
'''


@pytest_twisted.ensureDeferred
async def test_shared_scheduler_zombie_period_0_keeps_silent_clients(fresh_node, tmp_path):
    node = fresh_node(cpus=1)
    sched = SchedulerProcess([node.location], node.secret, args=["--zombie_period", "0"])
    script = tmp_path / "client.py"
    script.write_text(SILENT_CLIENT)
    proc = subprocess.Popen([sys.executable, str(script), sched.location, node.secret], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, env=env_for_children(tmp_path), text=True)
    try:
        assert proc.stdout.readline().strip() == "ACTIVE"
        nxt = Computation([sleeper], secret=node.secret)
        d = nxt.schedule(sched.location, timeout=60)
        proc.send_signal(signal.SIGSTOP)
        await sleep(8)  # silent for 8 pulses: 5 would close it without --zombie_period 0
        assert not d.called
        proc.kill()  # a client that is gone is still closed
        await d
        try:
            assert await nxt.run_result(sleeper, 0.1) == 1.0
        finally:
            await nxt.close()
    finally:
        proc.kill()
        proc.wait()
        sched.stop()


@pytest.mark.parametrize("debug", [False, True])
def test_debug_flag_under_twistd(tmp_path, debug):
    """-d decides the log level under twistd as in the console script: no AMP chatter without it."""
    env = env_for_children(tmp_path)
    env["DISPYCOS_SECRET"] = "s4"
    ready = tmp_path / "ready"
    twistd = os.path.join(os.path.dirname(sys.executable), "twistd")
    cmd = [twistd, "-n", "--pidfile=", "dispycosnode", "-c", "1", "-i", "127.0.0.1", "--tcp_ports", "0", "--daemon",
           "--dest_path", str(tmp_path / "d"), "--ready_file", str(ready)] + (["-d"] if debug else [])
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=str(tmp_path),
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert ready.exists()
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=30)
    text = out.decode("utf-8", "replace")
    assert "ready at" in text
    assert ("twisted.protocols.amp" in text) == debug, text


def test_scheduler_takes_the_program_options_and_refuses_others():
    with pytest.raises(TypeError):
        Scheduler(nodes=[], no_such_option=1)
    assert Scheduler.ServerInitialized == Status.ServerInitialized  # class attributes, as in pycos
    assert Scheduler.ComputationClosed == Status.ComputationClosed


SCHEDULER_OPTIONS_CLIENT = r'''
import os, sys
from twisted.internet import task, defer
import dispycos

def send_back(size, task=None):
    with open("back.bin", "wb") as f:
        f.write(b"x" * size)
    path = yield task.send_file("back.bin")
    return path

async def main(reactor):
    node, secret, port, dest = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
    sched = dispycos.Scheduler(nodes=[node], secret=secret, discover=False, tcp_port=port, dest_path=dest,
                               max_file_size=1000, name="private-one", zombie_period=0)
    comp = dispycos.Computation([send_back])
    await comp.schedule(timeout=30)
    print("PORT", comp.runtime.location.port == port, flush=True)
    landed = await comp.run_result(send_back, 10)
    print("LANDED", os.path.dirname(landed).startswith(dest), flush=True)
    try:
        await comp.run_result(send_back, 5000)
        print("BIG accepted", flush=True)
    except dispycos.DispycosError as e:
        print("BIG refused", "1000" in str(e), flush=True)
    await comp.close()
    await sched.close()

task.react(lambda reactor: defer.ensureDeferred(main(reactor)))
'''


def test_private_scheduler_honours_its_options(node, tmp_path):
    script = tmp_path / "client.py"
    script.write_text(SCHEDULER_OPTIONS_CLIENT)
    dest = tmp_path / "client-files"
    out = subprocess.run([sys.executable, str(script), node.location, node.secret, str(free_port()), str(dest)],
                         capture_output=True, env=env_for_children(tmp_path), timeout=120, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split("\n")[:3] == ["PORT True", "LANDED True", "BIG refused True"], out.stdout + out.stderr


def test_a_saved_flag_can_be_switched_off(tmp_path):
    env = env_for_children(tmp_path)
    first, second = tmp_path / "first.json", tmp_path / "second.json"
    cmd = [sys.executable, "-m", "dispycos.scripts"]
    subprocess.run(cmd + ["--daemon", "--sched_normal", "--save_config", str(first)], check=True, env=env,
                   capture_output=True, timeout=60)
    assert json.loads(first.read_text())["options"]["daemon"]
    subprocess.run(cmd + ["--config", str(first), "--no_daemon", "--save_config", str(second)], check=True, env=env,
                   capture_output=True, timeout=60)
    saved = json.loads(second.read_text())["options"]
    assert not saved["daemon"] and saved["sched_normal"]


@pytest_twisted.ensureDeferred
async def test_node_outside_its_service_window_says_why(fresh_node):
    now = datetime.now()
    start, stop = now + timedelta(hours=2), now + timedelta(hours=3)
    node = fresh_node(cpus=1, args=["--service_start", start.strftime("%H:%M"),
                                    "--service_stop", stop.strftime("%H:%M")])
    scheduler = Scheduler(nodes=[node.location], secret=node.secret, discover=False)
    try:
        comp = Computation([where])
        with pytest.raises(ScheduleError) as failed:
            await comp.schedule(timeout=6)
        assert "service window" in str(failed.value), str(failed.value)
    finally:
        await scheduler.close()


# -- 7. names ---------------------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_tasks_where_and_receive_alarm_value(fresh_node):
    node = fresh_node(cpus=2)
    async with Session(node, [sleeper, receive_with_alarm, receive_plain_with_alarm, receive_without_alarm]) as comp:
        servers = await servers_of(comp, 2)
        running = [await comp.run_at(loc, sleeper, 30) for loc in servers]
        assert sorted(await comp.tasks(), key=str) == sorted(running, key=str)
        assert await comp.tasks(servers[0]) == [running[0]]
        assert await comp.tasks(Location("127.0.0.1", 1)) == []
        assert sorted(await comp.tasks("127.0.0.1"), key=str) == sorted(running, key=str)
        assert await comp.tasks("127.0.0.9") == []
        for rtask in running:
            await rtask.terminate()
        await wait_for(lambda: not comp._tasks, timeout=20)
        assert await comp.tasks() == []
        assert await comp.run_result(receive_with_alarm) == "alarm"
        assert await comp.run_result(receive_plain_with_alarm) == "plain alarm"
        with pytest.raises(dispycos.RemoteTaskError) as failed:
            await comp.run_result(receive_without_alarm)
        assert failed.value.type_name == "TimeoutError"
