"""
Helpers of the blocking-API tests: programs written as plain scripts (no
Twisted in them) run as child processes in a session of their own, tagged
through their environment so that every process they start -- a
L{LocalCluster}'s node and its servers included -- can be found, checked
for and stopped by PID afterwards.
"""

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time

import psutil
import pytest

from .conftest import ROOT, env_for_children

TAG = "DISPYCOS_TEST_TAG"


def tagged(tag):
    """The live processes whose environment carries C{tag} (zombies do not count: they ended)."""
    found = []
    for p in psutil.process_iter():
        try:
            if p.status() == psutil.STATUS_ZOMBIE:
                continue
            if p.environ().get(TAG) == tag:
                found.append(p)
        except psutil.Error:
            pass
    return found


def kill_tagged(tag):
    """SIGKILL every process of C{tag} by PID; their PIDs."""
    pids = []
    for p in tagged(tag):
        pids.append(p.pid)
        try:
            p.kill()
        except psutil.Error:
            pass
    return pids


class Workdir:
    """A temporary directory for one test's scripts and their temporary files, and their tag."""

    def __init__(self):
        self.path = tempfile.mkdtemp(prefix="dispycos-test-blocking-")
        self.tag = secrets.token_hex(8)

    def env(self, **extra):
        env = env_for_children(self.path)  # TMPDIR: a LocalCluster's files land here
        env[TAG] = self.tag
        env["PYTHONUNBUFFERED"] = "1"
        env.update(extra)
        return env

    def write(self, name, text):
        path = os.path.join(self.path, name)
        with open(path, "w") as f:
            f.write(textwrap.dedent(text))
        return path

    def start(self, code, *args, name="script.py"):
        """Start C{code} as a script in a session of its own; the Popen (stdout and stderr together, text)."""
        path = self.write(name, code)
        return subprocess.Popen([sys.executable, path] + [str(a) for a in args], stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True, env=self.env(), cwd=self.path,
                                start_new_session=True)

    def run(self, code, *args, timeout=240):
        """Run C{code} to its end; (exit status, output)."""
        proc = self.start(code, *args)
        try:
            out, _ = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            stop_group(proc)
            out, _ = proc.communicate()
            pytest.fail("script did not end within %s s:\n%s" % (timeout, out))
        return proc.returncode, out

    def leftovers(self):
        """What the script's processes left: live processes, and LocalCluster directories."""
        names = sorted(n for n in os.listdir(self.path) if n.startswith("dispycos-local-"))
        return [p.pid for p in tagged(self.tag)], names

    def wait_no_processes(self, seconds=20):
        """The tagged processes still alive after up to C{seconds} (a node exiting takes a moment)."""
        deadline = time.monotonic() + seconds
        while True:
            alive = [p.pid for p in tagged(self.tag)]
            if not alive or time.monotonic() > deadline:
                return alive
            time.sleep(0.1)

    def cleanup(self):
        kill_tagged(self.tag)
        shutil.rmtree(self.path, ignore_errors=True)


def stop_group(proc):
    """SIGKILL the session/process group of C{proc} (a script started by L{Workdir.start})."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def wait_for_file(path, proc, seconds=120):
    """Wait until C{path} exists (failing if C{proc} ended first or it takes over C{seconds})."""
    deadline = time.monotonic() + seconds
    while not os.path.exists(path):
        if proc.poll() is not None:
            pytest.fail("script ended (%s) before %s appeared:\n%s" % (proc.returncode, path, proc.stdout.read()))
        if time.monotonic() > deadline:
            stop_group(proc)
            pytest.fail("%s did not appear:\n%s" % (path, proc.stdout.read()))
        time.sleep(0.05)


__all__ = ["ROOT", "Workdir", "stop_group", "tagged", "wait_for_file"]
