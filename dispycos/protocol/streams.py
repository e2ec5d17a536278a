# -*- test-case-name: tests.test_streams -*-
"""
Streams over AMP: files, and payloads larger than the inline cap.

After L{commands.StreamOpen}, the sender sends the bytes as raw frames: a
L{commands.StreamData} box, then the bytes as they are, outside AMP's
framing (a large C{bytes} value is written without a copy and read without
one, but for the pieces the socket hands over); the transport's flow
control paces the frames, and L{commands.StreamClose} answers once all of
it arrived. The receiver writes a file to a partial file beside the
destination, checks size and SHA-256 at close and renames it into place
atomically, so a file is never held whole in memory and an interrupted
stream leaves no file behind. Names are checked up
front (L{check_name}, L{split_dir}); the receiver reaches the directory
without following links and creates the partial file with
C{O_EXCL|O_NOFOLLOW}, so nothing planted is followed or overwritten. A blob (a large
argument, message or result) is gathered in memory as the pieces it arrived
in, and unpickled from them.
"""

import hashlib
import os

from twisted.internet import defer, interfaces

from dispycos import config
from dispycos.errors import ConnectionLostError, FileTransferError
from dispycos.protocol import commands
from dispycos.protocol.base import DispycosAMP
from dispycos.protocol.receiving import StreamReceiver, _IncomingBlob

#: The largest C{bytes} part sent as one raw frame as it is; larger parts go
#: in frames of L{FRAME} bytes (copies), and so do other buffers.
MAX_FRAME = 64 * 1024 * 1024
FRAME = 16 * 1024 * 1024
#: The frames of a stream over TLS.
TLS_FRAME = 1024 * 1024
#: Bytes of a file read (and sent as a raw frame) at once.
FILE_BLOCK = 4 * 1024 * 1024


def _file_digest(path):
    sha = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while True:
            block = f.read(1 << 20)
            if not block:
                break
            sha.update(block)
            size += len(block)
    return size, sha.digest()


def _frames(part, frame=FRAME, max_frame=MAX_FRAME):
    """C{part} as the bytes of raw frames: itself when it is bytes of C{max_frame} at most, else C{frame} each."""
    if isinstance(part, bytes) and len(part) <= max_frame:
        if part:
            yield part
        return
    view = memoryview(part).cast("B")
    for start in range(0, len(view), frame):
        yield bytes(view[start : start + frame])


@defer.inlineCallbacks
def _send_raw(proto, sid, parts):
    """
    Send the buffers C{parts} as raw frames of stream C{sid}: each a
    L{commands.StreamData} box, then its bytes as they are (a C{bytes} part
    is written without a copy). The next frame waits until the transport
    has sent most of the last.
    """
    offset = 0
    # TLS encrypts all of a write before any of it leaves: in small frames,
    # encrypting the next overlaps sending and decrypting the last.
    sizes = (TLS_FRAME, TLS_FRAME) if interfaces.ISSLTransport.providedBy(proto.transport) else (FRAME, MAX_FRAME)
    try:
        for part in parts:
            for piece in _frames(part, *sizes):
                if not proto.connected:
                    raise ConnectionLostError("connection lost while sending stream %d" % (sid,))
                proto.callRemote(commands.StreamData, stream=sid, offset=offset, size=len(piece))
                # The box goes to the socket first, so the frame is alone in
                # the transport's buffer (which then sends it without a copy).
                proto.write_out()
                proto.transport.write(piece)
                offset += len(piece)
                yield proto.drained()
    except Exception:
        if proto.connected:
            proto.callRemote(commands.StreamAbort, stream=sid, reason="sender failed")
        raise


def _file_frames(f, size):
    """The first C{size} bytes of file C{f}, a block at a time."""
    left = size
    while left > 0:
        block = f.read(min(FILE_BLOCK, left))
        if not block:
            return
        left -= len(block)
        yield block


@defer.inlineCallbacks
def send_file(proto, path, dest, subdir="", overwrite=False, computation="", name=None):
    """
    Stream the file at C{path} over C{proto} to C{dest}; fires with the
    absolute path where it landed on the receiving host.
    """
    size, digest = _file_digest(path)
    r = yield proto.callRemote(commands.StreamOpen, purpose="file", name=name or os.path.basename(path),
                               dir=subdir or "", dest=dest, size=size, sha256=digest, overwrite=overwrite,
                               computation=computation)
    sid = r["stream"]
    with open(path, "rb") as f:
        # The size was announced: send exactly that much, even if the file grows.
        yield _send_raw(proto, sid, _file_frames(f, size))
    r = yield proto.callRemote(commands.StreamClose, stream=sid)
    return r["path"]


@defer.inlineCallbacks
def send_blob(proto, data, computation=""):
    """
    Stream C{data} (bytes, or a list of C{bytes} parts, as from
    L{serialize.dumps_parts}) as a blob; fires with its stream id at the
    receiver.
    """
    parts = data if isinstance(data, list) else [data]
    size = sum(map(len, parts))
    r = yield proto.callRemote(commands.StreamOpen, purpose="blob", name="blob", dir="", dest="blob",
                               size=size, sha256=b"\0" * 32, overwrite=True, computation=computation)
    sid = r["stream"]
    yield _send_raw(proto, sid, parts)
    r = yield proto.callRemote(commands.StreamClose, stream=sid)
    return sid, r["path"]


class StreamingAMP(DispycosAMP):
    """
    A L{DispycosAMP} that receives streams (files and blobs) into the
    directories C{stream_root(dest, computation)} names.
    """

    def __init__(self, reactor, stream_root, max_file_size=0, **kw):
        super().__init__(reactor, **kw)
        self.streams = StreamReceiver(stream_root, max_file_size)
        self.blobs = {}
        self._unclaimed = 0  # bytes in self.blobs
        #: C{[stream id, bytes left, taken]} while a raw frame comes in.
        self._raw = None

    # -- raw frames (StreamData) ------------------------------------------------

    def _parse(self, data):
        while data:
            if self._raw is not None:
                data = self._raw_bytes(data)
                if not data:
                    return
            super()._parse(data)
            if self._raw is None or self._dropped:
                return
            data = self.take_unread()  # the reading stopped at a StreamData box: its frame follows

    def _raw_bytes(self, data):
        """Take the frame's bytes from C{data}; the bytes after the frame."""
        raw = self._raw
        left = raw[1]
        if len(data) <= left:
            piece, rest = data, b""
        else:
            piece, rest = data[:left], data[left:]
        raw[1] = left - len(piece)
        if raw[2]:
            s = self.streams.open.get(raw[0])
            try:
                if s is None:
                    raise FileTransferError("no stream %d" % (raw[0],))
                self.streams.chunk(raw[0], s.received, piece)
            except FileTransferError as e:
                self.log.warn("stream {s} from {peer}: {e}", s=raw[0], peer=self._peer(), e=e)
                raw[2] = False  # the rest of the frame is read and dropped
        if not raw[1]:
            self._raw = None
        return rest

    @commands.StreamData.responder
    def _stream_data(self, stream, offset, size):
        s = self.streams.open.get(stream)
        ok = s is not None and offset == s.received and 0 <= size <= s.size - s.received
        if size < 0:
            self._drop("a raw frame of negative size")
            return {}
        if not ok:
            self.streams.abort(stream)  # its bytes are read and dropped; closing it fails
        if size:
            self._raw = [stream, size, ok]
            self.stop_reading()
        return {}

    def connectionLost(self, reason):
        super().connectionLost(reason)
        self.streams.abort_all()
        self.blobs.clear()
        self._unclaimed = 0

    def payload(self, inline, blob):
        """
        The bytes of an argument sent inline or, when large, the blob it was
        streamed as before (a file to read once, which L{serialize.loads} takes).
        """
        if blob is None:
            return inline
        incoming = self.blobs.pop(blob, None)
        if incoming is None:
            raise FileTransferError("no blob %d on this connection" % (blob,))
        self._unclaimed -= incoming.size
        # A file to read once (serialize.loads takes it), not joined bytes.
        return incoming

    @commands.StreamOpen.responder
    def _stream_open(self, purpose, name, dir, dest, size, sha256, overwrite, computation):
        return {"stream": self.streams.start(purpose, name, dir, dest, size, sha256, overwrite,
                                             computation or self.computation)}

    @commands.StreamChunk.responder
    def _stream_chunk(self, stream, offset, data):
        self.streams.chunk(stream, offset, data)
        return {}

    @commands.StreamClose.responder
    def _stream_close(self, stream):
        landed = self.streams.finish(stream)
        if isinstance(landed, _IncomingBlob):
            self.blobs[stream] = landed
            self._unclaimed += landed.size
            # What a peer streamed and never used is let go, oldest first.
            while len(self.blobs) > config.MaxUnclaimedBlobs or self._unclaimed > config.MaxUnclaimedBlobBytes:
                sid = next(iter(self.blobs))
                self.log.warn("blob {s} from {peer} let go unused", s=sid, peer=self._peer())
                self._unclaimed -= self.blobs.pop(sid).size
            return {"path": ""}
        return {"path": landed}

    @commands.StreamAbort.responder
    def _stream_abort(self, stream, reason):
        self.streams.abort(stream)
        return {}
