# -*- test-case-name: tests.test_local_user -*-
"""
Directories and files that another local user can neither plant nor
redirect.

A node, a shared scheduler and their servers keep their files under a
C{dest_path} (by default L{config.default_dest_path}, a directory of this
user's own in the system's temporary directory). L{private_dir} makes it
(mode 0700) or accepts an existing one only when it is a real directory,
owned by this user and writable by nobody else: inside it, no other user can
create, swap or link anything. Files the programs rewrite (pid file, ready
file, saved configuration) go through L{replace_file}: a fresh temporary
made with C{O_EXCL|O_NOFOLLOW} beside the target, renamed into place (a
rename replaces a link planted at the target, it never writes through it).
Directory trees are walked and wiped through directory descriptors opened
with C{O_NOFOLLOW} (L{open_dir}, L{wipe_dir}), so a link swapped in for a
directory is removed, never followed.
"""

import os
import shutil
import stat
import tempfile

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


class UnsafePathError(ValueError):
    """A directory that is not this user's alone (one line, for the user)."""


def private_dir(path, what="dest_path"):
    """
    Make C{path} a directory of mode 0700 if it does not exist (its parents
    as usual), then check it. Returns its absolute path.

    @param what: how the messages name it (C{"--dest_path"}, ...).
    @raise UnsafePathError: when C{path} is a symbolic link, not a
        directory, not owned by this user, or writable by group or others
        (any of which lets another local user change what lands in it).
    """
    path = os.path.abspath(path)
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        os.mkdir(path, 0o700)
    except FileExistsError:
        pass
    except OSError as e:
        raise UnsafePathError("%s %s cannot be created: %s" % (what, path, e.strerror or e))
    check_private(os.lstat(path), path, what)
    return path


def check_private(st, path, what="dest_path"):
    """Raise L{UnsafePathError} unless C{st} (an C{lstat}) is a directory of this user's alone."""
    refused = "%s %s refused: " % (what, path)
    if stat.S_ISLNK(st.st_mode):
        raise UnsafePathError(refused + "it is a symbolic link")
    if not stat.S_ISDIR(st.st_mode):
        raise UnsafePathError(refused + "it is not a directory")
    if st.st_uid != os.geteuid():
        raise UnsafePathError(refused + "it is owned by uid %d, not by this user (uid %d)" % (st.st_uid, os.geteuid()))
    if st.st_mode & 0o022:
        raise UnsafePathError(refused + "it is writable by group or others (mode %04o; chmod 700 it)"
                              % stat.S_IMODE(st.st_mode))


def replace_file(path, data, mode=0o644):
    """
    Put C{data} (str or bytes) in C{path} at once: written to a new
    temporary beside it (C{mkstemp}: C{O_EXCL|O_NOFOLLOW}, so nothing planted
    is followed or overwritten), given C{mode}, then renamed over C{path}
    (which replaces a link found there instead of following it). On any
    failure the temporary is removed and the error raised.
    """
    if isinstance(data, str):
        data = data.encode("utf-8")
    directory, name = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".%s.tmp-" % name)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), mode)
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise


def open_private_file(path):
    """
    A file object for reading C{path}, opened without following a link and
    only when it is a regular file of this user's (None otherwise, or when
    it does not exist).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
        os.close(fd)
        return None
    return os.fdopen(fd)


def open_dir(parent_fd, name, create=False, mode=0o777):
    """
    The descriptor of directory C{name} in the directory C{parent_fd}
    (a path when C{parent_fd} is None), opened with C{O_NOFOLLOW}: a link
    there raises C{OSError} (C{ELOOP}/C{ENOTDIR}) instead of being followed.
    With C{create}, a missing directory is made first. Returns
    C{(fd, created)}.
    """
    created = False
    if create:
        try:
            os.mkdir(name, mode, dir_fd=parent_fd)
            created = True
        except FileExistsError:
            pass
    return os.open(name, _DIR_FLAGS, dir_fd=parent_fd), created


def wipe_dir(fd):
    """
    Remove everything in the directory C{fd}, never following a link: links
    are removed themselves, sub-directories by C{shutil.rmtree} relative to
    C{fd} (which does not follow links either). Errors are ignored.
    """
    for entry in os.listdir(fd):
        try:
            st = os.stat(entry, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(entry, dir_fd=fd, ignore_errors=True)
            else:
                os.unlink(entry, dir_fd=fd)
        except OSError:
            pass


def fresh_dir(parent, name):
    """
    C{parent}/C{name} as a new, empty directory of this user's (0700):
    whatever was there (a directory from before, a file, a link) is removed
    first, a link itself and never what it points to. Returns its path.
    """
    parent_fd = os.open(parent, _DIR_FLAGS)
    try:
        remove_entry(parent_fd, name)
        os.mkdir(name, 0o700, dir_fd=parent_fd)
    finally:
        os.close(parent_fd)
    return os.path.join(parent, name)


def remove_entry(parent_fd, name):
    """Remove C{name} in directory C{parent_fd}: a tree, a file or a link (not followed); absent is fine."""
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(name, dir_fd=parent_fd, ignore_errors=True)
    else:
        os.unlink(name, dir_fd=parent_fd)


def remove_tree(path):
    """Remove C{path} (a tree, a file or a link, never followed); errors are ignored."""
    parent, name = os.path.split(os.path.abspath(path))
    try:
        parent_fd = os.open(parent, _DIR_FLAGS & ~os.O_NOFOLLOW)
    except OSError:
        return
    try:
        remove_entry(parent_fd, name)
    except OSError:
        pass
    finally:
        os.close(parent_fd)


def wipe_tree(path):
    """
    Empty the directory C{path} without following links; when C{path} itself
    has become a link or something else, remove that and make the directory
    again (0700).
    """
    parent, name = os.path.split(os.path.abspath(path))
    try:
        fd, _ = open_dir(None, path)
    except OSError:
        fresh_dir(parent, name)
        return
    try:
        wipe_dir(fd)
    finally:
        os.close(fd)


def read_secret_file(path):
    """The secret kept in file C{path} (its first line); C{ValueError} when it cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError("cannot read the secret file %s: %s" % (path, getattr(e, "strerror", None) or e))


def exposed_secret_file(path):
    """Why the secret file C{path} is readable by others (a warning's text), or None when it is not."""
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        return None
    if mode & 0o077:
        return "the secret file %s can be read by group or others (mode %04o): chmod 600 it" % (path, mode)
    return None


# -- the secret of a user who gave none ------------------------------------------------


def user_secret_path():
    """
    Where a node or scheduler started without a secret keeps the one it made:
    C{$XDG_RUNTIME_DIR/dispycos/secret}, else C{~/.dispycos/secret}.
    """
    base = os.environ.get("XDG_RUNTIME_DIR")
    if base and os.path.isdir(base):
        return os.path.join(base, "dispycos", "secret")
    return os.path.join(os.path.expanduser("~"), ".dispycos", "secret")


def user_secret():
    """
    This user's secret: read from L{user_secret_path}, or made (random, a
    0600 file in a 0700 directory) when there is none yet. Programs of this
    user find it; other local users cannot read it, so without a secret
    given a cluster is this user's only.
    """
    import secrets

    path = user_secret_path()
    directory = os.path.dirname(path)
    private_dir(directory, "the directory of the user's secret")
    if not os.path.lexists(path):
        # Written whole under a name of its own, then linked into place: a
        # program starting at the same moment reads either no file or all of it.
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".secret.tmp-")  # 0600, O_EXCL
        try:
            with os.fdopen(fd, "w") as f:
                f.write(secrets.token_hex(32) + "\n")
            try:
                os.link(tmp, path)
            except FileExistsError:
                pass
        finally:
            os.unlink(tmp)
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        if st.st_uid != os.geteuid() or stat.S_IMODE(st.st_mode) & 0o077:
            raise UnsafePathError("%s: the user's secret must be this user's file, mode 0600" % (path,))
        secret = os.read(fd, 4096).decode("utf-8", "replace").splitlines()
    finally:
        os.close(fd)
    if not secret or not secret[0]:
        raise UnsafePathError("%s is empty: remove it, a new secret is made" % (path,))
    return secret[0]


def resolve_secret(secret=None, secret_file=None):
    """The secret to use: given, in C{secret_file}, in C{$DISPYCOS_SECRET}, or else the user's own."""
    if secret:
        return secret
    if secret_file:
        return read_secret_file(secret_file)
    return os.environ.get("DISPYCOS_SECRET") or user_secret()
