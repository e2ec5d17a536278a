# -*- test-case-name: tests.test_node_cli -*-
"""
The node's pid file and C{--clean}.

Pid file: C{<dest_path>/dispycosnode.pid}, one per C{--dest_path} (so two
nodes on one host need distinct C{--dest_path}s), JSON::

    {"pid": 1234, "create_time": 1700000000.12, "uid": 1000,
     "cmdline": ["/usr/bin/python3", "-m", "dispycos.scripts", ...],
     "name": "...", "port": 9706,
     "servers": [{"index": 1, "pid": 1235, "create_time": ..., "uid": ..., "cmdline": [...]}, ...]}

The node writes it at start and whenever a server process is replaced
(through a fresh temporary, see L{paths.replace_file}), and removes it when
it stops (L{PidFileService}, the node's child service "pidfile"). At start, if the file names a live process of this node's making
(same pid, creation time, user and exact command line as recorded) the node
refuses to start, unless C{--clean} is given: then those processes are sent
SIGTERM, given some seconds, then SIGKILL, and the file is removed. A
process that differs in any of the four is not this node's (a reused pid, a
forged or old record) and is never touched; a file that is a link or not
this user's is not read. A file naming no live process is stale and removed
silently.
"""

import json
import os
import sys

from twisted.application import service
from twisted.python import usage

from dispycos import config, paths

PID_FILE_NAME = "dispycosnode.pid"


def pid_file_path(dest_path):
    """The pid file of a node with this C{--dest_path} (None: the default)."""
    return os.path.join(dest_path or config.default_dest_path(), PID_FILE_NAME)


def process_record(pid):
    """
    What identifies process C{pid} in a pid file: its pid, creation time,
    real uid and command line (only the pid without psutil, or when it is gone).
    """
    record = {"pid": pid}
    try:
        import psutil

        proc = psutil.Process(pid)
        with proc.oneshot():
            record.update(create_time=proc.create_time(), uid=proc.uids().real, cmdline=proc.cmdline())
    except Exception:
        pass
    return record


def write_pid_file(path, node):
    """Record C{node}'s process and its server processes in C{path} (atomically, see L{paths.replace_file})."""
    record = process_record(os.getpid())
    record.update(name=node.name, port=node.port, servers=[
        dict(process_record(s.pid), index=s.index) for s in node.slots if s.running and s.pid])
    paths.replace_file(path, json.dumps(record))


def _read_pid_file(path):
    """The record in C{path}: None when there is none; {} when it is unreadable, a link or not this user's."""
    if not os.path.lexists(path):
        return None
    f = paths.open_private_file(path)
    if f is None:
        return {}
    try:
        with f:
            record = json.load(f)
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def remove_pid_file(path):
    """Remove C{path} if it is this process's pid file."""
    record = _read_pid_file(path)
    if record and record.get("pid") == os.getpid():
        try:
            os.unlink(path)
        except OSError:
            pass


def _live_process(entry):
    """
    The psutil process of a pid file entry if it still runs and is the very
    process recorded: same pid, creation time, real uid (this user's) and
    command line. None otherwise.
    """
    import psutil

    try:
        pid = int(entry["pid"])
        if pid == os.getpid() or pid <= 0:
            return None
        created, uid, cmdline = float(entry["create_time"]), int(entry["uid"]), entry["cmdline"]
        if uid != os.getuid() or not isinstance(cmdline, list):
            return None
        proc = psutil.Process(pid)
        with proc.oneshot():
            if (abs(proc.create_time() - created) > 0.01 or proc.uids().real != uid or proc.cmdline() != cmdline
                    or proc.status() == psutil.STATUS_ZOMBIE):
                return None
        return proc
    except (psutil.Error, KeyError, TypeError, ValueError):
        return None


def leftover_processes(path):
    """C{(record, processes)}: the pid file's content and its processes that still run."""
    record = _read_pid_file(path)
    if not record:
        return record, []
    entries = [record] + [e for e in record.get("servers") or [] if isinstance(e, dict)]
    procs = [p for p in (_live_process(e) for e in entries) if p is not None]
    return record, procs


def _running(proc):
    import psutil

    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def _wait_gone(procs, timeout):
    import time

    deadline = time.monotonic() + timeout
    alive = [p for p in procs if _running(p)]
    while alive and time.monotonic() < deadline:
        time.sleep(0.1)
        alive = [p for p in alive if _running(p)]
    return alive


def kill_processes(procs, grace=10.0):
    """
    SIGTERM C{procs}, wait up to C{grace} seconds, then SIGKILL what is left.
    (A zombie counts as gone: its parent, not us, has to reap it.)
    """
    import psutil

    for p in procs:
        try:
            p.terminate()
        except psutil.Error:
            pass
    alive = _wait_gone(procs, grace)
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    return _wait_gone(alive, 5)


def check_pid_file(path, clean=False):
    """
    Refuse to start (L{usage.UsageError}) when the pid file at C{path} names
    live processes, unless C{clean}: then kill them. Stale files are removed.
    """
    try:
        import psutil  # noqa: F401
    except ImportError:
        if clean and os.path.exists(path):
            print("dispycosnode: WARNING: psutil is missing: cannot check the processes of %s; removing it" % path,
                  file=sys.stderr)
            os.unlink(path)
        return
    record, procs = leftover_processes(path)
    if record is None:
        return
    if procs and not clean:
        raise usage.UsageError(
            "another dispycosnode seems to be running with --dest_path %s (pid %s, pid file %s); "
            "stop it, give another --dest_path, or use --clean to kill it"
            % (os.path.dirname(path), record.get("pid"), path)
        )
    if procs:
        print("dispycosnode: --clean: killing leftover processes %s" % ", ".join(str(p.pid) for p in procs),
              file=sys.stderr)
        alive = kill_processes(procs)
        if alive:
            raise usage.UsageError("--clean could not kill processes %s" % ", ".join(str(p.pid) for p in alive))
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


class PidFileService(service.Service):
    """
    The node's pid file at C{path}, a named child ("pidfile") of the node:
    written when the children start, that is once the node listens and has
    spawned its servers (the file names its port and their pids), and
    rewritten (L{write}) as servers are replaced.

    Its removal does not fit a child's stop: the node stops its children
    before it stops listening and kills its servers, and the file must name
    those servers until they are gone (a node killed while it stops leaves
    them to C{--clean}, which finds them here). So a stopping node removes
    the file itself (L{remove}), last, after its servers and its zygote;
    only this service stopped on its own, the node running on, removes it
    at once.
    """

    name = "pidfile"

    def __init__(self, node, path):
        self.node = node
        self.path = path

    def startService(self):
        super().startService()
        self.write()

    def stopService(self):
        super().stopService()
        if not self.node.stopping:
            self.remove()

    def write(self):
        """Record the node and its servers now (a failure is logged: the node goes on)."""
        try:
            write_pid_file(self.path, self.node)
        except Exception as e:
            self.node.log.warn("cannot write pid file {f}: {e}", f=self.path, e=e)

    def remove(self):
        """Remove the file if it is this process's (L{remove_pid_file})."""
        remove_pid_file(self.path)
