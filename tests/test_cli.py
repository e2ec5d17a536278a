"""
The command-line front doors: console scripts, twistd plugins, option parsing.
"""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import pytest_twisted

from dispycos import Computation, Scheduler
from dispycos.node.tap import Options as NodeOptions

from .conftest import NodeProcess, env_for_children, free_port, terminate_group

TWISTD = [sys.executable, "-c", "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"]


def test_twistd_help_lists_plugins(tmp_path):
    out = subprocess.run(TWISTD + ["--help"], capture_output=True, text=True, timeout=60,
                         env=env_for_children(), cwd=str(tmp_path))
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert any(l.split()[:1] == ["dispycosnode"] for l in lines), out.stdout
    assert any(l.split()[:1] == ["dispycos"] for l in lines), out.stdout


def test_plugins_discoverable():
    from twisted.application.service import IServiceMaker
    from twisted.plugin import getPlugins

    names = {p.tapname for p in getPlugins(IServiceMaker)}
    assert {"dispycos", "dispycosnode"} <= names


def square(x):
    return x * x


@pytest_twisted.ensureDeferred
async def test_twistd_node_serves_a_computation():
    node = NodeProcess(cpus=1, command=TWISTD + ["-n", "--pidfile=", "--logfile=-", "dispycosnode"])
    try:
        scheduler = Scheduler(nodes=[node.location], secret=node.secret)
        comp = Computation([square])
        try:
            await comp.schedule(timeout=30)
            assert await comp.run_results(square, range(5)) == [0, 1, 4, 9, 16]
        finally:
            await comp.close()
            await scheduler.close()
    finally:
        node.stop()


@pytest.mark.parametrize("front_door", ["twistd", "console script"])
def test_a_sigterm_as_soon_as_the_node_listens_is_handled(front_door, tmp_path):
    # Both twistd and task.react (the console scripts) start services before reactor.run(), when
    # SIGTERM still killed the process at once: the node now listens only once the reactor runs,
    # its signal handlers in place, so a SIGTERM at its first connection is a clean stop. (The window
    # was milliseconds: tests/unit/test_scripts.py checks the order deterministically.)
    port = free_port()
    head = TWISTD + ["-n", "--pidfile=", "--logfile=-", "dispycosnode"] if front_door == "twistd" else \
        [sys.executable, "-m", "dispycos.scripts"]
    env = dict(env_for_children(), DISPYCOS_SECRET="s3cret")
    proc = subprocess.Popen(head + ["-c", "1", "-i", "127.0.0.1", "--tcp_ports", str(port), "--daemon",
                                    "--dest_path", str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, cwd=str(tmp_path),
                            start_new_session=True)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:  # bounded
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.01)
    text = terminate_group(proc)
    assert "Received SIGTERM" in text and "Main loop terminated" in text, text
    assert proc.returncode in (0, -signal.SIGTERM), text  # (twistd ends by its signal once stopped)


def test_console_script_node_refuses_exposed_without_secret(tmp_path):
    env = env_for_children()
    env.pop("DISPYCOS_SECRET", None)
    out = subprocess.run([sys.executable, "-m", "dispycos.scripts", "-i", "0.0.0.0", "--dest_path", str(tmp_path)],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode != 0
    err = out.stderr.strip().splitlines()
    assert len(err) == 1 and "secret" in err[0] and "--secret" in err[0], out.stderr


def test_node_options():
    o = NodeOptions()
    o.parseOptions(["-c", "3", "--tcp_ports", "5000-5001", "--tcp_ports", "6000", "-i", "127.0.0.1",
                    "-n", "nodeA", "--dest_path", "/tmp/x", "-s", "sekrit", "-d", "--daemon"])
    assert o["servers"] == 3
    assert o["ports"] == [5000, 5001, 6000, 6001]
    assert o["ip_addr"] == ["127.0.0.1"]
    assert (o["name"], o["dest_path"], o["secret"], o["debug"], o["daemon"]) == ("nodeA", "/tmp/x", "sekrit", 1, 1)
    o = NodeOptions()
    o.parseOptions(["-c", "-1"])
    assert o["servers"] == max(1, (os.cpu_count() or 1) - 1) or o["servers"] == (os.cpu_count() or 1) - 1
    o = NodeOptions()
    o.parseOptions([])
    assert o["ip_addr"] == ["127.0.0.1"] and o["ports"][0] == 9706


def test_insecure_override_warns(tmp_path):
    o = NodeOptions()
    o.parseOptions(["-i", "0.0.0.0", "--insecure"])
    assert o["ip_addr"] == ["0.0.0.0"]
