"""
A second local user, and hostile file names, against real node processes
(SPEC 6.4 "Files", and the secret's parts of "The secret"): each attack of
issue 12 items 3 and 6 carried out, and the legitimate use beside it.

The attacker runs as user nobody (C{setpriv}, see L{conftest.run_as_nobody})
in a directory like /tmp that the test makes (L{conftest.shared_tmp}):
nobody cannot reach pytest's own tmp_path. Nodes are started with
C{python -m dispycos.scripts} and stopped by their PID.
"""

import json
import os
import stat
import subprocess
import sys
import time

import psutil
import pytest
import pytest_twisted

from dispycos import paths
from dispycos.node import configfile
from dispycos.protocol import receiving, streams
from dispycos.errors import FileTransferError
from dispycos.node.pidfile import PID_FILE_NAME, check_pid_file

from .conftest import NOBODY, NodeProcess, Session, env_for_children, run_as_nobody, stop_node_process


def cwd():
    """Runs on a server: where it runs."""
    return os.getcwd()


def wait_until(predicate, timeout=30):
    """Poll C{predicate} (a file system state another process brings about), at most C{timeout} s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met within %s s" % timeout
        time.sleep(0.05)


def node_argv(*args):
    return [sys.executable, "-m", "dispycos.scripts", "-c", "1", "-i", "127.0.0.1", "--tcp_ports", "0",
            "--daemon"] + list(args)


def refused_start(argv, env=None, timeout=60):
    """A program that must not start: its exit code and its stderr lines."""
    child_env = env_for_children()
    child_env.update(env or {})
    child_env.setdefault("DISPYCOS_SECRET", "s")
    out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=child_env, cwd="/")
    return out.returncode, out.stderr.strip().splitlines()


def make_victim(directory, name="victim"):
    """A directory only root may enter (0700), with a file in it: what an attack would destroy."""
    victim = os.path.join(str(directory), name)
    os.mkdir(victim, 0o700)
    with open(os.path.join(victim, "precious.txt"), "w") as f:
        f.write("precious")
    return victim


def intact(victim):
    return os.listdir(victim) == ["precious.txt"] and open(os.path.join(victim, "precious.txt")).read() == "precious"


# -- the default dest_path: private, and a squatted or linked one is refused ---------------------


def test_squatted_linked_or_open_dest_path_is_refused(shared_tmp, tmp_path):
    default = os.path.join(shared_tmp, "dispycos-%d" % os.geteuid())
    env = {"TMPDIR": shared_tmp}
    # Another user made the default directory first (world-writable, to swap things in it later).
    r = run_as_nobody("import os, sys; os.mkdir(sys.argv[1]); os.chmod(sys.argv[1], 0o777)", default)
    assert r.returncode == 0, r.stderr
    code, err = refused_start(node_argv(), env)
    assert code == 2 and len(err) == 1, err
    assert err[0] == ("dispycosnode: --dest_path %s refused: it is owned by uid %d, not by this user (uid %d)"
                      % (default, NOBODY, os.geteuid())), err
    assert os.listdir(default) == []  # nothing of the node's went there
    # The shared scheduler refuses it the same way.
    code, err = refused_start([sys.executable, "-c", "from dispycos.scripts import scheduler_main; scheduler_main()",
                               "-i", "127.0.0.1", "-t", "0", "-u", "0", "--daemon"], env)
    assert code == 2 and len(err) == 1 and "owned by uid %d" % NOBODY in err[0], err

    # ... or made it a link to a directory of ours it wants emptied.
    victim = make_victim(tmp_path)
    r = run_as_nobody("import os, sys; os.rmdir(sys.argv[1]); os.symlink(sys.argv[2], sys.argv[1])", default, victim)
    assert r.returncode == 0, r.stderr
    code, err = refused_start(node_argv(), env)
    assert code == 2 and err == ["dispycosnode: --dest_path %s refused: it is a symbolic link" % default], err
    assert intact(victim)

    # A --dest_path of ours that others may write in is refused too.
    open_dir = tmp_path / "open"
    open_dir.mkdir()
    open_dir.chmod(0o777)
    code, err = refused_start(node_argv("--dest_path", str(open_dir)), env)
    assert code == 2 and len(err) == 1 and "writable by group or others (mode 0777" in err[0], err


@pytest_twisted.ensureDeferred
async def test_private_default_dest_path_keeps_another_user_out(shared_tmp, tmp_path):
    node = NodeProcess(cpus=1, dest_path=False, env={"TMPDIR": shared_tmp})
    try:
        dest = os.path.dirname(node.node_dir)
        assert dest == os.path.join(shared_tmp, "dispycos-%d" % os.geteuid())
        st = os.lstat(dest)
        assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.geteuid()
        assert os.path.isfile(os.path.join(dest, PID_FILE_NAME))
        # What the attacker did: swap the node directory for a link,
        # plant a link at the pid file's temporary. Every step is refused.
        victim = make_victim(tmp_path)
        r = run_as_nobody("""
import json, os, sys
dest, node_dir, victim = sys.argv[1:]
steps = {
    "list": lambda: os.listdir(dest),
    "swap node dir": lambda: os.rename(node_dir, node_dir + ".old"),
    "link in node dir": lambda: os.symlink(victim, os.path.join(node_dir, "x")),
    "plant pid temporary": lambda: os.symlink(victim, os.path.join(dest, "dispycosnode.pid.tmp-1")),
    "replace dest": lambda: os.rename(dest, dest + ".old"),
}
out = {}
for name, step in steps.items():
    try:
        step()
        out[name] = "done"
    except OSError as e:
        out[name] = type(e).__name__
print(json.dumps(out))
""", dest, node.node_dir, victim)
        assert r.returncode == 0, r.stderr
        assert set(json.loads(r.stdout).values()) == {"PermissionError"}, r.stdout
        async with Session(node, [cwd]) as comp:  # legitimate use
            assert (await comp.run_result(cwd)).startswith(node.node_dir + os.sep)
        assert intact(victim)
    finally:
        node.stop()
    assert not os.path.exists(node.node_dir)


# -- release and stop never delete outside the node directory -------------------------------------


def plant_link(victim, task=None):
    """Runs on a server: a link in the node directory to C{victim}."""
    node_dir = os.path.dirname(os.getcwd())
    os.symlink(victim, os.path.join(node_dir, "sub"))
    yield task.sleep(0)
    return node_dir


def swap_node_dir(victim, task=None):
    """Runs on a server: the node directory itself becomes a link to C{victim}."""
    node_dir = os.path.dirname(os.getcwd())
    os.rename(node_dir, "%s.moved-%d" % (node_dir, os.getpid()))
    os.symlink(victim, node_dir)
    yield task.sleep(0)
    return node_dir


@pytest_twisted.ensureDeferred
async def test_release_never_deletes_outside_the_node_directory(fresh_node, tmp_path):
    node = fresh_node(cpus=1)
    sub_victim, dir_victim, stop_victim = (make_victim(tmp_path, n) for n in ("sub", "dir", "stop"))
    sub = os.path.join(node.node_dir, "sub")
    async with Session(node, [plant_link]) as comp:
        assert await comp.run_result(plant_link, sub_victim) == node.node_dir
        assert os.path.islink(sub)
    wait_until(lambda: not os.path.lexists(sub))  # released: the node directory was wiped
    assert intact(sub_victim)
    async with Session(node, [swap_node_dir]) as comp:
        assert await comp.run_result(swap_node_dir, dir_victim) == node.node_dir
        assert os.path.islink(node.node_dir)
    wait_until(lambda: not os.path.islink(node.node_dir))  # released: the link was removed, not followed
    assert intact(dir_victim)
    st = os.lstat(node.node_dir)  # a real directory again, of this user's alone
    assert stat.S_ISDIR(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o700 and st.st_uid == os.geteuid()
    async with Session(node, [swap_node_dir]) as comp:  # it still serves; once more, then it stops
        assert await comp.run_result(swap_node_dir, stop_victim) == node.node_dir
    node.stop()
    assert intact(sub_victim) and intact(dir_victim) and intact(stop_victim)


# -- names: too long, too deep ------------------------------------------------------------------


def listing(root):
    """Every path under C{root}, relative."""
    out = []
    for where, dirs, files in os.walk(root):
        out += [os.path.relpath(os.path.join(where, n), root) for n in dirs + files]
    return sorted(out)


@pytest_twisted.ensureDeferred
async def test_long_names_and_deep_paths_refused_up_front(node, tmp_path):
    small = tmp_path / "f.txt"
    small.write_bytes(b"data")
    mark = len(node.output())
    async with Session(node, [cwd]) as comp:
        server = (await comp.servers())[0]
        server_dir = await comp.run_result_at(server, cwd)
        before = listing(server_dir)
        proto = await comp.runtime.connection(server)
        send = lambda **kw: streams.send_file(proto, str(small), "server", computation=comp.id, **kw)
        refusals = {
            "name of 300 bytes": (dict(name="é" * 150), "300 bytes long, over the limit of 255"),
            "directory name of 256 bytes": (dict(subdir="d" * 256), "256 bytes long, over the limit of 255"),
            "1,200 levels": (dict(subdir="/".join(["d"] * 1200)), "1200 levels deep, over the limit of 32"),
            "33 levels": (dict(subdir="/".join(["d"] * 33)), "33 levels deep, over the limit of 32"),
        }
        for what, (kw, message) in refusals.items():
            with pytest.raises(FileTransferError) as info:
                await send(**kw)
            assert message in str(info.value) and len(str(info.value)) < 300, (what, info.value)
        assert listing(server_dir) == before  # no partial file, no directory made
        # the limits themselves are fine
        deep = "/".join(["d"] * 32)
        landed = await send(name="n" * 255, subdir=deep)
        assert landed == os.path.join(server_dir, deep, "n" * 255) and open(landed, "rb").read() == b"data"
        assert await comp.send_file(server, str(small), dir="a/../b") == os.path.join(server_dir, "b", "f.txt")
    log = node.output()[mark:]
    assert "Traceback" not in log and "RecursionError" not in log, log[-3000:]


# -- links planted where files are written --------------------------------------------------------


def plant_partial_links(victim, count, task=None):
    """Runs on a server: links to C{victim} at the names partial files used to have."""
    pid = os.getpid()
    for sid in range(1, count + 1):
        os.symlink(victim, ".dispycos-partial-%d-%d" % (pid, sid))
    yield task.sleep(0)
    return os.getcwd()


@pytest_twisted.ensureDeferred
async def test_links_planted_at_partial_file_names_are_never_followed(fresh_node, tmp_path):
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    src = tmp_path / "f.txt"
    src.write_bytes(b"new data")
    node = fresh_node(cpus=1)
    async with Session(node, [plant_partial_links]) as comp:
        server = (await comp.servers())[0]
        server_dir = await comp.run_result_at(server, plant_partial_links, str(victim), 300)
        landed = await comp.send_file(server, str(src))
        assert open(landed, "rb").read() == b"new data"
        assert victim.read_text() == "precious"
        links = [n for n in os.listdir(server_dir) if n.startswith(".dispycos-partial")]
        assert len(links) == 300 and all(os.readlink(os.path.join(server_dir, n)) == str(victim) for n in links)


def test_a_link_at_the_very_partial_name_is_refused_and_left_alone(tmp_path, monkeypatch):
    root = tmp_path / "root"
    root.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    monkeypatch.setattr(receiving, "_ids", iter([7, 8]))
    monkeypatch.setattr(receiving.secrets, "token_hex", lambda n: "feedbeef")
    planted = root / (".dispycos-partial-%d-7-feedbeef" % os.getpid())
    planted.symlink_to(victim)
    receiver = receiving.StreamReceiver(lambda dest, computation: str(root))
    with pytest.raises(FileTransferError, match="cannot write"):
        receiver.start("file", "f.txt", "", "server", 4, b"\0" * 32, False, "c")
    assert victim.read_text() == "precious" and os.readlink(planted) == str(victim)
    assert os.listdir(root) == [planted.name]
    # a failure once the partial file exists leaves nothing either: not it, nor the directories made for it
    def failing_fdopen(fd, *args):
        os.close(fd)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(receiving.os, "fdopen", failing_fdopen)
    with pytest.raises(FileTransferError, match="No space left"):
        receiver.start("file", "f.txt", "new/dir", "server", 4, b"\0" * 32, False, "c")
    assert os.listdir(root) == [planted.name] and receiver.open == {}


def test_planted_links_at_ready_file_and_its_temporary(shared_tmp, tmp_path):
    """
    The ready file in a directory another user owns: the links planted at
    it and at its old temporary name (C{ready.tmp}) are replaced or left,
    never written through.
    """
    victim = tmp_path / "victim"
    victim.write_text("precious")
    victim.chmod(0o600)
    absent = tmp_path / "absent"  # a dangling link at the ready file: written through, it would appear
    theirs = os.path.join(shared_tmp, "theirs")
    ready = os.path.join(theirs, "ready")
    r = run_as_nobody("import os, sys; os.mkdir(sys.argv[1]); os.symlink(sys.argv[2], sys.argv[1] + '/ready.tmp');"
                      "os.symlink(sys.argv[3], sys.argv[1] + '/ready')", theirs, victim, absent)
    assert r.returncode == 0, r.stderr
    node = NodeProcess(cpus=1, ready_file=ready)
    try:
        assert victim.read_text() == "precious" and not absent.exists()
        assert not os.path.islink(ready) and open(ready).read().strip() == node.location
        assert os.readlink(ready + ".tmp") == str(victim)
        assert sorted(os.listdir(theirs)) == ["ready", "ready.tmp"]  # no temporary left
    finally:
        node.stop()


def test_replace_file_and_saved_config_never_write_through_links(tmp_path):
    victim = tmp_path / "victim"
    victim.write_text("precious")
    target = tmp_path / "dispycosnode.pid"
    target.symlink_to(victim)
    old_temporary = tmp_path / ("dispycosnode.pid.tmp-%d" % os.getpid())
    old_temporary.symlink_to(victim)
    paths.replace_file(str(target), "{}")
    assert not target.is_symlink() and target.read_text() == "{}" and victim.read_text() == "precious"
    conf = tmp_path / "node.conf"
    conf.symlink_to(victim)
    configfile.save(str(conf), {"name": "n"})
    assert not conf.is_symlink() and stat.S_IMODE(conf.stat().st_mode) == 0o600
    assert victim.read_text() == "precious" and os.readlink(old_temporary) == str(victim)
    assert sorted(os.listdir(tmp_path)) == sorted(["victim", target.name, old_temporary.name, "node.conf"])
    # a failure leaves nothing behind
    with pytest.raises(OSError):
        paths.replace_file(str(tmp_path / "victim" / "under-a-file"), "x")
    assert sorted(os.listdir(tmp_path)) == sorted(["victim", target.name, old_temporary.name, "node.conf"])


# -- --clean kills only what its own pid file recorded -----------------------------------------------


def waiting_process(*marker, as_nobody=False):
    """A live process (waits on its stdin) whose command line mentions C{marker}."""
    cmd = [sys.executable, "-c", "import sys; sys.stdin.read()"] + list(marker)
    if as_nobody:
        cmd = ["setpriv", "--reuid=%d" % NOBODY, "--regid=%d" % NOBODY, "--clear-groups"] + cmd
    return subprocess.Popen(cmd, stdin=subprocess.PIPE, cwd="/", env={"PATH": "/usr/bin:/bin"})


def record_of(proc, **changes):
    p = psutil.Process(proc.pid)
    entry = {"pid": proc.pid, "create_time": p.create_time(), "uid": p.uids().real, "cmdline": p.cmdline()}
    entry.update(changes)
    return {k: v for k, v in entry.items() if v is not None}


def test_clean_kills_only_what_its_own_pid_file_recorded(tmp_path, shared_tmp):
    if os.geteuid() != 0:
        pytest.skip("needs root to start a process of another user")
    dest = tmp_path / "dest"
    dest.mkdir(mode=0o700)
    pid_file = str(dest / PID_FILE_NAME)
    theirs = waiting_process("dispycos.server", as_nobody=True)  # another user's
    mine = waiting_process("dispycos.server")  # this user's, "dispycos" in its command line
    procs = [theirs, mine]
    try:
        # (setpriv execs the waiting process: until then its command line is setpriv's)
        wait_until(lambda: psutil.Process(theirs.pid).cmdline()[:1] == [sys.executable], timeout=10)
        forged = [
            ("another user's process, recorded truthfully", record_of(theirs)),
            ("another user's process, recorded as ours", record_of(theirs, uid=os.getuid())),
            ("an old record: pid and creation time only", record_of(mine, uid=None, cmdline=None)),
            ("another command line", record_of(mine, cmdline=[sys.executable, "-m", "dispycos.scripts"])),
            ("another start time", record_of(mine, create_time=psutil.Process(mine.pid).create_time() - 5)),
        ]
        for what, entry in forged:
            with open(pid_file, "w") as f:
                json.dump(dict(entry, servers=[]), f)
            check_pid_file(pid_file, clean=True)  # nothing recorded is alive: a stale file
            assert not os.path.exists(pid_file), what
            assert theirs.poll() is None and mine.poll() is None, what
        # a perfect record, but in a file that is a link (to a file another user wrote): not read
        planted = os.path.join(shared_tmp, "forged.pid")
        with open(planted, "w") as f:
            json.dump(dict(record_of(mine), servers=[]), f)
        os.chown(planted, NOBODY, NOBODY)
        os.symlink(planted, pid_file)
        check_pid_file(pid_file, clean=True)
        assert mine.poll() is None and not os.path.lexists(pid_file)
        # the real node, started with --clean over a forged file, kills nothing of them either
        with open(pid_file, "w") as f:
            json.dump(dict(record_of(mine, cmdline=None), servers=[record_of(theirs)]), f)
        log = open(tmp_path / "node.log", "wb")
        node = subprocess.Popen(node_argv("--dest_path", str(dest), "--clean", "--ready_file", str(dest / "ready")),
                                stdout=log, stderr=subprocess.STDOUT, env=env_for_children(), start_new_session=True)
        try:
            wait_until(lambda: os.path.exists(dest / "ready") or node.poll() is not None)
            assert os.path.exists(dest / "ready"), (tmp_path / "node.log").read_text()
            assert theirs.poll() is None and mine.poll() is None
            record = json.load(open(pid_file))  # what the node itself records
            entries = [record] + record["servers"]
            assert record["pid"] == node.pid and len(entries) == 2
            for entry in entries:
                assert entry["uid"] == os.getuid() and entry["cmdline"] == psutil.Process(entry["pid"]).cmdline()
        finally:
            stop_node_process(node, log, str(dest))
        assert "killing leftover" not in (tmp_path / "node.log").read_text()
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait(10)


# -- the secret: never seen by servers; --secret_file; a warning for -s ---------------------------------


def what_a_task_sees(task=None):
    """Runs on a server: its environment, its command line and its process's initial environment."""
    yield task.sleep(0)
    with open("/proc/self/cmdline", "rb") as f:
        cmdline = f.read()
    with open("/proc/self/environ", "rb") as f:
        environ = f.read()
    return repr(dict(os.environ)), cmdline, environ


@pytest_twisted.ensureDeferred
async def test_servers_and_tasks_never_see_the_secret(fresh_node):
    node = fresh_node(cpus=1, secret="the-node-secret-%d" % os.getpid())
    assert node.secret.encode() in open("/proc/%d/environ" % node.proc.pid, "rb").read()  # the node has it
    async with Session(node, [what_a_task_sees]) as comp:
        seen_environ, cmdline, initial = await comp.run_result(what_a_task_sees)
    assert b"dispycos.server" in cmdline
    for seen in (seen_environ.encode(), cmdline, initial):
        assert node.secret.encode() not in seen and b"DISPYCOS_SECRET" not in seen


def save_config(*argv, env=None):
    child_env = env_for_children()
    child_env.pop("DISPYCOS_SECRET", None)
    return subprocess.run([sys.executable, "-m", "dispycos.scripts"] + list(argv), capture_output=True, text=True,
                          timeout=60, env=child_env, cwd="/")


def test_secret_file_and_the_warning_for_s(tmp_path):
    from dispycos.node.tap import Options as NodeOptions
    from dispycos.scheduler.tap import Options as SchedulerOptions

    secret_file = tmp_path / "secret"
    secret_file.write_text("from-the-file\nsecond line ignored\n")
    secret_file.chmod(0o600)
    for options in (NodeOptions(), SchedulerOptions()):
        options.parseOptions(["--secret_file", str(secret_file)])
        assert options["secret"] == "from-the-file"
    # -s: a warning that every local user can read it
    out = save_config("-s", "topsecret", "--save_config", str(tmp_path / "a.conf"))
    assert out.returncode == 0 and "/proc/*/cmdline" in out.stderr and "--secret_file" in out.stderr, out.stderr
    # --secret_file: no warning while the file is private; the path is saved, not the secret
    out = save_config("--secret_file", str(secret_file), "--save_config", str(tmp_path / "b.conf"))
    assert out.returncode == 0 and out.stderr == "", out.stderr
    saved = json.load(open(tmp_path / "b.conf"))["options"]
    assert saved["secret_file"] == str(secret_file) and saved["secret"] is None
    assert "from-the-file" not in (tmp_path / "b.conf").read_text()
    loaded = NodeOptions()
    loaded.parseOptions(["--config", str(tmp_path / "b.conf")])
    assert loaded["secret"] == "from-the-file"
    out = save_config("--config", str(tmp_path / "b.conf"), "--save_config", str(tmp_path / "c.conf"))
    assert out.returncode == 0 and json.load(open(tmp_path / "c.conf")) == json.load(open(tmp_path / "b.conf"))
    # a file others can read: a warning
    secret_file.chmod(0o644)
    out = save_config("--secret_file", str(secret_file), "--save_config", str(tmp_path / "d.conf"))
    assert out.returncode == 0 and "can be read by group or others (mode 0644)" in out.stderr, out.stderr
    # both, or a missing file: one line, exit 2
    for argv, message in ((["-s", "x", "--secret_file", str(secret_file)], "not both"),
                          (["--secret_file", str(tmp_path / "missing")], "cannot read the secret file")):
        out = save_config(*argv)
        lines = out.stderr.strip().splitlines()
        assert out.returncode == 2 and message in lines[-1], out.stderr
        assert [line for line in lines if not line.startswith("WARNING")] == [lines[-1]], out.stderr


@pytest_twisted.ensureDeferred
async def test_a_node_with_a_secret_file_serves(fresh_node, tmp_path):
    secret_file = tmp_path / "secret"
    secret_file.write_text("file-secret-%d\n" % os.getpid())
    secret_file.chmod(0o600)
    node = fresh_node(cpus=1, secret="not-this-one", args=["--secret_file", str(secret_file)])
    node.secret = secret_file.read_text().strip()  # the file wins over $DISPYCOS_SECRET
    async with Session(node, [what_a_task_sees]) as comp:
        seen_environ, cmdline, initial = await comp.run_result(what_a_task_sees)
    assert node.secret.encode() not in seen_environ.encode() + cmdline + initial
    assert "group or others" not in node.output() and "/proc/*/cmdline" not in node.output()


# -- make_certificates: keys 0600 from the start ----------------------------------------------------------


def test_make_certificates_creates_keys_0600_and_follows_no_link(tmp_path, monkeypatch):
    from dispycos.protocol.tls import make_certificates

    monkeypatch.setattr(os, "chmod", lambda *a, **k: pytest.fail("chmod after writing"))
    old = os.umask(0o022)
    try:
        made = make_certificates(str(tmp_path / "pki"))
    finally:
        os.umask(old)
    modes = {name: stat.S_IMODE(os.stat(path).st_mode) for name, path in made.items()}
    assert modes == {"ca.pem": 0o644, "ca.key": 0o600, "dispycos.pem": 0o644, "dispycos.key": 0o600}
    # a link planted where a key goes: refused, nothing written through it
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "dispycos.key").symlink_to(victim)
    with pytest.raises(FileExistsError, match="dispycos.key"):
        make_certificates(str(tmp_path / "other"))
    assert victim.read_text() == "precious" and os.listdir(tmp_path / "other") == ["dispycos.key"]
