# -*- test-case-name: tests.test_streams -*-
"""
The receiving end of streams (L{dispycos.protocol.streams}): names checked
up front (L{check_name}, L{split_dir}, L{safe_join}), a file written to a
partial file created with C{O_EXCL|O_NOFOLLOW} in a directory reached
without following links, checked (size, SHA-256) and renamed into place at
close; a blob gathered in memory as the pieces it arrived in.
"""

import collections
import hashlib
import itertools
import os
import secrets
import stat

from twisted.logger import Logger

from dispycos import config, paths
from dispycos.blobs import BufferAssembler
from dispycos.errors import FileTransferError


_ids = itertools.count(1)


def _shown(text, limit=60):
    """C{text} for a message: its repr, cut after C{limit} characters."""
    return repr(text) if len(text) <= limit else repr(text[:limit]) + "..."


def check_name(name, what="file name"):
    """
    C{name} when it is a single file or directory name (no C{/}, not C{.}
    or C{..}, at most L{config.MaxNameBytes} bytes).

    @raise FileTransferError: otherwise.
    """
    if not name or "/" in name or "\x00" in name or name in (".", ".."):
        raise FileTransferError("refused %s %s" % (what, _shown(name)))
    size = len(name.encode("utf-8", "surrogateescape"))
    if size > config.MaxNameBytes:
        raise FileTransferError("refused %s %s: %d bytes long, over the limit of %d"
                                % (what, _shown(name), size, config.MaxNameBytes))
    return name


def split_dir(subdir):
    """
    The names of the relative directory C{subdir} (C{a/b/../c}: C{["a", "c"]}),
    refusing up front an absolute or escaping one, a name over
    L{config.MaxNameBytes} bytes and more than L{config.MaxPathDepth} levels.

    @raise FileTransferError: for such directories.
    """
    if not subdir:
        return []
    if os.path.isabs(subdir) or "\x00" in subdir:
        raise FileTransferError("refused directory %s: it must be relative" % _shown(subdir))
    parts = [p for p in os.path.normpath(subdir).split("/") if p != "."]
    if parts and parts[0] == "..":
        raise FileTransferError("refused directory %s: outside the destination" % _shown(subdir))
    if len(parts) > config.MaxPathDepth:
        raise FileTransferError("refused directory %s: %d levels deep, over the limit of %d"
                                % (_shown(subdir), len(parts), config.MaxPathDepth))
    for part in parts:
        check_name(part, "directory name")
    return parts


def safe_join(root, name):
    """
    C{root}/C{name}, refusing names that are absolute or escape C{root}
    (by C{..} or by links), and names too long or too deep (L{split_dir}).

    @raise FileTransferError: for such names.
    """
    if not name or os.path.isabs(name) or "\x00" in name:
        raise FileTransferError("refused file name %s" % _shown(name or ""))
    directory, base = os.path.split(os.path.normpath(name))
    parts = split_dir(directory) + [check_name(base)]
    path = os.path.realpath(os.path.join(root, *parts))
    if not path.startswith(os.path.realpath(root) + os.sep):
        raise FileTransferError("refused file name %s: outside the destination" % _shown(name))
    return path


def _open_parts(root, parts, created=None):
    """
    A descriptor of C{root}/C{parts}, walked one directory at a time with
    C{O_NOFOLLOW}: a link on the way (planted or swapped in) raises
    C{NotADirectoryError}, it is never followed. With C{created} (a list),
    missing directories are made and noted there (as parts).
    """
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for i, part in enumerate(parts):
            sub, made = paths.open_dir(fd, part, create=created is not None)
            os.close(fd)
            fd = sub
            if made:
                created.append(parts[: i + 1])
    except BaseException:
        os.close(fd)
        raise
    return fd


class _Incoming:
    """
    A file being received: C{.dispycos-partial-<pid>-<sid>-<random>} in its
    directory, created with C{O_EXCL|O_NOFOLLOW} there (a descriptor of
    the directory, reached without following links), renamed over the
    target once complete. Discarded, it leaves nothing: neither the partial
    file nor the directories made for it.
    """

    def __init__(self, sid, root, parts, name, size, digest, overwrite):
        self.id = sid
        self.root = root
        self.parts = parts
        self.name = name
        self.target = os.path.join(os.path.realpath(root), *parts, name)
        self.size = size
        self.digest = digest
        self.overwrite = overwrite
        self.received = 0
        self.sha = hashlib.sha256()
        self.created = []
        self.file = None
        self.made = False  # the partial file is ours (only then is it removed)
        # Unpredictable too: a name planted ahead cannot even make the transfer fail.
        self.partial = ".dispycos-partial-%d-%d-%s" % (os.getpid(), sid, secrets.token_hex(4))
        self.dir_fd = _open_parts(root, parts, self.created)
        try:
            self.check_target()
            fd = os.open(self.partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666,
                         dir_fd=self.dir_fd)
            self.made = True
            self.file = os.fdopen(fd, "wb")
        except BaseException:
            self.discard()
            raise

    def check_target(self):
        """Refuse (L{FileTransferError}) a link at the target, or an existing file without overwrite."""
        try:
            st = os.stat(self.name, dir_fd=self.dir_fd, follow_symlinks=False)
        except FileNotFoundError:
            return
        if stat.S_ISLNK(st.st_mode):
            raise FileTransferError("refused %s: a link" % _shown(self.name))
        if not self.overwrite:
            raise FileTransferError("%s exists (give overwrite=True to replace it)" % (self.target,))

    def land(self):
        """Close the partial file and rename it over the target (a link there is replaced, not followed)."""
        try:
            self.file.close()
            if self.received != self.size or self.sha.digest() != self.digest:
                raise FileTransferError("stream %d: %d of %d bytes, or digest mismatch"
                                        % (self.id, self.received, self.size))
            self.check_target()
            os.replace(self.partial, self.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
        except OSError as e:
            self.discard()
            raise FileTransferError("cannot write %s: %s" % (self.target, e.strerror or e))
        except BaseException:
            self.discard()
            raise
        self._close_dir()
        return self.target

    def discard(self):
        """Remove the partial file and the directories made for it (when empty)."""
        if self.file is not None:
            try:
                self.file.close()
            except OSError:
                pass
        if self.dir_fd is not None:
            if self.made:
                try:
                    os.unlink(self.partial, dir_fd=self.dir_fd)
                except OSError:
                    pass
            self._close_dir()
        for parts in reversed(self.created):
            try:
                fd = _open_parts(self.root, parts[:-1])
            except OSError:
                continue
            try:
                os.rmdir(parts[-1], dir_fd=fd)
            except OSError:
                pass
            finally:
                os.close(fd)
        self.created = []

    def _close_dir(self):
        if self.dir_fd is not None:
            os.close(self.dir_fd)
            self.dir_fd = None


class _IncomingBlob:
    """
    A blob being received. Its out-of-band buffers (a large C{bytes} value,
    an array's data) are filled as they arrive (L{BufferAssembler}: only
    copied, never unpickled here); the pickle is kept as the pieces it
    arrived in. Once complete it is a file to read from once, which
    L{dispycos.serialize.loads} takes: C{pickle.load} reads what is still
    in the pickle straight from the pieces into place, so the blob is
    never joined into one copy first. Pieces are let go as they are read.
    """

    def __init__(self, sid, size):
        self.id = sid
        self.size = size
        self.received = 0
        self.assembled = BufferAssembler(size)
        self.pieces = collections.deque()
        self._at = 0  # read offset into pieces[0]
        self._left = 0  # bytes not read yet

    def write(self, pieces):
        for piece in pieces:
            if piece:
                self.received += len(piece)
                piece = self.assembled.feed(piece)
                if piece:
                    self.pieces.append(piece)
                    self._left += len(piece)

    def discard(self):
        self.pieces.clear()
        self._left = 0

    @property
    def remaining(self):
        """Bytes not read yet."""
        return self._left

    def peek(self, n):
        """Up to the next C{n} bytes, not consumed (as C{io.BufferedReader.peek})."""
        out = []
        at = self._at
        for piece in self.pieces:
            out.append(bytes(memoryview(piece)[at : at + n]))
            n -= len(out[-1])
            at = 0
            if n <= 0:
                break
        return b"".join(out)

    def readinto(self, buffer):
        out = memoryview(buffer).cast("B")
        n = 0
        while n < len(out) and self.pieces:
            head = self.pieces[0]
            take = min(len(head) - self._at, len(out) - n)
            out[n : n + take] = memoryview(head)[self._at : self._at + take]
            n += take
            self._at += take
            self._left -= take
            if self._at == len(head):
                self.pieces.popleft()
                self._at = 0
        return n

    def read(self, n=-1):
        # Never more than is left, whatever size the pickle claims.
        n = self._left if n is None or n < 0 else min(n, self._left)
        if self.pieces and self._at == 0 and len(self.pieces[0]) == n:
            self._left -= n
            return self.pieces.popleft()
        out = bytearray(n)
        return bytes(out[: self.readinto(out)])

    def readline(self):
        line = []
        while self.pieces:
            head = self.pieces[0]
            end = head.find(b"\n", self._at)
            end = len(head) if end < 0 else end + 1
            line.append(self.read(end - self._at))
            if line[-1].endswith(b"\n"):
                break
        return b"".join(line)


class StreamReceiver:
    """
    The receiving side of streams on one connection.

    @param roots: C{roots(dest, computation)} → the directory for C{dest}
        (C{"client"}, C{"server"}, C{"node"}, C{"blob"}), or raise
        L{FileTransferError}.
    @param max_size: largest stream accepted (0: unlimited).
    """

    log = Logger()

    def __init__(self, roots, max_size=0):
        self.roots = roots
        self.max_size = max_size
        self.open = {}

    def start(self, purpose, name, subdir, dest, size, sha256, overwrite, computation):
        if size < 0 or len(sha256) != 32:
            raise FileTransferError("bad stream header")
        if len(self.open) >= config.MaxOpenStreams:
            raise FileTransferError("too many open streams on this connection (%d)" % len(self.open))
        if self.max_size and size > self.max_size:
            raise FileTransferError("%s is %d bytes, over the limit of %d bytes" % (name, size, self.max_size))
        sid = next(_ids)
        if purpose == "blob":
            # A payload to unpickle: it is needed in memory anyway, so it is
            # gathered there (TCP keeps it intact; files are what get digests).
            self.open[sid] = _IncomingBlob(sid, size)
            return sid
        elif purpose != "file":
            raise FileTransferError("unknown stream purpose %r" % (purpose,))
        # Refused up front: nothing is created for a name no file may have.
        parts = split_dir(subdir)
        check_name(name)
        root = self.roots(dest, computation)
        try:
            self.open[sid] = _Incoming(sid, root, parts, name, size, sha256, overwrite)
        except NotADirectoryError:
            raise FileTransferError("refused directory %s: a link or a file is on the way" % _shown(subdir))
        except OSError as e:
            raise FileTransferError("cannot write %s in %s: %s" % (_shown(name), root, e.strerror or e))
        return sid

    def chunk(self, sid, offset, data):
        """Take C{data} (bytes, or a list of the pieces it came in) at C{offset}."""
        pieces = data if isinstance(data, list) else [data]
        size = sum(map(len, pieces))
        s = self.open.get(sid)
        if s is None:
            raise FileTransferError("no stream %d" % (sid,))
        if offset != s.received or s.received + size > s.size:
            self.abort(sid)
            raise FileTransferError("stream %d: chunk at %d out of place or past its size" % (sid, offset))
        if isinstance(s, _IncomingBlob):
            s.write(pieces)
            return
        try:
            s.file.writelines(pieces)
        except OSError as e:
            self.abort(sid)
            raise FileTransferError("stream %d: %s" % (sid, e))
        for piece in pieces:
            s.sha.update(piece)
        s.received += size

    def finish(self, sid):
        s = self.open.pop(sid, None)
        if s is None:
            raise FileTransferError("no stream %d" % (sid,))
        if isinstance(s, _IncomingBlob):
            if s.received != s.size:
                raise FileTransferError("stream %d: %d of %d bytes" % (sid, s.received, s.size))
            return s
        return s.land()

    def abort(self, sid):
        s = self.open.pop(sid, None)
        if s is not None:
            s.discard()

    def abort_all(self):
        for sid in list(self.open):
            self.abort(sid)
