# -*- test-case-name: tests.unit.test_protocol -*-
"""
L{DispycosAMP}: AMP with a shared-secret handshake that gates every other
command, and with batching of small one-way messages.

The gate sits in L{DispycosAMP.locateResponder}: AMP decodes a command's
arguments inside the responder that C{locateResponder} returns, so a command
refused there is never decoded, let alone unpickled.
"""

from twisted.internet import defer
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.python.failure import Failure

from dispycos import config
from dispycos.errors import AuthenticationError, ConnectionLostError, PayloadTooLarge
from dispycos.protocol import auth, commands
from dispycos.protocol.admission import pending_for
from dispycos.protocol.batching import Batching
from dispycos.protocol.boxes import BoxReader
from dispycos.protocol.tls import channel_binding
from dispycos._twisted import buffered_bytes, install_write_through, write_now

_OPEN_COMMANDS = (b"Hello", b"Authenticate")


#: Bytes read from a socket at once while data keeps coming (Twisted reads 64 KiB).
BULK_READ = 1024 * 1024


def _tcp_under(transport):
    """The TCP connection under C{transport} (possibly TLS over TCP), or None."""
    seen = 0
    while transport is not None and seen < 4:
        seen += 1
        if hasattr(transport, "socket") and hasattr(transport, "bufferSize"):
            return transport
        transport = getattr(transport, "transport", None)
    return None


class _WriteWatcher:
    """A push producer that only records when the transport's write buffer is full."""

    paused = False

    def __init__(self):
        self._waiters = []

    def pauseProducing(self):
        self.paused = True

    def resumeProducing(self):
        self.paused = False
        waiters, self._waiters = self._waiters, []
        for d in waiters:
            d.callback(None)

    stopProducing = resumeProducing

    def wait(self):
        d = defer.Deferred()
        self._waiters.append(d)
        return d


class DispycosAMP(Batching, BoxReader, amp.AMP):
    """
    One authenticated dispycos connection.

    @ivar keyring: on the listening side, C{keyring(role, computation)}
        returns the HMAC key for that peer, None to refuse it, or a Deferred
        of either (a key still being stretched).
    @ivar peer_location: the location the peer announced (its own listener).
    @ivar role: the connector's role (C{"scheduler"}, C{"peer"}).
    @ivar computation: the computation id the connector named.
    """

    log = Logger()

    def __init__(self, reactor, keyring=None, location="", locator=None):
        super().__init__(locator=locator)
        self.reactor = reactor
        self.keyring = keyring
        self.my_location = location
        self.authenticated = False
        self.peer_location = ""
        self.role = ""
        self.computation = ""
        self._pending_proof = None
        self._hello_seen = False
        self._deadline = None
        self.lost = defer.Deferred()
        self.connected = False
        self.ever_connected = False
        self.writes = _WriteWatcher()

    # -- connection ------------------------------------------------------

    def connectionMade(self):
        super().connectionMade()
        self.connected = True
        self.ever_connected = True
        # Flow control: a producer of its own that only records when the
        # transport's buffer is full (AMP's own pauseProducing/paused would
        # stop it from reading, which is not what a full write buffer means).
        self.writes = _WriteWatcher()
        try:
            self.transport.registerProducer(self.writes, True)
        except Exception:
            pass
        try:
            self.transport.setTcpNoDelay(True)
        except Exception:
            pass
        self._tcp = _tcp_under(self.transport)
        # TLS writes its records to the TCP connection under it: that one's writes go through.
        self._through = self._tcp is not None and install_write_through(self._tcp)
        self._small_reads = getattr(self._tcp, "bufferSize", 0)
        if self.keyring is not None:
            # A listener's connection: it must say Hello soon and finish the
            # handshake in time, and it counts against the listener's caps on
            # connections not yet authenticated (see L{dispycos.protocol.admission}).
            self._deadline = self.reactor.callLater(config.HelloTimeout, self._handshake_timeout)
            factory = getattr(self, "factory", None)
            if factory is None:
                return
            pending = self._pending = pending_for(factory)
            for victim, why in pending.add(self, getattr(self.transport.getPeer(), "host", None)):
                victim._drop(why)

    _pending = None

    def _unpend(self):
        if self._pending is not None:
            self._pending.remove(self)
            self._pending = None

    # -- limits on what a peer may make us hold ----------------------------------

    _dropped = False
    _box_keys = 0

    def _drop(self, why, **kw):
        """Drop this connection (once, with one log line) and read nothing more from it."""
        if not self._dropped:
            self._dropped = True
            self.log.warn("dropping {peer}: " + why, peer=self._peer(), **kw)
            self.transport.abortConnection()
        self.stop_reading()

    _tcp = None

    def dataReceived(self, data):
        if self._dropped:
            return
        tcp = self._tcp
        if tcp is not None:
            # A read that filled the buffer means more is waiting (a large
            # payload): read more at once, for 16 times fewer trips through
            # the reactor. Any other read goes back to Twisted's size, as
            # recv allocates the whole buffer for every read, however small.
            # (Twisted's bufferSize is also where its transport pauses a
            # producer: drain() waits for up to BULK_READ queued meanwhile.)
            tcp.bufferSize = BULK_READ if len(data) >= tcp.bufferSize else self._small_reads
        # What handling this data wrote or queued (answers, the next task, on
        # this connection or another) goes out now rather than on the
        # reactor's next turn: one trip less through epoll per round trip.
        # Plain TCP only; what the socket does not take stays for the reactor.
        group = self.flush_group
        if group is None:
            self._parse(data)
        else:
            with group:  # flushes the group's connections at the end (FlushGroup)
                self._parse(data)
        self.write_out()

    _through = False

    def write_out(self):
        """Hand what the transport buffered to the socket now (nothing to do when its writes go through)."""
        if not self._through:
            write_now(self.transport)

    def _parse(self, data):
        """Read the boxes in C{data} (streams take their raw frames first)."""
        self.read_boxes(data)

    # A box is kept in memory until it is complete: bound its size and its
    # number of keys (tiny before authentication). BoxReader counts them.
    def _over(self):
        if self.authenticated or self.keyring is None:
            limit, keys = config.MaxBox, config.MaxBoxKeys
        else:
            limit, keys = config.MaxBoxBeforeAuth, 16
        if self._box_bytes > limit or self._box_keys > keys:
            self._drop("a box over {n} bytes or {k} keys", n=limit, k=keys)

    _HANDSHAKE_KEYS = {
        b"Hello": {b"_command", b"_ask", b"version", b"role", b"computation", b"location", b"nonce"},
        b"Authenticate": {b"_command", b"_ask", b"proof"},
    }

    def ampBoxReceived(self, box):
        if self._dropped:
            return
        if self.keyring is not None and not self.authenticated:
            # A listener takes only well-formed handshake commands before
            # authentication: anything else is refused unread, in one line.
            command = box.get(b"_command")
            if command not in self._HANDSHAKE_KEYS:
                self._drop("refused command {cmd!r} before authentication", cmd=command)
                return
            if set(box) != self._HANDSHAKE_KEYS[command] or (command == b"Hello" and not box[b"version"].isdigit()):
                self._drop("malformed {cmd!r} before authentication", cmd=command)
                return
        elif len(box) == 2 and self.authenticated:
            # A one-way batch (no _ask, one value): straight to its responder.
            responder = self.batch_responders.get(box.get(b"_command"))
            if responder is not None and b"batch" in box:
                try:
                    result = responder(self, box[b"batch"])
                except Exception:
                    self.unhandledError(Failure())  # as AMP: logged, and the connection dropped
                    return
                if isinstance(result, defer.Deferred):
                    result.addErrback(self.unhandledError)
                return
        super().ampBoxReceived(box)

    def _reads(self):
        """False, having dropped the connection, when the peer has left too much unread."""
        if buffered_bytes(self.transport) > config.MaxOutgoingBuffer:
            self.log.warn("dropping {peer}: it does not read ({n} bytes queued)", peer=self._peer(),
                          n=buffered_bytes(self.transport))
            self.transport.abortConnection()
            return False
        return True

    def sendBox(self, box):
        if self._reads():
            super().sendBox(box)

    def write_box(self, wire):
        """
        Send a box already in AMP's wire format (see
        L{dispycos.protocol.batching.batch_box}), as L{sendBox} sends one.
        """
        if self.transport is None:
            raise ConnectionLost("no transport to send a box on")
        if self._reads():
            self.transport.write(wire)

    def _handshake_timeout(self):
        self._deadline = None
        if not self.authenticated:
            if self._hello_seen:
                self._drop("no handshake within {t}s", t=config.HandshakeTimeout)
            else:
                self._drop("no Hello within {t}s", t=config.HelloTimeout)

    @property
    def backed_up(self):
        """True while the transport's write buffer is full."""
        return self.writes.paused

    def drained(self):
        """Deferred firing once what we wrote to the peer has mostly gone out."""
        if not self.backed_up or not self.connected:
            return defer.succeed(None)
        return self.writes.wait()

    def connectionLost(self, reason):
        self.connected = False
        self.writes.resumeProducing()
        self._unpend()
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self.cancel_flush()
        try:
            super().connectionLost(reason)
        finally:
            d, self.lost = self.lost, None
            if d is not None:
                d.callback(None)

    def _peer(self):
        try:
            peer = self.transport.getPeer()
            return "%s:%s" % (peer.host, peer.port)
        except Exception:
            return "peer"

    # -- the gate --------------------------------------------------------

    def locateResponder(self, name):
        if not self.authenticated and name not in _OPEN_COMMANDS:
            return self._refuse
        return super().locateResponder(name)

    def _refuse(self, box):
        self._drop("refused command {cmd!r} before authentication", cmd=box.get(b"_command"))
        return defer.Deferred()

    # -- listener side of the handshake ----------------------------------

    @commands.Hello.responder
    def _hello(self, version, role, computation, location, nonce):
        if self.keyring is None:
            raise AuthenticationError("unexpected handshake")
        if self.authenticated or self._hello_seen:
            # One handshake per connection: nobody collects proofs by the dozen.
            self._drop("a second handshake on one connection")
            return defer.Deferred()
        self._hello_seen = True
        if self._deadline is not None and self._deadline.active():
            self._deadline.reset(config.HandshakeTimeout)
        if version != config.ProtocolVersion:
            raise AuthenticationError("protocol version %d, expected %d" % (version, config.ProtocolVersion))
        key = self.keyring(role, computation)
        if isinstance(key, defer.Deferred):  # a key still being stretched (dispycos.protocol.auth.StretchedKey)
            return key.addCallback(self._answer_hello, version, role, computation, location, nonce)
        return self._answer_hello(key, version, role, computation, location, nonce)

    def _answer_hello(self, key, version, role, computation, location, nonce):
        if key is None or len(nonce) != auth.NONCE_BYTES:
            self.log.warn("refused {role} {comp} from {peer}", role=role, comp=computation, peer=self._peer())
            raise AuthenticationError("peer refused")
        mine = auth.new_nonce()
        bound = auth.context(version, computation, location, self.my_location, channel_binding(self.transport))
        self._pending_proof = auth.connector_proof(key, mine, nonce, role, bound)
        self.role, self.computation, self.peer_location = role, computation, location
        return {
            "version": config.ProtocolVersion,
            "location": self.my_location,
            "nonce": mine,
            "proof": auth.listener_proof(key, nonce, mine, role, bound),
        }

    @commands.Authenticate.responder
    def _authenticate(self, proof):
        expected, self._pending_proof = self._pending_proof, None
        if expected is None or not auth.check(expected, proof):
            self.log.warn("authentication failed for {peer}", peer=self._peer())
            raise AuthenticationError("authentication failed")
        self.authenticated = True
        self._unpend()
        if self._deadline is not None and self._deadline.active():
            self._deadline.cancel()
        self.authenticated_as_listener()
        return {}

    def authenticated_as_listener(self):
        """Hook: the connector proved the secret."""

    # -- connector side ----------------------------------------------------

    @defer.inlineCallbacks
    def handshake(self, key, role, computation=""):
        """
        Prove the secret to the listener and check its proof.

        @param key: the key, or a Deferred firing with it (a key still being
            stretched: see L{auth.StretchedKey}), waited for once the
            listener has answered C{Hello}.
        @return: a Deferred firing with None, or failing with
            L{AuthenticationError} (the connection is then dropped).
        """
        mine = auth.new_nonce()
        try:
            r = yield self.callRemote(
                commands.Hello,
                version=config.ProtocolVersion,
                role=role,
                computation=computation,
                location=self.my_location,
                nonce=mine,
            )
        except AuthenticationError:
            raise AuthenticationError("refused by %s (wrong secret or unknown computation)" % self._peer())
        except ConnectionLostError:
            raise
        except Exception as e:
            self.transport.abortConnection()
            raise AuthenticationError("handshake with %s failed: %s" % (self._peer(), e))
        if isinstance(key, defer.Deferred):
            key = yield key
        # Both proofs are bound to this connection (its TLS session) and to
        # what each side announced: relayed or replayed, they fail.
        bound = auth.context(config.ProtocolVersion, computation, self.my_location, r["location"],
                             channel_binding(self.transport))
        if not auth.check(auth.listener_proof(key, mine, r["nonce"], role, bound), r["proof"]):
            self.transport.abortConnection()
            raise AuthenticationError("%s could not prove the secret (wrong secret?)" % self._peer())
        try:
            yield self.callRemote(commands.Authenticate, proof=auth.connector_proof(key, r["nonce"], mine, role, bound))
        except AuthenticationError:
            raise AuthenticationError("refused by %s (wrong secret)" % self._peer())
        self.authenticated = True
        self.role, self.computation, self.peer_location = role, computation, r["location"]

    def callRemote(self, command, **kw):
        if not self.connected:
            return defer.fail(ConnectionLostError("connection to %s is closed" % (self.peer_location or "peer")))
        self.flush()
        try:
            d = super().callRemote(command, **kw)
        except PayloadTooLarge as e:
            return defer.fail(e)
        if d is None:  # requiresAnswer=False
            return None

        def lost(f):
            if f.check(ConnectionDone, ConnectionLost):
                raise ConnectionLostError("connection to %s lost" % (self.peer_location or self._peer()))
            return f

        return d.addErrback(lost)
