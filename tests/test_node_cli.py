"""
The full node command line: --serve, --save_config/--config, the stdin
console, --clean with the pid file, --zombie_period. Real node processes on
127.0.0.1, each stopped by its PID in a finally; every wait bounded.
"""

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import psutil
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater
from twisted.python import usage

from dispycos import Computation, Scheduler
from dispycos.node.tap import Options as NodeOptions
from dispycos.node.pidfile import PID_FILE_NAME, check_pid_file
from dispycos.node.tap import makeService

from .conftest import NodeProcess, env_for_children


def square(x):
    return x * x


def sleep(seconds):
    return deferLater(reactor, seconds, lambda: None)


async def wait_for(predicate, timeout=30, step=0.05):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within %s s" % timeout)
        await sleep(step)


def wait_blocking(predicate, timeout=30, step=0.05):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within %s s" % timeout)
        time.sleep(step)


class Node:
    """
    A dispycosnode started by a test with a given --dest_path and no
    --daemon unless asked (NodeProcess always passes --daemon).
    """

    def __init__(self, dest, args=(), stdin=None, secret=None, tag="node", wait_ready=True):
        self.dest = dest
        self.secret = secret or secrets.token_hex(8)
        self.ready_file = os.path.join(dest, "ready-%s" % tag)
        self.log_path = os.path.join(dest, "%s.log" % tag)
        cmd = [sys.executable, "-m", "dispycos.scripts", "-c", "1", "-i", "127.0.0.1", "--tcp_ports", "0",
               "--dest_path", dest, "--ready_file", self.ready_file] + list(args)
        env = env_for_children()
        env["DISPYCOS_SECRET"] = self.secret
        self.log = open(self.log_path, "wb")
        self.proc = subprocess.Popen(cmd, stdin=stdin, stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     cwd=dest, start_new_session=True)
        if wait_ready:
            deadline = time.monotonic() + 30
            while not os.path.exists(self.ready_file):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    out = self.output()
                    self.stop()
                    raise RuntimeError("dispycosnode did not start:\n" + out)
                time.sleep(0.05)
            with open(self.ready_file) as f:
                self.location = f.read().strip()

    def output(self):
        try:
            with open(self.log_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def send(self, line):
        self.proc.stdin.write(line.encode() + b"\n")
        self.proc.stdin.flush()

    def server_pids(self):
        try:
            return sorted(c.pid for c in psutil.Process(self.proc.pid).children(recursive=True)
                          if "dispycos.server" in " ".join(c.cmdline()))
        except psutil.Error:
            return []

    def stop(self):
        """Stop by PID: TERM, bounded wait, then KILL of its process group."""
        if self.proc.stdin is not None:
            try:
                self.proc.stdin.close()
            except OSError:
                pass
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self.log.close()


def gone(pid):
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# -- --serve ----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_serve_one_computation_then_exit():
    node = NodeProcess(cpus=1, args=["--serve", "1"])
    try:
        scheduler = Scheduler(nodes=[node.location], secret=node.secret)
        comp = Computation([square])
        try:
            await comp.schedule(timeout=30)
            assert await comp.run_results(square, range(4)) == [0, 1, 4, 9]
        finally:
            await comp.close()
            await scheduler.close()
        await wait_for(lambda: node.proc.poll() is not None, timeout=30)
        assert node.proc.returncode == 0, node.output()
        assert "served 1 computation" in node.output()
        assert not os.path.exists(os.path.join(node.dest, PID_FILE_NAME))
    finally:
        node.stop()


# -- --save_config / --config -------------------------------------------------------


def options_dict(o):
    return {k: v for k, v in o.items() if k not in ("config", "save_config")}


def test_config_save_load_roundtrip(tmp_path):
    path = str(tmp_path / "node.conf")
    argv = ["-c", "2", "-i", "127.0.0.1", "-i", "127.0.0.2", "--ext_ip_addr", "10.0.0.1", "--ext_ip_addr", "10.0.0.2",
            "--tcp_ports", "5000-5001", "--tcp_ports", "6000", "-n", "node name with spaces", "--dest_path", "/tmp/x y",
            "-s", "s3cr=t'\"", "--max_file_size", "10m", "-u", "9999", "--min_pulse_interval", "2",
            "--max_pulse_interval", "50", "--zombie_period", "30", "--serve", "3", "--service_start", "17:00",
            "--service_stop", "07:00", "--service_end", "08:00", "--peer", "127.0.0.1:9705", "--clean", "-d",
            "--daemon"]
    o = NodeOptions()
    o.parseOptions(argv + ["--save_config", path])
    with pytest.raises(SystemExit) as info:
        makeService(o)
    assert info.value.code in (0, None)
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o600)
    saved = json.load(open(path))["options"]
    assert saved["secret"] == "s3cr=t'\"" and saved["name"] == "node name with spaces"

    loaded = NodeOptions()
    loaded.parseOptions(["--config", path])
    assert options_dict(loaded) == options_dict(o)
    assert loaded["ports"] == [5000, 5001, 6000]
    assert loaded["max_file_size"] == 10 * 1024 * 1024

    # Defaults round-trip too.
    d = NodeOptions()
    d.parseOptions([])
    path2 = str(tmp_path / "defaults.conf")
    from dispycos.node import configfile

    configfile.save(path2, d.saved_values())
    d2 = NodeOptions()
    d2.parseOptions(["--config", path2])
    assert options_dict(d2) == options_dict(d)

    # The command line wins over the file; lists are replaced, not extended.
    over = NodeOptions()
    over.parseOptions(["--config", path, "-n", "other", "-i", "127.0.0.3", "--serve", "-1", "-c", "1"])
    assert over["name"] == "other" and over["ip_addr"] == ["127.0.0.3"] and over["serve"] == -1
    assert over["servers"] == 1 and over["secret"] == o["secret"] and over["ext_ip_addr"] == o["ext_ip_addr"]


def test_config_errors(tmp_path):
    bad = tmp_path / "bad.conf"
    bad.write_text("not json")
    with pytest.raises(usage.UsageError, match="not valid JSON"):
        NodeOptions().parseOptions(["--config", str(bad)])
    with pytest.raises(usage.UsageError, match="cannot read"):
        NodeOptions().parseOptions(["--config", str(tmp_path / "missing.conf")])
    bad.write_text(json.dumps({"format": "dispycosnode-config", "version": 1, "options": {"bogus": 1}}))
    with pytest.raises(usage.UsageError, match="bogus"):
        NodeOptions().parseOptions(["--config", str(bad)])


def test_save_config_program_exits_0(tmp_path):
    env = env_for_children()
    env.pop("DISPYCOS_SECRET", None)
    path, path2 = str(tmp_path / "a.conf"), str(tmp_path / "b.conf")
    run = lambda argv: subprocess.run([sys.executable, "-m", "dispycos.scripts"] + argv, capture_output=True,
                                      text=True, timeout=60, env=env, cwd=str(tmp_path))
    out = run(["-s", "topsecret", "-n", "nodeQ", "--serve", "2", "--save_config", path])
    assert out.returncode == 0, out.stderr
    out = run(["--config", path, "--save_config", path2])
    assert out.returncode == 0, out.stderr
    assert json.load(open(path)) == json.load(open(path2))
    assert json.load(open(path2))["options"]["secret"] == "topsecret"


# -- the stdin console -----------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_stdin_commands_status_close_quit():
    dest = tempfile.mkdtemp(prefix="dispycos-test-console-")
    node = Node(dest, ["--stdin_commands", "-n", "consolenode"], stdin=subprocess.PIPE)
    try:
        node.send("status")
        await wait_for(lambda: "served so far" in node.output(), timeout=15)
        out = node.output()
        assert 'dispycosnode "consolenode"' in out and "0 computation(s) served so far" in out
        assert "server 1" in out and "pid" in out and "not currently used" in out

        scheduler = Scheduler(nodes=[node.location], secret=node.secret)
        comp = Computation([square])
        try:
            await comp.schedule(timeout=30)
            assert await comp.run_results(square, range(3)) == [0, 1, 4]
            node.send("status")
            await wait_for(lambda: "task(s) for computation" in node.output(), timeout=15)
            node.send("close")
            await wait_for(lambda: "computation closed" in node.output(), timeout=15)
        finally:
            await comp.close()
            await scheduler.close()
        node.send("status")
        await wait_for(lambda: "1 computation(s) served so far" in node.output(), timeout=15)
        assert node.proc.poll() is None
        node.send("quit")
        await wait_for(lambda: node.proc.poll() is not None, timeout=30)
        assert node.proc.returncode == 0, node.output()
    finally:
        node.stop()
        shutil.rmtree(dest, ignore_errors=True)


def test_stdin_eof_quits():
    dest = tempfile.mkdtemp(prefix="dispycos-test-console-")
    node = Node(dest, ["--stdin_commands"], stdin=subprocess.PIPE)
    try:
        pids = node.server_pids()
        node.proc.stdin.close()
        node.proc.wait(30)
        assert node.proc.returncode == 0, node.output()
        wait_blocking(lambda: all(gone(p) for p in pids), timeout=15)
    finally:
        node.stop()
        shutil.rmtree(dest, ignore_errors=True)


@pytest.mark.parametrize("args", [["--daemon"], []], ids=["daemon", "pipe-is-not-a-terminal"])
def test_no_console_with_daemon_or_without_terminal(args):
    dest = tempfile.mkdtemp(prefix="dispycos-test-console-")
    node = Node(dest, args, stdin=subprocess.PIPE)
    try:
        node.send("quit")
        time.sleep(1.5)
        assert node.proc.poll() is None
        assert "served so far" not in node.output()
    finally:
        node.stop()
        shutil.rmtree(dest, ignore_errors=True)


def test_console_on_a_terminal():
    """Without --daemon and with a terminal (a pty) on stdin, the node reads commands."""
    pty = pytest.importorskip("pty")
    import fcntl
    import termios

    dest = tempfile.mkdtemp(prefix="dispycos-test-console-")
    master, slave = pty.openpty()

    def controlling_terminal():
        os.setsid()
        fcntl.ioctl(0, termios.TIOCSCTTY, 0)

    log_path = os.path.join(dest, "node.log")
    ready = os.path.join(dest, "ready")
    env = env_for_children()
    env["DISPYCOS_SECRET"] = secrets.token_hex(8)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "dispycos.scripts", "-c", "1", "-i", "127.0.0.1",
                                 "--tcp_ports", "0", "--dest_path", dest, "--ready_file", ready, "-n", "ttynode"],
                                stdin=slave, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=dest,
                                preexec_fn=controlling_terminal)
    os.close(slave)
    output = lambda: open(log_path, encoding="utf-8", errors="replace").read()
    try:
        wait_blocking(lambda: os.path.exists(ready) or proc.poll() is not None, timeout=30)
        os.write(master, b"status\n")
        wait_blocking(lambda: "served so far" in output(), timeout=15)
        assert 'dispycosnode "ttynode"' in output()
        os.write(master, b"exit\n")
        assert proc.wait(30) == 0, output()
    finally:
        if proc.poll() is None:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        os.close(master)
        shutil.rmtree(dest, ignore_errors=True)


# -- --clean -----------------------------------------------------------------------------


def test_pid_file_refuses_second_node_and_clean_kills_first():
    dest = tempfile.mkdtemp(prefix="dispycos-test-clean-")
    first = Node(dest, ["--daemon"], tag="first")
    second = None
    try:
        pid_file = os.path.join(dest, PID_FILE_NAME)
        record = json.load(open(pid_file))
        first_servers = first.server_pids()
        assert record["pid"] == first.proc.pid
        assert sorted(s["pid"] for s in record["servers"]) == first_servers

        env = env_for_children()
        env["DISPYCOS_SECRET"] = first.secret
        out = subprocess.run([sys.executable, "-m", "dispycos.scripts", "-c", "1", "-i", "127.0.0.1",
                              "--tcp_ports", "0", "--dest_path", dest, "--daemon"],
                             capture_output=True, text=True, timeout=60, env=env, cwd=dest)
        assert out.returncode != 0
        err = out.stderr.strip().splitlines()
        assert len(err) == 1 and "another dispycosnode seems to be running" in err[0] and "--clean" in err[0], out.stderr
        assert first.proc.poll() is None

        second = Node(dest, ["--daemon", "--clean"], tag="second")
        assert first.proc.wait(30) is not None
        assert gone(first.proc.pid)
        wait_blocking(lambda: all(gone(p) for p in first_servers), timeout=15)
        assert "killing leftover processes" in second.output()
        assert json.load(open(pid_file))["pid"] == second.proc.pid
    finally:
        first.stop()
        if second is not None:
            second.stop()
        shutil.rmtree(dest, ignore_errors=True)


def test_clean_kills_orphaned_servers_and_stale_files(tmp_path):
    pid_file = str(tmp_path / PID_FILE_NAME)
    # A record of a dead process is stale: removed, no complaint.
    json.dump({"pid": 2 ** 22 + 12345, "create_time": 1.0, "servers": []}, open(pid_file, "w"))
    check_pid_file(pid_file)
    assert not os.path.exists(pid_file)
    # A live process that is not dispycos (pid reused) is not touched.
    # (Both wait on their stdin, which the test holds open, instead of sleeping.)
    other = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"], stdin=subprocess.PIPE)
    # A leftover "server" (cmdline mentions dispycos) is refused, then killed by --clean.
    orphan = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()", "dispycos.server"],
                              stdin=subprocess.PIPE)
    try:
        ct = lambda p: psutil.Process(p.pid).create_time()
        # As a node records them: pid, creation time, user and command line
        # ("other" reused the node's pid: its command line is not the recorded one).
        node_cmdline = [sys.executable, "-m", "dispycos.scripts", "--dest_path", str(tmp_path)]
        json.dump({"pid": other.pid, "create_time": ct(other), "uid": os.getuid(), "cmdline": node_cmdline,
                   "servers": [{"index": 1, "pid": orphan.pid, "create_time": ct(orphan), "uid": os.getuid(),
                                "cmdline": psutil.Process(orphan.pid).cmdline()}]}, open(pid_file, "w"))
        with pytest.raises(usage.UsageError, match="--clean"):
            check_pid_file(pid_file)
        assert other.poll() is None and orphan.poll() is None
        check_pid_file(pid_file, clean=True)
        assert orphan.wait(15) is not None
        assert other.poll() is None
        assert not os.path.exists(pid_file)
    finally:
        for p in (other, orphan):
            if p.poll() is None:
                p.kill()
            p.wait(10)


# -- --zombie_period -----------------------------------------------------------------------


@pytest_twisted.ensureDeferred
async def test_zombie_period_releases_idle_computation():
    node = NodeProcess(cpus=1, args=["--zombie_period", "2"])
    try:
        scheduler = Scheduler(nodes=[node.location], secret=node.secret)
        try:
            comp = Computation([square])
            try:
                await comp.schedule(timeout=30)
                assert await comp.run_results(square, range(2)) == [0, 1]
                await wait_for(lambda: "zombie" in node.output(), timeout=20)
                await wait_for(lambda: "computation %s closed" % comp.id in node.output(), timeout=20)
            finally:
                await comp.close()
            # The node is free again: another computation gets it.
            comp2 = Computation([square])
            try:
                await comp2.schedule(timeout=30)
                assert await comp2.run_results(square, range(3)) == [0, 1, 4]
            finally:
                await comp2.close()
        finally:
            await scheduler.close()
    finally:
        node.stop()


def _slow(seconds, task=None):
    yield task.sleep(seconds)
    return seconds


@pytest_twisted.ensureDeferred
async def test_zombie_period_spares_a_busy_computation(fresh_node):
    from dispycos import Computation, Scheduler

    node = fresh_node(cpus=1, args=["--zombie_period", "2"])
    scheduler = Scheduler(nodes=[node.location], secret=node.secret, discover=False)
    comp = Computation([_slow])
    try:
        await comp.schedule(timeout=30)
        assert await comp.run_result(_slow, 5) == 5  # busy for longer than the zombie period
    finally:
        await comp.close()
        await scheduler.close()
