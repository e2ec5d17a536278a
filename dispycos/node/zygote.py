"""
The zygote: a pre-loaded process that forks a node's servers (SPEC 6.6).

C{dispycosnode} forks it from its own process before it installs a reactor,
once Twisted (without pyOpenSSL, see L{dispycos._lean}) and the server's
modules are imported: a server is then an C{os.fork()} of the zygote, not a
new interpreter, and the pages the two share count once (USS). No reactor
runs in the zygote: each server installs and runs its own.

The node and the zygote speak over a C{SOCK_SEQPACKET} socket pair, one JSON
message a packet:

  - node to zygote: C{{"start": token, "args": [...], "env": {...}}} with the
    server's five fds (stdin, stdout, stderr, 3, 4) attached (SCM_RIGHTS);
  - zygote to node: C{{"pid": pid, "token": token}} once forked (or
    C{{"error": text, "token": token}}), then C{{"exit": pid, "status": s}}
    (a C{waitpid} status) when that server has ended: the zygote is its
    parent and reaps it.

Dying together: the zygote asks Linux for SIGKILL when the node dies
(PR_SET_PDEATHSIG; it was forked by the node's main thread, which lives as
long as the node) and ends when its socket closes; every server asks the same
relative to the zygote (single-threaded), so none outlives the node.
"""

import importlib
import io
import json
import os
import select
import signal
import socket
import sys

from dispycos.node import sharing

#: At most this many bytes in one message (arguments and environment of a server).
MAX_MESSAGE = 1 << 18
#: The server's fds, in the order they travel: its 0, 1, 2, 3 and 4.
CHILD_FDS = 5
#: What L{preload} imports for the servers (loaded by name: the zygote uses none of them itself) ...
SERVER_MODULES = ("twisted.internet.stdio", "twisted.python.threadpool", "dispycos.scripts", "dispycos.peer.runtime",
                  "dispycos.server.process", "dispycos.server.taskrunner")
#: ... and what the node imports before the fork, for itself (psutil: pid file, discovery, status).
NODE_MODULES = ("dispycos.node.tap", "psutil")


def preload(twisted_tls=False):
    """
    Import what a server needs, without installing a reactor (the reactor's
    module is imported: servers install it after the fork, each its own).
    """
    from dispycos import _lean

    _lean.import_twisted(twisted_tls=twisted_tls, install=False)
    for name in SERVER_MODULES:
        importlib.import_module(name)


def fork_available():
    """Whether this platform can fork servers (POSIX with SCM_RIGHTS and SEQPACKET)."""
    return (hasattr(os, "fork") and hasattr(socket, "send_fds") and hasattr(socket, "SOCK_SEQPACKET")
            and sys.platform.startswith("linux"))


#: The zygote L{prefork_for_node} forked in this process, until L{take} takes it.
_preforked = None


def wanted(argv, environ=None):
    """
    Whether C{dispycosnode} with the arguments C{argv} forks its servers: on
    Linux, unless C{--no_fork}, C{DISPYCOS_NO_FORK=1} or C{--twisted_tls}
    (its servers import Twisted with pyOpenSSL; the node never does).
    """
    environ = os.environ if environ is None else environ
    if environ.get("DISPYCOS_NO_FORK", "") not in ("", "0"):
        return False
    if any(a in ("--no_fork", "--twisted_tls", "--help", "-h", "--version") or a.startswith("--save_config")
           for a in argv):
        return False
    return fork_available() and "twisted.internet.reactor" not in sys.modules


def prefork_for_node(argv):
    """In C{dispycosnode}, before its reactor: preload and fork the zygote if L{wanted}."""
    global _preforked
    if _preforked is None and wanted(argv):
        preload()
        # The node's own modules too: their pages are then shared with the
        # zygote (its servers never use them, they cost them nothing).
        for name in NODE_MODULES:
            importlib.import_module(name)

        _preforked = prefork()


def take():
    """The zygote forked in this process (once), or None."""
    global _preforked
    handle, _preforked = _preforked, None
    return handle


def discard(handle):
    """A zygote no one will use: close its socket (it ends) and reap it."""
    handle.sock.close()
    try:
        os.waitpid(handle.pid, 0)
    except ChildProcessError:
        pass


class Handle:
    """The node's side of a zygote: its pid and the socket to it."""

    def __init__(self, pid, sock):
        self.pid = pid
        self.sock = sock


def prefork():
    """
    Fork the zygote from this process (which must not have installed a
    reactor nor started threads). Returns a L{Handle} in the caller; never
    returns in the zygote.
    """
    if "twisted.internet.reactor" in sys.modules:
        raise RuntimeError("the zygote must be forked before a reactor is installed")
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    node = os.getpid()
    _flush_std()
    # What is imported now is shared by node, zygote and servers: keep the
    # collector and new objects from touching (so copying) those pages.
    sharing.prepare_fork()
    pid = os.fork()
    if pid:
        theirs.close()
        ours.set_inheritable(False)
        return Handle(pid, ours)
    code = 1
    try:
        ours.close()
        _die_with(node)
        _set_name(ZYGOTE_NAME)
        scrub_secrets()
        command_line = [sys.executable, "-m", "dispycos.node.zygote", "--parent", str(node)]
        set_command_line(command_line)
        code = Zygote(theirs, command_line).serve()
    except BaseException:
        try:
            import traceback

            traceback.print_exc()
        except BaseException:
            pass
    finally:
        os._exit(code)


def _flush_std():
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass


#: The names (Linux's comm, what ps and psutil's name() show) of the zygote and of forked servers.
ZYGOTE_NAME, SERVER_NAME = b"dispycos-zygote", b"dispycos-server"


def _set_name(name):
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(15, name, 0, 0, 0)  # PR_SET_NAME
    except Exception:
        pass


def _proc_areas():
    """(arg_start, arg_end, env_start, env_end) of this process (Linux's /proc/self/stat), or None."""
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
        fields = stat[stat.rindex(b")") + 2:].split()
        # Fields 48-51 of proc(5), counted from 1 with pid and comm: here from "state" (field 3).
        return tuple(int(x) for x in fields[48 - 3:52 - 3])
    except (OSError, ValueError, IndexError):
        return None


def _write_area(start, end, data):
    """Overwrite [start, end) of this process's memory with C{data}, NUL-padded (truncated to fit)."""
    import ctypes

    size = end - start
    if size <= 0:
        return
    data = data[:size - 1] + b"\0" * (size - min(len(data), size - 1))
    ctypes.memmove(start, data, size)


def _secret(name):
    return name.startswith("DISPYCOS_") and "SECRET" in name


def scrub_secrets():
    """
    Forget the node's C{DISPYCOS_*SECRET*} variables here (the zygote and every
    server forked from it): out of C{os.environ}, and blanked in the
    environment block the node was started with (what /proc/self/environ
    shows), since a fork keeps it. Servers never see the node's secret.
    """
    for name in [k for k in os.environ if _secret(k)]:
        del os.environ[name]
    areas = _proc_areas()
    if areas is None:
        return
    _, _, start, end = areas
    try:
        import ctypes

        block = ctypes.string_at(start, end - start)
        kept = [e for e in block.split(b"\0") if not _secret(e.split(b"=", 1)[0].decode("utf-8", "replace"))]
        if len(kept) != len(block.split(b"\0")):
            _write_area(start, end, b"\0".join(kept))
    except Exception:
        pass


def set_command_line(argv):
    """Make /proc/self/cmdline (ps, psutil) show C{argv}, within the room the original took (Linux)."""
    areas = _proc_areas()
    if areas is None:
        return
    start, end, _, _ = areas
    try:
        _write_area(start, end, b"\0".join(a.encode() for a in argv) + b"\0")
    except Exception:
        pass


def _die_with(parent):
    """SIGKILL for this process when its parent (thread) dies; end now if it already has."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except Exception:
        pass
    if os.getppid() != parent:
        os._exit(1)


class Zygote:
    """The zygote's loop: fork on request, report pids and exit statuses."""

    def __init__(self, sock, command_line=()):
        self.sock = sock
        self.children = set()
        self.command_line = list(command_line)

    def serve(self):
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C at a terminal is for the node
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        wake_r, wake_w = os.pipe()
        os.set_blocking(wake_w, False)
        os.set_blocking(wake_r, False)
        self._wake = (wake_r, wake_w)
        signal.set_wakeup_fd(wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        sharing.prepare_fork()  # as in prefork(), for the little made since
        while True:
            try:
                readable, _, _ = select.select([self.sock, wake_r], [], [])
            except InterruptedError:
                continue
            if wake_r in readable:
                try:
                    while os.read(wake_r, 512):
                        pass
                except BlockingIOError:
                    pass
            self._reap()
            if self.sock in readable:
                try:
                    data, fds, _, _ = socket.recv_fds(self.sock, MAX_MESSAGE, CHILD_FDS)
                except InterruptedError:
                    continue
                except OSError:
                    data, fds = b"", []
                if not data:
                    return 0  # the node closed us (or died): servers follow by PDEATHSIG
                self._start(data, fds)

    def _send(self, msg):
        try:
            self.sock.send(json.dumps(msg).encode())
        except OSError:
            os._exit(1)

    def _reap(self):
        while self.children:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.children.discard(pid)
            self._send({"exit": pid, "status": status})

    def _start(self, data, fds):
        token = None
        try:
            msg = json.loads(data)
            token = msg["start"]
            if len(fds) != CHILD_FDS:
                raise ValueError("a start request came with %d fds, not %d" % (len(fds), CHILD_FDS))
            args = list(msg["args"]) + ["--parent", str(os.getpid())]
            # The server's command line from its first instant (the node records it in its pid file
            # as soon as it hears the pid): set here, inherited, then the zygote's own back.
            set_command_line([sys.executable, "-m", "dispycos.server"] + args)
            pid = None
            try:
                pid = os.fork()
            finally:
                if pid != 0:
                    set_command_line(self.command_line)
        except Exception as e:
            for fd in fds:
                os.close(fd)
            self._send({"error": "%s: %s" % (type(e).__name__, e), "token": token})
            return
        if pid == 0:
            code = 1
            try:
                code = self._child(args, msg, fds)
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
            except BaseException:
                try:
                    import traceback

                    traceback.print_exc()
                    sys.stderr.flush()
                except BaseException:
                    pass
            finally:
                os._exit(code)
        for fd in fds:
            os.close(fd)
        self.children.add(pid)
        self._send({"pid": pid, "token": token})

    def _child(self, args, msg, fds):
        """In a fresh server: become it (its fds, signals, environment), then run its main."""
        zygote = os.getppid()
        _die_with(zygote)
        _set_name(SERVER_NAME)
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL if sig != signal.SIGPIPE else signal.SIG_IGN)
        self.sock.close()
        for fd in self._wake:
            os.close(fd)
        # The server's pipes become its 0..4 (dup2 leaves them inheritable, as spawnProcess does).
        moved = [os.dup(fd) for fd in fds]  # above 4, so no dup2 below overwrites one still needed
        for fd in fds:
            os.close(fd)
        for target, fd in enumerate(moved):
            os.dup2(fd, target)
            os.close(fd)
        os.closerange(CHILD_FDS, _max_fd())
        # As "python -u": unbuffered stdout and stderr on the new fds (the
        # zygote's stream objects stay referenced by sys.__stdout__ etc., so
        # they never close the fds they share numbers with).
        sys.stdin = io.TextIOWrapper(io.FileIO(0, "r", closefd=False))
        sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=True)
        sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), write_through=True,
                                      errors="backslashreplace")
        os.environ.clear()
        os.environ.update(msg.get("env", {}))
        sys.argv = ["dispycos.server"] + args
        from dispycos.server.process import main

        main(args)
        return 0


def _max_fd():
    try:
        return os.sysconf("SC_OPEN_MAX")
    except (AttributeError, ValueError, OSError):
        return 4096
